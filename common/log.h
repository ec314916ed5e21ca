/*
 * Logging: one line per event on stderr, "level subsystem: message".
 * Safe to call from any thread (one write per line).
 */
#ifndef TANDEM_LOG_H
#define TANDEM_LOG_H

#include <stdint.h>

enum gw_log_level { GW_LOG_ERROR, GW_LOG_WARNING, GW_LOG_INFO, GW_LOG_DEBUG };

/*
 * The closed set of subsystems a line can name (as Knot Resolver's log
 * groups): callers write the short name, gw_err(MQTT, "...").
 */
typedef enum gw_log_group {
    GW_GRP_GATEWAY, /* the process: start, stop, reload, the loop */
    GW_GRP_CONFIG,  /* the configuration file */
    GW_GRP_COAP,    /* CoAP messages and sessions (and libcoap's own lines) */
    GW_GRP_DTLS,    /* DTLS credentials, handshakes, the cookie gate */
    GW_GRP_MQTT,    /* the upstream broker connection */
    GW_GRP_BRIDGE,  /* CoAP to MQTT: requests, answers */
    GW_GRP_DOWN,    /* MQTT to CoAP: values, GET, Observe */
    GW_GRP_STORE,   /* the offline store on disk */
    GW_GRP_CONTROL, /* the control socket */
    GW_GRP_METRICS, /* the /metrics endpoint */
    GW_GRP_TLS,     /* TLS and certificates */
    GW_GRP_COUNT
} gw_log_group_t;

/* The group's name as it appears in log lines ("mqtt"). */
const char *gw_log_group_name(gw_log_group_t group);

void gw_log_set_level(int level); /* enum gw_log_level */
/*
 * Whether each line starts with the time (ISO 8601, UTC, milliseconds):
 * 0 when stderr is not the journal (JOURNAL_STREAM), 1 always, 2 never.
 */
void gw_log_set_timestamps(int mode);
int gw_log_level(void);
void gw_log(int level, gw_log_group_t group, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define gw_err(grp, ...) gw_log(GW_LOG_ERROR, GW_GRP_##grp, __VA_ARGS__)
#define gw_warn(grp, ...) gw_log(GW_LOG_WARNING, GW_GRP_##grp, __VA_ARGS__)
#define gw_info(grp, ...) gw_log(GW_LOG_INFO, GW_GRP_##grp, __VA_ARGS__)
#define gw_debug(grp, ...) gw_log(GW_LOG_DEBUG, GW_GRP_##grp, __VA_ARGS__)

/*
 * Lines that a peer (a device, a flood, the broker) can cause as often as it
 * likes. Each call site is one kind: it writes at most GW_LOG_KIND_PER_S lines
 * a second, and all kinds together at most GW_LOG_LIMITED_PER_S; what is held
 * back is counted and reported by the kind's next line that gets through
 * ("... (K similar lines suppressed)"). So the log grows by a few kilobytes
 * a second at most, whatever peers send.
 */
#define GW_LOG_KIND_PER_S 5
#define GW_LOG_LIMITED_PER_S 20

typedef struct gw_log_kind {
    unsigned per_s;      /* lines a second of this kind; 0 for GW_LOG_KIND_PER_S */
    uint64_t second;     /* the second the count is for */
    unsigned lines;      /* lines written in that second */
    uint64_t suppressed; /* held back since the last line written */
} gw_log_kind_t;

void gw_log_rl(gw_log_kind_t *kind, int level, gw_log_group_t group, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define gw_log_limited(level, grp, ...)                                                            \
    do {                                                                                           \
        static gw_log_kind_t gw_kind_;                                                             \
        gw_log_rl(&gw_kind_, level, GW_GRP_##grp, __VA_ARGS__);                                    \
    } while (0)

/*
 * Lines one peer can cause (a failed handshake): at most GW_LOG_PEER_PER_MIN
 * a minute for each peer address (the port aside), within the limits above;
 * what is held back is reported by that peer's next line. The table of peers
 * is bounded: peers that hash alike share one allowance.
 */
#define GW_LOG_PEER_PER_MIN 6

struct sockaddr;
void gw_log_peer(const struct sockaddr *peer, int level, gw_log_group_t group, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Lines held back by gw_log_limited() since the start. */
uint64_t gw_log_suppressed(void);

#endif
