/*
 * The cookie gate: the ClientHello classifier (every length checked), and
 * the gate over a real UDP socket on loopback, with a clock the tests move.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <gnutls/dtls.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gate.h"

/* The first ClientHello of coap-client-gnutls 4.3.1, DTLS-PSK (GnuTLS 3.7.9). */
static const uint8_t hello_gnutls[] = {
    0x16, 0xfe, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00,
    0xb3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xb3, 0xfe, 0xfd, 0x38, 0x72, 0x9d, 0x22, 0x70,
    0x21, 0x84, 0x81, 0xfb, 0xf7, 0x48, 0xa1, 0xe8, 0x56, 0x1b, 0x4a, 0xf6, 0x50, 0xbe, 0xb2, 0xe5,
    0x46, 0xad, 0xb4, 0x92, 0xd9, 0xac, 0x93, 0xc8, 0x9e, 0xf9, 0xdf, 0x00, 0x00, 0x00, 0x1a, 0xcc,
    0xac, 0xc0, 0x36, 0xc0, 0x35, 0xc0, 0x37, 0x00, 0xa9, 0xcc, 0xab, 0xc0, 0xa5, 0x00, 0x8d, 0x00,
    0xa8, 0xc0, 0xa4, 0x00, 0x8c, 0x00, 0xae, 0xc0, 0xa8, 0x01, 0x00, 0x00, 0x6f, 0x00, 0x0a, 0x00,
    0x16, 0x00, 0x14, 0x00, 0x17, 0x00, 0x18, 0x00, 0x19, 0x00, 0x1d, 0x00, 0x1e, 0x01, 0x00, 0x01,
    0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, 0x00, 0x0d, 0x00,
    0x22, 0x00, 0x20, 0x04, 0x01, 0x08, 0x09, 0x08, 0x04, 0x04, 0x03, 0x08, 0x07, 0x05, 0x01, 0x08,
    0x0a, 0x08, 0x05, 0x05, 0x03, 0x08, 0x08, 0x06, 0x01, 0x08, 0x0b, 0x08, 0x06, 0x06, 0x03, 0x02,
    0x01, 0x02, 0x03, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x23, 0x00, 0x00, 0xff,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09, 0x31, 0x32, 0x37,
    0x2e, 0x30, 0x2e, 0x30, 0x2e, 0x31, 0x00, 0x1c, 0x00, 0x02, 0x40, 0x00,
};

/* The first ClientHello of coap-client-openssl 4.3.1, DTLS-PSK (OpenSSL 3.0). */
static const uint8_t hello_openssl[] = {
    0x16, 0xfe, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfc, 0x01, 0x00, 0x00,
    0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0xfe, 0xfd, 0x13, 0xd3, 0x1f, 0xb0, 0x02,
    0x17, 0x40, 0xf4, 0xd6, 0x77, 0x34, 0xc0, 0x2d, 0xca, 0x18, 0x7d, 0x8d, 0xa6, 0x79, 0x30, 0x39,
    0xa5, 0xcd, 0x91, 0xa5, 0x98, 0x6c, 0x98, 0x1b, 0x9a, 0x44, 0x1d, 0x00, 0x00, 0x00, 0x62, 0x00,
    0xad, 0x00, 0xab, 0xcc, 0xae, 0xcc, 0xad, 0xcc, 0xac, 0xc0, 0xab, 0xc0, 0xa7, 0xc0, 0x6f, 0xc0,
    0x6d, 0x00, 0xa9, 0xcc, 0xab, 0xc0, 0xa9, 0xc0, 0xa5, 0xc0, 0x6b, 0x00, 0xac, 0x00, 0xaa, 0xc0,
    0xaa, 0xc0, 0xa6, 0xc0, 0x6e, 0xc0, 0x6c, 0x00, 0xa8, 0xc0, 0xa8, 0xc0, 0xa4, 0xc0, 0x6a, 0xc0,
    0x38, 0xc0, 0x36, 0x00, 0xb7, 0x00, 0xb3, 0x00, 0x95, 0x00, 0x91, 0xc0, 0x9b, 0xc0, 0x99, 0xc0,
    0x97, 0x00, 0xaf, 0x00, 0x8d, 0xc0, 0x95, 0xc0, 0x37, 0xc0, 0x35, 0x00, 0xb6, 0x00, 0xb2, 0x00,
    0x94, 0x00, 0x90, 0xc0, 0x9a, 0xc0, 0x98, 0xc0, 0x96, 0x00, 0xae, 0x00, 0x8c, 0xc0, 0x94, 0x00,
    0xff, 0x01, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09, 0x31, 0x32,
    0x37, 0x2e, 0x30, 0x2e, 0x30, 0x2e, 0x31, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00,
    0x0a, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x00,
    0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00,
    0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08,
    0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03,
    0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02,
};

