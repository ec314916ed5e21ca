/*
 * The relay's decisions (listener/relay.c): what a device's and the broker's
 * packets become. relay.c is linked with a stand-in for the few listener.c
 * functions it calls (listener_int.h) that records the bytes sent each way;
 * packets are fed as they would arrive, and what was relayed, refused,
 * acknowledged and counted is checked.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "listener_int.h"
#include "log.h"
#include "packet.h"

/* ---- the stand-in for listener.c ------------------------------------------ */

struct listener {
    int unused;
};

typedef struct sent {
    uint8_t *p;
    size_t len, off; /* off: what take() has read */
} sent_t;

static listener_t the_listener;
static gw_config_t cfg;
static listener_stats_t st;
static size_t max_packet = 131072;
static size_t counts[8][3];
static sent_t to_dev, to_up;
static int closes;

const gw_config_t *listener_cfg(const listener_t *l)
{
    (void)l;
    return &cfg;
}

listener_stats_t *listener_stats_mut(listener_t *l)
{
    (void)l;
    return &st;
}

void listener_count(listener_t *l, const map_entry_t *e, enum listener_count what)
{
    (void)l;
    if (e)
        counts[map_entry_index(e)][what]++;
}

size_t listener_max_packet(const listener_t *l)
{
    (void)l;
    return max_packet;
}

bool listener_room(const listener_t *l)
{
    (void)l;
    return true;
}

static int record(sent_t *s, const void *buf, size_t len)
{
    uint8_t *p = realloc(s->p, s->len + len);
    cr_assert_not_null(p);
    memcpy(p + s->len, buf, len);
    s->p = p;
    s->len += len;
    return 0;
}

int lconn_send_dev(lconn_t *c, const void *buf, size_t len)
{
    (void)c;
    return record(&to_dev, buf, len);
}

int lconn_send_up(lconn_t *c, const void *buf, size_t len)
{
    (void)c;
    return record(&to_up, buf, len);
}

int lconn_open_upstream(lconn_t *c)
{
    c->state = LC_UPSTREAM;
    return 0;
}

void lconn_relayed(lconn_t *c)
{
    c->relayed = true;
}

/* The bounds per identity are listener.c's (tests/unit/test_slots.c): here every device is admitted. */
int lconn_admit(lconn_t *c, const void *cid, size_t cidlen, bool persistent, uint32_t expiry_s)
{
    (void)c, (void)cid, (void)cidlen, (void)persistent, (void)expiry_s;
    return 0;
}

void lconn_session_expiry(lconn_t *c, uint32_t expiry_s)
{
    (void)c, (void)expiry_s;
}

uint16_t lconn_keepalive(lconn_t *c, uint16_t asked)
{
    (void)c;
    return asked ? asked : 1200;
}

void lconn_close(lconn_t *c, bool flush, bool up_flush)
{
    (void)flush;
    (void)up_flush;
    c->state = LC_CLOSING;
    closes++;
}

size_t tls_stream_buffered(const tls_stream_t *s)
{
    (void)s;
    return 0;
}

/* ---- fixtures --------------------------------------------------------------- */

enum { M_TELEMETRY, M_COMMANDS, M_STATE, M_STATUS };

static void add(map_table_t *t, const char *name, const char *what, int dir, bool retain)
{
    char res[128], topic[128], err[256] = "";
    snprintf(res, sizeof(res), "bikes/{identity}/%s", what);
    snprintf(topic, sizeof(topic), "redback/p1/bikes/{identity}/%s", what);
    map_spec_t s = {
        .name = name, .resource = res, .topic = topic, .direction = dir, .qos = 1, .retain = retain
    };
    cr_assert_eq(map_table_add(t, &s, err, sizeof(err)), 0, "%s: %s", name, err);
}

static map_table_t *table(bool with_commands)
{
    map_table_t *t = map_table_new("edge-01");
    cr_assert_not_null(t);
    add(t, "telemetry", "telemetry", MAP_UP, false);
    add(t, "commands", with_commands ? "commands" : "orders", MAP_DOWN, false);
    add(t, "state", "state", MAP_BOTH, false);
    add(t, "status", "status", MAP_UP, true);
    return t;
}

