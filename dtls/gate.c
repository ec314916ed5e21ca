/*
 * The cookie gate in front of libcoap's DTLS endpoint (see gate.h).
 */
#include "gate.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/dtls.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "stats.h"

/* DTLS 1.0/1.2 layouts (RFC 6347 §4.1, §4.2.2, §4.2.1; RFC 5246 §7.4.1.2). */
enum {
    REC_HEADER = 13, /* type, version (2), epoch (2), sequence number (6), length (2) */
    HS_HEADER = 12,  /* type, length (3), message_seq (2), fragment offset (3) and length (3) */
    CT_HANDSHAKE = 22,
    CT_APPLICATION_DATA = 23,
    HT_CLIENT_HELLO = 1,
    DTLS_MAJOR = 0xfe,
    HELLO_FIXED = 2 + 32, /* client_version, random */
    SESSION_ID_MAX = 32,
};

static uint32_t be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be24(const uint8_t *p)
{
    return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

dtls_dgram_kind_t dtls_dgram_classify(const uint8_t *d, size_t len, dtls_dgram_t *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = DTLS_DGRAM_OTHER;
    /*
     * What libcoap 4.3.1's coap_endpoint_get_session() takes for a ClientHello
     * from a new address: it looks at these two bytes only. Anything it would
     * open a session for must be a well-formed first hello to get past here.
     */
    if (len < REC_HEADER + 1 || d[0] != CT_HANDSHAKE || d[REC_HEADER] != HT_CLIENT_HELLO)
        return out->kind;
    out->kind = DTLS_DGRAM_MALFORMED;
    out->epoch = (uint16_t)be16(d + 3);
    out->record_seq = d[10];
    size_t rec_len = be16(d + 11);
    /* A ClientHello travels in epoch 0, in a record that the datagram holds. */
    if (d[1] != DTLS_MAJOR || out->epoch != 0 || rec_len > len - REC_HEADER || rec_len < HS_HEADER)
        return out->kind;
    const uint8_t *hs = d + REC_HEADER;
    size_t msg_len = be24(hs + 1), frag_off = be24(hs + 6), frag_len = be24(hs + 9);
    if (frag_len > rec_len - HS_HEADER || frag_off > msg_len || frag_len > msg_len - frag_off)
        return out->kind;
    if (frag_off != 0) {
        out->kind = DTLS_DGRAM_FRAGMENT;
        return out->kind;
    }
    /*
     * client_version, random, session_id<0..32>, cookie<0..2^8-1>, then at least
     * one byte more (the cipher suites), all within the fragment: the offsets
     * gnutls_dtls_cookie_verify() reads, checked here against the record.
     */
    const uint8_t *body = hs + HS_HEADER;
    size_t pos = HELLO_FIXED;
    if (frag_len < pos + 1)
        return out->kind;
    size_t sid = body[pos++];
    if (sid > SESSION_ID_MAX || frag_len - pos < sid + 1)
        return out->kind;
    pos += sid;
    size_t cookie = body[pos++];
    if (frag_len - pos < cookie + 1)
        return out->kind;
    out->cookie_off = REC_HEADER + HS_HEADER + pos;
    out->cookie_len = cookie;
    out->kind = DTLS_DGRAM_HELLO;
    return out->kind;
}

/*
 * A peer's address as the table's key and the cookie's client data: the IPv6
 * address (IPv4 as ::ffff:a.b.c.d, as a dual-stack socket reports it), the
 * port, the scope.
 */
#define PEER_KEY 22
/* Slots looked at for one address: the table is DTLS_GATE_PEERS / PROBE sets of PROBE. */
#define PROBE 8

struct peer {
    uint8_t key[PEER_KEY];
    bool used;
    uint64_t until; /* ms: verified until then */
};

struct dtls_gate {
    int fd;            /* the DTLS socket, borrowed */
    int epfd;          /* libcoap's epoll fd when attached, else -1 */
    uint32_t epevents; /* what libcoap had registered for fd there */
    uint64_t epdata;
    gnutls_datum_t key[2]; /* [0] current cookie key, [1] the previous one (data NULL: none) */
    uint64_t key_since;    /* ms when key[0]'s period began */
    uint64_t seed;         /* keys the table's hash */
    uint64_t (*now_ms)(void);
    struct peer *peers; /* owned, DTLS_GATE_PEERS */
    dtls_gate_stats_t st;
    size_t head_len;    /* bytes of the head datagram in buf */
    bool no_peek_off;   /* the socket refused SO_PEEK_OFF: one datagram per batch */
    bool head_verified; /* it is a ClientHello with a valid cookie of ours */
    uint8_t buf[65536]; /* the head datagram (a UDP payload is at most 65,507 bytes) */
};

static int peer_key(const struct sockaddr_storage *ss, uint8_t key[PEER_KEY])
{
    memset(key, 0, PEER_KEY);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &s->sin_addr, 4);
        memcpy(key + 16, &s->sin_port, 2);
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        memcpy(key, &s->sin6_addr, 16);
        memcpy(key + 16, &s->sin6_port, 2);
        memcpy(key + 18, &s->sin6_scope_id, 4);
        return 0;
    }
    return -EAFNOSUPPORT;
}