/* Classifies a copy of exactly len bytes, so that AddressSanitizer sees any overread. */
static dtls_dgram_kind_t classify(const uint8_t *data, size_t len, dtls_dgram_t *out)
{
    uint8_t *copy = malloc(len ? len : 1);
    cr_assert_not_null(copy);
    memcpy(copy, data, len);
    dtls_dgram_kind_t kind = dtls_dgram_classify(copy, len, out);
    free(copy);
    return kind;
}

Test(classify, real_first_hellos)
{
    dtls_dgram_t dg;
    cr_assert_eq(classify(hello_gnutls, sizeof(hello_gnutls), &dg), DTLS_DGRAM_HELLO);
    cr_assert_eq(dg.epoch, 0);
    cr_assert_eq(dg.cookie_len, 0);
    cr_assert_eq(dg.cookie_off, 61, "record, handshake header, version, random, empty ids");
    cr_assert_eq(classify(hello_openssl, sizeof(hello_openssl), &dg), DTLS_DGRAM_HELLO);
    cr_assert_eq(dg.cookie_len, 0);
}

Test(classify, not_hellos)
{
    const uint8_t coap[] = { 0x42, 0x02, 0x12, 0x34, 0xab, 0xcd, 0xb5, 'b', 'i', 'k', 'e', 's' };
    const uint8_t appdata[] = { 23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7, 0, 3, 1, 2, 3 };
    dtls_dgram_t dg;
    cr_assert_eq(classify(coap, sizeof(coap), &dg), DTLS_DGRAM_OTHER);
    cr_assert_eq(classify(appdata, sizeof(appdata), &dg), DTLS_DGRAM_OTHER);
    cr_assert_eq(classify(hello_gnutls, 0, &dg), DTLS_DGRAM_OTHER);
    cr_assert_eq(classify(hello_gnutls, 13, &dg), DTLS_DGRAM_OTHER, "too short for libcoap too");
}

/* Every prefix of a real hello: never read past it; what libcoap would take is never OTHER. */
Test(classify, every_truncation)
{
    dtls_dgram_t dg;
    for (size_t len = 0; len < sizeof(hello_gnutls); len++) {
        dtls_dgram_kind_t kind = classify(hello_gnutls, len, &dg);
        if (len < 14)
            cr_assert_eq(kind, DTLS_DGRAM_OTHER);
        else
            cr_assert_eq(kind, DTLS_DGRAM_MALFORMED, "%zu bytes: the record is cut", len);
    }
}

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint8_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint8_t)rng;
}

