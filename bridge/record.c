/*
 * Reading the MQTT client's store records. See record.h.
 *
 * Paho 1.3.12 writes:
 * - "s-N"/"s5-N": a sent QoS 1/2 PUBLISH packet, as on the wire, waiting for
 *   its acknowledgement; "r-N"/"r5-N": a received QoS 2 PUBLISH;
 *   "sc-N"/"sc5-N": a PUBREL packet (the "5" keys are MQTT 5 packets);
 * - "c-N"/"c5-N": a command queued while disconnected, in the host's own
 *   layout (ints): type, token, then for a PUBLISH the topic (NUL-terminated),
 *   payload length, payload, QoS, retained; for a SUBSCRIBE the count, then
 *   each filter (NUL-terminated), its QoS (and MQTT 5 options); for an
 *   UNSUBSCRIBE the count and each filter. MQTT 5 commands end with their
 *   properties (wire format);
 * - "q-N"/"q5-N": a message received and queued for the application:
 *   payload length, payload, QoS, retained, dup, message id, topic
 *   (NUL-terminated), topic length, then MQTT 5 properties.
 */
#include "record.h"

#include <MQTTSubscribeOpts.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mapping.h"

/* Packet types (MQTT §2.1.2) as Paho uses them for its commands too. */
enum { T_PUBLISH = 3, T_PUBREL = 6, T_SUBSCRIBE = 8, T_UNSUBSCRIBE = 10 };
/* More filters than any configuration subscribes to at once. */
#define FILTERS_MAX 4096

struct rd {
    const uint8_t *p, *end;
};

static int fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    if (why && whylen) {
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool take(struct rd *r, size_t n, const uint8_t **out)
{
    if ((size_t)(r->end - r->p) < n)
        return false;
    if (out)
        *out = r->p;
    r->p += n;
    return true;
}

static bool take_u8(struct rd *r, unsigned *v)
{
    const uint8_t *b;
    if (!take(r, 1, &b))
        return false;
    *v = b[0];
    return true;
}

static bool take_u16(struct rd *r, unsigned *v)
{
    const uint8_t *b;
    if (!take(r, 2, &b))
        return false;
    *v = (unsigned)b[0] << 8 | b[1];
    return true;
}

/* MQTT's variable byte integer: at most 4 bytes. */
static bool take_varint(struct rd *r, size_t *v)
{
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        unsigned b;
        if (!take_u8(r, &b))
            return false;
        n |= (size_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = n;
            return true;
        }
    }
    return false;
}

/* A host int of a command record. */
static bool take_int(struct rd *r, int *v)
{
    const uint8_t *b;
    if (!take(r, sizeof(int), &b))
        return false;
    memcpy(v, b, sizeof(int));
    return true;
}

/* A NUL-terminated string of a command record. */
static bool take_cstr(struct rd *r, const char **s, size_t *len)
{
    const uint8_t *nul = memchr(r->p, '\0', (size_t)(r->end - r->p));
    if (!nul)
        return false;
    *s = (const char *)r->p;
    *len = (size_t)(nul - r->p);
    r->p = nul + 1;
    return true;
}

/* An MQTT UTF-8 string (two-byte length) that a broker accepts. */
static bool take_mqtt_string(struct rd *r)
{
    unsigned n;
    const uint8_t *s;
    return take_u16(r, &n) && take(r, n, &s) && map_mqtt_string_ok((const char *)s, n);
}

/*
 * MQTT 5 properties (wire format, starting at their length), every one of a
 * known identifier with a well-formed value. publish: only those a PUBLISH
 * may carry.
 */