/* "[address]:port" for debug lines. */
static const char *peer_str(const struct sockaddr_storage *ss, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
        port = ntohs(s->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof(host));
        port = ntohs(s->sin6_port);
    }
    snprintf(out, size, "[%s]:%u", host, port);
    return out;
}

static uint64_t hash(const dtls_gate_t *g, const uint8_t key[PEER_KEY])
{
    /* FNV-1a from a random seed, then a finaliser (MurmurHash3's) to spread it. */
    uint64_t h = g->seed ^ 0xcbf29ce484222325ULL;
    for (int i = 0; i < PEER_KEY; i++) {
        h ^= key[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static struct peer *slot(dtls_gate_t *g, uint64_t h, int i)
{
    return &g->peers[(h + (uint64_t)i) % DTLS_GATE_PEERS];
}

static bool verified(dtls_gate_t *g, const uint8_t key[PEER_KEY], uint64_t now)
{
    uint64_t h = hash(g, key);
    for (int i = 0; i < PROBE; i++) {
        struct peer *p = slot(g, h, i);
        if (p->used && p->until > now && !memcmp(p->key, key, PEER_KEY))
            return true;
    }
    return false;
}

/*
 * Remembers a verified address. At the bound, the address whose time ends
 * first among the PROBE slots it may take is forgotten (counted): its next
 * ClientHello, if any, costs it one more cookie round trip.
 */
static bool remember(dtls_gate_t *g, const uint8_t key[PEER_KEY], uint64_t now)
{
    uint64_t h = hash(g, key);
    struct peer *free_slot = NULL, *oldest = NULL;
    for (int i = 0; i < PROBE; i++) {
        struct peer *p = slot(g, h, i);
        if (p->used && !memcmp(p->key, key, PEER_KEY)) {
            bool again = p->until > now;
            p->until = now + DTLS_GATE_VERIFIED_MS;
            return !again;
        }
        if (!p->used || p->until <= now) {
            if (!free_slot)
                free_slot = p;
        } else if (!oldest || p->until < oldest->until) {
            oldest = p;
        }
    }
    if (!free_slot) {
        free_slot = oldest;
        g->st.peers_forgotten++;
    }
    memcpy(free_slot->key, key, PEER_KEY);
    free_slot->used = true;
    free_slot->until = now + DTLS_GATE_VERIFIED_MS;
    return true;
}

static void key_drop(gnutls_datum_t *k)
{
    if (k->data) {
        gnutls_memset(k->data, 0, k->size);
        gnutls_free(k->data);
    }
    k->data = NULL;
    k->size = 0;
}

/*
 * A new key every DTLS_GATE_KEY_MS; the previous one is still accepted for one
 * period, so a cookie is good for one to two periods after it was sent.
 */
static void rotate(dtls_gate_t *g, uint64_t now)
{
    uint64_t periods = (now - g->key_since) / DTLS_GATE_KEY_MS;
    gnutls_datum_t fresh;
    if (!periods || gnutls_key_generate(&fresh, GNUTLS_COOKIE_KEY_SIZE) < 0)
        return; /* without a new key, the current one stays */
    key_drop(&g->key[1]);
    if (periods == 1)
        g->key[1] = g->key[0];
    else
        key_drop(&g->key[0]);
    g->key[0] = fresh;
    g->key_since += periods * DTLS_GATE_KEY_MS;
}

/*
 * libcoap 4.3.1 checks a ClientHello's cookie itself, with a key it makes for
 * each new session, and has no hook for an application's check. Given the
 * hello that carries the gate's cookie, it would answer with a
 * HelloVerifyRequest of its own, which no client takes: libcoap numbers it
 * handshake message 0 again (and record 0), and GnuTLS and OpenSSL clients
 * drop it as a replay of the gate's, so the handshake never completes.
 *
 * Tandem therefore defines gnutls_dtls_cookie_verify() itself. The dynamic
 * linker binds libcoap's call to the executable's definition before GnuTLS's
 * (dtls_gate_attach() checks that it does). This one accepts exactly the
 * datagram that the gate is handing libcoap (the same bytes, while
 * coap_io_do_epoll() reads it) when it holds a valid cookie of the gate's,
 * and fills the prestate as GnuTLS's function does; every other call goes to
 * GnuTLS's function unchanged.
 */
typedef int verify_fn(gnutls_datum_t *key, void *client_data, size_t client_data_size, void *msg,
                      size_t msg_size, gnutls_dtls_prestate_st *prestate);

static verify_fn *gnutls_verify(void)
{
    static verify_fn *fn;
    if (!fn)
        *(void **)&fn = dlsym(RTLD_NEXT, "gnutls_dtls_cookie_verify");
    return fn;
}

/* The gate inside dtls_gate_run()'s coap_io_do_epoll(); one DTLS endpoint per process. */
static const dtls_gate_t *handing;

int gnutls_dtls_cookie_verify(gnutls_datum_t *key, void *client_data, size_t client_data_size,
                              void *msg, size_t msg_size, gnutls_dtls_prestate_st *prestate)
{
    const dtls_gate_t *g = handing;
    if (g && g->head_verified && msg && prestate && msg_size > REC_HEADER + HS_HEADER &&
        msg_size <= g->head_len && !memcmp(msg, g->buf, msg_size)) {
        const uint8_t *m = msg;
        prestate->record_seq = m[10];               /* the hello's record number */
        prestate->hsk_read_seq = m[REC_HEADER + 5]; /* its message_seq */
        prestate->hsk_write_seq = 0;                /* the gate's answer was message 0 */
        return 0;
    }
    verify_fn *fn = gnutls_verify();
    if (!fn)
        return GNUTLS_E_INTERNAL_ERROR;
    return fn(key, client_data, client_data_size, msg, msg_size, prestate);
}

static bool cookie_valid(dtls_gate_t *g, uint8_t key[PEER_KEY], size_t len)
{
    verify_fn *fn = gnutls_verify();
    for (int i = 0; i < 2 && fn; i++) {
        gnutls_dtls_prestate_st pre;
        memset(&pre, 0, sizeof(pre));
        if (g->key[i].data && fn(&g->key[i], key, PEER_KEY, g->buf, len, &pre) == 0)
            return true;
    }
    return false;
}

struct reply {
    int fd;
    const struct sockaddr *to;
    socklen_t len;
};

static ssize_t push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    const struct reply *r = ptr;
    return sendto(r->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, r->to, r->len);
}

dtls_gate_t *dtls_gate_new(int fd)
{
    dtls_gate_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->fd = fd;
    g->epfd = -1;
    g->now_ms = gw_now_ms;
    g->peers = calloc(DTLS_GATE_PEERS, sizeof(*g->peers));
    if (!g->peers || gnutls_key_generate(&g->key[0], GNUTLS_COOKIE_KEY_SIZE) < 0 ||
        gnutls_rnd(GNUTLS_RND_NONCE, &g->seed, sizeof(g->seed)) < 0) {
        dtls_gate_free(g);
        return NULL;
    }
    g->key_since = g->now_ms();
    return g;
}

void dtls_gate_set_clock(dtls_gate_t *g, uint64_t (*now_ms)(void))
{
    g->now_ms = now_ms;
    g->key_since = now_ms();
}

int dtls_gate_fd(const dtls_gate_t *g)
{
    return g->fd;
}

const dtls_gate_stats_t *dtls_gate_stats(const dtls_gate_t *g)
{
    return &g->st;
}

/* Takes the head datagram out of the socket. */
static void discard(dtls_gate_t *g)
{
    uint8_t byte;
    while (recv(g->fd, &byte, sizeof(byte), MSG_DONTWAIT) < 0 && errno == EINTR)
        ;
}

int dtls_gate_next(dtls_gate_t *g, unsigned *budget)
{
    char who[INET6_ADDRSTRLEN + 16];
    bool debug = gw_log_level() >= GW_LOG_DEBUG;

    g->head_verified = false;
    g->head_len = 0; /* nothing looked at yet */
    while (*budget > 0) {
        struct sockaddr_storage peer;
        struct iovec iov = { .iov_base = g->buf, .iov_len = sizeof(g->buf) };
        struct msghdr m = {
            .msg_name = &peer, .msg_namelen = sizeof(peer), .msg_iov = &iov, .msg_iovlen = 1
        };
        memset(&peer, 0, sizeof(peer));
        ssize_t n = recvmsg(g->fd, &m, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            /* An error the socket reported (an ICMP one), now cleared; or a real one. */
            if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
                (*budget)--;
                continue;
            }
            return -errno;
        }
        /* With MSG_TRUNC, n is the datagram's whole length. */
        size_t len = (size_t)n < sizeof(g->buf) ? (size_t)n : sizeof(g->buf);
        g->head_len = len;
        dtls_dgram_t dg;
        uint8_t key[PEER_KEY];
        if (dtls_dgram_classify(g->buf, len, &dg) == DTLS_DGRAM_OTHER || peer_key(&peer, key) < 0)
            return 1;
        uint64_t now = g->now_ms();
        rotate(g, now);
        if (dg.kind == DTLS_DGRAM_HELLO && dg.cookie_len && cookie_valid(g, key, len)) {
            if (remember(g, key, now)) {
                g->st.peers_verified++;
                if (debug)
                    gw_debug(DTLS, "%s: cookie verified", peer_str(&peer, who, sizeof(who)));
            }
            g->head_verified = true;
            return 1;
        }
        /*
         * An address verified a moment ago may start a handshake again
         * without the gate's cookie (a device that reconnects): libcoap
         * then sends its own HelloVerifyRequest, the only one this new
         * handshake sees, and checks the cookie that comes back.
         */
        if (verified(g, key, now))
            return 1;
        (*budget)--;
        if (dg.kind != DTLS_DGRAM_HELLO) {
            discard(g);
            g->st.dropped++;
            if (debug)
                gw_debug(DTLS, "%s: %s dropped", peer_str(&peer, who, sizeof(who)),
                         dg.kind == DTLS_DGRAM_FRAGMENT ? "ClientHello fragment"
                                                        : "malformed ClientHello");
            continue;
        }
        discard(g);
        /* The answer reuses the hello's record sequence number (RFC 6347 §4.2.1). */
        gnutls_dtls_prestate_st pre = { .record_seq = dg.record_seq };
        struct reply r = { .fd = g->fd,
                           .to = (const struct sockaddr *)&peer,
                           .len = m.msg_namelen };
        if (gnutls_dtls_cookie_send(&g->key[0], key, PEER_KEY, &pre, &r, push) >= 0) {
            g->st.hellos_answered++;
            if (debug)
                gw_debug(DTLS, "%s: ClientHello answered with a cookie",
                         peer_str(&peer, who, sizeof(who)));
        } else if (debug) {
            gw_debug(DTLS, "%s: cannot send a cookie (%s)", peer_str(&peer, who, sizeof(who)),
                     strerror(errno));
        }
    }
    return 0;
}

/* A record of an established session's data: the gate lets it through as it is. */
static bool application_data(const uint8_t *d, size_t len)
{
    return len >= REC_HEADER && d[0] == CT_APPLICATION_DATA && d[1] == DTLS_MAJOR;
}

int dtls_gate_following(dtls_gate_t *g, int max)
{
    /*
     * SO_PEEK_OFF (socket(7)) moves each peek past the datagram it looked
     * at, so the ones behind the head can be seen without taking any. It is
     * on only here: the reads of libcoap and of the gate then take exactly
     * the datagrams the gate has looked at, from the head.
     */
    int off = (int)g->head_len, n = 0; /* buf holds any UDP payload whole */
    if (max <= 0 || g->no_peek_off || !application_data(g->buf, g->head_len))
        return 0;
    if (setsockopt(g->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0) {
        g->no_peek_off = true;
        gw_debug(DTLS, "SO_PEEK_OFF refused (%s): one datagram per batch", strerror(errno));
        return 0;
    }
    while (n < max) {
        uint8_t head[REC_HEADER];
        ssize_t r = recv(g->fd, head, sizeof(head), MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
        if (r < 0 && errno == EINTR)
            continue;
        /* With MSG_TRUNC, r is the datagram's whole length. */
        if (r < 0 || !application_data(head, (size_t)r < sizeof(head) ? (size_t)r : sizeof(head)))
            break;
        n++;
    }
    off = -1;
    if (setsockopt(g->fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0) {
        /*
         * Not seen: the kernel only stores the value, and took one a moment
         * ago. Were it left on, the gate's next peeks would start past the
         * head; no more batches, and said loudly.
         */
        g->no_peek_off = true;
        gw_err(DTLS, "cannot turn SO_PEEK_OFF off (%s): one datagram per batch", strerror(errno));
        return 0;
    }
    return n;
}

int dtls_gate_run(dtls_gate_t *g, coap_context_t *ctx, int max)
{
    unsigned budget = DTLS_GATE_BUDGET;
    struct epoll_event ev[DTLS_GATE_BATCH];
    if (max > DTLS_GATE_BATCH)
        max = DTLS_GATE_BATCH;
    if (max <= 0)
        return 0;
    /*
     * An error the gate cannot read past goes to libcoap too: it reads the
     * socket and deals with the error as it did before the gate.
     */
    int rc = dtls_gate_next(g, &budget);
    if (rc == 0)
        return 0;
    /*
     * Behind a record of data, the records of data that follow go to libcoap
     * in the same call: it walks every session after each call, to update its
     * timers, and that walk, not the datagram, is most of the cost under load.
     * Anything else (a handshake, an alert) ends the batch, so that what a
     * finished handshake makes exists before the next datagram is read.
     */
    int n = 1 + (rc > 0 ? dtls_gate_following(g, max - 1) : 0);
    for (int i = 0; i < n; i++)
        ev[i] = (struct epoll_event){ .events = EPOLLIN, .data.u64 = g->epdata };
    handing = g;
    coap_io_do_epoll(ctx, ev, (size_t)n);
    handing = NULL;
    return n;
}

/* Whether fd is a UDP socket bound to exactly addr. */
static bool bound_to(int fd, const coap_address_t *addr)
{
    int type = 0;
    socklen_t tl = sizeof(type);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_DGRAM ||
        getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family != addr->addr.sa.sa_family)
        return false;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&ss;
        return s->sin_port == addr->addr.sin.sin_port &&
               s->sin_addr.s_addr == addr->addr.sin.sin_addr.s_addr;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&ss;
        return s->sin6_port == addr->addr.sin6.sin6_port &&
               !memcmp(&s->sin6_addr, &addr->addr.sin6.sin6_addr, sizeof(s->sin6_addr));
    }
    return false;
}

/*
 * When every device reconnects at once (a gateway restart), their
 * ClientHellos and then their handshakes arrive faster than handshakes are
 * made: with the kernel's default buffer (about 200 datagrams) the rest are
 * dropped, and each device waits for its DTLS retransmission (1 s, 2 s,
 * 4 s...). A larger buffer holds them until the loop gets to them. Beyond
 * net.core.rmem_max only with CAP_NET_ADMIN (SO_RCVBUFFORCE); otherwise
 * the largest the kernel allows, and a line that says so.
 */
#define RECEIVE_BUFFER (8 * 1024 * 1024)

static void grow_receive_buffer(int fd)
{
    int want = RECEIVE_BUFFER, got = 0;
    socklen_t len = sizeof(got);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof(want)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof(want));
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len) < 0)
        return;
    /* The kernel reports twice what it was asked for (socket(7)). */
    if (got / 2 < want)
        gw_info(DTLS,
                "DTLS socket receive buffer: %d KiB (net.core.rmem_max; %d KiB would hold a "
                "reconnection storm of thousands of devices)",
                got / 2 / 1024, want / 1024);
    else
        gw_debug(DTLS, "DTLS socket receive buffer: %d KiB", got / 2 / 1024);
}

