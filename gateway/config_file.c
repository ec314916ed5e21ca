/*
 * Configuration loading. The schema table below is the single description of
 * every setting: its name, type, range, default, and whether a reload may
 * change it.
 */
#include "config_file.h"
#include "log.h"
#include "mapping.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

enum stype { S_GROUP, S_STR, S_PATH, S_INT, S_BOOL, S_ENUM };

struct setting {
    const char *name; /* full path, e.g. "coap.dtls.port" */
    enum stype type;
    size_t off;         /* offset in gw_config_t (not for groups) */
    long min, max;      /* S_INT range */
    const char *def;    /* default, as text ("" for empty strings) */
    const char *values; /* S_ENUM: "a|b|c"; the index is stored */
    bool reloadable;    /* SIGHUP may change it */
};

#define OFF(f) offsetof(gw_config_t, f)

static const struct setting schema[] = {
    { "gateway", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "gateway.id", S_STR, OFF(gateway.id), 0, 0, "edge-01", NULL, false },
    { "gateway.log_level", S_ENUM, OFF(gateway.log_level), 0, 0, "info", "error|warning|info|debug",
      true },
    { "gateway.log_timestamps", S_ENUM, OFF(gateway.log_timestamps), 0, 0, "auto",
      "auto|true|false", true },
    { "gateway.control_socket", S_PATH, OFF(gateway.control_socket), 0, 0,
      "/run/tandem/control.sock", NULL, false },
    { "gateway.state_dir", S_PATH, OFF(gateway.state_dir), 0, 0, "/var/lib/tandem", NULL, false },

    { "coap", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "coap.bind", S_STR, OFF(coap.bind), 0, 0, "::", NULL, false },
    { "coap.plain", S_BOOL, OFF(coap.plain), 0, 0, "false", NULL, false },
    { "coap.port", S_INT, OFF(coap.port), 1, 65535, "5683", NULL, false },
    { "coap.max_sessions", S_INT, OFF(coap.max_sessions), 1, 1000000, "10000", NULL, true },
    { "coap.max_payload", S_INT, OFF(coap.max_payload), 1, 16777216, "65536", NULL, true },
    { "coap.max_resources", S_INT, OFF(coap.max_resources), 1, 10000000, "100000", NULL, true },
    { "coap.session_idle_timeout", S_INT, OFF(coap.session_idle_timeout), 1, 86400, "300", NULL,
      true },
    { "coap.dtls", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "coap.dtls.port", S_INT, OFF(coap.dtls.port), 1, 65535, "5684", NULL, false },
    { "coap.dtls.psk_file", S_PATH, OFF(coap.dtls.psk_file), 0, 0, "", NULL, true },
    { "coap.dtls.cert", S_PATH, OFF(coap.dtls.cert), 0, 0, "", NULL, true },
    { "coap.dtls.key", S_PATH, OFF(coap.dtls.key), 0, 0, "", NULL, true },
    { "coap.dtls.ca", S_PATH, OFF(coap.dtls.ca), 0, 0, "", NULL, true },
    { "coap.dtls.require_client_cert", S_BOOL, OFF(coap.dtls.require_client_cert), 0, 0, "false",
      NULL, true },
    { "coap.dtls.crl", S_PATH, OFF(coap.dtls.crl), 0, 0, "", NULL, true },

    { "mqtt", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "mqtt.uri", S_STR, OFF(mqtt.uri), 0, 0, "mqtts://localhost:8883", NULL, false },
    { "mqtt.client_id", S_STR, OFF(mqtt.client_id), 0, 0, "tandem-{gateway}", NULL, false },
    { "mqtt.version", S_INT, OFF(mqtt.version), 3, 5, "5", NULL, false },
    { "mqtt.username", S_STR, OFF(mqtt.username), 0, 0, "", NULL, false },
    { "mqtt.password_file", S_PATH, OFF(mqtt.password_file), 0, 0, "", NULL, false },
    { "mqtt.ca", S_PATH, OFF(mqtt.ca), 0, 0, "", NULL, false },
    { "mqtt.cert", S_PATH, OFF(mqtt.cert), 0, 0, "", NULL, false },
    { "mqtt.key", S_PATH, OFF(mqtt.key), 0, 0, "", NULL, false },
    { "mqtt.verify_hostname", S_BOOL, OFF(mqtt.verify_hostname), 0, 0, "true", NULL, false },
    { "mqtt.keepalive", S_INT, OFF(mqtt.keepalive), 0, 65535, "30", NULL, false },
    { "mqtt.clean_start", S_BOOL, OFF(mqtt.clean_start), 0, 0, "false", NULL, false },
    { "mqtt.max_inflight", S_INT, OFF(mqtt.max_inflight), 1, 65535, "1000", NULL, false },
    { "mqtt.publish_timeout", S_INT, OFF(mqtt.publish_timeout), 1, 3600, "10", NULL, true },
    { "mqtt.offline_buffer", S_INT, OFF(mqtt.offline_buffer), 0, 10000000, "10000", NULL, false },
    { "mqtt.status_topic", S_STR, OFF(mqtt.status_topic), 0, 0, "tandem/{gateway}/status", NULL,
      false },
    { "mqtt.stats_topic", S_STR, OFF(mqtt.stats_topic), 0, 0, "tandem/{gateway}/stats", NULL,
      true },
    { "mqtt.presence_topic", S_STR, OFF(mqtt.presence_topic), 0, 0,
      "tandem/{gateway}/devices/{identity}", NULL, false },
    { "mqtt.stats_interval", S_INT, OFF(mqtt.stats_interval), 0, 86400, "60", NULL, true },

    { "mqtt_listener", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "mqtt_listener.enabled", S_BOOL, OFF(mqtt_listener.enabled), 0, 0, "false", NULL, false },
    { "mqtt_listener.bind", S_STR, OFF(mqtt_listener.bind), 0, 0, "::", NULL, false },
    { "mqtt_listener.port", S_INT, OFF(mqtt_listener.port), 1, 65535, "8883", NULL, false },
    { "mqtt_listener.cert", S_PATH, OFF(mqtt_listener.cert), 0, 0, "", NULL, true },
    { "mqtt_listener.key", S_PATH, OFF(mqtt_listener.key), 0, 0, "", NULL, true },
    { "mqtt_listener.ca", S_PATH, OFF(mqtt_listener.ca), 0, 0, "", NULL, true },
    { "mqtt_listener.require_client_cert", S_BOOL, OFF(mqtt_listener.require_client_cert), 0, 0,
      "true", NULL, true },
    { "mqtt_listener.crl", S_PATH, OFF(mqtt_listener.crl), 0, 0, "", NULL, true },
    { "mqtt_listener.max_connections", S_INT, OFF(mqtt_listener.max_connections), 1, 100000, "1000",
      NULL, true },
    { "mqtt_listener.max_connections_per_identity", S_INT,
      OFF(mqtt_listener.max_connections_per_identity), 1, 100000, "4", NULL, true },

    { "metrics", S_GROUP, 0, 0, 0, NULL, NULL, false },
    { "metrics.listen", S_STR, OFF(metrics.listen), 0, 0, "", NULL, false },
};