static bool take_props(struct rd *r, bool publish, const uint8_t **props, size_t *plen)
{
    size_t len;
    const uint8_t *start;
    if (!take_varint(r, &len) || !take(r, len, &start))
        return false;
    if (props) {
        *props = start;
        *plen = len;
    }
    struct rd p = { start, start + len };
    while (p.p < p.end) {
        size_t id, v;
        unsigned u;
        if (!take_varint(&p, &id))
            return false;
        bool ok;
        switch (id) {
        case 0x01: /* payload format indicator */
            ok = take_u8(&p, &u) && u <= 1;
            break;
        case 0x02: /* message expiry interval */
            ok = take(&p, 4, NULL);
            break;
        case 0x23: /* topic alias */
            ok = take_u16(&p, &u);
            break;
        case 0x03: /* content type */
        case 0x08: /* response topic */
            ok = take_mqtt_string(&p);
            break;
        case 0x09: /* correlation data */
            ok = take_u16(&p, &u) && take(&p, u, NULL);
            break;
        case 0x26: /* user property */
            ok = take_mqtt_string(&p) && take_mqtt_string(&p);
            break;
        case 0x0b: /* subscription identifier */
            ok = take_varint(&p, &v) && v > 0;
            break;
        case 0x1f: /* reason string */
            ok = !publish && take_mqtt_string(&p);
            break;
        default:
            ok = false;
        }
        if (!ok)
            return false;
    }
    return true;
}

/* A PUBLISH, PUBREL or received PUBLISH packet ("s", "s5", "sc", "sc5", "r", "r5"). */
static int read_packet(const uint8_t *data, size_t len, bool v5, bool pubrel, record_pub_t *pub,
                       char *why, size_t whylen)
{
    struct rd r = { data, data + len };
    unsigned head;
    size_t remaining;
    if (!take_u8(&r, &head) || !take_varint(&r, &remaining))
        return fail(why, whylen, "truncated fixed header");
    if (remaining != (size_t)(r.end - r.p))
        return fail(why, whylen, "remaining length %zu, record holds %zu", remaining,
                    (size_t)(r.end - r.p));
    unsigned type = head >> 4, msgid;
    if (pubrel) {
        if (type != T_PUBREL || (head & 0x0f) != 0x02 || !take_u16(&r, &msgid) || !msgid)
            return fail(why, whylen, "not a PUBREL");
        return RECORD_OTHER; /* a reason code and properties may follow; Paho checks them */
    }
    int qos = (head >> 1) & 3;
    if (type != T_PUBLISH || qos == 0 || qos == 3)
        return fail(why, whylen, "not a QoS 1/2 PUBLISH (header 0x%02x)", head);
    unsigned tlen;
    const uint8_t *topic;
    if (!take_u16(&r, &tlen) || !take(&r, tlen, &topic))
        return fail(why, whylen, "truncated topic");
    if (!map_topic_ok((const char *)topic, tlen))
        return fail(why, whylen, "a topic a broker refuses");
    if (!take_u16(&r, &msgid) || !msgid)
        return fail(why, whylen, "no packet identifier");
    const uint8_t *props = NULL;
    size_t plen = 0;
    if (v5 && !take_props(&r, true, &props, &plen))
        return fail(why, whylen, "malformed properties");
    if (pub) {
        *pub = (record_pub_t){ .topic = (const char *)topic,
                               .topic_len = tlen,
                               .payload = r.p,
                               .len = (size_t)(r.end - r.p),
                               .qos = qos,
                               .retain = head & 1,
                               .props = props,
                               .props_len = plen };
    }
    return RECORD_PUBLISH;
}

