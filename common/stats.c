/*
 * The statistics registry and its two renderers. Both walk the same table of
 * (section, object) pairs and read the same fields, so the JSON object and the
 * Prometheus text carry the same numbers; the only differences are the ones
 * each format asks for (a histogram is two quantiles in JSON, buckets in
 * Prometheus; a string is a value in JSON, a label in Prometheus).
 *
 * Everything that comes from the configuration (instance names, string
 * values) may be long and hold any byte: JSON is built with json-c, which
 * escapes, and the Prometheus text goes through open_memstream() with label
 * values escaped, so no fixed-size buffer ever holds them (only an array
 * element's label does, which the module writes with a bound). Bytes that
 * are not well-formed UTF-8 become '?' in both outputs, the same way,
 * because JSON readers and Prometheus both reject them.
 */
#include "stats.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * A section is a module (or a module's instances); a few dozen at most. The
 * bound stops a module that adds without removing from growing the registry
 * without end; past it stats_add() fails as if memory had run out.
 */
#define STATS_MAX_SECTIONS 1024

/* Room for an element's label (a CoAP code such as "2.04"); label_of truncates to it. */
#define STATS_LABEL_LEN 128

typedef struct stats_entry {
    const stats_section_t *sec; /* borrowed */
    const void *obj;            /* borrowed */
} stats_entry_t;

struct stats {
    stats_entry_t *v; /* owned, cap entries, n in use, in order of addition */
    size_t n, cap;
};

/* The value of a field in its module's struct. */
#define FIELD(type, obj, fld) (*(type const *)((const char *)(obj) + (fld)->offset))

/* ---- the registry ---- */

stats_t *stats_new(void)
{
    return calloc(1, sizeof(stats_t));
}

void stats_free(stats_t *s)
{
    if (!s)
        return;
    free(s->v);
    free(s);
}

int stats_add(stats_t *s, const stats_section_t *sec, const void *obj)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        if (cap > STATS_MAX_SECTIONS)
            cap = STATS_MAX_SECTIONS;
        if (cap <= s->n)
            return -ENOMEM;
        stats_entry_t *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (stats_entry_t){ .sec = sec, .obj = obj };
    return 0;
}

void stats_remove(stats_t *s, const stats_section_t *sec, const void *obj)
{
    /* Every entry of the pair goes: after this, nothing renders from obj. */
    size_t kept = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].sec != sec || s->v[i].obj != obj)
            s->v[kept++] = s->v[i];
    s->n = kept;
}

/* ---- histograms ---- */

void stats_hist_add(stats_hist_t *h, uint64_t ms)
{
    h->ms[ms < STATS_HIST_MS ? ms : STATS_HIST_MS - 1]++;
    h->count++;
    /* Saturates rather than wraps: a sum that went back to zero would read as a reset. */
    h->sum_ms = h->sum_ms + ms < h->sum_ms ? UINT64_MAX : h->sum_ms + ms;
}

/*
 * The number of durations, counted from the buckets rather than taken from
 * count: the quantiles, the +Inf bucket and _count then agree even if a
 * module filled the buckets itself.
 */
static uint64_t hist_total(const stats_hist_t *h)
{
    uint64_t total = 0;
    for (size_t i = 0; i < STATS_HIST_MS; i++)
        total += h->ms[i];
    return total;
}

uint64_t stats_hist_quantile(const stats_hist_t *h, double q)
{
    uint64_t total = hist_total(h);
    if (!total)
        return 0;
    /* The rank of the quantile, ceil(q * total), kept within 1..total (without libm). */
    double x = q > 0 ? q * (double)total : 0;
    uint64_t rank = x >= (double)total ? total : (uint64_t)x;
    if (rank < total && (double)rank < x)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < STATS_HIST_MS; i++) {
        seen += h->ms[i];
        if (seen >= rank)
            return i;
    }
    return STATS_HIST_MS - 1; /* not reached: seen ends at total */
}

/* ---- values shared by the two renderers ---- */

