/*
 * Fuzz target: the mapping engine, which stands between what a device or the
 * broker sends (a Uri-Path, a topic) and what Tandem publishes or serves.
 *
 * Input: the first byte selects the mode; the rest is split into fields at
 * 0xFF bytes (0xFF never occurs in UTF-8, so no interesting value is lost).
 *
 *   even first byte: PATH 0xFF IDENTITY 0xFF TOPIC, run against a fixed table:
 *     the reference configuration's mappings and a few more ({x*}, {gateway}, {identity}
 *     in the topic only), built once.
 *   odd first byte, then three bytes K, DIRS, QOS: a table built from the
 *     input, GATEWAY 0xFF (RESOURCE 0xFF TOPIC) * (K % 4 + 1) 0xFF PATH 0xFF
 *     IDENTITY 0xFF TOPIC; mapping i has direction (DIRS >> 2i) & 3 and qos
 *     (QOS >> 2i) & 3, so invalid ones (0, 3) come up too.
 *
 * Each PATH is routed for both directions, anonymously, as IDENTITY (when it
 * is one a device may have) and as "bike-7"; each TOPIC is routed back. What
 * comes out is checked against mapping.h and tandem.conf(5) and doc/devices.md (see check_*()):
 * a violation aborts.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "mapping.h"

#define FIELDS_MAX 16

typedef struct field {
    const char *s;
    size_t len;
} field_t;

/* What routing needs to know besides the table. */
typedef struct ctx {
    const map_table_t *t;
    const char *gateway;
    bool fixed; /* the fixed table: no two down mappings overlap */
} ctx_t;

/*
 * The rule on characters (tandem.conf(5), Identities): an identity, and so every variable
 * value, has no control character (U+0001..U+001F, U+007F..U+009F) and no
 * Unicode noncharacter (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF). Which of these
 * classes map_value_ok() refuses is probed once (rule_probe()); each class it
 * refuses is then checked in every value the engine accepts, so the check
 * follows mapping.c as the rule lands there. A class mapping.c does not refuse
 * yet is not checked: the target checks what the code promises.
 */
static struct {
    bool probed, c0, c1, nonchar;
} rule;

static void rule_probe(void)
{
    if (rule.probed)
        return;
    rule.c0 = !map_value_ok("a\x01", 2);
    rule.c1 = !map_value_ok("a\x7f", 2) || !map_value_ok("a\xc2\x80", 3);
    rule.nonchar = !map_value_ok("a\xef\xb7\x90", 4); /* U+FDD0 */
    rule.probed = true;
}

/*
 * An independent UTF-8 decoder (Unicode's table of well-formed byte
 * sequences), to check map_utf8_ok() against. Returns the code point at s and
 * its length in *n, or -1 when the bytes there are not well-formed.
 */
static long utf8_next(const unsigned char *s, size_t len, size_t *n)
{
    unsigned c = s[0];
    unsigned lo = 0x80, hi = 0xbf;
    size_t need;
    long cp;

    if (c < 0x80) {
        *n = 1;
        return c;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        need = 1, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2, cp = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3, cp = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else {
        return -1;
    }
    if (len < need + 1 || s[1] < lo || s[1] > hi)
        return -1;
    for (size_t k = 1; k <= need; k++) {
        if (k > 1 && (s[k] < 0x80 || s[k] > 0xbf))
            return -1;
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    *n = need + 1;
    return cp;
}

/* Well-formed UTF-8 without NUL: what map_utf8_ok() promises. */
static bool ref_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0, n; i < len; i += n) {
        long cp = utf8_next(p + i, len - i, &n);
        if (cp <= 0)
            return false;
    }
    return true;
}

/* The character rule above, for the classes map_value_ok() refuses today. */
static bool ref_chars(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0, n; i < len; i += n) {
        long cp = utf8_next(p + i, len - i, &n);
        if (cp < 0)
            return false;
        if (rule.c0 && cp >= 0x01 && cp <= 0x1f)
            return false;
        if (rule.c1 && cp >= 0x7f && cp <= 0x9f)
            return false;
        if (rule.nonchar && ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe))
            return false;
    }
    return true;
}

