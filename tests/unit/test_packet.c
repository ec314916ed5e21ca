/*
 * The MQTT packet codec (mqtt/packet.c): packets worked byte by byte from
 * the MQTT 3.1.1 and MQTT 5 specifications, framing across split buffers,
 * every refusal with its error code, the bounds, and round trips.
 *
 * Packets are written as hex bytes with 'quoted text' for the characters of
 * strings, e.g. "30 0a 0003 'a/b' 'hello'".
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "packet.h"
#include "../fuzz/packet_eq.h"

#define BUF_MAX 70000

static uint8_t in[BUF_MAX], out[BUF_MAX];
static size_t in_len;
static mqtt_packet_t pkt, again;

/* Parses hex pairs and 'text' into buf; whitespace between them is ignored. */
static size_t hex(const char *s, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    while (*s) {
        if (*s == ' ') {
            s++;
        } else if (*s == '\'') {
            for (s++; *s && *s != '\''; s++) {
                cr_assert_lt(n, cap);
                buf[n++] = (uint8_t)*s;
            }
            cr_assert_eq(*s, '\'', "unterminated text");
            s++;
        } else {
            unsigned v;
            cr_assert_eq(sscanf(s, "%2x", &v), 1, "bad hex at %s", s);
            cr_assert_lt(n, cap);
            buf[n++] = (uint8_t)v;
            s += 2;
        }
    }
    return n;
}

/* Decodes the packet written in s (kept in in[]) into pkt. */
static int dec(const char *s, int version)
{
    in_len = hex(s, in, sizeof(in));
    return mqtt_decode(in, in_len, version, &pkt);
}

/* s is refused with err; its Remaining Length is right unless raw. */
static void expect_as(const char *s, int version, int err, bool raw)
{
    int rc = dec(s, version);
    size_t flen = 0;
    if (!raw)
        cr_assert(mqtt_frame(in, in_len, sizeof(in), &flen) == 1 && flen == in_len,
                  "%s: Remaining Length does not match", s);
    cr_assert_eq(rc, err, "%s (v%d): %d, expected %d", s, version, rc, err);
}

static void expect(const char *s, int version, int err)
{
    expect_as(s, version, err, false);
}

static void expect_raw(const char *s, int version, int err)
{
    expect_as(s, version, err, true);
}

/* Encodes pkt for version and decodes the result again into again. */
static size_t reencode(int version)
{
    ssize_t n = mqtt_encode(&pkt, version, out, sizeof(out));
    cr_assert_gt(n, 0, "encode: %zd", n);
    cr_assert_leq((size_t)n, sizeof(out));
    size_t flen = 0;
    cr_assert_eq(mqtt_frame(out, (size_t)n, sizeof(out), &flen), 1);
    cr_assert_eq(flen, (size_t)n);
    cr_assert_eq(mqtt_decode(out, (size_t)n, version, &again), 0);
    cr_assert(pk_eq(&pkt, &again), "decode(encode(x)) != x");
    return (size_t)n;
}

/* s decodes, and encodes back to exactly the same bytes. */
static void roundtrip(const char *s, int version)
{
    int rc = dec(s, version);
    cr_assert_eq(rc, 0, "%s (v%d): %d", s, version, rc);
    size_t n = reencode(version);
    cr_assert_eq(n, in_len, "%s: re-encoded in %zu bytes, not %zu", s, n, in_len);
    cr_assert_arr_eq(out, in, in_len, "%s: re-encoded differently", s);
}

/* s decodes, and encodes as the bytes written in canon (a normalization). */
static void normalizes(const char *s, int version, const char *canon)
{
    uint8_t want[512];
    size_t wlen = hex(canon, want, sizeof(want));
    cr_assert_eq(dec(s, version), 0, "%s", s);
    size_t n = reencode(version);
    cr_assert_eq(n, wlen, "%s: %zu bytes, expected %zu", s, n, wlen);
    cr_assert_arr_eq(out, want, wlen);
}

static bool bytes_is(const mqtt_bytes_t *b, const char *s)
{
    return b->len == strlen(s) && memcmp(b->p, s, b->len) == 0;
}

/* ---- CONNECT ---------------------------------------------------------------- */

/* 3.1.1 §3.1: clean session, will QoS 1, username and password. */
#define CONNECT_311                                                                                \
    "10 3d 0004 'MQTT' 04 ce 003c 0006 'bike-7' 0010 'bikes/bike-7/lwt' 0007 'offline' "           \
    "0006 'bike-7' 0006 'secret'"

Test(packet, connect_311_with_will_username_password)
{
    cr_assert_eq(dec(CONNECT_311, MQTT_V5), 0); /* a CONNECT carries its own version */
    const mqtt_connect_t *c = &pkt.u.connect;
    cr_assert_eq(pkt.type, MQTT_CONNECT);
    cr_assert_eq(c->version, MQTT_V311);
    cr_assert(c->clean_start);
    cr_assert_eq(c->keepalive, 60);
    cr_assert(bytes_is(&c->client_id, "bike-7"));
    cr_assert(c->will);
    cr_assert_eq(c->will_qos, 1);
    cr_assert_not(c->will_retain);
    cr_assert(bytes_is(&c->will_topic, "bikes/bike-7/lwt"));
    cr_assert(bytes_is(&c->will_payload, "offline"));
    cr_assert(c->has_username && c->has_password);
    cr_assert(bytes_is(&c->username, "bike-7"));
    cr_assert(bytes_is(&c->password, "secret"));
    cr_assert_eq(c->props.n, 0);
    roundtrip(CONNECT_311, MQTT_V311);
}

/* MQTT 5 §3.1: Session Expiry 10, Receive Maximum 20; Will Delay 5, Payload Format 1. */
#define CONNECT_5                                                                                  \
    "10 4e 0004 'MQTT' 05 ce 003c 08 11 0000000a 21 0014 0006 'bike-7' "                           \
    "07 18 00000005 01 01 0010 'bikes/bike-7/lwt' 0007 'offline' 0006 'bike-7' 0006 'secret'"

Test(packet, connect_5_with_will_username_password)
{
    cr_assert_eq(dec(CONNECT_5, MQTT_V311), 0);
    const mqtt_connect_t *c = &pkt.u.connect;
    cr_assert_eq(c->version, MQTT_V5);
    cr_assert_eq(c->props.n, 2);
    cr_assert_eq(mqtt_prop_find(&c->props, MQTT_PROP_SESSION_EXPIRY)->value, 10);
    cr_assert_eq(mqtt_prop_find(&c->props, MQTT_PROP_RECEIVE_MAXIMUM)->value, 20);
    cr_assert_eq(c->will_props.n, 2);
    cr_assert_eq(mqtt_prop_find(&c->will_props, MQTT_PROP_WILL_DELAY)->value, 5);
    cr_assert_eq(mqtt_prop_find(&c->will_props, MQTT_PROP_PAYLOAD_FORMAT)->value, 1);
    cr_assert(bytes_is(&c->will_topic, "bikes/bike-7/lwt"));
    cr_assert(bytes_is(&c->password, "secret"));
    roundtrip(CONNECT_5, MQTT_V5);
}