#define NSETTINGS (sizeof(schema) / sizeof(schema[0]))

/* The settings of one element of the mappings list. */
static const char *const mapping_keys[] = { "name",      "resource", "topic",
                                            "direction", "qos",      "retain" };

static const struct setting *find_setting(const char *name)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!strcmp(schema[i].name, name))
            return &schema[i];
    return NULL;
}

int gw_config_line(const gw_config_t *cfg, const char *setting)
{
    const struct setting *s = find_setting(setting);
    return s ? cfg->lines[s - schema] : 0;
}

/* Joins a relative path to the configuration folder; "" stays "". */
static char *resolve_path(const char *dir, const char *p)
{
    char *out;
    if (!*p || p[0] == '/' || !dir)
        return strdup(p);
    if (asprintf(&out, "%s/%s", dir, p) < 0)
        return NULL;
    return out;
}

static int enum_index(const char *values, const char *v)
{
    int idx = 0;
    size_t vlen = strlen(v);
    for (const char *p = values; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vlen && !memcmp(p, v, len))
            return idx;
        idx++;
        p += len + (bar ? 1 : 0);
    }
    return -1;
}

/* Stores one setting's value (from the file, or its default when s is NULL). */
static void store(gw_config_t *cfg, const struct setting *d, config_setting_t *s, gw_errs_t *errs)
{
    void *at = (char *)cfg + d->off;
    const char *file = cfg->file;
    int line = s ? config_setting_source_line(s) : 0;

    switch (d->type) {
    case S_GROUP:
        if (s && !config_setting_is_group(s))
            gw_errs_add(errs, file, line, d->name, "must be a group { ... }");
        return;
    case S_STR:
    case S_PATH:
    case S_ENUM: {
        const char *v = d->def;
        if (s && d->type == S_ENUM && config_setting_type(s) == CONFIG_TYPE_BOOL &&
            enum_index(d->values, "true") >= 0) {
            v = config_setting_get_bool(s) ? "true" : "false"; /* "auto" | true | false */
        } else if (s) {
            if (config_setting_type(s) != CONFIG_TYPE_STRING) {
                gw_errs_add(errs, file, line, d->name, "must be a string");
                return;
            }
            v = config_setting_get_string(s);
        }
        if (d->type == S_ENUM) {
            int idx = enum_index(d->values, v);
            if (idx < 0) {
                char choices[128];
                snprintf(choices, sizeof(choices), "%s", d->values);
                for (char *c = choices; *c; c++)
                    if (*c == '|')
                        *c = ',';
                gw_errs_add(errs, file, line, d->name, "\"%s\" is not one of %s", v, choices);
                return;
            }
            *(int *)at = idx;
            return;
        }
        char *copy = d->type == S_PATH ? resolve_path(cfg->dir, v) : strdup(v);
        if (!copy) {
            gw_errs_add(errs, file, line, d->name, "out of memory");
            return;
        }
        free(*(char **)at);
        *(char **)at = copy;
        return;
    }
    case S_INT: {
        long long v = strtoll(d->def, NULL, 10);
        if (s) {
            int t = config_setting_type(s);
            if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) {
                gw_errs_add(errs, file, line, d->name, "must be an integer");
                return;
            }
            v = config_setting_get_int64(s);
        }
        if (v < d->min || v > d->max) {
            gw_errs_add(errs, file, line, d->name, "%lld is out of range %ld..%ld", v, d->min,
                        d->max);
            return;
        }
        *(int *)at = (int)v;
        return;
    }
    case S_BOOL: {
        bool v = !strcmp(d->def, "true");
        if (s) {
            if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
                gw_errs_add(errs, file, line, d->name, "must be true or false");
                return;
            }
            v = config_setting_get_bool(s);
        }
        *(bool *)at = v;
        return;
    }
    }
}