dtls_gate_t *dtls_gate_attach(coap_context_t *ctx, const coap_address_t *addr)
{
    /*
     * The socket leaves libcoap's epoll set so that libcoap reads no datagram
     * the gate has not seen. (Looking at the socket before each
     * coap_io_process() would not do: libcoap reads whatever came in since,
     * and the faster the hellos come, the more of them would slip through.)
     *
     * libcoap 4.3.1 has no accessor for an endpoint's socket. Its epoll set
     * holds it, and /proc/self/fdinfo of that epoll fd lists each descriptor
     * with the data libcoap registered for it: what coap_io_do_epoll() expects
     * back in an event (proc(5)).
     */
    int epfd = coap_context_get_coap_fd(ctx);
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", epfd);
    FILE *f = epfd >= 0 ? fopen(path, "re") : NULL;
    if (!f) {
        gw_err(DTLS, "cannot find libcoap's DTLS socket: %s unreadable (%s)", path,
               strerror(errno));
        return NULL;
    }
    int fd = -1, matches = 0;
    unsigned events = 0;
    unsigned long long data = 0;
    while (fgets(line, sizeof(line), f)) {
        int tfd;
        unsigned ev;
        unsigned long long d;
        if (sscanf(line, "tfd: %d events: %x data: %llx", &tfd, &ev, &d) == 3 &&
            bound_to(tfd, addr)) {
            fd = tfd;
            events = ev;
            data = d;
            matches++;
        }
    }
    fclose(f);
    if (matches != 1) {
        gw_err(DTLS, "cannot find libcoap's DTLS socket: %d sockets bound to its address", matches);
        return NULL;
    }
    void *bound = dlsym(RTLD_DEFAULT, "gnutls_dtls_cookie_verify");
    if (bound != (void *)gnutls_dtls_cookie_verify || !gnutls_verify()) {
        gw_err(DTLS, "libcoap would not take the cookie gate's cookies "
                     "(gnutls_dtls_cookie_verify is not Tandem's)");
        return NULL;
    }
    dtls_gate_t *g = dtls_gate_new(fd);
    if (!g) {
        gw_err(DTLS, "cannot set up the cookie gate (out of memory, or no random key)");
        return NULL;
    }
    if (epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0) {
        gw_err(DTLS, "cannot take the DTLS socket from libcoap (%s)", strerror(errno));
        dtls_gate_free(g);
        return NULL;
    }
    g->epfd = epfd;
    g->epevents = events;
    g->epdata = data;
    grow_receive_buffer(fd);
    return g;
}

