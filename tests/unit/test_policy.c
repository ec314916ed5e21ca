/*
 * What an MQTT device may publish and subscribe to (doc/devices.md, MQTT devices): every rule of
 * mapping/policy.h, and the ways around them that other gateways left open.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

static map_table_t *table;

static void add(const char *name, const char *res, const char *topic, int dir)
{
    char err[256] = "";
    map_spec_t s = { .name = name, .resource = res, .topic = topic, .direction = dir, .qos = 1 };
    cr_assert_eq(map_table_add(table, &s, err, sizeof(err)), 0, "%s: %s", name, err);
}

/* The reference mappings (etc/tandem.conf) and one of each kind of template. */
static void setup(void)
{
    table = map_table_new("edge-01");
    cr_assert_not_null(table);
    add("telemetry", "bikes/{identity}/telemetry", "redback/p1/bikes/{identity}/telemetry", MAP_UP);
    add("commands", "bikes/{identity}/commands", "redback/p1/bikes/{identity}/commands", MAP_DOWN);
    add("state", "bikes/{identity}/state", "redback/p1/bikes/{identity}/state", MAP_BOTH);
    add("logs", "bikes/{identity}/logs/{path*}", "redback/p1/logs/{identity}/{path*}", MAP_BOTH);
    add("alerts", "zones/{zone}/bikes/{bike}/alerts",
        "redback/{gateway}/zones/{zone}/{bike}/alerts", MAP_BOTH);
    add("public", "public/{rest*}", "redback/public/{rest*}", MAP_DOWN);
    add("hello", "hello", "redback/p1/hello/{identity}", MAP_UP);
    /* {identity} in the resource only: any device with an identity, none without. */
    add("fleet", "bikes/{identity}/fleet", "redback/fleet", MAP_UP);
    /* {identity} after a variable. */
    add("after", "x/{zone}/{identity}", "redback/after/{zone}/{identity}", MAP_BOTH);
}

/* An empty table, for the tests that build their own. */
static void setup_empty(void)
{
    table = map_table_new("edge-01");
    cr_assert_not_null(table);
}

static void teardown(void)
{
    map_table_free(table);
}

TestSuite(policy, .init = setup, .fini = teardown);
TestSuite(policy_order, .init = setup_empty, .fini = teardown);

/* Asks map_policy_topic() and checks the status and the mapping named (NULL: none). */
#define expect_topic(topic, dir, id, want, name)                                                   \
    check_topic_at(__LINE__, topic, strlen(topic), dir, id, want, name)
#define expect_filter(filter, id, want, name)                                                      \
    check_filter_at(__LINE__, filter, strlen(filter), id, want, name)

static void check_out(int line, const char *what, const map_entry_t *e, const char *name)
{
    if (name) {
        cr_expect_not_null(e, "line %d: %s: no mapping, want %s", line, what, name);
        if (e)
            cr_expect_str_eq(map_entry_name(e), name, "line %d: %s", line, what);
    } else {
        cr_expect_null(e, "line %d: %s: mapping %s, want none", line, what,
                       e ? map_entry_name(e) : "");
    }
}

static void check_topic_at(int line, const char *topic, size_t len, int dir, const char *id,
                           enum map_status want, const char *name)
{
    const map_entry_t *e = (const map_entry_t *)&e; /* not NULL: the call must set it */
    enum map_status st = map_policy_topic(table, topic, len, dir, id, &e);
    cr_expect_eq(st, want, "line %d: topic \"%.*s\": status %d, want %d", line, (int)len, topic, st,
                 want);
    check_out(line, topic, e, name);
}

static void check_filter_at(int line, const char *filter, size_t len, const char *id,
                            enum map_status want, const char *name)
{
    const map_entry_t *e = (const map_entry_t *)&e;
    enum map_status st = map_policy_filter(table, filter, len, id, &e);
    cr_expect_eq(st, want, "line %d: filter \"%.*s\": status %d, want %d", line, (int)len, filter,
                 st, want);
    check_out(line, filter, e, name);
}

/* ---- PUBLISH (and Will topics, Response Topics) ---- */

