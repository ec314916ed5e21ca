/*
 * The MQTT client (mqtt/client.c, client_out.c) and its link (mqtt/link.c)
 * against a scripted broker: a loopback TCP listener in the test that reads
 * the client's packets with the codec and answers as each test says, while
 * the client runs on its own loop. Everything waited for is waited for with
 * a bound.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"
#include "clock.h"
#include "packet.h"

#define WAIT_MS 5000
#define BUF_MAX (1 << 20)

/* ------------------------------------------------------------------ the scripted broker */

static int lfd = -1, bfd = -1, port;
static uint8_t rbuf[BUF_MAX], last[BUF_MAX];
static size_t rlen, last_len;
static int bversion = MQTT_V5;
static mqtt_packet_t pkt;

static ev_loop_t *loop;
static mqtt_client_t *cl;

/* What the client told its owner. */
static struct {
    int connected, session, lost, lost_err, subscribed, messages;
    char why[700];
    size_t nacked;
    uint64_t acked[128];
    int reasons[128];
    uint8_t codes[8];
    size_t ncodes;
    char topic[256], ctype[64], payload[256];
    bool has_expiry;
    uint32_t expiry;
    int qos;
} seen;

static void on_connected(void *d, bool session)
{
    (void)d;
    seen.connected++;
    seen.session = session;
}
static void on_lost(void *d, int err, const char *why)
{
    (void)d;
    seen.lost++;
    seen.lost_err = err;
    snprintf(seen.why, sizeof(seen.why), "%s", why);
}
static void on_acked(void *d, uint64_t id, int reason)
{
    (void)d;
    cr_assert_lt(seen.nacked, 128);
    seen.reasons[seen.nacked] = reason;
    seen.acked[seen.nacked++] = id;
}
static void on_subscribed(void *d, uint64_t id, size_t n, const uint8_t *codes)
{
    (void)d;
    (void)id;
    seen.subscribed++;
    seen.ncodes = n;
    memcpy(seen.codes, codes, n < 8 ? n : 8);
}
static void on_message(void *d, const mqtt_incoming_t *m)
{
    (void)d;
    seen.messages++;
    snprintf(seen.topic, sizeof(seen.topic), "%s", m->topic);
    snprintf(seen.ctype, sizeof(seen.ctype), "%s", m->content_type ? m->content_type : "");
    snprintf(seen.payload, sizeof(seen.payload), "%.*s", (int)m->len, (const char *)m->payload);
    seen.has_expiry = m->has_expiry;
    seen.expiry = m->expiry;
    seen.qos = m->qos;
}

static struct {
    size_t n;
    uint64_t id[64];
    uint16_t pid[64];
} sent;
static void on_sent(void *d, uint64_t id, uint16_t pid)
{
    (void)d;
    cr_assert_lt(sent.n, 64);
    sent.id[sent.n] = id;
    sent.pid[sent.n++] = pid;
}

static const mqtt_client_handlers_t handlers = { on_connected,  on_lost,    on_acked,
                                                 on_subscribed, on_message, on_sent };

static void bk_listen(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof(a);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    cr_assert_geq(lfd, 0);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    port = ntohs(a.sin_port);
}

static void setup(void)
{
    memset(&seen, 0, sizeof(seen));
    memset(&sent, 0, sizeof(sent));
    loop = ev_new();
    cr_assert(loop);
    bk_listen();
}

static void teardown(void)
{
    mqtt_client_free(cl);
    cl = NULL;
    if (bfd >= 0)
        close(bfd);
    if (lfd >= 0)
        close(lfd);
    bfd = lfd = -1;
    ev_free(loop);
}

