/*
 * Mapping engine: templates, matching, rendering, policy. See mapping.h.
 */
#include "mapping.h"
#include "mapping_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Which segments of a path a template segment took: [first, first+count). */
struct capture {
    size_t first, count;
};

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Walks len bytes of UTF-8. With strict, also refuses what MQTT forbids in its
 * strings (MQTT 5 §1.5.4, as Mosquitto enforces it): the control characters
 * U+0001..U+001F and U+007F..U+009F, and the Unicode noncharacters
 * (U+FDD0..U+FDEF and every U+xFFFE, U+xFFFF). NUL, surrogates and overlong
 * forms are refused either way.
 */
static bool utf8_scan(const char *s, size_t len, bool strict)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t need;
        uint32_t cp, min;
        if (c == 0)
            return false;
        if (c < 0x80) {
            if (strict && (c < 0x20 || c == 0x7f))
                return false;
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (len - i - 1 < need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        if (strict && ((cp >= 0x7f && cp <= 0x9f) || (cp >= 0xfdd0 && cp <= 0xfdef) ||
                       (cp & 0xfffe) == 0xfffe))
            return false;
        i += need + 1;
    }
    return true;
}

bool map_utf8_ok(const char *s, size_t len)
{
    return utf8_scan(s, len, false);
}

bool map_mqtt_string_ok(const char *s, size_t len)
{
    return utf8_scan(s, len, true);
}

bool map_topic_ok(const char *s, size_t len)
{
    return len > 0 && len <= MAP_TOPIC_MAX && !memchr(s, '+', len) && !memchr(s, '#', len) &&
           map_mqtt_string_ok(s, len);
}

bool map_value_ok(const char *s, size_t len)
{
    if (len == 0 || len > MAP_PATH_MAX || s[0] == '$')
        return false;
    if (memchr(s, '+', len) || memchr(s, '#', len) || memchr(s, '/', len))
        return false;
    return map_mqtt_string_ok(s, len);
}

bool map_identity_ok(const char *s, size_t len)
{
    return len <= MAP_IDENTITY_MAX && map_value_ok(s, len);
}

int map_split(const char *s, size_t len, map_segs_t *out)
{
    out->n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '/') {
            if (out->n == MAP_SEGMENTS_MAX)
                return -E2BIG;
            out->s[out->n] = s + start;
            out->len[out->n] = i - start;
            out->n++;
            start = i + 1;
        }
    }
    return 0;
}