Test(policy, publish_own_topic)
{
    expect_topic("redback/p1/bikes/bike-7/telemetry", MAP_UP, "bike-7", MAP_OK, "telemetry");
    expect_topic("redback/p1/bikes/bike-7/state", MAP_UP, "bike-7", MAP_OK, "state");
    expect_topic("redback/p1/hello/bike-7", MAP_UP, "bike-7", MAP_OK, "hello");
    expect_topic("redback/p1/bikes/caf\xc3\xa9/telemetry", MAP_UP, "caf\xc3\xa9", MAP_OK,
                 "telemetry");
}

Test(policy, publish_another_devices_topic_is_forbidden)
{
    expect_topic("redback/p1/bikes/bike-8/telemetry", MAP_UP, "bike-7", MAP_FORBIDDEN, "telemetry");
    expect_topic("redback/p1/hello/bike-8", MAP_UP, "bike-7", MAP_FORBIDDEN, "hello");
    /* A prefix or an extension of one's identity is another identity. */
    expect_topic("redback/p1/bikes/bike-70/telemetry", MAP_UP, "bike-7", MAP_FORBIDDEN,
                 "telemetry");
    expect_topic("redback/p1/bikes/bike-/telemetry", MAP_UP, "bike-7", MAP_FORBIDDEN, "telemetry");
    /* Case matters: BIKE-7 is not bike-7. */
    expect_topic("redback/p1/bikes/BIKE-7/telemetry", MAP_UP, "bike-7", MAP_FORBIDDEN, "telemetry");
    /* An empty identity level is nobody's, and not the device's either. */
    expect_topic("redback/p1/bikes//telemetry", MAP_UP, "bike-7", MAP_FORBIDDEN, "telemetry");
}

Test(policy, publish_anonymous)
{
    expect_topic("redback/p1/bikes/bike-7/telemetry", MAP_UP, NULL, MAP_UNAUTHORIZED, "telemetry");
    expect_topic("redback/p1/hello/bike-7", MAP_UP, NULL, MAP_UNAUTHORIZED, "hello");
    /* {identity} only in the resource still needs an identity, as for CoAP. */
    expect_topic("redback/fleet", MAP_UP, NULL, MAP_UNAUTHORIZED, "fleet");
    expect_topic("redback/fleet", MAP_UP, "bike-7", MAP_OK, "fleet");
    /* Mappings without {identity} are open to anonymous devices. */
    expect_topic("redback/edge-01/zones/z1/b1/alerts", MAP_UP, NULL, MAP_OK, "alerts");
}