/* Turns the client's loop until cond holds, for WAIT_MS at most. */
#define TURN_UNTIL(cond)                                                                           \
    do {                                                                                           \
        uint64_t until_ = gw_now_ms() + WAIT_MS;                                                   \
        bool ok_;                                                                                  \
        while (!(ok_ = (cond)) && gw_now_ms() < until_)                                            \
            ev_turn(loop, 10);                                                                     \
        cr_assert(ok_, "waited in vain for " #cond);                                               \
    } while (0)

static void bk_accept(void)
{
    if (bfd >= 0)
        close(bfd);
    bfd = -1;
    rlen = 0;
    TURN_UNTIL((bfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0);
}

/* Reads what the client sent into rbuf, without waiting. */
static void bk_pull(void)
{
    ssize_t n = recv(bfd, rbuf + rlen, sizeof(rbuf) - rlen, 0);
    if (n > 0)
        rlen += (size_t)n;
}

/* The next packet from the client, into pkt (its bytes in last). */
static void bk_read(void)
{
    size_t plen = 0;
    uint64_t until = gw_now_ms() + WAIT_MS;
    for (;;) {
        int rc = mqtt_frame(rbuf, rlen, BUF_MAX, &plen);
        cr_assert_geq(rc, 0, "the client sent a malformed frame");
        if (rc == 1)
            break;
        cr_assert_lt(gw_now_ms(), until, "no packet from the client");
        ev_turn(loop, 5);
        bk_pull();
    }
    memcpy(last, rbuf, plen);
    last_len = plen;
    memmove(rbuf, rbuf + plen, rlen - plen);
    rlen -= plen;
    int version = last[0] >> 4 == MQTT_CONNECT ? MQTT_V5 : bversion;
    cr_assert_eq(mqtt_decode(last, plen, version, &pkt), 0, "the client sent a bad packet");
}

static void bk_expect(enum mqtt_type type)
{
    bk_read();
    cr_assert_eq(pkt.type, type, "expected %s, got %s", mqtt_type_name(type),
                 mqtt_type_name(pkt.type));
}

/* Nothing comes from the client for ms. */
static void bk_quiet(int ms)
{
    uint64_t until = gw_now_ms() + (uint64_t)ms;
    while (gw_now_ms() < until) {
        ev_turn(loop, 5);
        bk_pull();
    }
    cr_assert_eq(rlen, 0, "the client sent %zu bytes it should not have", rlen);
}

static void bk_send_raw(const void *buf, size_t len)
{
    cr_assert_eq(send(bfd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

static void bk_send(const mqtt_packet_t *p)
{
    static uint8_t out[BUF_MAX];
    ssize_t n = mqtt_encode(p, bversion, out, sizeof(out));
    cr_assert_gt(n, 0);
    bk_send_raw(out, (size_t)n);
}

static void bk_ack(enum mqtt_type type, uint16_t id, uint8_t reason)
{
    mqtt_packet_t p = { .type = type };
    p.u.ack.id = id;
    p.u.ack.reason = reason;
    bk_send(&p);
}

static mqtt_client_options_t options(void)
{
    static char uri[64];
    snprintf(uri, sizeof(uri), "mqtt://127.0.0.1:%d", port);
    return (mqtt_client_options_t){ .uri = uri,
                                    .client_id = "gw-test",
                                    .version = bversion,
                                    .keepalive_s = 60,
                                    .clean_start = true,
                                    .max_inflight = 20,
                                    .backoff_min_ms = 20,
                                    .backoff_max_ms = 50 };
}

static void start(const mqtt_client_options_t *o)
{
    char err[256];
    cl = mqtt_client_new(loop, o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl, "%s", err);
    cr_assert_eq(mqtt_client_start(cl), 0);
    bk_accept();
    bk_expect(MQTT_CONNECT);
}

/* CONNACK with session_present, and a property (0: none). */
static void connack_with(bool session, uint8_t prop, uint32_t value)
{
    mqtt_packet_t p = { .type = MQTT_CONNACK };
    p.u.connack.session_present = session;
    if (prop)
        mqtt_prop_set_value(&p.u.connack.props, prop, value);
    int before = seen.connected;
    bk_send(&p);
    TURN_UNTIL(seen.connected > before);
}

static int publish(const char *topic, const char *payload, int qos, uint64_t id)
{
    mqtt_message_t m = { .topic = topic, .payload = payload, .len = strlen(payload), .qos = qos };
    return mqtt_client_publish(cl, &m, id);
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 30);

/* ------------------------------------------------------------------ CONNECT */

Test(client, connect_carries_will_credentials_and_session)
{
    mqtt_client_options_t o = options();
    o.username = "gw";
    o.password = "s3cret";
    o.status_topic = "gw/status";
    o.clean_start = false;
    o.keepalive_s = 30;
    start(&o);
    mqtt_connect_t *cn = &pkt.u.connect;
    cr_assert_eq(cn->version, MQTT_V5);
    cr_assert_not(cn->clean_start);
    cr_assert_eq(cn->keepalive, 30);
    const mqtt_prop_t *se = mqtt_prop_find(&cn->props, MQTT_PROP_SESSION_EXPIRY);
    cr_assert(se && se->value == 0xFFFFFFFFu, "a session that outlives the connection");
    cr_assert(cn->will && cn->will_retain && cn->will_qos == 1);
    cr_assert_eq(cn->will_topic.len, 9);
    cr_assert_eq(memcmp(cn->will_topic.p, "gw/status", 9), 0);
    cr_assert_eq(memcmp(cn->will_payload.p, "offline", 7), 0);
    cr_assert(cn->has_username && cn->has_password);
    cr_assert_eq(memcmp(cn->password.p, "s3cret", 6), 0);
    connack_with(false, 0, 0);
    cr_assert(mqtt_client_connected(cl));
    cr_assert_not(seen.session);
}

Test(client, connect_in_mqtt_311)
{
    bversion = MQTT_V311;
    mqtt_client_options_t o = options();
    start(&o);
    cr_assert_eq(pkt.u.connect.version, MQTT_V311);
    connack_with(false, 0, 0);
    cr_assert_eq(publish("t/1", "x", 1, 5), 0);
    bk_expect(MQTT_PUBLISH);
    bk_ack(MQTT_PUBACK, pkt.u.publish.id, 0);
    TURN_UNTIL(seen.nacked == 1);
    cr_assert_eq(seen.acked[0], 5);
}

/* ------------------------------------------------------------------ CONNACK refused */

static void refused_with(uint8_t reason)
{
    mqtt_client_options_t o = options();
    start(&o);
    mqtt_packet_t p = { .type = MQTT_CONNACK };
    p.u.connack.reason = reason;
    bk_send(&p);
    TURN_UNTIL(seen.lost == 1);
    cr_assert_not(mqtt_client_connected(cl));
    cr_assert_eq(seen.connected, 0);
}

Test(client, connack_refused_v5_says_why)
{
    refused_with(0x86);
    cr_assert_eq(seen.lost_err, -EPERM);
    cr_assert(strstr(seen.why, "refused the connection: bad user name or password"), "%s",
              seen.why);
    /* and it tries again */
    bk_accept();
    bk_expect(MQTT_CONNECT);
}

Test(client, connack_refused_311_says_why)
{
    bversion = MQTT_V311;
    refused_with(5);
    cr_assert_eq(seen.lost_err, -EPERM);
    cr_assert(strstr(seen.why, "not authorized"), "%s", seen.why);
}

Test(client, connack_server_unavailable)
{
    refused_with(0x88);
    cr_assert_eq(seen.lost_err, -ECONNABORTED);
    cr_assert(strstr(seen.why, "server unavailable"), "%s", seen.why);
}

/* ------------------------------------------------------------------ publishing */

Test(client, qos1_publish_with_properties_is_acknowledged)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    mqtt_message_t m = { .topic = "up/d1",
                         .payload = "{\"t\":1}",
                         .len = 7,
                         .qos = 1,
                         .content_type = "application/json",
                         .utf8 = true,
                         .device = "d1" };
    cr_assert_eq(mqtt_client_publish(cl, &m, 41), 0);
    cr_assert_eq(publish("up/d2", "x", 1, 42), 0);
    bk_expect(MQTT_PUBLISH);
    mqtt_publish_t *pb = &pkt.u.publish;
    cr_assert_eq(pb->qos, 1);
    cr_assert_not(pb->dup);
    const mqtt_prop_t *ct = mqtt_prop_find(&pb->props, MQTT_PROP_CONTENT_TYPE);
    cr_assert(ct && ct->data.len == 16 && !memcmp(ct->data.p, "application/json", 16));
    const mqtt_prop_t *pf = mqtt_prop_find(&pb->props, MQTT_PROP_PAYLOAD_FORMAT);
    cr_assert(pf && pf->value == 1);
    const mqtt_prop_t *up = mqtt_prop_find(&pb->props, MQTT_PROP_USER);
    cr_assert(up && up->data.len == 6 && !memcmp(up->data.p, "device", 6));
    cr_assert(up->data2.len == 2 && !memcmp(up->data2.p, "d1", 2));
    uint16_t first = pb->id;
    bk_expect(MQTT_PUBLISH);
    uint16_t second = pkt.u.publish.id;
    cr_assert_neq(first, second);
    bk_ack(MQTT_PUBACK, second, 0x87);
    bk_ack(MQTT_PUBACK, first, 0);
    TURN_UNTIL(seen.nacked == 2);
    cr_assert_eq(seen.acked[0], 42);
    cr_assert_eq(seen.reasons[0], 0x87, "the broker's refusal is reported with its reason");
    cr_assert_eq(seen.acked[1], 41);
    cr_assert_eq(seen.reasons[1], 0);
    cr_assert_eq(mqtt_client_unacked(cl), 0);
}

Test(client, publish_while_disconnected_is_refused)
{
    mqtt_client_options_t o = options();
    char err[256];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl);
    cr_assert_eq(publish("t", "x", 1, 1), -ENOTCONN);
}

Test(client, qos2_publish_goes_through_pubrel)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    cr_assert_eq(publish("t/2", "two", 2, 7), 0);
    bk_expect(MQTT_PUBLISH);
    cr_assert_eq(pkt.u.publish.qos, 2);
    uint16_t id = pkt.u.publish.id;
    bk_ack(MQTT_PUBREC, id, 0);
    bk_expect(MQTT_PUBREL);
    cr_assert_eq(pkt.u.ack.id, id);
    cr_assert_eq(seen.nacked, 0, "not done before PUBCOMP");
    bk_ack(MQTT_PUBCOMP, id, 0);
    TURN_UNTIL(seen.nacked == 1);
    cr_assert_eq(seen.acked[0], 7);
}

Test(client, receive_maximum_is_never_exceeded)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, MQTT_PROP_RECEIVE_MAXIMUM, 2);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(publish("t/rm", "x", 1 + i % 2, (uint64_t)i), 0);
    uint16_t ids[6];
    uint8_t qos[6];
    for (int i = 0; i < 2; i++) {
        bk_expect(MQTT_PUBLISH);
        ids[i] = pkt.u.publish.id;
        qos[i] = pkt.u.publish.qos;
    }
    bk_quiet(200);
    /* Each acknowledgement lets exactly one more go. */
    for (int i = 2; i < 6; i++) {
        if (qos[i - 2] == 1) {
            bk_ack(MQTT_PUBACK, ids[i - 2], 0);
        } else {
            bk_ack(MQTT_PUBREC, ids[i - 2], 0);
            bk_expect(MQTT_PUBREL);
            bk_quiet(50); /* a QoS 2 publish still counts until its PUBCOMP */
            bk_ack(MQTT_PUBCOMP, ids[i - 2], 0);
        }
        bk_expect(MQTT_PUBLISH);
        ids[i] = pkt.u.publish.id;
        qos[i] = pkt.u.publish.qos;
        bk_quiet(50);
    }
    cr_assert_eq(mqtt_client_unacked(cl), 2);
}