/* A command queued while disconnected ("c", "c5"). */
static int read_command(const uint8_t *data, size_t len, bool v5, record_pub_t *pub, char *why,
                        size_t whylen)
{
    struct rd r = { data, data + len };
    int type, token, count, qos, retained, payloadlen;
    const char *s;
    size_t slen;
    if (!take_int(&r, &type) || !take_int(&r, &token))
        return fail(why, whylen, "truncated command");
    switch (type) {
    case T_PUBLISH: {
        const uint8_t *payload;
        if (!take_cstr(&r, &s, &slen) || !map_topic_ok(s, slen))
            return fail(why, whylen, "a topic a broker refuses");
        if (!take_int(&r, &payloadlen) || payloadlen < 0 || !take(&r, (size_t)payloadlen, &payload))
            return fail(why, whylen, "bad payload length");
        if (!take_int(&r, &qos) || qos < 0 || qos > 2 || !take_int(&r, &retained) || retained < 0 ||
            retained > 1)
            return fail(why, whylen, "bad QoS or retain flag");
        const uint8_t *props = NULL;
        size_t plen = 0;
        if (v5 && !take_props(&r, true, &props, &plen))
            return fail(why, whylen, "malformed properties");
        if (r.p != r.end)
            return fail(why, whylen, "bytes after the command");
        if (pub)
            *pub = (record_pub_t){ .topic = s,
                                   .topic_len = slen,
                                   .payload = payload,
                                   .len = (size_t)payloadlen,
                                   .qos = qos,
                                   .retain = retained,
                                   .props = props,
                                   .props_len = plen };
        return RECORD_PUBLISH;
    }
    case T_SUBSCRIBE:
    case T_UNSUBSCRIBE:
        if (!take_int(&r, &count) || count < 1 || count > FILTERS_MAX)
            return fail(why, whylen, "bad filter count");
        for (int i = 0; i < count; i++) {
            if (!take_cstr(&r, &s, &slen) || !slen || !map_mqtt_string_ok(s, slen))
                return fail(why, whylen, "a filter a broker refuses");
            if (type == T_SUBSCRIBE && (!take_int(&r, &qos) || qos < 0 || qos > 2 ||
                                        (v5 && !take(&r, sizeof(MQTTSubscribe_options), NULL))))
                return fail(why, whylen, "bad subscription options");
        }
        if (v5 && !take_props(&r, false, NULL, NULL))
            return fail(why, whylen, "malformed properties");
        if (r.p != r.end)
            return fail(why, whylen, "bytes after the command");
        return RECORD_OTHER;
    default:
        return fail(why, whylen, "command type %d", type);
    }
}

/* A message queued for the application ("q", "q5"). */
static int read_queued(const uint8_t *data, size_t len, bool v5, char *why, size_t whylen)
{
    struct rd r = { data, data + len };
    int payloadlen, qos, retained, dup, msgid, topiclen;
    const char *s;
    size_t slen;
    if (!take_int(&r, &payloadlen) || payloadlen < 0 || !take(&r, (size_t)payloadlen, NULL) ||
        !take_int(&r, &qos) || qos < 0 || qos > 2 || !take_int(&r, &retained) ||
        !take_int(&r, &dup) || !take_int(&r, &msgid) || !take_cstr(&r, &s, &slen) ||
        !take_int(&r, &topiclen) || topiclen < 0 || (size_t)topiclen > slen)
        return fail(why, whylen, "malformed queued message");
    if (v5 && !take_props(&r, true, NULL, NULL))
        return fail(why, whylen, "malformed properties");
    return RECORD_OTHER;
}

int record_read(const char *key, const uint8_t *data, size_t len, record_pub_t *pub, char *why,
                size_t whylen)
{
    static const struct {
        const char *prefix;
        int kind; /* 's' sent, 'p' PUBREL, 'r' received, 'c' command, 'q' queued */
        bool v5;
    } kinds[] = {
        { "s5-", 's', true }, { "sc5-", 'p', true }, { "r5-", 'r', true },  { "c5-", 'c', true },
        { "q5-", 'q', true }, { "s-", 's', false },  { "sc-", 'p', false }, { "r-", 'r', false },
        { "c-", 'c', false }, { "q-", 'q', false },
    };
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        size_t n = strlen(kinds[i].prefix);
        if (strncmp(key, kinds[i].prefix, n))
            continue;
        const char *num = key + n;
        if (!*num || strspn(num, "0123456789") != strlen(num))
            return fail(why, whylen, "not a record name");
        switch (kinds[i].kind) {
        case 's':
            return read_packet(data, len, kinds[i].v5, false, pub, why, whylen);
        case 'p':
            return read_packet(data, len, kinds[i].v5, true, NULL, why, whylen);
        case 'r': {
            int rc = read_packet(data, len, kinds[i].v5, false, NULL, why, whylen);
            return rc < 0 ? rc : RECORD_RECEIVED;
        }
        case 'c':
            return read_command(data, len, kinds[i].v5, pub, why, whylen);
        default:
            return read_queued(data, len, kinds[i].v5, why, whylen);
        }
    }
    return fail(why, whylen, "not a record name");
}
