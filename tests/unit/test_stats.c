/*
 * The statistics registry: a module's struct and its table, rendered as JSON
 * and as Prometheus text. The point of one registry is that both carry the
 * same numbers, so the tests parse both and compare them sample by sample,
 * and check the Prometheus text with promtool itself.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

/* ---- a module with one field of every kind ---- */

/* CoAP response codes, class << 5 | detail, shown as "2.04". */
static const unsigned char codes[] = { 65, 68, 69, 128, 132, 160, 163 };
#define NCODES (sizeof(codes) / sizeof(codes[0]))

static void code_label(size_t i, char *buf, size_t len)
{
    snprintf(buf, len, "%u.%02u", codes[i] >> 5, codes[i] & 31);
}

typedef struct demo {
    const char *gateway, *version;
    double uptime, load, expires_in;
    uint64_t requests, bytes_in;
    size_t sessions;
    unsigned observers;
    int balance;
    bool connected;
    uint64_t responses[NCODES];
    stats_hist_t latency;
} demo_t;

static double demo_uptime(const void *obj)
{
    return ((const demo_t *)obj)->uptime;
}

static double demo_load(const void *obj)
{
    return ((const demo_t *)obj)->load;
}

static double demo_expires(const void *obj)
{
    return ((const demo_t *)obj)->expires_in;
}

static const stats_field_t top_fields[] = {
    { .name = "gateway",
      .help = "The gateway's name",
      .type = STATS_STR,
      .offset = offsetof(demo_t, gateway) },
    { .name = "version",
      .help = "Tandem's version",
      .type = STATS_STR,
      .offset = offsetof(demo_t, version) },
    { .name = "uptime_s",
      .prom = "uptime",
      .unit = "seconds",
      .help = "Time since start",
      .kind = STATS_GAUGE,
      .type = STATS_FN,
      .get = demo_uptime },
};
static const stats_section_t top_section = { .fields = top_fields,
                                             .nfields =
                                                 sizeof(top_fields) / sizeof(top_fields[0]) };

static const stats_field_t coap_fields[] = {
    { .name = "requests",
      .help = "CoAP requests received",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(demo_t, requests) },
    { .name = "bytes_in",
      .prom = "received",
      .unit = "bytes",
      .help = "Bytes received\\read",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(demo_t, bytes_in) },
    { .name = "sessions",
      .help = "Sessions open\nnow",
      .kind = STATS_GAUGE,
      .type = STATS_SIZE,
      .offset = offsetof(demo_t, sessions) },
    { .name = "observers",
      .help = "Observers registered",
      .kind = STATS_GAUGE,
      .type = STATS_UINT,
      .offset = offsetof(demo_t, observers) },
    { .name = "balance",
      .help = "A gauge that may be negative",
      .kind = STATS_GAUGE,
      .type = STATS_INT,
      .offset = offsetof(demo_t, balance) },
    { .name = "connected",
      .help = "Whether the broker is connected",
      .kind = STATS_GAUGE,
      .type = STATS_BOOL,
      .offset = offsetof(demo_t, connected) },
    { .name = "responses",
      .help = "CoAP responses sent, by \"code\"",
      .kind = STATS_COUNTER,
      .type = STATS_ARRAY,
      .offset = offsetof(demo_t, responses),
      .n = NCODES,
      .label = "code",
      .label_of = code_label },
    { .name = "ack_latency_ms",
      .prom = "ack_latency",
      .unit = "seconds",
      .help = "Time until the broker acknowledged",
      .kind = STATS_HISTOGRAM,
      .type = STATS_HIST,
      .offset = offsetof(demo_t, latency) },
    { .name = "load",
      .help = "A computed value",
      .kind = STATS_GAUGE,
      .type = STATS_FN,
      .get = demo_load },
    { .name = "expires_in",
      .unit = "seconds",
      .help = "Unknown until a certificate is loaded",
      .kind = STATS_GAUGE,
      .type = STATS_FN,
      .get = demo_expires },
};
static const stats_section_t coap_section = { .json = "coap",
                                              .prom = "coap",
                                              .fields = coap_fields,
                                              .nfields =
                                                  sizeof(coap_fields) / sizeof(coap_fields[0]) };

/* ---- a section with instances ---- */

typedef struct mapping_stats {
    const char *name, *topic;
    uint64_t up, down;
} mapping_stats_t;

typedef struct mappings {
    mapping_stats_t *m;
    size_t n;
} mappings_t;