/* Full path name of a setting below the root, e.g. "coap.dtls.port". */
static void setting_path(config_setting_t *s, char *buf, size_t len)
{
    config_setting_t *parent = config_setting_parent(s);
    const char *name = config_setting_name(s);
    if (parent && config_setting_parent(parent)) {
        setting_path(parent, buf, len);
        size_t used = strlen(buf);
        snprintf(buf + used, len - used, ".%s", name ? name : "?");
    } else {
        snprintf(buf, len, "%s", name ? name : "?");
    }
}

/* Edit distance (optimal string alignment: a swap of neighbours counts one), capped at 9. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int d[32][32];
    if (la > 30 || lb > 30)
        return 9;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[la][lb] > 9 ? 9 : d[la][lb];
}

/* Whether a name at distance d from one of len bytes is close enough to suggest. */
static bool close_enough(int d, size_t len)
{
    return d <= 2 && (size_t)d * 3 <= len + 1;
}

/*
 * The known setting closest to path (an unknown one) in the same group, or
 * NULL when none is close enough to be what was meant.
 */
static const char *closest_setting(const char *path)
{
    const char *dot = strrchr(path, '.');
    size_t plen = dot ? (size_t)(dot - path) + 1 : 0; /* the group's prefix, with its dot */
    const char *leaf = path + plen, *best = NULL;
    int best_d = 10;
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *n = schema[i].name;
        if (strncmp(n, path, plen) || strchr(n + plen, '.'))
            continue;
        int d = edit_distance(leaf, n + plen);
        if (d < best_d) {
            best_d = d;
            best = n;
        }
    }
    return best && close_enough(best_d, strlen(leaf)) ? best : NULL;
}

/* First pass, part one: every setting in the file must be in the schema. */
static void check_unknown(const gw_config_t *cfg, config_setting_t *group, gw_errs_t *errs)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        char path[256];
        setting_path(s, path, sizeof(path));
        if (!strcmp(path, "mappings"))
            continue;
        const struct setting *d = find_setting(path);
        if (!d) {
            const char *near = closest_setting(path);
            if (near)
                gw_errs_add(errs, cfg->file, config_setting_source_line(s), path,
                            "unknown setting; did you mean %s?", near);
            else
                gw_errs_add(errs, cfg->file, config_setting_source_line(s), path,
                            "unknown setting");
            continue;
        }
        if (d->type == S_GROUP && config_setting_is_group(s))
            check_unknown(cfg, s, errs);
    }
}

static int parse_direction(const char *v)
{
    if (!strcmp(v, "up"))
        return MAP_UP;
    if (!strcmp(v, "down"))
        return MAP_DOWN;
    if (!strcmp(v, "both"))
        return MAP_BOTH;
    return -1;
}