Test(packet, connect_minimal_both_versions)
{
    /* No will, no username: an empty client identifier is valid MQTT. */
    roundtrip("10 0c 0004 'MQTT' 04 02 0000 0000", MQTT_V311);
    roundtrip("10 0d 0004 'MQTT' 05 02 0000 00 0000", MQTT_V5);
    /* MQTT 5 allows a password without a username (§3.1.2.9), 3.1.1 does not. */
    roundtrip("10 12 0004 'MQTT' 05 40 0000 00 0001 'c' 0002 'pw'", MQTT_V5);
    expect("10 11 0004 'MQTT' 04 40 0000 0001 'c' 0002 'pw'", MQTT_V311, -EBADMSG);
    /* Will retain with QoS 2, user properties, authentication method and data. */
    roundtrip("10 26 0004 'MQTT' 05 34 0000 12 26 0001 'k' 0001 'v' 15 0004 'SCRM' 16 0001 ff "
              "0001 'c' 00 0001 't' 0000",
              MQTT_V5);
}

Test(packet, connect_refusals)
{
    /* MQTT 3.1 (MQIsdp, level 3) and unknown levels: not spoken here. */
    expect("10 10 0006 'MQIsdp' 03 02 003c 0002 'id'", MQTT_V311, -EPROTO);
    expect("10 0e 0004 'MQTT' 03 02 003c 0002 'id'", MQTT_V311, -EPROTO);
    expect("10 0e 0004 'MQTT' 06 02 003c 0002 'id'", MQTT_V311, -EPROTO);
    expect("10 0e 0004 'MQTX' 04 02 003c 0002 'id'", MQTT_V311, -EPROTO);
    /* The reserved flag, will QoS or retain without the will flag, will QoS 3. */
    expect("10 0e 0004 'MQTT' 04 03 003c 0002 'id'", MQTT_V311, -EBADMSG);
    expect("10 0e 0004 'MQTT' 04 0a 003c 0002 'id'", MQTT_V311, -EBADMSG);
    expect("10 0e 0004 'MQTT' 04 22 003c 0002 'id'", MQTT_V311, -EBADMSG);
    expect("10 13 0004 'MQTT' 04 1e 003c 0002 'id' 0001 't' 0000", MQTT_V311, -EBADMSG);
    expect("10 0f 0004 'MQTT' 05 0a 003c 00 0002 'id'", MQTT_V5, -EBADMSG);
    /* Fixed header flags must be 0. */
    expect("11 0e 0004 'MQTT' 04 02 003c 0002 'id'", MQTT_V311, -EBADMSG);
    /* Will topic: a wildcard, or empty. */
    expect("10 13 0004 'MQTT' 04 06 003c 0002 'id' 0001 '#' 0000", MQTT_V311, -EPROTO);
    expect("10 12 0004 'MQTT' 04 06 003c 0002 'id' 0000 0000", MQTT_V311, -EPROTO);
    /* Client identifier not UTF-8; a NUL in the username. */
    expect("10 0e 0004 'MQTT' 04 02 003c 0002 c3 28", MQTT_V311, -EBADMSG);
    expect("10 11 0004 'MQTT' 04 82 003c 0000 0003 'a' 00 'b'", MQTT_V311, -EBADMSG);
    /* Username flag set, username missing; a byte left over. */
    expect("10 0e 0004 'MQTT' 04 82 003c 0002 'id'", MQTT_V311, -EBADMSG);
    expect("10 0f 0004 'MQTT' 04 02 003c 0002 'id' 00", MQTT_V311, -EBADMSG);
    /* A property not allowed in CONNECT (Topic Alias), one given twice, out of range. */
    expect("10 10 0004 'MQTT' 05 02 003c 03 23 0001 0000", MQTT_V5, -EBADMSG);
    expect("10 13 0004 'MQTT' 05 02 003c 06 21 0001 21 0002 0000", MQTT_V5, -EPROTO);
    expect("10 10 0004 'MQTT' 05 02 003c 03 21 0000 0000", MQTT_V5, -EPROTO);
    expect("10 12 0004 'MQTT' 05 02 003c 05 27 00000000 0000", MQTT_V5, -EPROTO);
    expect("10 0f 0004 'MQTT' 05 02 003c 02 17 02 0000", MQTT_V5, -EPROTO);
    expect("10 0f 0004 'MQTT' 05 02 003c 02 19 02 0000", MQTT_V5, -EPROTO);
    /* Authentication Data without an Authentication Method. */
    expect("10 10 0004 'MQTT' 05 02 003c 03 16 0000 0000", MQTT_V5, -EPROTO);
    /* A Will property that only PUBLISH may carry (Topic Alias), in the Will properties. */
    expect("10 16 0004 'MQTT' 05 06 003c 00 0000 03 23 0001 0001 't' 0000", MQTT_V5, -EBADMSG);
    /* MQTT 5 Remaining Length must be minimal; 3.1.1 reads a longer one. */
    expect("10 8d 00 0004 'MQTT' 05 02 0000 00 0000", MQTT_V5, -EBADMSG);
    normalizes("10 8c 00 0004 'MQTT' 04 02 0000 0000", MQTT_V311,
               "10 0c 0004 'MQTT' 04 02 0000 0000");
}

/* ---- CONNACK ------------------------------------------------------------------ */

Test(packet, connack)
{
    roundtrip("20 02 00 00", MQTT_V311);
    cr_assert_eq(pkt.type, MQTT_CONNACK);
    roundtrip("20 02 01 00", MQTT_V311);
    cr_assert(pkt.u.connack.session_present);
    roundtrip("20 02 00 05", MQTT_V311);
    cr_assert_eq(pkt.u.connack.reason, MQTT_RC311_NOT_AUTHORIZED);
    roundtrip("20 03 00 00 00", MQTT_V5);
    roundtrip("20 03 00 87 00", MQTT_V5);
    /* Topic Alias Maximum 10, Maximum QoS 1, Assigned Client Identifier. */
    roundtrip("20 11 00 00 0e 22 000a 24 01 12 0006 'bike-7'", MQTT_V5);
    cr_assert_eq(mqtt_prop_find(&pkt.u.connack.props, MQTT_PROP_TOPIC_ALIAS_MAXIMUM)->value, 10);

    expect("20 02 02 00", MQTT_V311, -EBADMSG);         /* reserved acknowledge flags */
    expect("20 02 00 06", MQTT_V311, -EBADMSG);         /* return code 6 */
    expect("20 02 01 05", MQTT_V311, -EPROTO);          /* session present with a refusal */
    expect("20 02 00 00", MQTT_V5, -EBADMSG);           /* MQTT 5: Property Length missing */
    expect("20 03 00 01 00", MQTT_V5, -EBADMSG);        /* 0x01 is no CONNACK reason */
    expect("20 05 00 00 02 24 02", MQTT_V5, -EPROTO);   /* Maximum QoS 2 */
    expect("20 05 00 00 02 25 02", MQTT_V5, -EPROTO);   /* Retain Available 2 */
    expect("20 06 00 00 03 21 0000", MQTT_V5, -EPROTO); /* Receive Maximum 0 */
    expect("20 05 00 00 02 17 01", MQTT_V5, -EBADMSG);  /* Request Problem Info: CONNECT only */
    expect("20 04 00 00 00 00", MQTT_V5, -EBADMSG);     /* a byte left over */
}

