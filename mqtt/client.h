/*
 * Tandem's MQTT client, driven by the loop: no threads, no store of its own.
 * It connects through the broker link (link.h), sends CONNECT with the status
 * Will, keeps the connection alive, reconnects with a backoff, publishes and
 * subscribes at QoS 0, 1 and 2 over MQTT 5 or 3.1.1, and reports what
 * happens to its owner through callbacks, each from the loop.
 *
 * Publishes keep their order. At most min(the broker's Receive Maximum,
 * max_inflight) QoS 1/2 publishes are unacknowledged at a time; the others
 * wait in the client. MQTT 3.1.1 has no Receive Maximum, and a broker over
 * its own window may drop a QoS 2 publish while answering PUBREC, which a
 * 3.1.1 client cannot tell from an acceptance (Mosquitto's
 * max_inflight_messages, 20 by default): with 3.1.1 the window is at most
 * MQTT_V311_INFLIGHT_MAX. Publishes that are ready in one loop turn go out in one
 * write (one TLS record when they fit in one) at the end of that turn.
 *
 * With clean_start false, what is unacknowledged when the connection drops
 * is kept: if the broker still has the session, publishes are sent again
 * with DUP and PUBRELs again; if not, they are sent again as new publishes.
 * Either way nothing handed to mqtt_client_publish is lost while the client
 * lives. Across a restart, the owner keeps what the sent handler told it and
 * hands such publishes over with mqtt_client_publish_again, their
 * identifiers kept from new publishes by mqtt_client_reserve_id. An incoming QoS 2 message is delivered once (its packet identifier
 * is remembered until the broker's PUBREL).
 *
 * Everything the broker sends is bounded (max_packet, the codec's property
 * and filter counts) and checked; a malformed packet closes the connection
 * with a log line.
 */
#ifndef TANDEM_MQTT_CLIENT_H
#define TANDEM_MQTT_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ev.h"

typedef struct mqtt_client mqtt_client_t;

/* QoS 1/2 publishes unacknowledged at a time at most over MQTT 3.1.1 (see above). */
#define MQTT_V311_INFLIGHT_MAX 20

/* A message to publish; strings borrowed for the call. */
typedef struct mqtt_message {
    const char *topic;
    const void *payload;
    size_t len;
    int qos; /* 0, 1 or 2 */
    bool retain;
    const char *content_type; /* MQTT 5 Content Type, or NULL */
    bool utf8;                /* MQTT 5 Payload Format Indicator */
    const char *device;       /* MQTT 5 User Property "device", or NULL */
} mqtt_message_t;

/* A message from the broker; everything borrowed for the callback. */
typedef struct mqtt_incoming {
    const char *topic; /* NUL-terminated */
    size_t topic_len;
    const uint8_t *payload;
    size_t len;
    int qos;
    bool retain;
    const char *content_type; /* NUL-terminated, or NULL */
    bool utf8;                /* Payload Format Indicator 1 */
    bool has_expiry;
    uint32_t expiry; /* Message Expiry Interval, s */
} mqtt_incoming_t;

/*
 * What the owner hears; any may be NULL. data is the owner's. A callback may
 * publish, subscribe or unsubscribe, but not free the client nor shut it down.
 */
typedef struct mqtt_client_handlers {
    /* CONNACK accepted; session_present: the broker kept our session. */
    void (*connected)(void *data, bool session_present);
    /*
     * An attempt failed or the connection was lost (err a negative errno code,
     * why in words, already logged). The client tries again after its backoff
     * unless it is stopping.
     */
    void (*lost)(void *data, int err, const char *why);
    /*
     * A QoS 1/2 publish is done: reason below 0x80 (PUBACK or PUBCOMP, or 0 for
     * MQTT 3.1.1) accepted, 0x80 and above refused by the broker (the reason
     * code; mqtt_reason_text names it). Not called for QoS 0.
     */
    void (*acked)(void *data, uint64_t id, int reason);
    /* The SUBACK for mqtt_client_subscribe's id: one code a filter (0x80 and above: refused). */
    void (*subscribed)(void *data, uint64_t id, size_t n, const uint8_t *codes);
    void (*message)(void *data, const mqtt_incoming_t *m);
    /*
     * QoS 1/2 publish id was sent with the packet identifier pid (as a new
     * message: the first time, or again after the broker lost our session).
     * An owner that keeps publishes across restarts records it, to hand the
     * publish over again with mqtt_client_publish_again.
     */
    void (*sent)(void *data, uint64_t id, uint16_t pid);
} mqtt_client_handlers_t;

typedef struct mqtt_client_options {
    const char *uri, *client_id;
    int version;                     /* 5 or 4 (3.1.1) */
    const char *username, *password; /* NULL: none */
    const char *ca, *cert, *key;     /* mqtts:// */
    bool verify_hostname;
    int keepalive_s; /* 0: none */
    bool clean_start;
    uint32_t session_expiry_s; /* MQTT 5 with clean_start false; 0: the session never expires */
    int max_inflight;          /* QoS 1/2 publishes unacknowledged at a time (and the broker's
                         limit; with 3.1.1 at most MQTT_V311_INFLIGHT_MAX) */
    const char *status_topic;  /* Will "offline" (retained, QoS 1) here; NULL or "": none */
    size_t max_packet;         /* the largest packet taken from the broker; 0: 1 MiB */
    size_t max_queued;         /* publishes waiting in the client at most; 0: 65536 */
    int connect_timeout_ms;    /* link and CONNACK; 0: 10 s */
    int backoff_min_ms, backoff_max_ms; /* reconnect backoff; 0: 1 s and 30 s */
    int stable_ms; /* a connection that lasted this long resets the backoff; 0: 10 s */
} mqtt_client_options_t;