/* Also between the rounds of one test (MQTT 3.1.1, then 5). */
static void setup(void)
{
    gw_log_set_level(GW_LOG_ERROR);
    map_table_free(cfg.maps);
    memset(&cfg, 0, sizeof(cfg));
    memset(&st, 0, sizeof(st));
    memset(counts, 0, sizeof(counts));
    free(to_dev.p);
    free(to_up.p);
    memset(&to_dev, 0, sizeof(to_dev));
    memset(&to_up, 0, sizeof(to_up));
    closes = 0;
    max_packet = 131072;
    cfg.maps = table(true);
}

static void teardown(void)
{
    map_table_free(cfg.maps);
    cfg.maps = NULL;
}

TestSuite(relay, .init = setup, .fini = teardown);

/* Hands bytes to relay.c as if read from the device or the broker. */
static int feed(lconn_t *c, bool from_dev, const void *buf, size_t len)
{
    lbuf_t *b = from_dev ? &c->din : &c->uin;
    uint8_t *p = realloc(b->p, b->len + len);
    cr_assert_not_null(p);
    memcpy(p + b->len, buf, len);
    b->p = p;
    b->len += len;
    b->cap = b->len;
    return from_dev ? relay_device_input(c) : relay_upstream_input(c);
}

static int feed_packet(lconn_t *c, bool from_dev, const mqtt_packet_t *pk, int version)
{
    static uint8_t buf[1 << 18];
    ssize_t n = mqtt_encode(pk, version, buf, sizeof(buf));
    cr_assert(n > 0 && (size_t)n <= sizeof(buf), "encode: %zd", n);
    return feed(c, from_dev, buf, (size_t)n);
}

/* The next packet sent that way, decoded into *pk; false when there is none. */
static bool take(sent_t *s, int version, mqtt_packet_t *pk)
{
    size_t plen;
    if (s->off >= s->len)
        return false;
    cr_assert_eq(mqtt_frame(s->p + s->off, s->len - s->off, SIZE_MAX, &plen), 1);
    cr_assert_eq(mqtt_decode(s->p + s->off, plen, version, pk), 0, "what was sent decodes");
    s->off += plen;
    return true;
}

static bool nothing_more(sent_t *s)
{
    return s->off == s->len;
}

static bool bytes_is(mqtt_bytes_t b, const char *s)
{
    return b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

/* A device past its CONNECT and the broker's CONNACK; what was sent so far is read. */
static lconn_t *device(const char *identity, int version, mqtt_connect_t *cn_in,
                       mqtt_packet_t *up_connect)
{
    lconn_t *c = calloc(1, sizeof(*c));
    cr_assert_not_null(c);
    c->l = &the_listener;
    c->state = LC_CONNECT;
    c->anonymous = identity == NULL;
    if (identity)
        strcpy(c->identity, identity);
    mqtt_packet_t pk = { .type = MQTT_CONNECT };
    if (cn_in)
        pk.u.connect = *cn_in;
    pk.u.connect.version = (uint8_t)version;
    pk.u.connect.clean_start = true;
    pk.u.connect.client_id = (mqtt_bytes_t){ (const uint8_t *)"dev", 3 };
    cr_assert_eq(feed_packet(c, true, &pk, version), 0);
    cr_assert_eq(c->state, LC_UPSTREAM);
    mqtt_packet_t got;
    cr_assert(take(&to_up, version, up_connect ? up_connect : &got));
    mqtt_packet_t ack = { .type = MQTT_CONNACK };
    cr_assert_eq(feed_packet(c, false, &ack, version), 0);
    cr_assert_eq(c->state, LC_RELAY);
    cr_assert(take(&to_dev, version, &got));
    cr_assert_eq(got.type, MQTT_CONNACK);
    if (version == MQTT_V5) {
        const mqtt_prop_t *ss =
            mqtt_prop_find(&got.u.connack.props, MQTT_PROP_SHARED_SUB_AVAILABLE);
        cr_assert(ss && ss->value == 0, "the CONNACK says shared subscriptions are unavailable");
    }
    return c;
}

static void done(lconn_t *c)
{
    relay_free(c->r);
    free(c->din.p);
    free(c->uin.p);
    free(c);
}

static mqtt_packet_t publish(const char *topic, uint8_t qos, uint16_t id, bool retain)
{
    mqtt_packet_t pk = { .type = MQTT_PUBLISH };
    pk.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)topic, strlen(topic) };
    pk.u.publish.qos = qos;
    pk.u.publish.id = id;
    pk.u.publish.retain = retain;
    pk.u.publish.payload = (mqtt_bytes_t){ (const uint8_t *)"x", 1 };
    return pk;
}

