/*
 * MQTT 3.1.1 (OASIS, 2014) and MQTT 5 (OASIS, 2019) control packets: framing,
 * decoding with every length and rule checked, encoding. See packet.h.
 *
 * Error classes, as the MQTT 5 specification names them:
 *   -EBADMSG  Malformed Packet: a length past its container, a non-minimal
 *             Variable Byte Integer (MQTT 5), reserved flags or bits set, a
 *             string that is not UTF-8 or holds U+0000, a property not
 *             defined for the packet type, a reason code not defined for it,
 *             bytes left over after the packet's last field.
 *   -EPROTO   Protocol Error: a protocol other than MQTT 3.1.1 or 5, a
 *             property given twice, a property value the specification
 *             rules out (Topic Alias 0, Receive Maximum 0, ...), a packet
 *             identifier of 0, a SUBSCRIBE or UNSUBSCRIBE without filters, a
 *             topic name that is empty or holds a wildcard.
 *   -E2BIG    more than MQTT_PROPS_MAX properties or MQTT_FILTERS_MAX filters
 *             (or SUBACK/UNSUBACK codes): valid MQTT that Tandem does not hold.
 *             (A property list holds up to MQTT_PROPS_CAP, so that properties
 *             can be added to a decoded packet; such a packet is still
 *             written.)
 *
 * Topic filters are only checked as UTF-8 strings here: a filter that breaks
 * the wildcard rules is answered per filter (SUBACK 0x8F, 3.1.1: 0x80), which
 * is the caller's decision, not a reason to drop the packet.
 *
 * Encoding writes the shortest form the specifications allow for what the
 * structs hold, so encode(decode(bytes)) == bytes for such input:
 *   - the Remaining Length in the fewest bytes (MQTT 3.1.1 accepts longer
 *     encodings, which are read but not written);
 *   - PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5): Remaining Length 2 when the
 *     reason is 0 and there are no properties, 3 (no Property Length) when
 *     there are no properties, the full form otherwise;
 *   - DISCONNECT (MQTT 5): Remaining Length 0 when the reason is 0 and there
 *     are no properties, 1 when there are no properties;
 *   - AUTH: Remaining Length 0 when the reason is 0 and there are no
 *     properties; otherwise the reason and a Property Length (a one-byte AUTH,
 *     read like DISCONNECT's, is written with a Property Length of 0).
 * The fixed header's flags are written from the type (and, for PUBLISH, from
 * qos, dup and retain); p->flags is not read. In MQTT 3.1.1 the fields that
 * version cannot carry (properties, ack reasons, UNSUBACK codes, DISCONNECT's
 * reason) are not written. Strings are not checked for UTF-8 when written.
 */
#include "packet.h"

#include <errno.h>
#include <string.h>

#include "mapping.h"

/* ---- reading ------------------------------------------------------------ */

typedef struct rd {
    const uint8_t *p;
    size_t len, pos;
} rd_t;

static size_t rd_left(const rd_t *r)
{
    return r->len - r->pos;
}

static int rd_u8(rd_t *r, uint8_t *v)
{
    if (rd_left(r) < 1)
        return -EBADMSG;
    *v = r->p[r->pos++];
    return 0;
}

static int rd_u16(rd_t *r, uint16_t *v)
{
    if (rd_left(r) < 2)
        return -EBADMSG;
    *v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
    r->pos += 2;
    return 0;
}

static int rd_u32(rd_t *r, uint32_t *v)
{
    if (rd_left(r) < 4)
        return -EBADMSG;
    const uint8_t *b = r->p + r->pos;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    r->pos += 4;
    return 0;
}

/* The bytes a Variable Byte Integer of value v takes at least. */
static size_t vbi_size(uint32_t v)
{
    return v < 128u ? 1 : v < 16384u ? 2 : v < 2097152u ? 3 : 4;
}

/*
 * A Variable Byte Integer: at most four bytes. *n receives how many it took
 * (the caller decides whether a longer than minimal one is acceptable).
 * -EAGAIN when the bytes end inside it, -EBADMSG for a fifth byte.
 */
static int vbi_parse(const uint8_t *p, size_t len, uint32_t *v, size_t *n)
{
    uint32_t val = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= len)
            return -EAGAIN;
        val |= (uint32_t)(p[i] & 0x7F) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = val;
            *n = i + 1;
            return 0;
        }
    }
    return -EBADMSG;
}

/* A Variable Byte Integer inside a packet: MQTT 5 requires the minimal encoding. */
static int rd_vbi(rd_t *r, uint32_t *v)
{
    size_t n;
    int rc = vbi_parse(r->p + r->pos, rd_left(r), v, &n);
    if (rc < 0 || n != vbi_size(*v))
        return -EBADMSG;
    r->pos += n;
    return 0;
}

/* Binary Data: a two-byte length and that many bytes. */
static int rd_bin(rd_t *r, mqtt_bytes_t *b)
{
    uint16_t n;
    if (rd_u16(r, &n) < 0 || rd_left(r) < n)
        return -EBADMSG;
    b->p = r->p + r->pos;
    b->len = n;
    r->pos += n;
    return 0;
}

/* A UTF-8 Encoded String: well-formed UTF-8 without U+0000. */
static int rd_str(rd_t *r, mqtt_bytes_t *b)
{
    if (rd_bin(r, b) < 0 || !map_utf8_ok((const char *)b->p, b->len))
        return -EBADMSG;
    return 0;
}

