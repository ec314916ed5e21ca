/*
 * Equality of two decoded MQTT packets (mqtt/packet.h) by content: the
 * bytes their strings, binaries and payloads point to, not the pointers.
 * Shared by tests/unit/test_packet.c and tests/fuzz/fuzz_packet.c.
 */
#ifndef TANDEM_PACKET_EQ_H
#define TANDEM_PACKET_EQ_H

#include <stdbool.h>
#include <string.h>

#include "packet.h"

static inline bool pk_bytes_eq(const mqtt_bytes_t *a, const mqtt_bytes_t *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static inline bool pk_props_eq(const mqtt_props_t *a, const mqtt_props_t *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const mqtt_prop_t *x = &a->p[i], *y = &b->p[i];
        if (x->id != y->id || x->value != y->value || !pk_bytes_eq(&x->data, &y->data) ||
            !pk_bytes_eq(&x->data2, &y->data2))
            return false;
    }
    return true;
}

static inline bool pk_eq(const mqtt_packet_t *a, const mqtt_packet_t *b)
{
    if (a->type != b->type || a->flags != b->flags)
        return false;
    switch (a->type) {
    case MQTT_CONNECT: {
        const mqtt_connect_t *x = &a->u.connect, *y = &b->u.connect;
        return x->version == y->version && x->clean_start == y->clean_start &&
               x->keepalive == y->keepalive && pk_props_eq(&x->props, &y->props) &&
               pk_bytes_eq(&x->client_id, &y->client_id) && x->will == y->will &&
               x->will_qos == y->will_qos && x->will_retain == y->will_retain &&
               pk_props_eq(&x->will_props, &y->will_props) &&
               pk_bytes_eq(&x->will_topic, &y->will_topic) &&
               pk_bytes_eq(&x->will_payload, &y->will_payload) &&
               x->has_username == y->has_username && x->has_password == y->has_password &&
               pk_bytes_eq(&x->username, &y->username) && pk_bytes_eq(&x->password, &y->password);
    }
    case MQTT_CONNACK:
        return a->u.connack.session_present == b->u.connack.session_present &&
               a->u.connack.reason == b->u.connack.reason &&
               pk_props_eq(&a->u.connack.props, &b->u.connack.props);
    case MQTT_PUBLISH: {
        const mqtt_publish_t *x = &a->u.publish, *y = &b->u.publish;
        return x->qos == y->qos && x->dup == y->dup && x->retain == y->retain &&
               pk_bytes_eq(&x->topic, &y->topic) && x->id == y->id &&
               pk_props_eq(&x->props, &y->props) && pk_bytes_eq(&x->payload, &y->payload);
    }
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return a->u.ack.id == b->u.ack.id && a->u.ack.reason == b->u.ack.reason &&
               pk_props_eq(&a->u.ack.props, &b->u.ack.props);
    case MQTT_SUBSCRIBE:
    case MQTT_UNSUBSCRIBE: {
        const mqtt_subscribe_t *x = &a->u.subscribe, *y = &b->u.subscribe;
        if (x->id != y->id || x->n != y->n || !pk_props_eq(&x->props, &y->props))
            return false;
        for (size_t i = 0; i < x->n; i++)
            if (!pk_bytes_eq(&x->filter[i], &y->filter[i]) || x->options[i] != y->options[i])
                return false;
        return true;
    }
    case MQTT_SUBACK:
    case MQTT_UNSUBACK: {
        const mqtt_suback_t *x = &a->u.suback, *y = &b->u.suback;
        return x->id == y->id && x->n == y->n && pk_props_eq(&x->props, &y->props) &&
               memcmp(x->codes, y->codes, x->n) == 0;
    }
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return a->u.reason.reason == b->u.reason.reason &&
               pk_props_eq(&a->u.reason.props, &b->u.reason.props);
    default:
        return true;
    }
}

#endif
