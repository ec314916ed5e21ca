/*
 * Fuzz target: the MQTT devices' policy (mapping/policy.c), which stands
 * between what an MQTT device sends (PUBLISH topics, Will topics, Response
 * Topics, SUBSCRIBE filters) and the broker.
 *
 * Input: the first byte selects the mode; the rest is split into fields at
 * 0xFF bytes (0xFF never occurs in UTF-8).
 *
 *   even first byte: IDENTITY 0xFF TOPIC 0xFF FILTER 0xFF VALUES, against a
 *     fixed table: the reference mappings (etc/tandem.conf) and a few more, built once.
 *   odd first byte, then two bytes K, DIRS: a table built from the input,
 *     GATEWAY 0xFF (RESOURCE 0xFF TOPIC) * (K % 4 + 1) 0xFF IDENTITY 0xFF
 *     TOPIC 0xFF FILTER 0xFF VALUES; mapping i has direction (DIRS >> 2i) & 3.
 *
 * VALUES is split at 0xFE bytes into levels, taken in turn wherever a topic
 * is made up: for each '+' of a filter, for '#' (one to three levels), for
 * each variable of a template.
 *
 * Each question is asked as IDENTITY (as it comes, even one that no
 * handshake would accept), as "bike-7" and anonymously:
 *   - TOPIC, for both directions (check_topic()): a topic allowed is one of
 *     its mapping's topics with the device's identity in {identity}, and each
 *     refusal is the one policy.h describes;
 *   - FILTER and TOPIC as filters (check_filter()): every concrete topic of an
 *     allowed filter is allowed for MAP_DOWN with the same identity, so that
 *     a filter granted never covers another device's topic; a filter without
 *     wildcards is answered as the same topic is;
 *   - each mapping's own topics and filter, rendered for the device, are
 *     allowed, and its topics rendered for another device are not
 *     (check_own()).
 * A violation aborts.
 */
#include "fuzz.h"

#include <stdbool.h>
#include <string.h>

#include "mapping.h"
#include "policy.h"

#define FIELDS_MAX 16
#define VALUES_MAX 16
/* Room for any topic made up here: a filter within MAP_TOPIC_MAX, values from one input. */
#define BUF_MAX (2 * MAP_TOPIC_MAX + 64)

typedef struct field {
    const char *s;
    size_t len;
} field_t;

typedef struct ctx {
    const map_table_t *t;
    const char *gateway;
    field_t values[VALUES_MAX];
    size_t nvalues, next;
} ctx_t;

/* A made-up topic, and whether it is one a mapping can render. */
typedef struct made {
    char *s;
    size_t len, levels;
    bool values_ok; /* every value put in is one map_value_ok() accepts */
} made_t;

static bool seg_is(const char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && !memcmp(s, lit, len);
}

static bool is_level(const char *s, size_t len, char c)
{
    return len == 1 && s[0] == c;
}

/* The next value, in turn; "v" when the input has none. */
static field_t next_value(ctx_t *c)
{
    if (c->nvalues == 0)
        return (field_t){ "v", 1 };
    return c->values[c->next++ % c->nvalues];
}

/* The next value that map_value_ok() accepts, else "v". */
static field_t next_good_value(ctx_t *c)
{
    for (size_t i = 0; i < c->nvalues; i++) {
        field_t v = next_value(c);
        if (map_value_ok(v.s, v.len))
            return v;
    }
    return (field_t){ "v", 1 };
}

static void made_put(made_t *m, const char *s, size_t len)
{
    if (m->len + len + 1 > BUF_MAX) {
        m->values_ok = false; /* too long to be rendered anyway; cut */
        return;
    }
    memcpy(m->s + m->len, s, len);
    m->len += len;
    m->s[m->len] = '\0';
}

static void made_level(made_t *m, const char *s, size_t len)
{
    if (m->levels++)
        made_put(m, "/", 1);
    made_put(m, s, len);
}

static void made_value(ctx_t *c, made_t *m)
{
    field_t v = next_value(c);
    if (!map_value_ok(v.s, v.len))
        m->values_ok = false;
    made_level(m, v.s, v.len);
}