static bool utf8_cont(unsigned char c)
{
    return (c & 0xc0) == 0x80;
}

/* Length of the well-formed UTF-8 sequence at p (1 to 4 bytes), or 0 for a stray byte. */
static size_t utf8_len(const unsigned char *p)
{
    /* Continuation bytes are checked in order, so the NUL at the end stops a sequence too. */
    if (p[0] < 0x80)
        return 1;
    if (p[0] < 0xc2) /* a continuation byte, or an overlong 2-byte form */
        return 0;
    if (p[0] < 0xe0)
        return utf8_cont(p[1]) ? 2 : 0;
    if (p[0] < 0xf0) {
        if (!utf8_cont(p[1]) || !utf8_cont(p[2]))
            return 0;
        if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0))
            return 0; /* overlong, or a UTF-16 surrogate */
        return 3;
    }
    if (p[0] < 0xf5) {
        if (!utf8_cont(p[1]) || !utf8_cont(p[2]) || !utf8_cont(p[3]))
            return 0;
        if ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90))
            return 0; /* overlong, or past U+10FFFF */
        return 4;
    }
    return 0;
}

/* A copy of s with each byte outside well-formed UTF-8 replaced by '?'; NULL when out of memory. */
static char *utf8_clean(const char *s)
{
    size_t len = strlen(s);
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    char *o = out;
    while (*p) {
        size_t n = utf8_len(p);
        if (n) {
            memcpy(o, p, n);
            o += n;
            p += n;
        } else {
            *o++ = '?';
            p++;
        }
    }
    *o = '\0';
    return out;
}

/* A value of STATS_FN that has no number: negative (the module's "unknown"), NaN or infinite. */
static bool fn_missing(double v)
{
    return isnan(v) || isinf(v);
}

/* v (finite) is a whole number an int64_t or uint64_t holds. */
static bool fn_integral(double v)
{
    if (v < 0)
        return v >= -0x1p63 && v == (double)(int64_t)v;
    return v < 0x1p64 && v == (double)(uint64_t)v;
}

/*
 * The shortest "%g" form that reads back as v, so 0.1 is "0.1" and not
 * "0.10000000000000001". The daemon never calls setlocale(), so the decimal
 * point is '.'. 32 bytes hold any "%.17g".
 */
