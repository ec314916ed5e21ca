/*
 * Configuration: one schema table, two validation passes (each setting, then
 * the rules between settings), errors as "FILE:LINE: setting: reason".
 */
#ifndef TANDEM_CONFIG_H
#define TANDEM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mapping.h"

enum gw_log_level { GW_LOG_ERROR, GW_LOG_WARNING, GW_LOG_INFO, GW_LOG_DEBUG };

/* Collected error lines; each is "FILE:LINE: setting: reason". */
typedef struct gw_errs {
    char *text; /* owned, NUL-terminated, lines end in '\n' */
    size_t len, cap;
    unsigned count;
} gw_errs_t;

void gw_errs_add(gw_errs_t *e, const char *file, int line, const char *setting,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void gw_errs_clear(gw_errs_t *e);

/* Every setting of SPEC §2. Strings are owned; paths are already resolved. */
typedef struct gw_config {
    char *file; /* the configuration file as given */
    char *dir;  /* its folder, for relative paths */

    char *id;
    int log_level;
    char *control_socket, *state_dir;

    char *coap_bind;
    bool coap_plain;
    int coap_port, max_sessions, max_payload, max_resources, session_idle_timeout;
    int dtls_port;
    char *psk_file, *dtls_cert, *dtls_key, *dtls_ca;
    bool require_client_cert;

    char *mqtt_uri, *client_id;
    int mqtt_version;
    char *username, *password_file;
    char *mqtt_ca, *mqtt_cert, *mqtt_key;
    bool verify_hostname;
    int keepalive;
    bool clean_start;
    int max_inflight, publish_timeout, offline_buffer;
    char *status_topic, *stats_topic;
    int stats_interval;

    bool ml_enabled;
    char *ml_bind;
    int ml_port;
    char *ml_cert, *ml_key, *ml_ca;
    bool ml_require_client_cert;
    int ml_max_connections;

    char *metrics_listen;

    /* Derived in the second pass. */
    char *password;       /* read from password_file, owned; NULL when none */
    map_table_t *maps;    /* owned */
    int *lines;           /* line of each schema setting, 0 when defaulted; owned */
} gw_config_t;

/*
 * Loads and validates path. Returns NULL with errs filled when anything is
 * wrong; nothing is half-loaded.
 */
gw_config_t *gw_config_load(const char *path, gw_errs_t *errs);
void gw_config_free(gw_config_t *cfg);

/* Line in the file of setting (e.g. "coap.dtls.cert"), 0 when defaulted. */
int gw_config_line(const gw_config_t *cfg, const char *setting);

/*
 * For a reload: settings that cannot change while running take their value
 * in cur again, each change logged.
 */
void gw_config_keep_fixed(gw_config_t *next, const gw_config_t *cur);

/* Prints the mapping table, with shadowing warnings, for `tandem check`. */
void gw_config_print_mappings(const gw_config_t *cfg, FILE *out);

/* Parsed mqtt.uri. */
typedef struct gw_uri {
    bool tls;
    char host[256];
    int port;
} gw_uri_t;
int gw_uri_parse(const char *uri, gw_uri_t *out);

/*
 * Parsed metrics.listen: "IPv4:PORT" or "[IPv6]:PORT", literal addresses only
 * (host names are not resolved, so that what is bound never depends on DNS).
 */
typedef struct gw_listen {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* network order; 4 bytes for AF_INET */
    char host[46];          /* the address as written, without brackets */
    int port;               /* 1..65535 */
} gw_listen_t;
/* 0, or -EINVAL with why (when not NULL) saying what is wrong. */
int gw_listen_parse(const char *s, gw_listen_t *out, const char **why);

/*
 * gateway.control_socket of the file at path, resolved as gw_config_load()
 * does, without validating or reading anything else (for `tandem stats`,
 * which may run as a user who cannot read the password file). Returns the
 * path, malloc'd ("" when the file turns the socket off), or NULL with errs
 * filled when the file cannot be read or the setting is not a string. With
 * path NULL: the default.
 */
char *gw_config_control_socket(const char *path, gw_errs_t *errs);

#endif