static size_t users_named(const mqtt_props_t *props, const char *name, const char *value)
{
    size_t n = 0;
    for (size_t i = 0; i < props->n; i++)
        if (props->p[i].id == MQTT_PROP_USER && bytes_is(props->p[i].data, name) &&
            (!value || bytes_is(props->p[i].data2, value)))
            n++;
    return n;
}

#define TEL1 "redback/p1/bikes/bike-1/telemetry"
#define TEL2 "redback/p1/bikes/bike-2/telemetry"
#define CMD1 "redback/p1/bikes/bike-1/commands"
#define CMD2 "redback/p1/bikes/bike-2/commands"
#define STATUS1 "redback/p1/bikes/bike-1/status"

/* ---- device to broker -------------------------------------------------------- */

Test(relay, publish_allowed_and_refused)
{
    for (int v = MQTT_V311; v <= MQTT_V5; v++) {
        setup();
        lconn_t *c = device("bike-1", v, NULL, NULL);
        mqtt_packet_t pk = publish(TEL1, 1, 5, false), got;
        cr_assert_eq(feed_packet(c, true, &pk, v), 0);
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBLISH);
        cr_assert(bytes_is(got.u.publish.topic, TEL1) && got.u.publish.id == 5);
        cr_assert(nothing_more(&to_dev));
        cr_assert_eq(counts[M_TELEMETRY][LISTENER_UP], 1);

        pk = publish(TEL2, 1, 6, false);
        cr_assert_eq(feed_packet(c, true, &pk, v), 0);
        cr_assert(nothing_more(&to_up), "another device's topic is not relayed");
        cr_assert(take(&to_dev, v, &got) && got.type == MQTT_PUBACK && got.u.ack.id == 6);
        cr_assert_eq(got.u.ack.reason, v == MQTT_V5 ? MQTT_RC_NOT_AUTHORIZED : 0);
        cr_assert_eq(st.denied_publish, 1);
        cr_assert_eq(counts[M_TELEMETRY][LISTENER_REFUSED], 1);
        done(c);
    }
}

Test(relay, retain_follows_the_mapping)
{
    for (int v = MQTT_V311; v <= MQTT_V5; v++) {
        setup();
        lconn_t *c = device("bike-1", v, NULL, NULL);
        mqtt_packet_t pk = publish(TEL1, 1, 1, true), got;
        cr_assert_eq(feed_packet(c, true, &pk, v), 0);
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBLISH);
        cr_assert_not(got.u.publish.retain, "retain = false clears the flag");
        cr_assert_eq(st.retain_cleared, 1);
        pk = publish(STATUS1, 1, 2, false);
        cr_assert_eq(feed_packet(c, true, &pk, v), 0);
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBLISH);
        cr_assert(got.u.publish.retain, "retain = true retains, as for a CoAP device");
        cr_assert_eq(st.retain_cleared, 1);
        done(c);
    }
}

