/*
 * Duplicate detection by peer (session.h): answers are remembered per peer
 * (protocol, address, port, identity) for EXCHANGE_LIFETIME, past the end of
 * the peer's session, and peers without a session are bounded.
 *
 * A libcoap context without endpoints and a client session towards
 * 127.0.0.1 (a connected UDP socket; nothing is sent) stand in for the
 * server's sessions: the bridge's state of a session is made for it with
 * sess_get(), then given another peer port, so that one libcoap session plays
 * many peers, one after another (sess_close() ends each).
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <criterion/criterion.h>

#include "clock.h"
#include "session.h"

static coap_context_t *ctx;
static coap_session_t *cs[2];
static sessions_t *ss;

static coap_session_t *client_session(uint16_t port)
{
    coap_address_t dst;
    coap_address_init(&dst);
    dst.addr.sin.sin_family = AF_INET;
    dst.addr.sin.sin_port = htons(port);
    dst.addr.sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    dst.size = sizeof(dst.addr.sin);
    coap_session_t *s = coap_new_client_session(ctx, NULL, &dst, COAP_PROTO_UDP);
    cr_assert_not_null(s, "a libcoap session without a server");
    return s;
}

static void setup(void)
{
    coap_startup();
    coap_set_log_level(LOG_WARNING);
    ctx = coap_new_context(NULL);
    cr_assert_not_null(ctx);
    cs[0] = client_session(5683);
    cs[1] = client_session(5684);
    ss = sessions_new(ctx, 8, NULL, NULL, NULL);
    cr_assert_not_null(ss);
}

static void teardown(void)
{
    sessions_free(ss);
    coap_session_release(cs[0]);
    coap_session_release(cs[1]);
    coap_free_context(ctx);
    coap_cleanup();
}

TestSuite(dedup, .init = setup, .fini = teardown);

/* The bridge's state of libcoap session i, as the peer at 127.0.0.1:port. */
static sess_t *open_as(int i, uint16_t port)
{
    sess_t *s = sess_get(ss, cs[i]);
    cr_assert_not_null(s);
    cr_assert_null(s->peer, "a new session state");
    cr_assert_eq(s->remote.addr.sa.sa_family, AF_INET);
    s->remote.addr.sin.sin_port = htons(port);
    return s;
}

static void close_as(int i)
{
    sess_close(ss, cs[i]);
}

static uint64_t peers(void)
{
    struct sessions_stats st;
    sessions_stats(ss, &st);
    return st.peers;
}

Test(dedup, an_answer_is_found_within_exchange_lifetime)
{
    sess_t *s = open_as(0, 40000);
    uint64_t before = gw_now_ms();
    struct dedup *d = sess_dedup_add(s, NULL, 0x1234, 204, NO_BLOCK1, -1);
    cr_assert(d->used);
    cr_assert_geq(d->at_ms, before);
    cr_assert_leq(d->at_ms, gw_now_ms());
    uint64_t at = d->at_ms;

    const struct dedup *f = sess_dedup_find(s, NULL, 0x1234, at);
    cr_assert_eq(f, d);
    cr_assert_eq(f->code, 204);
    cr_assert_eq(f->block1, NO_BLOCK1);
    cr_assert_eq(f->max_age, 0);
    cr_assert_null(sess_dedup_find(s, NULL, 0x1235, at), "another Message ID");
    cr_assert_eq(sess_dedup_find(s, NULL, 0x1234, at + EXCHANGE_LIFETIME_MS - 1), d);
    cr_assert_null(sess_dedup_find(s, NULL, 0x1234, at + EXCHANGE_LIFETIME_MS),
                   "forgotten after EXCHANGE_LIFETIME");
    close_as(0);
}

Test(dedup, the_answer_is_kept_as_given)
{
    sess_t *s = open_as(0, 40000);
    sess_dedup_add(s, NULL, 7, 503, 0x1a, 5);
    const struct dedup *f = sess_dedup_find(s, NULL, 7, gw_now_ms());
    cr_assert_not_null(f);
    cr_assert_eq(f->code, 503);
    cr_assert_eq(f->block1, 0x1a);
    cr_assert_eq(f->max_age, 5);
    close_as(0);
}

Test(dedup, outlives_the_session)
{
    sess_t *s = open_as(0, 40000);
    sess_dedup_add(s, "dev-a", 0x42, 204, NO_BLOCK1, -1);
    close_as(0);
    cr_assert_eq(peers(), 1, "the peer is kept without its session");
    /* The device comes back (e.g. after an eviction) and retransmits. */
    s = open_as(0, 40000);
    const struct dedup *f = sess_dedup_find(s, "dev-a", 0x42, gw_now_ms());
    cr_assert_not_null(f, "a retransmission after the session ended is a duplicate");
    cr_assert_eq(f->code, 204);
    cr_assert_eq(peers(), 1, "the same peer, found again");
    close_as(0);
}

Test(dedup, another_port_is_another_peer)
{
    sess_t *s = open_as(0, 40000);
    sess_dedup_add(s, "dev-a", 0x42, 204, NO_BLOCK1, -1);
    close_as(0);
    s = open_as(0, 40001);
    cr_assert_null(sess_dedup_find(s, "dev-a", 0x42, gw_now_ms()));
    cr_assert_eq(peers(), 2);
    close_as(0);
}

