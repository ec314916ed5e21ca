/*
 * What the bridge's own files share: bridge.c (its life and the glue),
 * up.c (the up direction's handler) and upstream.c (the broker connection).
 * The parts they hold are modules of their own (pending.h, block1.h,
 * down.h, resources.h, session.h; the MQTT client and its offline store are
 * mqtt/client.h and mqtt/store.h); each file
 * keeps its own state below and the others ask it through its functions.
 * Not for use outside bridge/.
 */
#ifndef TANDEM_BRIDGE_INT_H
#define TANDEM_BRIDGE_INT_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "block1.h"
#include "bridge.h"
#include "coap_util.h"
#include "down.h"
#include "gate.h"
#include "client.h"
#include "ev.h"
#include "pending.h"
#include "presence.h"
#include "resources.h"
#include "session.h"
#include "stats.h"
/* mqtt/store.h, the offline buffer (bridge/store.h holds the down direction's values). */
#include "../mqtt/store.h"

/* The up direction's counters (up.c). */
struct up_stats {
    uint64_t requests;         /* POST, PUT, DELETE and the methods no mapping allows */
    uint64_t bytes_in;         /* their payload bytes */
    uint64_t duplicates;       /* retransmissions answered from duplicate detection */
    coap_codes_t responses;    /* answers given by the handler */
    uint64_t published;        /* publishes the MQTT client took while connected */
    uint64_t offline_buffered; /* publishes put into the offline buffer while disconnected */
    uint64_t buffer_full;      /* publishes refused: the offline buffer was full (5.03) */
    uint64_t unpublishable;    /* messages the broker would refuse, never sent: 5.00 */
};

/* One mapping's counters in the up direction (up.c; the down direction has its own). */
struct up_map_stats {
    uint64_t up;        /* requests answered with success */
    uint64_t refused;   /* requests refused, by the mapping's rules or the broker */
    uint64_t mqtt_down; /* messages delivered to MQTT devices (bridge_count_mqtt) */
};

/* up.c's state. */
struct up {
    struct up_stats st;
    struct up_map_stats *maps; /* owned, one per mapping (and one more) */
};

/* The broker connection's counters (upstream.c). */
struct upstream_stats {
    uint64_t reconnects;
    uint64_t acked;              /* publishes the broker acknowledged */
    uint64_t timeouts;           /* publishes not acknowledged within publish_timeout: 5.04 */
    uint64_t broker_refused;     /* PUBACK/PUBREC with a reason >= 0x80: 5.02 */
    uint64_t broker_disconnects; /* DISCONNECT packets from the broker */
    uint64_t broker_dropped_for; /* messages set aside: the broker dropped us for them */
    uint64_t kept_offline;       /* publishes waiting at a connection loss, answered once stored */
    uint64_t drained;            /* offline buffer records handed to the client once connected */
    uint64_t store_failures;     /* offline buffer writes that failed (5.03) */
    mqtt_client_stats_t client_base; /* the counters of the clients made before this one */
    coap_codes_t responses;          /* answers to publishes that waited for the broker */
    stats_hist_t ack_latency;        /* publish to broker acknowledgement */
    stats_hist_t answer_latency; /* request to its answer, for answers that waited for the broker */
};

/* upstream.c's state. */
struct upstream {
    bool connected, ever_connected;
    uint64_t connected_at_ms;
    /*
     * Records of the offline buffer with a seq below this one are in the
     * client (handed to it, not yet acknowledged); the others wait their turn.
     */
    uint64_t hand_next;
    uint64_t start_at_ms; /* a client made again starts then; 0: started */
    bool remake;          /* the client is to be made again (bridge_tick) */
    /*
     * After a good connection is lost, the bridge paces the attempts itself
     * (from 1 s, doubling), ahead of the client's longer backoff.
     */
    bool own_retry;
    unsigned retry_ms;
    struct {
        bool acked;         /* the broker acknowledged something on this connection */
        unsigned strikes;   /* connections in a row the broker dropped soon */
        bool one_at_a_time; /* finding the message it drops them for */
        uint64_t suspect;   /* the buffer record in flight at the last such drop */
        unsigned suspect_strikes;
    } guard; /* see upstream.c, guard_dropped() */
    uint64_t last_tick_ms, last_second_ms;
    struct upstream_stats st;
};

struct bridge {
    const gw_config_t *cfg; /* borrowed */
    coap_context_t *ctx;    /* borrowed */
    ev_loop_t *loop;        /* borrowed */
    mqtt_client_t *mqtt;    /* owned: the broker connection */
    mqtt_store_t *store;    /* owned: the offline buffer, in state_dir/offline */
    sessions_t *sessions;   /* owned: the bound, duplicates, registrations */
    pending_t *pend;        /* owned: publishes waiting for the broker, cfg->mqtt.max_inflight */
    b1_pool_t *b1;        /* owned: every session's Block1 transfer (its sess_t's up) draws on it */
    resources_t *res;     /* owned: the catch-all, /.well-known/core, the concrete resources */
    down_t *down;         /* owned: the down direction */
    presence_t *presence; /* owned: the devices connected, their documents on presence_topic */

    bool draining; /* bridge_drain(): new requests are refused */
    bool answered; /* upstream_answer() answered since bridge_take_answered() */
    uint64_t started_ms;

    struct up up;                 /* up.c's */
    struct upstream link;         /* upstream.c's */
    struct bridge_report *report; /* owned: bridge_report.c's snapshot for the statistics */
};

/* bridge_report.c: the statistics' snapshot. */
struct bridge_report;
void bridge_report_free(struct bridge_report *r);

/* up.c: the up direction. */

/* The handler of POST, PUT and DELETE (and the methods no mapping allows); data is the bridge. */
void bridge_on_request(void *data, enum res_kind kind, coap_resource_t *resource,
                       coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp);
/* sessions_t's free_up: a session went with its Block1 transfer. */
void up_free_transfer(void *up);
/* Counts an answer to a request for mapping map (SIZE_MAX: it went at a reload). */
void up_count(struct up *u, size_t map, bool ok);
/*
 * A reload: the counters of mapping i (of nold) become those of index[i] in
 * maps (zeroed, one per new mapping and one more), which replaces the old.
 */
void up_remap(struct up *u, struct up_map_stats *maps, const size_t *index, size_t nold);

/* upstream.c: the broker connection. */

/* Makes the MQTT client (b->mqtt) from b->cfg. 0, or -1 (logged). */
int upstream_init(bridge_t *b);
bool upstream_connected(const bridge_t *b);
/*
 * Publishes msg for the request of p (NULL: nobody waits). While connected,
 * QoS 0 goes to the client and QoS 1/2 through the offline buffer (in memory
 * until the connection drops); while disconnected into the buffer, durable
 * at bridge_commit(). 0, or the negative code of mqtt_client_publish
 * (-ENOBUFS: the buffer is full; -ENOTCONN: disconnected without a buffer).
 */
int upstream_publish(bridge_t *b, const mqtt_message_t *msg, pending_slot_t *p);
/* Hands waiting buffer records to the client, as far as its window allows. */
void upstream_pump(bridge_t *b);
/* Seconds a device should wait before retrying while the broker is away. */
int bridge_retry_after_s(const bridge_t *b);
/* Answers the request of p with code (pending_answer), counted for its mapping. */
void upstream_answer(bridge_t *b, pending_slot_t *p, int code);

#endif
