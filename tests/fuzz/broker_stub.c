/*
 * For the CoAP request fuzz target: the MQTT client's interface (bridge/mqtt.h)
 * without a network, so that the fuzzer runs the bridge's own code fast and
 * alone. It answers the way the client does, through the inbox, only when the
 * target says so, and checks what the bridge hands it: every topic is one a
 * broker accepts and one of the target's mappings renders (they all start
 * with "fz/"), or the status topic.
 */
#include "broker_stub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mapping.h"

#define ACKS_MAX 64

struct bridge_mqtt {
    bridge_inbox_t *inbox;  /* borrowed */
    const gw_config_t *cfg; /* borrowed */
    bool connected;
    uint64_t acks[ACKS_MAX]; /* request ids waiting for their acknowledgement */
    size_t nacks;
    uint64_t published;
};

static void push(bridge_mqtt_t *m, enum inbox_type type, uint64_t id, int rc)
{
    inbox_event_t ev = { .type = type, .id = id, .rc = rc };
    inbox_push(m->inbox, &ev);
}

bridge_mqtt_t *mqtt_new(const gw_config_t *cfg, bridge_inbox_t *inbox, persist_t *store)
{
    (void)store;
    bridge_mqtt_t *m = calloc(1, sizeof(*m));
    if (m) {
        m->cfg = cfg;
        m->inbox = inbox;
    }
    return m;
}

void mqtt_free(bridge_mqtt_t *m)
{
    free(m);
}

int mqtt_connect(bridge_mqtt_t *m)
{
    m->connected = true;
    push(m, EV_CONNECTED, 0, 0);
    return 0;
}

int mqtt_publish(bridge_mqtt_t *m, const mqtt_msg_t *msg, uint64_t id)
{
    size_t tlen = strlen(msg->topic);
    FUZZ_CHECK(map_topic_ok(msg->topic, tlen));
    FUZZ_CHECK(!strncmp(msg->topic, "fz/", 3) || !strcmp(msg->topic, m->cfg->mqtt.status_topic));
    FUZZ_CHECK(msg->qos >= 0 && msg->qos <= 2);
    FUZZ_CHECK(msg->len <= (size_t)m->cfg->coap.max_payload);
    FUZZ_CHECK(!msg->device || map_identity_ok(msg->device, strlen(msg->device)));
    if (!m->connected)
        return -ENOTCONN;
    if (msg->qos > 0 && id != UINT64_MAX) {
        if (m->nacks == ACKS_MAX)
            return -EAGAIN;
        m->acks[m->nacks++] = id;
    }
    m->published++;
    return 0;
}

size_t mqtt_payload_room(bridge_mqtt_t *m, const mqtt_msg_t *msg)
{
    (void)m;
    (void)msg;
    return SIZE_MAX;
}

int mqtt_subscribe(bridge_mqtt_t *m, char *const *filters, const int *qos, int n, uint64_t id)
{
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(qos[i] >= 0 && qos[i] <= 2 && filters[i] && *filters[i]);
    push(m, EV_SUB_OK, id, 0);
    return 0;
}

int mqtt_unsubscribe(bridge_mqtt_t *m, char *const *filters, int n)
{
    (void)m;
    (void)filters;
    (void)n;
    return 0;
}

void mqtt_set_config(bridge_mqtt_t *m, const gw_config_t *cfg)
{
    m->cfg = cfg;
}

uint64_t mqtt_dropped(bridge_mqtt_t *m, uint64_t *too_large)
{
    (void)m;
    *too_large = 0;
    return 0;
}

void mqtt_shutdown(bridge_mqtt_t *m, int timeout_ms)
{
    (void)m;
    (void)timeout_ms;
}

void mqtt_kick(bridge_mqtt_t *m, size_t waiting)
{
    (void)m;
    (void)waiting;
}

void mqtt_trace_settle(bridge_mqtt_t *m)
{
    (void)m;
}

void mqtt_kick_due(bridge_mqtt_t *m)
{
    (void)m;
}

int mqtt_kick_wait_ms(const bridge_mqtt_t *m)
{
    (void)m;
    return -1;
}

void stub_acknowledge(bridge_mqtt_t *m, int reason)
{
    for (size_t i = 0; i < m->nacks; i++)
        push(m, reason >= 0x80 ? EV_PUB_FAILED : EV_PUB_OK, m->acks[i], reason);
    m->nacks = 0;
}

void stub_lose_connection(bridge_mqtt_t *m)
{
    m->connected = false;
    m->nacks = 0;
    push(m, EV_CONN_LOST, 0, 0);
}

void stub_message(bridge_mqtt_t *m, const char *topic, size_t tlen, const uint8_t *payload,
                  size_t len)
{
    inbox_msg_t *im = malloc(sizeof(*im) + tlen + len);
    if (!im)
        return;
    im->topic_len = tlen;
    im->len = len;
    im->qos = 0;
    im->expiry_s = len % 3 == 0 ? (long)len : -1;
    strcpy(im->content_type, len % 2 ? "application/json" : "");
    memcpy(im->bytes, topic, tlen);
    memcpy(im->bytes + tlen, payload, len);
    inbox_event_t ev = { .type = EV_MESSAGE, .data = im, .bytes = sizeof(*im) + tlen + len };
    if (inbox_push(m->inbox, &ev) < 0)
        free(im);
}

void mqtt_set_one_at_a_time(bridge_mqtt_t *m, bool on)
{
    (void)m;
    (void)on;
}

int mqtt_republish(bridge_mqtt_t *m, const record_pub_t *pub)
{
    FUZZ_CHECK(map_topic_ok(pub->topic, pub->topic_len));
    m->published++;
    return 0;
}

int mqtt_restart(bridge_mqtt_t *m, bool resend_sent)
{
    (void)resend_sent;
    m->nacks = 0;
    return 0;
}

int mqtt_disconnect(bridge_mqtt_t *m)
{
    stub_lose_connection(m);
    return 0;
}

int mqtt_resend_lost(bridge_mqtt_t *m)
{
    (void)m;
    return 0;
}