Test(client, max_inflight_bounds_a_generous_broker)
{
    mqtt_client_options_t o = options();
    o.max_inflight = 1;
    start(&o);
    connack_with(false, 0, 0);
    cr_assert_eq(publish("t", "a", 1, 1), 0);
    cr_assert_eq(publish("t", "b", 1, 2), 0);
    bk_expect(MQTT_PUBLISH);
    bk_quiet(100);
    bk_ack(MQTT_PUBACK, pkt.u.publish.id, 0);
    bk_expect(MQTT_PUBLISH);
    cr_assert_eq(pkt.u.publish.payload.p[0], 'b');
    /* A wider window lets what waits go at once. */
    cr_assert_eq(publish("t", "c", 1, 3), 0);
    cr_assert_eq(publish("t", "d", 1, 4), 0);
    bk_quiet(50);
    mqtt_client_set_max_inflight(cl, 3);
    bk_expect(MQTT_PUBLISH);
    cr_assert_eq(pkt.u.publish.payload.p[0], 'c');
    bk_expect(MQTT_PUBLISH);
    cr_assert_eq(pkt.u.publish.payload.p[0], 'd');
}

/* MQTT 3.1.1 cannot learn the broker's window: it keeps within the one brokers have (Mosquitto: 20). */
Test(client, mqtt_311_keeps_within_the_brokers_window)
{
    bversion = MQTT_V311;
    mqtt_client_options_t o = options();
    o.max_inflight = 1000;
    start(&o);
    connack_with(false, 0, 0);
    for (int i = 0; i < MQTT_V311_INFLIGHT_MAX + 5; i++)
        cr_assert_eq(publish("t/w", "x", 2, (uint64_t)i), 0);
    uint16_t first = 0;
    for (int i = 0; i < MQTT_V311_INFLIGHT_MAX; i++) {
        bk_expect(MQTT_PUBLISH);
        if (i == 0)
            first = pkt.u.publish.id;
    }
    bk_quiet(200);
    cr_assert_eq(mqtt_client_unacked(cl), MQTT_V311_INFLIGHT_MAX + 5);
    /* One completed lets one more go. */
    bk_ack(MQTT_PUBREC, first, 0);
    bk_expect(MQTT_PUBREL);
    bk_quiet(50);
    bk_ack(MQTT_PUBCOMP, first, 0);
    bk_expect(MQTT_PUBLISH);
    bk_quiet(50);
}