static bool name_ok(const char *s, size_t len)
{
    if (len == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

static void tmpl_clear(struct tmpl *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->seg[i].text);
    t->n = 0;
}

/* Parses one template; what names the side ("resource" or "topic") in errors. */
static int tmpl_parse(struct tmpl *t, const char *src, const char *gateway, const char *what,
                      char *err, size_t errlen)
{
    size_t srclen = strlen(src);
    map_segs_t segs;

    t->n = 0;
    t->identity_at = -1;
    if (srclen == 0) {
        errf(err, errlen, "%s is empty", what);
        return -EINVAL;
    }
    if (srclen > MAP_PATH_MAX) {
        errf(err, errlen, "%s is longer than %d bytes", what, MAP_PATH_MAX);
        return -EINVAL;
    }
    if (!map_utf8_ok(src, srclen)) {
        errf(err, errlen, "%s is not UTF-8", what);
        return -EINVAL;
    }
    if (!map_mqtt_string_ok(src, srclen)) {
        errf(err, errlen, "%s contains a control character or a Unicode noncharacter", what);
        return -EINVAL;
    }
    if (map_split(src, srclen, &segs) < 0) {
        errf(err, errlen, "%s has more than %d segments", what, MAP_SEGMENTS_MAX);
        return -EINVAL;
    }
    for (size_t i = 0; i < segs.n; i++) {
        const char *s = segs.s[i];
        size_t len = segs.len[i];
        struct seg *g = &t->seg[t->n];

        g->ref = -1;
        if (len == 0) {
            errf(err, errlen, "%s \"%s\" has an empty segment", what, src);
            goto fail;
        }
        if (s[0] == '{') {
            bool multi = len >= 3 && s[len - 2] == '*';
            size_t nlen = len - 2 - (multi ? 1 : 0);
            if (s[len - 1] != '}' || !name_ok(s + 1, nlen)) {
                errf(err, errlen, "%s segment \"%.*s\" is not a variable {name} or {name*}", what,
                     (int)len, s);
                goto fail;
            }
            if (multi && i != segs.n - 1) {
                errf(err, errlen, "%s: {%.*s*} must be the last segment", what, (int)nlen, s + 1);
                goto fail;
            }
            if (nlen == 8 && !memcmp(s + 1, "identity", 8)) {
                if (multi || t->identity_at >= 0) {
                    errf(err, errlen, "%s: {identity} may appear once, as a whole segment", what);
                    goto fail;
                }
                g->kind = SEG_IDENTITY;
                g->text = NULL;
                t->identity_at = (int)t->n;
            } else if (nlen == 7 && !memcmp(s + 1, "gateway", 7)) {
                if (multi) {
                    errf(err, errlen, "%s: {gateway*} is not a variable", what);
                    goto fail;
                }
                g->kind = SEG_LIT;
                g->text = strdup(gateway);
            } else {
                g->kind = multi ? SEG_MULTI : SEG_VAR;
                g->text = strndup(s + 1, nlen);
                for (size_t k = 0; k < t->n; k++) {
                    struct seg *o = &t->seg[k];
                    if ((o->kind == SEG_VAR || o->kind == SEG_MULTI) && o->len == nlen &&
                        !memcmp(o->text, s + 1, nlen)) {
                        errf(err, errlen, "%s: variable {%.*s} appears twice", what, (int)nlen,
                             s + 1);
                        free(g->text);
                        goto fail;
                    }
                }
            }
            if (g->kind != SEG_IDENTITY && !g->text)
                goto nomem;
            g->len = g->text ? strlen(g->text) : 0;
        } else {
            if (memchr(s, '{', len) || memchr(s, '}', len)) {
                errf(err, errlen, "%s segment \"%.*s\": a variable must be a whole segment", what,
                     (int)len, s);
                goto fail;
            }
            if (memchr(s, '+', len) || memchr(s, '#', len)) {
                errf(err, errlen, "%s segment \"%.*s\" contains a wildcard ('+' or '#')", what,
                     (int)len, s);
                goto fail;
            }
            g->kind = SEG_LIT;
            g->text = strndup(s, len);
            if (!g->text)
                goto nomem;
            g->len = len;
        }
        t->n++;
    }
    return 0;
nomem:
    errf(err, errlen, "out of memory");
    tmpl_clear(t);
    return -ENOMEM;
fail:
    tmpl_clear(t);
    return -EINVAL;
}

/* Links each variable of a to the same variable of b; all must be found. */
static int tmpl_link(struct tmpl *a, const char *aname, struct tmpl *b, const char *bname,
                     char *err, size_t errlen)
{
    for (size_t i = 0; i < a->n; i++) {
        struct seg *g = &a->seg[i];
        if (g->kind != SEG_VAR && g->kind != SEG_MULTI)
            continue;
        for (size_t k = 0; k < b->n; k++) {
            struct seg *o = &b->seg[k];
            if ((o->kind == SEG_VAR || o->kind == SEG_MULTI) && o->len == g->len &&
                !memcmp(o->text, g->text, g->len)) {
                if (o->kind != g->kind) {
                    errf(err, errlen, "variable {%s} is %s in the %s but %s in the %s", g->text,
                         g->kind == SEG_MULTI ? "{x*}" : "{x}", aname,
                         o->kind == SEG_MULTI ? "{x*}" : "{x}", bname);
                    return -EINVAL;
                }
                g->ref = (int)k;
                break;
            }
        }
        if (g->ref < 0) {
            errf(err, errlen, "variable {%s} of the %s does not appear in the %s", g->text, aname,
                 bname);
            return -EINVAL;
        }
    }
    return 0;
}

map_table_t *map_table_new(const char *gateway)
{
    map_table_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->gateway = strdup(gateway ? gateway : "");
    if (!t->gateway) {
        free(t);
        return NULL;
    }
    return t;
}

static void entry_free(map_entry_t *e)
{
    if (!e)
        return;
    tmpl_clear(&e->res);
    tmpl_clear(&e->top);
    free(e->name);
    free(e->resource);
    free(e->topic);
    free(e);
}

void map_table_free(map_table_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        entry_free(t->v[i]);
    free(t->v);
    free(t->gateway);
    free(t);
}

int map_table_add(map_table_t *t, const map_spec_t *spec, char *err, size_t errlen)
{
    int rc;
    map_entry_t *e;

    if (!spec->name || !*spec->name) {
        errf(err, errlen, "name is empty");
        return -EINVAL;
    }
    for (size_t i = 0; i < t->n; i++) {
        if (!strcmp(t->v[i]->name, spec->name)) {
            errf(err, errlen, "name \"%s\" is already used by mapping %zu", spec->name, i + 1);
            return -EINVAL;
        }
    }
    if (spec->direction < MAP_UP || spec->direction > MAP_BOTH) {
        errf(err, errlen, "direction must be up, down or both");
        return -EINVAL;
    }
    if (spec->qos < 0 || spec->qos > 2) {
        errf(err, errlen, "qos must be 0, 1 or 2");
        return -EINVAL;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        goto nomem;
    rc = tmpl_parse(&e->res, spec->resource ? spec->resource : "", t->gateway, "resource", err,
                    errlen);
    if (rc < 0)
        goto fail;
    rc = tmpl_parse(&e->top, spec->topic ? spec->topic : "", t->gateway, "topic", err, errlen);
    if (rc < 0)
        goto fail;
    if (e->top.seg[0].kind == SEG_LIT && e->top.seg[0].text[0] == '$') {
        errf(err, errlen, "topic must not start with '$'");
        rc = -EINVAL;
        goto fail;
    }
    if ((rc = tmpl_link(&e->res, "resource", &e->top, "topic", err, errlen)) < 0 ||
        (rc = tmpl_link(&e->top, "topic", &e->res, "resource", err, errlen)) < 0)
        goto fail;
    if ((spec->direction & MAP_DOWN) && e->res.identity_at >= 0 && e->top.identity_at < 0) {
        errf(err, errlen, "a down mapping with {identity} in the resource needs it in the topic");
        rc = -EINVAL;
        goto fail;
    }
    /*
     * The other way round, every device's topic would become the same
     * resource, and one device would read another's value.
     */
    if ((spec->direction & MAP_DOWN) && e->top.identity_at >= 0 && e->res.identity_at < 0) {
        errf(err, errlen, "a down mapping with {identity} in the topic needs it in the resource");
        rc = -EINVAL;
        goto fail;
    }
    e->name = strdup(spec->name);
    e->resource = strdup(spec->resource);
    e->topic = strdup(spec->topic);
    if (!e->name || !e->resource || !e->topic)
        goto nomem;
    e->direction = spec->direction;
    e->qos = spec->qos;
    e->retain = spec->retain;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        map_entry_t **v = realloc(t->v, cap * sizeof(*v));
        if (!v)
            goto nomem;
        t->v = v;
        t->cap = cap;
    }
    e->index = t->n;
    t->v[t->n++] = e;
    return 0;
nomem:
    errf(err, errlen, "out of memory");
    rc = -ENOMEM;
fail:
    entry_free(e);
    return rc;
}

size_t map_table_count(const map_table_t *t)
{
    return t->n;
}

const map_entry_t *map_table_get(const map_table_t *t, size_t i)
{
    return i < t->n ? t->v[i] : NULL;
}

const char *map_entry_name(const map_entry_t *e)
{
    return e->name;
}
const char *map_entry_resource(const map_entry_t *e)
{
    return e->resource;
}
const char *map_entry_topic(const map_entry_t *e)
{
    return e->topic;
}
int map_entry_direction(const map_entry_t *e)
{
    return e->direction;
}
int map_entry_qos(const map_entry_t *e)
{
    return e->qos;
}
bool map_entry_retain(const map_entry_t *e)
{
    return e->retain;
}
size_t map_entry_index(const map_entry_t *e)
{
    return e->index;
}
bool map_entry_uses_identity(const map_entry_t *e)
{
    return e->res.identity_at >= 0 || e->top.identity_at >= 0;
}

/* Appends len bytes to buf at *pos; false when it does not fit. */
static bool put(char *buf, size_t size, size_t *pos, const char *s, size_t len)
{
    if (*pos + len + 1 > size)
        return false;
    memcpy(buf + *pos, s, len);
    *pos += len;
    buf[*pos] = '\0';
    return true;
}

int map_entry_filter(const map_entry_t *e, char *buf, size_t len)
{
    size_t pos = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; i < e->top.n; i++) {
        const struct seg *g = &e->top.seg[i];
        if (i && !put(buf, len, &pos, "/", 1))
            return -ENAMETOOLONG;
        bool ok;
        switch (g->kind) {
        case SEG_LIT:
            ok = put(buf, len, &pos, g->text, g->len);
            break;
        case SEG_MULTI:
            ok = put(buf, len, &pos, "#", 1);
            break;
        default:
            ok = put(buf, len, &pos, "+", 1);
            break;
        }
        if (!ok)
            return -ENAMETOOLONG;
    }
    return (int)pos;
}