/* A topic name (PUBLISH, Will, Response Topic): not empty, no wildcard. */
static bool topic_name_ok(const mqtt_bytes_t *t)
{
    return t->len > 0 && t->p && !memchr(t->p, '+', t->len) && !memchr(t->p, '#', t->len);
}

/* ---- properties ---------------------------------------------------------- */

enum ptype { PT_NONE, PT_BYTE, PT_U16, PT_U32, PT_VBI, PT_STR, PT_BIN, PT_PAIR };

/* Where a property may appear: a bit per packet type; bit 0 stands for the Will. */
#define IN(t) (1u << (t))
#define WILL 0
#define PROP_ID_END 0x2B

static const struct {
    uint8_t type;
    uint16_t in;
} prop_info[PROP_ID_END] = {
    [0x01] = { PT_BYTE, IN(MQTT_PUBLISH) | IN(WILL) },
    [0x02] = { PT_U32, IN(MQTT_PUBLISH) | IN(WILL) },
    [0x03] = { PT_STR, IN(MQTT_PUBLISH) | IN(WILL) },
    [0x08] = { PT_STR, IN(MQTT_PUBLISH) | IN(WILL) },
    [0x09] = { PT_BIN, IN(MQTT_PUBLISH) | IN(WILL) },
    [0x0B] = { PT_VBI, IN(MQTT_PUBLISH) | IN(MQTT_SUBSCRIBE) },
    [0x11] = { PT_U32, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) | IN(MQTT_DISCONNECT) },
    [0x12] = { PT_STR, IN(MQTT_CONNACK) },
    [0x13] = { PT_U16, IN(MQTT_CONNACK) },
    [0x15] = { PT_STR, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) | IN(MQTT_AUTH) },
    [0x16] = { PT_BIN, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) | IN(MQTT_AUTH) },
    [0x17] = { PT_BYTE, IN(MQTT_CONNECT) },
    [0x18] = { PT_U32, IN(WILL) },
    [0x19] = { PT_BYTE, IN(MQTT_CONNECT) },
    [0x1A] = { PT_STR, IN(MQTT_CONNACK) },
    [0x1C] = { PT_STR, IN(MQTT_CONNACK) | IN(MQTT_DISCONNECT) },
    [0x1F] = { PT_STR, IN(MQTT_CONNACK) | IN(MQTT_PUBACK) | IN(MQTT_PUBREC) | IN(MQTT_PUBREL) |
                           IN(MQTT_PUBCOMP) | IN(MQTT_SUBACK) | IN(MQTT_UNSUBACK) |
                           IN(MQTT_DISCONNECT) | IN(MQTT_AUTH) },
    [0x21] = { PT_U16, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) },
    [0x22] = { PT_U16, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) },
    [0x23] = { PT_U16, IN(MQTT_PUBLISH) },
    [0x24] = { PT_BYTE, IN(MQTT_CONNACK) },
    [0x25] = { PT_BYTE, IN(MQTT_CONNACK) },
    [0x26] = { PT_PAIR, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) | IN(MQTT_PUBLISH) | IN(WILL) |
                            IN(MQTT_PUBACK) | IN(MQTT_PUBREC) | IN(MQTT_PUBREL) | IN(MQTT_PUBCOMP) |
                            IN(MQTT_SUBSCRIBE) | IN(MQTT_SUBACK) | IN(MQTT_UNSUBSCRIBE) |
                            IN(MQTT_UNSUBACK) | IN(MQTT_DISCONNECT) | IN(MQTT_AUTH) },
    [0x27] = { PT_U32, IN(MQTT_CONNECT) | IN(MQTT_CONNACK) },
    [0x28] = { PT_BYTE, IN(MQTT_CONNACK) },
    [0x29] = { PT_BYTE, IN(MQTT_CONNACK) },
    [0x2A] = { PT_BYTE, IN(MQTT_CONNACK) },
};

/* The property's type when id may appear in where (a packet type or WILL), else PT_NONE. */
static enum ptype prop_type(uint8_t id, int where)
{
    if (id >= PROP_ID_END || !(prop_info[id].in & IN(where)))
        return PT_NONE;
    return (enum ptype)prop_info[id].type;
}

/* Whether id may be given more than once in where. */
static bool prop_repeats(uint8_t id, int where)
{
    return id == MQTT_PROP_USER || (id == MQTT_PROP_SUBSCRIPTION_ID && where == MQTT_PUBLISH);
}

/*
 * The values the specification makes a Protocol Error: -EPROTO. The value's
 * type range (a Byte, a Two Byte Integer) is the caller's.
 */
static int prop_value_check(const mqtt_prop_t *pr)
{
    switch (pr->id) {
    case MQTT_PROP_PAYLOAD_FORMAT:
    case MQTT_PROP_REQUEST_PROBLEM_INFO:
    case MQTT_PROP_REQUEST_RESPONSE_INFO:
    case MQTT_PROP_MAXIMUM_QOS:
    case MQTT_PROP_RETAIN_AVAILABLE:
    case MQTT_PROP_WILDCARD_SUB_AVAILABLE:
    case MQTT_PROP_SUB_ID_AVAILABLE:
    case MQTT_PROP_SHARED_SUB_AVAILABLE:
        return pr->value > 1 ? -EPROTO : 0;
    case MQTT_PROP_RECEIVE_MAXIMUM:
    case MQTT_PROP_MAXIMUM_PACKET_SIZE:
    case MQTT_PROP_TOPIC_ALIAS:
    case MQTT_PROP_SUBSCRIPTION_ID:
        return pr->value == 0 ? -EPROTO : 0;
    case MQTT_PROP_RESPONSE_TOPIC:
        return topic_name_ok(&pr->data) ? 0 : -EPROTO;
    default:
        return 0;
    }
}