Test(client, one_turn_of_publishes_goes_in_one_write)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    size_t total = 0;
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(publish("t/batch", "0123456789", i % 3, (uint64_t)i), 0);
        total += 2 + 2 + 7 + (i % 3 ? 2 : 0) + 1 + 10; /* header, topic, id, properties, payload */
    }
    uint64_t writes = mqtt_client_stats(cl)->writes;
    bk_pull();
    cr_assert_eq(rlen, 0, "nothing is written before the end of the turn");
    ev_turn(loop, 0); /* the flush is due at once */
    cr_assert_eq(mqtt_client_stats(cl)->writes, writes + 1, "one write for the turn");
    uint64_t until = gw_now_ms() + WAIT_MS;
    while (rlen == 0 && gw_now_ms() < until)
        bk_pull();
    cr_assert_eq(rlen, total, "all ten in the first read (%zu of %zu bytes)", rlen, total);
}

/* ------------------------------------------------------------------ Maximum Packet Size */

Test(client, maximum_packet_size_is_honoured)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, MQTT_PROP_MAXIMUM_PACKET_SIZE, 100);
    static char big[200];
    memset(big, 'x', sizeof(big) - 1);
    mqtt_message_t m = {
        .topic = "t/size", .payload = big, .qos = 1, .content_type = "text/plain"
    };
    size_t room = mqtt_client_payload_room(cl, &m);
    cr_assert_gt(room, 0);
    cr_assert_lt(room, 100);
    m.len = room + 1;
    cr_assert_eq(mqtt_client_publish(cl, &m, 1), -EMSGSIZE);
    m.len = room;
    cr_assert_eq(mqtt_client_publish(cl, &m, 2), 0);
    bk_expect(MQTT_PUBLISH);
    cr_assert_eq(last_len, 100, "the room is used to the byte");
    cr_assert_eq(pkt.u.publish.payload.len, room);
}