int map_entry_fixed_resource(const map_entry_t *e, const char *identity, char *buf, size_t len)
{
    size_t pos = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; i < e->res.n; i++) {
        const struct seg *g = &e->res.seg[i];
        if (g->kind == SEG_VAR || g->kind == SEG_MULTI)
            return -EINVAL;
    }
    if (map_entry_uses_identity(e) && !identity)
        return -EACCES;
    for (size_t i = 0; i < e->res.n; i++) {
        const struct seg *g = &e->res.seg[i];
        const char *s = g->kind == SEG_IDENTITY ? identity : g->text;
        if ((i && !put(buf, len, &pos, "/", 1)) || !put(buf, len, &pos, s, strlen(s)))
            return -ENAMETOOLONG;
    }
    return (int)pos;
}

/* Structural match of a template against segments; fills cap per template segment. */
static bool tmpl_match(const struct tmpl *t, const map_segs_t *p, struct capture *cap)
{
    size_t i;
    for (i = 0; i < t->n; i++) {
        const struct seg *g = &t->seg[i];
        if (g->kind == SEG_MULTI) {
            if (i >= p->n)
                return false;
            cap[i].first = i;
            cap[i].count = p->n - i;
            return true;
        }
        if (i >= p->n)
            return false;
        if (g->kind == SEG_LIT && (g->len != p->len[i] || memcmp(g->text, p->s[i], g->len)))
            return false;
        cap[i].first = i;
        cap[i].count = 1;
    }
    return i == p->n;
}