Test(relay, device_property_replaced)
{
    lconn_t *c = device("bike-1", MQTT_V5, NULL, NULL);
    mqtt_packet_t pk = publish(TEL1, 1, 1, false), got;
    mqtt_props_t *pp = &pk.u.publish.props;
    mqtt_prop_add_user(pp, "device", 6, "bike-9", 6);
    mqtt_prop_add_user(pp, "other", 5, "keep", 4);
    mqtt_prop_add_user(pp, "device", 6, "bike-1", 6);
    cr_assert_eq(feed_packet(c, true, &pk, MQTT_V5), 0);
    cr_assert(take(&to_up, MQTT_V5, &got) && got.type == MQTT_PUBLISH);
    cr_assert_eq(users_named(&got.u.publish.props, "device", NULL), 1);
    cr_assert_eq(users_named(&got.u.publish.props, "device", "bike-1"), 1);
    cr_assert_eq(users_named(&got.u.publish.props, "other", "keep"), 1);

    /* As many properties as a device may send, none of them `device`: one more fits. */
    pk = publish(TEL1, 1, 2, false);
    while (pp->n < MQTT_PROPS_MAX)
        mqtt_prop_add_user(pp, "k", 1, "v", 1);
    cr_assert_eq(feed_packet(c, true, &pk, MQTT_V5), 0);
    cr_assert(nothing_more(&to_dev), "not refused");
    size_t plen;
    cr_assert_eq(mqtt_frame(to_up.p + to_up.off, to_up.len - to_up.off, SIZE_MAX, &plen), 1);
    cr_assert_eq(mqtt_decode(to_up.p + to_up.off, plen, MQTT_V5, &got), -E2BIG,
                 "33 properties go to the broker (more than the gateway reads itself)");
    to_up.off += plen;
    done(c);

    /* An anonymous device's `device` properties go, and none is added. */
    c = device(NULL, MQTT_V5, NULL, NULL);
    map_table_t *t = map_table_new("edge-01");
    char err[128];
    map_spec_t s = { .name = "public",
                     .resource = "public/{n}",
                     .topic = "redback/public/{n}",
                     .direction = MAP_UP,
                     .qos = 1 };
    cr_assert_eq(map_table_add(t, &s, err, sizeof(err)), 0);
    map_table_t *old = cfg.maps;
    cfg.maps = t;
    pk = publish("redback/public/x", 0, 0, false);
    pp->n = 0;
    mqtt_prop_add_user(pp, "device", 6, "bike-9", 6);
    cr_assert_eq(feed_packet(c, true, &pk, MQTT_V5), 0);
    cr_assert(take(&to_up, MQTT_V5, &got) && got.type == MQTT_PUBLISH);
    cr_assert_eq(got.u.publish.props.n, 0);
    cfg.maps = old;
    map_table_free(t);
    done(c);
}

Test(relay, will_property_and_retain)
{
    mqtt_connect_t cn = { .will = true, .will_qos = 1, .will_retain = true };
    cn.will_topic = (mqtt_bytes_t){ (const uint8_t *)TEL1, strlen(TEL1) };
    cn.will_payload = (mqtt_bytes_t){ (const uint8_t *)"gone", 4 };
    mqtt_prop_add_user(&cn.will_props, "device", 6, "bike-9", 6);
    mqtt_packet_t up;
    lconn_t *c = device("bike-1", MQTT_V5, &cn, &up);
    cr_assert_eq(up.type, MQTT_CONNECT);
    cr_assert_not(up.u.connect.will_retain);
    cr_assert_eq(users_named(&up.u.connect.will_props, "device", NULL), 1);
    cr_assert_eq(users_named(&up.u.connect.will_props, "device", "bike-1"), 1);
    cr_assert_eq(st.retain_cleared, 1);
    done(c);
}

/* ---- broker to device --------------------------------------------------------- */

Test(relay, delivery_held_to_the_current_mappings)
{
    for (int v = MQTT_V311; v <= MQTT_V5; v++) {
        setup();
        lconn_t *c = device("bike-1", v, NULL, NULL);
        mqtt_packet_t pk = publish(CMD1, 1, 11, false), got;
        cr_assert_eq(feed_packet(c, false, &pk, v), 0);
        cr_assert(take(&to_dev, v, &got) && got.type == MQTT_PUBLISH, "allowed: relayed");
        cr_assert_eq(counts[M_COMMANDS][LISTENER_DOWN], 1);

        pk = publish(CMD2, 1, 12, false);
        cr_assert_eq(feed_packet(c, false, &pk, v), 0);
        cr_assert(nothing_more(&to_dev), "another device's commands are not relayed");
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBACK && got.u.ack.id == 12);
        cr_assert_eq(st.denied_deliver, 1);
        cr_assert_eq(counts[M_COMMANDS][LISTENER_REFUSED], 1);

        /* A reload removes the commands mapping: the broker's session still delivers. */
        map_table_free(cfg.maps);
        cfg.maps = table(false);
        pk = publish(CMD1, 2, 13, false);
        cr_assert_eq(feed_packet(c, false, &pk, v), 0);
        cr_assert(nothing_more(&to_dev));
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBREC && got.u.ack.id == 13);
        cr_assert_eq(got.u.ack.reason, 0, "the exchange goes on: PUBREL comes");
        pk = publish(CMD1, 0, 0, false);
        cr_assert_eq(feed_packet(c, false, &pk, v), 0);
        cr_assert(nothing_more(&to_dev) && nothing_more(&to_up));
        cr_assert_eq(st.denied_deliver, 3);

        mqtt_packet_t rel = { .type = MQTT_PUBREL, .flags = 2 };
        rel.u.ack.id = 13;
        cr_assert_eq(feed_packet(c, false, &rel, v), 0);
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBCOMP && got.u.ack.id == 13);
        cr_assert(nothing_more(&to_dev), "the PUBREL of a refused delivery is not relayed");
        cr_assert_eq(feed_packet(c, false, &rel, v), 0);
        cr_assert(take(&to_dev, v, &got) && got.type == MQTT_PUBREL, "a second one is");
        cr_assert(nothing_more(&to_up));
        cr_assert_eq(closes, 0);
        done(c);
    }
}