static void fmt_double(char buf[32], double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* Element i's label, always terminated, whatever label_of wrote. */
static void element_label(const stats_field_t *fld, size_t i, char buf[STATS_LABEL_LEN])
{
    buf[0] = '\0';
    if (fld->label_of)
        fld->label_of(i, buf, STATS_LABEL_LEN);
    else
        snprintf(buf, STATS_LABEL_LEN, "%zu", i);
    buf[STATS_LABEL_LEN - 1] = '\0';
}

static bool section_has_instances(const stats_section_t *sec)
{
    return sec->count && sec->instance;
}

static size_t section_count(const stats_section_t *sec, const void *obj)
{
    return section_has_instances(sec) ? sec->count(obj) : 1;
}

/* Instance i of a section (the section's obj itself without instances), and its name (or NULL). */
static const void *section_instance(const stats_section_t *sec, const void *obj, size_t i,
                                    const char **name)
{
    *name = NULL;
    if (!section_has_instances(sec))
        return obj;
    const void *inst = sec->instance(obj, i, name);
    if (inst && !*name)
        *name = "";
    return inst;
}

/* ---- JSON ---- */

static json_object *json_number(double v)
{
    if (fn_integral(v))
        return v < 0 ? json_object_new_int64((int64_t)v) : json_object_new_uint64((uint64_t)v);
    /* json-c would print "%.17g"; the shortest form is the one Prometheus shows too. */
    char buf[32];
    fmt_double(buf, v);
    return json_object_new_double_s(v, buf);
}

static json_object *json_string(const char *s)
{
    char *clean = utf8_clean(s);
    if (!clean)
        return NULL;
    json_object *o = json_object_new_string(clean);
    free(clean);
    return o;
}

/* Adds val under key, taking it; -ENOMEM (val freed) when that fails. */
static int json_add(json_object *o, const char *key, json_object *val)
{
    if (json_object_object_add(o, key, val) < 0) {
        json_object_put(val);
        return -ENOMEM;
    }
    return 0;
}

/* Adds a uint64 under key; -ENOMEM when that fails. */
static int json_add_u64(json_object *o, const char *key, uint64_t v)
{
    json_object *n = json_object_new_uint64(v);
    return n ? json_add(o, key, n) : -ENOMEM;
}

static json_object *json_array(const stats_field_t *fld, const void *obj)
{
    json_object *o = json_object_new_object();
    const uint64_t *v = &FIELD(uint64_t, obj, fld);
    for (size_t i = 0; o && i < fld->n; i++) {
        if (!v[i])
            continue;
        char label[STATS_LABEL_LEN];
        element_label(fld, i, label);
        char *key = utf8_clean(label);
        if (!key || json_add_u64(o, key, v[i]) < 0) {
            json_object_put(o);
            o = NULL;
        }
        free(key);
    }
    return o;
}

static json_object *json_hist(const stats_field_t *fld, const void *obj)
{
    const stats_hist_t *h = &FIELD(stats_hist_t, obj, fld);
    json_object *o = json_object_new_object();
    if (o && (json_add_u64(o, "p50", stats_hist_quantile(h, 0.5)) < 0 ||
              json_add_u64(o, "p99", stats_hist_quantile(h, 0.99)) < 0)) {
        json_object_put(o);
        o = NULL;
    }
    return o;
}

/*
 * The JSON value of a field in *out; NULL there is JSON null (a NULL string,
 * an STATS_FN without a value). 0, or -ENOMEM.
 */
static int json_value(const stats_field_t *fld, const void *obj, json_object **out)
{
    const char *str;
    double d;
    switch (fld->type) {
    case STATS_U64:
        *out = json_object_new_uint64(FIELD(uint64_t, obj, fld));
        break;
    case STATS_SIZE:
        *out = json_object_new_uint64(FIELD(size_t, obj, fld));
        break;
    case STATS_UINT:
        *out = json_object_new_uint64(FIELD(unsigned, obj, fld));
        break;
    case STATS_INT:
        *out = json_object_new_int64(FIELD(int, obj, fld));
        break;
    case STATS_BOOL:
        *out = json_object_new_boolean(FIELD(bool, obj, fld));
        break;
    case STATS_STR:
        str = FIELD(const char *, obj, fld);
        if (!str) {
            *out = NULL;
            return 0;
        }
        *out = json_string(str);
        break;
    case STATS_FN:
        d = fld->get ? fld->get(obj) : -1;
        if (fn_missing(d)) {
            *out = NULL;
            return 0;
        }
        *out = json_number(d);
        break;
    case STATS_ARRAY:
        *out = json_array(fld, obj);
        break;
    case STATS_HIST:
        *out = json_hist(fld, obj);
        break;
    default:
        *out = NULL; /* a type this renderer does not know: null rather than a guess */
        return 0;
    }
    return *out ? 0 : -ENOMEM;
}

static int json_fields(json_object *o, const stats_section_t *sec, const void *obj)
{
    for (size_t i = 0; i < sec->nfields; i++) {
        json_object *v;
        int rc = json_value(&sec->fields[i], obj, &v);
        if (rc < 0 || (rc = json_add(o, sec->fields[i].name, v)) < 0)
            return rc;
    }
    return 0;
}

/* One instance's object under its (cleaned) name in parent. */
static int json_instance(json_object *parent, const stats_section_t *sec, const void *inst,
                         const char *name)
{
    json_object *o = json_object_new_object();
    char *key = utf8_clean(name);
    int rc = -ENOMEM;
    if (o && key && (rc = json_add(parent, key, o)) == 0)
        rc = json_fields(o, sec, inst);
    else if (!key)
        json_object_put(o);
    free(key);
    return rc;
}

static int json_section(json_object *root, const stats_section_t *sec, const void *obj)
{
    if (sec->prepare)
        sec->prepare(obj);
    json_object *o = root;
    int rc;
    if (sec->json) {
        o = json_object_new_object();
        if (!o || json_add(root, sec->json, o) < 0)
            return -ENOMEM;
    }
    if (!section_has_instances(sec))
        return json_fields(o, sec, obj);
    size_t n = sec->count(obj);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *inst = section_instance(sec, obj, i, &name);
        if (inst && (rc = json_instance(o, sec, inst, name)) < 0)
            return rc;
    }
    return 0;
}