/* Properties given twice that may be given once: -EPROTO. */
static int props_multiplicity(const mqtt_props_t *props, int where)
{
    uint64_t seen = 0;
    for (size_t i = 0; i < props->n; i++) {
        uint8_t id = props->p[i].id;
        uint64_t bit = (uint64_t)1 << (id & 63);
        if ((seen & bit) && !prop_repeats(id, where))
            return -EPROTO;
        seen |= bit;
    }
    return 0;
}

/* A Property Length and the properties it covers, allowed in where (a packet type or WILL). */
static int rd_props(rd_t *r, int where, mqtt_props_t *props)
{
    uint32_t plen;
    int rc;

    props->n = 0;
    if (rd_vbi(r, &plen) < 0 || plen > rd_left(r))
        return -EBADMSG;
    rd_t b = { r->p + r->pos, plen, 0 };
    r->pos += plen;

    while (rd_left(&b) > 0) {
        uint8_t id;
        mqtt_prop_t pr = { 0 };
        uint16_t v16;
        uint8_t v8;

        /* The identifier is a Variable Byte Integer; all defined ones take one byte. */
        if (rd_u8(&b, &id) < 0 || id >= 0x80)
            return -EBADMSG;
        enum ptype t = prop_type(id, where);
        if (t == PT_NONE)
            return -EBADMSG;
        pr.id = id;
        switch (t) {
        case PT_BYTE:
            rc = rd_u8(&b, &v8);
            pr.value = v8;
            break;
        case PT_U16:
            rc = rd_u16(&b, &v16);
            pr.value = v16;
            break;
        case PT_U32:
            rc = rd_u32(&b, &pr.value);
            break;
        case PT_VBI:
            rc = rd_vbi(&b, &pr.value);
            break;
        case PT_STR:
            rc = rd_str(&b, &pr.data);
            break;
        case PT_BIN:
            rc = rd_bin(&b, &pr.data);
            break;
        case PT_PAIR:
            rc = rd_str(&b, &pr.data);
            if (rc == 0)
                rc = rd_str(&b, &pr.data2);
            break;
        default:
            rc = -EBADMSG;
        }
        if (rc < 0)
            return rc;
        if ((rc = prop_value_check(&pr)) < 0)
            return rc;
        if (props->n == MQTT_PROPS_MAX)
            return -E2BIG;
        props->p[props->n++] = pr;
    }
    return props_multiplicity(props, where);
}

/* ---- reason codes ---------------------------------------------------------- */

static bool rc_in(uint8_t rc, const uint8_t *set, size_t n)
{
    return memchr(set, rc, n) != NULL;
}

#define RC_IN(rc, ...)                                                                             \
    rc_in((rc), (const uint8_t[]){ __VA_ARGS__ }, sizeof((const uint8_t[]){ __VA_ARGS__ }))