static size_t mappings_count(const void *obj)
{
    return ((const mappings_t *)obj)->n;
}

static const void *mappings_instance(const void *obj, size_t i, const char **name)
{
    const mappings_t *ms = obj;
    *name = ms->m[i].name;
    return &ms->m[i];
}

static const stats_field_t mapping_fields[] = {
    { .name = "up",
      .help = "Messages mapped up",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(mapping_stats_t, up) },
    { .name = "down",
      .help = "Messages mapped down",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(mapping_stats_t, down) },
    { .name = "topic",
      .help = "The topic template",
      .type = STATS_STR,
      .offset = offsetof(mapping_stats_t, topic) },
};
static const stats_section_t mapping_section = { .json = "mappings",
                                                 .prom = "mapping",
                                                 .fields = mapping_fields,
                                                 .nfields = sizeof(mapping_fields) /
                                                            sizeof(mapping_fields[0]),
                                                 .label = "mapping",
                                                 .count = mappings_count,
                                                 .instance = mappings_instance };

/* ---- the fixture ---- */

static demo_t demo;
static mapping_stats_t mapping_list[2];
static mappings_t maps;
static stats_t *reg;

static void fill(void)
{
    demo = (demo_t){ .gateway = "edge-01",
                     .uptime = 3600,
                     .load = 0.1,
                     .expires_in = NAN,
                     .requests = 12345,
                     .bytes_in = 1ull << 40,
                     .sessions = 7,
                     .observers = 3,
                     .balance = -3,
                     .connected = true };
    demo.responses[1] = 40; /* 2.04 */
    demo.responses[2] = 2;  /* 2.05 */
    demo.responses[4] = 1;  /* 4.04 */
    for (uint64_t i = 0; i < 100; i++)
        stats_hist_add(&demo.latency, i * 11); /* 0 .. 1089 ms: the longest past the buckets */
    mapping_list[0] = (mapping_stats_t){ .name = "tele\"metry", .topic = "t/{id}", .up = 5 };
    mapping_list[1] = (mapping_stats_t){ .name = "back\\slash", .topic = NULL, .down = 9 };
    maps = (mappings_t){ .m = mapping_list, .n = 2 };
}

static void setup(void)
{
    fill();
    reg = stats_new();
    cr_assert_not_null(reg);
    cr_assert_eq(stats_add(reg, &top_section, &demo), 0);
    cr_assert_eq(stats_add(reg, &coap_section, &demo), 0);
    cr_assert_eq(stats_add(reg, &mapping_section, &maps), 0);
}

static void teardown(void)
{
    stats_free(reg);
    reg = NULL;
}

/* ---- JSON helpers ---- */

static json_object *render_json(const stats_t *s)
{
    size_t len = 0;
    char *text = stats_json(s, &len);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len);
    cr_assert_null(strchr(text, '\n'), "one line");
    json_object *o = json_tokener_parse(text);
    cr_assert_not_null(o, "not JSON: %s", text);
    free(text);
    return o;
}

/* Member key of o, which must exist (its value may be null). */
static json_object *member(json_object *o, const char *key)
{
    json_object *v;
    cr_assert(json_object_is_type(o, json_type_object));
    cr_assert(json_object_object_get_ex(o, key, &v), "no member \"%.60s\"", key);
    return v;
}

/* o's keys are exactly the NULL-terminated list, in that order. */
static void keys_are(json_object *o, ...)
{
    va_list ap;
    va_start(ap, o);
    json_object_object_foreach(o, key, val)
    {
        (void)val;
        const char *want = va_arg(ap, const char *);
        cr_assert_not_null(want, "unexpected key \"%s\"", key);
        cr_assert_str_eq(key, want);
    }
    cr_assert_null(va_arg(ap, const char *), "a key is missing");
    va_end(ap);
}

static void is_u64(json_object *o, uint64_t want)
{
    cr_assert(json_object_is_type(o, json_type_int), "not an integer: %s",
              json_object_to_json_string(o));
    cr_assert_eq(json_object_get_uint64(o), want);
}

/* ---- Prometheus: a parser for what the renderer writes ---- */

#define MAX_LABELS 4

typedef struct sample {
    char *name;
    char *lname[MAX_LABELS], *lval[MAX_LABELS];
    size_t nlabels;
    double v;
    bool used; /* compared with the JSON */
} sample_t;

typedef struct family {
    char *name, *type;
    int help, types;
} family_t;

