/*
 * MQTT 3.1.1 and 5 control packets, as the MQTT listener reads them from
 * devices and from the broker, and writes them to either. Pure code: no I/O,
 * no allocation, no globals.
 *
 * Decoding checks every length against the packet's own bytes, the fixed
 * header's flags, the strings' UTF-8 (MQTT: well-formed, no U+0000), the
 * properties' identifiers, types and multiplicity for the packet type, and
 * the reason codes' ranges. Decoded strings, binaries and payloads point into
 * the packet given; they live as long as it.
 *
 * Encoding writes a packet from the same structs (so a decoded packet can be
 * changed and written again) and returns its whole length, like snprintf: a
 * return larger than cap means nothing usable was written.
 */
#ifndef TANDEM_PACKET_H
#define TANDEM_PACKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Protocol levels in CONNECT. */
enum { MQTT_V311 = 4, MQTT_V5 = 5 };

/* The largest Remaining Length MQTT can express (four length bytes). */
#define MQTT_REMAINING_MAX 268435455u
/* The most properties one decoded property list may hold (User Properties included). */
#define MQTT_PROPS_MAX 32
/*
 * What a property list can hold: MQTT_PROPS_MAX as decoded, and room for the
 * properties the gateway adds to a packet it relays (the `device` User
 * Property, a CONNACK's limits). mqtt_prop_set_* and mqtt_prop_add_pair fill
 * up to this; mqtt_decode refuses more than MQTT_PROPS_MAX.
 */
#define MQTT_PROPS_CAP (MQTT_PROPS_MAX + 8)
/* The most topic filters one SUBSCRIBE or UNSUBSCRIBE may hold. */
#define MQTT_FILTERS_MAX 32

enum mqtt_type {
    MQTT_CONNECT = 1,
    MQTT_CONNACK = 2,
    MQTT_PUBLISH = 3,
    MQTT_PUBACK = 4,
    MQTT_PUBREC = 5,
    MQTT_PUBREL = 6,
    MQTT_PUBCOMP = 7,
    MQTT_SUBSCRIBE = 8,
    MQTT_SUBACK = 9,
    MQTT_UNSUBSCRIBE = 10,
    MQTT_UNSUBACK = 11,
    MQTT_PINGREQ = 12,
    MQTT_PINGRESP = 13,
    MQTT_DISCONNECT = 14,
    MQTT_AUTH = 15,
};

/* MQTT 5 property identifiers (§2.2.2.2) that Tandem acts on; the others pass as they are. */
enum mqtt_prop_id {
    MQTT_PROP_PAYLOAD_FORMAT = 0x01,
    MQTT_PROP_MESSAGE_EXPIRY = 0x02,
    MQTT_PROP_CONTENT_TYPE = 0x03,
    MQTT_PROP_RESPONSE_TOPIC = 0x08,
    MQTT_PROP_CORRELATION_DATA = 0x09,
    MQTT_PROP_SUBSCRIPTION_ID = 0x0B,
    MQTT_PROP_SESSION_EXPIRY = 0x11,
    MQTT_PROP_ASSIGNED_CLIENT_ID = 0x12,
    MQTT_PROP_SERVER_KEEPALIVE = 0x13,
    MQTT_PROP_AUTH_METHOD = 0x15,
    MQTT_PROP_AUTH_DATA = 0x16,
    MQTT_PROP_REQUEST_PROBLEM_INFO = 0x17,
    MQTT_PROP_WILL_DELAY = 0x18,
    MQTT_PROP_REQUEST_RESPONSE_INFO = 0x19,
    MQTT_PROP_RESPONSE_INFO = 0x1A,
    MQTT_PROP_SERVER_REFERENCE = 0x1C,
    MQTT_PROP_REASON_STRING = 0x1F,
    MQTT_PROP_RECEIVE_MAXIMUM = 0x21,
    MQTT_PROP_TOPIC_ALIAS_MAXIMUM = 0x22,
    MQTT_PROP_TOPIC_ALIAS = 0x23,
    MQTT_PROP_MAXIMUM_QOS = 0x24,
    MQTT_PROP_RETAIN_AVAILABLE = 0x25,
    MQTT_PROP_USER = 0x26,
    MQTT_PROP_MAXIMUM_PACKET_SIZE = 0x27,
    MQTT_PROP_WILDCARD_SUB_AVAILABLE = 0x28,
    MQTT_PROP_SUB_ID_AVAILABLE = 0x29,
    MQTT_PROP_SHARED_SUB_AVAILABLE = 0x2A,
};