/* Random datagrams with libcoap's two ClientHello bytes: never OTHER, offsets inside. */
Test(classify, random_hellos)
{
    uint8_t d[160];
    dtls_dgram_t dg;
    int kinds[4] = { 0 };
    for (int i = 0; i < 200000; i++) {
        size_t len = 14 + rnd() % (sizeof(d) - 14);
        for (size_t k = 0; k < len; k++)
            d[k] = rnd();
        d[0] = 22;
        d[13] = 1;
        if (i % 2) { /* mostly plausible lengths, to reach the deeper checks */
            d[1] = 0xfe;
            d[3] = d[4] = 0;
            d[11] = 0;
            d[12] = (uint8_t)(len - 13 - rnd() % 3);
            d[14] = d[15] = d[19] = d[20] = d[21] = d[22] = d[23] = 0;
            d[16] = (uint8_t)(len - 25 - rnd() % 3);
            d[21] = rnd() % 4 ? 0 : rnd() % 8; /* now and then a later fragment */
            d[24] = (uint8_t)(d[16] - d[21]);
            d[59] = rnd() % 40;
        }
        dtls_dgram_kind_t kind = classify(d, len, &dg);
        cr_assert_neq(kind, DTLS_DGRAM_OTHER);
        if (kind == DTLS_DGRAM_HELLO)
            cr_assert_lt(dg.cookie_off + dg.cookie_len, len, "cookie and one byte more inside");
        kinds[kind]++;
    }
    cr_assert(kinds[DTLS_DGRAM_HELLO] > 1000 && kinds[DTLS_DGRAM_FRAGMENT] > 1000,
              "the deeper checks were reached: %d hellos, %d fragments, %d malformed",
              kinds[DTLS_DGRAM_HELLO], kinds[DTLS_DGRAM_FRAGMENT], kinds[DTLS_DGRAM_MALFORMED]);
}

/* A copy of hello with a cookie (or none, cookie_len 0) in place of its empty one. */
static size_t with_cookie(const uint8_t *hello, size_t len, const uint8_t *cookie,
                          size_t cookie_len, uint8_t *out)
{
    const size_t at = 60; /* the cookie's length byte, for an empty session id */
    memcpy(out, hello, at);
    out[at] = (uint8_t)cookie_len;
    memcpy(out + at + 1, cookie, cookie_len);
    memcpy(out + at + 1 + cookie_len, hello + at + 1, len - at - 1);
    size_t rec = len - 13 + cookie_len, body = len - 25 + cookie_len;
    out[11] = (uint8_t)(rec >> 8);
    out[12] = (uint8_t)rec;
    out[14] = out[22] = 0; /* handshake length and fragment length, 24 bits each */
    out[15] = out[23] = (uint8_t)(body >> 8);
    out[16] = out[24] = (uint8_t)body;
    return len + cookie_len;
}

Test(classify, cookie_fragment_epoch_and_lengths)
{
    uint8_t d[400], cookie[16];
    dtls_dgram_t dg;
    memset(cookie, 0xc0, sizeof(cookie));
    size_t n = with_cookie(hello_gnutls, sizeof(hello_gnutls), cookie, 16, d);
    cr_assert_eq(classify(d, n, &dg), DTLS_DGRAM_HELLO);
    cr_assert_eq(dg.cookie_len, 16);
    cr_assert_eq(memcmp(d + dg.cookie_off, cookie, 16), 0);

    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[4] = 1; /* epoch 1: no ClientHello, yet libcoap would open a session */
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_MALFORMED);
    cr_assert_eq(dg.epoch, 1);

    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[21] = 0x10; /* fragment offset 16, length 0xb3 - 16 */
    d[24] = 0xb3 - 0x10;
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_FRAGMENT);
    d[24] = 0xb3; /* offset + length past the message */
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_MALFORMED);

    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[59] = 33; /* session id longer than 32 */
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_MALFORMED);

    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[60] = 0xff; /* a cookie longer than the fragment */
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_MALFORMED);

    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[1] = 0x03; /* TLS, not DTLS */
    cr_assert_eq(classify(d, sizeof(hello_gnutls), &dg), DTLS_DGRAM_MALFORMED);
}

/* The gate over a UDP socket; "devices" are sockets of their own. */

static uint64_t fake_now = 1000000;

static uint64_t fake_clock(void)
{
    return fake_now;
}

static int udp(struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof(a);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    if (addr)
        *addr = a;
    return fd;
}