typedef struct prom {
    sample_t *s;
    size_t ns;
    family_t *f;
    size_t nf;
} prom_t;

static family_t *family(prom_t *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->nf; i++)
        if (strlen(p->f[i].name) == len && !strncmp(p->f[i].name, name, len))
            return &p->f[i];
    p->f = realloc(p->f, (p->nf + 1) * sizeof(*p->f));
    p->f[p->nf] = (family_t){ .name = strndup(name, len) };
    return &p->f[p->nf++];
}

/* The quoted label value at *pp (after its opening quote), unescaped; *pp ends past its end. */
static char *label_value(const char **pp)
{
    const char *p = *pp;
    char *out = malloc(strlen(p) + 1), *o = out;
    while (*p != '"') {
        cr_assert(*p && *p != '\n', "unterminated label value");
        if (*p == '\\') {
            p++;
            cr_assert(*p == '\\' || *p == '"' || *p == 'n', "bad escape \\%c", *p);
            *o++ = *p == 'n' ? '\n' : *p;
        } else {
            *o++ = *p;
        }
        p++;
    }
    *o = '\0';
    *pp = p + 1;
    return out;
}

static void parse_sample(prom_t *p, const char *line)
{
    p->s = realloc(p->s, (p->ns + 1) * sizeof(*p->s));
    sample_t *s = &p->s[p->ns++];
    *s = (sample_t){ 0 };
    size_t n = strcspn(line, "{ ");
    s->name = strndup(line, n);
    const char *q = line + n;
    if (*q == '{') {
        q++;
        while (*q != '}') {
            cr_assert_lt(s->nlabels, MAX_LABELS);
            size_t ln = strcspn(q, "=");
            s->lname[s->nlabels] = strndup(q, ln);
            q += ln;
            cr_assert(q[0] == '=' && q[1] == '"', "bad label in %.80s", line);
            q += 2;
            s->lval[s->nlabels++] = label_value(&q);
            if (*q == ',')
                q++;
            else
                cr_assert_eq(*q, '}', "bad labels in %.80s", line);
        }
        q++;
    }
    cr_assert_eq(*q, ' ', "no value in %.80s", line);
    char *end;
    s->v = strtod(q + 1, &end);
    cr_assert(end != q + 1 && *end == '\0', "bad value in %.80s", line);
}

/* The family a sample name belongs to: itself, or a histogram's _bucket, _sum, _count. */
static family_t *family_of(prom_t *p, const char *name)
{
    static const char *const parts[] = { "_bucket", "_sum", "_count" };
    for (size_t i = 0; i < p->nf; i++) {
        size_t n = strlen(p->f[i].name);
        if (strncmp(name, p->f[i].name, n))
            continue;
        if (!name[n])
            return &p->f[i];
        for (size_t k = 0; k < 3; k++)
            if (p->f[i].type && !strcmp(p->f[i].type, "histogram") && !strcmp(name + n, parts[k]))
                return &p->f[i];
    }
    return NULL;
}

static prom_t parse_prom(const char *text)
{
    prom_t p = { 0 };
    char *copy = strdup(text), *save = NULL;
    cr_assert(!*text || text[strlen(text) - 1] == '\n', "the last line ends");
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!strncmp(line, "# HELP ", 7)) {
            const char *name = line + 7;
            family_t *f = family(&p, name, strcspn(name, " "));
            f->help++;
        } else if (!strncmp(line, "# TYPE ", 7)) {
            const char *name = line + 7;
            size_t n = strcspn(name, " ");
            family_t *f = family(&p, name, n);
            f->types++;
            f->type = strdup(name + n + 1);
        } else {
            cr_assert_neq(line[0], '#', "unexpected comment %.80s", line);
            parse_sample(&p, line);
            family_t *f = family_of(&p, p.s[p.ns - 1].name);
            cr_assert_not_null(f, "%s has no # TYPE before it", p.s[p.ns - 1].name);
        }
    }
    free(copy);
    for (size_t i = 0; i < p.nf; i++) {
        cr_assert_eq(p.f[i].help, 1, "%s: %d HELP lines", p.f[i].name, p.f[i].help);
        cr_assert_eq(p.f[i].types, 1, "%s: %d TYPE lines", p.f[i].name, p.f[i].types);
    }
    return p;
}

static prom_t render_prom(const stats_t *s)
{
    size_t len = 0;
    char *text = stats_prometheus(s, &len);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), len);
    prom_t p = parse_prom(text);
    free(text);
    return p;
}

