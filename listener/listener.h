/*
 * The MQTT device listener (doc/devices.md, MQTT devices): devices connect over TLS, are
 * identified by their certificate's subject CN, and each accepted device
 * connection is relayed over its own upstream connection to mqtt.uri, under
 * the mappings' policy (mapping/policy.h). A module of the loop (common/ev.h):
 * its listening sockets, connections and one timer are entries there, and
 * nothing blocks. The upstream connections are broker links (mqtt/link.h),
 * one per relayed device, sharing the credentials of mqtt.ca/cert/key and the
 * broker's addresses.
 *
 * The upstream client identifier is the device's identity, '/', and the
 * device's own client identifier ("bike-1/abc"); an anonymous device's is
 * "/" and its identifier. Identities cannot contain '/', so no device can
 * take over another's session. A device that sends an empty identifier gets a
 * random one (MQTT 5: returned as the Assigned Client Identifier, without the
 * identity). The upstream CONNECT's username is the identity (none for an
 * anonymous device); the device's password is never forwarded.
 *
 * What one identity may leave at the broker is bounded: an MQTT 5 Session
 * Expiry Interval over LISTENER_SESSION_EXPIRY_MAX goes upstream as that
 * (and the CONNACK says so), and a CONNECT asking for a session (MQTT 5:
 * Session Expiry > 0; 3.1.1: clean session off) under a client id beyond the
 * LISTENER_SESSIONS_PER_IDENTITY the identity holds is refused with 0x97
 * (3.1.1: 0x03). A client id leaves the count when its session ends at the
 * broker (a connection with it asking for none, or its expiry after the last
 * one; 3.1.1 sessions never expire). Anonymous devices count as one identity.
 * The count lives in memory.
 */
#ifndef TANDEM_LISTENER_H
#define TANDEM_LISTENER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ev.h"
#include "presence.h"
#include "stats.h"

/* A TLS handshake and the device's CONNECT must both be done within this of the accept, ms. */
#define LISTENER_CONNECT_TIMEOUT_MS 10000
/* The upstream connection (TCP, TLS, CONNECT, CONNACK) must be up within this, ms. */
#define LISTENER_UPSTREAM_TIMEOUT_MS 10000
/*
 * Connections still in their handshake (TLS, or waiting for CONNECT) beyond
 * max_connections; when that many are, a new one makes the oldest of the
 * source address holding the most go.
 */
#define LISTENER_HANDSHAKE_EXTRA 64
/*
 * Connections in their handshake from one source address (an IPv4 address,
 * an IPv6 /64); a new one makes that address's oldest go.
 */
#define LISTENER_HANDSHAKE_PER_ADDR 16
/*
 * The longest keep-alive, s: a device asking for none (0) or more is held to
 * this (MQTT 5: told as the Server Keep Alive; 3.1.1: closed when silent for
 * 1.5 times this).
 */
#define LISTENER_KEEPALIVE_MAX 1200
/* A packet a device has started must have arrived whole within this, ms. */
#define LISTENER_PACKET_TIMEOUT_MS 30000
/* What a closing connection still owes the broker may take this long to go, ms. */
#define LISTENER_CLOSE_DRAIN_MS 10000
/* The longest MQTT 5 Session Expiry Interval passed to the broker, s (7 days). */
#define LISTENER_SESSION_EXPIRY_MAX 604800
/* Client ids under which one identity may leave sessions at the broker. */
#define LISTENER_SESSIONS_PER_IDENTITY 16
/* Identities whose sessions the listener follows at once. */
#define LISTENER_SESSION_IDENTITIES_MAX 100000
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

/* The section "mqtt_listener" (doc/operating.md, Metrics). */
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
    uint64_t evicted;   /* connections in their handshake dropped for a newer one */
    uint64_t over_identity_limit; /* CONNECTs over max_connections_per_identity */
    uint64_t sessions_refused;    /* CONNECTs whose identity holds every broker session it may */
    uint64_t accept_paused;       /* times accepting stopped for a while (no file descriptors) */
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

/*
 * Relayed connections of authenticated devices count in p (borrowed; NULL:
 * no longer) from their accepted CONNECT to their end, whatever ends them.
 */
void listener_set_presence(listener_t *l, presence_t *p);

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