static void load_mappings(gw_config_t *cfg, config_t *lc, gw_errs_t *errs)
{
    config_setting_t *list = config_lookup(lc, "mappings");
    const char *file = cfg->file;

    if (!list)
        return;
    if (!config_setting_is_list(list) && !config_setting_is_array(list)) {
        gw_errs_add(errs, file, config_setting_source_line(list), "mappings",
                    "must be a list ( { ... }, ... )");
        return;
    }
    int n = config_setting_length(list);
    for (int i = 0; i < n; i++) {
        config_setting_t *m = config_setting_get_elem(list, (unsigned)i);
        int line = config_setting_source_line(m);
        char where[48];
        map_spec_t spec = { .qos = 0, .retain = false, .direction = -1 };
        const char *dir = NULL;
        int bad = 0;

        snprintf(where, sizeof(where), "mappings[%d]", i);
        if (!config_setting_is_group(m)) {
            gw_errs_add(errs, file, line, where, "must be a group { ... }");
            continue;
        }
        int nk = config_setting_length(m);
        for (int k = 0; k < nk; k++) {
            config_setting_t *s = config_setting_get_elem(m, (unsigned)k);
            const char *key = config_setting_name(s);
            int sl = config_setting_source_line(s);
            bool known = false;
            char full[96];
            snprintf(full, sizeof(full), "%s.%s", where, key);
            for (size_t j = 0; j < sizeof(mapping_keys) / sizeof(mapping_keys[0]); j++)
                known |= !strcmp(key, mapping_keys[j]);
            if (!known) {
                const char *near = NULL;
                int best_d = 10;
                for (size_t j = 0; j < sizeof(mapping_keys) / sizeof(mapping_keys[0]); j++) {
                    int d = edit_distance(key, mapping_keys[j]);
                    if (d < best_d) {
                        best_d = d;
                        near = mapping_keys[j];
                    }
                }
                if (near && close_enough(best_d, strlen(key)))
                    gw_errs_add(errs, file, sl, full, "unknown setting; did you mean %s?", near);
                else
                    gw_errs_add(errs, file, sl, full, "unknown setting");
                bad++;
                continue;
            }
            int t = config_setting_type(s);
            if (!strcmp(key, "qos") || !strcmp(key, "retain")) {
                bool isq = key[0] == 'q';
                if (isq ? (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
                        : t != CONFIG_TYPE_BOOL) {
                    gw_errs_add(errs, file, sl, full,
                                isq ? "must be 0, 1 or 2" : "must be true or false");
                    bad++;
                } else if (isq) {
                    long long q = config_setting_get_int64(s);
                    if (q < 0 || q > 2) {
                        gw_errs_add(errs, file, sl, full, "must be 0, 1 or 2");
                        bad++;
                    }
                    spec.qos = (int)q;
                } else {
                    spec.retain = config_setting_get_bool(s);
                }
                continue;
            }
            if (t != CONFIG_TYPE_STRING) {
                gw_errs_add(errs, file, sl, full, "must be a string");
                bad++;
                continue;
            }
            const char *v = config_setting_get_string(s);
            if (!strcmp(key, "name"))
                spec.name = v;
            else if (!strcmp(key, "resource"))
                spec.resource = v;
            else if (!strcmp(key, "topic"))
                spec.topic = v;
            else {
                dir = v;
                spec.direction = parse_direction(v);
                if (spec.direction < 0) {
                    gw_errs_add(errs, file, sl, full, "\"%s\" is not one of up, down, both", v);
                    bad++;
                }
            }
        }
        const char *missing = !spec.name       ? "name"
                              : !spec.resource ? "resource"
                              : !spec.topic    ? "topic"
                              : !dir           ? "direction"
                                               : NULL;
        if (missing) {
            gw_errs_add(errs, file, line, where, "%s is required", missing);
            continue;
        }
        if (bad)
            continue;
        char err[256];
        snprintf(where, sizeof(where), "mappings.%s", spec.name);
        if (map_table_add(cfg->maps, &spec, err, sizeof(err)) < 0)
            gw_errs_add(errs, file, line, where, "%s", err);
    }
}

/*
 * Replaces {gateway} in a template setting; keep (NULL for none) is another
 * placeholder left as it is; any other brace is an error.
 */
static void render_template(gw_config_t *cfg, char **field, const char *name, const char *keep,
                            gw_errs_t *errs)
{
    const char *src = *field;
    char out[1100];
    size_t pos = 0;
    while (*src) {
        if (keep && !strncmp(src, keep, strlen(keep))) {
            size_t l = strlen(keep);
            if (pos + l >= sizeof(out) - 1)
                break;
            memcpy(out + pos, keep, l);
            pos += l;
            src += l;
            continue;
        }
        if (!strncmp(src, "{gateway}", 9)) {
            size_t l = strlen(cfg->gateway.id);
            if (pos + l >= sizeof(out) - 1)
                break;
            memcpy(out + pos, cfg->gateway.id, l);
            pos += l;
            src += 9;
            continue;
        }
        if (*src == '{' || *src == '}') {
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, name), name,
                        "only {gateway}%s%s may be used here", keep ? " and " : "",
                        keep ? keep : "");
            return;
        }
        if (pos >= sizeof(out) - 1)
            break;
        out[pos++] = *src++;
    }
    if (*src) {
        gw_errs_add(errs, cfg->file, gw_config_line(cfg, name), name, "too long");
        return;
    }
    out[pos] = '\0';
    char *copy = strdup(out);
    if (copy) {
        free(*field);
        *field = copy;
    }
}

static void render_gateway(gw_config_t *cfg, char **field, const char *name, gw_errs_t *errs)
{
    render_template(cfg, field, name, NULL, errs);
}

static bool topic_ok(const char *t)
{
    size_t len = strlen(t);
    return len <= MAP_PATH_MAX && t[0] != '$' && map_topic_ok(t, len);
}

static bool is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Whether host (from mqtt.uri) names this machine by loopback: localhost, 127.0.0.0/8, ::1. */
static bool host_is_loopback(const char *host)
{
    unsigned char a[16];
    static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (!strcasecmp(host, "localhost") || !strcasecmp(host, "localhost."))
        return true;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1)
        return IN6_IS_ADDR_LOOPBACK((struct in6_addr *)a) ||
               (!memcmp(a, v4mapped, 12) && a[12] == 127);
    return false;
}

/* Whether host is the unspecified address, which a connection takes for this machine. */
static bool is_any(const char *host)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1)
        return !memcmp(a, "\0\0\0\0", 4);
    return inet_pton(AF_INET6, host, a) == 1 && IN6_IS_ADDR_UNSPECIFIED((struct in6_addr *)a);
}