static void prom_free(prom_t *p)
{
    for (size_t i = 0; i < p->ns; i++) {
        free(p->s[i].name);
        for (size_t k = 0; k < p->s[i].nlabels; k++) {
            free(p->s[i].lname[k]);
            free(p->s[i].lval[k]);
        }
    }
    for (size_t i = 0; i < p->nf; i++) {
        free(p->f[i].name);
        free(p->f[i].type);
    }
    free(p->s);
    free(p->f);
}

/* The sample name{labels} with exactly the labels given as NULL-terminated name, value pairs. */
static sample_t *vfind(prom_t *p, const char *name, va_list ap)
{
    const char *ln[MAX_LABELS], *lv[MAX_LABELS];
    size_t n = 0;
    for (const char *k; (k = va_arg(ap, const char *));) {
        ln[n] = k;
        lv[n++] = va_arg(ap, const char *);
    }
    for (size_t i = 0; i < p->ns; i++) {
        sample_t *s = &p->s[i];
        if (strcmp(s->name, name) || s->nlabels != n)
            continue;
        size_t same = 0;
        for (size_t a = 0; a < n; a++)
            for (size_t b = 0; b < n; b++)
                same += !strcmp(ln[a], s->lname[b]) && !strcmp(lv[a], s->lval[b]);
        if (same == n)
            return s;
    }
    return NULL;
}

static sample_t *find(prom_t *p, const char *name, ...)
{
    va_list ap;
    va_start(ap, name);
    sample_t *s = vfind(p, name, ap);
    va_end(ap);
    return s;
}

/* The sample (name, labels...) has the JSON value j (a number or a boolean). */
static void same(prom_t *p, json_object *j, const char *name, ...)
{
    va_list ap;
    va_start(ap, name);
    sample_t *s = vfind(p, name, ap);
    va_end(ap);
    cr_assert_not_null(s, "no sample %s for %s", name, json_object_to_json_string(j));
    double want = json_object_is_type(j, json_type_boolean) ? json_object_get_boolean(j)
                                                            : json_object_get_double(j);
    cr_assert(json_object_is_type(j, json_type_boolean) || json_object_is_type(j, json_type_int) ||
              json_object_is_type(j, json_type_double));
    cr_assert_eq(s->v, want, "%s: %.17g in Prometheus, %.17g in JSON", name, s->v, want);
    s->used = true;
}

/* ---- the JSON carries the struct's values ---- */

Test(stats, json_values, .init = setup, .fini = teardown)
{
    json_object *root = render_json(reg);
    keys_are(root, "gateway", "version", "uptime_s", "coap", "mappings", NULL);
    cr_assert_str_eq(json_object_get_string(member(root, "gateway")), "edge-01");
    cr_assert_null(member(root, "version"), "a NULL string is null");
    is_u64(member(root, "uptime_s"), 3600); /* a whole STATS_FN value is an integer */

    json_object *coap = member(root, "coap");
    keys_are(coap, "requests", "bytes_in", "sessions", "observers", "balance", "connected",
             "responses", "ack_latency_ms", "load", "expires_in", NULL);
    is_u64(member(coap, "requests"), demo.requests);
    is_u64(member(coap, "bytes_in"), demo.bytes_in);
    is_u64(member(coap, "sessions"), demo.sessions);
    is_u64(member(coap, "observers"), demo.observers);
    cr_assert_eq(json_object_get_int64(member(coap, "balance")), -3);
    cr_assert(json_object_is_type(member(coap, "connected"), json_type_boolean));
    cr_assert(json_object_get_boolean(member(coap, "connected")));

    json_object *resp = member(coap, "responses");
    keys_are(resp, "2.04", "2.05", "4.04", NULL); /* only the codes that were sent */
    is_u64(member(resp, "2.04"), 40);
    is_u64(member(resp, "2.05"), 2);
    is_u64(member(resp, "4.04"), 1);

    json_object *lat = member(coap, "ack_latency_ms");
    keys_are(lat, "p50", "p99", NULL);
    is_u64(member(lat, "p50"), stats_hist_quantile(&demo.latency, 0.5));
    is_u64(member(lat, "p99"), stats_hist_quantile(&demo.latency, 0.99));
    is_u64(member(lat, "p50"), 539);  /* the 50th of 0, 11, ..., 1089 */
    is_u64(member(lat, "p99"), 1023); /* past the buckets: the last one */

    cr_assert(json_object_is_type(member(coap, "load"), json_type_double));
    cr_assert_eq(json_object_get_double(member(coap, "load")), 0.1);
    cr_assert_null(member(coap, "expires_in"), "a NAN STATS_FN is null");

    json_object *maps_o = member(root, "mappings");
    keys_are(maps_o, "tele\"metry", "back\\slash", NULL);
    json_object *m0 = member(maps_o, "tele\"metry"), *m1 = member(maps_o, "back\\slash");
    keys_are(m0, "up", "down", "topic", NULL);
    is_u64(member(m0, "up"), 5);
    is_u64(member(m0, "down"), 0);
    cr_assert_str_eq(json_object_get_string(member(m0, "topic")), "t/{id}");
    is_u64(member(m1, "up"), 0);
    is_u64(member(m1, "down"), 9);
    cr_assert_null(member(m1, "topic"));
    json_object_put(root);
}