Test(client, no_maximum_packet_size_means_no_limit)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    mqtt_message_t m = { .topic = "t", .qos = 1 };
    cr_assert_eq(mqtt_client_payload_room(cl, &m), SIZE_MAX);
}

/* ------------------------------------------------------------------ sessions */

/* Publishes A (QoS 1) and B (QoS 2, PUBREC'd), then the broker drops the connection. */
static void two_in_flight(uint16_t *a, uint16_t *b)
{
    mqtt_client_options_t o = options();
    o.clean_start = false;
    start(&o);
    connack_with(false, 0, 0);
    cr_assert_eq(publish("t/a", "A", 1, 100), 0);
    cr_assert_eq(publish("t/b", "B", 2, 200), 0);
    bk_expect(MQTT_PUBLISH);
    *a = pkt.u.publish.id;
    bk_expect(MQTT_PUBLISH);
    *b = pkt.u.publish.id;
    bk_ack(MQTT_PUBREC, *b, 0);
    bk_expect(MQTT_PUBREL);
    close(bfd);
    bfd = -1;
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(mqtt_client_unacked(cl), 2);
    bk_accept();
    bk_expect(MQTT_CONNECT);
    cr_assert_not(pkt.u.connect.clean_start);
}

Test(client, session_resumed_resends_with_dup_and_completes_pubrel)
{
    uint16_t a, b;
    two_in_flight(&a, &b);
    connack_with(true, 0, 0);
    cr_assert(seen.session);
    bk_expect(MQTT_PUBLISH);
    cr_assert(pkt.u.publish.dup, "sent again with DUP");
    cr_assert_eq(pkt.u.publish.id, a, "with its packet identifier");
    cr_assert_eq(pkt.u.publish.payload.p[0], 'A');
    bk_expect(MQTT_PUBREL);
    cr_assert_eq(pkt.u.ack.id, b);
    bk_quiet(50);
    bk_ack(MQTT_PUBACK, a, 0);
    bk_ack(MQTT_PUBCOMP, b, 0);
    TURN_UNTIL(seen.nacked == 2);
    cr_assert_eq(seen.acked[0], 100);
    cr_assert_eq(seen.acked[1], 200);
}

Test(client, no_session_resends_as_new_publishes)
{
    uint16_t a, b;
    two_in_flight(&a, &b);
    connack_with(false, 0, 0);
    cr_assert_not(seen.session);
    bk_expect(MQTT_PUBLISH);
    cr_assert_not(pkt.u.publish.dup);
    cr_assert_eq(pkt.u.publish.payload.p[0], 'A');
    uint16_t a2 = pkt.u.publish.id;
    bk_expect(MQTT_PUBLISH);
    cr_assert_not(pkt.u.publish.dup);
    cr_assert_eq(pkt.u.publish.payload.p[0], 'B', "nothing lost: B goes again from the start");
    uint16_t b2 = pkt.u.publish.id;
    bk_ack(MQTT_PUBACK, a2, 0);
    bk_ack(MQTT_PUBREC, b2, 0);
    bk_expect(MQTT_PUBREL);
    bk_ack(MQTT_PUBCOMP, b2, 0);
    TURN_UNTIL(seen.nacked == 2);
    cr_assert_eq(mqtt_client_unacked(cl), 0);
}

/*
 * A QoS 2 publish PUBREC'd by the broker, then the gateway restarts (a new
 * client) before the PUBREL went out: the broker holds its identifier. The
 * new client, told the identifier, sends it again with DUP under it when the
 * session is resumed, and gives new publishes other identifiers.
 */
