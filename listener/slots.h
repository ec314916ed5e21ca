/*
 * Who holds the MQTT listener's shared slots (for listener.c): connections
 * still in their handshake per source address, relayed connections per
 * identity, and the broker sessions each identity leaves behind. One table of
 * entries keyed by an address or an identity; an entry lives while a
 * connection points at it or while it remembers a session. Not for other
 * modules.
 */
#ifndef TANDEM_LISTENER_SLOTS_H
#define TANDEM_LISTENER_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lconn;

enum slot_kind {
    SLOT_ADDR = 'a',     /* a source address: its connections in their handshake */
    SLOT_IDENTITY = 'i', /* an identity: its relayed connections and broker sessions */
    SLOT_ANON = 'n',     /* a source address: its anonymous relayed connections */
};

/* A broker session an identity left (or holds): its client id's digest. */
struct slot_session {
    uint8_t key[16];
    unsigned live;       /* connections using it now */
    uint64_t expires_ms; /* once none is: when the broker drops it; UINT64_MAX never */
};

typedef struct slot {
    struct slot *chain; /* the hash chain */
    uint32_t hash;
    unsigned refs; /* connections that point here */
    /* SLOT_ADDR */
    unsigned halfopen;              /* its connections in their handshake */
    struct lconn *oldest, *newest;  /* them, in the order they were accepted */
    struct slot *by_prev, *by_next; /* in the list of addresses with as many */
    /* SLOT_IDENTITY, SLOT_ANON */
    unsigned relayed;              /* relayed connections, closing ones not counted */
    struct slot_session *sessions; /* SLOT_IDENTITY: owned, NULL when none */
    size_t nsessions;
    size_t keylen;
    uint8_t key[];
} slot_t;

typedef struct slots slots_t;

slots_t *slots_new(void);
/* Frees every entry (the connections pointing at them are gone by then). */
void slots_free(slots_t *s);

/* The entry for kind and key, created when new, with a reference for the caller. NULL: no memory. */
slot_t *slots_get(slots_t *s, enum slot_kind kind, const void *key, size_t len);
/* Drops a reference; the entry goes once nothing needs it. */
void slots_put(slots_t *s, slot_t *e);

/* c (whose c->addr is a) is in its handshake from now on: the newest of a's. */
void slots_halfopen_add(slots_t *s, slot_t *a, struct lconn *c);
/* c is no longer in its handshake (relayed, or gone). Nothing when it was not. */
void slots_halfopen_del(slots_t *s, struct lconn *c);
/*
 * The connection to drop when the shared bound of connections in their
 * handshake is full: the oldest of the address that holds the most (so a
 * host opening many cannot push out the one connection of another). NULL when
 * there is none.
 */
struct lconn *slots_halfopen_victim(const slots_t *s);

/*
 * A connection of identity entry e asks for the session key (a digest of its
 * upstream client id); persistent: the broker will keep it after the
 * connection. 0 when it may, with *used when the connection now uses one of
 * e's sessions (then slots_session_release at its end); -EDQUOT when the
 * session is new, persistent, and e already holds max (or the table holds
 * LISTENER_SESSION_IDENTITIES_MAX identities with sessions). A session that
 * is not persistent is followed only when e already holds it.
 */
int slots_session_take(slots_t *s, slot_t *e, const uint8_t key[16], bool persistent, size_t max,
                       uint64_t now_ms, bool *used);
/*
 * The connection that took key ends: the broker keeps its session for
 * expiry_s seconds (UINT32_MAX: for ever; 0: it is gone). established: the
 * broker accepted its CONNECT (else the session is as it was before).
 */
void slots_session_release(slots_t *s, slot_t *e, const uint8_t key[16], uint32_t expiry_s,
                           bool established, uint64_t now_ms);

#endif