/* ---- PUBLISH ------------------------------------------------------------------ */

Test(packet, publish_311_qos_0_1_2)
{
    roundtrip("30 0a 0003 'a/b' 'hello'", MQTT_V311);
    const mqtt_publish_t *p = &pkt.u.publish;
    cr_assert_eq(p->qos, 0);
    cr_assert_eq(p->id, 0);
    cr_assert(bytes_is(&p->topic, "a/b"));
    cr_assert(bytes_is(&p->payload, "hello"));

    roundtrip("32 0c 0003 'a/b' 0001 'hello'", MQTT_V311);
    cr_assert_eq(p->qos, 1);
    cr_assert_eq(p->id, 1);

    roundtrip("3d 0c 0003 'a/b' 0002 'hello'", MQTT_V311);
    cr_assert_eq(p->qos, 2);
    cr_assert(p->dup && p->retain);
    cr_assert_eq(pkt.flags, 0x0d);

    /* An empty payload; DUP with QoS 0 is read in 3.1.1 (no rule makes it malformed). */
    roundtrip("30 05 0003 'a/b'", MQTT_V311);
    cr_assert_eq(p->payload.len, 0);
    roundtrip("38 07 0003 'a/b' 'hi'", MQTT_V311);
}

Test(packet, publish_5_with_properties)
{
    /* QoS 1, Topic Alias 1, Response Topic "reply". */
    roundtrip("32 15 0003 'a/b' 0007 0b 23 0001 08 0005 'reply' 'hi'", MQTT_V5);
    const mqtt_publish_t *p = &pkt.u.publish;
    cr_assert_eq(p->id, 7);
    cr_assert_eq(mqtt_prop_find(&p->props, MQTT_PROP_TOPIC_ALIAS)->value, 1);
    cr_assert(bytes_is(&mqtt_prop_find(&p->props, MQTT_PROP_RESPONSE_TOPIC)->data, "reply"));
    cr_assert(bytes_is(&p->payload, "hi"));

    /* QoS 0 with an empty topic that Topic Alias 1 stands for. */
    roundtrip("30 08 0000 03 23 0001 'hi'", MQTT_V5);
    cr_assert_eq(p->topic.len, 0);

    /* QoS 2: two Subscription Identifiers (5 and 129, two bytes) and a User Property. */
    roundtrip("34 15 0003 'a/b' 0009 0c 0b 05 0b 81 01 26 0001 'k' 0001 'v' 'x'", MQTT_V5);
    cr_assert_eq(p->props.n, 3);
    cr_assert_eq(p->props.p[1].value, 129);
    cr_assert(bytes_is(&p->props.p[2].data, "k") && bytes_is(&p->props.p[2].data2, "v"));

    /* Payload Format, Message Expiry, Content Type, Correlation Data. */
    roundtrip("30 1e 0003 'a/b' 13 01 01 02 0000003c 03 0004 'text' 09 0002 0102 'hello'", MQTT_V5);
    cr_assert_eq(p->props.n, 4);
}

Test(packet, publish_refusals)
{
    expect("36 0c 0003 'a/b' 0001 'hello'", MQTT_V311, -EBADMSG); /* QoS 3 */
    expect("36 0d 0003 'a/b' 0001 00 'hello'", MQTT_V5, -EBADMSG);
    expect("38 08 0003 'a/b' 00 'hi'", MQTT_V5, -EBADMSG);       /* DUP with QoS 0 */
    expect("32 0c 0003 'a/b' 0000 'hello'", MQTT_V311, -EPROTO); /* packet identifier 0 */
    expect("32 0d 0003 'a/b' 0000 00 'hello'", MQTT_V5, -EPROTO);
    expect("30 05 0003 'a/+'", MQTT_V311, -EPROTO); /* wildcards in a topic name */
    expect("30 05 0003 'a/#'", MQTT_V311, -EPROTO);
    expect("30 02 0000", MQTT_V311, -EPROTO);             /* empty topic */
    expect("30 03 0000 00", MQTT_V5, -EPROTO);            /* empty topic without a Topic Alias */
    expect("30 05 0003 'a' 00 'b'", MQTT_V311, -EBADMSG); /* NUL */
    expect("30 05 0003 'a' ff 'b'", MQTT_V311, -EBADMSG); /* not UTF-8 */
    expect("30 04 0002 c0 80", MQTT_V311, -EBADMSG);      /* overlong NUL */
    expect("30 05 0003 ed a0 80", MQTT_V311, -EBADMSG);   /* a surrogate */
    expect_raw("30 05 0009 'abc'", MQTT_V311, -EBADMSG);  /* string past the packet */
    expect("30 01 00", MQTT_V311, -EBADMSG);
    expect("32 03 0001 'a'", MQTT_V311, -EBADMSG); /* identifier cut */
    /* Properties: the length past the packet, a value past the property block. */
    expect("30 05 0001 'a' 05 23", MQTT_V5, -EBADMSG);
    expect("30 07 0001 'a' 02 23 00 01", MQTT_V5, -EBADMSG);
    /* Not allowed in PUBLISH, unknown, an identifier over one byte. */
    expect("30 06 0001 'a' 02 24 01", MQTT_V5, -EBADMSG);
    expect("30 06 0001 'a' 02 05 01", MQTT_V5, -EBADMSG);
    expect("30 07 0001 'a' 03 81 01 01", MQTT_V5, -EBADMSG);
    /* Twice when once is allowed; Topic Alias 0; Subscription Identifier 0; Payload Format 2. */
    expect("30 0a 0001 'a' 06 23 0001 23 0002", MQTT_V5, -EPROTO);
    expect("30 07 0001 'a' 03 01 00 01", MQTT_V5, -EBADMSG); /* a value cut by the block */
    expect("30 08 0001 'a' 04 01 00 01 00", MQTT_V5, -EPROTO);
    expect("30 07 0001 'a' 03 23 0000", MQTT_V5, -EPROTO);
    expect("30 06 0001 'a' 02 0b 00", MQTT_V5, -EPROTO);
    expect("30 06 0001 'a' 02 01 02", MQTT_V5, -EPROTO);
    /* A Subscription Identifier of 1 in two bytes (not minimal). */
    expect("30 07 0001 'a' 03 0b 81 00", MQTT_V5, -EBADMSG);
    /* Response Topic with a wildcard, or empty. */
    expect("30 0a 0001 'a' 06 08 0003 'r/#'", MQTT_V5, -EPROTO);
    expect("30 07 0001 'a' 03 08 0000", MQTT_V5, -EPROTO);
    /* Response Topic not UTF-8. */
    expect("30 08 0001 'a' 04 08 0001 ff", MQTT_V5, -EBADMSG);
}