Test(stats, json_text, .init = setup, .fini = teardown)
{
    char *text = stats_json(reg, NULL);
    cr_assert_not_null(text);
    /* The shortest form of a fraction, and slashes unescaped. */
    cr_assert_not_null(strstr(text, "\"load\":0.1,"), "%s", text);
    cr_assert_not_null(strstr(text, "\"topic\":\"t/{id}\""), "%s", text);
    cr_assert_eq(text[0], '{');
    free(text);
}

/* ---- the Prometheus text carries the same values ---- */

static void check_histogram(prom_t *p, json_object *lat, const char *name, const stats_hist_t *h)
{
    char bucket[128], sum[128], count[128];
    snprintf(bucket, sizeof(bucket), "%s_bucket", name);
    snprintf(sum, sizeof(sum), "%s_sum", name);
    snprintf(count, sizeof(count), "%s_count", name);
    sample_t *c = find(p, count, NULL), *s = find(p, sum, NULL);
    sample_t *inf = find(p, bucket, "le", "+Inf", NULL);
    cr_assert(c && s && inf);
    cr_assert_eq(c->v, (double)h->count);
    cr_assert_eq(inf->v, c->v, "+Inf holds them all");
    cr_assert_eq(s->v, h->sum_ms / 1000.0, "the sum in seconds");
    c->used = s->used = inf->used = true;

    uint64_t p50 = json_object_get_uint64(member(lat, "p50"));
    uint64_t p99 = json_object_get_uint64(member(lat, "p99"));
    uint64_t rank50 = (h->count + 1) / 2, rank99 = (h->count * 99 + 99) / 100;
    double last = 0, last_le = 0;
    size_t nbuckets = 0;
    for (size_t i = 0; i < p->ns; i++) {
        sample_t *b = &p->s[i];
        if (strcmp(b->name, bucket) || !strcmp(b->lval[0], "+Inf"))
            continue;
        cr_assert_eq(b->nlabels, 1);
        cr_assert_str_eq(b->lname[0], "le");
        double le = strtod(b->lval[0], NULL);
        uint64_t le_ms = (uint64_t)(le * 1000 + 0.5);
        cr_assert_gt(le, last_le, "bounds in increasing order");
        cr_assert_geq(b->v, last, "cumulative");
        cr_assert_leq(b->v, inf->v);
        /* A quantile is within a bound exactly when the bound holds its rank. */
        cr_assert_eq(b->v >= rank50, p50 <= le_ms, "p50 %lu and le=%s", (unsigned long)p50,
                     b->lval[0]);
        cr_assert_eq(b->v >= rank99, p99 <= le_ms, "p99 %lu and le=%s", (unsigned long)p99,
                     b->lval[0]);
        /* And it holds what the 1 ms buckets up to it hold. */
        uint64_t want = 0;
        for (uint64_t ms = 0; ms <= le_ms && ms < STATS_HIST_MS; ms++)
            want += h->ms[ms];
        cr_assert_eq(b->v, (double)want, "le=%s", b->lval[0]);
        last = b->v;
        last_le = le;
        b->used = true;
        nbuckets++;
    }
    cr_assert_geq(nbuckets, 10);
    cr_assert_eq(last_le, 1.0, "the last bound is 1 s");
}