/* What a variable's value may be (tandem.conf(5), Identities). */
static bool ref_value(const char *s, size_t len)
{
    return len > 0 && len <= MAP_PATH_MAX && s[0] != '$' && !memchr(s, '+', len) &&
           !memchr(s, '#', len) && !memchr(s, '/', len) && ref_utf8(s, len) && ref_chars(s, len);
}

/* The three predicates agree with the manual's wording of them, on any bytes. */
static void check_predicates(const char *s, size_t len)
{
    FUZZ_CHECK(map_utf8_ok(s, len) == ref_utf8(s, len));
    FUZZ_CHECK(map_value_ok(s, len) == ref_value(s, len));
    FUZZ_CHECK(map_identity_ok(s, len) == (len <= MAP_IDENTITY_MAX && ref_value(s, len)));
}

static bool seg_is(const char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && !memcmp(s, lit, len);
}

/* map_split() cuts at every '/' and nowhere else, up to MAP_SEGMENTS_MAX segments. */
static void check_split(const char *s, size_t len, int rc, const map_segs_t *segs)
{
    size_t slashes = 0;
    for (size_t i = 0; i < len; i++)
        slashes += s[i] == '/';
    if (slashes + 1 > MAP_SEGMENTS_MAX) {
        FUZZ_CHECK(rc == -E2BIG);
        return;
    }
    FUZZ_CHECK(rc == 0 && segs->n == slashes + 1);
    const char *at = s;
    for (size_t i = 0; i < segs->n; i++) {
        FUZZ_CHECK(segs->s[i] == at);
        FUZZ_CHECK(!memchr(segs->s[i], '/', segs->len[i]));
        at += segs->len[i];
        FUZZ_CHECK(i + 1 == segs->n ? at == s + len : *at == '/');
        at++;
    }
}

/*
 * A rendered topic or resource path against the template it came from: the
 * literals are the template's, {gateway} is the gateway id, {identity} is the
 * identity the request was made with, and each variable's value is one that
 * map_value_ok() accepts (so no '+', '#', '/', NUL, leading '$').
 */
static void check_rendered(const ctx_t *c, const char *tmpl, const char *s, size_t len,
                           const char *identity)
{
    map_segs_t ts, rs;

    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    FUZZ_CHECK(map_split(s, len, &rs) == 0); /* at most MAP_SEGMENTS_MAX segments */
    for (size_t i = 0; i < ts.n; i++) {
        const char *g = ts.s[i];
        size_t glen = ts.len[i];
        bool multi = glen >= 3 && g[0] == '{' && g[glen - 2] == '*';

        FUZZ_CHECK(i < rs.n);
        if (seg_is(g, glen, "{identity}")) {
            FUZZ_CHECK(identity && seg_is(rs.s[i], rs.len[i], identity));
        } else if (seg_is(g, glen, "{gateway}")) {
            FUZZ_CHECK(seg_is(rs.s[i], rs.len[i], c->gateway));
        } else if (multi) {
            FUZZ_CHECK(i + 1 == ts.n);
            for (size_t k = i; k < rs.n; k++)
                FUZZ_CHECK(ref_value(rs.s[k], rs.len[k]));
            return;
        } else if (glen && g[0] == '{') {
            FUZZ_CHECK(ref_value(rs.s[i], rs.len[i]));
        } else {
            FUZZ_CHECK(rs.len[i] == glen && !memcmp(rs.s[i], g, glen));
        }
    }
    FUZZ_CHECK(rs.n == ts.n);
}

/*
 * A topic Tandem publishes (tandem.conf(5), Identities): UTF-8 without NUL, no wildcard, never
 * '$' first, within MAP_PATH_MAX, no empty level.
 */
static void check_topic(const char *topic, size_t len)
{
    FUZZ_CHECK(len > 0 && len <= MAP_PATH_MAX);
    FUZZ_CHECK(map_utf8_ok(topic, len));
    FUZZ_CHECK(!memchr(topic, '+', len) && !memchr(topic, '#', len));
    FUZZ_CHECK(topic[0] != '$');
    FUZZ_CHECK(topic[0] != '/' && topic[len - 1] != '/' && !strstr(topic, "//"));
}

