/*
 * The cookie gate: a stateless check of DTLS ClientHellos in front of
 * libcoap's DTLS endpoint (RFC 6347 §4.2.1).
 *
 * libcoap 4.3.1 creates a session, and a GnuTLS session, for every
 * ClientHello from a new address before any cookie round trip, keeps at most
 * 100 (+1) of these half-open sessions, and frees one only when it is 30 s old
 * and a new datagram arrives. A flood of hellos from spoofed addresses thus
 * keeps every slot taken and locks every device out.
 *
 * The gate sees each datagram of the DTLS socket before libcoap does: the
 * socket is taken out of libcoap's epoll set, and libcoap reads it only when
 * the gate hands it the datagram at the head. A ClientHello from an address
 * that has not proved it receives what is sent to it is consumed there and
 * answered with a HelloVerifyRequest whose cookie is an HMAC of the address
 * and port under a key the gate rotates (gnutls_dtls_cookie_send); nothing
 * is kept. When a hello comes back with a valid cookie, the address is
 * remembered as verified for DTLS_GATE_VERIFIED_MS and the hello goes on to
 * libcoap, which takes the gate's cookie as its own (gate.c says how) and
 * goes on with the handshake: one cookie round trip, as before the gate.
 * Within that time, the address's hellos go to libcoap as they are (a device
 * that reconnects then gets libcoap's own cookie exchange). Everything that
 * is not a ClientHello goes to libcoap unexamined.
 *
 * One loop thread owns the gate, as it owns libcoap.
 */
#ifndef TANDEM_DTLS_GATE_H
#define TANDEM_DTLS_GATE_H

#include <coap3/coap.h>
#include <stddef.h>
#include <stdint.h>

/* Verified addresses remembered at most; past it, see dtls_gate_stats_t. */
#define DTLS_GATE_PEERS 4096
/* How long a verified address's hellos go to libcoap unchecked, ms. */
#define DTLS_GATE_VERIFIED_MS 30000
/* How often the cookie key changes, ms; a cookie is accepted for 1 to 2 periods. */
#define DTLS_GATE_KEY_MS 60000

/* What one datagram is, to the gate. */
typedef enum {
    DTLS_DGRAM_OTHER = 0, /* not a ClientHello: libcoap's to read */
    DTLS_DGRAM_HELLO,     /* a ClientHello, whole or its first fragment */
    DTLS_DGRAM_FRAGMENT,  /* a later fragment of a ClientHello */
    DTLS_DGRAM_MALFORMED, /* libcoap would open a session for it, yet it is no ClientHello
                             (a length that does not add up, an epoch other than 0) */
} dtls_dgram_kind_t;

typedef struct {
    dtls_dgram_kind_t kind;
    uint16_t epoch;     /* the first record's epoch (any kind but OTHER) */
    uint8_t record_seq; /* low byte of its sequence number, echoed in the answer */
    size_t cookie_off;  /* DTLS_DGRAM_HELLO: where the cookie starts in the datagram */
    size_t cookie_len;  /* DTLS_DGRAM_HELLO: its length; 0 in a first hello */
} dtls_dgram_t;

/*
 * Classifies the first len bytes of a datagram, and fills *out. Pure: reads
 * data[0..len) only, keeps nothing, never fails; every length is checked.
 * What libcoap 4.3.1 would take for a new session's ClientHello (at least 14
 * bytes, content type 22, handshake type 1 at offset 13) is never OTHER.
 */
dtls_dgram_kind_t dtls_dgram_classify(const uint8_t *data, size_t len, dtls_dgram_t *out);

/* Counters, owned by the gate; plain values read on the loop thread. */
typedef struct {
    uint64_t hellos_answered; /* ClientHellos answered with a HelloVerifyRequest */
    uint64_t peers_verified;  /* addresses that came back with a valid cookie (once
                                 while remembered) */
    uint64_t dropped;         /* datagrams dropped: DTLS_DGRAM_MALFORMED, or a
                                 fragment from an address not verified */
    uint64_t peers_forgotten; /* verified addresses replaced before their time, the
                                 table being full where they would go */
} dtls_gate_stats_t;

typedef struct dtls_gate dtls_gate_t;

/*
 * A gate over the UDP socket fd, which stays the caller's (and libcoap's) to
 * close, after dtls_gate_free(). NULL on ENOMEM or when no key can be made.
 */
dtls_gate_t *dtls_gate_new(int fd);

/*
 * Finds the UDP socket that libcoap bound to addr for ctx's DTLS endpoint
 * (coap_new_endpoint() just done), takes it out of libcoap's epoll set and
 * puts a gate over it. NULL, with the reason logged, when there is no such
 * socket, or not exactly one.
 */
dtls_gate_t *dtls_gate_attach(coap_context_t *ctx, const coap_address_t *addr);

/* Gives the socket back to libcoap's epoll set, when attached; frees. */
void dtls_gate_free(dtls_gate_t *gate);

/* The socket: register it for reading in the loop. */
int dtls_gate_fd(const dtls_gate_t *gate);

/*
 * Looks at the datagrams at the head of the socket, without taking them,
 * until one is for libcoap: returns 1 with it still at the head. Consumes and
 * answers (or drops) the ones that are not, each taking one of *budget:
 * returns 0 when the socket is empty or *budget is 0, and a negative errno
 * code when the socket cannot be read.
 */
int dtls_gate_next(dtls_gate_t *gate, unsigned *budget);

/* Datagrams an attached gate refuses in one turn at most, so that the loop goes on. */
#define DTLS_GATE_BUDGET 1024

/*
 * After dtls_gate_next() returned 1 with a record of application data at the
 * head: how many datagrams behind it, at most max, are records of application
 * data too (which the gate lets through), without taking any.
 */
int dtls_gate_following(dtls_gate_t *gate, int max);

/* Datagrams handed to libcoap in one call at most. */
#define DTLS_GATE_BATCH 32

/*
 * An attached gate's turn: hands libcoap (coap_io_do_epoll) one batch of the
 * datagrams it should read, at most max: the head, and the records of data
 * that follow a record of data. Refuses at most DTLS_GATE_BUDGET others on
 * the way. Returns how many libcoap read; 0 when there is nothing for it.
 */
int dtls_gate_run(dtls_gate_t *gate, coap_context_t *ctx, int max);

const dtls_gate_stats_t *dtls_gate_stats(const dtls_gate_t *gate);

/* The statistics section "dtls_cookies", for a dtls_gate_stats_t (common/stats.h). */
extern const struct stats_section dtls_gate_section;

/* Tests move time with this: now_ms() returns milliseconds of a monotonic clock. */
void dtls_gate_set_clock(dtls_gate_t *gate, uint64_t (*now_ms)(void));

#endif