/* ---- PUBACK, PUBREC, PUBREL, PUBCOMP ------------------------------------------ */

Test(packet, acks)
{
    roundtrip("40 02 0001", MQTT_V311);
    cr_assert_eq(pkt.type, MQTT_PUBACK);
    cr_assert_eq(pkt.u.ack.id, 1);
    roundtrip("50 02 0102", MQTT_V311);
    cr_assert_eq(pkt.u.ack.id, 0x102);
    roundtrip("62 02 0001", MQTT_V311);
    roundtrip("70 02 0001", MQTT_V311);
    /* MQTT 5: short form, reason only, reason and properties. */
    roundtrip("40 02 0001", MQTT_V5);
    cr_assert_eq(pkt.u.ack.reason, 0);
    roundtrip("40 03 0001 87", MQTT_V5);
    cr_assert_eq(pkt.u.ack.reason, MQTT_RC_NOT_AUTHORIZED);
    roundtrip("50 0a 0001 87 06 1f 0003 'no!'", MQTT_V5);
    cr_assert(bytes_is(&pkt.u.ack.props.p[0].data, "no!"));
    roundtrip("62 03 0001 92", MQTT_V5);
    roundtrip("70 0b 0001 00 07 26 0001 'k' 0001 'v'", MQTT_V5);
    /* Normalized: reason 0 without properties, and an empty property list. */
    normalizes("40 03 0001 00", MQTT_V5, "40 02 0001");
    normalizes("40 04 0001 00 00", MQTT_V5, "40 02 0001");
    normalizes("40 04 0001 87 00", MQTT_V5, "40 03 0001 87");

    expect("42 02 0001", MQTT_V311, -EBADMSG); /* PUBACK flags */
    expect("60 02 0001", MQTT_V311, -EBADMSG); /* PUBREL must be 0010 */
    expect("63 02 0001", MQTT_V5, -EBADMSG);
    expect("40 02 0000", MQTT_V311, -EPROTO);     /* identifier 0 */
    expect("40 03 0001 00", MQTT_V311, -EBADMSG); /* 3.1.1: exactly two bytes */
    expect("40 01 00", MQTT_V311, -EBADMSG);
    expect("40 03 0001 92", MQTT_V5, -EBADMSG);          /* 0x92 is no PUBACK reason */
    expect("62 03 0001 87", MQTT_V5, -EBADMSG);          /* 0x87 is no PUBREL reason */
    expect("40 06 0001 00 02 23 01", MQTT_V5, -EBADMSG); /* Topic Alias in PUBACK */
    expect("40 05 0001 00 02 1f", MQTT_V5, -EBADMSG);    /* property cut */
}

/* ---- SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK ---------------------------------- */

Test(packet, subscribe_311)
{
    roundtrip("82 16 000a 0003 'a/b' 00 0003 'c/#' 01 0005 'd/+/e' 02", MQTT_V311);
    const mqtt_subscribe_t *s = &pkt.u.subscribe;
    cr_assert_eq(pkt.type, MQTT_SUBSCRIBE);
    cr_assert_eq(s->id, 10);
    cr_assert_eq(s->n, 3);
    cr_assert(bytes_is(&s->filter[1], "c/#"));
    cr_assert_eq(s->options[2], 2);
}

Test(packet, subscribe_5_with_options)
{
    /* Subscription Identifier 5; QoS 0; QoS 1 + No Local + Retain As Published + Retain
     * Handling 2; a shared subscription with QoS 2 and Retain Handling 1. */
    roundtrip("82 20 000a 02 0b 05 0003 'a/b' 00 0003 'c/#' 2d 000c '$share/g/x/y' 12", MQTT_V5);
    const mqtt_subscribe_t *s = &pkt.u.subscribe;
    cr_assert_eq(s->n, 3);
    cr_assert_eq(mqtt_prop_find(&s->props, MQTT_PROP_SUBSCRIPTION_ID)->value, 5);
    cr_assert_eq(s->options[1], 0x2d);
    cr_assert(bytes_is(&s->filter[2], "$share/g/x/y"));
}

Test(packet, subscribe_refusals)
{
    expect("80 08 000a 0003 'a/b' 00", MQTT_V311, -EBADMSG); /* flags must be 0010 */
    expect("82 02 000a", MQTT_V311, -EPROTO);                /* no filter */
    expect("82 03 000a 00", MQTT_V5, -EPROTO);
    expect("82 08 0000 0003 'a/b' 00", MQTT_V311, -EPROTO);   /* identifier 0 */
    expect("82 08 000a 0003 'a/b' 03", MQTT_V311, -EBADMSG);  /* QoS 3 */
    expect("82 08 000a 0003 'a/b' 04", MQTT_V311, -EBADMSG);  /* upper bits */
    expect("82 07 000a 0003 'a/b'", MQTT_V311, -EBADMSG);     /* options missing */
    expect("82 09 000a 00 0003 'a/b' 40", MQTT_V5, -EBADMSG); /* reserved bits 6-7 */
    expect("82 09 000a 00 0003 'a/b' 80", MQTT_V5, -EBADMSG);
    expect("82 09 000a 00 0003 'a/b' 03", MQTT_V5, -EPROTO); /* QoS 3 */
    expect("82 09 000a 00 0003 'a/b' 30", MQTT_V5, -EPROTO); /* Retain Handling 3 */
    /* No Local on a shared subscription. */
    expect("82 12 000a 00 000c '$share/g/x/y' 04", MQTT_V5, -EPROTO);
    /* Subscription Identifier twice, or 0; a property SUBSCRIBE may not carry. */
    expect("82 0d 000a 04 0b 01 0b 02 0003 'a/b' 00", MQTT_V5, -EPROTO);
    expect("82 0b 000a 02 0b 00 0003 'a/b' 00", MQTT_V5, -EPROTO);
    expect("82 0c 000a 03 23 0001 0003 'a/b' 00", MQTT_V5, -EBADMSG);
    /* A filter that is not UTF-8. */
    expect("82 08 000a 0003 'a' ff 'b' 00", MQTT_V311, -EBADMSG);
}