static bool has_identity(const char *tmpl)
{
    map_segs_t ts;
    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    for (size_t i = 0; i < ts.n; i++)
        if (seg_is(ts.s[i], ts.len[i], "{identity}"))
            return true;
    return false;
}

static void check_reverse(const ctx_t *c, const char *topic, size_t len, const char *want_path,
                          size_t want_len, const char *want_identity,
                          const map_entry_t *want_entry);

/*
 * Routes path for dir as identity (NULL: anonymous). On MAP_OK the topic
 * obeys check_topic() and check_rendered(); a mapping with {identity} in its
 * resource is reached only with the device's own identity; and a down mapping
 * leads the topic back to the same path.
 */
static void check_route(const ctx_t *c, const char *path, size_t len, int dir, const char *identity)
{
    map_segs_t segs;
    const map_entry_t *e = NULL;
    char topic[MAP_PATH_MAX + 1];

    int rc = map_split(path, len, &segs);
    check_split(path, len, rc, &segs);
    if (rc < 0)
        return;
    enum map_status st = map_route(c->t, &segs, dir, identity, &e, topic, sizeof(topic));
    /* The answers of doc/devices.md. */
    static const int codes[] = {
        [MAP_OK] = 0,          [MAP_NOT_FOUND] = 404, [MAP_BAD_METHOD] = 405,
        [MAP_BAD_VALUE] = 400, [MAP_FORBIDDEN] = 403, [MAP_UNAUTHORIZED] = 401
    };
    FUZZ_CHECK((size_t)st < sizeof(codes) / sizeof(codes[0]) && map_status_code(st) == codes[st]);
    switch (st) {
    case MAP_NOT_FOUND:
    case MAP_BAD_METHOD:
        return;
    case MAP_BAD_VALUE:
    case MAP_FORBIDDEN:
    case MAP_UNAUTHORIZED:
        FUZZ_CHECK(e && (map_entry_direction(e) & dir));
        FUZZ_CHECK(st != MAP_UNAUTHORIZED || (!identity && map_entry_uses_identity(e)));
        return;
    case MAP_OK:
        break;
    default:
        FUZZ_CHECK(!"map_route() returned an unknown status");
    }
    FUZZ_CHECK(e && (map_entry_direction(e) & dir));
    FUZZ_CHECK(identity || !map_entry_uses_identity(e));
    size_t tlen = strlen(topic);
    check_topic(topic, tlen);
    check_rendered(c, map_entry_topic(e), topic, tlen, identity);
    /* The path matched the resource template too: {identity} there is the device's own. */
    check_rendered(c, map_entry_resource(e), path, len, identity);

    if (map_entry_direction(e) & MAP_DOWN)
        check_reverse(c, topic, tlen, path, len, has_identity(map_entry_topic(e)) ? identity : NULL,
                      e);
}

/*
 * Routes a topic back to a resource. On MAP_OK the mapping is a down one, the
 * path obeys check_rendered(), the identity taken from the topic is one a
 * device may have, and routing the path for GET as that identity gives this
 * mapping and this very topic again (or, in a table built from the input, an
 * earlier mapping whose resource template matches the same path).
 *
 * want_*: when the topic came from check_route(), what it was made from.
 */