/* A PUBLISH of len bytes in all, QoS qos, id 21, to bike-1's commands. */
static size_t big_publish(uint8_t *buf, size_t len, int version, uint8_t qos)
{
    mqtt_packet_t pk = publish(CMD1, qos, qos ? 21 : 0, false);
    static uint8_t payload[1 << 17];
    memset(payload, 'B', sizeof(payload));
    pk.u.publish.payload = (mqtt_bytes_t){ payload, 0 };
    ssize_t n = mqtt_encode(&pk, version, buf, len);
    /* The Remaining Length takes more bytes as the payload grows. */
    for (int k = 0; k < 4 && (size_t)n != len; k++) {
        pk.u.publish.payload.len = pk.u.publish.payload.len + len - (size_t)n;
        n = mqtt_encode(&pk, version, buf, len);
    }
    cr_assert_eq((size_t)n, len);
    return (size_t)n;
}

Test(relay, oversize_from_the_broker_skipped)
{
    static uint8_t buf[100000];
    for (int v = MQTT_V311; v <= MQTT_V5; v++) {
        for (uint8_t qos = 0; qos <= 2; qos++) {
            setup();
            max_packet = 4096;
            lconn_t *c = device("bike-1", v, NULL, NULL);
            size_t n = big_publish(buf, 20000, v, qos);
            size_t most = 0;
            /* Arrives in pieces: answered from its head, the rest discarded as it comes. */
            for (size_t off = 0; off < n; off += 1000) {
                size_t k = n - off < 1000 ? n - off : 1000;
                cr_assert_eq(feed(c, false, buf + off, k), 0);
                most = c->uin.len > most ? c->uin.len : most;
            }
            cr_assert_lt(most, 1000, "the packet is never held whole");
            cr_assert(nothing_more(&to_dev));
            mqtt_packet_t got;
            if (qos == 0) {
                cr_assert(nothing_more(&to_up));
            } else {
                cr_assert(take(&to_up, v, &got));
                cr_assert_eq(got.type, qos == 1 ? MQTT_PUBACK : MQTT_PUBREC);
                cr_assert_eq(got.u.ack.id, 21);
            }
            cr_assert_eq(st.broker_dropped, 1);
            if (qos == 2) {
                mqtt_packet_t rel = { .type = MQTT_PUBREL, .flags = 2 };
                rel.u.ack.id = 21;
                cr_assert_eq(feed_packet(c, false, &rel, v), 0);
                cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBCOMP);
                cr_assert(nothing_more(&to_dev));
            }
            /* The next one, in the same read as the end of the big one, arrives. */
            mqtt_packet_t next = publish(CMD1, 1, 22, false);
            n = big_publish(buf, 5000, v, 1);
            ssize_t m = mqtt_encode(&next, v, buf + n, sizeof(buf) - n);
            cr_assert_eq(feed(c, false, buf, n + (size_t)m), 0);
            cr_assert(take(&to_up, v, &got) && got.type == MQTT_PUBACK && got.u.ack.id == 21);
            cr_assert(take(&to_dev, v, &got) && got.type == MQTT_PUBLISH && got.u.publish.id == 22);
            cr_assert_eq(st.broker_dropped, 2);
            cr_assert_eq(closes, 0);
            done(c);
        }
    }
}