/* Reason codes Tandem sends itself. */
enum {
    MQTT_RC_SUCCESS = 0x00,
    MQTT_RC_UNSPECIFIED = 0x80,
    MQTT_RC_MALFORMED = 0x81,
    MQTT_RC_PROTOCOL_ERROR = 0x82,
    MQTT_RC_NOT_AUTHORIZED = 0x87,
    MQTT_RC_SERVER_UNAVAILABLE = 0x88,
    MQTT_RC_SERVER_BUSY = 0x89,
    MQTT_RC_KEEPALIVE_TIMEOUT = 0x8D,
    MQTT_RC_SESSION_TAKEN_OVER = 0x8E,
    MQTT_RC_TOPIC_ALIAS_INVALID = 0x94,
    MQTT_RC_PACKET_TOO_LARGE = 0x95,
    MQTT_RC_QUOTA_EXCEEDED = 0x97,
    MQTT_RC_ADMIN_ACTION = 0x98,
    MQTT_RC_SHARED_NOT_SUPPORTED = 0x9E,
    /* MQTT 3.1.1 CONNACK return codes */
    MQTT_RC311_SERVER_UNAVAILABLE = 0x03,
    MQTT_RC311_NOT_AUTHORIZED = 0x05,
    /* MQTT 3.1.1 SUBACK failure */
    MQTT_RC311_SUB_FAILURE = 0x80,
};

/* Bytes borrowed from a packet (or, when encoding, from the caller). */
typedef struct mqtt_bytes {
    const uint8_t *p;
    size_t len;
} mqtt_bytes_t;

/*
 * One property. value holds a Byte, Two Byte Integer, Four Byte Integer or
 * Variable Byte Integer; data a UTF-8 string or binary data; for a User
 * Property (a string pair) data is the name and data2 the value.
 */
typedef struct mqtt_prop {
    uint8_t id;
    uint32_t value;
    mqtt_bytes_t data, data2;
} mqtt_prop_t;

typedef struct mqtt_props {
    size_t n;
    mqtt_prop_t p[MQTT_PROPS_CAP];
} mqtt_props_t;

typedef struct mqtt_connect {
    uint8_t version; /* MQTT_V311 or MQTT_V5 */
    bool clean_start;
    uint16_t keepalive;
    mqtt_props_t props;
    mqtt_bytes_t client_id;
    bool will;
    uint8_t will_qos;
    bool will_retain;
    mqtt_props_t will_props; /* MQTT 5 */
    mqtt_bytes_t will_topic, will_payload;
    bool has_username, has_password;
    mqtt_bytes_t username, password;
} mqtt_connect_t;

typedef struct mqtt_connack {
    bool session_present;
    uint8_t reason; /* 3.1.1: the return code */
    mqtt_props_t props;
} mqtt_connack_t;

typedef struct mqtt_publish {
    uint8_t qos;
    bool dup, retain;
    mqtt_bytes_t topic; /* may be empty in MQTT 5 when a Topic Alias stands for it */
    uint16_t id;        /* 0 for QoS 0 */
    mqtt_props_t props;
    mqtt_bytes_t payload;
} mqtt_publish_t;

/* PUBACK, PUBREC, PUBREL, PUBCOMP; and UNSUBACK's id (its reasons in codes). */
typedef struct mqtt_ack {
    uint16_t id;
    uint8_t reason; /* 0 when absent */
    mqtt_props_t props;
} mqtt_ack_t;

typedef struct mqtt_subscribe {
    uint16_t id;
    mqtt_props_t props;
    size_t n;
    mqtt_bytes_t filter[MQTT_FILTERS_MAX];
    uint8_t options[MQTT_FILTERS_MAX]; /* 3.1.1: the requested QoS; UNSUBSCRIBE: 0 */
} mqtt_subscribe_t;

/* SUBACK and UNSUBACK. */
typedef struct mqtt_suback {
    uint16_t id;
    mqtt_props_t props;
    size_t n;
    uint8_t codes[MQTT_FILTERS_MAX];
} mqtt_suback_t;

/* DISCONNECT and AUTH (MQTT 5; in 3.1.1 DISCONNECT is empty). */
typedef struct mqtt_reason {
    uint8_t reason;
    mqtt_props_t props;
} mqtt_reason_t;