static void check_reverse(const ctx_t *c, const char *topic, size_t len, const char *want_path,
                          size_t want_len, const char *want_identity, const map_entry_t *want_entry)
{
    const map_entry_t *e = NULL, *e2 = NULL;
    char res[MAP_PATH_MAX + 1], id[MAP_IDENTITY_MAX + 1], topic2[MAP_PATH_MAX + 1];
    map_segs_t segs;

    enum map_status st = map_reverse(c->t, topic, len, &e, res, sizeof(res), id, sizeof(id));
    if (want_entry && want_len > MAP_PATH_MAX) {
        /* Longer than any resource path: there is no value to hold for it. */
        FUZZ_CHECK(st != MAP_OK || e != want_entry);
    } else if (want_entry && (c->fixed || e == want_entry)) {
        /* A topic Tandem rendered from a path leads back to that path. */
        FUZZ_CHECK(st == MAP_OK && e == want_entry);
        FUZZ_CHECK(strlen(res) == want_len && !memcmp(res, want_path, want_len));
        FUZZ_CHECK(want_identity ? !strcmp(id, want_identity) : id[0] == '\0');
    }
    if (st != MAP_OK) {
        FUZZ_CHECK(st == MAP_NOT_FOUND || st == MAP_BAD_VALUE);
        return;
    }
    FUZZ_CHECK(e && (map_entry_direction(e) & MAP_DOWN));
    bool with_id = has_identity(map_entry_topic(e));
    FUZZ_CHECK(with_id ? map_identity_ok(id, strlen(id)) && ref_value(id, strlen(id))
                       : id[0] == '\0');
    const char *identity = with_id ? id : NULL;
    size_t rlen = strlen(res);
    check_rendered(c, map_entry_topic(e), topic, len, identity);
    check_rendered(c, map_entry_resource(e), res, rlen, identity);

    /* GET on that path, by the device the topic names. */
    FUZZ_CHECK(map_split(res, rlen, &segs) == 0);
    st = map_route(c->t, &segs, MAP_DOWN, identity, &e2, topic2, sizeof(topic2));
    if (c->fixed || e2 == e) {
        FUZZ_CHECK(st == MAP_OK && e2 == e);
        FUZZ_CHECK(strlen(topic2) == len && !memcmp(topic2, topic, len));
    } else {
        /* An earlier mapping's resource template matches the path first. */
        FUZZ_CHECK(st != MAP_NOT_FOUND && st != MAP_BAD_METHOD && e2);
        FUZZ_CHECK(map_entry_index(e2) < map_entry_index(e));
    }
}

/*
 * A subscription filter (doc/devices.md): UTF-8, never '$' first, '+' and '#' only
 * as whole levels, '#' only last.
 */
static void check_filter(const map_entry_t *e)
{
    char buf[MAP_PATH_MAX + 1];
    map_segs_t segs;
    int n = map_entry_filter(e, buf, sizeof(buf));
    if (n < 0) {
        FUZZ_CHECK(n == -ENAMETOOLONG);
        return;
    }
    FUZZ_CHECK((size_t)n == strlen(buf) && n > 0);
    FUZZ_CHECK(map_utf8_ok(buf, (size_t)n) && buf[0] != '$');
    FUZZ_CHECK(map_split(buf, (size_t)n, &segs) == 0);
    for (size_t i = 0; i < segs.n; i++) {
        const char *s = segs.s[i];
        size_t len = segs.len[i];
        FUZZ_CHECK(len > 0);
        if (memchr(s, '+', len))
            FUZZ_CHECK(len == 1);
        if (memchr(s, '#', len))
            FUZZ_CHECK(len == 1 && i + 1 == segs.n);
    }
}

/* Length of a template without variables once rendered. */
static size_t fixed_len(const ctx_t *c, const char *tmpl, const char *identity)
{
    map_segs_t ts;
    size_t len = 0;
    FUZZ_CHECK(map_split(tmpl, strlen(tmpl), &ts) == 0);
    for (size_t i = 0; i < ts.n; i++) {
        if (seg_is(ts.s[i], ts.len[i], "{identity}"))
            len += strlen(identity);
        else if (seg_is(ts.s[i], ts.len[i], "{gateway}"))
            len += strlen(c->gateway);
        else
            len += ts.len[i];
    }
    return len + ts.n - 1;
}