Test(relay, too_many_properties_from_the_broker)
{
    lconn_t *c = device("bike-1", MQTT_V5, NULL, NULL);
    mqtt_packet_t pk = publish(CMD1, 1, 31, false), got;
    while (pk.u.publish.props.n < MQTT_PROPS_MAX + 1)
        mqtt_prop_add_user(&pk.u.publish.props, "k", 1, "v", 1);
    cr_assert_eq(feed_packet(c, false, &pk, MQTT_V5), 0);
    cr_assert(nothing_more(&to_dev));
    cr_assert(take(&to_up, MQTT_V5, &got) && got.type == MQTT_PUBACK && got.u.ack.id == 31);
    cr_assert_eq(st.broker_dropped, 1);
    pk = publish(CMD1, 1, 32, false);
    cr_assert_eq(feed_packet(c, false, &pk, MQTT_V5), 0);
    cr_assert(take(&to_dev, MQTT_V5, &got) && got.type == MQTT_PUBLISH && got.u.publish.id == 32);
    cr_assert_eq(closes, 0);
    done(c);
}

/* ---- subscriptions ------------------------------------------------------------ */

static mqtt_packet_t subscribe(uint16_t id, const char *a, const char *b)
{
    mqtt_packet_t pk = { .type = MQTT_SUBSCRIBE, .flags = 2 };
    pk.u.subscribe.id = id;
    pk.u.subscribe.filter[0] = (mqtt_bytes_t){ (const uint8_t *)a, strlen(a) };
    pk.u.subscribe.options[0] = 1;
    pk.u.subscribe.n = 1;
    if (b) {
        pk.u.subscribe.filter[1] = (mqtt_bytes_t){ (const uint8_t *)b, strlen(b) };
        pk.u.subscribe.options[1] = 1;
        pk.u.subscribe.n = 2;
    }
    return pk;
}

Test(relay, shared_subscriptions_refused)
{
    for (int v = MQTT_V311; v <= MQTT_V5; v++) {
        setup();
        lconn_t *c = device("bike-1", v, NULL, NULL);
        mqtt_packet_t pk = subscribe(3, "$share/g/" CMD1, CMD1), got;
        cr_assert_eq(feed_packet(c, true, &pk, v), 0);
        cr_assert(take(&to_up, v, &got) && got.type == MQTT_SUBSCRIBE);
        cr_assert_eq(got.u.subscribe.n, 1);
        cr_assert(bytes_is(got.u.subscribe.filter[0], CMD1));
        mqtt_packet_t ack = { .type = MQTT_SUBACK };
        ack.u.suback.id = 3;
        ack.u.suback.n = 1;
        ack.u.suback.codes[0] = 1;
        cr_assert_eq(feed_packet(c, false, &ack, v), 0);
        cr_assert(take(&to_dev, v, &got) && got.type == MQTT_SUBACK && got.u.suback.n == 2);
        cr_assert_eq(got.u.suback.codes[0],
                     v == MQTT_V5 ? MQTT_RC_SHARED_NOT_SUPPORTED : MQTT_RC311_SUB_FAILURE);
        cr_assert_eq(got.u.suback.codes[1], 1);
        cr_assert_eq(st.denied_subscribe, 1);
        done(c);
    }
}

Test(relay, subscribe_id_awaiting_its_suback)
{
    lconn_t *c = device("bike-1", MQTT_V5, NULL, NULL);
    mqtt_packet_t pk = subscribe(7, CMD1, NULL), got;
    cr_assert_eq(feed_packet(c, true, &pk, MQTT_V5), 0);
    cr_assert(take(&to_up, MQTT_V5, &got) && got.type == MQTT_SUBSCRIBE);
    cr_assert_lt(feed_packet(c, true, &pk, MQTT_V5), 0);
    cr_assert(nothing_more(&to_up), "the second is not relayed");
    cr_assert(take(&to_dev, MQTT_V5, &got) && got.type == MQTT_DISCONNECT);
    cr_assert_eq(got.u.reason.reason, MQTT_RC_PROTOCOL_ERROR);
    cr_assert_eq(c->state, LC_CLOSING);
    cr_assert_eq(st.malformed, 1);
    done(c);
}