/* A topic a mapping may render: within MAP_PATH_MAX and MAP_SEGMENTS_MAX, every value allowed. */
static bool made_renderable(const made_t *m)
{
    return m->values_ok && m->len <= MAP_PATH_MAX && m->levels <= MAP_SEGMENTS_MAX;
}

/* The device's identity as an {identity} level must be: one a device may have. */
static bool identity_ok(const char *id)
{
    return id && map_identity_ok(id, strlen(id));
}

/*
 * A topic allowed by e as identity: the template's literals, the gateway id,
 * the device's identity where {identity} is, a value a variable may take for each
 * variable ({x*}: one or more).
 */
static void check_in_template(const ctx_t *c, const map_entry_t *e, const char *topic, size_t len,
                              const char *id)
{
    map_segs_t ts, rs;
    const char *tmpl = map_entry_topic(e);

    if (map_entry_uses_identity(e))
        FUZZ_CHECK(identity_ok(id));
    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    FUZZ_CHECK(map_split(topic, len, &rs) == 0);
    for (size_t i = 0; i < ts.n; i++) {
        const char *g = ts.s[i];
        size_t glen = ts.len[i];
        FUZZ_CHECK(i < rs.n);
        if (seg_is(g, glen, "{identity}")) {
            FUZZ_CHECK(seg_is(rs.s[i], rs.len[i], id));
        } else if (seg_is(g, glen, "{gateway}")) {
            FUZZ_CHECK(seg_is(rs.s[i], rs.len[i], c->gateway));
        } else if (glen >= 3 && g[0] == '{' && g[glen - 2] == '*') {
            FUZZ_CHECK(i + 1 == ts.n);
            for (size_t k = i; k < rs.n; k++)
                FUZZ_CHECK(map_value_ok(rs.s[k], rs.len[k]));
            return;
        } else if (glen && g[0] == '{') {
            FUZZ_CHECK(map_value_ok(rs.s[i], rs.len[i]));
        } else {
            FUZZ_CHECK(rs.len[i] == glen && !memcmp(rs.s[i], g, glen));
        }
    }
    FUZZ_CHECK(rs.n == ts.n);
}

/* Asks map_policy_topic() and checks the answer against policy.h. */
static enum map_status check_topic(const ctx_t *c, const char *topic, size_t len, int dir,
                                   const char *id, const map_entry_t **out)
{
    const map_entry_t *e = (const map_entry_t *)&e; /* the call must set it */
    enum map_status st = map_policy_topic(c->t, topic, len, dir, id, &e);
    bool wellformed = map_topic_ok(topic, len) && topic[0] != '$';

    FUZZ_CHECK((st == MAP_BAD_VALUE) == !wellformed);
    switch (st) {
    case MAP_OK:
        FUZZ_CHECK(e && (map_entry_direction(e) & dir));
        check_in_template(c, e, topic, len, id);
        break;
    case MAP_FORBIDDEN:
    case MAP_UNAUTHORIZED:
        FUZZ_CHECK(e && (map_entry_direction(e) & dir) && map_entry_uses_identity(e));
        FUZZ_CHECK(st == MAP_FORBIDDEN ? id != NULL : id == NULL);
        break;
    case MAP_NOT_FOUND:
    case MAP_BAD_VALUE:
        FUZZ_CHECK(e == NULL);
        break;
    default:
        FUZZ_CHECK(!"map_policy_topic() returned another status");
    }
    if (out)
        *out = e;
    return st;
}

/*
 * MQTT's rules for a filter (MQTT 5 §4.7), and $share (§4.8.2): the part the
 * mappings are asked about in *rest, or false when the filter is malformed.
 */
