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
#include "down.h"
#include "coap_util.h"
#include "gate.h"
#include "inbox.h"
#include "mapping.h"
#include "mqtt.h"
#include "pending.h"
#include "resources.h"
#include "session.h"

/* A mapping's counters in the up direction (the down direction has its own). */
struct map_counters {
    uint64_t up, refused;
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

    resources_t *res; /* owned: the catch-all, /.well-known/core, the concrete resources */
    down_t *down;     /* owned: the down direction */
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

/* The handler of POST, PUT and DELETE (and the methods no mapping allows); data is the bridge. */
void bridge_on_request(void *data, enum res_kind kind, coap_resource_t *resource,
                       coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp);

#endif
