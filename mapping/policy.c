/*
 * What an MQTT device may publish and subscribe to (doc/devices.md, MQTT devices). See policy.h.
 *
 * A topic or a filter is compared, level by level, with the topic template of
 * each mapping of the direction, in file order. A mapping either allows it,
 * or would allow it but for its {identity} level (another device's identity,
 * a '+' there, or a device without an identity), or has nothing to do with
 * it. The first that allows it decides; failing that, the first that would
 * but for {identity} names the refusal.
 */
#include "policy.h"

#include <string.h>

#include "mapping_int.h"

/* How one mapping's topic template fits a topic or a filter. */
enum fit {
    FIT_NO,       /* not this mapping's */
    FIT_IDENTITY, /* this mapping's, but for the {identity} level */
    FIT_YES,
};

/* The device's identity as {identity} levels are compared with it. */
struct who {
    const char *s;
    size_t len;
    bool ok; /* an identity a device may have (tandem.conf(5)); else no level equals it */
};

static struct who who_of(const char *identity)
{
    struct who w = { identity, identity ? strlen(identity) : 0, false };
    w.ok = identity && map_identity_ok(identity, w.len);
    return w;
}

static bool level_is(const char *s, size_t len, const char *lit, size_t litlen)
{
    return len == litlen && !memcmp(s, lit, len);
}

static bool is_wildcard(const char *s, size_t len, char c)
{
    return len == 1 && s[0] == c;
}

/* True when s (a literal level, never a wildcard) is the device's own identity. */
static bool is_own(const struct who *w, const char *s, size_t len)
{
    return w->ok && level_is(s, len, w->s, w->len);
}

/*
 * The verdict once every level fits but perhaps {identity}: a mapping with
 * {identity} anywhere (an up mapping may have it in its resource only) needs
 * a device with an identity, as map_route() does.
 */
static enum fit verdict(const map_entry_t *e, bool other, const struct who *w)
{
    if (other || (map_entry_uses_identity(e) && !w->ok))
        return FIT_IDENTITY;
    return FIT_YES;
}

/* A concrete topic's levels against e's topic template. */
static enum fit fit_topic(const map_entry_t *e, const map_segs_t *p, const struct who *w)
{
    const struct tmpl *t = &e->top;
    size_t last = t->n - 1;
    bool multi = t->seg[last].kind == SEG_MULTI, other = false;

    if (multi ? p->n < t->n : p->n != t->n)
        return FIT_NO;
    for (size_t i = 0; i < p->n; i++) {
        const struct seg *g = &t->seg[i < last ? i : last]; /* the levels of {x*} */
        const char *s = p->s[i];
        size_t len = p->len[i];
        switch (g->kind) {
        case SEG_LIT:
            if (!level_is(s, len, g->text, g->len))
                return FIT_NO;
            break;
        case SEG_VAR:
        case SEG_MULTI:
            if (!map_value_ok(s, len))
                return FIT_NO;
            break;
        case SEG_IDENTITY:
            if (!is_own(w, s, len))
                other = true;
            break;
        }
    }
    return verdict(e, other, w);
}

/*
 * A well-formed filter's levels against e's topic template: every topic the
 * filter matches must be one of the template's. A literal and {identity}
 * ({gateway} is a literal) take one value, so '+' fits only a variable; '#'
 * fits only at or after a last {x*}. A literal level where a variable is must
 * be a value the variable may take.
 */
static enum fit fit_filter(const map_entry_t *e, const map_segs_t *f, const struct who *w)
{
    const struct tmpl *t = &e->top;
    size_t last = t->n - 1;
    bool multi = t->seg[last].kind == SEG_MULTI, other = false;

    for (size_t i = 0; i < f->n; i++) {
        const char *s = f->s[i];
        size_t len = f->len[i];
        bool plus = is_wildcard(s, len, '+');

        if (is_wildcard(s, len, '#')) /* the last level of a well-formed filter */
            return multi && i >= last ? verdict(e, other, w) : FIT_NO;
        if (i > last && !multi)
            return FIT_NO;
        const struct seg *g = &t->seg[i < last ? i : last];
        switch (g->kind) {
        case SEG_LIT:
            if (plus || !level_is(s, len, g->text, g->len))
                return FIT_NO;
            break;
        case SEG_VAR:
        case SEG_MULTI:
            if (!plus && !map_value_ok(s, len))
                return FIT_NO;
            break;
        case SEG_IDENTITY:
            if (plus || !is_own(w, s, len))
                other = true;
            break;
        }
    }
    if (multi ? f->n < t->n : f->n != t->n)
        return FIT_NO;
    return verdict(e, other, w);
}

/*
 * True when some topic that the filter levels p (no '#') match is one of e's
 * topics with another device's identity in {identity}, or with any identity
 * when the device has none. A '+' may take any value, the other device's
 * identity or a literal of e's included.
 */