static bool ref_filter(const char *f, size_t len, field_t *rest)
{
    map_segs_t segs;
    if (len == 0 || len > MAP_TOPIC_MAX || !map_mqtt_string_ok(f, len))
        return false;
    /* Split by hand: map_split() stops at MAP_SEGMENTS_MAX. */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && f[i] != '/')
            continue;
        const char *l = f + start;
        size_t llen = i - start;
        if ((memchr(l, '+', llen) || memchr(l, '#', llen)) && llen != 1)
            return false;
        if (is_level(l, llen, '#') && i != len)
            return false;
        start = i + 1;
    }
    *rest = (field_t){ f, len };
    if (f[0] == '$') {
        if (len < 7 || memcmp(f, "$share/", 7))
            return false;
        const char *group = f + 7, *slash = memchr(group, '/', len - 7);
        if (!slash || slash == group)
            return false;
        for (const char *p = group; p < slash; p++)
            if (*p == '+' || *p == '#')
                return false;
        *rest = (field_t){ slash + 1, len - (size_t)(slash + 1 - f) };
        if (rest->len == 0 || rest->s[0] == '$')
            return false;
    }
    return map_split(rest->s, rest->len, &segs) == 0;
}

/* Filter levels allowed by e as identity: each is one of the template's, as policy.h says. */
static void check_filter_in_template(const ctx_t *c, const map_entry_t *e, const map_segs_t *fs,
                                     const char *id)
{
    map_segs_t ts;
    const char *tmpl = map_entry_topic(e);

    if (map_entry_uses_identity(e))
        FUZZ_CHECK(identity_ok(id));
    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    size_t last = ts.n - 1;
    bool multi = ts.len[last] >= 3 && ts.s[last][0] == '{' && ts.s[last][ts.len[last] - 2] == '*';
    for (size_t i = 0; i < fs->n; i++) {
        const char *s = fs->s[i];
        size_t len = fs->len[i];
        bool plus = is_level(s, len, '+');
        if (is_level(s, len, '#')) {
            FUZZ_CHECK(i + 1 == fs->n && multi && i >= last && fs->n > 1);
            return;
        }
        FUZZ_CHECK(i <= last || multi);
        const char *g = ts.s[i < last ? i : last];
        size_t glen = ts.len[i < last ? i : last];
        if (seg_is(g, glen, "{identity}"))
            FUZZ_CHECK(!plus && seg_is(s, len, id));
        else if (seg_is(g, glen, "{gateway}"))
            FUZZ_CHECK(seg_is(s, len, c->gateway));
        else if (glen && g[0] == '{')
            FUZZ_CHECK(plus || map_value_ok(s, len));
        else
            FUZZ_CHECK(len == glen && !memcmp(s, g, glen));
    }
    FUZZ_CHECK(multi ? fs->n >= ts.n : fs->n == ts.n);
}

/*
 * A concrete topic of filter levels fs: each '+' a value, '#' hashes levels
 * (0: the parent, the filter without "/#").
 */
static void make_concrete(ctx_t *c, const map_segs_t *fs, size_t hashes, made_t *m)
{
    m->len = m->levels = 0;
    m->values_ok = true;
    m->s[0] = '\0';
    for (size_t i = 0; i < fs->n; i++) {
        if (is_level(fs->s[i], fs->len[i], '#')) {
            for (size_t k = 0; k < hashes; k++)
                made_value(c, m);
        } else if (is_level(fs->s[i], fs->len[i], '+')) {
            made_value(c, m);
        } else {
            made_level(m, fs->s[i], fs->len[i]);
        }
    }
}

