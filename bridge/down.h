/*
 * MQTT -> CoAP (doc/devices.md): subscriptions, current values, GET, Observe,
 * Block2 and discovery. The down direction owns its values (the store),
 * the concrete resources it makes, the state of its subscriptions and its
 * counters; the bridge calls it at the broker connection's events and
 * reads its statistics. Everything here runs on the loop thread.
 */
#ifndef TANDEM_DOWN_H
#define TANDEM_DOWN_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coap_util.h"
#include "config.h"
#include "client.h"
#include "packet.h"
#include "resources.h"
#include "session.h"

/* The down direction's counters. */
typedef struct down_stats {
    uint64_t requests;             /* GET requests, discovery included */
    coap_codes_t responses;        /* the answers to them */
    uint64_t received;             /* messages from the broker */
    uint64_t evicted;              /* resources dropped for room, or gone at a reload */
    uint64_t dropped_full;         /* messages dropped: no room for their resource or value */
    uint64_t dropped_bad_topic;    /* messages on a topic no down mapping matches */
    uint64_t notifications;        /* messages that notified observers */
    uint64_t bytes_out;            /* payload bytes of the answers and notifications (each block) */
    uint64_t confirmations;        /* confirmable notifications to silent observers */
    uint64_t subscriptions_failed; /* subscriptions the broker refused */
    uint64_t dropped_too_large;    /* messages larger than coap.max_payload */
    uint64_t observe_refused;      /* registrations refused: every resource held observed */
} down_stats_t;

/* One mapping's counters in the down direction. */
typedef struct down_map_stats {
    uint64_t down;    /* values stored for it */
    uint64_t refused; /* GETs refused by its rules (4.03, say) */
} down_map_stats_t;

typedef struct down down_t;

/*
 * Seconds a device should wait before asking again for the values of a
 * mapping whose subscription the broker has not acknowledged yet.
 */
typedef int down_wait_fn(void *arg);

/*
 * Every pointer is borrowed and must outlive the down direction: cfg (the
 * mappings and the coap section; down_reload() gives the next one), ctx,
 * res (where it makes its resources), *mqtt (the client, to subscribe; the
 * bridge may make it again), sessions (Observe
 * registrations and silent devices). wait(wait_arg) as above. Makes the
 * resources without variables. NULL on ENOMEM.
 */
down_t *down_new(const gw_config_t *cfg, coap_context_t *ctx, resources_t *res,
                 mqtt_client_t *const *mqtt, sessions_t *sessions, down_wait_fn *wait,
                 void *wait_arg);
/* Frees the values (the resources belong to the CoAP context). down_free(NULL) does nothing. */
void down_free(down_t *d);

/* The handler of GET (resources.h), on the catch-all resource as on concrete ones; data is d. */
void down_on_get(void *data, enum res_kind kind, coap_resource_t *resource, coap_session_t *session,
                 const coap_pdu_t *req, coap_pdu_t *resp);
/* A device's handshake succeeded: its own resources are made. */
void down_on_ready(down_t *d, coap_session_t *session, const char *identity);

/*
 * The broker connection is up: subscribes to every down mapping's filter at
 * the first connection, when the broker kept no session for us, or when the
 * filters changed while disconnected.
 */
void down_on_connected(down_t *d, bool session_present);
/* The broker acknowledged the subscriptions asked for as gen. */
void down_subscribed(down_t *d, uint64_t gen);
/* The broker refused a subscription (why: for the log). */
void down_subscription_failed(down_t *d, const char *why);
/* A message arrived on a subscription (msg stays the caller's). */
void down_message(down_t *d, const mqtt_incoming_t *msg);

/* Says once when acknowledged subscriptions' values are served. */
void down_check_ready(down_t *d);
/* Milliseconds until down_check_ready has something to say, or -1. */
int down_timeout_ms(const down_t *d);
/* Once a second: observers whose device went silent are confirmed (RFC 7641 §4.5). */
void down_tick(down_t *d);

/* What a reload needs, made ahead so that the reload itself cannot fail. */
typedef struct down_next down_next_t;

/* For a reload to next: 0 and *n, or -ENOMEM with nothing changed. */
int down_reload_prepare(const down_t *d, const gw_config_t *next, down_next_t **n);
/* Frees n when the reload is not taken; NULL does nothing. */
void down_next_free(down_next_t *n);

/*
 * A reload, before next replaces the configuration: held values follow the
 * new mappings, subscriptions too (when connected). index[i] is the index in
 * next of the mapping named as mapping i of the current one, or SIZE_MAX:
 * the per-mapping counters follow it. n (taken) is from down_reload_prepare
 * for the same next. Cannot fail.
 */
void down_reload(down_t *d, down_next_t *n, const gw_config_t *next, const size_t *index,
                 bool connected);

const down_stats_t *down_stats(const down_t *d);
/* Mapping map's counters (map < the mappings' count). */
const down_map_stats_t *down_map_stats(const down_t *d, size_t map);
/* Resources (values held or awaited) and the bytes of their values. */
size_t down_resources(const down_t *d);
size_t down_value_bytes(const down_t *d);

#endif