Test(client, publish_of_an_earlier_client_goes_again_under_its_identifier)
{
    mqtt_client_options_t o = options();
    o.clean_start = false;
    start(&o);
    connack_with(false, 0, 0);
    cr_assert_eq(publish("t/q2", "A", 2, 100), 0);
    bk_expect(MQTT_PUBLISH);
    uint16_t held = pkt.u.publish.id;
    cr_assert_eq(sent.n, 1, "the identifier is told to the owner");
    cr_assert_eq(sent.id[0], 100);
    cr_assert_eq(sent.pid[0], held);
    mqtt_client_free(cl); /* killed: the PUBREC never read */
    cl = NULL;
    close(bfd);
    bfd = -1;

    cl = mqtt_client_new(loop, &o, &handlers, NULL, (char[64]){ 0 }, 64);
    cr_assert(cl);
    mqtt_client_reserve_id(cl, held);
    cr_assert_eq(mqtt_client_start(cl), 0);
    bk_accept();
    bk_expect(MQTT_CONNECT);
    connack_with(true, 0, 0);
    /* New publishes first: none may take the identifier the broker holds. */
    for (int i = 0; i < 3; i++)
        cr_assert_eq(publish("t/q2", "new", 2, (uint64_t)(200 + i)), 0);
    mqtt_message_t m = { .topic = "t/q2", .payload = "A", .len = 1, .qos = 2 };
    cr_assert_eq(mqtt_client_publish_again(cl, &m, 100, held), 0);
    for (int i = 0; i < 4; i++) {
        bk_expect(MQTT_PUBLISH);
        if (pkt.u.publish.payload.p[0] == 'A') {
            cr_assert(pkt.u.publish.dup, "sent again with DUP");
            cr_assert_eq(pkt.u.publish.id, held, "under the identifier the broker holds");
        } else {
            cr_assert_neq(pkt.u.publish.id, held, "a new publish under a held identifier");
            cr_assert_not(pkt.u.publish.dup);
        }
    }
    bk_ack(MQTT_PUBREC, held, 0);
    bk_expect(MQTT_PUBREL);
    cr_assert_eq(pkt.u.ack.id, held);
    bk_ack(MQTT_PUBCOMP, held, 0);
    TURN_UNTIL(seen.nacked == 1);
    cr_assert_eq(seen.acked[0], 100);
}

/* Without the session, the identifiers kept mean nothing: the publish goes as a new one. */
Test(client, publish_again_without_the_session_is_a_new_publish)
{
    mqtt_client_options_t o = options();
    o.clean_start = false;
    char err[64];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl);
    mqtt_client_reserve_id(cl, 1);
    cr_assert_eq(mqtt_client_start(cl), 0);
    bk_accept();
    bk_expect(MQTT_CONNECT);
    connack_with(false, 0, 0);
    mqtt_message_t m = { .topic = "t/q2", .payload = "A", .len = 1, .qos = 2 };
    cr_assert_eq(mqtt_client_publish_again(cl, &m, 100, 7), 0);
    bk_expect(MQTT_PUBLISH);
    cr_assert_not(pkt.u.publish.dup);
    cr_assert_eq(pkt.u.publish.id, 1, "the kept identifiers are free again");
    cr_assert_eq(sent.n, 1);
    cr_assert_eq(sent.pid[0], 1);
}

/* ------------------------------------------------------------------ receiving */

static void broker_publish(const char *topic, const char *payload, int qos, uint16_t id, bool dup)
{
    mqtt_packet_t p = { .type = MQTT_PUBLISH };
    p.u.publish.qos = (uint8_t)qos;
    p.u.publish.dup = dup;
    p.u.publish.id = id;
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)topic, strlen(topic) };
    p.u.publish.payload = (mqtt_bytes_t){ (const uint8_t *)payload, strlen(payload) };
    mqtt_prop_set_data(&p.u.publish.props, MQTT_PROP_CONTENT_TYPE, "text/plain", 10);
    mqtt_prop_set_value(&p.u.publish.props, MQTT_PROP_MESSAGE_EXPIRY, 30);
    bk_send(&p);
}

Test(client, incoming_qos2_is_delivered_once)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    broker_publish("down/a", "v1", 2, 7, false);
    bk_expect(MQTT_PUBREC);
    cr_assert_eq(pkt.u.ack.id, 7);
    cr_assert_eq(seen.messages, 1);
    broker_publish("down/a", "v1", 2, 7, true); /* the broker did not see our PUBREC */
    bk_expect(MQTT_PUBREC);
    cr_assert_eq(seen.messages, 1, "a duplicate is not delivered again");
    bk_ack(MQTT_PUBREL, 7, 0);
    bk_expect(MQTT_PUBCOMP);
    cr_assert_eq(pkt.u.ack.id, 7);
    broker_publish("down/a", "v2", 2, 7, false); /* the identifier is free again */
    bk_expect(MQTT_PUBREC);
    cr_assert_eq(seen.messages, 2);
    cr_assert_str_eq(seen.payload, "v2");
}