void dtls_gate_free(dtls_gate_t *g)
{
    if (!g)
        return;
    if (g->epfd >= 0) {
        /* libcoap takes the socket out of its set when it closes it. */
        struct epoll_event ev = { .events = g->epevents, .data.u64 = g->epdata };
        if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->fd, &ev) < 0)
            gw_warn(DTLS, "cannot give the DTLS socket back to libcoap (%s)", strerror(errno));
    }
    key_drop(&g->key[0]);
    key_drop(&g->key[1]);
    free(g->peers);
    free(g);
}

#define GATE(f, help_)                                                                             \
    {                                                                                              \
        .name = #f, .help = help_, .kind = STATS_COUNTER, .type = STATS_U64,                       \
        .offset = offsetof(dtls_gate_stats_t, f)                                                   \
    }
static const stats_field_t gate_fields[] = {
    GATE(hellos_answered, "ClientHellos answered with a cookie (HelloVerifyRequest)"),
    GATE(peers_verified, "Addresses that came back with a valid cookie"),
    GATE(dropped, "Datagrams dropped before libcoap: malformed, or unverified fragments"),
    GATE(peers_forgotten, "Verified addresses forgotten early: the table was full"),
};
const stats_section_t dtls_gate_section = { .json = "dtls_cookies",
                                            .prom = "dtls_cookies",
                                            .fields = gate_fields,
                                            .nfields =
                                                sizeof(gate_fields) / sizeof(gate_fields[0]) };