Test(policy, publish_needs_an_up_mapping)
{
    /* commands is down only; public too. */
    expect_topic("redback/p1/bikes/bike-7/commands", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/public/news", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/bikes/bike-7/commands", MAP_DOWN, "bike-7", MAP_OK, "commands");
    expect_topic("redback/p1/bikes/bike-8/commands", MAP_DOWN, "bike-7", MAP_FORBIDDEN, "commands");
    /* telemetry is up only. */
    expect_topic("redback/p1/bikes/bike-7/telemetry", MAP_DOWN, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/public/a/b", MAP_DOWN, NULL, MAP_OK, "public");
    /* A direction that is neither matches no mapping. */
    expect_topic("redback/public/a/b", 0, NULL, MAP_NOT_FOUND, NULL);
}

Test(policy, publish_not_a_mapping_topic)
{
    expect_topic("redback/p1/bikes/bike-7", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/bikes/bike-7/telemetry/x", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("Redback/p1/bikes/bike-7/telemetry", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/P1/bikes/bike-7/telemetry", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    /* A trailing '/' is one more, empty, level. */
    expect_topic("redback/p1/bikes/bike-7/telemetry/", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("/redback/p1/bikes/bike-7/telemetry", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1//bikes/bike-7/telemetry", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy, publish_gateway_and_variables)
{
    expect_topic("redback/edge-01/zones/perth/b-1/alerts", MAP_UP, "bike-7", MAP_OK, "alerts");
    expect_topic("redback/edge-02/zones/perth/b-1/alerts", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/EDGE-01/zones/perth/b-1/alerts", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    /* Values an identity may not take: empty, a leading '$'. */
    expect_topic("redback/edge-01/zones//b-1/alerts", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/edge-01/zones/$SYS/b-1/alerts", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/edge-01/zones/a$/b-1/alerts", MAP_UP, "bike-7", MAP_OK, "alerts");
}

Test(policy, publish_multi_level_variable)
{
    expect_topic("redback/p1/logs/bike-7/a", MAP_UP, "bike-7", MAP_OK, "logs");
    expect_topic("redback/p1/logs/bike-7/a/b/c", MAP_UP, "bike-7", MAP_OK, "logs");
    /* {x*} needs one level at least, and each is a value. */
    expect_topic("redback/p1/logs/bike-7", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/logs/bike-7/", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/logs/bike-7/a//b", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/logs/bike-7/a/$x", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("redback/p1/logs/bike-8/a", MAP_UP, "bike-7", MAP_FORBIDDEN, "logs");
}

Test(policy, publish_identity_after_a_variable)
{
    expect_topic("redback/after/z/bike-7", MAP_UP, "bike-7", MAP_OK, "after");
    /* The variable may take the identity's value; {identity} still must be it. */
    expect_topic("redback/after/bike-7/bike-8", MAP_UP, "bike-7", MAP_FORBIDDEN, "after");
    expect_topic("redback/after/bike-7/bike-7", MAP_UP, "bike-7", MAP_OK, "after");
}

Test(policy, publish_malformed_topics)
{
    static const char *bad[] = {
        "",
        "redback/p1/bikes/+/telemetry",
        "redback/p1/bikes/#",
        "#",
        "+",
        "redback/p1/bikes/bike+7/telemetry",
        "$SYS/broker/x",
        "$share/g/redback/p1/bikes/bike-7/telemetry",
        "redback/p1/bikes/\xff/telemetry",
        "redback/p1/bikes/\xc0\xaf/telemetry",     /* an overlong '/' */
        "redback/p1/bikes/\xed\xa0\x80/telemetry", /* a surrogate */
        "redback/p1/bikes/a\x01/telemetry",
        "redback/p1/bikes/a\x7f/telemetry",
        "redback/p1/bikes/a\xc2\x80/telemetry",
        "redback/p1/bikes/a\xef\xbf\xbf/telemetry", /* U+FFFF */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_topic(bad[i], MAP_UP, "bike-7", MAP_BAD_VALUE, NULL);
}

Test(policy, publish_nul_inside_the_length)
{
    /* The device's own topic with a NUL and more after it: C strings would stop early. */
    static const char t[] = "redback/p1/bikes/bike-7/telemetry\0/x";
    check_topic_at(__LINE__, t, sizeof(t) - 1, MAP_UP, "bike-7", MAP_BAD_VALUE, NULL);
    static const char id[] = "redback/p1/bikes/bike-7\0bike-8/telemetry";
    check_topic_at(__LINE__, id, sizeof(id) - 1, MAP_UP, "bike-7", MAP_BAD_VALUE, NULL);
    /* Only len bytes count: what follows is not read. */
    check_topic_at(__LINE__, "redback/p1/bikes/bike-7/telemetry/more", 33, MAP_UP, "bike-7", MAP_OK,
                   "telemetry");
}

Test(policy, publish_overlong_topics)
{
    size_t n = MAP_TOPIC_MAX + 1;
    char *t = malloc(n + 1);
    cr_assert_not_null(t);
    /* Within MQTT's limit but longer than any topic a mapping renders. */
    memcpy(t, "redback/public/", 15);
    memset(t + 15, 'a', MAP_PATH_MAX);
    check_topic_at(__LINE__, t, MAP_PATH_MAX + 1, MAP_DOWN, NULL, MAP_NOT_FOUND, NULL);
    check_topic_at(__LINE__, t, MAP_PATH_MAX, MAP_DOWN, NULL, MAP_OK, "public");
    /* Beyond MQTT's limit. */
    memset(t + 15, 'a', n - 15);
    check_topic_at(__LINE__, t, n, MAP_DOWN, NULL, MAP_BAD_VALUE, NULL);
    free(t);
    /* More levels than a template has. */
    char deep[256] = "redback/public";
    for (int i = 0; i < MAP_SEGMENTS_MAX - 2; i++)
        strcat(deep, "/a");
    expect_topic(deep, MAP_DOWN, NULL, MAP_OK, "public");
    strcat(deep, "/a");
    expect_topic(deep, MAP_DOWN, NULL, MAP_NOT_FOUND, NULL);
}

Test(policy, publish_with_an_identity_no_device_may_have)
{
    /* Identities are checked at the handshake; the policy does not trust them either. */
    expect_topic("redback/p1/bikes//telemetry", MAP_UP, "", MAP_FORBIDDEN, "telemetry");
    expect_topic("redback/p1/bikes/$x/telemetry", MAP_UP, "$x", MAP_FORBIDDEN, "telemetry");
    expect_topic("redback/fleet", MAP_UP, "a/b", MAP_FORBIDDEN, "fleet");
    expect_topic("redback/p1/bikes/a/b/telemetry", MAP_UP, "a/b", MAP_NOT_FOUND, NULL);
    /* Without an identity, out may be NULL. */
    cr_assert_eq(map_policy_topic(table, "redback/fleet", 13, MAP_UP, "bike-7", NULL), MAP_OK);
}

/* ---- SUBSCRIBE ---- */

Test(policy, subscribe_own_topics)
{
    expect_filter("redback/p1/bikes/bike-7/commands", "bike-7", MAP_OK, "commands");
    expect_filter("redback/p1/bikes/bike-7/state", "bike-7", MAP_OK, "state");
    expect_filter("redback/after/+/bike-7", "bike-7", MAP_OK, "after");
    expect_filter("redback/after/z/bike-7", "bike-7", MAP_OK, "after");
}

Test(policy, subscribe_another_devices_topics_is_forbidden)
{
    expect_filter("redback/p1/bikes/bike-8/commands", "bike-7", MAP_FORBIDDEN, "commands");
    /* '+' in the {identity} level is every device's. */
    expect_filter("redback/p1/bikes/+/commands", "bike-7", MAP_FORBIDDEN, "commands");
    expect_filter("redback/p1/bikes/+/state", "bike-7", MAP_FORBIDDEN, "state");
    expect_filter("redback/after/+/+", "bike-7", MAP_FORBIDDEN, "after");
    expect_filter("redback/after/bike-7/+", "bike-7", MAP_FORBIDDEN, "after");
    expect_filter("redback/p1/bikes/BIKE-7/commands", "bike-7", MAP_FORBIDDEN, "commands");
    expect_filter("redback/p1/logs/+/#", "bike-7", MAP_FORBIDDEN, "logs");
    expect_filter("redback/p1/logs/+/a", "bike-7", MAP_FORBIDDEN, "logs");
}

Test(policy, subscribe_anonymous)
{
    expect_filter("redback/p1/bikes/bike-7/commands", NULL, MAP_UNAUTHORIZED, "commands");
    expect_filter("redback/p1/bikes/+/commands", NULL, MAP_UNAUTHORIZED, "commands");
    expect_filter("redback/public/#", NULL, MAP_OK, "public");
    expect_filter("redback/edge-01/zones/+/+/alerts", NULL, MAP_OK, "alerts");
}

Test(policy, subscribe_needs_a_down_mapping)
{
    expect_filter("redback/p1/bikes/bike-7/telemetry", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/hello/bike-7", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/fleet", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_hash_never_alone_nor_over_fixed_levels)
{
    expect_filter("#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/#", "bike-7", MAP_NOT_FOUND, NULL);
    /* Every device's branch. */
    expect_filter("redback/p1/bikes/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/logs/#", "bike-7", MAP_NOT_FOUND, NULL);
    /* The device's own branch holds an up-only topic and fixed levels: not a {x*}. */
    expect_filter("redback/p1/bikes/bike-7/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/zones/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/zones/z/b/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("+/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/+/#", NULL, MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_multi_level_variable)
{
    /* '#' at or after {x*}. */
    expect_filter("redback/p1/logs/bike-7/#", "bike-7", MAP_OK, "logs");
    expect_filter("redback/p1/logs/bike-7/a/#", "bike-7", MAP_OK, "logs");
    expect_filter("redback/p1/logs/bike-7/+/b/#", "bike-7", MAP_OK, "logs");
    expect_filter("redback/public/#", "bike-7", MAP_OK, "public");
    expect_filter("redback/public/a/b/c/#", "bike-7", MAP_OK, "public");
    /* '+' against {x*}: one of its levels. */
    expect_filter("redback/p1/logs/bike-7/+", "bike-7", MAP_OK, "logs");
    expect_filter("redback/p1/logs/bike-7/+/+/x", "bike-7", MAP_OK, "logs");
    expect_filter("redback/p1/logs/bike-7/a", "bike-7", MAP_OK, "logs");
    /* {x*} needs one level at least. */
    expect_filter("redback/p1/logs/bike-7", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/public", "bike-7", MAP_NOT_FOUND, NULL);
    /* Literal levels there are values. */
    expect_filter("redback/public/$SYS/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/public/a//#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/public/a/", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_variables_and_gateway)
{
    expect_filter("redback/edge-01/zones/+/+/alerts", "bike-7", MAP_OK, "alerts");
    expect_filter("redback/edge-01/zones/perth/+/alerts", "bike-7", MAP_OK, "alerts");
    /* {gateway} is one value, as a literal is. */
    expect_filter("redback/+/zones/+/+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-02/zones/+/+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/+/+/+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/zones/+/+/+", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("+/edge-01/zones/+/+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    /* Literal levels in variable positions are values a variable may take. */
    expect_filter("redback/edge-01/zones/$x/+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/zones//+/alerts", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/edge-01/zones/a$/+/alerts", "bike-7", MAP_OK, "alerts");
}

Test(policy, subscribe_mixed_case_and_empty_levels)
{
    expect_filter("Redback/p1/bikes/bike-7/commands", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/bikes/bike-7/Commands", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/bikes/bike-7/commands/", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("/redback/p1/bikes/bike-7/commands", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback//p1/bikes/bike-7/commands", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/bikes//commands", "bike-7", MAP_FORBIDDEN, "commands");
    expect_filter("/", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_with_an_identity_no_device_may_have)
{
    /* A device called "+" must not turn its {identity} level into a wildcard. */
    expect_filter("redback/p1/bikes/+/commands", "+", MAP_FORBIDDEN, "commands");
    expect_filter("redback/p1/bikes/#", "#", MAP_NOT_FOUND, NULL);
    expect_filter("redback/p1/bikes//commands", "", MAP_FORBIDDEN, "commands");
    expect_filter("redback/p1/bikes/a/b/commands", "a/b", MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_malformed_filters)
{
    static const char *bad[] = {
        "",
        "redback/p1/bikes/bike+/commands",
        "redback/p1/bikes/+bike/commands",
        "redback/p1/bikes/bike#",
        "redback/p1/#/commands",
        "redback/p1/logs/bike-7/##",
        "redback/p1/logs/bike-7/#/",
        "redback/p1/logs/bike-7/++",
        "redback/p1/bikes/\xff/commands",
        "redback/p1/bikes/\xc0\xaf/commands",
        "redback/p1/bikes/a\x1f/commands",
        "redback/p1/bikes/a\xc2\x9f/commands",
        "redback/p1/bikes/a\xef\xb7\x90/commands", /* U+FDD0 */
        "$SYS/#",
        "$SYS/broker/load",
        "$queue/redback/public/a",
        "$SHARE/g/redback/public/a",
        "$",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_filter(bad[i], "bike-7", MAP_BAD_VALUE, NULL);
}

Test(policy, subscribe_nul_inside_the_length)
{
    static const char f[] = "redback/p1/bikes/bike-7/commands\0/#";
    check_filter_at(__LINE__, f, sizeof(f) - 1, "bike-7", MAP_BAD_VALUE, NULL);
    static const char s[] = "$share/g\0/redback/p1/bikes/bike-7/commands";
    check_filter_at(__LINE__, s, sizeof(s) - 1, "bike-7", MAP_BAD_VALUE, NULL);
    /* Only len bytes count. */
    check_filter_at(__LINE__, "redback/p1/bikes/bike-7/commands/#", 32, "bike-7", MAP_OK,
                    "commands");
}

Test(policy, subscribe_overlong_filters)
{
    size_t n = MAP_TOPIC_MAX + 1;
    char *f = malloc(n + 1);
    cr_assert_not_null(f);
    memcpy(f, "redback/public/", 15);
    memset(f + 15, 'a', n - 15);
    check_filter_at(__LINE__, f, n, "bike-7", MAP_BAD_VALUE, NULL);
    /* Well-formed, but no topic it matches is one a mapping renders. */
    check_filter_at(__LINE__, f, MAP_PATH_MAX + 1, "bike-7", MAP_NOT_FOUND, NULL);
    check_filter_at(__LINE__, f, MAP_PATH_MAX, "bike-7", MAP_OK, "public");
    free(f);

    char deep[256] = "redback/public";
    for (int i = 0; i < MAP_SEGMENTS_MAX - 2; i++)
        strcat(deep, "/+");
    expect_filter(deep, "bike-7", MAP_OK, "public");
    strcat(deep, "/#");
    expect_filter(deep, "bike-7", MAP_BAD_VALUE, NULL);
}

Test(policy, subscribe_shared)
{
    expect_filter("$share/g/redback/p1/bikes/bike-7/commands", "bike-7", MAP_OK, "commands");
    expect_filter("$share/workers/redback/p1/logs/bike-7/#", "bike-7", MAP_OK, "logs");
    expect_filter("$share/g/redback/public/#", NULL, MAP_OK, "public");
    /* The rest is held to the same rules. */
    expect_filter("$share/g/redback/p1/bikes/+/commands", "bike-7", MAP_FORBIDDEN, "commands");
    expect_filter("$share/g/redback/p1/bikes/bike-8/commands", "bike-7", MAP_FORBIDDEN, "commands");
    expect_filter("$share/g/redback/p1/bikes/bike-7/commands", NULL, MAP_UNAUTHORIZED, "commands");
    expect_filter("$share/g/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("$share/g/+/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("$share/g/redback/p1/bikes/#", "bike-7", MAP_NOT_FOUND, NULL);
    /* A group that looks like the device's topic is only a group. */
    expect_filter("$share/redback/p1/bikes/bike-7/commands", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy, subscribe_shared_malformed)
{
    static const char *bad[] = {
        "$share",
        "$share/",
        "$share/g",
        "$share/g/",
        "$share//redback/public/a",
        "$share/+/redback/public/a",
        "$share/#",
        "$share/g+/redback/public/a",
        "$share/g/$SYS/#",
        "$share/g/$share/h/redback/public/a",
        "$share/g/redback/p1/bikes/bike-7/commands+",
        "$sharex/g/redback/public/a",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_filter(bad[i], "bike-7", MAP_BAD_VALUE, NULL);
}

Test(policy, subscribe_null_out)
{
    cr_assert_eq(map_policy_filter(table, "redback/public/#", 16, NULL, NULL), MAP_OK);
    cr_assert_eq(map_policy_filter(table, "#", 1, NULL, NULL), MAP_NOT_FOUND);
}

/* ---- file order, and mappings that overlap ---- */

Test(policy_order, first_mapping_that_allows)
{
    add("a1", "a1/{x}", "t/{x}", MAP_BOTH);
    add("a2", "a2/{x}", "t/{x}", MAP_BOTH);
    expect_topic("t/1", MAP_UP, NULL, MAP_OK, "a1");
    expect_filter("t/+", NULL, MAP_OK, "a1");
}

Test(policy_order, an_open_mapping_after_one_that_pins_identity)
{
    /* The operator made t/{zone}/cmd open to everyone: it allows what the first refuses. */
    add("own", "own/{identity}", "t/{identity}/cmd", MAP_DOWN);
    add("open", "open/{zone}", "t/{zone}/cmd", MAP_DOWN);
    expect_filter("t/+/cmd", "bike-7", MAP_OK, "open");
    expect_filter("t/bike-8/cmd", "bike-7", MAP_OK, "open");
    expect_filter("t/bike-7/cmd", "bike-7", MAP_OK, "own");
    expect_filter("t/+/cmd", NULL, MAP_OK, "open");
    expect_topic("t/bike-8/cmd", MAP_DOWN, "bike-7", MAP_OK, "open");
}

Test(policy_order, refusal_names_the_first_mapping_but_for_identity)
{
    add("own", "own/{identity}", "t/{identity}/cmd", MAP_DOWN);
    add("mine", "mine/{identity}/{what}", "t/{identity}/{what}", MAP_DOWN);
    add("wide", "wide/{x}/{y}", "t/{x}/{y}", MAP_UP);
    expect_filter("t/+/cmd", "bike-7", MAP_FORBIDDEN, "own");
    expect_filter("t/+/other", "bike-7", MAP_FORBIDDEN, "mine");
    expect_filter("t/bike-7/+", "bike-7", MAP_OK, "mine");
    expect_topic("t/bike-8/cmd", MAP_DOWN, "bike-7", MAP_FORBIDDEN, "own");
    expect_topic("t/bike-8/cmd", MAP_UP, "bike-7", MAP_OK, "wide");
    expect_topic("t/bike-8/cmd", MAP_DOWN, NULL, MAP_UNAUTHORIZED, "own");
}

Test(policy_order, no_union_of_two_mappings)
{
    /* Each topic of t/+ is in one of them, but no one mapping holds them all. */
    add("one", "one", "t/one", MAP_DOWN);
    add("two", "two/{x}", "t/{x}/two", MAP_DOWN);
    expect_filter("t/+", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("t/one", "bike-7", MAP_OK, "one");
    expect_filter("t/+/two", "bike-7", MAP_OK, "two");
    expect_filter("t/#", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy_order, hash_at_a_multi_level_variable)
{
    add("rest", "r/{rest*}", "a/b/{rest*}", MAP_DOWN);
    expect_filter("a/b/#", NULL, MAP_OK, "rest");
    expect_filter("a/b/c/#", NULL, MAP_OK, "rest");
    expect_filter("a/#", NULL, MAP_NOT_FOUND, NULL);
    expect_filter("a/+/#", NULL, MAP_NOT_FOUND, NULL);
}

Test(policy_order, whole_topic_is_a_multi_level_variable)
{
    add("all", "r/{rest*}", "{rest*}", MAP_DOWN);
    /* '#' alone never, whatever the mappings say. */
    expect_filter("#", NULL, MAP_NOT_FOUND, NULL);
    expect_filter("$share/g/#", NULL, MAP_NOT_FOUND, NULL);
    expect_filter("+/#", NULL, MAP_OK, "all");
    expect_filter("a/#", NULL, MAP_OK, "all");
    expect_filter("+", NULL, MAP_OK, "all");
    expect_topic("a", MAP_DOWN, NULL, MAP_OK, "all");
}

Test(policy_order, identity_right_after_a_variable_and_before_multi)
{
    add("deep", "d/{zone}/{identity}/{rest*}", "z/{zone}/{identity}/{rest*}", MAP_BOTH);
    expect_filter("z/+/bike-7/#", "bike-7", MAP_OK, "deep");
    expect_filter("z/+/+/#", "bike-7", MAP_FORBIDDEN, "deep");
    /* '#' before {x*} covers the {identity} level. */
    expect_filter("z/+/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("z/bike-7/#", "bike-7", MAP_NOT_FOUND, NULL);
    expect_topic("z/q/bike-7/a/b", MAP_UP, "bike-7", MAP_OK, "deep");
    expect_topic("z/bike-7/q/a", MAP_UP, "bike-7", MAP_FORBIDDEN, "deep");
}

Test(policy_order, empty_table)
{
    expect_topic("a", MAP_UP, "bike-7", MAP_NOT_FOUND, NULL);
    expect_filter("a/#", "bike-7", MAP_NOT_FOUND, NULL);
}

Test(policy_order, hash_never_reaches_a_parent_topic_of_another_device)
{
    /* "t/me/#" matches "t/me" too, which is device t's topic by the second mapping. */
    add("logs", "l/{identity}/{x*}", "t/{identity}/{x*}", MAP_DOWN);
    add("status", "s/{identity}/{y}", "{identity}/{y}", MAP_UP);
    expect_filter("t/me/#", "me", MAP_FORBIDDEN, "status");
    expect_filter("t/me/#", NULL, MAP_UNAUTHORIZED, "logs");
    expect_topic("t/me", MAP_UP, "me", MAP_FORBIDDEN, "status");
    /* Without the parent: exactly the first mapping's topics. */
    expect_filter("t/me/+/#", "me", MAP_OK, "logs");
    expect_filter("t/me/a/#", "me", MAP_OK, "logs");
    /* Device t's own parent topic is its own. */
    expect_filter("t/t/#", "t", MAP_OK, "logs");
}

Test(policy_order, hash_never_reaches_a_parent_topic_through_a_plus)
{
    /* "t/+/#" matches "t/cmd", device t's topic by the second mapping. */
    add("open", "o/{zone}/{x*}", "t/{zone}/{x*}", MAP_DOWN);
    add("cmd", "c/{identity}", "{identity}/cmd", MAP_UP);
    expect_filter("t/+/#", "me", MAP_FORBIDDEN, "cmd");
    expect_filter("t/+/+/#", "me", MAP_OK, "open");
    expect_filter("t/x/#", "me", MAP_OK, "open");
    expect_filter("t/cmd/#", "me", MAP_FORBIDDEN, "cmd");
}