Test(client, subscribe_reports_each_filter_and_messages_carry_properties)
{
    mqtt_client_options_t o = options();
    start(&o);
    connack_with(false, 0, 0);
    const char *filters[] = { "down/#", "secret/+" };
    int qos[] = { 1, 2 };
    cr_assert_eq(mqtt_client_subscribe(cl, filters, qos, 2, 9), 0);
    bk_expect(MQTT_SUBSCRIBE);
    cr_assert_eq(pkt.u.subscribe.n, 2);
    cr_assert_eq(pkt.u.subscribe.options[1] & 3, 2);
    mqtt_packet_t sa = { .type = MQTT_SUBACK };
    sa.u.suback.id = pkt.u.subscribe.id;
    sa.u.suback.n = 2;
    sa.u.suback.codes[0] = 1;
    sa.u.suback.codes[1] = 0x87;
    bk_send(&sa);
    TURN_UNTIL(seen.subscribed == 1);
    cr_assert_eq(seen.ncodes, 2);
    cr_assert_eq(seen.codes[0], 1);
    cr_assert_eq(seen.codes[1], 0x87);
    broker_publish("down/x", "hello", 1, 3, false);
    bk_expect(MQTT_PUBACK);
    cr_assert_eq(pkt.u.ack.id, 3);
    cr_assert_str_eq(seen.topic, "down/x");
    cr_assert_str_eq(seen.payload, "hello");
    cr_assert_str_eq(seen.ctype, "text/plain");
    cr_assert(seen.has_expiry && seen.expiry == 30);
    cr_assert(mqtt_client_unsubscribe(cl, filters, 1) == 0);
    bk_expect(MQTT_UNSUBSCRIBE);
}

/* ------------------------------------------------------------------ keep-alive */

Test(client, keepalive_pings_and_detects_a_dead_broker)
{
    mqtt_client_options_t o = options();
    o.keepalive_s = 1;
    start(&o);
    connack_with(false, 0, 0);
    bk_expect(MQTT_PINGREQ);
    mqtt_packet_t resp = { .type = MQTT_PINGRESP };
    bk_send(&resp);
    bk_expect(MQTT_PINGREQ);
    /* No answer: the broker is dead. */
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(seen.lost_err, -ETIMEDOUT);
    cr_assert(strstr(seen.why, "keep-alive"), "%s", seen.why);
}

/* ------------------------------------------------------------------ malformed input */

static void malformed(const void *bytes, size_t len, const char *words)
{
    mqtt_client_options_t o = options();
    o.max_packet = 4096;
    start(&o);
    connack_with(false, 0, 0);
    bk_send_raw(bytes, len);
    TURN_UNTIL(seen.lost == 1);
    cr_assert(strstr(seen.why, words), "%s", seen.why);
    cr_assert_eq(seen.messages, 0);
    bk_accept(); /* and it connects again */
    bk_expect(MQTT_CONNECT);
}

Test(client, malformed_utf8_topic_closes_the_connection)
{
    static const uint8_t bad[] = { 0x30, 0x06, 0x00, 0x03, 'a', 0xff, 'b', 0x00 };
    malformed(bad, sizeof(bad), "malformed");
}

Test(client, oversized_packet_closes_the_connection)
{
    static const uint8_t big[] = { 0x30, 0xa0, 0x8d, 0x06 }; /* 100,000 bytes announced */
    malformed(big, sizeof(big), "Maximum Packet Size");
}

Test(client, packet_type_zero_closes_the_connection)
{
    static const uint8_t zero[] = { 0x00, 0x00 };
    malformed(zero, sizeof(zero), "malformed");
}

Test(client, a_broker_packet_a_broker_never_sends)
{
    static const uint8_t ping[] = { 0xc0, 0x00 }; /* PINGREQ */
    malformed(ping, sizeof(ping), "a packet a broker does not send");
}

/* ------------------------------------------------------------------ shutdown */