/* Asks map_policy_filter() and checks the answer, and the topics of a filter allowed. */
static void check_filter(ctx_t *c, const char *f, size_t len, const char *id, char *buf)
{
    const map_entry_t *e = (const map_entry_t *)&e;
    field_t rest;
    map_segs_t fs;
    enum map_status st = map_policy_filter(c->t, f, len, id, &e);
    bool wellformed = ref_filter(f, len, &rest);

    FUZZ_CHECK((st == MAP_BAD_VALUE) == !wellformed);
    switch (st) {
    case MAP_OK:
        FUZZ_CHECK(e && (map_entry_direction(e) & MAP_DOWN));
        break;
    case MAP_FORBIDDEN:
    case MAP_UNAUTHORIZED:
        /* The mapping may be one of either direction: see the parent below. */
        FUZZ_CHECK(e && map_entry_uses_identity(e));
        FUZZ_CHECK(st == MAP_FORBIDDEN ? id != NULL : id == NULL);
        break;
    case MAP_NOT_FOUND:
    case MAP_BAD_VALUE:
        FUZZ_CHECK(e == NULL);
        break;
    default:
        FUZZ_CHECK(!"map_policy_filter() returned another status");
    }
    if (!wellformed)
        return;
    FUZZ_CHECK(map_split(rest.s, rest.len, &fs) == 0);

    /* Without wildcards a filter is one topic, and answered as that topic is. */
    if (!memchr(rest.s, '+', rest.len) && !memchr(rest.s, '#', rest.len) && rest.s == f) {
        const map_entry_t *te;
        enum map_status tst = check_topic(c, f, len, MAP_DOWN, id, &te);
        FUZZ_CHECK(tst == st && te == e);
    }
    if (st != MAP_OK)
        return;
    FUZZ_CHECK(!is_level(rest.s, rest.len, '#'));
    check_filter_in_template(c, e, &fs, id);

    /* Every topic it matches is one the device may receive: no other device's. */
    made_t m = { .s = buf };
    for (size_t hashes = 1; hashes <= 3; hashes++) {
        const map_entry_t *te;
        make_concrete(c, &fs, hashes, &m);
        enum map_status tst = check_topic(c, m.s, m.len, MAP_DOWN, id, &te);
        if (made_renderable(&m))
            FUZZ_CHECK(tst == MAP_OK);
    }
    /*
     * "a/#" matches "a" too. That parent is no other device's topic, in
     * either direction; when the '#' stands after e's {x*}, it is e's.
     */
    if (fs.n >= 2 && is_level(fs.s[fs.n - 1], fs.len[fs.n - 1], '#')) {
        map_segs_t ts;
        FUZZ_CHECK(map_split(map_entry_topic(e), strlen(map_entry_topic(e)), &ts) == 0);
        make_concrete(c, &fs, 0, &m);
        enum map_status up = check_topic(c, m.s, m.len, MAP_UP, id, NULL);
        enum map_status down = check_topic(c, m.s, m.len, MAP_DOWN, id, NULL);
        if (made_renderable(&m) && fs.n == ts.n) {
            FUZZ_CHECK(up != MAP_FORBIDDEN && up != MAP_UNAUTHORIZED);
            FUZZ_CHECK(down != MAP_FORBIDDEN && down != MAP_UNAUTHORIZED);
        } else if (made_renderable(&m)) {
            FUZZ_CHECK(down == MAP_OK);
        }
    }
}

/*
 * A mapping's own topics and filter, made up from its template: {identity}
 * as who, {gateway} the id, variables from VALUES (filter: '+', and "+/#"
 * for {x*}). as_filter false: a topic; true: a filter.
 */
static void make_own(ctx_t *c, const map_entry_t *e, const char *who, bool as_filter, made_t *m)
{
    map_segs_t ts;
    const char *tmpl = map_entry_topic(e);

    m->len = m->levels = 0;
    m->values_ok = true;
    m->s[0] = '\0';
    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    for (size_t i = 0; i < ts.n; i++) {
        const char *g = ts.s[i];
        size_t glen = ts.len[i];
        if (seg_is(g, glen, "{identity}")) {
            made_level(m, who, strlen(who));
        } else if (seg_is(g, glen, "{gateway}")) {
            made_level(m, c->gateway, strlen(c->gateway));
        } else if (glen >= 3 && g[0] == '{' && g[glen - 2] == '*') {
            if (as_filter) {
                made_level(m, "+", 1);
                made_level(m, "#", 1);
            } else {
                size_t n = 1 + c->next % 3;
                for (size_t k = 0; k < n; k++) {
                    field_t v = next_good_value(c);
                    made_level(m, v.s, v.len);
                }
            }
        } else if (glen && g[0] == '{') {
            if (as_filter) {
                made_level(m, "+", 1);
            } else {
                field_t v = next_good_value(c);
                made_level(m, v.s, v.len);
            }
        } else {
            made_level(m, g, glen);
        }
    }
}

