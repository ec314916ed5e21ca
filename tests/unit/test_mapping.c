/*
 * Mapping engine: the reference mappings as test vectors, and every refusal.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mapping.h"

static map_table_t *table;

static void add(const char *name, const char *res, const char *topic, int dir, int qos)
{
    char err[256] = "";
    map_spec_t s = { .name = name, .resource = res, .topic = topic, .direction = dir, .qos = qos };
    cr_assert_eq(map_table_add(table, &s, err, sizeof(err)), 0, "%s: %s", name, err);
}

static int add_err(const char *res, const char *topic, int dir, char *err, size_t len)
{
    map_spec_t s = { .name = "x", .resource = res, .topic = topic, .direction = dir, .qos = 1 };
    return map_table_add(table, &s, err, len);
}

static void setup(void)
{
    table = map_table_new("edge-01");
    cr_assert_not_null(table);
}

static void teardown(void)
{
    map_table_free(table);
}

static enum map_status route(const char *path, int dir, const char *identity, char *topic,
                             const map_entry_t **e)
{
    map_segs_t segs;
    cr_assert_eq(map_split(path, strlen(path), &segs), 0);
    return map_route(table, &segs, dir, identity, e, topic, MAP_PATH_MAX + 1);
}

TestSuite(mapping, .init = setup, .fini = teardown);

Test(mapping, spec_telemetry_example)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e = NULL;
    add("telemetry", "bikes/{identity}/telemetry", "redback/p1/bikes/{identity}/telemetry", MAP_UP,
        1);
    cr_assert_eq(route("bikes/bike-7/telemetry", MAP_UP, "bike-7", topic, &e), MAP_OK);
    cr_assert_str_eq(topic, "redback/p1/bikes/bike-7/telemetry");
    cr_assert_str_eq(map_entry_name(e), "telemetry");
    cr_assert_eq(map_entry_qos(e), 1);
}

Test(mapping, another_identity_is_forbidden)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("telemetry", "bikes/{identity}/telemetry", "redback/bikes/{identity}/telemetry", MAP_UP, 1);
    cr_assert_eq(route("bikes/bike-8/telemetry", MAP_UP, "bike-7", topic, &e), MAP_FORBIDDEN);
    cr_assert_eq(map_status_code(MAP_FORBIDDEN), 403);
}

Test(mapping, identity_needed_but_anonymous)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("telemetry", "bikes/{identity}/telemetry", "redback/bikes/{identity}/telemetry", MAP_UP, 1);
    add("hello", "hello", "redback/hello/{identity}", MAP_UP, 0);
    cr_assert_eq(route("bikes/bike-7/telemetry", MAP_UP, NULL, topic, &e), MAP_UNAUTHORIZED);
    /* {identity} only in the topic needs an identity too. */
    cr_assert_eq(route("hello", MAP_UP, NULL, topic, &e), MAP_UNAUTHORIZED);
    cr_assert_eq(route("hello", MAP_UP, "bike-1", topic, &e), MAP_OK);
    cr_assert_str_eq(topic, "redback/hello/bike-1");
}

Test(mapping, variables_and_multi_segment)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("ev", "fleet/{site}/events/{rest*}", "{gateway}/sites/{site}/{rest*}", MAP_UP, 0);
    cr_assert_eq(route("fleet/perth/events/a/b/c", MAP_UP, NULL, topic, &e), MAP_OK);
    cr_assert_str_eq(topic, "edge-01/sites/perth/a/b/c");
    cr_assert_eq(route("fleet/perth/events", MAP_UP, NULL, topic, &e), MAP_NOT_FOUND);
}

Test(mapping, not_found_and_wrong_method)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("up", "a/{x}", "t/{x}", MAP_UP, 0);
    cr_assert_eq(route("b/1", MAP_UP, NULL, topic, &e), MAP_NOT_FOUND);
    cr_assert_eq(route("a/1/2", MAP_UP, NULL, topic, &e), MAP_NOT_FOUND);
    cr_assert_eq(route("a/1", MAP_DOWN, NULL, topic, &e), MAP_BAD_METHOD);
    cr_assert_eq(map_status_code(MAP_NOT_FOUND), 404);
    cr_assert_eq(map_status_code(MAP_BAD_METHOD), 405);
}

