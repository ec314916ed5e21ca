/*
 * The client's state, shared by client.c (the connection, what the broker
 * sends) and client_out.c (publishes, subscriptions, packet identifiers).
 * Nothing outside mqtt/client*.c includes this.
 */
#ifndef TANDEM_MQTT_CLIENT_INT_H
#define TANDEM_MQTT_CLIENT_INT_H

#include <inttypes.h>

#include "client.h"
#include "link.h"
#include "packet.h"

enum client_state {
    C_IDLE,    /* no connection (a retry may be due) */
    C_LINKING, /* the link is looking up, connecting, or in the TLS handshake */
    C_CONNACK, /* CONNECT sent */
    C_UP,
};

/* Bytes written and not yet taken by the connection past which QoS 0 publishes are refused. */
#define OUT_BACKLOG_MAX (4u << 20)

/* Where a QoS 1/2 publish is. */
enum pub_state {
    P_WAITING,  /* in the queue, not sent on this connection */
    P_SENT,     /* PUBLISH sent, PUBACK or PUBREC awaited */
    P_RELEASED, /* PUBREL sent, PUBCOMP awaited */
};

/* One publish kept until it is acknowledged: its encoded PUBLISH. */
typedef struct out_pub {
    struct out_pub *next, *prev; /* the queue, or the in-flight list, in order */
    uint64_t id;                 /* the owner's */
    uint16_t pid;                /* 0 until sent */
    uint8_t qos;
    uint8_t state;     /* enum pub_state */
    bool internal;     /* the client's own "offline": not reported */
    size_t pid_offset; /* where the packet identifier is in pkt */
    size_t len;
    uint8_t pkt[];
} out_pub_t;

typedef struct out_list {
    out_pub_t *head, *tail;
    size_t n;
} out_list_t;

/* A SUBSCRIBE or UNSUBSCRIBE awaiting its acknowledgement. */
typedef struct out_sub {
    struct out_sub *next;
    uint64_t id;
    uint16_t pid;
    bool unsubscribe;
} out_sub_t;

struct mqtt_client {
    ev_loop_t *loop; /* borrowed */
    mqtt_client_handlers_t h;
    void *data;
    mqtt_link_t *link; /* owned */

    /* Options (strings owned). */
    int version;
    char *client_id, *username, *password, *status_topic;
    int keepalive_s;
    bool clean_start;
    uint32_t session_expiry;
    int max_inflight;
    size_t max_packet, max_queued;
    int connect_timeout_ms, backoff_min_ms, backoff_max_ms, stable_ms;

    /* The connection. */
    enum client_state state;
    bool stopping, offline_acked;
    unsigned generation; /* changes whenever a connection ends */
    int last_err;
    int backoff_ms;
    uint64_t retry_timer, tick_timer, flush_timer;
    uint64_t retry_at_ms, connected_at_ms, last_rx_ms, last_tx_ms, ping_sent_ms;
    bool ping_out;
    int keepalive_ms;

    /* What the broker's CONNACK allows. */
    uint32_t broker_receive_max;
    size_t broker_max_packet; /* SIZE_MAX: no limit */
    int broker_max_qos;
    bool broker_retain;

    /* Buffers: what this turn writes, what was read and not yet handled (owned). */
    uint8_t *out, *in;
    size_t out_len, out_cap, in_len, in_cap;
    mqtt_packet_t *pkt; /* owned: the packet being decoded or encoded */

    /* Publishes and subscriptions (client_out.c). */
    out_list_t queue, inflight;
    out_sub_t *subs;
    uint8_t pid_used[8192]; /* our packet identifiers in use */
    uint8_t pid_kept[8192]; /* identifiers an earlier client sent with: not for new publishes */
    bool session_resumed;   /* this connection's CONNACK resumed our session */
    uint8_t qos2_in[8192];  /* the broker's QoS 2 identifiers awaiting PUBREL */
    uint16_t next_pid;

    mqtt_client_stats_t st;
};

static inline bool bit_test(const uint8_t *b, uint16_t i)
{
    return b[i >> 3] & (1u << (i & 7));
}
static inline void bit_set(uint8_t *b, uint16_t i)
{
    b[i >> 3] |= (uint8_t)(1u << (i & 7));
}
static inline void bit_clear(uint8_t *b, uint16_t i)
{
    b[i >> 3] &= (uint8_t) ~(1u << (i & 7));
}

/* client.c */
int client_emit(mqtt_client_t *c, const mqtt_packet_t *p);
int client_emit_raw(mqtt_client_t *c, const void *buf, size_t len);
void client_lose(mqtt_client_t *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* client_out.c */
void out_reset_limits(mqtt_client_t *c);
void out_free_all(mqtt_client_t *c);
void out_connection_lost(mqtt_client_t *c);
void out_connected(mqtt_client_t *c, bool session_present);
int out_publish(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id, bool internal,
                uint16_t again);
int out_ack(mqtt_client_t *c, enum mqtt_type type, const mqtt_ack_t *ack);
void out_suback(mqtt_client_t *c, enum mqtt_type type, const mqtt_suback_t *sa);

#endif
