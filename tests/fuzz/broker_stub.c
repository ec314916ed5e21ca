/*
 * For the CoAP request fuzz target: the MQTT client's interface
 * (mqtt/client.h) without a network, so that the fuzzer runs the bridge's
 * own code fast and alone. It calls the bridge back the way the client does,
 * only when the target says so, and checks what the bridge hands it: every
 * topic is one a broker accepts and one of the target's mappings renders
 * (they all start with "fz/"), or the status topic.
 */
#include "broker_stub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mapping.h"

#define ACKS_MAX 64

struct mqtt_client {
    mqtt_client_handlers_t h;
    void *data;
    char *status_topic;
    bool connected;
    uint64_t acks[ACKS_MAX]; /* ids waiting for their acknowledgement */
    size_t nacks;
    mqtt_client_stats_t st;
};

void mqtt_client_options_from_config(mqtt_client_options_t *o, const gw_config_t *cfg)
{
    *o = (mqtt_client_options_t){ .uri = cfg->mqtt.uri,
                                  .client_id = cfg->mqtt.client_id,
                                  .max_inflight = cfg->mqtt.max_inflight,
                                  .status_topic = cfg->mqtt.status_topic };
}

mqtt_client_t *mqtt_client_new(ev_loop_t *loop, const mqtt_client_options_t *o,
                               const mqtt_client_handlers_t *h, void *data, char *err,
                               size_t errlen)
{
    (void)loop;
    mqtt_client_t *c = calloc(1, sizeof(*c));
    if (c) {
        c->h = *h;
        c->data = data;
        c->status_topic = strdup(o->status_topic ? o->status_topic : "");
    }
    if (!c || !c->status_topic) {
        snprintf(err, errlen, "out of memory");
        mqtt_client_free(c);
        return NULL;
    }
    return c;
}

void mqtt_client_free(mqtt_client_t *c)
{
    if (c)
        free(c->status_topic);
    free(c);
}

int mqtt_client_start(mqtt_client_t *c)
{
    c->connected = true;
    c->st.attempts++;
    c->st.connects++;
    if (c->h.connected)
        c->h.connected(c->data, false);
    return 0;
}

bool mqtt_client_connected(const mqtt_client_t *c)
{
    return c->connected;
}

uint64_t mqtt_client_retry_in_ms(const mqtt_client_t *c)
{
    (void)c;
    return 0;
}

int mqtt_client_publish(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id)
{
    size_t tlen = strlen(msg->topic);
    FUZZ_CHECK(map_topic_ok(msg->topic, tlen));
    FUZZ_CHECK(!strncmp(msg->topic, "fz/", 3) || !strcmp(msg->topic, c->status_topic));
    FUZZ_CHECK(msg->qos >= 0 && msg->qos <= 2);
    FUZZ_CHECK(!msg->device || map_identity_ok(msg->device, strlen(msg->device)));
    if (!c->connected)
        return -ENOTCONN;
    if (msg->qos > 0) {
        if (c->nacks == ACKS_MAX)
            return -EAGAIN;
        c->acks[c->nacks++] = id;
    }
    c->st.published++;
    return 0;
}

int mqtt_client_publish_again(mqtt_client_t *c, const mqtt_message_t *msg, uint64_t id,
                              uint16_t pid)
{
    (void)pid;
    return mqtt_client_publish(c, msg, id);
}

void mqtt_client_reserve_id(mqtt_client_t *c, uint16_t pid)
{
    (void)c;
    (void)pid;
}

void mqtt_client_set_max_inflight(mqtt_client_t *c, int n)
{
    (void)c;
    (void)n;
}

size_t mqtt_client_payload_room(const mqtt_client_t *c, const mqtt_message_t *msg)
{
    (void)c;
    (void)msg;
    return SIZE_MAX;
}

const mqtt_client_stats_t *mqtt_client_stats(const mqtt_client_t *c)
{
    return &c->st;
}

size_t mqtt_client_unacked(const mqtt_client_t *c)
{
    return c->nacks;
}

int mqtt_client_subscribe(mqtt_client_t *c, const char *const *filters, const int *qos, size_t n,
                          uint64_t id)
{
    uint8_t codes[32] = { 0 };
    FUZZ_CHECK(n > 0 && n <= 32);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(qos[i] >= 0 && qos[i] <= 2 && filters[i] && *filters[i]);
    if (!c->connected)
        return -ENOTCONN;
    if (c->h.subscribed)
        c->h.subscribed(c->data, id, n, codes);
    return 0;
}

int mqtt_client_unsubscribe(mqtt_client_t *c, const char *const *filters, size_t n)
{
    FUZZ_CHECK(n > 0 && n <= 32 && filters[0]);
    return c->connected ? 0 : -ENOTCONN;
}

void mqtt_client_shutdown(mqtt_client_t *c, int timeout_ms)
{
    (void)timeout_ms;
    c->connected = false;
}

const char *mqtt_reason_text(int version, int code)
{
    (void)version;
    return code >= 0x80 ? "refused" : "success";
}

void stub_acknowledge(mqtt_client_t *c, int reason)
{
    /* A callback may publish: acknowledge what waits now, not what it adds. */
    uint64_t ids[ACKS_MAX];
    size_t n = c->nacks;
    memcpy(ids, c->acks, n * sizeof(ids[0]));
    c->nacks = 0;
    for (size_t i = 0; i < n; i++) {
        c->st.acked++;
        if (c->h.acked)
            c->h.acked(c->data, ids[i], reason);
    }
}

void stub_lose_connection(mqtt_client_t *c)
{
    if (!c->connected)
        return;
    c->connected = false;
    c->nacks = 0;
    c->st.losses++;
    if (c->h.lost)
        c->h.lost(c->data, -ECONNRESET, "the stub dropped it");
}

void stub_message(mqtt_client_t *c, const char *topic, size_t tlen, const uint8_t *payload,
                  size_t len)
{
    char t[256];
    memcpy(t, topic, tlen);
    t[tlen] = '\0';
    mqtt_incoming_t m = { .topic = t,
                          .topic_len = tlen,
                          .payload = payload,
                          .len = len,
                          .content_type = len % 2 ? "application/json" : NULL,
                          .has_expiry = len % 3 == 0,
                          .expiry = (uint32_t)len };
    if (c->h.message && c->connected)
        c->h.message(c->data, &m);
}