/*
 * Renders template out, taking variables from p as captured by the other
 * template. False when it does not fit, or when it would have more than
 * MAP_SEGMENTS_MAX segments (a {x*} value behind a longer prefix): what is
 * rendered must be something that can be routed back.
 */
static bool tmpl_render(const struct tmpl *out, const map_segs_t *p, const struct capture *cap,
                        const char *identity, char *buf, size_t size)
{
    size_t pos = 0, nsegs = out->n;
    if (size)
        buf[0] = '\0';
    for (size_t i = 0; i < out->n; i++)
        if (out->seg[i].kind == SEG_MULTI)
            nsegs += cap[out->seg[i].ref].count - 1;
    if (nsegs > MAP_SEGMENTS_MAX)
        return false;
    for (size_t i = 0; i < out->n; i++) {
        const struct seg *g = &out->seg[i];
        if (i && !put(buf, size, &pos, "/", 1))
            return false;
        if (g->kind == SEG_LIT) {
            if (!put(buf, size, &pos, g->text, g->len))
                return false;
        } else if (g->kind == SEG_IDENTITY) {
            if (!identity || !put(buf, size, &pos, identity, strlen(identity)))
                return false;
        } else {
            const struct capture *c = &cap[g->ref];
            for (size_t k = 0; k < c->count; k++) {
                size_t at = c->first + k;
                if (k && !put(buf, size, &pos, "/", 1))
                    return false;
                if (!put(buf, size, &pos, p->s[at], p->len[at]))
                    return false;
            }
        }
    }
    return true;
}

/* Checks every variable value of a match; false when any is refused. */
static bool values_ok(const struct tmpl *t, const map_segs_t *p, const struct capture *cap)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->seg[i].kind == SEG_LIT)
            continue;
        for (size_t k = 0; k < cap[i].count; k++) {
            size_t at = cap[i].first + k;
            if (!map_value_ok(p->s[at], p->len[at]))
                return false;
        }
    }
    return true;
}