Test(stats, prometheus_matches_json, .init = setup, .fini = teardown)
{
    json_object *root = render_json(reg);
    prom_t p = render_prom(reg);

    static const char *const families[][2] = {
        { "tandem_info", "gauge" },
        { "tandem_uptime_seconds", "gauge" },
        { "tandem_coap_requests_total", "counter" },
        { "tandem_coap_received_bytes_total", "counter" },
        { "tandem_coap_sessions", "gauge" },
        { "tandem_coap_observers", "gauge" },
        { "tandem_coap_balance", "gauge" },
        { "tandem_coap_connected", "gauge" },
        { "tandem_coap_responses_total", "counter" },
        { "tandem_coap_ack_latency_seconds", "histogram" },
        { "tandem_coap_load", "gauge" },
        { "tandem_coap_expires_in_seconds", "gauge" },
        { "tandem_mapping_up_total", "counter" },
        { "tandem_mapping_down_total", "counter" },
        { "tandem_mapping_info", "gauge" },
    };
    size_t nfam = sizeof(families) / sizeof(families[0]);
    cr_assert_eq(p.nf, nfam, "%zu families", p.nf);
    for (size_t i = 0; i < nfam; i++) {
        cr_assert_str_eq(p.f[i].name, families[i][0]);
        cr_assert_str_eq(p.f[i].type, families[i][1], "%s", p.f[i].name);
    }

    /* Strings are labels of the info gauge; a NULL one is no label. */
    sample_t *info = find(&p, "tandem_info", "gateway", "edge-01", NULL);
    cr_assert_not_null(info);
    cr_assert_eq(info->v, 1);
    info->used = true;
    same(&p, member(root, "uptime_s"), "tandem_uptime_seconds", NULL);

    json_object *coap = member(root, "coap");
    same(&p, member(coap, "requests"), "tandem_coap_requests_total", NULL);
    same(&p, member(coap, "bytes_in"), "tandem_coap_received_bytes_total", NULL);
    same(&p, member(coap, "sessions"), "tandem_coap_sessions", NULL);
    same(&p, member(coap, "observers"), "tandem_coap_observers", NULL);
    same(&p, member(coap, "balance"), "tandem_coap_balance", NULL);
    same(&p, member(coap, "connected"), "tandem_coap_connected", NULL);
    json_object_object_foreach(member(coap, "responses"), code, n)
        same(&p, n, "tandem_coap_responses_total", "code", code, NULL);
    check_histogram(&p, member(coap, "ack_latency_ms"), "tandem_coap_ack_latency_seconds",
                    &demo.latency);
    same(&p, member(coap, "load"), "tandem_coap_load", NULL);
    cr_assert_null(member(coap, "expires_in"));
    cr_assert_null(find(&p, "tandem_coap_expires_in_seconds", NULL), "null: no sample");

    size_t ninstances = 0;
    json_object_object_foreach(member(root, "mappings"), name, m)
    {
        same(&p, member(m, "up"), "tandem_mapping_up_total", "mapping", name, NULL);
        same(&p, member(m, "down"), "tandem_mapping_down_total", "mapping", name, NULL);
        json_object *topic = member(m, "topic");
        sample_t *mi = topic ? find(&p, "tandem_mapping_info", "mapping", name, "topic",
                                    json_object_get_string(topic), NULL)
                             : find(&p, "tandem_mapping_info", "mapping", name, NULL);
        cr_assert_not_null(mi, "no info sample for %s", name);
        cr_assert_eq(mi->v, 1);
        mi->used = true;
        ninstances++;
    }
    cr_assert_eq(ninstances, 2);

    for (size_t i = 0; i < p.ns; i++)
        cr_assert(p.s[i].used, "%s is not in the JSON", p.s[i].name);
    prom_free(&p);
    json_object_put(root);
}

Test(stats, prometheus_text, .init = setup, .fini = teardown)
{
    char *text = stats_prometheus(reg, NULL);
    cr_assert_not_null(text);
    /* Escapes: HELP escapes backslash and newline; label values the quote too. */
    cr_assert_not_null(
        strstr(text, "# HELP tandem_coap_received_bytes_total Bytes received\\\\read\n"));
    cr_assert_not_null(strstr(text, "# HELP tandem_coap_sessions Sessions open\\nnow\n"));
    cr_assert_not_null(
        strstr(text, "# HELP tandem_coap_responses_total CoAP responses sent, by \"code\"\n"));
    cr_assert_not_null(strstr(text, "tandem_mapping_up_total{mapping=\"tele\\\"metry\"} 5\n"));
    cr_assert_not_null(strstr(text, "tandem_mapping_down_total{mapping=\"back\\\\slash\"} 9\n"));
    /* Integers look like integers, fractions in their shortest form. */
    cr_assert_not_null(strstr(text, "\ntandem_uptime_seconds 3600\n"));
    cr_assert_not_null(strstr(text, "\ntandem_coap_load 0.1\n"));
    cr_assert_not_null(strstr(text, "\ntandem_coap_received_bytes_total 1099511627776\n"));
    cr_assert_not_null(strstr(text, "\ntandem_coap_ack_latency_seconds_sum 54.450\n"));
    cr_assert_not_null(strstr(text, "\ntandem_coap_balance -3\n"));
    /* HELP and TYPE even for a family without a sample. */
    cr_assert_not_null(strstr(text, "# TYPE tandem_coap_expires_in_seconds gauge\n# HELP"));
    free(text);
}