Test(packet, suback)
{
    roundtrip("90 05 000a 00 01 80", MQTT_V311);
    cr_assert_eq(pkt.u.suback.n, 3);
    cr_assert_eq(pkt.u.suback.codes[2], MQTT_RC311_SUB_FAILURE);
    roundtrip("90 07 000a 00 00 01 87 8f", MQTT_V5);
    cr_assert_eq(pkt.u.suback.n, 4);
    cr_assert_eq(pkt.u.suback.codes[2], MQTT_RC_NOT_AUTHORIZED);
    roundtrip("90 0a 000a 06 1f 0003 'why' 02", MQTT_V5);

    expect("90 03 000a 87", MQTT_V311, -EBADMSG); /* 3.1.1 has only 0x80 for failure */
    expect("90 03 000a 03", MQTT_V311, -EBADMSG);
    expect("90 04 000a 00 03", MQTT_V5, -EBADMSG);
    expect("90 02 000a", MQTT_V311, -EPROTO); /* no code */
    expect("90 03 000a 00", MQTT_V5, -EPROTO);
    expect("91 03 000a 00", MQTT_V311, -EBADMSG); /* flags */
}

Test(packet, unsubscribe_unsuback)
{
    roundtrip("a2 0c 000b 0003 'a/b' 0003 'c/#'", MQTT_V311);
    cr_assert_eq(pkt.type, MQTT_UNSUBSCRIBE);
    cr_assert_eq(pkt.u.subscribe.n, 2);
    cr_assert_eq(pkt.u.subscribe.options[1], 0);
    roundtrip("a2 0d 000b 00 0003 'a/b' 0003 'c/#'", MQTT_V5);
    roundtrip("b0 02 000b", MQTT_V311);
    cr_assert_eq(pkt.type, MQTT_UNSUBACK);
    cr_assert_eq(pkt.u.suback.id, 11);
    cr_assert_eq(pkt.u.suback.n, 0);
    roundtrip("b0 05 000b 00 00 11", MQTT_V5);
    cr_assert_eq(pkt.u.suback.n, 2);
    cr_assert_eq(pkt.u.suback.codes[1], 0x11);

    expect("a0 07 000b 0003 'a/b'", MQTT_V311, -EBADMSG);        /* flags must be 0010 */
    expect("a2 02 000b", MQTT_V311, -EPROTO);                    /* no filter */
    expect("a2 07 0000 0003 'a/b'", MQTT_V311, -EPROTO);         /* identifier 0 */
    expect("a2 0a 000b 03 0b 01 0003 'a/b'", MQTT_V5, -EBADMSG); /* Sub. Identifier */
    expect("b0 03 000b 00", MQTT_V311, -EBADMSG);                /* 3.1.1 UNSUBACK has no codes */
    expect("b0 03 000b 00", MQTT_V5, -EPROTO);                   /* 5: at least one */
    expect("b0 04 000b 00 02", MQTT_V5, -EBADMSG);
    expect("b0 02 0000", MQTT_V311, -EPROTO);
}

/* ---- PINGREQ, PINGRESP, DISCONNECT, AUTH --------------------------------------- */

Test(packet, ping_disconnect_auth)
{
    roundtrip("c0 00", MQTT_V311);
    cr_assert_eq(pkt.type, MQTT_PINGREQ);
    roundtrip("d0 00", MQTT_V5);
    cr_assert_eq(pkt.type, MQTT_PINGRESP);
    roundtrip("e0 00", MQTT_V311);
    roundtrip("e0 00", MQTT_V5);
    cr_assert_eq(pkt.u.reason.reason, 0);
    /* Disconnect with Will Message; Session taken over with a Reason String. */
    roundtrip("e0 01 04", MQTT_V5);
    cr_assert_eq(pkt.u.reason.reason, 4);
    roundtrip("e0 0a 8e 08 1f 0005 'taken'", MQTT_V5);
    cr_assert_eq(pkt.u.reason.reason, MQTT_RC_SESSION_TAKEN_OVER);
    roundtrip("e0 07 00 05 11 0000003c", MQTT_V5);
    normalizes("e0 02 00 00", MQTT_V5, "e0 00");
    normalizes("e0 02 87 00", MQTT_V5, "e0 01 87");
    /* AUTH: Continue authentication with method and data. */
    roundtrip("f0 00", MQTT_V5);
    cr_assert_eq(pkt.type, MQTT_AUTH);
    roundtrip("f0 0f 18 0d 15 0005 'SCRAM' 16 0002 abcd", MQTT_V5);
    cr_assert_eq(pkt.u.reason.reason, 0x18);
    roundtrip("f0 02 19 00", MQTT_V5);
    normalizes("f0 01 19", MQTT_V5, "f0 02 19 00");

    expect("c0 01 00", MQTT_V311, -EBADMSG);        /* a byte left over */
    expect("c1 00", MQTT_V311, -EBADMSG);           /* flags */
    expect("e0 01 00", MQTT_V311, -EBADMSG);        /* 3.1.1 DISCONNECT is empty */
    expect("e0 01 05", MQTT_V5, -EBADMSG);          /* 0x05 is no DISCONNECT reason */
    expect("e0 04 00 02 23 01", MQTT_V5, -EBADMSG); /* Topic Alias in DISCONNECT */
    expect("f0 00", MQTT_V311, -EBADMSG);           /* no AUTH in 3.1.1 */
    expect("f0 02 87 00", MQTT_V5, -EBADMSG);
    expect("f0 0a 18 08 15 0001 'a' 15 0001 'b'", MQTT_V5, -EPROTO); /* method twice */
}

Test(packet, decode_generic_refusals)
{
    expect_raw("00 00", MQTT_V311, -EBADMSG);    /* type 0 */
    expect_raw("c0 00 00", MQTT_V311, -EBADMSG); /* longer than its Remaining Length */
    expect_raw("c0 01", MQTT_V311, -EBADMSG);    /* shorter */
    expect_raw("c0", MQTT_V311, -EBADMSG);
    expect_raw("c0 80 80 80 80 00", MQTT_V311, -EBADMSG); /* a fifth length byte */
    expect("c0 80 00", MQTT_V5, -EBADMSG);                /* MQTT 5: not minimal */
    normalizes("c0 80 00", MQTT_V311, "c0 00");           /* 3.1.1 reads it */
    expect("c0 00", 3, -EINVAL);                          /* not a version */
}

/* ---- framing -------------------------------------------------------------------- */