struct bench {
    int server;
    struct sockaddr_in addr;
    dtls_gate_t *gate;
};

static struct bench start(void)
{
    struct bench b;
    b.server = udp(&b.addr);
    b.gate = dtls_gate_new(b.server);
    cr_assert_not_null(b.gate);
    fake_now = 1000000;
    dtls_gate_set_clock(b.gate, fake_clock);
    return b;
}

static void stop(struct bench *b)
{
    dtls_gate_free(b->gate);
    close(b->server);
}

static void send_to(struct bench *b, int dev, const uint8_t *data, size_t len)
{
    cr_assert_eq(sendto(dev, data, len, 0, (struct sockaddr *)&b->addr, sizeof(b->addr)),
                 (ssize_t)len);
}

/* The gate's next verdict, all of the budget it may take. */
static int next(struct bench *b)
{
    unsigned budget = 64;
    return dtls_gate_next(b->gate, &budget);
}

/* A HelloVerifyRequest for dev, or 0 bytes when none came. */
static size_t answer(int dev, uint8_t *out, size_t size)
{
    ssize_t n = recv(dev, out, size, MSG_DONTWAIT);
    return n < 0 ? 0 : (size_t)n;
}

/* The cookie of a HelloVerifyRequest (RFC 6347 §4.2.1), checked field by field. */
static void hvr_cookie(const uint8_t *hvr, size_t len, uint8_t record_seq, uint8_t cookie[16])
{
    cr_assert_eq(len, 44, "record 13 + handshake 12 + version 2 + cookie 1 + 16");
    cr_assert_eq(hvr[0], 22);
    cr_assert_eq(hvr[10], record_seq, "the hello's record sequence number");
    cr_assert_eq(hvr[13], 3, "hello_verify_request");
    cr_assert_eq(hvr[27], 16);
    memcpy(cookie, hvr + 28, 16);
}

Test(gate, other_datagrams_stay_for_libcoap)
{
    struct bench b = start();
    int dev = udp(NULL);
    const uint8_t coap[] = { 0x42, 0x02, 0x12, 0x34, 0xab, 0xcd };
    uint8_t in[64];
    send_to(&b, dev, coap, sizeof(coap));
    cr_assert_eq(next(&b), 1);
    cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)sizeof(coap), "still at the head");
    cr_assert_eq(next(&b), 0, "empty");
    close(dev);
    stop(&b);
}

/* A DTLS 1.2 record of type type (application data 23, handshake 22), epoch 1, n bytes of body. */
static size_t record(uint8_t type, uint8_t tag, size_t n, uint8_t *out)
{
    const uint8_t head[] = { type, 0xfe, 0xfd, 0x00, 0x01, 0, 0, 0, 0, 0, tag, 0, (uint8_t)n };
    memcpy(out, head, sizeof(head));
    memset(out + sizeof(head), tag, n);
    return sizeof(head) + n;
}

/* Whether the kernel (or what emulates it) takes SO_PEEK_OFF on a UDP socket; left off. */
static bool peek_off_works(int fd)
{
    int off = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0)
        return false;
    off = -1;
    cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)), 0);
    return true;
}

/*
 * The records of data behind a record of data are counted without taking any:
 * up to a record of another kind or a hello, then the head is still the head.
 */