Test(client, shutdown_publishes_offline_then_disconnects)
{
    mqtt_client_options_t o = options();
    o.status_topic = "gw/status";
    start(&o);
    connack_with(false, 0, 0);
    /* The broker answers from the test's side only when the client turns: answer ahead. */
    cr_assert_eq(publish("t", "x", 0, 0), 0);
    bk_expect(MQTT_PUBLISH);
    /* The PUBACK for the next identifier is not known yet: use a short timeout. */
    mqtt_client_shutdown(cl, 300);
    bk_pull();
    bk_read();
    cr_assert_eq(pkt.type, MQTT_PUBLISH);
    cr_assert(pkt.u.publish.retain);
    cr_assert_eq(pkt.u.publish.payload.len, 7);
    cr_assert_eq(memcmp(pkt.u.publish.payload.p, "offline", 7), 0);
    bk_expect(MQTT_DISCONNECT);
    cr_assert_not(mqtt_client_connected(cl));
    cr_assert_eq(seen.lost, 0);
}

/* ------------------------------------------------------------------ the link */

Test(client, connection_refused_in_words)
{
    mqtt_client_options_t o = options();
    close(lfd); /* nobody listens there now */
    lfd = -1;
    char err[256];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl);
    cr_assert_eq(mqtt_client_start(cl), 0);
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(seen.lost_err, -ECONNREFUSED);
    cr_assert(strstr(seen.why, "connection refused"), "%s", seen.why);
    cr_assert_gt(mqtt_client_retry_in_ms(cl), 0);
}

Test(client, name_not_resolved_in_words)
{
    mqtt_client_options_t o = options();
    o.uri = "mqtt://no-such-host.invalid:1883";
    char err[256];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl);
    cr_assert_eq(mqtt_client_start(cl), 0);
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(seen.lost_err, -EHOSTUNREACH);
    cr_assert(strstr(seen.why, "no-such-host.invalid was not resolved"), "%s", seen.why);
}

Test(client, no_connack_times_out)
{
    mqtt_client_options_t o = options();
    o.connect_timeout_ms = 200;
    start(&o);
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(seen.lost_err, -ETIMEDOUT);
    cr_assert(strstr(seen.why, "no CONNACK"), "%s", seen.why);
}

Test(client, bad_uri_is_refused_at_once)
{
    mqtt_client_options_t o = options();
    o.uri = "http://broker";
    char err[256];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert_null(cl);
    cr_assert(strstr(err, "not an MQTT URI"), "%s", err);
}

Test(client, tls_handshake_that_never_comes_times_out)
{
    mqtt_client_options_t o = options();
    static char uri[64];
    snprintf(uri, sizeof(uri), "mqtts://127.0.0.1:%d", port);
    o.uri = uri;
    o.ca = ""; /* the system trust store */
    o.connect_timeout_ms = 300;
    char err[256];
    cl = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    cr_assert(cl, "%s", err);
    cr_assert_eq(mqtt_client_start(cl), 0);
    bk_accept(); /* and says nothing */
    TURN_UNTIL(seen.lost == 1);
    cr_assert_eq(seen.lost_err, -ETIMEDOUT);
    cr_assert(strstr(seen.why, "timed out in the TLS handshake"), "%s", seen.why);
}

Test(client, incoming_qos2_awaiting_pubrel_survives_a_resumed_session)
{
    mqtt_client_options_t o = options();
    o.clean_start = false;
    start(&o);
    connack_with(false, 0, 0);
    broker_publish("down/a", "once", 2, 9, false);
    bk_expect(MQTT_PUBREC);
    close(bfd);
    bfd = -1;
    TURN_UNTIL(seen.lost == 1);
    bk_accept();
    bk_expect(MQTT_CONNECT);
    connack_with(true, 0, 0);
    broker_publish("down/a", "once", 2, 9, true);
    bk_expect(MQTT_PUBREC);
    cr_assert_eq(seen.messages, 1, "delivered once across the reconnection");
    bk_ack(MQTT_PUBREL, 9, 0);
    bk_expect(MQTT_PUBCOMP);
}

Test(client, options_from_the_configuration)
{
    gw_config_t cfg = { 0 };
    cfg.mqtt = (gw_mqtt_config_t){ .uri = "mqtts://broker:8883",
                                   .client_id = "gw",
                                   .version = 3,
                                   .username = "",
                                   .password = "pw",
                                   .ca = "",
                                   .cert = "",
                                   .key = "",
                                   .verify_hostname = true,
                                   .keepalive = 30,
                                   .max_inflight = 7,
                                   .status_topic = "s" };
    mqtt_client_options_t o;
    mqtt_client_options_from_config(&o, &cfg);
    cr_assert_eq(o.version, MQTT_V311, "mqtt.version = 3 is MQTT 3.1.1");
    cr_assert_null(o.username, "an empty user name is none");
    cr_assert_str_eq(o.password, "pw");
    cr_assert_eq(o.max_inflight, 7);
    cr_assert_eq(o.keepalive_s, 30);
    cr_assert(o.verify_hostname);
}
