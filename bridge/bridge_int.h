/*
 * What the bridge's source files share: the bridge's state and the helpers
 * both directions use. Not for use outside bridge/.
 */
#ifndef TANDEM_BRIDGE_INT_H
#define TANDEM_BRIDGE_INT_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stdint.h>

#include "bridge.h"
#include "inbox.h"
#include "mapping.h"
#include "mqtt.h"
#include "store.h"

/* Answers remembered per session for duplicate detection (RFC 7252 §4.5). */
#define DEDUP_SLOTS 16
/* Code for "no answer yet". */
#define CODE_PENDING 0
#define NO_BLOCK1 UINT32_MAX

struct dedup {
    bool used;
    uint16_t mid;
    uint16_t code;   /* e.g. 204, or CODE_PENDING while the broker has it */
    uint64_t pending; /* CODE_PENDING: the publish's request id */
    uint32_t block1; /* Block1 option value echoed, or NO_BLOCK1 */
    uint16_t max_age;
    uint64_t at_ms;
};

/* Bridge state of one CoAP session (dtls_peer_t.app). */
struct sess {
    bridge_t *b; /* borrowed */
    struct dedup recent[DEDUP_SLOTS];
    unsigned next;
    /* The Block1 transfer in progress, one per session. */
    bool b1_active;
    char b1_topic[MAP_PATH_MAX + 1];
    char *b1_body; /* owned */
    size_t b1_len, b1_cap;
    unsigned b1_next, b1_szx;
    int b1_cf;
    uint64_t b1_at_ms;
};

/* A publish waiting for the broker, and the request it will answer. */
struct pending {
    bool used;
    uint32_t gen;             /* bumped at each release; part of the request id */
    coap_session_t *session;  /* a reference is held until the answer is sent */
    uint8_t token[8];
    size_t token_len;
    uint16_t mid;             /* the request's Message ID */
    bool con;                 /* confirmable request */
    bool separate;            /* the empty ACK went out: the answer is separate */
    uint16_t ok_code;         /* 204, or 202 for DELETE */
    uint32_t block1;
    size_t map;
    uint64_t started_ms, piggyback_ms, deadline_ms;
    bool stored;              /* in the offline buffer: answered at bridge_commit() */
};

struct map_counters {
    uint64_t up, down, refused;
};

struct bridge {
    const gw_config_t *cfg; /* borrowed */
    coap_context_t *ctx;    /* borrowed */
    bridge_inbox_t *inbox;  /* owned */
    bridge_mqtt_t *mqtt;    /* owned */
    persist_t *persist;     /* owned: the MQTT client's store, in state_dir */

    bool connected, connecting, draining, ever_connected;
    uint64_t reconnect_at_ms, connected_at_ms;
    unsigned backoff_s;

    struct pending *pend; /* owned, cfg->max_inflight slots */
    size_t npend, inflight;
    uint64_t last_tick_ms, started_ms;
    size_t b1_bytes; /* held by every session's Block1 buffer */
    size_t nstored;  /* pending entries waiting for bridge_commit() */

    struct map_counters *maps; /* owned, one per mapping */

    /* The down direction (down.c). */
    store_t *store;                 /* owned: current values */
    coap_resource_t *unknown;       /* libcoap's; the catch-all resource */
    coap_resource_t *wellknown;     /* libcoap's; our /.well-known/core */
    struct {
        uint64_t received, evicted, dropped_full, dropped_bad_topic, notifications;
        uint64_t subscriptions_failed;
    } down;
    struct {
        uint64_t sessions, handshakes_ok, handshakes_failed, requests, bytes_in;
        uint64_t responses[256]; /* by class*32 + detail */
        uint64_t reconnects, published, acked, timeouts, duplicates, offline_buffered;
        uint64_t block1_refused; /* 5.03: every session's Block1 buffers at their bound */
        uint64_t broker_refused;     /* PUBACK/PUBREC with a reason >= 0x80: 5.02 */
        uint64_t broker_disconnects; /* DISCONNECT packets from the broker */
        uint64_t unpublishable;      /* messages the broker would refuse, never sent: 5.00 */
        uint64_t reloads, reload_failures;
        uint64_t lat_ms[1024]; /* ack latency histogram, 1 ms buckets, last = overflow */
    } st;
};

uint64_t bridge_now_ms(void);

/* Sets the response code and its options (-1 / NO_BLOCK1: none). */
void bridge_answer(bridge_t *b, coap_pdu_t *resp, int code, uint32_t block1, int max_age,
                   int size1);

/* MQTT 5 Content Type of a CoAP Content-Format, or NULL; *text for UTF-8 types. */
const char *bridge_content_type(int cf, bool *text);
/* The CoAP Content-Format of an MQTT 5 Content Type, or -1. */
int bridge_content_format(const char *type);

/* The request's Uri-Path options as segments; false when there are too many. */
bool bridge_uri_segments(const coap_pdu_t *req, map_segs_t *segs);
int bridge_option_uint(const coap_pdu_t *pdu, coap_option_num_t num, int dflt);

/* The handler of POST, PUT and DELETE (and the methods no mapping allows). */
void bridge_on_request(coap_resource_t *resource, coap_session_t *session,
                       const coap_pdu_t *req, const coap_string_t *query, coap_pdu_t *resp);

/* Every method's handler on r (the catch-all or a concrete resource), and b as its data. */
void bridge_set_handlers(bridge_t *b, coap_resource_t *r);

/* down.c: values, GET, Observe, discovery. */
int down_init(bridge_t *b);
void down_free(bridge_t *b);
void down_on_connected(bridge_t *b);
/* Before b->cfg becomes next: held values follow the new mappings. */
void down_reload(bridge_t *b, const gw_config_t *next);
void down_message(bridge_t *b, inbox_msg_t *msg);
/* The handler of GET, on the catch-all resource as on concrete ones. */
void down_on_get(coap_resource_t *resource, coap_session_t *session, const coap_pdu_t *req,
                 const coap_string_t *query, coap_pdu_t *resp);
void down_stats_json(const bridge_t *b, FILE *out);

#endif
