/*
 * The MQTT device listener (SPEC §5): devices connect over TLS, are
 * identified by their certificate's subject CN, and each accepted device
 * connection is relayed over its own upstream connection to mqtt.uri, under
 * the mappings' policy (mapping/policy.h). A module of the loop (common/ev.h):
 * its listening sockets, connections and one timer are entries there; no
 * thread, nothing blocks but the name lookup of the broker (at start, at a
 * reload, and again after an upstream connection failed).
 *
 * The upstream client identifier is the device's identity, '/', and the
 * device's own client identifier ("bike-1/abc"); an anonymous device's is
 * "/" and its identifier. Identities cannot contain '/', so no device can
 * take over another's session. A device that sends an empty identifier gets a
 * random one (MQTT 5: returned as the Assigned Client Identifier, without the
 * identity). The upstream CONNECT's username is the identity (none for an
 * anonymous device); the device's password is never forwarded.
 */
#ifndef TANDEM_LISTENER_H
#define TANDEM_LISTENER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ev.h"
#include "stats.h"

/* A TLS handshake and the device's CONNECT must both be done within this of the accept, ms. */
#define LISTENER_CONNECT_TIMEOUT_MS 10000
/* The upstream connection (TCP, TLS, CONNECT, CONNACK) must be up within this, ms. */
#define LISTENER_UPSTREAM_TIMEOUT_MS 10000
/* Connections still in their handshake beyond max_connections before new ones are closed. */
#define LISTENER_HANDSHAKE_EXTRA 64
/* The largest packet accepted from either side: coap.max_payload plus this. */
#define LISTENER_PACKET_EXTRA 65536
/* Topic Aliases a device may use (MQTT 5's Topic Alias Maximum in the CONNACK). */
#define LISTENER_ALIAS_MAX 16
/* SUBSCRIBEs awaiting the broker's SUBACK, per connection. */
#define LISTENER_SUBS_PENDING_MAX 16
/* Subscriptions held per connection (checked again at a reload). */
#define LISTENER_FILTERS_MAX 64
/* Refused QoS 2 publishes whose PUBREL is awaited, per connection and direction. */
#define LISTENER_DENIED_QOS2_MAX 32
/* Output queued to one side past which the other side is no longer read, bytes. */
#define LISTENER_HIGH_WATER 65536

/* The section "mqtt_listener" (SPEC §9). */
typedef struct listener_stats {
    uint64_t connections;      /* gauge: devices relayed now */
    uint64_t handshaking;      /* gauge: connections before their CONNECT was accepted */
    uint64_t accepted;         /* devices whose CONNECT was accepted and relayed */
    uint64_t rejected;         /* connections refused: limits, the Will, authentication */
    uint64_t denied_publish;   /* PUBLISH (and Will) topics refused by the policy */
    uint64_t denied_subscribe; /* SUBSCRIBE filters refused */
    uint64_t bytes_in;         /* bytes of MQTT packets from devices */
    uint64_t bytes_out;        /* bytes of MQTT packets to devices */
    uint64_t handshake_failures;
    uint64_t timeouts;          /* handshakes, CONNECTs and keep-alives that ran out */
    uint64_t malformed;         /* connections closed for a malformed or too large packet */
    uint64_t upstream_failures; /* upstream connections that failed or were refused */
    uint64_t closed_at_reload;  /* connections a reload's mappings no longer allowed */
    uint64_t denied_deliver;    /* broker PUBLISHes the mappings do not allow the device */
    uint64_t retain_cleared;    /* device PUBLISH and Will retain flags a mapping cleared */
    uint64_t
        broker_dropped; /* broker packets not relayed: over the size bound, too many properties */
} listener_stats_t;

extern const stats_section_t listener_section;

/* What a per-mapping count is for (listener_count_fn). */
enum listener_count { LISTENER_UP, LISTENER_DOWN, LISTENER_REFUSED };

/*
 * Counts one message of an MQTT device for mapping index map (in the running
 * table): a publish relayed up, a delivery down, or a refusal.
 */
typedef void listener_count_fn(void *arg, size_t map, enum listener_count what);

typedef struct listener listener_t;

/*
 * Binds mqtt_listener.bind:port and registers with loop. cfg is borrowed until
 * the next listener_reload_commit (or listener_free); count (may be NULL) and arg
 * are called for per-mapping counts. NULL on failure (logged).
 */
listener_t *listener_new(ev_loop_t *loop, const gw_config_t *cfg, listener_count_fn *count,
                         void *arg);

/* Closes every connection and the listening socket. */
void listener_free(listener_t *l);

/*
 * A graceful stop: no more connections, and the open ones close (their
 * upstream connections at once, as when the gateway goes down: the broker
 * publishes their Wills). The statistics stay until listener_free.
 */
void listener_shutdown(listener_t *l);

/* The credentials a reload prepares (listener_reload_prepare). */
typedef struct lcred listener_cred_t;

/*
 * SIGHUP, in two steps so that a reload is taken whole or not at all. First
 * the certificate, key and CA of next are loaded, on the side: 0 and *cred,
 * or a negative errno code when they cannot be loaded (logged); nothing of
 * the running listener changes.
 */
int listener_reload_prepare(const gw_config_t *next, listener_cred_t **cred);

/*
 * Then, once every module has prepared its part: cred (taken) is used for
 * new handshakes (connections keep theirs), the mappings of next from now
 * on, and every connection whose subscriptions or Will they no longer allow
 * is closed. Cannot fail. next is borrowed from now on.
 */
void listener_reload_commit(listener_t *l, const gw_config_t *next, listener_cred_t *cred);

/* Frees prepared credentials that are not committed; NULL does nothing. */
void listener_cred_free(listener_cred_t *cred);

const listener_stats_t *listener_stats(const listener_t *l);

#endif
