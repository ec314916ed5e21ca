/*
 * The upstream MQTT connection (Paho MQTTAsync). Paho's callbacks only push
 * events into the inbox; everything else runs on the loop thread.
 */
#ifndef TANDEM_MQTT_H
#define TANDEM_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "inbox.h"
#include "persist.h"

typedef struct bridge_mqtt bridge_mqtt_t;

/* What to publish; strings are borrowed for the call. */
typedef struct mqtt_msg {
    const char *topic;
    const void *payload;
    size_t len;
    int qos;
    bool retain;
    const char *content_type; /* MQTT 5 Content Type, or NULL */
    bool utf8;                /* MQTT 5 Payload Format Indicator */
    const char *device;       /* MQTT 5 user property "device", or NULL */
} mqtt_msg_t;

/*
 * cfg, inbox and store are borrowed and must outlive the client. What the
 * client has not delivered is kept in store, and restored from it here.
 */
bridge_mqtt_t *mqtt_new(const gw_config_t *cfg, bridge_inbox_t *inbox, persist_t *store);
void mqtt_free(bridge_mqtt_t *m);

/* Starts a connection attempt; the outcome arrives as an inbox event. */
int mqtt_connect(bridge_mqtt_t *m);

/*
 * Hands a message to the client. For QoS 1/2 the acknowledgement arrives as
 * EV_PUB_OK/EV_PUB_FAILED with id. While disconnected with an offline
 * buffer, 0 means the message is stored. Returns 0, -ENOTCONN, -ENOBUFS
 * (offline buffer full), -EAGAIN (too many in flight), -EMSGSIZE (larger
 * than the broker's Maximum Packet Size), -EINVAL (a topic or property the
 * broker would refuse: never handed over) or -ENOMEM.
 */
int mqtt_publish(bridge_mqtt_t *m, const mqtt_msg_t *msg, uint64_t id);

/* The largest payload the broker takes with msg's topic and properties; SIZE_MAX when it set no limit. */
size_t mqtt_payload_room(bridge_mqtt_t *m, const mqtt_msg_t *msg);

/*
 * Subscribes to n filters with their QoS; the broker's acknowledgement
 * arrives as EV_SUB_OK with id (and a refused filter as EV_SUB_FAILED),
 * messages as EV_MESSAGE.
 */
int mqtt_subscribe(bridge_mqtt_t *m, char *const *filters, const int *qos, int n, uint64_t id);

/* Drops the subscriptions to n filters. */
int mqtt_unsubscribe(bridge_mqtt_t *m, char *const *filters, int n);

/* The configuration from now on (a reload); borrowed like the first. */
void mqtt_set_config(bridge_mqtt_t *m, const gw_config_t *cfg);

/* Messages dropped for want of inbox room; *too_large: over coap.max_payload. */
uint64_t mqtt_dropped(bridge_mqtt_t *m, uint64_t *too_large);

/*
 * From the next connection on, one publish at a time is in flight (on), or
 * up to mqtt.max_inflight (off): to find which one a broker drops the
 * connection for.
 */
void mqtt_set_one_at_a_time(bridge_mqtt_t *m, bool on);

/* Hands over a message read from the store as a new one (no acknowledgement reported). */
int mqtt_republish(bridge_mqtt_t *m, const record_pub_t *pub);

/*
 * While disconnected: the client is made again from its store (what it
 * queued is restored). resend_sent: the messages it sent and had no
 * acknowledgement for are handed to the new client as new ones, so that they
 * go at its pace rather than all at once when it connects. 0, or -errno.
 */
int mqtt_restart(bridge_mqtt_t *m, bool resend_sent);

/*
 * Once connected: what the client dropped at the connection because the
 * broker had no session for us (sent, not acknowledged) is sent again as new
 * messages. Returns how many.
 */
int mqtt_resend_lost(bridge_mqtt_t *m);

/* Disconnects cleanly; EV_CONN_LOST follows. */
int mqtt_disconnect(bridge_mqtt_t *m);

/* Publishes "offline" (retained) and disconnects, waiting up to timeout_ms. */
void mqtt_shutdown(bridge_mqtt_t *m, int timeout_ms);

/*
 * After EV_DELIVERED: when more publishes wait in the client than the broker
 * lets be in flight, makes the client send the next ones now rather than
 * within a second. waiting: requests waiting for an acknowledgement.
 */
void mqtt_kick(bridge_mqtt_t *m, size_t waiting);

/* Sends the kick if it is due (the loop, each turn). */
void mqtt_kick_due(bridge_mqtt_t *m);

/* Milliseconds until the kick is due, 0 if it is, -1 when none waits. */
int mqtt_kick_wait_ms(const bridge_mqtt_t *m);

/* Turns Paho's protocol trace off once the store is empty (the loop, after each batch). */
void mqtt_trace_settle(bridge_mqtt_t *m);

#endif