/* Whether rc is a reason code MQTT 5 defines for the packet type. */
static bool reason_ok(int type, uint8_t rc)
{
    switch (type) {
    case MQTT_CONNACK:
        return RC_IN(rc, 0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
                     0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
        return RC_IN(rc, 0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99);
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return RC_IN(rc, 0x00, 0x92);
    case MQTT_SUBACK:
        return RC_IN(rc, 0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2);
    case MQTT_UNSUBACK:
        return RC_IN(rc, 0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91);
    case MQTT_DISCONNECT:
        return RC_IN(rc, 0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F,
                     0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E,
                     0x9F, 0xA0, 0xA1, 0xA2);
    case MQTT_AUTH:
        return RC_IN(rc, 0x00, 0x18, 0x19);
    default:
        return false;
    }
}

/* MQTT 3.1.1: CONNACK return codes 0..5; SUBACK 0, 1, 2 or 0x80. */
static bool reason311_ok(int type, uint8_t rc)
{
    if (type == MQTT_CONNACK)
        return rc <= 5;
    return rc <= 2 || rc == MQTT_RC311_SUB_FAILURE;
}

/* ---- framing --------------------------------------------------------------- */

int mqtt_frame(const uint8_t *buf, size_t len, size_t max_len, size_t *packet_len)
{
    uint32_t rl;
    size_t n;

    if (len < 1)
        return 0;
    if ((buf[0] >> 4) == 0)
        return -EBADMSG;
    int rc = vbi_parse(buf + 1, len - 1, &rl, &n);
    if (rc == -EAGAIN)
        return 0;
    if (rc < 0)
        return rc;
    size_t total = 1 + n + (size_t)rl;
    if (total > max_len)
        return -EMSGSIZE;
    if (total > len)
        return 0;
    *packet_len = total;
    return 1;
}

/* ---- the head of a packet ---------------------------------------------------- */

int mqtt_head(const uint8_t *buf, size_t len, int version, mqtt_head_t *h)
{
    uint32_t rl;
    size_t n;

    if (len < 1)
        return 0;
    memset(h, 0, sizeof(*h));
    h->type = (enum mqtt_type)(buf[0] >> 4);
    h->flags = buf[0] & 0x0F;
    if (h->type == 0)
        return -EBADMSG;
    int rc = vbi_parse(buf + 1, len - 1, &rl, &n);
    if (rc == -EAGAIN)
        return 0;
    if (rc < 0)
        return rc;
    h->header_len = 1 + n;
    h->total = 1 + n + (size_t)rl;
    const uint8_t *b = buf + h->header_len;
    size_t have = len - h->header_len; /* of the body, maybe not all */
    size_t idpos;
    switch (h->type) {
    case MQTT_PUBLISH:
        h->qos = (h->flags >> 1) & 3;
        if (h->qos == 3 || rl < 2)
            return -EBADMSG;
        if (have < 2)
            return 0;
        idpos = 2 + (size_t)(b[0] << 8 | b[1]);
        if (idpos > rl)
            return -EBADMSG;
        if (h->qos == 0)
            return 1;
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
    case MQTT_SUBSCRIBE:
    case MQTT_SUBACK:
    case MQTT_UNSUBSCRIBE:
    case MQTT_UNSUBACK:
        idpos = 0;
        break;
    default:
        return 1;
    }
    if (h->type != MQTT_PUBLISH) {
        bool two =
            h->type == MQTT_PUBREL || h->type == MQTT_SUBSCRIBE || h->type == MQTT_UNSUBSCRIBE;
        if (h->flags != (two ? 2 : 0))
            return -EBADMSG;
    }
    if (idpos + 2 > rl)
        return -EBADMSG;
    bool ack = h->type >= MQTT_PUBACK && h->type <= MQTT_PUBCOMP;
    size_t need = idpos + 2 + (ack && version == MQTT_V5 && rl > 2 ? 1 : 0);
    if (have < need)
        return 0;
    h->id = (uint16_t)(b[idpos] << 8 | b[idpos + 1]);
    if (need > idpos + 2)
        h->reason = b[idpos + 2];
    return h->id == 0 ? -EPROTO : 1;
}

/* ---- decoding -------------------------------------------------------------- */

static int dec_connect(rd_t *r, bool minimal, mqtt_connect_t *c)
{
    mqtt_bytes_t name;
    uint8_t level, fl;
    int rc;

    if (rd_bin(r, &name) < 0 || rd_u8(r, &level) < 0)
        return -EBADMSG;
    if (name.len != 4 || memcmp(name.p, "MQTT", 4) != 0) {
        /* MQTT 3.1 ("MQIsdp", level 3) or something else: not a protocol spoken here. */
        return -EPROTO;
    }
    c->version = level;
    if (level != MQTT_V311 && level != MQTT_V5)
        return -EPROTO;
    if (level == MQTT_V5 && !minimal)
        return -EBADMSG;
    if (rd_u8(r, &fl) < 0 || rd_u16(r, &c->keepalive) < 0)
        return -EBADMSG;
    if (fl & 0x01)
        return -EBADMSG; /* reserved */
    c->clean_start = fl & 0x02;
    c->will = fl & 0x04;
    c->will_qos = (fl >> 3) & 3;
    c->will_retain = fl & 0x20;
    c->has_password = fl & 0x40;
    c->has_username = fl & 0x80;
    if (c->will_qos == 3 || (!c->will && (c->will_qos || c->will_retain)))
        return -EBADMSG;
    if (level == MQTT_V311 && c->has_password && !c->has_username)
        return -EBADMSG;
    if (level == MQTT_V5) {
        if ((rc = rd_props(r, MQTT_CONNECT, &c->props)) < 0)
            return rc;
        if (mqtt_prop_find(&c->props, MQTT_PROP_AUTH_DATA) &&
            !mqtt_prop_find(&c->props, MQTT_PROP_AUTH_METHOD))
            return -EPROTO;
    }
    if (rd_str(r, &c->client_id) < 0)
        return -EBADMSG;
    if (c->will) {
        if (level == MQTT_V5 && (rc = rd_props(r, WILL, &c->will_props)) < 0)
            return rc;
        if (rd_str(r, &c->will_topic) < 0 || rd_bin(r, &c->will_payload) < 0)
            return -EBADMSG;
        if (!topic_name_ok(&c->will_topic))
            return -EPROTO;
    }
    if (c->has_username && rd_str(r, &c->username) < 0)
        return -EBADMSG;
    if (c->has_password && rd_bin(r, &c->password) < 0)
        return -EBADMSG;
    return 0;
}

static int dec_connack(rd_t *r, int version, mqtt_connack_t *c)
{
    uint8_t fl;

    if (rd_u8(r, &fl) < 0 || rd_u8(r, &c->reason) < 0)
        return -EBADMSG;
    if (fl & 0xFE)
        return -EBADMSG;
    c->session_present = fl & 1;
    if (version == MQTT_V5 ? !reason_ok(MQTT_CONNACK, c->reason)
                           : !reason311_ok(MQTT_CONNACK, c->reason))
        return -EBADMSG;
    if (c->session_present && c->reason != 0)
        return -EPROTO;
    if (version == MQTT_V5)
        return rd_props(r, MQTT_CONNACK, &c->props);
    return 0;
}

static int dec_publish(rd_t *r, int version, uint8_t flags, mqtt_publish_t *p)
{
    int rc;

    p->qos = (flags >> 1) & 3;
    p->dup = flags & 8;
    p->retain = flags & 1;
    if (p->qos == 3 || (version == MQTT_V5 && p->dup && p->qos == 0))
        return -EBADMSG;
    if (rd_str(r, &p->topic) < 0)
        return -EBADMSG;
    if (p->qos > 0) {
        if (rd_u16(r, &p->id) < 0)
            return -EBADMSG;
        if (p->id == 0)
            return -EPROTO;
    }
    if (version == MQTT_V5 && (rc = rd_props(r, MQTT_PUBLISH, &p->props)) < 0)
        return rc;
    if (p->topic.len == 0 ? version != MQTT_V5 || !mqtt_prop_find(&p->props, MQTT_PROP_TOPIC_ALIAS)
                          : !topic_name_ok(&p->topic))
        return -EPROTO;
    p->payload.p = r->p + r->pos;
    p->payload.len = rd_left(r);
    r->pos = r->len;
    return 0;
}

static int dec_ack(rd_t *r, int version, int type, mqtt_ack_t *a)
{
    if (rd_u16(r, &a->id) < 0)
        return -EBADMSG;
    if (a->id == 0)
        return -EPROTO;
    if (version != MQTT_V5 || rd_left(r) == 0)
        return 0;
    rd_u8(r, &a->reason);
    if (!reason_ok(type, a->reason))
        return -EBADMSG;
    if (rd_left(r) == 0)
        return 0;
    return rd_props(r, type, &a->props);
}

static int dec_subscribe(rd_t *r, int version, int type, mqtt_subscribe_t *s)
{
    int rc;

    if (rd_u16(r, &s->id) < 0)
        return -EBADMSG;
    if (s->id == 0)
        return -EPROTO;
    if (version == MQTT_V5 && (rc = rd_props(r, type, &s->props)) < 0)
        return rc;
    while (rd_left(r) > 0) {
        mqtt_bytes_t f;
        uint8_t o = 0;
        if (rd_str(r, &f) < 0)
            return -EBADMSG;
        if (type == MQTT_SUBSCRIBE) {
            if (rd_u8(r, &o) < 0)
                return -EBADMSG;
            if (version == MQTT_V311) {
                if (o > 2)
                    return -EBADMSG;
            } else {
                if (o & 0xC0)
                    return -EBADMSG;
                /* QoS 3, Retain Handling 3, No Local on a shared subscription */
                if ((o & 3) == 3 || ((o >> 4) & 3) == 3)
                    return -EPROTO;
                if ((o & 4) && f.len >= 7 && memcmp(f.p, "$share/", 7) == 0)
                    return -EPROTO;
            }
        }
        if (s->n == MQTT_FILTERS_MAX)
            return -E2BIG;
        s->filter[s->n] = f;
        s->options[s->n] = o;
        s->n++;
    }
    return s->n == 0 ? -EPROTO : 0;
}

static int dec_suback(rd_t *r, int version, int type, mqtt_suback_t *s)
{
    int rc;

    if (rd_u16(r, &s->id) < 0)
        return -EBADMSG;
    if (s->id == 0)
        return -EPROTO;
    if (version == MQTT_V311 && type == MQTT_UNSUBACK)
        return 0;
    if (version == MQTT_V5 && (rc = rd_props(r, type, &s->props)) < 0)
        return rc;
    while (rd_left(r) > 0) {
        uint8_t c;
        rd_u8(r, &c);
        if (version == MQTT_V5 ? !reason_ok(type, c) : !reason311_ok(type, c))
            return -EBADMSG;
        if (s->n == MQTT_FILTERS_MAX)
            return -E2BIG;
        s->codes[s->n++] = c;
    }
    return s->n == 0 ? -EPROTO : 0;
}

static int dec_reason(rd_t *r, int version, int type, mqtt_reason_t *m)
{
    if (version != MQTT_V5 || rd_left(r) == 0)
        return 0;
    rd_u8(r, &m->reason);
    if (!reason_ok(type, m->reason))
        return -EBADMSG;
    if (rd_left(r) == 0)
        return 0;
    return rd_props(r, type, &m->props);
}

/*
 * On any error out->type is the packet's type when the fixed header was read.
 * A CONNECT refused with -EPROTO for its protocol leaves in out->u.connect.version
 * the level it announced (0 when the name is not "MQTT"), so that the caller
 * can answer CONNACK 0x01 (3.1.1) or 0x84 (5) before closing.
 */
int mqtt_decode(const uint8_t *pkt, size_t len, int version, mqtt_packet_t *out)
{
    uint32_t rl;
    size_t n;
    int rc;

    if (!pkt || len < 2 || vbi_parse(pkt + 1, len - 1, &rl, &n) < 0 || 1 + n + rl != len)
        return -EBADMSG;
    int type = pkt[0] >> 4;
    uint8_t flags = pkt[0] & 0x0F;
    bool minimal = n == vbi_size(rl);

    memset(out, 0, sizeof(*out));
    out->type = (enum mqtt_type)type;
    out->flags = flags;
    if (type == 0)
        return -EBADMSG;
    if (type != MQTT_CONNECT) {
        if (version != MQTT_V311 && version != MQTT_V5)
            return -EINVAL;
        if (version == MQTT_V5 && !minimal)
            return -EBADMSG;
        if (type == MQTT_AUTH && version != MQTT_V5)
            return -EBADMSG;
    }
    if (type != MQTT_PUBLISH) {
        bool two = type == MQTT_PUBREL || type == MQTT_SUBSCRIBE || type == MQTT_UNSUBSCRIBE;
        if (flags != (two ? 2 : 0))
            return -EBADMSG;
    }

    rd_t r = { pkt + 1 + n, rl, 0 };
    switch (type) {
    case MQTT_CONNECT:
        rc = dec_connect(&r, minimal, &out->u.connect);
        break;
    case MQTT_CONNACK:
        rc = dec_connack(&r, version, &out->u.connack);
        break;
    case MQTT_PUBLISH:
        rc = dec_publish(&r, version, flags, &out->u.publish);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        rc = dec_ack(&r, version, type, &out->u.ack);
        break;
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        rc = dec_subscribe(&r, version, type, &out->u.subscribe);
        break;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        rc = dec_suback(&r, version, type, &out->u.suback);
        break;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        rc = dec_reason(&r, version, type, &out->u.reason);
        break;
    default: /* PINGREQ, PINGRESP */
        rc = 0;
    }
    if (rc < 0)
        return rc;
    return rd_left(&r) == 0 ? 0 : -EBADMSG;
}

/* ---- encoding -------------------------------------------------------------- */

/* Counts every byte; stores those that fit (none when buf is NULL). */
typedef struct wr {
    uint8_t *buf;
    size_t cap, pos;
} wr_t;

static void wr_u8(wr_t *w, uint8_t v)
{
    if (w->buf && w->pos < w->cap)
        w->buf[w->pos] = v;
    w->pos++;
}

static void wr_u16(wr_t *w, uint16_t v)
{
    wr_u8(w, (uint8_t)(v >> 8));
    wr_u8(w, (uint8_t)v);
}

static void wr_u32(wr_t *w, uint32_t v)
{
    wr_u16(w, (uint16_t)(v >> 16));
    wr_u16(w, (uint16_t)v);
}

static void wr_vbi(wr_t *w, uint32_t v)
{
    do {
        uint8_t b = v & 0x7F;
        v >>= 7;
        wr_u8(w, (uint8_t)(b | (v ? 0x80 : 0)));
    } while (v);
}

static void wr_raw(wr_t *w, const uint8_t *p, size_t len)
{
    if (w->buf && w->pos < w->cap && len)
        memcpy(w->buf + w->pos, p, len < w->cap - w->pos ? len : w->cap - w->pos);
    w->pos += len;
}

/* A two-byte length and the bytes: -EINVAL over 65535 bytes. */
static int wr_bin(wr_t *w, const mqtt_bytes_t *b)
{
    if (b->len > 65535 || (b->len && !b->p))
        return -EINVAL;
    wr_u16(w, (uint16_t)b->len);
    wr_raw(w, b->p, b->len);
    return 0;
}

/* One property's bytes, after checking it as decoding would: -EINVAL. */
static int wr_prop(wr_t *w, const mqtt_prop_t *pr, int where)
{
    enum ptype t = prop_type(pr->id, where);
    if (t == PT_NONE || prop_value_check(pr) < 0)
        return -EINVAL;
    wr_u8(w, pr->id);
    switch (t) {
    case PT_BYTE:
        if (pr->value > 0xFF)
            return -EINVAL;
        wr_u8(w, (uint8_t)pr->value);
        return 0;
    case PT_U16:
        if (pr->value > 0xFFFF)
            return -EINVAL;
        wr_u16(w, (uint16_t)pr->value);
        return 0;
    case PT_U32:
        wr_u32(w, pr->value);
        return 0;
    case PT_VBI:
        if (pr->value > MQTT_REMAINING_MAX)
            return -EINVAL;
        wr_vbi(w, pr->value);
        return 0;
    case PT_STR:
    case PT_BIN:
        return wr_bin(w, &pr->data);
    case PT_PAIR:
        if (wr_bin(w, &pr->data) < 0)
            return -EINVAL;
        return wr_bin(w, &pr->data2);
    default:
        return -EINVAL;
    }
}

/* A Property Length and the properties. */
static int wr_props(wr_t *w, const mqtt_props_t *props, int where)
{
    wr_t count = { NULL, 0, 0 };

    if (props->n > MQTT_PROPS_CAP || props_multiplicity(props, where) < 0)
        return -EINVAL;
    for (size_t i = 0; i < props->n; i++)
        if (wr_prop(&count, &props->p[i], where) < 0)
            return -EINVAL;
    if (count.pos > MQTT_REMAINING_MAX)
        return -EINVAL;
    wr_vbi(w, (uint32_t)count.pos);
    for (size_t i = 0; i < props->n; i++)
        wr_prop(w, &props->p[i], where);
    return 0;
}

static int enc_connect(wr_t *w, const mqtt_connect_t *c)
{
    int v = c->version;
    static const mqtt_bytes_t name = { (const uint8_t *)"MQTT", 4 };

    if (v != MQTT_V311 && v != MQTT_V5)
        return -EINVAL;
    if (c->will_qos > 2 || (!c->will && (c->will_qos || c->will_retain)))
        return -EINVAL;
    if (v == MQTT_V311 && c->has_password && !c->has_username)
        return -EINVAL;
    wr_bin(w, &name);
    wr_u8(w, (uint8_t)v);
    wr_u8(w, (uint8_t)((c->has_username ? 0x80 : 0) | (c->has_password ? 0x40 : 0) |
                       (c->will_retain ? 0x20 : 0) | c->will_qos << 3 | (c->will ? 0x04 : 0) |
                       (c->clean_start ? 0x02 : 0)));
    wr_u16(w, c->keepalive);
    if (v == MQTT_V5 && wr_props(w, &c->props, MQTT_CONNECT) < 0)
        return -EINVAL;
    if (wr_bin(w, &c->client_id) < 0)
        return -EINVAL;
    if (c->will) {
        if (!topic_name_ok(&c->will_topic))
            return -EINVAL;
        if (v == MQTT_V5 && wr_props(w, &c->will_props, WILL) < 0)
            return -EINVAL;
        if (wr_bin(w, &c->will_topic) < 0 || wr_bin(w, &c->will_payload) < 0)
            return -EINVAL;
    }
    if (c->has_username && wr_bin(w, &c->username) < 0)
        return -EINVAL;
    if (c->has_password && wr_bin(w, &c->password) < 0)
        return -EINVAL;
    return 0;
}

static int enc_connack(wr_t *w, int version, const mqtt_connack_t *c)
{
    if (version == MQTT_V5 ? !reason_ok(MQTT_CONNACK, c->reason)
                           : !reason311_ok(MQTT_CONNACK, c->reason))
        return -EINVAL;
    if (c->session_present && c->reason != 0)
        return -EINVAL;
    wr_u8(w, c->session_present ? 1 : 0);
    wr_u8(w, c->reason);
    if (version == MQTT_V5)
        return wr_props(w, &c->props, MQTT_CONNACK);
    return 0;
}

static int enc_publish(wr_t *w, int version, const mqtt_publish_t *p)
{
    if (p->qos > 2 || (p->qos > 0 && p->id == 0) || (version == MQTT_V5 && p->dup && !p->qos))
        return -EINVAL;
    if (p->topic.len == 0 ? version != MQTT_V5 || !mqtt_prop_find(&p->props, MQTT_PROP_TOPIC_ALIAS)
                          : !topic_name_ok(&p->topic))
        return -EINVAL;
    if (wr_bin(w, &p->topic) < 0)
        return -EINVAL;
    if (p->qos > 0)
        wr_u16(w, p->id);
    if (version == MQTT_V5 && wr_props(w, &p->props, MQTT_PUBLISH) < 0)
        return -EINVAL;
    if (p->payload.len && !p->payload.p)
        return -EINVAL;
    wr_raw(w, p->payload.p, p->payload.len);
    return 0;
}

static int enc_ack(wr_t *w, int version, int type, const mqtt_ack_t *a)
{
    if (a->id == 0)
        return -EINVAL;
    wr_u16(w, a->id);
    if (version != MQTT_V5)
        return 0;
    if (!reason_ok(type, a->reason))
        return -EINVAL;
    if (a->reason == 0 && a->props.n == 0)
        return 0;
    wr_u8(w, a->reason);
    if (a->props.n == 0)
        return 0;
    return wr_props(w, &a->props, type);
}

static int enc_subscribe(wr_t *w, int version, int type, const mqtt_subscribe_t *s)
{
    if (s->id == 0 || s->n == 0 || s->n > MQTT_FILTERS_MAX)
        return -EINVAL;
    wr_u16(w, s->id);
    if (version == MQTT_V5 && wr_props(w, &s->props, type) < 0)
        return -EINVAL;
    for (size_t i = 0; i < s->n; i++) {
        if (wr_bin(w, &s->filter[i]) < 0)
            return -EINVAL;
        if (type != MQTT_SUBSCRIBE)
            continue;
        uint8_t o = s->options[i];
        if (version == MQTT_V311 ? o > 2
                                 : (o & 0xC0) || (o & 3) == 3 || ((o >> 4) & 3) == 3 ||
                                       ((o & 4) && s->filter[i].len >= 7 &&
                                        memcmp(s->filter[i].p, "$share/", 7) == 0))
            return -EINVAL;
        wr_u8(w, o);
    }
    return 0;
}

static int enc_suback(wr_t *w, int version, int type, const mqtt_suback_t *s)
{
    if (s->id == 0)
        return -EINVAL;
    wr_u16(w, s->id);
    if (version == MQTT_V311 && type == MQTT_UNSUBACK)
        return 0;
    if (s->n == 0 || s->n > MQTT_FILTERS_MAX)
        return -EINVAL;
    if (version == MQTT_V5 && wr_props(w, &s->props, type) < 0)
        return -EINVAL;
    for (size_t i = 0; i < s->n; i++) {
        uint8_t c = s->codes[i];
        if (version == MQTT_V5 ? !reason_ok(type, c) : !reason311_ok(type, c))
            return -EINVAL;
        wr_u8(w, c);
    }
    return 0;
}

static int enc_reason(wr_t *w, int version, int type, const mqtt_reason_t *m)
{
    if (version != MQTT_V5)
        return type == MQTT_AUTH ? -EINVAL : 0;
    if (!reason_ok(type, m->reason))
        return -EINVAL;
    if (m->reason == 0 && m->props.n == 0)
        return 0;
    wr_u8(w, m->reason);
    if (m->props.n == 0 && type == MQTT_DISCONNECT)
        return 0;
    return wr_props(w, &m->props, type);
}

static int enc_body(wr_t *w, const mqtt_packet_t *p, int version)
{
    switch (p->type) {
    case MQTT_CONNECT:
        return enc_connect(w, &p->u.connect);
    case MQTT_CONNACK:
        return enc_connack(w, version, &p->u.connack);
    case MQTT_PUBLISH:
        return enc_publish(w, version, &p->u.publish);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return enc_ack(w, version, p->type, &p->u.ack);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE:
        return enc_subscribe(w, version, p->type, &p->u.subscribe);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return enc_suback(w, version, p->type, &p->u.suback);
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return enc_reason(w, version, p->type, &p->u.reason);
    case MQTT_PINGREQ:
    case MQTT_PINGRESP:
        return 0;
    default:
        return -EINVAL;
    }
}

ssize_t mqtt_encode(const mqtt_packet_t *p, int version, uint8_t *buf, size_t cap)
{
    wr_t count = { NULL, 0, 0 };
    uint8_t flags = 0;

    if (p->type == MQTT_CONNECT)
        version = p->u.connect.version;
    else if (version != MQTT_V311 && version != MQTT_V5)
        return -EINVAL;
    if (enc_body(&count, p, version) < 0 || count.pos > MQTT_REMAINING_MAX)
        return -EINVAL;
    if (p->type == MQTT_PUBLISH)
        flags = (uint8_t)((p->u.publish.dup ? 8 : 0) | p->u.publish.qos << 1 |
                          (p->u.publish.retain ? 1 : 0));
    else if (p->type == MQTT_PUBREL || p->type == MQTT_SUBSCRIBE || p->type == MQTT_UNSUBSCRIBE)
        flags = 2;

    size_t total = 1 + vbi_size((uint32_t)count.pos) + count.pos;
    if (total > cap)
        return (ssize_t)total;
    wr_t w = { buf, cap, 0 };
    wr_u8(&w, (uint8_t)(p->type << 4 | flags));
    wr_vbi(&w, (uint32_t)count.pos);
    enc_body(&w, p, version);
    return (ssize_t)w.pos;
}

/* ---- properties, for callers ------------------------------------------------ */

const mqtt_prop_t *mqtt_prop_find(const mqtt_props_t *props, uint8_t id)
{
    for (size_t i = 0; i < props->n; i++)
        if (props->p[i].id == id)
            return &props->p[i];
    return NULL;
}

size_t mqtt_prop_remove(mqtt_props_t *props, uint8_t id)
{
    size_t k = 0, n = props->n;
    for (size_t i = 0; i < n; i++)
        if (props->p[i].id != id)
            props->p[k++] = props->p[i];
    props->n = k;
    return n - k;
}

/* The first property id, or a new one at the end (zeroed); NULL when full. */
static mqtt_prop_t *prop_slot(mqtt_props_t *props, uint8_t id)
{
    mqtt_prop_t *pr = (mqtt_prop_t *)mqtt_prop_find(props, id);
    if (pr)
        return pr;
    if (props->n >= MQTT_PROPS_CAP)
        return NULL;
    pr = &props->p[props->n++];
    memset(pr, 0, sizeof(*pr));
    pr->id = id;
    return pr;
}

int mqtt_prop_set_value(mqtt_props_t *props, uint8_t id, uint32_t value)
{
    mqtt_prop_t *pr = prop_slot(props, id);
    if (!pr)
        return -E2BIG;
    pr->value = value;
    return 0;
}

int mqtt_prop_set_data(mqtt_props_t *props, uint8_t id, const void *data, size_t len)
{
    mqtt_prop_t *pr = prop_slot(props, id);
    if (!pr)
        return -E2BIG;
    pr->data.p = data;
    pr->data.len = len;
    return 0;
}

size_t mqtt_prop_remove_user(mqtt_props_t *props, const void *name, size_t len)
{
    size_t k = 0, n = props->n;
    for (size_t i = 0; i < n; i++) {
        const mqtt_prop_t *pr = &props->p[i];
        if (pr->id == MQTT_PROP_USER && pr->data.len == len &&
            (len == 0 || memcmp(pr->data.p, name, len) == 0))
            continue;
        props->p[k++] = *pr;
    }
    props->n = k;
    return n - k;
}

int mqtt_prop_add_user(mqtt_props_t *props, const void *name, size_t nlen, const void *value,
                       size_t vlen)
{
    if (props->n >= MQTT_PROPS_CAP)
        return -E2BIG;
    props->p[props->n++] =
        (mqtt_prop_t){ .id = MQTT_PROP_USER, .data = { name, nlen }, .data2 = { value, vlen } };
    return 0;
}

const char *mqtt_type_name(int type)
{
    static const char *const names[] = {
        [MQTT_CONNECT] = "CONNECT",   [MQTT_CONNACK] = "CONNACK",
        [MQTT_PUBLISH] = "PUBLISH",   [MQTT_PUBACK] = "PUBACK",
        [MQTT_PUBREC] = "PUBREC",     [MQTT_PUBREL] = "PUBREL",
        [MQTT_PUBCOMP] = "PUBCOMP",   [MQTT_SUBSCRIBE] = "SUBSCRIBE",
        [MQTT_SUBACK] = "SUBACK",     [MQTT_UNSUBSCRIBE] = "UNSUBSCRIBE",
        [MQTT_UNSUBACK] = "UNSUBACK", [MQTT_PINGREQ] = "PINGREQ",
        [MQTT_PINGRESP] = "PINGRESP", [MQTT_DISCONNECT] = "DISCONNECT",
        [MQTT_AUTH] = "AUTH",
    };
    if (type < MQTT_CONNECT || type > MQTT_AUTH)
        return "?";
    return names[type];
}