enum map_status map_route(const map_table_t *t, const map_segs_t *path, int dir,
                          const char *identity, const map_entry_t **out, char *topic,
                          size_t topiclen)
{
    struct capture cap[MAP_SEGMENTS_MAX];
    bool matched = false;
    const map_entry_t *e = NULL;

    for (size_t i = 0; i < t->n; i++) {
        if (!tmpl_match(&t->v[i]->res, path, cap))
            continue;
        matched = true;
        if (t->v[i]->direction & dir) {
            e = t->v[i];
            break;
        }
    }
    if (!e)
        return matched ? MAP_BAD_METHOD : MAP_NOT_FOUND;
    *out = e;
    if (!values_ok(&e->res, path, cap))
        return MAP_BAD_VALUE;
    if (map_entry_uses_identity(e) && !identity)
        return MAP_UNAUTHORIZED;
    if (e->res.identity_at >= 0) {
        size_t at = (size_t)e->res.identity_at;
        if (strlen(identity) != path->len[at] || memcmp(identity, path->s[at], path->len[at]))
            return MAP_FORBIDDEN;
    }
    if (!tmpl_render(&e->top, path, cap, identity, topic, topiclen))
        return MAP_BAD_VALUE;
    return MAP_OK;
}

enum map_status map_reverse(const map_table_t *t, const char *topic, size_t topiclen,
                            const map_entry_t **out, char *resource, size_t reslen,
                            char *identity_out, size_t idlen)
{
    struct capture cap[MAP_SEGMENTS_MAX];
    map_segs_t segs;
    char identity[MAP_IDENTITY_MAX + 1];

    if (idlen)
        identity_out[0] = '\0';
    /* Longer than any topic map_route() renders: its resource could never be read. */
    if (topiclen > MAP_PATH_MAX)
        return MAP_BAD_VALUE;
    if (map_split(topic, topiclen, &segs) < 0)
        return MAP_NOT_FOUND;
    for (size_t i = 0; i < t->n; i++) {
        const map_entry_t *e = t->v[i];
        const char *id = NULL;
        if (!(e->direction & MAP_DOWN) || !tmpl_match(&e->top, &segs, cap))
            continue;
        if (!values_ok(&e->top, &segs, cap))
            return MAP_BAD_VALUE;
        if (e->top.identity_at >= 0) {
            size_t at = (size_t)e->top.identity_at;
            if (segs.len[at] > MAP_IDENTITY_MAX)
                return MAP_BAD_VALUE;
            memcpy(identity, segs.s[at], segs.len[at]);
            identity[segs.len[at]] = '\0';
            id = identity;
            if (idlen && !put(identity_out, idlen, &(size_t){ 0 }, identity, segs.len[at]))
                return MAP_BAD_VALUE;
        }
        if (!tmpl_render(&e->res, &segs, cap, id, resource, reslen))
            return MAP_BAD_VALUE;
        *out = e;
        return MAP_OK;
    }
    return MAP_NOT_FOUND;
}

/* True when every path that b's resource matches, a's matches too. */
static bool tmpl_covers(const struct tmpl *a, const struct tmpl *b)
{
    for (size_t i = 0; i < a->n; i++) {
        const struct seg *g = &a->seg[i];
        if (g->kind == SEG_MULTI)
            return i < b->n;
        if (i >= b->n || b->seg[i].kind == SEG_MULTI)
            return false;
        if (g->kind == SEG_LIT && (b->seg[i].kind != SEG_LIT || b->seg[i].len != g->len ||
                                   memcmp(b->seg[i].text, g->text, g->len)))
            return false;
    }
    return a->n == b->n;
}

const map_entry_t *map_table_shadowed_by(const map_table_t *t, const map_entry_t *e)
{
    for (size_t i = 0; i < e->index && i < t->n; i++) {
        const map_entry_t *a = t->v[i];
        if ((a->direction & e->direction) == e->direction && tmpl_covers(&a->res, &e->res))
            return a;
    }
    return NULL;
}

int map_status_code(enum map_status st)
{
    switch (st) {
    case MAP_OK:
        return 0;
    case MAP_NOT_FOUND:
        return 404;
    case MAP_BAD_METHOD:
        return 405;
    case MAP_BAD_VALUE:
        return 400;
    case MAP_FORBIDDEN:
        return 403;
    case MAP_UNAUTHORIZED:
        return 401;
    }
    return 500;
}