Test(gate, following_records_of_data_counted_not_taken)
{
    struct bench b = start();
    int dev = udp(NULL);
    uint8_t d[64], in[128];
    size_t lens[6];
    lens[0] = record(23, 1, 20, d), send_to(&b, dev, d, lens[0]);
    lens[1] = record(23, 2, 33, d), send_to(&b, dev, d, lens[1]);
    lens[2] = record(23, 3, 1, d), send_to(&b, dev, d, lens[2]);
    lens[3] = record(22, 4, 40, d), send_to(&b, dev, d, lens[3]); /* a Finished */
    lens[4] = record(23, 5, 20, d), send_to(&b, dev, d, lens[4]);

    cr_assert_eq(next(&b), 1, "a record of data: for libcoap");
    if (!peek_off_works(b.server)) {
        /* qemu-user, for one, passes SO_PEEK_OFF on to no socket: one datagram at a time. */
        cr_assert_eq(dtls_gate_following(b.gate, 32), 0, "nothing batched without SO_PEEK_OFF");
        cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)lens[0], "the head still first");
        cr_assert_eq(in[10], 1);
        close(dev);
        stop(&b);
        cr_skip_test("SO_PEEK_OFF unavailable here");
    }
    cr_assert_eq(dtls_gate_following(b.gate, 1), 1, "at most max");
    cr_assert_eq(dtls_gate_following(b.gate, 32), 2, "up to the handshake record");
    cr_assert_eq(dtls_gate_following(b.gate, 32), 2, "looking takes nothing");
    int off = 0;
    socklen_t ol = sizeof(off);
    cr_assert_eq(getsockopt(b.server, SOL_SOCKET, SO_PEEK_OFF, &off, &ol), 0);
    cr_assert_eq(off, -1, "SO_PEEK_OFF left on: the gate's next peek would miss the head");
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)lens[i], "datagram %d in order",
                     i);
        cr_assert_eq(in[10], i + 1);
    }
    cr_assert_eq(next(&b), 1);
    cr_assert_eq(dtls_gate_following(b.gate, 32), 0, "nothing batched behind a handshake record");
    cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)lens[3]);
    cr_assert_eq(next(&b), 1);
    cr_assert_eq(dtls_gate_following(b.gate, 32), 0, "the last one");
    cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)lens[4]);
    cr_assert_eq(in[10], 5);

    /* A hello behind data ends the batch: it goes to the gate at the head. */
    lens[0] = record(23, 6, 20, d), send_to(&b, dev, d, lens[0]);
    send_to(&b, dev, hello_gnutls, sizeof(hello_gnutls));
    cr_assert_eq(next(&b), 1);
    cr_assert_eq(dtls_gate_following(b.gate, 32), 0);
    cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)lens[0]);
    cr_assert_eq(next(&b), 0, "the hello: answered and taken");
    cr_assert_eq(dtls_gate_stats(b.gate)->hellos_answered, 1);
    close(dev);
    stop(&b);
}

Test(gate, first_hello_answered_then_verified)
{
    struct bench b = start();
    int dev = udp(NULL);
    uint8_t hello[400], hvr[128], cookie[16], in[512];
    memcpy(hello, hello_gnutls, sizeof(hello_gnutls));
    hello[10] = 5; /* record sequence number 5 */
    send_to(&b, dev, hello, sizeof(hello_gnutls));
    cr_assert_eq(next(&b), 0, "consumed and answered");
    cr_assert_eq(recv(b.server, in, sizeof(in), MSG_DONTWAIT), -1, "nothing left for libcoap");
    hvr_cookie(hvr, answer(dev, hvr, sizeof(hvr)), 5, cookie);
    cr_assert_eq(dtls_gate_stats(b.gate)->hellos_answered, 1);

    size_t n = with_cookie(hello_gnutls, sizeof(hello_gnutls), cookie, 16, hello);
    send_to(&b, dev, hello, n);
    cr_assert_eq(next(&b), 1, "a valid cookie: for libcoap");
    cr_assert_eq(recv(b.server, in, sizeof(in), 0), (ssize_t)n, "left at the head, whole");
    cr_assert_eq(dtls_gate_stats(b.gate)->peers_verified, 1);

    /* Within DTLS_GATE_VERIFIED_MS its hellos pass without the gate's cookie. */
    fake_now += DTLS_GATE_VERIFIED_MS - 1;
    send_to(&b, dev, hello_gnutls, sizeof(hello_gnutls));
    cr_assert_eq(next(&b), 1);
    recv(b.server, in, sizeof(in), 0);
    fake_now += 2;
    send_to(&b, dev, hello_gnutls, sizeof(hello_gnutls));
    cr_assert_eq(next(&b), 0, "forgotten: asked for a cookie again");
    cr_assert_eq(answer(dev, hvr, sizeof(hvr)), 44);
    cr_assert_eq(dtls_gate_stats(b.gate)->hellos_answered, 2);
    close(dev);
    stop(&b);
}

