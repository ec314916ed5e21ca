/*
 * Fuzz target: the MQTT packet codec (mqtt/packet.c), which reads every
 * byte a device or the broker sends to the MQTT listener.
 *
 * Input: a byte stream, framed with mqtt_frame() packet after packet. Each
 * packet is decoded as MQTT 3.1.1 and as MQTT 5; what decodes is encoded
 * again and checked (check_roundtrip()):
 *   - the encoding succeeds, fits the length it announced, and frames as one
 *     packet of that length;
 *   - it decodes, in the same version, to the same packet (decode(encode(x))
 *     == x);
 *   - encoding that again gives the same bytes (the encoding is canonical).
 * Framing is checked too: no prefix of a packet frames, and a max_len of
 * one byte less than the packet is refused with -EMSGSIZE.
 *
 * What the listener does with the broker's packets to devices is checked
 * against the codec's bounds:
 *   - mqtt_head(), which answers a packet over the size bound from its first
 *     bytes, agrees with decoding (type, length, QoS, packet identifier, an
 *     acknowledgement's reason) and with itself on every prefix: once it has
 *     an answer, more bytes do not change it, and it never needs more than the
 *     fixed header, topic and identifier;
 *   - a packet over a small bound (as the relay sees an oversize one) is
 *     walked past with mqtt_head() and its length alone, and the next packet
 *     starts where framing says;
 *   - the properties the gateway adds to what it relays fit: a PUBLISH's or a
 *     Will's `device` User Property (after removing the ones sent), a
 *     CONNACK's limits; the result encodes, and decodes again (or is -E2BIG
 *     only when it holds more than MQTT_PROPS_MAX).
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "packet.h"
#include "packet_eq.h"

static void check_roundtrip(const mqtt_packet_t *p, int version, uint8_t *a, uint8_t *b, size_t cap)
{
    static mqtt_packet_t q;
    int v = p->type == MQTT_CONNECT ? p->u.connect.version : version;

    ssize_t n = mqtt_encode(p, version, a, cap);
    FUZZ_CHECK(n > 0 && (size_t)n <= cap);
    size_t flen = 0;
    FUZZ_CHECK(mqtt_frame(a, (size_t)n, (size_t)n, &flen) == 1 && flen == (size_t)n);
    FUZZ_CHECK(mqtt_decode(a, (size_t)n, v, &q) == 0);
    FUZZ_CHECK(pk_eq(p, &q));
    ssize_t m = mqtt_encode(&q, version, b, cap);
    FUZZ_CHECK(m == n && memcmp(a, b, (size_t)n) == 0);
}

/* The most bytes mqtt_head() needs: a fixed header, a topic of 65,535 bytes, an identifier. */
#define HEAD_MAX (5 + 2 + 65535 + 2)

/* mqtt_head() on every prefix of the packet at p (plen bytes, framed), against decoding d. */
static void check_head(const uint8_t *p, size_t plen, int version, const mqtt_packet_t *d,
                       int decoded)
{
    mqtt_head_t h, first = { 0 };
    int first_rc = 0;
    size_t at = 0;
    for (size_t k = 0; k <= plen; k++) {
        int rc = mqtt_head(p, k, version, &h);
        FUZZ_CHECK(rc == 1 || rc == 0 || rc == -EBADMSG || rc == -EPROTO);
        if (first_rc == 0 && rc != 0) {
            first_rc = rc;
            first = h;
            at = k;
        } else if (first_rc != 0) {
            /* An answer stays the same as more bytes come. */
            FUZZ_CHECK(rc == first_rc);
            if (rc == 1)
                FUZZ_CHECK(h.total == first.total && h.id == first.id && h.qos == first.qos &&
                           h.type == first.type && h.reason == first.reason);
        }
    }
    FUZZ_CHECK(first_rc != 0 && at <= HEAD_MAX);
    if (first_rc == 1) {
        FUZZ_CHECK(first.total == plen && first.header_len >= 2 && first.header_len <= 5);
        FUZZ_CHECK((int)first.type == (p[0] >> 4) && first.flags == (p[0] & 0x0F));
    }
    if (decoded != 0)
        return;
    /* What decodes has a head, and the same one. */
    FUZZ_CHECK(first_rc == 1);
    switch (d->type) {
    case MQTT_PUBLISH:
        FUZZ_CHECK(first.qos == d->u.publish.qos && first.id == d->u.publish.id);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        FUZZ_CHECK(first.id == d->u.ack.id && first.reason == d->u.ack.reason);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        FUZZ_CHECK(first.id == d->u.subscribe.id);
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        FUZZ_CHECK(first.id == d->u.suback.id);
        break;
    default:
        FUZZ_CHECK(first.id == 0);
    }
}