/* Whether two literal addresses are the same (an IPv4 one and its ::ffff: form too). */
static bool same_address(const char *x, const char *y)
{
    unsigned char a[16], b[16];
    static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    int fa = 0, fb = 0;
    if (inet_pton(AF_INET6, x, a) == 1)
        fa = 6;
    else if (inet_pton(AF_INET, x, a + 12) == 1) {
        memcpy(a, v4mapped, 12);
        fa = 4;
    }
    if (inet_pton(AF_INET6, y, b) == 1)
        fb = 6;
    else if (inet_pton(AF_INET, y, b + 12) == 1) {
        memcpy(b, v4mapped, 12);
        fb = 4;
    }
    return fa && fb && !memcmp(a, b, 16);
}

/*
 * Whether the broker at uri is the MQTT listener itself, as far as can be
 * told without a name server: the same port, and a host that is a loopback
 * name or address while the listener binds every address or a loopback one,
 * or the very address the listener binds.
 */
static bool broker_is_listener(const gw_uri_t *uri, const gw_listener_config_t *ml)
{
    if (uri->port != ml->port)
        return false;
    if (same_address(uri->host, ml->bind))
        return true;
    bool local = host_is_loopback(uri->host) || is_any(uri->host);
    return local && (is_any(ml->bind) || host_is_loopback(ml->bind));
}

static char *read_first_line(const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    if (!f)
        return NULL;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n < 0) {
        free(line);
        return strdup("");
    }
    line[strcspn(line, "\r\n")] = '\0';
    return line;
}

/*
 * Whether an MQTT device could be given this upstream client identifier: the
 * listener makes them IDENTITY "/" DEVICE-ID, or "/" DEVICE-ID for an
 * anonymous device (listener/listener.h), and an identity has no '/'. The
 * gateway's own session must never be one of them, whatever identities and
 * listener settings a later reload brings.
 */
static bool device_client_id(const char *id)
{
    const char *slash = strchr(id, '/');
    if (!slash || !slash[1])
        return false; /* a device that sends no identifier gets one, never empty */
    size_t len = (size_t)(slash - id);
    return len == 0 || map_identity_ok(id, len);
}