Test(mapping, first_match_in_file_order_for_the_direction)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("down", "a/{x}", "down/{x}", MAP_DOWN, 0);
    add("up", "a/{x}", "up/{x}", MAP_UP, 0);
    add("late", "a/{x}", "late/{x}", MAP_UP, 0);
    cr_assert_eq(route("a/1", MAP_UP, NULL, topic, &e), MAP_OK);
    cr_assert_str_eq(topic, "up/1");
    cr_assert_str_eq(map_entry_name(map_table_shadowed_by(table, map_table_get(table, 2))), "up");
    cr_assert_null(map_table_shadowed_by(table, map_table_get(table, 1)));
}

Test(mapping, bad_values_are_refused)
{
    static const char *bad[] = { "a/+", "a/#",    "a/$SYS",     "a/x+y",         "a/x#",
                                 "a/",  "a/\xff", "a/\xc0\xaf", "a/\xed\xa0\x80" };
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    add("up", "a/{x}", "t/{x}", MAP_UP, 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_expect_eq(route(bad[i], MAP_UP, NULL, topic, &e), MAP_BAD_VALUE, "%zu", i);
    /* A NUL inside a segment (CoAP options are binary). */
    map_segs_t segs = { .n = 2, .s = { "a", "x\0y" }, .len = { 1, 3 } };
    cr_assert_eq(map_route(table, &segs, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_BAD_VALUE);
    /* A '/' inside one Uri-Path option would add topic levels. */
    map_segs_t slash = { .n = 2, .s = { "a", "x/y" }, .len = { 1, 3 } };
    cr_assert_eq(map_route(table, &slash, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_BAD_VALUE);
    cr_assert_eq(map_status_code(MAP_BAD_VALUE), 400);
    cr_assert_eq(route("a/caf\xc3\xa9", MAP_UP, NULL, topic, &e), MAP_OK);
}

Test(mapping, refused_templates)
{
    static const struct {
        const char *res, *topic, *why;
    } cases[] = {
        { "a/{x}", "t/{y}", "does not appear" },
        { "a/{x}", "t", "does not appear" },
        { "a", "t/{y}", "does not appear" },
        { "a/{x*}/b", "t/{x*}", "last segment" },
        { "a/{x*}", "t/{x}", "is {x*}" },
        { "a/+", "t", "wildcard" },
        { "a", "t/#", "wildcard" },
        { "a", "$SYS/x", "'$'" },
        { "/a", "t", "empty segment" },
        { "a//b", "t", "empty segment" },
        { "a/", "t", "empty segment" },
        { "", "t", "empty" },
        { "a/b{x}", "t/{x}", "whole segment" },
        { "a/{x-y}", "t", "not a variable" },
        { "a/{x}/{x}", "t/{x}", "twice" },
        { "a/{identity*}", "t", "{identity}" },
        { "a/{}", "t", "not a variable" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        cr_expect_lt(add_err(cases[i].res, cases[i].topic, MAP_UP, err, sizeof(err)), 0,
                     "%s -> %s accepted", cases[i].res, cases[i].topic);
        cr_expect(strstr(err, cases[i].why) != NULL, "%s -> %s: \"%s\" lacks \"%s\"", cases[i].res,
                  cases[i].topic, err, cases[i].why);
    }
    cr_assert_eq(map_table_count(table), 0);
}

Test(mapping, names_qos_direction_checked)
{
    char err[256];
    map_spec_t s = { .name = "a", .resource = "r", .topic = "t", .direction = MAP_UP, .qos = 3 };
    cr_assert_lt(map_table_add(table, &s, err, sizeof(err)), 0);
    s.qos = 0;
    s.direction = 0;
    cr_assert_lt(map_table_add(table, &s, err, sizeof(err)), 0);
    s.direction = MAP_UP;
    cr_assert_eq(map_table_add(table, &s, err, sizeof(err)), 0);
    cr_assert_lt(map_table_add(table, &s, err, sizeof(err)), 0);
    cr_assert(strstr(err, "already used") != NULL);
}

Test(mapping, subscription_filters)
{
    char buf[256];
    add("c", "bikes/{identity}/commands", "redback/{gateway}/bikes/{identity}/commands", MAP_DOWN,
        1);
    add("w", "plans/{plan}/{rest*}", "redback/plans/{plan}/{rest*}", MAP_DOWN, 0);
    cr_assert_gt(map_entry_filter(map_table_get(table, 0), buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "redback/edge-01/bikes/+/commands");
    cr_assert_gt(map_entry_filter(map_table_get(table, 1), buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "redback/plans/+/#");
    cr_assert_eq(map_entry_filter(map_table_get(table, 1), buf, 8), -ENAMETOOLONG);
}

Test(mapping, topic_back_to_resource)
{
    char res[MAP_PATH_MAX + 1], id[MAP_IDENTITY_MAX + 1];
    const map_entry_t *e = NULL;
    const char *t = "redback/p1/bikes/bike-7/commands";
    add("telemetry", "bikes/{identity}/telemetry", "redback/p1/bikes/{identity}/telemetry", MAP_UP,
        1);
    add("commands", "bikes/{identity}/commands", "redback/p1/bikes/{identity}/commands", MAP_DOWN,
        1);
    add("plans", "plans/{rest*}", "redback/plans/{rest*}", MAP_BOTH, 0);
    cr_assert_eq(map_reverse(table, t, strlen(t), &e, res, sizeof(res), id, sizeof(id)), MAP_OK);
    cr_assert_str_eq(res, "bikes/bike-7/commands");
    cr_assert_str_eq(id, "bike-7");
    cr_assert_str_eq(map_entry_name(e), "commands");
    t = "redback/plans/a/b";
    cr_assert_eq(map_reverse(table, t, strlen(t), &e, res, sizeof(res), id, sizeof(id)), MAP_OK);
    cr_assert_str_eq(res, "plans/a/b");
    cr_assert_str_eq(id, "");
    /* An up-only mapping's topic is not a resource. */
    t = "redback/p1/bikes/bike-7/telemetry";
    cr_assert_eq(map_reverse(table, t, strlen(t), &e, res, sizeof(res), id, sizeof(id)),
                 MAP_NOT_FOUND);
    t = "redback/p1/bikes/$x/commands";
    cr_assert_eq(map_reverse(table, t, strlen(t), &e, res, sizeof(res), id, sizeof(id)),
                 MAP_BAD_VALUE);
}

Test(mapping, identities)
{
    char longid[MAP_IDENTITY_MAX + 2];
    memset(longid, 'a', sizeof(longid));
    cr_assert(map_identity_ok("bike-7", 6));
    cr_assert(map_identity_ok(longid, MAP_IDENTITY_MAX));
    cr_assert_not(map_identity_ok(longid, MAP_IDENTITY_MAX + 1));
    cr_assert_not(map_identity_ok("", 0));
    cr_assert_not(map_identity_ok("a/b", 3));
    cr_assert_not(map_identity_ok("a+b", 3));
    cr_assert_not(map_identity_ok("a#", 2));
    cr_assert_not(map_identity_ok("$a", 2));
    cr_assert_not(map_identity_ok("a\0b", 3));
    cr_assert_not(map_identity_ok("\xfe", 1));
}

/* MQTT's string rules, as Mosquitto enforces them: what a broker would refuse. */
Test(mapping, mqtt_string_rules)
{
    static const char *const refused[] = {
        ("a\x01"
         "b"),              /* U+0001 */
        "tab\there",        /* U+0009 */
        "nl\n",             /* U+000A */
        "\x1f",             /* U+001F */
        "del\x7f",          /* U+007F */
        "\xc2\x80",         /* U+0080 */
        "\xc2\x9f",         /* U+009F */
        "\xef\xb7\x90",     /* U+FDD0, a noncharacter */
        "\xef\xb7\xaf",     /* U+FDEF */
        "\xef\xbf\xbe",     /* U+FFFE */
        "\xef\xbf\xbf",     /* U+FFFF */
        "\xf0\x9f\xbf\xbe", /* U+1FFFE */
        "\xf4\x8f\xbf\xbf", /* U+10FFFF */
        "\xed\xa0\x80",     /* a surrogate */
        "\xc0\xaf",         /* overlong '/' */
        "\xf4\x90\x80\x80", /* beyond U+10FFFF */
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        size_t len = strlen(refused[i]);
        cr_assert_not(map_mqtt_string_ok(refused[i], len), "accepted case %zu", i);
        cr_assert_not(map_value_ok(refused[i], len), "value accepted, case %zu", i);
        cr_assert_not(map_identity_ok(refused[i], len), "identity accepted, case %zu", i);
    }
    cr_assert_not(map_mqtt_string_ok("a\0b", 3));
    /* Just around the refused ranges. */
    cr_assert(map_mqtt_string_ok(" ~", 2));
    cr_assert(map_mqtt_string_ok("\xc2\xa0", 2));         /* U+00A0 */
    cr_assert(map_mqtt_string_ok("\xef\xb7\x8f", 3));     /* U+FDCF */
    cr_assert(map_mqtt_string_ok("\xef\xb7\xb0", 3));     /* U+FDF0 */
    cr_assert(map_mqtt_string_ok("\xef\xbf\xbd", 3));     /* U+FFFD */
    cr_assert(map_mqtt_string_ok("\xf0\x9f\x9a\xb2", 4)); /* a bicycle */
    cr_assert(map_value_ok("\xf0\x9f\x9a\xb2", 4));
    /* Payloads are not MQTT strings: text with a newline is still UTF-8. */
    cr_assert(map_utf8_ok("{\n\"a\": 1\n}", 10));
    /* Topics: no wildcards, not empty, at most 65535 bytes. */
    cr_assert(map_topic_ok("a/b", 3));
    cr_assert_not(map_topic_ok("", 0));
    cr_assert_not(map_topic_ok("a/+", 3));
    cr_assert_not(map_topic_ok("a/#", 3));
    cr_assert_not(map_topic_ok("a/\x01", 3));
}

/* A request whose path holds a control character is refused, never routed. */
Test(mapping, control_characters_in_paths_are_refused)
{
    char topic[MAP_PATH_MAX + 1];
    const map_entry_t *e;
    map_segs_t segs;
    add("z", "zones/{zone}/{rest*}", "redback/zones/{zone}/{rest*}", MAP_UP, 1);
    static const char *const bad[] = { ("zones/a\x01"
                                        "b/x"),
                                       "zones/ab/x\x7f", "zones/\x1f/x", "zones/a/b\xc2\x85" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(map_split(bad[i], strlen(bad[i]), &segs), 0);
        cr_assert_eq(map_route(table, &segs, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_BAD_VALUE,
                     "case %zu", i);
    }
    map_split("zones/ab/x", 10, &segs);
    cr_assert_eq(map_route(table, &segs, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_OK);
    /* And a template with one is refused when it is read. */
    map_spec_t spec = { .name = "bad", .resource = "a\tb", .topic = "t", .direction = MAP_UP };
    char err[200];
    cr_assert_lt(map_table_add(table, &spec, err, sizeof(err)), 0);
    cr_assert(strstr(err, "control character"), "%s", err);
}

Test(mapping, too_many_segments)
{
    char path[200];
    map_segs_t segs;
    size_t n = 0;
    for (int i = 0; i < MAP_SEGMENTS_MAX + 1; i++)
        n += (size_t)snprintf(path + n, sizeof(path) - n, i ? "/a" : "a");
    cr_assert_eq(map_split(path, n, &segs), -E2BIG);
}

Test(mapping, fixed_resources_for_discovery)
{
    char buf[MAP_PATH_MAX + 1];
    add("c", "bikes/{identity}/commands", "redback/bikes/{identity}/commands", MAP_DOWN, 1);
    add("v", "zones/{zone}", "redback/zones/{zone}", MAP_DOWN, 0);
    add("h", "{gateway}/hello", "redback/hello", MAP_UP, 0);
    cr_assert_eq(map_entry_fixed_resource(map_table_get(table, 0), "bike-7", buf, sizeof(buf)), 21);
    cr_assert_str_eq(buf, "bikes/bike-7/commands");
    cr_assert_eq(map_entry_fixed_resource(map_table_get(table, 0), NULL, buf, sizeof(buf)),
                 -EACCES);
    cr_assert_eq(map_entry_fixed_resource(map_table_get(table, 1), "bike-7", buf, sizeof(buf)),
                 -EINVAL);
    cr_assert_gt(map_entry_fixed_resource(map_table_get(table, 2), NULL, buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "edge-01/hello");
    cr_assert_eq(map_entry_fixed_resource(map_table_get(table, 0), "bike-7", buf, 8),
                 -ENAMETOOLONG);
}

/*
 * A down mapping with {identity} only in its topic would make every device's
 * topic the same resource: one device would read another's value.
 */
Test(mapping, down_identity_in_topic_only_is_refused)
{
    char err[200];
    map_spec_t spec = { .name = "mine",
                        .resource = "mine/cmd",
                        .topic = "t/{identity}/cmd",
                        .direction = MAP_DOWN,
                        .qos = 1 };
    cr_assert_lt(map_table_add(table, &spec, err, sizeof(err)), 0);
    cr_assert(strstr(err, "needs it in the resource"), "%s", err);
    spec.direction = MAP_BOTH;
    cr_assert_lt(map_table_add(table, &spec, err, sizeof(err)), 0);
    spec.direction = MAP_UP; /* up: the identity fills the topic, as tandem.conf(5) says */
    cr_assert_eq(map_table_add(table, &spec, err, sizeof(err)), 0, "%s", err);
}

/* Joins n segments "s0/s1/..." of the given prefix into buf. */
static size_t deep_path(char *buf, size_t size, const char *prefix, int n)
{
    size_t len = (size_t)snprintf(buf, size, "%s", prefix);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, size - len, "%ss%d", i || *prefix ? "/" : "", i);
    return len;
}

/*
 * A {x*} value fills the path's MAP_SEGMENTS_MAX segments; the other template
 * has more segments before it. The rendered topic (or resource) would have
 * more segments than any path or topic may have, so it could not be routed
 * back: the "both" mapping's value could never be read, and a topic's
 * resource never requested. Refused (4.00 up, dropped down) rather than
 * rendered; found by tests/fuzz/fuzz_mapping.
 */
Test(mapping, rendering_keeps_the_segment_bound)
{
    char path[512], topic[MAP_PATH_MAX + 1], res[MAP_PATH_MAX + 1], id[MAP_IDENTITY_MAX + 1];
    const map_entry_t *e = NULL;
    map_segs_t segs;
    add("public", "public/{rest*}", "redback/public/{rest*}", MAP_BOTH, 0);
    add("config", "fleet/{gateway}/config/{key*}", "cfg/{key*}", MAP_DOWN, 1);

    /* 32 segments in the path, 33 in the topic. */
    size_t len = deep_path(path, sizeof(path), "public", MAP_SEGMENTS_MAX - 1);
    cr_assert_eq(map_split(path, len, &segs), 0);
    cr_assert_eq(map_route(table, &segs, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_BAD_VALUE);
    /* 31 and 32: fine, and back again. */
    len = deep_path(path, sizeof(path), "public", MAP_SEGMENTS_MAX - 2);
    cr_assert_eq(map_split(path, len, &segs), 0);
    cr_assert_eq(map_route(table, &segs, MAP_UP, NULL, &e, topic, sizeof(topic)), MAP_OK);
    cr_assert_eq(map_reverse(table, topic, strlen(topic), &e, res, sizeof(res), id, sizeof(id)),
                 MAP_OK);
    cr_assert_str_eq(res, path);

    /* 31 segments in the topic, 33 in the resource; then 30 and 32. */
    len = deep_path(topic, sizeof(topic), "cfg", MAP_SEGMENTS_MAX - 2);
    cr_assert_eq(map_reverse(table, topic, len, &e, res, sizeof(res), id, sizeof(id)),
                 MAP_BAD_VALUE);
    len = deep_path(topic, sizeof(topic), "cfg", MAP_SEGMENTS_MAX - 3);
    cr_assert_eq(map_reverse(table, topic, len, &e, res, sizeof(res), id, sizeof(id)), MAP_OK);
    cr_assert_eq(map_split(res, strlen(res), &segs), 0);
    cr_assert_eq(segs.n, MAP_SEGMENTS_MAX);
}

/*
 * A message on a topic longer than MAP_PATH_MAX, whose resource is shorter:
 * map_route() would never render that topic again (its buffer, as every
 * caller's, holds MAP_PATH_MAX bytes), so a GET on the resource answered 4.00
 * while the value sat in the store. Refused like any topic Tandem cannot
 * render; found by tests/fuzz/fuzz_mapping's round-trip check.
 */
Test(mapping, reverse_keeps_the_length_bound)
{
    char topic[MAP_PATH_MAX + 2], res[MAP_PATH_MAX + 1], id[MAP_IDENTITY_MAX + 1];
    const map_entry_t *e = NULL;
    add("public", "public/{rest*}", "redback/public/{rest*}", MAP_BOTH, 0);

    size_t len = (size_t)snprintf(topic, sizeof(topic), "redback/public/");
    memset(topic + len, 'w', MAP_PATH_MAX - len);
    topic[MAP_PATH_MAX] = '\0';
    cr_assert_eq(map_reverse(table, topic, MAP_PATH_MAX, &e, res, sizeof(res), id, sizeof(id)),
                 MAP_OK);
    strcpy(topic + MAP_PATH_MAX, "w");
    cr_assert_eq(map_reverse(table, topic, MAP_PATH_MAX + 1, &e, res, sizeof(res), id, sizeof(id)),
                 MAP_BAD_VALUE);
}
