/*
 * The bridge's view of CoAP sessions: how many there are (bounded by
 * coap.max_sessions, observers included), which one goes when a new one
 * needs room, duplicate detection that outlives a session, and the Observe
 * registrations each session holds.
 *
 * The bound. Every session libcoap makes is counted: a plain CoAP peer's from
 * its first datagram, a DTLS peer's once it has returned libcoap's cookie
 * (before that, libcoap's own handshake limit bounds them, and they cost
 * nothing the peer did not prove its address for). When a new one would pass
 * max_sessions, one is evicted: first a plain CoAP session, then a DTLS
 * session whose handshake has lasted more than 10 s, then an established DTLS
 * session, the least recently active of the first class that has one. A
 * younger handshake is left to finish. A session is never evicted
 * while it is busy (a publish of its waits for the broker, or a Block1 body
 * of its is being put together); when every session is busy, the new one is
 * refused (plain CoAP: 5.03 with Max-Age; DTLS: its handshake ends). An
 * evicted session loses its Observe registrations and, for DTLS, the device
 * handshakes again.
 *
 * Duplicates. The answers given to a peer (its address and port, and its
 * identity) are kept for EXCHANGE_LIFETIME (247 s, RFC 7252 §4.8.2), past
 * the end of its session: a retransmission that arrives after an eviction
 * gets the same answer and is not published again. Peers without a session
 * are kept up to max(max_sessions, SESS_PEERS_MIN), the oldest dropped first.
 *
 * Everything here runs on the loop thread.
 */
#ifndef TANDEM_SESSION_H
#define TANDEM_SESSION_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "presence.h"

/* Answers remembered per peer for duplicate detection (RFC 7252 §4.5). */
#define DEDUP_SLOTS 16
/* Code for "no answer yet". */
#define CODE_PENDING 0
#define NO_BLOCK1 UINT32_MAX
/* EXCHANGE_LIFETIME of RFC 7252 §4.8.2, ms. */
#define EXCHANGE_LIFETIME_MS 247000
/* Peers without a session remembered at least, whatever max_sessions is. */
#define SESS_PEERS_MIN 1024
/* Observe registrations one session may hold. */
#define SESS_OBSERVERS_MAX 32

struct dedup {
    bool used;
    uint16_t mid;
    uint16_t code; /* e.g. 204, or CODE_PENDING while the broker has it */
    uint16_t max_age;
    uint32_t block1;  /* Block1 option value echoed, or NO_BLOCK1 */
    uint64_t pending; /* CODE_PENDING: the publish's request id */
    uint64_t at_ms;
};

/* One Observe registration: the token and the resource path. */
struct obs_reg {
    uint8_t token[8];
    uint8_t token_len;
    char *path; /* owned */
};

enum sess_class { SESS_PLAIN, SESS_HANDSHAKE, SESS_DTLS, SESS_CLASSES };

typedef struct sessions sessions_t;
struct peer;

/* The bridge's state of one CoAP session (its dtls_peer_t's app data). */
typedef struct sess {
    sessions_t *ss;          /* borrowed */
    coap_session_t *session; /* libcoap's; valid while this exists */
    coap_address_t remote;   /* the peer's address, to look the session up again */
    int ifindex;
    enum sess_class cls;
    struct sess *older, *newer; /* activity order within the class */
    uint64_t last_ms;           /* last request */
    uint64_t confirmed_ms;      /* last confirmable notification sent to check it is there */
    unsigned busy;              /* publishes waiting for the broker, a Block1 body */
    bool refused;               /* over the bound with nothing to evict: goes after this turn */
    bool hello;                 /* DTLS, still in libcoap's cookie exchange: not counted yet */
    struct peer *peer;          /* duplicate detection, from the first request; shared */
    presence_dev_t *presence;   /* its identity's presence, once its handshake succeeded */
    const char *why;            /* why it ends, when the gateway ends it (static text) */
    void *up;                   /* the up path's state of this session, freed with free_up */
    struct obs_reg obs[SESS_OBSERVERS_MAX];
    unsigned nobs;
} sess_t;

/*
 * ctx is borrowed. free_up frees a session's up state (may be NULL). on_ready
 * is called once a DTLS session's handshake has succeeded, with its identity
 * (NULL when anonymous).
 */
sessions_t *sessions_new(coap_context_t *ctx, size_t max_sessions, void (*free_up)(void *up),
                         void (*on_ready)(void *arg, coap_session_t *s, const char *identity),
                         void *arg);
/* Frees the bridge's state of every session (libcoap frees the sessions). */
void sessions_free(sessions_t *ss);
void sessions_set_max(sessions_t *ss, size_t max_sessions);
/*
 * DTLS sessions with an identity count in p (borrowed) from their handshake
 * to their end, whatever ends them; NULL: no longer.
 */
void sessions_set_presence(sessions_t *ss, presence_t *p);

/* COAP_EVENT_SERVER_SESSION_NEW: counts it, makes room (evicts) or marks it refused. */
sess_t *sess_open(sessions_t *ss, coap_session_t *session);
/* COAP_EVENT_SERVER_SESSION_DEL. */
void sess_close(sessions_t *ss, coap_session_t *session);
/* The session's state, created when libcoap made it before the bridge knew (NULL on ENOMEM). */
sess_t *sess_get(sessions_t *ss, coap_session_t *session);

/* A request arrived: the session is the most recently active of its class. */
void sess_touch(sess_t *s, uint64_t now_ms);

/*
 * After each coap_io_process(): sessions whose handshake finished (counted,
 * on_ready called) or failed, and refused sessions evicted.
 */
void sessions_after_io(sessions_t *ss);

/* Duplicate detection of the session's peer (identity may be NULL). */
const struct dedup *sess_dedup_find(sess_t *s, const char *identity, uint16_t mid, uint64_t now_ms);
struct dedup *sess_dedup_add(sess_t *s, const char *identity, uint16_t mid, int code,
                             uint32_t block1, int max_age);
/* The slot waiting for publish id, or NULL. */
struct dedup *sess_dedup_pending(sess_t *s, uint64_t id);

/*
 * Observe registrations. sess_obs_add returns 0, or -ENOSPC when the session
 * holds SESS_OBSERVERS_MAX already (a registration of the same token on the
 * same path is not a new one).
 */
int sess_obs_add(sess_t *s, const uint8_t *token, size_t len, const char *path);
void sess_obs_remove(sess_t *s, const uint8_t *token, size_t len);

/*
 * Sessions with registrations and no request for idle_ms, not confirmed in
 * that long either: at most max of them, least recently active first; each
 * is marked confirmed now. Returns how many were put in out.
 */
size_t sessions_silent(sessions_t *ss, uint64_t now_ms, uint64_t idle_ms, sess_t **out, size_t max);

struct sessions_stats {
    uint64_t sessions, evicted, refused, handshakes_ok, handshakes_failed, observers;
    uint64_t observers_refused, peers;
};
void sessions_stats(const sessions_t *ss, struct sessions_stats *out);

/* Bytes the table of peers and the session states hold (for the figures). */
size_t sessions_bytes(const sessions_t *ss);

#endif