/* The one concrete resource of a mapping without variables routes to it. */
static void check_fixed_resource(const ctx_t *c, const map_entry_t *e, const char *identity)
{
    char path[MAP_PATH_MAX + 1], topic[MAP_PATH_MAX + 1];
    const map_entry_t *e2 = NULL;
    map_segs_t segs;
    int n = map_entry_fixed_resource(e, identity, path, sizeof(path));
    if (n < 0) {
        FUZZ_CHECK(n == -EINVAL || n == -EACCES || n == -ENAMETOOLONG);
        FUZZ_CHECK(n != -EACCES || (!identity && map_entry_uses_identity(e)));
        return;
    }
    FUZZ_CHECK((size_t)n == strlen(path));
    check_rendered(c, map_entry_resource(e), path, (size_t)n, identity);
    FUZZ_CHECK(map_split(path, (size_t)n, &segs) == 0);
    int dir = map_entry_direction(e) & MAP_UP ? MAP_UP : MAP_DOWN;
    enum map_status st = map_route(c->t, &segs, dir, identity, &e2, topic, sizeof(topic));
    if (e2 != e) {
        /* An earlier mapping's resource template matches the path first. */
        FUZZ_CHECK(e2 && map_entry_index(e2) < map_entry_index(e));
        return;
    }
    /* Without variables in the resource there are none in the topic either. */
    size_t want = fixed_len(c, map_entry_topic(e), identity);
    FUZZ_CHECK(want <= MAP_PATH_MAX ? st == MAP_OK : st == MAP_BAD_VALUE);
    if (st == MAP_OK)
        check_rendered(c, map_entry_topic(e), topic, strlen(topic), identity);
}

static size_t split_fields(const uint8_t *data, size_t size, field_t *f, size_t max)
{
    size_t n = 0, start = 0;
    for (size_t i = 0; i <= size && n < max; i++) {
        if (i == size || (data[i] == 0xff && n + 1 < max)) {
            f[n].s = (const char *)data + start;
            f[n].len = i - start;
            n++;
            start = i + 1;
        }
    }
    return n; /* the last field took the rest, 0xFF bytes included */
}

/* Routes PATH both ways as each identity, and TOPIC back. */
static void exercise(const ctx_t *c, field_t path, field_t identity, field_t topic)
{
    char id[MAP_IDENTITY_MAX + 1];
    const char *ids[3] = { NULL, "bike-7", NULL };
    size_t nids = 2;

    check_predicates(path.s, path.len);
    check_predicates(identity.s, identity.len);
    check_predicates(topic.s, topic.len);
    /* Only identities a handshake accepts ever reach map_route(). */
    if (map_identity_ok(identity.s, identity.len)) {
        memcpy(id, identity.s, identity.len);
        id[identity.len] = '\0';
        ids[nids++] = id;
    }
    for (size_t i = 0; i < nids; i++) {
        check_route(c, path.s, path.len, MAP_UP, ids[i]);
        check_route(c, path.s, path.len, MAP_DOWN, ids[i]);
    }
    check_reverse(c, topic.s, topic.len, NULL, 0, NULL, NULL);
    for (size_t i = 0; i < map_table_count(c->t); i++) {
        const map_entry_t *e = map_table_get(c->t, i);
        for (size_t k = 0; k < nids; k++)
            check_fixed_resource(c, e, ids[k]);
    }
}

/* The reference configuration's mappings, and {x*}, {gateway} and {identity} in the topic only. */
static const map_spec_t fixed_specs[] = {
    { "telemetry", "bikes/{identity}/telemetry", "redback/p1/bikes/{identity}/telemetry", MAP_UP, 1,
      false },
    { "commands", "bikes/{identity}/commands", "redback/p1/bikes/{identity}/commands", MAP_DOWN, 1,
      false },
    { "state", "bikes/{identity}/state", "redback/p1/bikes/{identity}/state", MAP_BOTH, 1, true },
    { "logs", "bikes/{identity}/logs/{path*}", "redback/p1/logs/{identity}/{path*}", MAP_UP, 0,
      false },
    { "hello", "hello", "redback/p1/hello/{identity}", MAP_UP, 0, false },
    { "alerts", "zones/{zone}/bikes/{bike}/alerts", "redback/{gateway}/zones/{zone}/{bike}/alerts",
      MAP_BOTH, 2, false },
    { "public", "public/{rest*}", "redback/public/{rest*}", MAP_BOTH, 0, true },
    { "config", "fleet/{gateway}/config/{key*}", "cfg/{key*}", MAP_DOWN, 1, false },
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
    for (size_t i = 0; i < map_table_count(fixed); i++) {
        FUZZ_CHECK(!map_table_shadowed_by(fixed, map_table_get(fixed, i)));
        check_filter(map_table_get(fixed, i));
    }
    atexit(fixed_free);
    return fixed;
}