/* Each mapping's own topics and filter are the device's; another device's topics are not. */
static void check_own(ctx_t *c, const char *id, char *buf)
{
    made_t m = { .s = buf };
    for (size_t i = 0; i < map_table_count(c->t); i++) {
        const map_entry_t *e = map_table_get(c->t, i), *te;
        int dir = map_entry_direction(e) & MAP_UP ? MAP_UP : MAP_DOWN;
        bool uses = map_entry_uses_identity(e);

        if (!uses || identity_ok(id)) {
            make_own(c, e, uses ? id : "", false, &m);
            enum map_status st = check_topic(c, m.s, m.len, dir, id, NULL);
            if (made_renderable(&m))
                FUZZ_CHECK(st == MAP_OK);
            if (map_entry_direction(e) & MAP_DOWN) {
                make_own(c, e, uses ? id : "", true, &m);
                st = map_policy_filter(c->t, m.s, m.len, id, &te);
                if (m.len <= MAP_PATH_MAX && m.levels <= MAP_SEGMENTS_MAX)
                    FUZZ_CHECK(st == MAP_OK);
                check_filter(c, m.s, m.len, id, buf + BUF_MAX);
            }
        }
        /*
         * Another device's topic (or, anonymous, any device's): refused, unless
         * another mapping gives it to this device too.
         */
        const char *other = id && !strcmp(id, "bike-8") ? "bike-9" : "bike-8";
        if (!uses || (id && !strstr(map_entry_topic(e), "{identity}")))
            continue;
        make_own(c, e, other, false, &m);
        enum map_status st = check_topic(c, m.s, m.len, dir, id, &te);
        if (made_renderable(&m))
            FUZZ_CHECK(st == MAP_OK ? te != e : st == (id ? MAP_FORBIDDEN : MAP_UNAUTHORIZED));
    }
}

static size_t split_at(const uint8_t *data, size_t size, uint8_t sep, field_t *f, size_t max)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < max; i++) {
        if (i == size || (data[i] == sep && n + 1 < max)) {
            f[n].s = (const char *)data + start;
            f[n].len = i - start;
            n++;
            start = i + 1;
        }
    }
    return n; /* the last field took the rest */
}

static char bufs[3][BUF_MAX];

/* Asks everything as each identity. */
static void exercise(ctx_t *c, field_t identity, field_t topic, field_t filter, field_t values)
{
    char *raw = strndup(identity.s, identity.len); /* stops at a NUL, as a certificate's CN would */
    FUZZ_CHECK(raw);
    const char *ids[3] = { NULL, "bike-7", raw };
    size_t nids = strcmp(raw, "bike-7") ? 3 : 2;

    c->nvalues = split_at((const uint8_t *)values.s, values.len, 0xfe, c->values, VALUES_MAX);
    if (values.len == 0)
        c->nvalues = 0;
    for (size_t i = 0; i < nids; i++) {
        c->next = 0;
        check_topic(c, topic.s, topic.len, MAP_UP, ids[i], NULL);
        check_topic(c, topic.s, topic.len, MAP_DOWN, ids[i], NULL);
        check_filter(c, topic.s, topic.len, ids[i], bufs[0]);
        check_filter(c, filter.s, filter.len, ids[i], bufs[0]);
        check_own(c, ids[i], bufs[1]);
    }
    free(raw);
}