Test(gate, cookie_of_another_address_refused)
{
    struct bench b = start();
    int dev = udp(NULL), other = udp(NULL);
    uint8_t hello[400], hvr[128], cookie[16];
    send_to(&b, dev, hello_openssl, sizeof(hello_openssl));
    cr_assert_eq(next(&b), 0);
    hvr_cookie(hvr, answer(dev, hvr, sizeof(hvr)), 0, cookie);
    size_t n = with_cookie(hello_openssl, sizeof(hello_openssl), cookie, 16, hello);
    send_to(&b, other, hello, n);
    cr_assert_eq(next(&b), 0, "another port: another cookie");
    cr_assert_eq(answer(other, hvr, sizeof(hvr)), 44);
    cr_assert_eq(dtls_gate_stats(b.gate)->peers_verified, 0);
    close(dev);
    close(other);
    stop(&b);
}

Test(gate, malformed_and_fragments_dropped)
{
    struct bench b = start();
    int dev = udp(NULL);
    uint8_t d[400], in[64];
    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[4] = 1; /* epoch 1 */
    send_to(&b, dev, d, sizeof(hello_gnutls));
    memcpy(d, hello_gnutls, sizeof(hello_gnutls));
    d[21] = 0x10;
    d[24] = 0xb3 - 0x10;
    send_to(&b, dev, d, sizeof(hello_gnutls));
    send_to(&b, dev, hello_gnutls, 40); /* cut short */
    cr_assert_eq(next(&b), 0);
    cr_assert_eq(dtls_gate_stats(b.gate)->dropped, 3);
    cr_assert_eq(dtls_gate_stats(b.gate)->hellos_answered, 0);
    cr_assert_eq(answer(dev, in, sizeof(in)), 0, "no answer to what is not a hello");
    close(dev);
    stop(&b);
}

Test(gate, budget_bounds_one_turn)
{
    struct bench b = start();
    int dev = udp(NULL);
    for (int i = 0; i < 10; i++)
        send_to(&b, dev, hello_gnutls, sizeof(hello_gnutls));
    unsigned budget = 3;
    cr_assert_eq(dtls_gate_next(b.gate, &budget), 0);
    cr_assert_eq(budget, 0);
    cr_assert_eq(dtls_gate_stats(b.gate)->hellos_answered, 3);
    budget = 100;
    cr_assert_eq(dtls_gate_next(b.gate, &budget), 0);
    cr_assert_eq(budget, 93);
    close(dev);
    stop(&b);
}

/* A cookie is good for one to two key periods: one past its own, not two. */
Test(gate, key_rotation)
{
    struct bench b = start();
    int late = udp(NULL), later = udp(NULL);
    uint8_t hello[400], hvr[128], c1[16], c2[16];
    send_to(&b, late, hello_gnutls, sizeof(hello_gnutls));
    send_to(&b, later, hello_gnutls, sizeof(hello_gnutls));
    cr_assert_eq(next(&b), 0);
    hvr_cookie(hvr, answer(late, hvr, sizeof(hvr)), 0, c1);
    hvr_cookie(hvr, answer(later, hvr, sizeof(hvr)), 0, c2);

    fake_now += DTLS_GATE_KEY_MS + DTLS_GATE_KEY_MS / 2;
    size_t n = with_cookie(hello_gnutls, sizeof(hello_gnutls), c1, 16, hello);
    send_to(&b, late, hello, n);
    cr_assert_eq(next(&b), 1, "the previous key still verifies");
    recv(b.server, hello, sizeof(hello), 0);

    fake_now += DTLS_GATE_KEY_MS;
    n = with_cookie(hello_gnutls, sizeof(hello_gnutls), c2, 16, hello);
    send_to(&b, later, hello, n);
    cr_assert_eq(next(&b), 0, "two periods on, the cookie is refused");
    cr_assert_eq(answer(later, hvr, sizeof(hvr)), 44, "and a new one sent");
    cr_assert_eq(dtls_gate_stats(b.gate)->peers_verified, 1);
    close(late);
    close(later);
    stop(&b);
}