static bool meets_another(const map_entry_t *e, const map_segs_t *p, const struct who *w)
{
    const struct tmpl *t = &e->top;
    size_t last = t->n - 1;
    bool multi = t->seg[last].kind == SEG_MULTI;
    bool other = map_entry_uses_identity(e) && !w->ok;

    if (multi ? p->n < t->n : p->n != t->n)
        return false;
    for (size_t i = 0; i < p->n; i++) {
        const struct seg *g = &t->seg[i < last ? i : last];
        const char *s = p->s[i];
        size_t len = p->len[i];
        bool plus = is_wildcard(s, len, '+');
        switch (g->kind) {
        case SEG_LIT:
            if (!plus && !level_is(s, len, g->text, g->len))
                return false;
            break;
        case SEG_VAR:
        case SEG_MULTI:
            if (!plus && !map_value_ok(s, len))
                return false;
            break;
        case SEG_IDENTITY:
            if (plus || !is_own(w, s, len))
                other = true;
            break;
        }
    }
    return other;
}

/*
 * A '#' in the place of e's last {x*} also matches its parent: the topics of
 * the filter without "/#", which have one level fewer than e's topics and so
 * are not e's. Some other mapping, in either direction, may give them to
 * another device (mappings "t/{identity}/{x*}" and "{identity}/{y}": "t/me/#"
 * would receive device t's "t/me"). Returns the first such mapping, or NULL.
 */
static const map_entry_t *parent_owner(const map_table_t *t, const map_entry_t *e,
                                       const map_segs_t *f, const struct who *w)
{
    if (f->n != e->top.n || !is_wildcard(f->s[f->n - 1], f->len[f->n - 1], '#'))
        return NULL;
    map_segs_t parent = *f;
    parent.n--;
    for (size_t i = 0; i < t->n; i++)
        if (meets_another(t->v[i], &parent, w))
            return t->v[i];
    return NULL;
}

/* Asks each mapping of direction dir in file order; see policy.h for the answer. */
static enum map_status decide(const map_table_t *t, const map_segs_t *segs, bool filter, int dir,
                              const char *identity, const map_entry_t **out)
{
    struct who w = who_of(identity);
    const map_entry_t *near = NULL;

    for (size_t i = 0; i < t->n; i++) {
        const map_entry_t *e = t->v[i], *owner;
        if (!(e->direction & dir))
            continue;
        enum fit fit = filter ? fit_filter(e, segs, &w) : fit_topic(e, segs, &w);
        if (fit == FIT_YES && filter && (owner = parent_owner(t, e, segs, &w))) {
            if (!near)
                near = owner;
            continue;
        }
        if (fit == FIT_YES) {
            *out = e;
            return MAP_OK;
        }
        if (fit == FIT_IDENTITY && !near)
            near = e;
    }
    if (!near)
        return MAP_NOT_FOUND;
    *out = near;
    return identity ? MAP_FORBIDDEN : MAP_UNAUTHORIZED;
}

enum map_status map_policy_topic(const map_table_t *t, const char *topic, size_t len, int dir,
                                 const char *identity, const map_entry_t **out)
{
    const map_entry_t *dummy;
    map_segs_t segs;

    if (!out)
        out = &dummy;
    *out = NULL;
    if (!topic || !map_topic_ok(topic, len) || topic[0] == '$')
        return MAP_BAD_VALUE;
    /* No mapping renders a topic longer than MAP_PATH_MAX or with more levels than a template. */
    if (len > MAP_PATH_MAX || map_split(topic, len, &segs) < 0)
        return MAP_NOT_FOUND;
    return decide(t, &segs, false, dir, identity, out);
}

/*
 * A filter MQTT accepts: a string MQTT accepts, within MAP_TOPIC_MAX, where
 * '+' and '#' are whole levels and '#' only the last one.
 */
static bool filter_ok(const char *s, size_t len)
{
    if (len == 0 || len > MAP_TOPIC_MAX || !map_mqtt_string_ok(s, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '+' && s[i] != '#')
            continue;
        if ((i > 0 && s[i - 1] != '/') || (i + 1 < len && s[i + 1] != '/'))
            return false;
        if (s[i] == '#' && i + 1 != len)
            return false;
    }
    return true;
}

enum map_status map_policy_filter(const map_table_t *t, const char *filter, size_t len,
                                  const char *identity, const map_entry_t **out)
{
    static const char share[] = "$share/";
    const size_t sharelen = sizeof(share) - 1;
    const map_entry_t *dummy;
    map_segs_t segs;

    if (!out)
        out = &dummy;
    *out = NULL;
    if (!filter || !filter_ok(filter, len))
        return MAP_BAD_VALUE;
    if (filter[0] == '$') {
        /* $share/GROUP/FILTER (MQTT 5 §4.8.2): the group is one level without wildcards. */
        if (len < sharelen || memcmp(filter, share, sharelen))
            return MAP_BAD_VALUE;
        const char *group = filter + sharelen;
        const char *slash = memchr(group, '/', len - sharelen);
        if (!slash || slash == group || memchr(group, '+', (size_t)(slash - group)) ||
            memchr(group, '#', (size_t)(slash - group)))
            return MAP_BAD_VALUE;
        len -= (size_t)(slash + 1 - filter);
        filter = slash + 1;
        /* The rest is a filter of its own: not empty, and no '$' first ($share twice, $SYS). */
        if (len == 0 || filter[0] == '$')
            return MAP_BAD_VALUE;
    }
    if (map_split(filter, len, &segs) < 0)
        return MAP_BAD_VALUE;
    if (len > MAP_PATH_MAX)
        return MAP_NOT_FOUND;
    if (is_wildcard(filter, len, '#')) /* every topic there is, whatever the mappings */
        return MAP_NOT_FOUND;
    return decide(t, &segs, true, MAP_DOWN, identity, out);
}