Test(packet, frame)
{
    size_t n = 0;
    cr_assert_eq(mqtt_frame((const uint8_t *)"", 0, 100, &n), 0);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\xc0", 1, 100, &n), 0);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\xc0\x00", 2, 100, &n), 1);
    cr_assert_eq(n, 2);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x00\x00", 2, 100, &n), -EBADMSG);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x00", 1, 100, &n), -EBADMSG);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\xc0\x80\x80\x80\x80\x00", 6, 100, &n), -EBADMSG);
    /* Incomplete length bytes: more needed; then the length known. */
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xff\xff", 3, 1000000000, &n), 0);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xff\xff\xff\x7f", 5, 1000000000, &n), 0);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xff\xff\xff\x7f", 5, 1024, &n), -EMSGSIZE);
    /* 200 bytes announced, only two there, but over max_len already. */
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xc8\x01", 3, 128, &n), -EMSGSIZE);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xc8\x01", 3, 203, &n), 0);
    cr_assert_eq(mqtt_frame((const uint8_t *)"\x30\xc8\x01", 3, 202, &n), -EMSGSIZE);
    /* A longer than minimal length is framed; decoding judges it by version. */
    cr_assert_eq(mqtt_frame((const uint8_t *)"\xc0\x80\x00", 3, 100, &n), 1);
    cr_assert_eq(n, 3);
}

Test(packet, frame_split_buffers)
{
    /* Three packets in a stream, arriving one byte, then seven bytes, at a time. */
    uint8_t stream[256];
    size_t len = hex(CONNECT_311 " 32 0c 0003 'a/b' 0001 'hello' c0 00", stream, sizeof(stream));
    static const size_t sizes[] = { 63, 14, 2 };

    for (size_t chunk = 1; chunk <= 7; chunk += 6) {
        uint8_t buf[256];
        size_t have = 0, fed = 0, found = 0;
        while (fed < len || have > 0) {
            size_t add = len - fed < chunk ? len - fed : chunk;
            memcpy(buf + have, stream + fed, add);
            have += add;
            fed += add;
            size_t plen = 0;
            int rc = mqtt_frame(buf, have, 1024, &plen);
            cr_assert_geq(rc, 0);
            if (rc == 0) {
                cr_assert_lt(fed - 0, len + 1);
                continue;
            }
            cr_assert_lt(found, 3);
            cr_assert_eq(plen, sizes[found]);
            cr_assert_eq(mqtt_decode(buf, plen, MQTT_V311, &pkt), 0);
            found++;
            memmove(buf, buf + plen, have - plen);
            have -= plen;
            /* A whole packet may already be there. */
            while (have > 0 && mqtt_frame(buf, have, 1024, &plen) == 1) {
                cr_assert_eq(plen, sizes[found]);
                cr_assert_eq(mqtt_decode(buf, plen, MQTT_V311, &pkt), 0);
                found++;
                memmove(buf, buf + plen, have - plen);
                have -= plen;
            }
        }
        cr_assert_eq(found, 3, "chunk %zu: %zu packets", chunk, found);
    }
}

/* ---- bounds ----------------------------------------------------------------------- */

/* A PUBLISH (MQTT 5) to "a" with k User Properties "k"="v". */
static size_t publish_with_users(size_t k, uint8_t *buf)
{
    size_t plen = 7 * k, n = 0;
    size_t rl = 3 + 1 + plen + (plen >= 128);
    buf[n++] = 0x30;
    buf[n++] = (uint8_t)(rl | 0x80);
    buf[n++] = (uint8_t)(rl >> 7);
    n += hex("0001 'a'", buf + n, 8);
    if (plen >= 128) {
        buf[n++] = (uint8_t)(plen | 0x80);
        buf[n++] = (uint8_t)(plen >> 7);
    } else {
        buf[n++] = (uint8_t)plen;
    }
    for (size_t i = 0; i < k; i++)
        n += hex("26 0001 'k' 0001 'v'", buf + n, 8);
    return n;
}

Test(packet, bounds_properties)
{
    size_t n = publish_with_users(MQTT_PROPS_MAX, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V5, &pkt), 0);
    cr_assert_eq(pkt.u.publish.props.n, MQTT_PROPS_MAX);
    reencode(MQTT_V5);
    n = publish_with_users(MQTT_PROPS_MAX + 1, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V5, &pkt), -E2BIG);
}

/* A SUBSCRIBE or SUBACK (MQTT 3.1.1) with k filters "a" or codes. */
static size_t subscribe_with(int type, size_t k, uint8_t *buf)
{
    size_t each = type == MQTT_SUBSCRIBE ? 4 : 1;
    size_t rl = 2 + each * k, n = 0;
    buf[n++] = type == MQTT_SUBSCRIBE ? 0x82 : 0x90;
    buf[n++] = (uint8_t)(rl | 0x80);
    buf[n++] = (uint8_t)(rl >> 7);
    n += hex("0001", buf + n, 2);
    for (size_t i = 0; i < k; i++)
        n += hex(type == MQTT_SUBSCRIBE ? "0001 'a' 01" : "01", buf + n, 4);
    return n;
}

Test(packet, bounds_filters)
{
    size_t n = subscribe_with(MQTT_SUBSCRIBE, MQTT_FILTERS_MAX, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V311, &pkt), 0);
    cr_assert_eq(pkt.u.subscribe.n, MQTT_FILTERS_MAX);
    reencode(MQTT_V311);
    n = subscribe_with(MQTT_SUBSCRIBE, MQTT_FILTERS_MAX + 1, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V311, &pkt), -E2BIG);
    n = subscribe_with(MQTT_SUBACK, MQTT_FILTERS_MAX, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V311, &pkt), 0);
    n = subscribe_with(MQTT_SUBACK, MQTT_FILTERS_MAX + 1, in);
    cr_assert_eq(mqtt_decode(in, n, MQTT_V311, &pkt), -E2BIG);
}

/* ---- encoding --------------------------------------------------------------------- */