char *stats_json(const stats_t *s, size_t *len)
{
    json_object *root = json_object_new_object();
    char *out = NULL;
    size_t n = 0;
    if (!root)
        return NULL;
    for (size_t i = 0; i < s->n; i++)
        if (json_section(root, s->v[i].sec, s->v[i].obj) < 0)
            goto done;
    /* No "\/" for '/': valid either way, and names with slashes stay readable. */
    const char *text = json_object_to_json_string_length(
        root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    if (text && (out = malloc(n + 1)))
        memcpy(out, text, n + 1);
done:
    json_object_put(root);
    if (out && len)
        *len = n;
    return out;
}

/* ---- Prometheus ---- */

/*
 * The le bounds, in ms and as printed. Bucket i of a stats_hist_t holds
 * durations of i ms, so it is within bound b when i <= b. There is no bound
 * past 1 s: the last 1 ms bucket also holds everything longer, so only +Inf
 * can say where those are.
 */
static const struct {
    unsigned ms;
    const char *le;
} hist_bounds[] = {
    { 1, "0.001" }, { 2, "0.002" }, { 5, "0.005" }, { 10, "0.01" }, { 20, "0.02" },
    { 50, "0.05" }, { 100, "0.1" }, { 200, "0.2" }, { 500, "0.5" }, { 1000, "1" },
};

/* A metric or label name: what the format allows ([a-zA-Z0-9_]) kept, any other byte '_'. */
static void put_ident(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '_';
        fputc(ok ? *p : '_', f);
    }
}

/* Label names may not start with a digit, which metric names after tandem_ never do. */
static void put_label_name(FILE *f, const char *s)
{
    if (*s >= '0' && *s <= '9')
        fputc('_', f);
    put_ident(f, *s ? s : "_");
}

/*
 * Text as the format wants it: backslash and newline escaped, the double
 * quote too inside a label value (not in HELP), and what is not UTF-8 '?'.
 */
static void put_text(FILE *f, const char *s, bool quoted)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_len(p);
        if (!n)
            fputc('?', f);
        else if (*p == '\\')
            fputs("\\\\", f);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p == '"' && quoted)
            fputs("\\\"", f);
        else
            fwrite(p, 1, n, f);
        p += n ? n : 1;
    }
}

static const char *section_prefix(const stats_section_t *sec)
{
    return sec->prom && *sec->prom ? sec->prom : NULL;
}

/* tandem_<prefix>_<stem>[_<unit>][_total]<suffix>; fld NULL: the section's tandem_<prefix>_info. */
static void put_family(FILE *f, const stats_section_t *sec, const stats_field_t *fld,
                       const char *suffix)
{
    fputs("tandem_", f);
    if (section_prefix(sec)) {
        put_ident(f, section_prefix(sec));
        fputc('_', f);
    }
    if (!fld) {
        fputs("info", f);
    } else {
        put_ident(f, fld->prom ? fld->prom : fld->name);
        if (fld->unit) {
            fputc('_', f);
            put_ident(f, fld->unit);
        }
        if (fld->type != STATS_HIST && fld->kind == STATS_COUNTER)
            fputs("_total", f);
    }
    fputs(suffix, f);
}

static void put_label(FILE *f, int *nlabels, const char *name, const char *value)
{
    fputc(*nlabels ? ',' : '{', f);
    put_label_name(f, name);
    fputs("=\"", f);
    put_text(f, value, true);
    fputc('"', f);
    (*nlabels)++;
}

