/*
 * Mapping engine: CoAP resource templates <-> MQTT topic templates.
 *
 * Pure code: no I/O, no globals. A map_table_t holds the mappings of one
 * configuration in file order; it is immutable once built and may be shared
 * read-only. Strings passed in are copied; strings returned point into the
 * table and live as long as it.
 */
#ifndef TANDEM_MAPPING_H
#define TANDEM_MAPPING_H

#include <stdbool.h>
#include <stddef.h>

/* Directions a mapping allows; MAP_BOTH is MAP_UP | MAP_DOWN. */
enum map_dir { MAP_UP = 1, MAP_DOWN = 2, MAP_BOTH = 3 };

/* Longest identity accepted (tandem.conf(5), Identities), bytes. */
#define MAP_IDENTITY_MAX 128
/* Longest template, rendered topic or resource path, bytes. */
#define MAP_PATH_MAX 1024
/* Longest topic MQTT allows (a two-byte length), bytes. */
#define MAP_TOPIC_MAX 65535
/* Most segments in a template, path or topic. */
#define MAP_SEGMENTS_MAX 32

/* Outcome of routing a request; each maps to one CoAP response code. */
enum map_status {
    MAP_OK = 0,
    MAP_NOT_FOUND,    /* 4.04: no template matches the path */
    MAP_BAD_METHOD,   /* 4.05: a template matches, not for this direction */
    MAP_BAD_VALUE,    /* 4.00: a variable's value is refused */
    MAP_FORBIDDEN,    /* 4.03: {identity} is another device's */
    MAP_UNAUTHORIZED, /* 4.01: {identity} needed, request anonymous */
};

typedef struct map_table map_table_t;
typedef struct map_entry map_entry_t;

/* What the configuration says of one mapping. */
typedef struct map_spec {
    const char *name;
    const char *resource;
    const char *topic;
    int direction; /* enum map_dir */
    int qos;       /* 0..2 */
    bool retain;
} map_spec_t;

/* A path or topic split into segments; the pointers borrow the caller's bytes. */
typedef struct map_segs {
    size_t n;
    const char *s[MAP_SEGMENTS_MAX];
    size_t len[MAP_SEGMENTS_MAX];
} map_segs_t;

/* gateway: the gateway id that {gateway} stands for; copied. NULL on ENOMEM. */
map_table_t *map_table_new(const char *gateway);
void map_table_free(map_table_t *t);

/*
 * Validates spec's templates and appends the mapping. On failure returns a
 * negative errno code and writes a one-line reason into err.
 */
int map_table_add(map_table_t *t, const map_spec_t *spec, char *err, size_t errlen);

size_t map_table_count(const map_table_t *t);
const map_entry_t *map_table_get(const map_table_t *t, size_t i);

const char *map_entry_name(const map_entry_t *e);
const char *map_entry_resource(const map_entry_t *e);
const char *map_entry_topic(const map_entry_t *e);
int map_entry_direction(const map_entry_t *e);
int map_entry_qos(const map_entry_t *e);
bool map_entry_retain(const map_entry_t *e);
bool map_entry_uses_identity(const map_entry_t *e);
size_t map_entry_index(const map_entry_t *e);

/*
 * Writes the MQTT subscription filter of e ({x} -> '+', {x*} -> '#',
 * {gateway} -> the id) into buf. Returns its length, or -ENAMETOOLONG.
 */
int map_entry_filter(const map_entry_t *e, char *buf, size_t len);

/*
 * Renders e's resource template when it has no variables other than
 * {identity} and {gateway}: the one concrete resource a device has there.
 * Returns its length, -EINVAL when the template has other variables,
 * -EACCES when it needs an identity and identity is NULL, -ENAMETOOLONG.
 */
int map_entry_fixed_resource(const map_entry_t *e, const char *identity, char *buf, size_t len);

/* The earlier mapping that shadows e completely, or NULL. */
const map_entry_t *map_table_shadowed_by(const map_table_t *t, const map_entry_t *e);

/*
 * Splits s (len bytes) at '/' into out. Returns 0, or -E2BIG when there are
 * more than MAP_SEGMENTS_MAX segments.
 */
int map_split(const char *s, size_t len, map_segs_t *out);

/*
 * Routes a request on path for a method of direction dir (MAP_UP for POST,
 * PUT and DELETE; MAP_DOWN for GET). identity is the device's authenticated
 * identity, or NULL when anonymous. On MAP_OK, *out is the mapping and the
 * rendered topic is in topic (NUL-terminated).
 */
enum map_status map_route(const map_table_t *t, const map_segs_t *path, int dir,
                          const char *identity, const map_entry_t **out, char *topic,
                          size_t topiclen);

/*
 * The reverse: matches a concrete topic received from the broker against the
 * down/both mappings and renders the resource path. *identity_out, when the
 * topic template holds {identity}, receives that segment (else "").
 */
enum map_status map_reverse(const map_table_t *t, const char *topic, size_t topiclen,
                            const map_entry_t **out, char *resource, size_t reslen,
                            char *identity_out, size_t idlen);

/*
 * True when len bytes at s are a string MQTT accepts (MQTT 5 §1.5.4, as
 * Mosquitto enforces it): well-formed UTF-8 without NUL, without the control
 * characters U+0001..U+001F and U+007F..U+009F, and without Unicode
 * noncharacters. A broker disconnects a client that sends anything else.
 */
bool map_mqtt_string_ok(const char *s, size_t len);

/* True when len bytes at s are a topic a broker accepts in a PUBLISH. */
bool map_topic_ok(const char *s, size_t len);

/* True when len bytes at s are a value a variable may take (tandem.conf(5), Identities). */
bool map_value_ok(const char *s, size_t len);

/* True when len bytes at s are an identity a device may have (tandem.conf(5), Identities). */
bool map_identity_ok(const char *s, size_t len);

/* True when len bytes at s are well-formed UTF-8 with no NUL (control characters allowed). */
bool map_utf8_ok(const char *s, size_t len);

/* The CoAP response code (class*100+detail) for a status. */
int map_status_code(enum map_status st);

#endif