/* Options from the configuration's mqtt section; strings borrowed from cfg. */
void mqtt_client_options_from_config(mqtt_client_options_t *o, const gw_config_t *cfg);

/*
 * A client on loop (borrowed, outlives it); o's strings are copied, h and
 * data kept. NULL with the reason in err (an invalid URI, credentials that do
 * not load, out of memory). It does not connect until mqtt_client_start.
 */
mqtt_client_t *mqtt_client_new(ev_loop_t *loop, const mqtt_client_options_t *o,
                               const mqtt_client_handlers_t *h, void *data, char *err,
                               size_t errlen);
/* Closes the connection at once (no DISCONNECT); what waits is dropped. */
void mqtt_client_free(mqtt_client_t *c);

/* Connects now, and again after each loss with the backoff. 0, or -errno. */
int mqtt_client_start(mqtt_client_t *c);

bool mqtt_client_connected(const mqtt_client_t *c);
/* Milliseconds until the next connection attempt; 0 while connecting or connected. */
uint64_t mqtt_client_retry_in_ms(const mqtt_client_t *c);

/*
 * Publishes msg. QoS 1/2: acked(id) follows. Returns 0; -ENOTCONN when not
 * connected; -EMSGSIZE when the packet is larger than the broker's Maximum
 * Packet Size (nothing sent); -EINVAL for a topic, QoS or property that
 * cannot be sent; -EAGAIN when max_queued publishes wait already (or, for
 * QoS 0, when the connection has not taken what was written); -ENOMEM.
 */
int mqtt_client_publish(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id);

/*
 * A publish an earlier client (before a restart) sent with packet identifier
 * pid and saw no acknowledgement for. When this connection resumed the
 * broker's session, it goes at once with DUP and pid (the broker may hold pid
 * for it still: a QoS 2 publish it took and has not seen released), in
 * flight whatever the window; otherwise, or when pid is taken, it is a new
 * publish as mqtt_client_publish makes. Returns as mqtt_client_publish.
 */
int mqtt_client_publish_again(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id,
                              uint16_t pid);

/*
 * Keeps pid from new publishes (before mqtt_client_start: the identifiers of
 * publishes an earlier client sent, which a resumed session may still hold)
 * until mqtt_client_publish_again takes it or a CONNACK says the broker has
 * no session for us.
 */
void mqtt_client_reserve_id(mqtt_client_t *c, uint16_t pid);

/*
 * From now on at most n QoS 1/2 publishes unacknowledged at a time (still
 * within the broker's Receive Maximum): 1 to find which publish a broker
 * drops the connection for, max_inflight again after.
 */
void mqtt_client_set_max_inflight(mqtt_client_t *c, int n);

/* The largest payload msg can carry under the broker's Maximum Packet Size; SIZE_MAX without one. */
size_t mqtt_client_payload_room(const mqtt_client_t *c, const mqtt_message_t *msg);

/* What the client counted since it was made. */
typedef struct mqtt_client_stats {
    uint64_t attempts;         /* connection attempts */
    uint64_t connects;         /* CONNACKs accepted */
    uint64_t losses;           /* connections lost after the CONNACK */
    uint64_t failed_attempts;  /* attempts that never got a CONNACK */
    uint64_t refused_connects; /* CONNACKs with a refusal */
    uint64_t published;        /* publishes taken */
    uint64_t acked, refused;   /* QoS 1/2 publishes acknowledged, refused by the broker */
    uint64_t messages;         /* messages from the broker delivered */
    uint64_t malformed;        /* connections closed for what the broker sent */
    uint64_t writes;           /* writes to the connection (each turn's packets in one) */
} mqtt_client_stats_t;

const mqtt_client_stats_t *mqtt_client_stats(const mqtt_client_t *c);

/* Publishes waiting for an acknowledgement or for their turn. */
size_t mqtt_client_unacked(const mqtt_client_t *c);

/*
 * Subscribes to n filters (at most 32) with their QoS; subscribed(id)
 * follows. 0, -ENOTCONN, -EINVAL, -ENOMEM.
 */
int mqtt_client_subscribe(mqtt_client_t *c, const char *const *filters, const int *qos, size_t n,
                          uint64_t id);
/* Unsubscribes from n filters. 0, -ENOTCONN, -EINVAL, -ENOMEM. */
int mqtt_client_unsubscribe(mqtt_client_t *c, const char *const *filters, size_t n);

/*
 * Stops: publishes "offline" (retained) on the status topic when connected,
 * waits for its acknowledgement, sends DISCONNECT, and closes, turning the
 * loop itself for at most timeout_ms. Not from inside a loop callback.
 * No reconnection follows.
 */
void mqtt_client_shutdown(mqtt_client_t *c, int timeout_ms);

/* The words for a CONNACK, PUBACK, SUBACK or DISCONNECT reason code of version. */
const char *mqtt_reason_text(int version, int code);

/*
 * Takes bytes as if the broker had sent them on a connection just made
 * (the CONNECT sent, what the client writes thrown away). For the fuzz target
 * and tests. Returns 0, or the negative errno code the connection would
 * close with.
 */
int mqtt_client_feed(mqtt_client_t *c, const uint8_t *buf, size_t len);

#endif