/* The instance's label, when the section has instances (inst_name not NULL). */
static void put_instance(FILE *f, int *nlabels, const stats_section_t *sec, const char *inst_name)
{
    if (inst_name)
        put_label(f, nlabels, sec->label ? sec->label : "name", inst_name);
}

/* Closes the labels (if any) and writes the value, one sample per line. */
static void put_value(FILE *f, int nlabels, const char *value)
{
    if (nlabels)
        fputc('}', f);
    fprintf(f, " %s\n", value);
}

static void put_u64(FILE *f, int nlabels, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    put_value(f, nlabels, buf);
}

/* A sample of the field's family with only the instance's label; value as text. */
static void put_plain(FILE *f, const stats_section_t *sec, const stats_field_t *fld,
                      const char *inst_name, const char *value)
{
    int nl = 0;
    put_family(f, sec, fld, "");
    put_instance(f, &nl, sec, inst_name);
    put_value(f, nl, value);
}

static void prom_array(FILE *f, const stats_section_t *sec, const stats_field_t *fld,
                       const void *obj, const char *inst_name)
{
    const uint64_t *v = &FIELD(uint64_t, obj, fld);
    for (size_t i = 0; i < fld->n; i++) {
        if (!v[i])
            continue;
        char label[STATS_LABEL_LEN];
        int nl = 0;
        element_label(fld, i, label);
        put_family(f, sec, fld, "");
        put_instance(f, &nl, sec, inst_name);
        put_label(f, &nl, fld->label ? fld->label : "index", label);
        put_u64(f, nl, v[i]);
    }
}

static void prom_hist(FILE *f, const stats_section_t *sec, const stats_field_t *fld,
                      const void *obj, const char *inst_name)
{
    const stats_hist_t *h = &FIELD(stats_hist_t, obj, fld);
    uint64_t cumulative = 0;
    size_t i = 0;
    int nl;
    for (size_t b = 0; b < sizeof(hist_bounds) / sizeof(hist_bounds[0]); b++) {
        for (; i <= hist_bounds[b].ms && i < STATS_HIST_MS; i++)
            cumulative += h->ms[i];
        nl = 0;
        put_family(f, sec, fld, "_bucket");
        put_instance(f, &nl, sec, inst_name);
        put_label(f, &nl, "le", hist_bounds[b].le);
        put_u64(f, nl, cumulative);
    }
    uint64_t total = hist_total(h);
    nl = 0;
    put_family(f, sec, fld, "_bucket");
    put_instance(f, &nl, sec, inst_name);
    put_label(f, &nl, "le", "+Inf");
    put_u64(f, nl, total);
    /* Milliseconds to seconds in decimal, exactly: 1234 ms is "1.234". */
    char sum[32];
    snprintf(sum, sizeof(sum), "%" PRIu64 ".%03u", h->sum_ms / 1000, (unsigned)(h->sum_ms % 1000));
    nl = 0;
    put_family(f, sec, fld, "_sum");
    put_instance(f, &nl, sec, inst_name);
    put_value(f, nl, sum);
    nl = 0;
    put_family(f, sec, fld, "_count");
    put_instance(f, &nl, sec, inst_name);
    put_u64(f, nl, total);
}