Test(dedup, another_address_is_another_peer)
{
    sess_t *s = open_as(0, 40000);
    sess_dedup_add(s, NULL, 0x42, 204, NO_BLOCK1, -1);
    close_as(0);
    s = open_as(0, 40000);
    s->remote.addr.sin.sin_addr.s_addr = htonl(0x7f000002); /* 127.0.0.2 */
    cr_assert_null(sess_dedup_find(s, NULL, 0x42, gw_now_ms()));
    close_as(0);
}

Test(dedup, another_identity_is_another_peer)
{
    sess_t *s = open_as(0, 40000);
    sess_dedup_add(s, "dev-a", 0x42, 204, NO_BLOCK1, -1);
    close_as(0);
    s = open_as(0, 40000);
    cr_assert_null(sess_dedup_find(s, "dev-b", 0x42, gw_now_ms()),
                   "same address and port, another device");
    close_as(0);
    s = open_as(0, 40000);
    cr_assert_null(sess_dedup_find(s, NULL, 0x42, gw_now_ms()), "anonymous is not dev-a");
    close_as(0);
    s = open_as(0, 40000);
    cr_assert_not_null(sess_dedup_find(s, "dev-a", 0x42, gw_now_ms()));
    close_as(0);
    /* The peers looked up with no answer recorded are not kept without a session. */
    cr_assert_eq(peers(), 1);
}

Test(dedup, a_pending_answer_is_found_by_publish_id)
{
    sess_t *s = open_as(0, 40000);
    cr_assert_null(sess_dedup_pending(s, 77), "no peer yet");
    struct dedup *d = sess_dedup_add(s, NULL, 9, CODE_PENDING, NO_BLOCK1, -1);
    d->pending = 77;
    cr_assert_eq(sess_dedup_pending(s, 77), d);
    cr_assert_null(sess_dedup_pending(s, 78));
    /* Answered: no longer pending. */
    d->code = 204;
    cr_assert_null(sess_dedup_pending(s, 77));
    close_as(0);
}

Test(dedup, the_slots_of_a_peer_are_a_ring)
{
    sess_t *s = open_as(0, 40000);
    for (uint16_t mid = 0; mid <= DEDUP_SLOTS; mid++)
        sess_dedup_add(s, NULL, mid, 204, NO_BLOCK1, -1);
    uint64_t now = gw_now_ms();
    cr_assert_null(sess_dedup_find(s, NULL, 0, now), "the oldest answer is overwritten");
    for (uint16_t mid = 1; mid <= DEDUP_SLOTS; mid++)
        cr_assert_not_null(sess_dedup_find(s, NULL, mid, now), "MID %u kept", mid);
    close_as(0);
}

/* n peers, one after another, each with one answer (Message ID = its index). */
static void many_peers(unsigned n, uint16_t base)
{
    for (unsigned i = 0; i < n; i++) {
        sess_t *s = open_as(1, (uint16_t)(base + i));
        sess_dedup_add(s, NULL, (uint16_t)i, 204, NO_BLOCK1, -1);
        close_as(1);
    }
}

Test(dedup, peers_without_a_session_are_bounded_oldest_first)
{
    /* A peer that keeps its session is not one of them. */
    sess_t *live = open_as(0, 20000);
    sess_dedup_add(live, NULL, 0xbeef, 204, NO_BLOCK1, -1);

    unsigned n = SESS_PEERS_MIN + 10;
    many_peers(n, 30000);
    cr_assert_eq(peers(), SESS_PEERS_MIN + 1, "SESS_PEERS_MIN without a session, and the live one");
    uint64_t now = gw_now_ms();
    cr_assert_not_null(sess_dedup_find(live, NULL, 0xbeef, now), "the live peer is kept");

    /* The newest is remembered... */
    sess_t *s = open_as(1, (uint16_t)(30000 + n - 1));
    cr_assert_not_null(sess_dedup_find(s, NULL, (uint16_t)(n - 1), now));
    close_as(1);
    /* ...the 10th oldest too, the first 10 are gone. */
    s = open_as(1, 30000 + 10);
    cr_assert_not_null(sess_dedup_find(s, NULL, 10, now));
    close_as(1);
    for (unsigned i = 0; i < 10; i++) {
        s = open_as(1, (uint16_t)(30000 + i));
        cr_assert_null(sess_dedup_find(s, NULL, (uint16_t)i, now), "peer %u dropped", i);
        close_as(1);
    }
    cr_assert_eq(peers(), SESS_PEERS_MIN + 1);
    close_as(0);
}

Test(dedup, the_bound_follows_max_sessions_above_the_minimum)
{
    unsigned max = SESS_PEERS_MIN + 100;
    sessions_set_max(ss, max);
    many_peers(max + 20, 30000);
    cr_assert_eq(peers(), max);
    sess_t *s = open_as(1, 30000 + 20);
    cr_assert_not_null(sess_dedup_find(s, NULL, 20, gw_now_ms()));
    close_as(1);
    s = open_as(1, 30000 + 19);
    cr_assert_null(sess_dedup_find(s, NULL, 19, gw_now_ms()));
    close_as(1);
}