/* Encodes p (with properties added) and decodes it again: it fits, and reads back. */
static void check_added(const mqtt_packet_t *p, const mqtt_props_t *props, int version, uint8_t *a,
                        size_t cap)
{
    static mqtt_packet_t q;
    ssize_t n = mqtt_encode(p, version, a, cap);
    if (n > (ssize_t)cap)
        return; /* the caller's buffer, not the codec */
    FUZZ_CHECK(n > 0);
    int rc = mqtt_decode(a, (size_t)n, version, &q);
    if (props->n > MQTT_PROPS_MAX)
        FUZZ_CHECK(rc == -E2BIG);
    else
        FUZZ_CHECK(rc == 0 && pk_eq(p, &q));
}

/* The gateway's additions to a decoded packet (relay.c), on a copy. */
static void check_additions(const mqtt_packet_t *d, uint8_t *a, size_t cap)
{
    static mqtt_packet_t p;
    p = *d;
    if (p.type == MQTT_PUBLISH) {
        mqtt_prop_remove_user(&p.u.publish.props, "device", 6);
        FUZZ_CHECK(mqtt_prop_add_user(&p.u.publish.props, "device", 6, "bike-1", 6) == 0);
        check_added(&p, &p.u.publish.props, MQTT_V5, a, cap);
    } else if (p.type == MQTT_CONNECT && p.u.connect.version == MQTT_V5 && p.u.connect.will) {
        mqtt_prop_remove_user(&p.u.connect.will_props, "device", 6);
        FUZZ_CHECK(mqtt_prop_add_user(&p.u.connect.will_props, "device", 6, "bike-1", 6) == 0);
        FUZZ_CHECK(mqtt_prop_set_value(&p.u.connect.props, MQTT_PROP_MAXIMUM_PACKET_SIZE, 131072) ==
                   0);
        check_added(&p, &p.u.connect.will_props, MQTT_V5, a, cap);
    } else if (p.type == MQTT_CONNACK && p.u.connack.reason < 0x80) {
        mqtt_props_t *pp = &p.u.connack.props;
        FUZZ_CHECK(mqtt_prop_set_value(pp, MQTT_PROP_MAXIMUM_PACKET_SIZE, 131072) == 0);
        FUZZ_CHECK(mqtt_prop_set_value(pp, MQTT_PROP_TOPIC_ALIAS_MAXIMUM, 16) == 0);
        FUZZ_CHECK(mqtt_prop_set_value(pp, MQTT_PROP_SHARED_SUB_AVAILABLE, 0) == 0);
        FUZZ_CHECK(mqtt_prop_set_data(pp, MQTT_PROP_ASSIGNED_CLIENT_ID, "tandem-0", 8) == 0);
        check_added(&p, pp, MQTT_V5, a, cap);
    }
}

/*
 * The stream as the relay reads the broker's packets with a bound of max
 * bytes: one over it is passed by its head's length, not framed. Every
 * packet starts where framing without a bound says it does.
 */
static void check_skip(const uint8_t *data, size_t size, size_t max, int version)
{
    size_t off = 0;
    while (off < size) {
        size_t plen = 0, whole = 0;
        int rc = mqtt_frame(data + off, size - off, max, &plen);
        int rw = mqtt_frame(data + off, size - off, SIZE_MAX, &whole);
        if (rc == 1) {
            FUZZ_CHECK(rw == 1 && whole == plen);
            off += plen;
            continue;
        }
        if (rc != -EMSGSIZE)
            return;
        mqtt_head_t h;
        rc = mqtt_head(data + off, size - off, version, &h);
        if (rc != 1)
            return;
        FUZZ_CHECK(h.total > max);
        if (rw == 1)
            FUZZ_CHECK(h.total == whole);
        if (h.total > size - off)
            return;
        off += h.total;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mqtt_packet_t p;
    /*
     * Re-encoding may grow a packet by a byte (AUTH's Property Length); the
     * gateway's additions by a few properties.
     */
    size_t cap = size + 256;
    uint8_t *a = malloc(cap), *b = malloc(cap);
    size_t off = 0;

    FUZZ_CHECK(a && b);
    while (off < size) {
        size_t plen = 0;
        int rc = mqtt_frame(data + off, size - off, size, &plen);
        FUZZ_CHECK(rc == 1 || rc == 0 || rc == -EBADMSG || rc == -EMSGSIZE);
        if (rc != 1)
            break;
        FUZZ_CHECK(plen >= 2 && plen <= size - off);
        size_t dummy;
        FUZZ_CHECK(mqtt_frame(data + off, plen - 1, size, &dummy) == 0);
        FUZZ_CHECK(mqtt_frame(data + off, plen, plen - 1, &dummy) == -EMSGSIZE);

        for (int version = MQTT_V311; version <= MQTT_V5; version++) {
            rc = mqtt_decode(data + off, plen, version, &p);
            FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -EPROTO || rc == -E2BIG);
            if (rc == 0)
                check_roundtrip(&p, version, a, b, cap);
            check_head(data + off, plen, version, &p, rc);
            if (rc == 0 && version == MQTT_V5)
                check_additions(&p, a, cap);
        }
        off += plen;
    }
    for (int version = MQTT_V311; version <= MQTT_V5; version++)
        check_skip(data, size, size > 8 ? size / 4 : 2, version);
    free(a);
    free(b);
    return 0;
}