/* The samples of one field for one instance (or the section's only object). */
static void prom_samples(FILE *f, const stats_section_t *sec, const stats_field_t *fld,
                         const void *obj, const char *inst_name)
{
    char buf[32];
    double d;
    switch (fld->type) {
    case STATS_U64:
    case STATS_SIZE:
    case STATS_UINT:
    case STATS_BOOL:
        snprintf(buf, sizeof(buf), "%" PRIu64,
                 fld->type == STATS_U64    ? FIELD(uint64_t, obj, fld)
                 : fld->type == STATS_SIZE ? (uint64_t)FIELD(size_t, obj, fld)
                 : fld->type == STATS_UINT ? (uint64_t)FIELD(unsigned, obj, fld)
                                           : (uint64_t)FIELD(bool, obj, fld));
        put_plain(f, sec, fld, inst_name, buf);
        break;
    case STATS_INT:
        if (fld->scale != 0)
            fmt_double(buf, (double)FIELD(int, obj, fld) * fld->scale);
        else
            snprintf(buf, sizeof(buf), "%d", FIELD(int, obj, fld));
        put_plain(f, sec, fld, inst_name, buf);
        break;
    case STATS_FN:
        d = fld->get ? fld->get(obj) : -1;
        if (fn_missing(d))
            break;
        if (fld->scale != 0)
            d *= fld->scale;
        if (fn_integral(d) && d < 0)
            snprintf(buf, sizeof(buf), "%" PRId64, (int64_t)d);
        else if (fn_integral(d))
            snprintf(buf, sizeof(buf), "%" PRIu64, (uint64_t)d);
        else
            fmt_double(buf, d);
        put_plain(f, sec, fld, inst_name, buf);
        break;
    case STATS_ARRAY:
        prom_array(f, sec, fld, obj, inst_name);
        break;
    case STATS_HIST:
        prom_hist(f, sec, fld, obj, inst_name);
        break;
    default: /* STATS_STR is the info family's */
        break;
    }
}

/* # HELP and # TYPE of a family; fld NULL: the section's info gauge. */
static void prom_header(FILE *f, const stats_section_t *sec, const stats_field_t *fld)
{
    fputs("# HELP ", f);
    put_family(f, sec, fld, "");
    fputc(' ', f);
    if (!fld)
        fputs("Text values as labels; the value is always 1", f);
    else
        put_text(f, fld->help ? fld->help : fld->name, false);
    fputs("\n# TYPE ", f);
    put_family(f, sec, fld, "");
    fputs(fld && fld->type == STATS_HIST      ? " histogram\n"
          : fld && fld->kind == STATS_COUNTER ? " counter\n"
                                              : " gauge\n",
          f);
}

/* tandem_<prefix>_info: one sample per instance, labelled with its non-NULL strings. */
static void prom_info(FILE *f, const stats_section_t *sec, const void *obj)
{
    prom_header(f, sec, NULL);
    size_t n = section_count(sec, obj);
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *inst = section_instance(sec, obj, i, &name);
        if (!inst)
            continue;
        int nl = 0;
        put_family(f, sec, NULL, "");
        put_instance(f, &nl, sec, name);
        for (size_t k = 0; k < sec->nfields; k++) {
            const stats_field_t *fld = &sec->fields[k];
            if (fld->type == STATS_STR && FIELD(const char *, inst, fld))
                put_label(f, &nl, fld->name, FIELD(const char *, inst, fld));
        }
        put_value(f, nl, "1");
    }
}

static void prom_section(FILE *f, const stats_section_t *sec, const void *obj)
{
    if (sec->prepare)
        sec->prepare(obj);
    bool info_done = false;
    for (size_t k = 0; k < sec->nfields; k++) {
        const stats_field_t *fld = &sec->fields[k];
        if (fld->type == STATS_STR) {
            /* All the section's strings are one family, where the first one was. */
            if (!info_done)
                prom_info(f, sec, obj);
            info_done = true;
            continue;
        }
        prom_header(f, sec, fld);
        size_t n = section_count(sec, obj);
        for (size_t i = 0; i < n; i++) {
            const char *name;
            const void *inst = section_instance(sec, obj, i, &name);
            if (inst)
                prom_samples(f, sec, fld, inst, name);
        }
    }
}

char *stats_prometheus(const stats_t *s, size_t *len)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f)
        return NULL;
    for (size_t i = 0; i < s->n; i++)
        prom_section(f, s->v[i].sec, s->v[i].obj);
    /* A write that failed (out of memory) leaves the stream in error: the text is incomplete. */
    bool failed = ferror(f);
    if (fclose(f) != 0 || failed) {
        free(out);
        return NULL;
    }
    if (len)
        *len = n;
    return out;
}