/* The reference mappings (etc/tandem.conf), one of each kind of template, and two that overlap. */
static const map_spec_t fixed_specs[] = {
    { "telemetry", "bikes/{identity}/telemetry", "redback/p1/bikes/{identity}/telemetry", MAP_UP, 1,
      false },
    { "commands", "bikes/{identity}/commands", "redback/p1/bikes/{identity}/commands", MAP_DOWN, 1,
      false },
    { "state", "bikes/{identity}/state", "redback/p1/bikes/{identity}/state", MAP_BOTH, 1, true },
    { "logs", "bikes/{identity}/logs/{path*}", "redback/p1/logs/{identity}/{path*}", MAP_BOTH, 0,
      false },
    { "hello", "hello", "redback/p1/hello/{identity}", MAP_UP, 0, false },
    { "fleet", "bikes/{identity}/fleet", "redback/fleet", MAP_UP, 0, false },
    { "alerts", "zones/{zone}/bikes/{bike}/alerts", "redback/{gateway}/zones/{zone}/{bike}/alerts",
      MAP_BOTH, 2, false },
    { "public", "public/{rest*}", "redback/public/{rest*}", MAP_DOWN, 0, true },
    { "after", "x/{zone}/{identity}", "redback/after/{zone}/{identity}", MAP_BOTH, 1, false },
    { "deep", "d/{zone}/{identity}/{rest*}", "t/{zone}/{identity}/{rest*}", MAP_DOWN, 1, false },
    /* "t/{zone}/me/#" would also match "t/{zone}/me", a topic of device "{zone}" here. */
    { "status", "s/{identity}/{y}", "t/{identity}/{y}", MAP_UP, 1, false },
    { "open", "o/{zone}/{x}", "t/{zone}/{x}/open", MAP_DOWN, 0, false },
};

static map_table_t *fixed;

static void fixed_free(void)
{
    map_table_free(fixed);
    fixed = NULL;
}

static const map_table_t *fixed_table(void)
{
    if (fixed)
        return fixed;
    fixed = map_table_new("edge-01");
    FUZZ_CHECK(fixed);
    for (size_t i = 0; i < sizeof(fixed_specs) / sizeof(fixed_specs[0]); i++) {
        char err[256];
        FUZZ_CHECK(map_table_add(fixed, &fixed_specs[i], err, sizeof(err)) == 0);
    }
    atexit(fixed_free);
    return fixed;
}

static void fuzz_fixed(const uint8_t *data, size_t size)
{
    field_t f[4] = { { "", 0 }, { "", 0 }, { "", 0 }, { "", 0 } };
    split_at(data, size, 0xff, f, 4);
    ctx_t c = { .t = fixed_table(), .gateway = "edge-01" };
    exercise(&c, f[0], f[1], f[2], f[3]);
}

static void fuzz_table(const uint8_t *data, size_t size)
{
    uint8_t hdr[2] = { 0, 0 };
    for (size_t i = 0; i < 2 && i < size; i++)
        hdr[i] = data[i];
    data += size < 2 ? size : 2;
    size -= size < 2 ? size : 2;

    size_t k = hdr[0] % 4 + 1;
    field_t f[FIELDS_MAX];
    for (size_t i = 0; i < FIELDS_MAX; i++)
        f[i] = (field_t){ "", 0 };
    split_at(data, size, 0xff, f, 1 + 2 * k + 4);

    /* The configuration accepts only such gateway ids (gateway/config.c). */
    char *gw = strndup(f[0].s, f[0].len);
    FUZZ_CHECK(gw);
    const char *gateway = map_value_ok(gw, strlen(gw)) && strlen(gw) <= 64 ? gw : "edge-01";
    map_table_t *t = map_table_new(gateway);
    FUZZ_CHECK(t);
    static const char *const names[] = { "m0", "m1", "m2", "m3" };
    for (size_t i = 0; i < k; i++) {
        char *res = strndup(f[1 + 2 * i].s, f[1 + 2 * i].len);
        char *top = strndup(f[2 + 2 * i].s, f[2 + 2 * i].len);
        FUZZ_CHECK(res && top);
        map_spec_t spec = { .name = names[i],
                            .resource = res,
                            .topic = top,
                            .direction = (hdr[1] >> (2 * i)) & 3,
                            .qos = 1 };
        char err[256];
        (void)map_table_add(t, &spec, err, sizeof(err)); /* refused ones are fuzz_mapping's */
        free(res);
        free(top);
    }
    ctx_t c = { .t = t, .gateway = gateway };
    exercise(&c, f[1 + 2 * k], f[2 + 2 * k], f[3 + 2 * k], f[4 + 2 * k]);
    map_table_free(t);
    free(gw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] & 1)
        fuzz_table(data + 1, size - 1);
    else
        fuzz_fixed(data + 1, size - 1);
    return 0;
}
