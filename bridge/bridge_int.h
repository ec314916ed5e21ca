/*
 * What the bridge's source files share: the bridge's state and the helpers
 * both directions use. Not for use outside bridge/.
 */
#ifndef TANDEM_BRIDGE_INT_H
#define TANDEM_BRIDGE_INT_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stdint.h>

#include "block1.h"
#include "bridge.h"
#include "coap_util.h"
#include "gate.h"
#include "inbox.h"
#include "mapping.h"
#include "mqtt.h"
#include "pending.h"
#include "session.h"
#include "store.h"

struct map_counters {
    uint64_t up, down, refused;
    uint64_t ready_ms; /* down: when its values can be trusted (subscribed); 0 = not yet */
};

struct bridge {
    const gw_config_t *cfg; /* borrowed */
    coap_context_t *ctx;    /* borrowed */
    bridge_inbox_t *inbox;  /* owned */
    bridge_mqtt_t *mqtt;    /* owned */
    persist_t *persist;     /* owned: the MQTT client's store, in state_dir */
    sessions_t *sessions;   /* owned: the bound, duplicates, registrations */
    const dtls_gate_stats_t *gate; /* borrowed from the loop's cookie gate, or NULL */

    bool connected, connecting, draining, ever_connected;
    uint64_t reconnect_at_ms, connected_at_ms;
    struct {
        bool acked;          /* the broker acknowledged something on this connection */
        unsigned strikes;    /* connections in a row the broker dropped soon */
        bool one_at_a_time;  /* finding the message it drops them for */
        char suspect[80];    /* the store record in flight at the last such drop */
        unsigned suspect_strikes;
    } guard;                 /* see bridge.c, guard_dropped() */
    unsigned backoff_s;

    pending_t *pend; /* owned: publishes waiting for the broker, cfg->mqtt.max_inflight */
    uint64_t last_tick_ms, last_second_ms, started_ms;
    b1_pool_t *b1;   /* owned: every session's Block1 transfer (its sess_t's up) draws on it */

    struct map_counters *maps; /* owned, one per mapping */

    /* The down direction (down.c). */
    store_t *store;                 /* owned: current values */
    coap_resource_t *unknown;       /* libcoap's; the catch-all resource */
    coap_resource_t *wellknown;     /* libcoap's; our /.well-known/core */
    struct {
        uint64_t received, evicted, dropped_full, dropped_bad_topic, notifications;
        uint64_t subscriptions_failed, confirmations;
        uint64_t sub_gen;     /* the latest set of subscriptions asked for */
        uint64_t ready_at_ms; /* when the values of the last acknowledged set are served; 0 = said */
    } down;
    struct {
        uint64_t requests, bytes_in;
        coap_codes_t responses;
        uint64_t reconnects, published, acked, timeouts, duplicates, offline_buffered;
        uint64_t broker_refused;     /* PUBACK/PUBREC with a reason >= 0x80: 5.02 */
        uint64_t broker_disconnects; /* DISCONNECT packets from the broker */
        uint64_t unpublishable;      /* messages the broker would refuse, never sent: 5.00 */
        uint64_t broker_dropped_for; /* messages set aside: the broker dropped us for them */
        uint64_t reloads, reload_failures;
        uint64_t lat_ms[1024]; /* ack latency histogram, 1 ms buckets, last = overflow */
    } st;
};

/* Seconds a device should wait before retrying while the broker is away. */
int bridge_retry_after_s(const bridge_t *b);

/* The handler of POST, PUT and DELETE (and the methods no mapping allows). */
void bridge_on_request(coap_resource_t *resource, coap_session_t *session,
                       const coap_pdu_t *req, const coap_string_t *query, coap_pdu_t *resp);

/* Every method's handler on r (the catch-all or a concrete resource), and b as its data. */
void bridge_set_handlers(bridge_t *b, coap_resource_t *r);

/* down.c: values, GET, Observe, discovery. */
int down_init(bridge_t *b);
void down_free(bridge_t *b);
void down_on_connected(bridge_t *b);
/* The broker acknowledged the subscriptions asked for as gen. */
void down_subscribed(bridge_t *b, uint64_t gen);
/* Says once when acknowledged subscriptions' values are served; ms until then, or -1. */
void down_check_ready(bridge_t *b);
int down_timeout_ms(const bridge_t *b);
/* sessions_t's on_ready: a device's handshake succeeded; its own resources are made. */
void down_on_ready(void *arg, coap_session_t *session, const char *identity);
/* Once a second: observers whose device went silent are confirmed (RFC 7641 §4.5). */
void down_tick(bridge_t *b);
/* Before b->cfg becomes next: held values follow the new mappings. */
void down_reload(bridge_t *b, const gw_config_t *next);
void down_message(bridge_t *b, inbox_msg_t *msg);
/* The handler of GET, on the catch-all resource as on concrete ones. */
void down_on_get(coap_resource_t *resource, coap_session_t *session, const coap_pdu_t *req,
                 const coap_string_t *query, coap_pdu_t *resp);
void down_stats_json(const bridge_t *b, FILE *out);

#endif