/* Second pass: the rules between settings. */
static void check_rules(gw_config_t *cfg, gw_errs_t *errs)
{
    const char *f = cfg->file;
#define LINE(n) gw_config_line(cfg, n)

    if (!map_value_ok(cfg->gateway.id, strlen(cfg->gateway.id)) || strlen(cfg->gateway.id) > 64)
        gw_errs_add(errs, f, LINE("gateway.id"), "gateway.id",
                    "must be 1..64 bytes of UTF-8 without '/', '+', '#', a leading '$', control "
                    "characters or Unicode noncharacters");
    if (!is_ip(cfg->coap.bind))
        gw_errs_add(errs, f, LINE("coap.bind"), "coap.bind", "\"%s\" is not an IP address",
                    cfg->coap.bind);
    if (!*cfg->coap.dtls.cert != !*cfg->coap.dtls.key)
        gw_errs_add(errs, f, LINE(*cfg->coap.dtls.cert ? "coap.dtls.cert" : "coap.dtls.key"),
                    *cfg->coap.dtls.cert ? "coap.dtls.cert" : "coap.dtls.key",
                    "coap.dtls.cert and coap.dtls.key must be set together");
    if (*cfg->coap.dtls.ca && !*cfg->coap.dtls.cert)
        gw_errs_add(errs, f, LINE("coap.dtls.ca"), "coap.dtls.ca",
                    "verifying device certificates needs coap.dtls.cert and coap.dtls.key");
    if (cfg->coap.dtls.require_client_cert && !*cfg->coap.dtls.ca)
        gw_errs_add(errs, f, LINE("coap.dtls.require_client_cert"), "coap.dtls.require_client_cert",
                    "needs coap.dtls.ca to verify devices");
    if (*cfg->coap.dtls.crl && !*cfg->coap.dtls.ca)
        gw_errs_add(errs, f, LINE("coap.dtls.crl"), "coap.dtls.crl",
                    "needs coap.dtls.ca, the CA that signs the CRL and the devices");
    if (!cfg->coap.plain && !*cfg->coap.dtls.psk_file && !*cfg->coap.dtls.cert)
        gw_errs_add(errs, f, LINE("coap.dtls"), "coap.dtls",
                    "neither psk_file nor cert is set, so no device could connect "
                    "(plain CoAP is off)");
    if (cfg->coap.plain && cfg->coap.port == cfg->coap.dtls.port &&
        (*cfg->coap.dtls.psk_file || *cfg->coap.dtls.cert))
        gw_errs_add(errs, f, LINE("coap.port"), "coap.port", "is the same as coap.dtls.port");

    gw_uri_t uri;
    if (gw_uri_parse(cfg->mqtt.uri, &uri) < 0)
        gw_errs_add(errs, f, LINE("mqtt.uri"), "mqtt.uri",
                    "\"%s\" is not mqtt://host[:port] or mqtts://host[:port]", cfg->mqtt.uri);
    else if (!uri.tls && (*cfg->mqtt.ca || *cfg->mqtt.cert))
        gw_errs_add(errs, f, LINE("mqtt.uri"), "mqtt.uri",
                    "mqtt.ca/mqtt.cert are set but the URI is not mqtts://");
    if (cfg->mqtt.version != 3 && cfg->mqtt.version != 5)
        gw_errs_add(errs, f, LINE("mqtt.version"), "mqtt.version", "must be 5 or 3");
    if (!*cfg->mqtt.cert != !*cfg->mqtt.key)
        gw_errs_add(errs, f, LINE(*cfg->mqtt.cert ? "mqtt.cert" : "mqtt.key"),
                    *cfg->mqtt.cert ? "mqtt.cert" : "mqtt.key",
                    "mqtt.cert and mqtt.key must be set together");
    if (*cfg->mqtt.password_file) {
        cfg->mqtt.password = read_first_line(cfg->mqtt.password_file);
        if (!cfg->mqtt.password)
            gw_errs_add(errs, f, LINE("mqtt.password_file"), "mqtt.password_file",
                        "cannot read %s (%s)", cfg->mqtt.password_file, strerror(errno));
    }
    render_gateway(cfg, &cfg->mqtt.client_id, "mqtt.client_id", errs);
    if (!*cfg->mqtt.client_id || strlen(cfg->mqtt.client_id) > 256 ||
        !map_mqtt_string_ok(cfg->mqtt.client_id, strlen(cfg->mqtt.client_id)))
        gw_errs_add(errs, f, LINE("mqtt.client_id"), "mqtt.client_id",
                    "must be 1..256 bytes of UTF-8 without control characters or Unicode "
                    "noncharacters");
    else if (device_client_id(cfg->mqtt.client_id))
        gw_errs_add(errs, f, LINE("mqtt.client_id"), "mqtt.client_id",
                    "\"%s\" has the form IDENTITY/ID of MQTT devices' upstream sessions, so a "
                    "device could take over the gateway's session",
                    cfg->mqtt.client_id);
    if (!map_mqtt_string_ok(cfg->mqtt.username, strlen(cfg->mqtt.username)))
        gw_errs_add(errs, f, LINE("mqtt.username"), "mqtt.username",
                    "must be UTF-8 without control characters or Unicode noncharacters");
    render_gateway(cfg, &cfg->mqtt.status_topic, "mqtt.status_topic", errs);
    render_gateway(cfg, &cfg->mqtt.stats_topic, "mqtt.stats_topic", errs);
    if (*cfg->mqtt.status_topic && !topic_ok(cfg->mqtt.status_topic))
        gw_errs_add(errs, f, LINE("mqtt.status_topic"), "mqtt.status_topic",
                    "is not a valid topic (no '+', '#', leading '$', control characters or "
                    "Unicode noncharacters)");
    if (*cfg->mqtt.stats_topic && !topic_ok(cfg->mqtt.stats_topic))
        gw_errs_add(errs, f, LINE("mqtt.stats_topic"), "mqtt.stats_topic",
                    "is not a valid topic (no '+', '#', leading '$', control characters or "
                    "Unicode noncharacters)");
    render_template(cfg, &cfg->mqtt.presence_topic, "mqtt.presence_topic", "{identity}", errs);
    if (*cfg->mqtt.presence_topic) {
        /* Checked with the longest identity in place of {identity}. */
        const char *t = cfg->mqtt.presence_topic, *at = strstr(t, "{identity}");
        char probe[MAP_PATH_MAX + MAP_IDENTITY_MAX + 2];
        size_t n = 0;
        for (; *t && n < sizeof(probe) - MAP_IDENTITY_MAX - 1; t++) {
            if (!strncmp(t, "{identity}", 10)) {
                memset(probe + n, 'i', MAP_IDENTITY_MAX);
                n += MAP_IDENTITY_MAX;
                t += 9;
            } else {
                probe[n++] = *t;
            }
        }
        probe[n] = '\0';
        if (!at)
            gw_errs_add(errs, f, LINE("mqtt.presence_topic"), "mqtt.presence_topic",
                        "must contain {identity} (or be \"\" for no presence)");
        else if (*t || !topic_ok(probe))
            gw_errs_add(errs, f, LINE("mqtt.presence_topic"), "mqtt.presence_topic",
                        "is not a valid topic (no '+', '#', leading '$', control characters or "
                        "Unicode noncharacters; at most %d bytes with the longest identity)",
                        MAP_PATH_MAX);
    }

    const gw_listener_config_t *ml = &cfg->mqtt_listener;
    if (ml->enabled) {
        if (!is_ip(ml->bind))
            gw_errs_add(errs, f, LINE("mqtt_listener.bind"), "mqtt_listener.bind",
                        "\"%s\" is not an IP address", ml->bind);
        /* A setting left out is reported at the line that turned the listener on. */
        int on = LINE("mqtt_listener.enabled");
        const char *missing = *ml->cert ? "mqtt_listener.key" : "mqtt_listener.cert";
        if (!*ml->cert || !*ml->key)
            gw_errs_add(errs, f, LINE(missing) ? LINE(missing) : on, missing,
                        "the MQTT listener needs mqtt_listener.cert and mqtt_listener.key");
        if (ml->require_client_cert && !*ml->ca)
            gw_errs_add(errs, f,
                        LINE("mqtt_listener.require_client_cert")
                            ? LINE("mqtt_listener.require_client_cert")
                            : on,
                        "mqtt_listener.require_client_cert",
                        "needs mqtt_listener.ca to verify devices (the default is true)");
        if (gw_uri_parse(cfg->mqtt.uri, &uri) == 0 && broker_is_listener(&uri, ml))
            gw_errs_add(errs, f,
                        LINE("mqtt_listener.port")   ? LINE("mqtt_listener.port")
                        : LINE("mqtt_listener.bind") ? LINE("mqtt_listener.bind")
                                                     : on,
                        "mqtt_listener.port",
                        "the listener on [%s]:%d is the broker's address in mqtt.uri (%s): it "
                        "would relay devices to itself; give the listener another port or "
                        "mqtt.uri the broker's address",
                        ml->bind, ml->port, cfg->mqtt.uri);
        if (*ml->crl && !*ml->ca)
            gw_errs_add(errs, f, LINE("mqtt_listener.crl"), "mqtt_listener.crl",
                        "needs mqtt_listener.ca, the CA that signs the CRL and the devices");
    }
    gw_listen_t listen;
    const char *why;
    if (*cfg->metrics.listen && gw_listen_parse(cfg->metrics.listen, &listen, &why) < 0)
        gw_errs_add(errs, f, LINE("metrics.listen"), "metrics.listen", "\"%s\": %s",
                    cfg->metrics.listen, why);
    if (strlen(cfg->gateway.control_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        gw_errs_add(errs, f, LINE("gateway.control_socket"), "gateway.control_socket",
                    "longer than %zu bytes, the limit of a Unix socket's path",
                    sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
#undef LINE
}

static char *dirname_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/*
 * The line where a string opens that its line does not close, in the file at
 * path, up to line last (libconfig's strings may run over lines, so that a
 * missing quote is noticed only at the next one); 0 when there is none.
 * Comments (#, //, C-style) and escapes are skipped.
 */
static int unterminated_string_line(const char *path, int last)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int line = 1, found = 0, c;
    bool in_string = false, in_block = false, in_line_comment = false;
    while (!found && line <= last && (c = getc(f)) != EOF) {
        if (c == '\n') {
            if (in_string)
                found = line;
            in_line_comment = false;
            line++;
            continue;
        }
        if (in_line_comment)
            continue;
        if (in_block) {
            if (c == '*') {
                int n = getc(f);
                if (n == '/')
                    in_block = false;
                else if (n != EOF)
                    ungetc(n, f);
            }
            continue;
        }
        if (in_string) {
            if (c == '\\') {
                int n = getc(f);
                if (n == '\n')
                    found = line; /* a backslash does not carry a string over a line */
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '#') {
            in_line_comment = true;
        } else if (c == '/') {
            int n = getc(f);
            if (n == '/')
                in_line_comment = true;
            else if (n == '*')
                in_block = true;
            else if (n != EOF)
                ungetc(n, f);
        }
    }
    if (!found && in_string && line <= last)
        found = line; /* opened on the last line, closed nowhere */
    fclose(f);
    return found;
}

/* Reads path into lc; false with the reason (FILE:LINE for a syntax error) added to errs. */
static bool read_file(config_t *lc, const char *path, gw_errs_t *errs)
{
    if (config_read_file(lc, path))
        return true;
    if (config_error_type(lc) == CONFIG_ERR_FILE_IO)
        gw_errs_add(errs, path, 0, "config", "cannot read the file (%s)", strerror(errno));
    else {
        const char *file = config_error_file(lc) ? config_error_file(lc) : path;
        int line = config_error_line(lc);
        int open = unterminated_string_line(file, line > 0 ? line : INT_MAX);
        if (open)
            gw_errs_add(errs, file, open, "syntax", "unterminated string");
        else
            gw_errs_add(errs, file, line, "syntax", "%s", config_error_text(lc));
    }
    return false;
}

gw_config_t *gw_config_load(const char *path, gw_errs_t *errs)
{
    config_t lc;
    unsigned before = errs->count;
    gw_config_t *cfg = calloc(1, sizeof(*cfg));

    if (!cfg)
        return NULL;
    cfg->file = strdup(path);
    cfg->dir = dirname_of(path);
    cfg->lines = calloc(NSETTINGS, sizeof(int));
    if (!cfg->file || !cfg->dir || !cfg->lines) {
        gw_errs_add(errs, path, 0, "config", "out of memory");
        gw_config_free(cfg);
        return NULL;
    }

    config_init(&lc);
    if (!read_file(&lc, path, errs)) {
        config_destroy(&lc);
        gw_config_free(cfg);
        return NULL;
    }

    check_unknown(cfg, config_root_setting(&lc), errs);
    /* Groups first, so that a misplaced group does not hide its members' defaults. */
    for (size_t i = 0; i < NSETTINGS; i++) {
        config_setting_t *s = config_lookup(&lc, schema[i].name);
        cfg->lines[i] = s ? config_setting_source_line(s) : 0;
        store(cfg, &schema[i], s, errs);
    }
    if (errs->count == before) {
        cfg->maps = map_table_new(cfg->gateway.id);
        if (!cfg->maps)
            gw_errs_add(errs, path, 0, "mappings", "out of memory");
        else
            load_mappings(cfg, &lc, errs);
        check_rules(cfg, errs);
    }
    config_destroy(&lc);
    if (errs->count != before) {
        gw_config_free(cfg);
        return NULL;
    }
    return cfg;
}

char *gw_config_control_socket(const char *path, gw_errs_t *errs)
{
    const struct setting *d = find_setting("gateway.control_socket");
    config_t lc;
    char *out = NULL, *dir;

    if (!path) {
        if (!(out = strdup(d->def)))
            gw_errs_add(errs, "-", 0, d->name, "out of memory");
        return out;
    }
    if (!(dir = dirname_of(path))) {
        gw_errs_add(errs, path, 0, "config", "out of memory");
        return NULL;
    }
    config_init(&lc);
    if (!read_file(&lc, path, errs)) {
    } else {
        config_setting_t *s = config_lookup(&lc, d->name);
        if (s && config_setting_type(s) != CONFIG_TYPE_STRING)
            gw_errs_add(errs, path, config_setting_source_line(s), d->name, "must be a string");
        else if (!(out = resolve_path(dir, s ? config_setting_get_string(s) : d->def)))
            gw_errs_add(errs, path, 0, d->name, "out of memory");
    }
    config_destroy(&lc);
    free(dir);
    return out;
}

void gw_config_free(gw_config_t *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *d = &schema[i];
        if (d->type == S_STR || d->type == S_PATH)
            free(*(char **)((char *)cfg + d->off));
    }
    if (cfg->mqtt.password) {
        explicit_bzero(cfg->mqtt.password, strlen(cfg->mqtt.password));
        free(cfg->mqtt.password);
    }
    map_table_free(cfg->maps);
    free(cfg->lines);
    free(cfg->file);
    free(cfg->dir);
    free(cfg);
}

void gw_config_keep_fixed(gw_config_t *next, const gw_config_t *cur)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *d = &schema[i];
        if (d->reloadable || d->type == S_GROUP)
            continue;
        void *n = (char *)next + d->off;
        const void *c = (const char *)cur + d->off;
        bool same;
        if (d->type == S_STR || d->type == S_PATH)
            same = !strcmp(*(char **)n, *(char *const *)c);
        else if (d->type == S_BOOL)
            same = *(bool *)n == *(const bool *)c;
        else
            same = *(int *)n == *(const int *)c;
        if (same)
            continue;
        gw_warn(CONFIG, "%s changed: it takes a restart; the running value stays", d->name);
        if (d->type == S_STR || d->type == S_PATH) {
            char *copy = strdup(*(char *const *)c);
            if (copy) {
                free(*(char **)n);
                *(char **)n = copy;
            }
        } else if (d->type == S_BOOL) {
            *(bool *)n = *(const bool *)c;
        } else {
            *(int *)n = *(const int *)c;
        }
    }
    /* Read from password_file, which takes a restart too. */
    if (next->mqtt.password) {
        explicit_bzero(next->mqtt.password, strlen(next->mqtt.password));
        free(next->mqtt.password);
    }
    next->mqtt.password = cur->mqtt.password ? strdup(cur->mqtt.password) : NULL;
}

