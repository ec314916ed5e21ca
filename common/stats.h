/*
 * The statistics registry. Each module owns a plain struct of its counters
 * and gauges and registers a table that describes them (name, help, kind,
 * unit, where the value is); the renderers walk the registry: one writes the
 * JSON object (doc/operating.md, Metrics), one the Prometheus text format (version 0.0.4). The
 * stats topic, `tandem stats` and /metrics all come from these two, so they
 * carry the same numbers by construction.
 *
 * JSON: a section is a key of the top-level object (or, without a name, its
 * fields are top-level keys); a section with instances is an object with one
 * member per instance (e.g. "mappings": {"telemetry": {"up": 1, ...}}).
 *
 * Prometheus: a field is the family tandem_<prefix>_<prom or name>[_<unit>],
 * with _total added to counters; an instance is a label (e.g.
 * tandem_mapping_up_total{mapping="telemetry"}); the string fields of a
 * section are the labels of one gauge tandem_<prefix>_info with value 1.
 */
#ifndef TANDEM_STATS_H
#define TANDEM_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { STATS_COUNTER, STATS_GAUGE, STATS_HISTOGRAM } stats_kind_t;

typedef enum {
    STATS_U64,   /* uint64_t at offset */
    STATS_SIZE,  /* size_t at offset */
    STATS_UINT,  /* unsigned at offset */
    STATS_INT,   /* int at offset (may be negative: a gauge) */
    STATS_BOOL,  /* bool at offset: JSON true/false, Prometheus 1/0 */
    STATS_STR,   /* const char * at offset (JSON string; Prometheus info label); NULL: JSON null */
    STATS_FN,    /* get(obj): a value computed when rendered */
    STATS_ARRAY, /* uint64_t[n] at offset, one labelled value per non-zero element */
    STATS_HIST,  /* stats_hist_t at offset */
} stats_type_t;

/*
 * A histogram of durations with 1 ms resolution up to STATS_HIST_MS - 1 ms;
 * longer ones count in the last bucket. JSON shows its p50 and p99 in ms;
 * Prometheus its buckets in seconds (see stats.c for the bounds), sum and count.
 */
#define STATS_HIST_MS 1024
typedef struct stats_hist {
    uint64_t ms[STATS_HIST_MS];
    uint64_t count, sum_ms;
} stats_hist_t;

void stats_hist_add(stats_hist_t *h, uint64_t ms);
/* The q-quantile (0 < q <= 1) in ms, 0 when empty. */
uint64_t stats_hist_quantile(const stats_hist_t *h, double q);

typedef struct stats_field {
    const char *name; /* JSON key; also the Prometheus stem unless prom is set */
    const char *prom; /* Prometheus stem when it differs from name; NULL otherwise */
    const char *help; /* one line, for # HELP */
    stats_kind_t kind;
    const char *unit; /* Prometheus unit suffix, a base unit ("bytes", "seconds"); NULL for none */
    /*
     * STATS_INT and STATS_FN: Prometheus shows value * scale (0: 1), for a
     * figure that JSON shows in another unit than Prometheus's base one
     * (certificates' days left are seconds in Prometheus: scale 86400).
     */
    double scale;
    stats_type_t type;
    size_t offset; /* of the value in the module's struct (not for STATS_FN) */
    /* STATS_FN: the value (may be negative). NAN is JSON null and no Prometheus sample. */
    double (*get)(const void *obj);
    /* STATS_ARRAY: n elements; label names the Prometheus label; label_of writes element i's. */
    size_t n;
    const char *label;
    void (*label_of)(size_t i, char *buf, size_t len);
} stats_field_t;

typedef struct stats_section {
    const char *json; /* key in the JSON object; NULL: the fields are top-level keys */
    const char *prom; /* Prometheus prefix after tandem_ ("coap"); NULL or "": none */
    const stats_field_t *fields;
    size_t nfields;
    /*
     * Sections with instances (mappings, certificates): count(obj) of them;
     * instance(obj, i, &name) gives instance i's struct and its name (the
     * JSON key, and the value of the Prometheus label named label).
     */
    const char *label;
    size_t (*count)(const void *obj);
    const void *(*instance)(const void *obj, size_t i, const char **name);
    /*
     * Optional: called before the section is rendered, for a module whose
     * figures live in several parts to gather them into the struct the
     * table describes (a snapshot it owns; obj stays const for the renderer).
     */
    void (*prepare)(const void *obj);
} stats_section_t;

typedef struct stats stats_t;

stats_t *stats_new(void);
void stats_free(stats_t *s);

/*
 * Adds a section; sec and obj are borrowed and must live until removed (or
 * the registry is freed). Sections render in the order they were added.
 * 0, or -ENOMEM.
 */
int stats_add(stats_t *s, const stats_section_t *sec, const void *obj);
/* Removes the section added with obj; nothing if there is none. */
void stats_remove(stats_t *s, const stats_section_t *sec, const void *obj);

/* The JSON object (one line, no newline at the end); malloc'd, NULL when out of memory. */
char *stats_json(const stats_t *s, size_t *len);
/* The Prometheus text exposition; malloc'd, NULL when out of memory. */
char *stats_prometheus(const stats_t *s, size_t *len);

#endif