Test(packet, encode_built_packets)
{
    /* What the relay writes: a CONNACK refusing, a SUBACK with one filter refused. */
    mqtt_packet_t p = { .type = MQTT_CONNACK };
    p.u.connack.reason = MQTT_RC_NOT_AUTHORIZED;
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), 5);
    cr_assert_arr_eq(out, "\x20\x03\x00\x87\x00", 5);
    p.u.connack.reason = MQTT_RC311_NOT_AUTHORIZED;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 4);
    cr_assert_arr_eq(out, "\x20\x02\x00\x05", 4);

    memset(&p, 0, sizeof(p));
    p.type = MQTT_SUBACK;
    p.u.suback.id = 10;
    p.u.suback.n = 2;
    p.u.suback.codes[0] = 1;
    p.u.suback.codes[1] = MQTT_RC311_SUB_FAILURE;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 6);
    cr_assert_arr_eq(out, "\x90\x04\x00\x0a\x01\x80", 6);
    p.u.suback.codes[1] = MQTT_RC_NOT_AUTHORIZED;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), 7);
    cr_assert_arr_eq(out, "\x90\x05\x00\x0a\x00\x01\x87", 7);

    /* A refused QoS 1 PUBLISH: MQTT 5 PUBACK 0x87; 3.1.1 cannot carry the reason. */
    memset(&p, 0, sizeof(p));
    p.type = MQTT_PUBACK;
    p.u.ack.id = 3;
    p.u.ack.reason = MQTT_RC_NOT_AUTHORIZED;
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), 5);
    cr_assert_arr_eq(out, "\x40\x03\x00\x03\x87", 5);
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 4);
    cr_assert_arr_eq(out, "\x40\x02\x00\x03", 4);

    /* An upstream CONNECT: identity as username, no password, p->flags ignored. */
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNECT;
    p.flags = 0x0f;
    p.u.connect.version = MQTT_V311;
    p.u.connect.clean_start = true;
    p.u.connect.keepalive = 60;
    p.u.connect.client_id = (mqtt_bytes_t){ (const uint8_t *)"bike-7", 6 };
    p.u.connect.has_username = true;
    p.u.connect.username = (mqtt_bytes_t){ (const uint8_t *)"bike-7", 6 };
    uint8_t want[64];
    size_t wlen = hex("10 1a 0004 'MQTT' 04 82 003c 0006 'bike-7' 0006 'bike-7'", want, 64);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), (ssize_t)wlen);
    cr_assert_arr_eq(out, want, wlen);

    /* PINGRESP. */
    memset(&p, 0, sizeof(p));
    p.type = MQTT_PINGRESP;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 2);
    cr_assert_arr_eq(out, "\xd0\x00", 2);
}

Test(packet, encode_refusals_and_capacity)
{
    mqtt_packet_t p = { .type = MQTT_PUBLISH };
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"a/b", 3 };
    p.u.publish.payload = (mqtt_bytes_t){ (const uint8_t *)"hello", 5 };

    /* Too small a buffer: the length needed, nothing written. */
    memset(out, 0xAA, 16);
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, 11), 12);
    cr_assert_eq(out[0], 0xAA);
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, 12), 12);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, 12), 13);

    p.u.publish.qos = 3;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.publish.qos = 1; /* identifier 0 */
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.publish.id = 1;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 14);
    p.u.publish.topic.len = 65536; /* a string over 65535 bytes */
    p.u.publish.topic.p = in;
    memset(in, 'a', 65536);
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"a/+", 3 };
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"a/b", 3 };
    /* A Remaining Length over MQTT_REMAINING_MAX (the payload is never read). */
    p.u.publish.payload.len = MQTT_REMAINING_MAX;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.publish.payload.len = 5;
    /* Properties: not allowed in PUBLISH, out of range, twice; ignored in 3.1.1. */
    mqtt_prop_set_value(&p.u.publish.props, MQTT_PROP_MAXIMUM_QOS, 1);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), -EINVAL);
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), 14);
    p.u.publish.props.n = 0;
    mqtt_prop_set_value(&p.u.publish.props, MQTT_PROP_TOPIC_ALIAS, 0);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), -EINVAL);
    mqtt_prop_set_value(&p.u.publish.props, MQTT_PROP_TOPIC_ALIAS, 65536);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), -EINVAL);
    mqtt_prop_set_value(&p.u.publish.props, MQTT_PROP_TOPIC_ALIAS, 2);
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), 18);
    p.u.publish.props.p[1] = p.u.publish.props.p[0];
    p.u.publish.props.n = 2;
    cr_assert_eq(mqtt_encode(&p, MQTT_V5, out, sizeof(out)), -EINVAL);

    /* A CONNECT of an unknown version; an AUTH in 3.1.1; an unknown type. */
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNECT;
    p.u.connect.version = 3;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.type = MQTT_AUTH;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.type = (enum mqtt_type)0;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    /* A SUBSCRIBE without filters, or with more than MQTT_FILTERS_MAX. */
    p.type = MQTT_SUBSCRIBE;
    p.u.subscribe.id = 1;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
    p.u.subscribe.n = MQTT_FILTERS_MAX + 1;
    cr_assert_eq(mqtt_encode(&p, MQTT_V311, out, sizeof(out)), -EINVAL);
}

Test(packet, encode_long_remaining_length)
{
    /* 200 bytes of payload: a two-byte Remaining Length, and back. */
    mqtt_packet_t p = { .type = MQTT_PUBLISH };
    memset(in, 'x', 200);
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"t", 1 };
    p.u.publish.payload = (mqtt_bytes_t){ in, 200 };
    ssize_t n = mqtt_encode(&p, MQTT_V5, out, sizeof(out));
    cr_assert_eq(n, 1 + 2 + 3 + 1 + 200);
    cr_assert_eq(out[1], 0x80 | (204 & 0x7F));
    cr_assert_eq(out[2], 1);
    cr_assert_eq(mqtt_decode(out, (size_t)n, MQTT_V5, &again), 0);
    cr_assert(pk_eq(&p, &again));
    cr_assert_eq(again.u.publish.payload.len, 200);
}

/* ---- property helpers, names -------------------------------------------------------- */

Test(packet, prop_helpers)
{
    mqtt_props_t props = { 0 };
    cr_assert_null(mqtt_prop_find(&props, MQTT_PROP_TOPIC_ALIAS));
    cr_assert_eq(mqtt_prop_set_value(&props, MQTT_PROP_TOPIC_ALIAS, 3), 0);
    cr_assert_eq(mqtt_prop_set_data(&props, MQTT_PROP_RESPONSE_TOPIC, "r/1", 3), 0);
    cr_assert_eq(mqtt_prop_set_value(&props, MQTT_PROP_TOPIC_ALIAS, 4), 0); /* replaces */
    cr_assert_eq(props.n, 2);
    cr_assert_eq(mqtt_prop_find(&props, MQTT_PROP_TOPIC_ALIAS)->value, 4);
    cr_assert(bytes_is(&mqtt_prop_find(&props, MQTT_PROP_RESPONSE_TOPIC)->data, "r/1"));
    props.p[props.n++] = props.p[0];
    cr_assert_eq(mqtt_prop_remove(&props, MQTT_PROP_TOPIC_ALIAS), 2);
    cr_assert_eq(props.n, 1);
    cr_assert_eq(props.p[0].id, MQTT_PROP_RESPONSE_TOPIC);
    cr_assert_eq(mqtt_prop_remove(&props, MQTT_PROP_TOPIC_ALIAS), 0);
    while (props.n < MQTT_PROPS_CAP)
        props.p[props.n++] = (mqtt_prop_t){ .id = MQTT_PROP_USER };
    cr_assert_eq(mqtt_prop_set_value(&props, MQTT_PROP_TOPIC_ALIAS, 1), -E2BIG);
    cr_assert_eq(mqtt_prop_set_data(&props, MQTT_PROP_REASON_STRING, "x", 1), -E2BIG);
    cr_assert_eq(mqtt_prop_set_data(&props, MQTT_PROP_RESPONSE_TOPIC, "r/2", 3), 0); /* present */
}