typedef struct mqtt_packet {
    enum mqtt_type type;
    uint8_t flags; /* the fixed header's low four bits */
    union {
        mqtt_connect_t connect;
        mqtt_connack_t connack;
        mqtt_publish_t publish;
        mqtt_ack_t ack;             /* PUBACK, PUBREC, PUBREL, PUBCOMP */
        mqtt_subscribe_t subscribe; /* SUBSCRIBE, UNSUBSCRIBE */
        mqtt_suback_t suback;       /* SUBACK, UNSUBACK */
        mqtt_reason_t reason;       /* DISCONNECT, AUTH */
    } u;                            /* PINGREQ, PINGRESP: nothing */
} mqtt_packet_t;

/*
 * Finds the first packet in a byte stream. Returns 1 with *packet_len its
 * whole length (fixed header included) when it is all in buf; 0 when more
 * bytes are needed; -EBADMSG when the Remaining Length is malformed (a fifth
 * length byte, or a type of 0); -EMSGSIZE when the packet would be longer
 * than max_len (known as soon as the length bytes are).
 */
int mqtt_frame(const uint8_t *buf, size_t len, size_t max_len, size_t *packet_len);

/*
 * What the first bytes of a packet tell: its fixed header and, for the types
 * that have one, its packet identifier (PUBLISH: after its topic, when its QoS
 * is 1 or 2), and an acknowledgement's reason (MQTT 5 PUBACK, PUBREC, PUBREL,
 * PUBCOMP; 0 when absent). Enough to answer or skip a packet that is not read
 * whole (over a size bound, or more than the codec holds).
 */
typedef struct mqtt_head {
    enum mqtt_type type;
    uint8_t flags;
    size_t header_len; /* the fixed header's bytes */
    size_t total;      /* the whole packet's bytes */
    uint8_t qos;       /* PUBLISH */
    uint16_t id;       /* 0 when the packet has none */
    uint8_t reason;
} mqtt_head_t;

/*
 * Reads h from the first len bytes of a packet (the packet may be longer).
 * Returns 1 when h is complete; 0 when more bytes are needed (a PUBLISH needs
 * its topic and packet identifier, at most 65,544 bytes); -EBADMSG when those
 * bytes cannot start a packet (a type of 0, a fifth length byte, a QoS of 3,
 * a topic or identifier past the Remaining Length, flags that are wrong for
 * the type); -EPROTO for a packet identifier of 0.
 */
int mqtt_head(const uint8_t *buf, size_t len, int version, mqtt_head_t *h);

/*
 * Decodes one whole packet (as mqtt_frame delimited it). version is the
 * connection's protocol level (MQTT_V311 or MQTT_V5); a CONNECT carries its
 * own and is decoded whatever version says. Returns 0; -EBADMSG for a
 * malformed packet (lengths, flags, UTF-8, a property not allowed in the
 * packet type, a reserved value); -EPROTO for a protocol error (a property
 * given twice that may be given once, a packet identifier of 0 where one is
 * needed, an unknown protocol level); -E2BIG when a bound above is exceeded
 * (MQTT_PROPS_MAX, MQTT_FILTERS_MAX).
 */
int mqtt_decode(const uint8_t *pkt, size_t len, int version, mqtt_packet_t *out);

/*
 * Writes p as a packet of the connection's version into buf (cap bytes).
 * Returns the packet's whole length (nothing usable written when it exceeds
 * cap), or -EINVAL when p cannot be written (a Remaining Length over
 * MQTT_REMAINING_MAX, a string over 65535 bytes, a field out of range).
 * Properties are written only for MQTT_V5; the CONNECT uses p's own version.
 */
ssize_t mqtt_encode(const mqtt_packet_t *p, int version, uint8_t *buf, size_t cap);

/* The first property id in props, or NULL. */
const mqtt_prop_t *mqtt_prop_find(const mqtt_props_t *props, uint8_t id);
/* Removes every property id from props. The number removed. */
size_t mqtt_prop_remove(mqtt_props_t *props, uint8_t id);
/* Adds a numeric property (or replaces the first of that id). 0, or -E2BIG when full. */
int mqtt_prop_set_value(mqtt_props_t *props, uint8_t id, uint32_t value);
/* Adds a string or binary property (or replaces the first of that id). 0, or -E2BIG. */
int mqtt_prop_set_data(mqtt_props_t *props, uint8_t id, const void *data, size_t len);
/* Removes every User Property called name (len bytes). The number removed. */
size_t mqtt_prop_remove_user(mqtt_props_t *props, const void *name, size_t len);
/* Adds a User Property name=value at the end. 0, or -E2BIG when full. */
int mqtt_prop_add_user(mqtt_props_t *props, const void *name, size_t nlen, const void *value,
                       size_t vlen);

/* A name for a packet type ("CONNECT"...), for logs; "?" for others. */
const char *mqtt_type_name(int type);

#endif