/* ---- promtool, the format's own checker ---- */

/* Runs promtool check metrics on text: its exit status; *out what it printed (malloc'd). */
static int promtool(const char *text, char **out)
{
    char path[] = "/tmp/tandem-stats-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    size_t n = 0, cap = 4096;
    *out = malloc(cap);
    for (size_t r; (r = fread(*out + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (cap - n - 1 == 0)
            *out = realloc(*out, cap *= 2);
    }
    (*out)[n] = '\0';
    int status = pclose(f);
    unlink(path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void promtool_clean(const stats_t *s)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        cr_skip_test("promtool is not installed (Debian: prometheus)");
    char *text = stats_prometheus(s, NULL), *out;
    cr_assert_not_null(text);
    int rc = promtool(text, &out);
    cr_assert_eq(rc, 0, "promtool exit %d:\n%s", rc, out);
    cr_assert_str_empty(out, "promtool says:\n%s", out);
    free(out);
    free(text);
}

Test(stats, promtool, .init = setup, .fini = teardown)
{
    promtool_clean(reg);
}

/* ---- the registry ---- */

Test(stats, empty)
{
    stats_t *s = stats_new();
    size_t len = 99;
    char *json = stats_json(s, &len);
    cr_assert_str_eq(json, "{}");
    cr_assert_eq(len, 2);
    char *prom = stats_prometheus(s, &len);
    cr_assert_not_null(prom);
    cr_assert_str_eq(prom, "");
    cr_assert_eq(len, 0);
    free(json);
    free(prom);
    stats_free(s);
    stats_free(NULL);
}

Test(stats, no_instances, .init = setup, .fini = teardown)
{
    /* A section whose instances are all gone: an empty object, families without samples. */
    maps.n = 0;
    json_object *root = render_json(reg);
    keys_are(member(root, "mappings"), NULL);
    prom_t p = render_prom(reg);
    cr_assert_null(find(&p, "tandem_mapping_up_total", NULL));
    cr_assert_eq(p.nf, 15);
    prom_free(&p);
    json_object_put(root);
    promtool_clean(reg);
}

Test(stats, remove, .init = setup, .fini = teardown)
{
    demo_t other = demo;
    stats_remove(reg, &coap_section, &other); /* not the one added: nothing */
    stats_remove(reg, &mapping_section, &demo);
    json_object *root = render_json(reg);
    keys_are(root, "gateway", "version", "uptime_s", "coap", "mappings", NULL);
    json_object_put(root);

    stats_remove(reg, &coap_section, &demo);
    root = render_json(reg);
    keys_are(root, "gateway", "version", "uptime_s", "mappings", NULL);
    json_object_put(root);
    char *text = stats_prometheus(reg, NULL);
    cr_assert_null(strstr(text, "tandem_coap_"), "%s", text);
    cr_assert_not_null(strstr(text, "tandem_mapping_up_total"));
    free(text);
    stats_remove(reg, &coap_section, &demo); /* twice: nothing */

    /* Added again, it renders last, as the order of addition says. */
    cr_assert_eq(stats_add(reg, &coap_section, &demo), 0);
    root = render_json(reg);
    keys_are(root, "gateway", "version", "uptime_s", "mappings", "coap", NULL);
    json_object_put(root);

    stats_remove(reg, &top_section, &demo);
    stats_remove(reg, &coap_section, &demo);
    stats_remove(reg, &mapping_section, &maps);
    root = render_json(reg);
    keys_are(root, NULL);
    json_object_put(root);
}

Test(stats, bounded)
{
    /* The registry grows as sections come, up to its bound (a module that never removes). */
    stats_t *s = stats_new();
    mappings_t empty = { 0 };
    int rc = 0;
    size_t added = 0;
    while (added < 100000 && (rc = stats_add(s, &mapping_section, &empty)) == 0)
        added++;
    cr_assert_eq(rc, -ENOMEM);
    cr_assert_geq(added, 64);
    cr_assert_lt(added, 100000);
    stats_remove(s, &mapping_section, &empty);
    cr_assert_eq(stats_add(s, &mapping_section, &empty), 0, "room again once removed");
    stats_free(s);
}

/* ---- histograms ---- */

Test(stats, quantiles)
{
    stats_hist_t h = { 0 };
    cr_assert_eq(stats_hist_quantile(&h, 0.5), 0, "empty");
    cr_assert_eq(stats_hist_quantile(&h, 1), 0);
    for (uint64_t ms = 1; ms <= 100; ms++)
        stats_hist_add(&h, ms);
    cr_assert_eq(h.count, 100);
    cr_assert_eq(h.sum_ms, 5050);
    cr_assert_eq(stats_hist_quantile(&h, 0.5), 50);
    cr_assert_eq(stats_hist_quantile(&h, 0.99), 99);
    cr_assert_eq(stats_hist_quantile(&h, 1), 100);
    cr_assert_eq(stats_hist_quantile(&h, 0.01), 1);
    cr_assert_eq(stats_hist_quantile(&h, 0.001), 1, "the smallest rank is 1");
    cr_assert_eq(stats_hist_quantile(&h, 0.505), 51, "ranks round up");

    stats_hist_t one = { 0 };
    stats_hist_add(&one, 7);
    cr_assert_eq(stats_hist_quantile(&one, 0.5), 7);
    cr_assert_eq(stats_hist_quantile(&one, 0.99), 7);

    /* Longer than the buckets: counted in the last one, summed in full. */
    stats_hist_t big = { 0 };
    stats_hist_add(&big, 5000);
    stats_hist_add(&big, STATS_HIST_MS - 1);
    cr_assert_eq(big.ms[STATS_HIST_MS - 1], 2);
    cr_assert_eq(big.sum_ms, 5000 + STATS_HIST_MS - 1);
    cr_assert_eq(stats_hist_quantile(&big, 0.5), STATS_HIST_MS - 1);

    /* Skewed: 98 fast, 2 slow. */
    stats_hist_t skew = { 0 };
    for (int i = 0; i < 98; i++)
        stats_hist_add(&skew, 2);
    stats_hist_add(&skew, 300);
    stats_hist_add(&skew, 800);
    cr_assert_eq(stats_hist_quantile(&skew, 0.5), 2);
    cr_assert_eq(stats_hist_quantile(&skew, 0.99), 300);
    cr_assert_eq(stats_hist_quantile(&skew, 1), 800);
}

/* ---- names from the configuration ---- */

/* The odd name below as both outputs show it ("\?" so that no trigraph is seen). */
#define CLEANED "bad?\?(???ok\xc3\xa9"

Test(stats, long_and_odd_names, .init = setup, .fini = teardown)
{
    /* 10 KB with a quote, a backslash and a newline in it; and bytes that are not UTF-8. */
    size_t n = 10 * 1024;
    char *longname = malloc(n + 1);
    memset(longname, 'x', n);
    memcpy(longname + 100, "\"\\\n", 3);
    longname[n] = '\0';
    mapping_list[0].name = longname;
    mapping_list[1].name = "bad\xff\xc3(\xed\xa0\x80ok\xc3\xa9";
    mapping_list[1].topic = "t\xfe";

    json_object *root = render_json(reg);
    json_object *maps_o = member(root, "mappings");
    keys_are(maps_o, longname, CLEANED, NULL);
    cr_assert_str_eq(json_object_get_string(member(member(maps_o, CLEANED), "topic")), "t?");
    prom_t p = render_prom(reg);
    sample_t *s = find(&p, "tandem_mapping_up_total", "mapping", longname, NULL);
    cr_assert_not_null(s);
    cr_assert_eq(s->v, 5);
    cr_assert_not_null(find(&p, "tandem_mapping_down_total", "mapping", CLEANED, NULL));
    cr_assert_not_null(find(&p, "tandem_mapping_info", "mapping", CLEANED, "topic", "t?", NULL));
    prom_free(&p);
    json_object_put(root);
    promtool_clean(reg);
    free(longname);
}