static void fuzz_fixed(const uint8_t *data, size_t size)
{
    field_t f[3] = { { "", 0 }, { "", 0 }, { "", 0 } };
    split_fields(data, size, f, 3);
    ctx_t c = { .t = fixed_table(), .gateway = "edge-01", .fixed = true };
    exercise(&c, f[0], f[1], f[2]);
}

static char *dup_field(field_t f)
{
    return strndup(f.s, f.len); /* stops at a NUL, as a C string from libconfig would */
}

static void fuzz_table(const uint8_t *data, size_t size)
{
    uint8_t hdr[3] = { 0, 0, 0 };
    for (size_t i = 0; i < 3 && i < size; i++)
        hdr[i] = data[i];
    data += size < 3 ? size : 3;
    size -= size < 3 ? size : 3;

    size_t k = hdr[0] % 4 + 1;
    field_t f[FIELDS_MAX];
    for (size_t i = 0; i < FIELDS_MAX; i++)
        f[i] = (field_t){ "", 0 };
    split_fields(data, size, f, 1 + 2 * k + 3);

    /* The configuration accepts only such gateway ids (gateway/config.c). */
    char *gw = dup_field(f[0]);
    FUZZ_CHECK(gw);
    const char *gateway = map_value_ok(gw, strlen(gw)) && strlen(gw) <= 64 ? gw : "edge-01";
    map_table_t *t = map_table_new(gateway);
    FUZZ_CHECK(t);

    static const char *const names[] = { "m0", "m1", "m2", "m3" };
    for (size_t i = 0; i < k; i++) {
        char *res = dup_field(f[1 + 2 * i]), *top = dup_field(f[2 + 2 * i]);
        FUZZ_CHECK(res && top);
        map_spec_t spec = {
            /* Bit 7 of K names them all alike: the second one is refused. */
            .name = hdr[0] & 0x80 ? "m" : names[i],
            .resource = res,
            .topic = top,
            .direction = (hdr[1] >> (2 * i)) & 3,
            .qos = (hdr[2] >> (2 * i)) & 3,
            .retain = i & 1,
        };
        char err[256] = "";
        size_t before = map_table_count(t);
        int rc = map_table_add(t, &spec, err, sizeof(err));
        if (rc < 0) {
            FUZZ_CHECK(rc == -EINVAL || rc == -ENOMEM);
            FUZZ_CHECK(err[0] && memchr(err, '\0', sizeof(err)));
            FUZZ_CHECK(map_table_count(t) == before);
        } else {
            FUZZ_CHECK(rc == 0 && map_table_count(t) == before + 1);
            FUZZ_CHECK(spec.direction >= MAP_UP && spec.direction <= MAP_BOTH);
            FUZZ_CHECK(spec.qos >= 0 && spec.qos <= 2);
            const map_entry_t *e = map_table_get(t, before);
            FUZZ_CHECK(e && map_entry_index(e) == before);
            FUZZ_CHECK(!strcmp(map_entry_resource(e), res) && !strcmp(map_entry_topic(e), top));
            FUZZ_CHECK(!strcmp(map_entry_name(e), spec.name));
            FUZZ_CHECK(map_entry_direction(e) == spec.direction && map_entry_qos(e) == spec.qos);
            check_filter(e);
            const map_entry_t *by = map_table_shadowed_by(t, e);
            FUZZ_CHECK(!by || map_entry_index(by) < map_entry_index(e));
        }
        free(res);
        free(top);
    }
    ctx_t c = { .t = t, .gateway = gateway, .fixed = false };
    exercise(&c, f[1 + 2 * k], f[2 + 2 * k], f[3 + 2 * k]);
    map_table_free(t);
    free(gw);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    rule_probe();
    if (data[0] & 1)
        fuzz_table(data + 1, size - 1);
    else
        fuzz_fixed(data + 1, size - 1);
    return 0;
}
