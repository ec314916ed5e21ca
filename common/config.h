/*
 * The configuration's types (tandem.conf(5)): one struct per section, so that each
 * module takes only the section it uses. Loading and validation are in
 * gateway/config_file.c; here are the types, the error list every loader
 * fills, and the broker URI parser.
 */
#ifndef TANDEM_CONFIG_H
#define TANDEM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct map_table;

/* Collected error lines; each is "FILE:LINE: setting: reason". */
typedef struct gw_errs {
    char *text; /* owned, NUL-terminated, lines end in '\n' */
    size_t len, cap;
    unsigned count;
} gw_errs_t;

void gw_errs_add(gw_errs_t *e, const char *file, int line, const char *setting, const char *fmt,
                 ...) __attribute__((format(printf, 5, 6)));
void gw_errs_clear(gw_errs_t *e);

/* Strings are owned by the configuration; paths are already resolved. */
typedef struct gw_gateway_config {
    char *id;
    int log_level;      /* enum gw_log_level */
    int log_timestamps; /* 0 auto (on unless stderr is the journal), 1 on, 2 off */
    char *control_socket, *state_dir;
} gw_gateway_config_t;

typedef struct gw_dtls_config {
    int port;
    char *psk_file, *cert, *key, *ca;
    bool require_client_cert;
    char *crl; /* PEM CRLs of the device CA; "" for none */
} gw_dtls_config_t;

typedef struct gw_coap_config {
    char *bind;
    bool plain;
    int port, max_sessions, max_payload, max_resources, session_idle_timeout;
    gw_dtls_config_t dtls;
} gw_coap_config_t;

typedef struct gw_mqtt_config {
    char *uri, *client_id;
    int version;
    char *username, *password_file;
    char *password; /* read from password_file; NULL when none */
    char *ca, *cert, *key;
    bool verify_hostname;
    int keepalive;
    bool clean_start;
    int max_inflight, publish_timeout, offline_buffer;
    char *status_topic, *stats_topic;
    char *presence_topic; /* {gateway} rendered, {identity} left to fill in; "" for none */
    int stats_interval;
} gw_mqtt_config_t;

typedef struct gw_listener_config {
    bool enabled;
    char *bind;
    int port;
    char *cert, *key, *ca;
    bool require_client_cert;
    char *crl; /* as in coap.dtls */
    int max_connections;
    int max_connections_per_identity;
} gw_listener_config_t;

typedef struct gw_metrics_config {
    char *listen;
} gw_metrics_config_t;

typedef struct gw_config {
    char *file; /* the configuration file as given */
    char *dir;  /* its folder, for relative paths */

    gw_gateway_config_t gateway;
    gw_coap_config_t coap;
    gw_mqtt_config_t mqtt;
    gw_listener_config_t mqtt_listener;
    gw_metrics_config_t metrics;

    struct map_table *maps; /* owned: the mappings, in order */
    int *lines;             /* line of each schema setting, 0 when defaulted; owned */
} gw_config_t;

/* Parsed mqtt.uri. */
typedef struct gw_uri {
    bool tls;
    char host[256];
    int port;
} gw_uri_t;

/* 0, or -EINVAL when uri is not mqtt[s]://host[:port][/]. */
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

#endif