/* Outside the gate's hand-over, gnutls_dtls_cookie_verify is GnuTLS's own. */
static uint8_t pushed[128];
static size_t npushed;

static ssize_t capture(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
    (void)ptr;
    memcpy(pushed, data, len);
    npushed = len;
    return (ssize_t)len;
}

Test(gate, cookie_verify_is_gnutls_outside_the_gate)
{
    gnutls_datum_t key;
    gnutls_dtls_prestate_st pre;
    uint8_t client[] = "client 1", hello[400];
    cr_assert_eq(gnutls_key_generate(&key, GNUTLS_COOKIE_KEY_SIZE), 0);
    memset(&pre, 0, sizeof(pre));
    cr_assert_geq(gnutls_dtls_cookie_send(&key, client, sizeof(client), &pre, NULL, capture), 0);
    cr_assert_eq(npushed, 44);
    size_t n = with_cookie(hello_gnutls, sizeof(hello_gnutls), pushed + 28, 16, hello);
    cr_assert_eq(gnutls_dtls_cookie_verify(&key, client, sizeof(client), hello, n, &pre), 0);
    client[0] = 'C';
    cr_assert_lt(gnutls_dtls_cookie_verify(&key, client, sizeof(client), hello, n, &pre), 0);
    gnutls_free(key.data);
}

/* libcoap's DTLS socket found, taken from its epoll set and given back. */
static const coap_bin_const_t *no_key(coap_bin_const_t *id, coap_session_t *s, void *arg)
{
    (void)id;
    (void)s;
    (void)arg;
    return NULL;
}

static int coap_errors;

static void count_errors(coap_log_t level, const char *message)
{
    (void)message;
    if (level <= LOG_ERR)
        coap_errors++;
}

Test(gate, attach_to_libcoap)
{
    coap_startup();
    coap_set_log_handler(count_errors);
    coap_set_log_level(LOG_ERR);
    coap_context_t *ctx = coap_new_context(NULL);
    coap_dtls_spsk_t psk;
    memset(&psk, 0, sizeof(psk));
    psk.version = COAP_DTLS_SPSK_SETUP_VERSION;
    psk.validate_id_call_back = no_key;
    cr_assert(coap_context_set_psk2(ctx, &psk));

    struct sockaddr_in free_addr;
    close(udp(&free_addr));
    coap_address_t addr;
    coap_address_init(&addr);
    addr.addr.sin = free_addr;
    addr.size = sizeof(addr.addr.sin);
    cr_assert_not_null(coap_new_endpoint(ctx, &addr, COAP_PROTO_DTLS));

    coap_address_t elsewhere = addr;
    elsewhere.addr.sin.sin_port = htons(ntohs(free_addr.sin_port) ^ 1);
    cr_assert_null(dtls_gate_attach(ctx, &elsewhere), "no socket bound there");

    dtls_gate_t *g = dtls_gate_attach(ctx, &addr);
    cr_assert_not_null(g);
    struct sockaddr_in got;
    socklen_t len = sizeof(got);
    cr_assert_eq(getsockname(dtls_gate_fd(g), (struct sockaddr *)&got, &len), 0);
    cr_assert_eq(got.sin_port, free_addr.sin_port);
    dtls_gate_free(g);
    coap_free_context(ctx);
    cr_assert_eq(coap_errors, 0, "libcoap closed a socket that was in its epoll set again");
    coap_cleanup();
}