Test(packet, type_names)
{
    cr_assert_str_eq(mqtt_type_name(MQTT_CONNECT), "CONNECT");
    cr_assert_str_eq(mqtt_type_name(MQTT_UNSUBACK), "UNSUBACK");
    cr_assert_str_eq(mqtt_type_name(MQTT_AUTH), "AUTH");
    cr_assert_str_eq(mqtt_type_name(0), "?");
    cr_assert_str_eq(mqtt_type_name(16), "?");
    cr_assert_str_eq(mqtt_type_name(-1), "?");
}

/* Every packet above decodes, and decode(encode(x)) == x, in the version it was written for. */
Test(packet, roundtrip_changed_packet)
{
    /* A decoded PUBLISH changed as the relay would: alias resolved, then written again. */
    cr_assert_eq(dec("30 08 0000 03 23 0001 'hi'", MQTT_V5), 0);
    pkt.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"a/b", 3 };
    cr_assert_eq(mqtt_prop_remove(&pkt.u.publish.props, MQTT_PROP_TOPIC_ALIAS), 1);
    ssize_t n = mqtt_encode(&pkt, MQTT_V5, out, sizeof(out));
    uint8_t want[32];
    size_t wlen = hex("30 08 0003 'a/b' 00 'hi'", want, sizeof(want));
    cr_assert_eq(n, (ssize_t)wlen);
    cr_assert_arr_eq(out, want, wlen);
}

/* The head of a packet, from its first bytes: what answers one that is not read whole. */
Test(packet, head)
{
    uint8_t buf[64];
    mqtt_head_t h;
    /* PUBLISH QoS 1, Remaining Length 200 (two bytes), topic "a/b", id 0x1234: the rest not here. */
    size_t n = hex("32 c8 01 0003 'a/b' 1234 'pay'", buf, sizeof(buf));
    for (size_t k = 0; k < 10; k++)
        cr_assert_eq(mqtt_head(buf, k, MQTT_V5, &h), 0, "prefix %zu", k);
    cr_assert_eq(mqtt_head(buf, 10, MQTT_V5, &h), 1);
    cr_assert_eq(mqtt_head(buf, n, MQTT_V311, &h), 1);
    cr_assert_eq(h.type, MQTT_PUBLISH);
    cr_assert_eq(h.qos, 1);
    cr_assert_eq(h.id, 0x1234);
    cr_assert_eq(h.header_len, 3);
    cr_assert_eq(h.total, 203);
    /* QoS 0: no identifier; the topic's length is enough. */
    n = hex("30 c8 01 0003", buf, sizeof(buf));
    cr_assert_eq(mqtt_head(buf, n, MQTT_V5, &h), 1);
    cr_assert_eq(h.id, 0);
    /* MQTT 5 PUBREC with a reason; 3.1.1 reads no reason. */
    n = hex("50 03 0007 10", buf, sizeof(buf));
    cr_assert_eq(mqtt_head(buf, n - 1, MQTT_V5, &h), 0);
    cr_assert_eq(mqtt_head(buf, n, MQTT_V5, &h), 1);
    cr_assert(h.id == 7 && h.reason == 0x10);
    n = hex("62 02 0009", buf, sizeof(buf));
    cr_assert_eq(mqtt_head(buf, n, MQTT_V311, &h), 1);
    cr_assert(h.type == MQTT_PUBREL && h.id == 9 && h.reason == 0);
    /* No identifier to read: the fixed header is all. */
    cr_assert_eq(mqtt_head(buf, hex("20 ff 7f", buf, sizeof(buf)), MQTT_V5, &h), 1);
    cr_assert_eq(h.total, 3 + 16383);
    /* Refusals. */
    cr_assert_eq(mqtt_head(buf, hex("36 10 0001 'a' 0001", buf, sizeof(buf)), MQTT_V5, &h),
                 -EBADMSG); /* QoS 3 */
    cr_assert_eq(mqtt_head(buf, hex("32 04 0005 'a'", buf, sizeof(buf)), MQTT_V5, &h),
                 -EBADMSG); /* the topic past the Remaining Length */
    cr_assert_eq(mqtt_head(buf, hex("32 04 0001 'a' 00", buf, sizeof(buf)), MQTT_V5, &h),
                 -EBADMSG); /* the identifier past it */
    cr_assert_eq(mqtt_head(buf, hex("32 10 0001 'a' 0000", buf, sizeof(buf)), MQTT_V5, &h),
                 -EPROTO);
    cr_assert_eq(mqtt_head(buf, hex("60 02 0001", buf, sizeof(buf)), MQTT_V5, &h), -EBADMSG);
    cr_assert_eq(mqtt_head(buf, hex("00 00", buf, sizeof(buf)), MQTT_V5, &h), -EBADMSG);
    cr_assert_eq(mqtt_head(buf, hex("30 ff ff ff ff 01", buf, sizeof(buf)), MQTT_V5, &h), -EBADMSG);
}

Test(packet, user_property_helpers)
{
    mqtt_props_t props = { 0 };
    cr_assert_eq(mqtt_prop_add_user(&props, "device", 6, "bike-9", 6), 0);
    cr_assert_eq(mqtt_prop_add_user(&props, "devices", 7, "x", 1), 0);
    cr_assert_eq(mqtt_prop_set_value(&props, MQTT_PROP_TOPIC_ALIAS, 2), 0);
    cr_assert_eq(mqtt_prop_add_user(&props, "device", 6, "bike-1", 6), 0);
    cr_assert_eq(mqtt_prop_remove_user(&props, "device", 6), 2);
    cr_assert_eq(props.n, 2);
    cr_assert(bytes_is(&props.p[0].data, "devices"));
    cr_assert_eq(props.p[1].id, MQTT_PROP_TOPIC_ALIAS);
    /* A decoded list holds MQTT_PROPS_MAX; the gateway may add up to MQTT_PROPS_CAP. */
    while (props.n < MQTT_PROPS_CAP)
        cr_assert_eq(mqtt_prop_add_user(&props, "k", 1, "v", 1), 0);
    cr_assert_eq(mqtt_prop_add_user(&props, "k", 1, "v", 1), -E2BIG);
    mqtt_packet_t p = { .type = MQTT_PUBLISH };
    p.u.publish.topic = (mqtt_bytes_t){ (const uint8_t *)"t", 1 };
    p.u.publish.props = props;
    uint8_t buf[1024];
    ssize_t n = mqtt_encode(&p, MQTT_V5, buf, sizeof(buf));
    cr_assert(n > 0 && (size_t)n <= sizeof(buf), "a full list is still written");
    cr_assert_eq(mqtt_decode(buf, (size_t)n, MQTT_V5, &p), -E2BIG);
}