void gw_config_each_path(const gw_config_t *cfg,
                         void (*fn)(const char *setting, const char *path, int line, void *arg),
                         void *arg)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const struct setting *d = &schema[i];
        if (d->type != S_PATH)
            continue;
        if (!cfg->mqtt_listener.enabled && !strncmp(d->name, "mqtt_listener.", 14))
            continue;
        const char *v = *(char *const *)((const char *)cfg + d->off);
        if (*v)
            fn(d->name, v, cfg->lines[i], arg);
    }
}

void gw_config_print_mappings(const gw_config_t *cfg, FILE *out)
{
    static const char *dirs[] = { "?", "up", "down", "both" };
    size_t n = map_table_count(cfg->maps);
    fprintf(out, "%-16s %-5s %-3s %-6s %-36s %s\n", "NAME", "DIR", "QOS", "RETAIN", "RESOURCE",
            "TOPIC");
    for (size_t i = 0; i < n; i++) {
        const map_entry_t *e = map_table_get(cfg->maps, i);
        fprintf(out, "%-16s %-5s %-3d %-6s %-36s %s\n", map_entry_name(e),
                dirs[map_entry_direction(e)], map_entry_qos(e), map_entry_retain(e) ? "yes" : "no",
                map_entry_resource(e), map_entry_topic(e));
    }
    for (size_t i = 0; i < n; i++) {
        const map_entry_t *e = map_table_get(cfg->maps, i);
        const map_entry_t *by = map_table_shadowed_by(cfg->maps, e);
        if (by)
            fprintf(out, "warning: mapping \"%s\" is shadowed completely by \"%s\" before it\n",
                    map_entry_name(e), map_entry_name(by));
    }
    if (n == 0)
        fprintf(out, "warning: no mappings; every request will get 4.04\n");
}
