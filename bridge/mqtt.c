/*
 * Paho MQTTAsync wrapper: TLS, MQTT 5 and 3.1.1, Last Will on the status topic.
 */
#include "mqtt.h"

#include <MQTTAsync.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "mapping.h"

struct bridge_mqtt {
    MQTTAsync client;
    const gw_config_t *cfg; /* borrowed */
    bridge_inbox_t *inbox;  /* borrowed */
    bool v5;
    bool buffering;            /* publishes are kept while disconnected */
    MQTTClient_persistence pp; /* Paho's view of the persist_t it was given */
    atomic_int max_payload;    /* coap.max_payload, for Paho's threads (cfg may change) */
    atomic_ullong too_large;   /* messages over coap.max_payload */
    atomic_ullong dropped;     /* messages the inbox had no room for */
    atomic_int window;         /* publishes the broker lets be in flight */
    atomic_bool backlog;       /* what a (re)connection finds may be queued */
    atomic_bool delivered;     /* an EV_DELIVERED waits in the inbox */
    /*
     * Connected, as the callbacks last told (MQTTAsync_isConnected() takes
     * the lock Paho's threads hold while they work: once per publish, the
     * loop would wait for them).
     */
    atomic_bool connected;
    /* The kick (mqtt_kick): publishes handed over, and the one that may be due. */
    unsigned long handed, kick_handed;
    bool kick_wanted;
    uint64_t kick_at_ms;
    atomic_uint max_packet; /* MQTT 5: the broker's Maximum Packet Size, 0 = none given */
    bool one_at_a_time;     /* the next connections let one publish be in flight */
    /* To create the client again (client_replace): */
    char server[300];
    MQTTAsync_createOptions co;
    atomic_bool tainted;    /* the client holds a message Paho has freed (note_write_failure) */
    unsigned long replaced; /* clients given up for that reason */
};

/* A topic filter no mapping can subscribe to ($...) (mqtt_kick). */
#define KICK_FILTER "$tandem/kick"

static void push(bridge_mqtt_t *m, enum inbox_type type, uint64_t id, int rc, const char *text)
{
    inbox_event_t ev = { .type = type, .id = id, .rc = rc };
    if (text)
        snprintf(ev.text, sizeof(ev.text), "%s", text);
    inbox_push(m->inbox, &ev);
}

/* A request id travels through Paho as the callback context. */
struct pub_ctx {
    bridge_mqtt_t *m;
    uint64_t id;
};

static void on_connect_ok(void *ctx, MQTTAsync_successData *r)
{
    bridge_mqtt_t *m = ctx;
    (void)r;
    persist_session_start(m->pp.context);
    atomic_store(&m->connected, true);
    atomic_store(&m->window, m->cfg->mqtt.max_inflight);
    atomic_store(&m->backlog, true);
    push(ctx, EV_CONNECTED, 0, 0, NULL);
}

/*
 * Paho's thread, for every completed QoS 1/2 publish, restored ones included;
 * one EV_DELIVERED at a time waits in the inbox.
 */
static void on_delivered(void *ctx, MQTTAsync_token token)
{
    bridge_mqtt_t *m = ctx;
    persist_delivered(m->pp.context, token); /* the token is the message id here */
    inbox_event_t ev = { .type = EV_DELIVERED };
    if (!atomic_exchange(&m->delivered, true) && inbox_push(m->inbox, &ev) < 0)
        atomic_store(&m->delivered, false); /* the inbox is full: the next one tries */
}

static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    bridge_mqtt_t *m = ctx;
    persist_session_start(m->pp.context);
    atomic_store(&m->connected, true);
    int window = m->cfg->mqtt.max_inflight;
    if (r && MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM)) {
        int rm = MQTTProperties_getNumericValue(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
        if (rm > 0 && rm < window)
            window = rm;
    }
    atomic_store(&m->window, window);
    unsigned max_packet = 0;
    if (r && MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE))
        max_packet = (unsigned)MQTTProperties_getNumericValue(
            &r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE);
    atomic_store(&m->max_packet, max_packet);
    atomic_store(&m->backlog, true);
    push(ctx, EV_CONNECTED, 0, 0, NULL);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData *r)
{
    push(ctx, EV_CONNECT_FAILED, 0, r ? r->code : -1,
         r && r->message ? r->message : (r ? MQTTAsync_strerror(r->code) : "unknown"));
}

static void on_connect_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    push(ctx, EV_CONNECT_FAILED, 0, r ? r->code : -1,
         r && r->message ? r->message
                         : (r && r->reasonCode ? MQTTReasonCode_toString(r->reasonCode)
                                               : (r ? MQTTAsync_strerror(r->code) : "unknown")));
}

static void trace_protocol(bool on);

static void on_conn_lost(void *ctx, char *cause)
{
    bridge_mqtt_t *m = ctx;
    atomic_store(&m->connected, false);
    trace_protocol(true);
    push(ctx, EV_CONN_LOST, 0, 0, cause ? cause : "connection lost");
}

/*
 * MQTT 5: the broker closed the connection with a DISCONNECT packet (for a
 * malformed packet, an oversized one, a session taken over...). Paho does not
 * report this as a lost connection, so it is reported here, with its reason.
 */
static void on_disconnected(void *ctx, MQTTProperties *props, enum MQTTReasonCodes rc)
{
    char text[96];
    (void)props;
    snprintf(text, sizeof(text), "the broker disconnected: %s", MQTTReasonCode_toString(rc));
    atomic_store(&((bridge_mqtt_t *)ctx)->connected, false);
    trace_protocol(true);
    push(ctx, EV_CONN_LOST, 0, (int)rc, text);
}

/*
 * A message on a subscription: copied into one allocation for the loop.
 * Values larger than coap.max_payload are dropped here and counted.
 */
static int on_message(void *ctx, char *topic, int topiclen, MQTTAsync_message *msg)
{
    bridge_mqtt_t *m = ctx;
    size_t tlen = topiclen > 0 ? (size_t)topiclen : strlen(topic);
    size_t len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;

    if (len > (size_t)atomic_load(&m->max_payload)) {
        atomic_fetch_add(&m->too_large, 1);
        goto done;
    }
    inbox_msg_t *im = malloc(sizeof(*im) + tlen + len);
    if (!im) {
        atomic_fetch_add(&m->dropped, 1);
        goto done;
    }
    im->topic_len = tlen;
    im->len = len;
    im->qos = msg->qos;
    im->expiry_s = -1;
    im->content_type[0] = '\0';
    memcpy(im->bytes, topic, tlen);
    memcpy(im->bytes + tlen, msg->payload, len);
    if (m->v5) {
        MQTTProperty *p =
            MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL);
        if (p)
            im->expiry_s = (long)p->value.integer4;
        p = MQTTProperties_getProperty(&msg->properties, MQTTPROPERTY_CODE_CONTENT_TYPE);
        if (p && p->value.data.len > 0 && (size_t)p->value.data.len < sizeof(im->content_type)) {
            memcpy(im->content_type, p->value.data.data, (size_t)p->value.data.len);
            im->content_type[p->value.data.len] = '\0';
        }
    }
    inbox_event_t ev = { .type = EV_MESSAGE, .data = im, .bytes = sizeof(*im) + tlen + len };
    if (inbox_push(m->inbox, &ev) < 0) {
        free(im);
        atomic_fetch_add(&m->dropped, 1);
    }
done:
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

/* What a SUBSCRIBE's callbacks need: the client, how many filters, its id. */
struct sub_ctx {
    bridge_mqtt_t *m;
    int n;
    uint64_t id;
};

static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    struct sub_ctx *c = ctx;
    /* Paho reports one filter's reason code in reasonCode, several in alt.sub. */
    if (r && c->n == 1 && r->reasonCode >= 0x80)
        push(c->m, EV_SUB_FAILED, c->id, r->reasonCode, MQTTReasonCode_toString(r->reasonCode));
    for (int i = 0; r && c->n > 1 && r->alt.sub.reasonCodes && i < r->alt.sub.reasonCodeCount;
         i++) {
        if (r->alt.sub.reasonCodes[i] >= 0x80) {
            push(c->m, EV_SUB_FAILED, c->id, r->alt.sub.reasonCodes[i],
                 MQTTReasonCode_toString(r->alt.sub.reasonCodes[i]));
            break;
        }
    }
    push(c->m, EV_SUB_OK, c->id, 0, NULL);
    free(c);
}

static void on_sub_ok(void *ctx, MQTTAsync_successData *r)
{
    struct sub_ctx *c = ctx;
    /* Paho reports one filter's granted QoS in qos, several in qosList. */
    if (r && c->n == 1 && r->alt.qos == 0x80)
        push(c->m, EV_SUB_FAILED, c->id, 0x80, "refused");
    for (int i = 0; r && c->n > 1 && r->alt.qosList && i < c->n; i++) {
        if (r->alt.qosList[i] == 0x80) {
            push(c->m, EV_SUB_FAILED, c->id, 0x80, "refused");
            break;
        }
    }
    push(c->m, EV_SUB_OK, c->id, 0, NULL);
    free(c);
}

static void on_sub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    struct sub_ctx *c = ctx;
    push(c->m, EV_SUB_FAILED, c->id, r ? (int)r->reasonCode : -1,
         r && r->reasonCode ? MQTTReasonCode_toString(r->reasonCode) : "failed");
    free(c);
}

static void on_sub_fail(void *ctx, MQTTAsync_failureData *r)
{
    struct sub_ctx *c = ctx;
    push(c->m, EV_SUB_FAILED, c->id, r ? r->code : -1, r && r->message ? r->message : "failed");
    free(c);
}

static void on_pub_ok(void *ctx, MQTTAsync_successData *r)
{
    struct pub_ctx *p = ctx;
    (void)r;
    push(p->m, EV_PUB_OK, p->id, 0, NULL);
    free(p);
}

static void on_pub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    struct pub_ctx *p = ctx;
    if (r && r->reasonCode >= 0x80)
        push(p->m, EV_PUB_FAILED, p->id, r->reasonCode, MQTTReasonCode_toString(r->reasonCode));
    else
        push(p->m, EV_PUB_OK, p->id, 0, NULL);
    free(p);
}

/*
 * Paho 1.3.12 (and up to at least 1.3.15), MQTTAsync_processCommand(): when
 * the socket write of a QoS 1/2 PUBLISH fails (SOCKET_ERROR, e.g. the broker
 * has just closed the connection), the message is already in the client's
 * outboundMsgs, which took over its topic and payload
 * (MQTTProtocol_storePublication), but the command still points at them and
 * MQTTAsync_freeCommand() frees them (MQTTAsyncUtils.c:1584 -> :1045). The
 * message is resent from freed memory at the next connection
 * (MQTTAsync_completeConnection -> MQTTProtocol_retries), and freed again
 * when acknowledged, cleaned or destroyed. Such a client is tainted, and
 * replaced before it connects again (client_replace).
 *
 * Paho tells of that failure in two ways: the publish's onFailure, with token
 * 0 (no other failure of a QoS 1/2 publish has token 0), and its trace line
 * "-> PUBLISH msgid: N qos: Q ... rc -1" written by its sending thread, the
 * only one that writes a first PUBLISH (resending is the receiving thread's).
 * Commands restored from the store have no onFailure: the trace covers them.
 */
static atomic_bool write_failed; /* the trace saw it (one client connects at a time) */

/*
 * Paho formats a protocol trace line for every packet (the local time, a
 * format, under its log mutex shared by its two threads), which costs as
 * much as sending the packet. So the trace is on only while commands
 * restored from the store may be sent: from the creation of a client whose
 * store holds records until the store is seen empty (every restored command
 * is a record until its message is sent and acknowledged); and, to be safe,
 * from a lost connection until the same. Paho's level is the process's.
 */
static atomic_bool tracing = true;

static void trace_protocol(bool on)
{
    if (atomic_exchange(&tracing, on) == on || getenv("MQTT_C_CLIENT_TRACE"))
        return;
    MQTTAsync_setTraceLevel(on ? MQTTASYNC_TRACE_PROTOCOL : MQTTASYNC_TRACE_ERROR);
}

void mqtt_trace_settle(bridge_mqtt_t *m)
{
    if (atomic_load(&tracing) && persist_records(m->pp.context) == 0)
        trace_protocol(false);
}

static void note_write_failure(bridge_mqtt_t *m, MQTTAsync_token token)
{
    if (token == 0)
        atomic_store(&m->tainted, true);
}

static void on_paho_trace(enum MQTTASYNC_TRACE_LEVELS level, char *message)
{
    const char *at = message ? strstr(message, "-> PUBLISH msgid: ") : NULL;
    int id, qos, retained, rc;
    char name[17] = "";
    (void)level;
    if (at &&
        sscanf(at, "-> PUBLISH msgid: %d qos: %d retained: %d rc %d", &id, &qos, &retained, &rc) ==
            4 &&
        qos > 0 && (rc == -1 || rc == -2) && prctl(PR_GET_NAME, name) == 0 &&
        !strcmp(name, "MQTTAsync_send"))
        atomic_store(&write_failed, true);
}

/* The "offline" publish at a stop has no request behind it, only this. */
static void on_offline_fail(void *ctx, MQTTAsync_failureData *r)
{
    note_write_failure(ctx, r ? r->token : 0);
}

static void on_offline_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    note_write_failure(ctx, r ? r->token : 0);
}

static void on_pub_fail(void *ctx, MQTTAsync_failureData *r)
{
    struct pub_ctx *p = ctx;
    note_write_failure(p->m, r ? r->token : 0);
    push(p->m, EV_PUB_FAILED, p->id, r ? r->code : -1, r && r->message ? r->message : "failed");
    free(p);
}

static void on_pub_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    struct pub_ctx *p = ctx;
    note_write_failure(p->m, r ? r->token : 0);
    push(p->m, EV_PUB_FAILED, p->id, r ? (int)r->reasonCode : -1,
         r && r->reasonCode ? MQTTReasonCode_toString(r->reasonCode)
                            : (r && r->message ? r->message : "failed"));
    free(p);
}

/* Creates m->client from m->server, m->co and the store m->pp. */
static int client_create(bridge_mqtt_t *m)
{
    int rc = MQTTAsync_createWithOptions(&m->client, m->server, m->cfg->mqtt.client_id,
                                         MQTTCLIENT_PERSISTENCE_USER, &m->pp, &m->co);
    if (rc != MQTTASYNC_SUCCESS) {
        gw_err(MQTT, "cannot create the client (%s)", MQTTAsync_strerror(rc));
        return -1;
    }
    /*
     * The trace line note_write_failure needs is at the protocol level, less
     * than Paho's default (which it formats, even unread); a trace asked for
     * with MQTT_C_CLIENT_TRACE keeps its own level.
     */
    if (!getenv("MQTT_C_CLIENT_TRACE"))
        MQTTAsync_setTraceLevel(MQTTASYNC_TRACE_PROTOCOL);
    atomic_store(&tracing, true);
    MQTTAsync_setTraceCallback(on_paho_trace);
    MQTTAsync_setCallbacks(m->client, m, on_conn_lost, on_message, on_delivered);
    if (m->v5)
        MQTTAsync_setDisconnected(m->client, m, on_disconnected);
    return 0;
}

/* Whether the client may hold a message Paho has freed (note_write_failure). */
static bool client_tainted(bridge_mqtt_t *m)
{
    return atomic_load(&m->tainted) || atomic_load(&write_failed);
}

/*
 * A tainted client, disconnected, is given up for a new one made from the
 * same store (at the first publish into the offline buffer or the reconnect,
 * whichever comes first): what was unacknowledged (the message whose write
 * failed included: Paho stores it before writing) and what waits in the
 * offline buffer are restored from it, in fresh memory. The old handle is
 * left as it is, never connected nor destroyed: destroying it would free the
 * same topic and payload a second time (MQTTProtocol_freeClient ->
 * MQTTProtocol_emptyMessageList). The price, paid only after a connection
 * broke under a publish: its memory, and the message ids of the commands it
 * still queued (Paho gives no id twice among all clients' commands).
 * 0, or -1 (the old client stays, tainted).
 */
static int client_replace(bridge_mqtt_t *m)
{
    MQTTAsync old = m->client;
    MQTTAsync_token *tokens = NULL;
    int held = 0;
    atomic_store(&m->connected, false);
    if (MQTTAsync_getPendingTokens(old, &tokens) == MQTTASYNC_SUCCESS)
        while (tokens && tokens[held] != -1)
            held++;
    MQTTAsync_free(tokens);
    if (client_create(m) < 0) {
        m->client = old;
        return -1;
    }
    atomic_store(&m->tainted, false);
    atomic_store(&write_failed, false);
    m->replaced++;
    gw_warn(MQTT,
            "a publish may have failed on a broken connection: the MQTT client is "
            "created again from its store (Paho 1.3.12 bug; %lu so far; the old one "
            "held %d messages)",
            m->replaced, held);
    return 0;
}

bridge_mqtt_t *mqtt_new(const gw_config_t *cfg, bridge_inbox_t *inbox, persist_t *store)
{
    bridge_mqtt_t *m = calloc(1, sizeof(*m));
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    gw_uri_t uri;

    if (!m)
        return NULL;
    m->cfg = cfg;
    atomic_store(&m->max_payload, cfg->coap.max_payload);
    m->inbox = inbox;
    m->v5 = cfg->mqtt.version == 5;
    if (gw_uri_parse(cfg->mqtt.uri, &uri) < 0) {
        free(m);
        return NULL;
    }
    /* Paho speaks ssl:// and tcp://; IPv6 literals keep their brackets. */
    snprintf(m->server, sizeof(m->server), "%s://%s%s%s:%d", uri.tls ? "ssl" : "tcp",
             strchr(uri.host, ':') ? "[" : "", uri.host, strchr(uri.host, ':') ? "]" : "",
             uri.port);
    co.struct_version = 2; /* Paho 1.3.12 refuses 3 (persistQoS0); it persists QoS 0 anyway */
    co.MQTTVersion = m->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    /*
     * The offline buffer is Paho's own: publishes made while disconnected are
     * kept (in the persistence store, so they survive a restart) and sent in
     * order once connected; at offline_buffer of them, new ones are refused.
     */
    m->buffering = cfg->mqtt.offline_buffer > 0;
    co.sendWhileDisconnected = m->buffering;
    co.allowDisconnectedSendAtAnyTime = m->buffering;
    co.maxBufferedMessages = m->buffering ? cfg->mqtt.offline_buffer : cfg->mqtt.max_inflight;
    co.deleteOldestMessages = 0;
    co.restoreMessages = 1;
    co.persistQoS0 = 1;
    m->co = co;
    m->pp = persist_paho(store);
    if (client_create(m) < 0) {
        free(m);
        return NULL;
    }
    return m;
}

void mqtt_free(bridge_mqtt_t *m)
{
    if (!m)
        return;
    /*
     * A tainted client cannot be destroyed without a double free
     * (client_replace); at exit it is left to the end of the process, with
     * m, which its callbacks may still name. So is any client once one has
     * been given up: MQTTAsync_destroy() detaches each of its commands from
     * the list of all clients' commands, where those of the old clients
     * stay, one search through it for each: minutes, for nothing, at exit.
     */
    if (client_tainted(m) || m->replaced)
        return;
    MQTTAsync_destroy(&m->client);
    free(m);
}

int mqtt_connect(bridge_mqtt_t *m)
{
    const gw_config_t *cfg = m->cfg;
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_connectOptions *opts = m->v5 ? &o5 : &o;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;
    gw_uri_t uri;
    int rc;

    if (!MQTTAsync_isConnected(m->client) && client_tainted(m) && client_replace(m) < 0) {
        push(m, EV_CONNECT_FAILED, 0, -1, "cannot create the client again");
        return -EIO;
    }
    gw_uri_parse(cfg->mqtt.uri, &uri);
    opts->keepAliveInterval = cfg->mqtt.keepalive;
    opts->maxInflight = m->one_at_a_time ? 1 : cfg->mqtt.max_inflight;
    opts->connectTimeout = 10;
    opts->automaticReconnect = 0;
    opts->context = m;
    if (m->v5) {
        opts->cleanstart = cfg->mqtt.clean_start;
        opts->onSuccess5 = on_connect_ok5;
        opts->onFailure5 = on_connect_fail5;
        if (!cfg->mqtt.clean_start) {
            /* MQTT 5 drops a session at disconnect unless it has an expiry. */
            MQTTProperty p = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL };
            p.value.integer4 = 0xFFFFFFFFu;
            MQTTProperties_add(&props, &p);
            opts->connectProperties = &props;
        }
    } else {
        /*
         * MQTT 3.1.1 and nothing else. Paho's default (MQTTVERSION_DEFAULT)
         * tries 3.1.1 then 3.1, and when a 3.1.1 connection breaks before the
         * connect completes (MQTTAsync_completeConnection), nextOrClose()
         * reports the connection lost and queues a 3.1 CONNECT on its own:
         * the client then reconnects behind the loop's back, in a protocol
         * nobody configured, while the loop schedules its own reconnect.
         */
        opts->MQTTVersion = MQTTVERSION_3_1_1;
        opts->cleansession = cfg->mqtt.clean_start;
        opts->onSuccess = on_connect_ok;
        opts->onFailure = on_connect_fail;
    }
    if (*cfg->mqtt.status_topic) {
        will.topicName = cfg->mqtt.status_topic;
        will.message = "offline";
        will.retained = 1;
        will.qos = 1;
        opts->will = &will;
    }
    if (*cfg->mqtt.username)
        opts->username = cfg->mqtt.username;
    if (cfg->mqtt.password)
        opts->password = cfg->mqtt.password;
    if (uri.tls) {
        ssl.trustStore = *cfg->mqtt.ca ? cfg->mqtt.ca : NULL;
        ssl.keyStore = *cfg->mqtt.cert ? cfg->mqtt.cert : NULL;
        ssl.privateKey = *cfg->mqtt.key ? cfg->mqtt.key : NULL;
        ssl.enableServerCertAuth = 1;
        ssl.verify = cfg->mqtt.verify_hostname ? 1 : 0;
        ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2;
        opts->ssl = &ssl;
    }
    rc = MQTTAsync_connect(m->client, opts);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
        push(m, EV_CONNECT_FAILED, 0, rc, MQTTAsync_strerror(rc));
        return -EIO;
    }
    return 0;
}

/* Bytes of the PUBLISH packet msg makes, MQTT 5 properties included (an upper bound). */
static size_t packet_size(const mqtt_msg_t *msg)
{
    size_t props = 0;
    if (msg->content_type)
        props += 3 + strlen(msg->content_type);
    if (msg->utf8)
        props += 2;
    if (msg->device)
        props += 1 + 2 + 6 + 2 + strlen(msg->device);
    /* fixed header (at most 5), topic, packet id, property length (at most 4) */
    return 5 + 2 + strlen(msg->topic) + 2 + 4 + props + msg->len;
}

size_t mqtt_payload_room(bridge_mqtt_t *m, const mqtt_msg_t *msg)
{
    unsigned max_packet = atomic_load(&m->max_packet);
    size_t overhead = packet_size(msg) - msg->len;
    if (!max_packet)
        return SIZE_MAX;
    return max_packet > overhead ? max_packet - overhead : 0;
}

int mqtt_publish(bridge_mqtt_t *m, const mqtt_msg_t *msg, uint64_t id)
{
    MQTTAsync_message pm = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    /*
     * The properties in place (MQTTAsync_sendMessage() copies them):
     * MQTTProperties_add() and _free() would allocate and free from Paho's
     * heap, under its lock, at every publish. length counts what _add()
     * does: the identifier's byte, then 2 + n for a string, 4 + both for a
     * pair, 1 for a byte.
     */
    MQTTProperty prop[3];
    MQTTProperties props = { .max_count = 3, .array = prop };
    struct pub_ctx *ctx = NULL;
    int rc;

    /*
     * The last check before the broker: a topic or a property it would
     * refuse makes it drop the connection, and, stored, would do so again at
     * every reconnection. The mapping engine renders nothing of the kind.
     */
    if (!map_topic_ok(msg->topic, strlen(msg->topic)) ||
        (msg->device && !map_mqtt_string_ok(msg->device, strlen(msg->device))) ||
        (msg->content_type && !map_mqtt_string_ok(msg->content_type, strlen(msg->content_type))))
        return -EINVAL;
    if (msg->len > (size_t)INT32_MAX)
        return -EMSGSIZE;
    unsigned max_packet = atomic_load(&m->max_packet);
    if (max_packet && packet_size(msg) > max_packet)
        return -EMSGSIZE;
    if (!atomic_load(&m->connected)) {
        if (!m->buffering)
            return -ENOTCONN;
        /*
         * Into the offline buffer: of a new client if this one is tainted,
         * so that the buffer does not pile up in the one given up.
         */
        if (client_tainted(m))
            client_replace(m);
    }
    pm.payload = (void *)msg->payload;
    pm.payloadlen = (int)msg->len;
    pm.qos = msg->qos;
    pm.retained = msg->retain;
    if (m->v5) {
        MQTTProperty *p;
        if (msg->content_type) {
            p = &prop[props.count++];
            *p = (MQTTProperty){ .identifier = MQTTPROPERTY_CODE_CONTENT_TYPE };
            p->value.data.data = (char *)msg->content_type;
            p->value.data.len = (int)strlen(msg->content_type);
            props.length += 1 + 2 + p->value.data.len;
        }
        if (msg->utf8) {
            p = &prop[props.count++];
            *p = (MQTTProperty){ .identifier = MQTTPROPERTY_CODE_PAYLOAD_FORMAT_INDICATOR };
            p->value.byte = 1;
            props.length += 1 + 1;
        }
        if (msg->device) {
            p = &prop[props.count++];
            *p = (MQTTProperty){ .identifier = MQTTPROPERTY_CODE_USER_PROPERTY };
            p->value.data.data = "device";
            p->value.data.len = 6;
            p->value.value.data = (char *)msg->device;
            p->value.value.len = (int)strlen(msg->device);
            props.length += 1 + 2 + p->value.data.len + 2 + p->value.value.len;
        }
        pm.properties = props;
    }
    if (msg->qos > 0) {
        ctx = malloc(sizeof(*ctx));
        if (!ctx)
            return -ENOMEM;
        ctx->m = m;
        ctx->id = id;
        ro.context = ctx;
        if (m->v5) {
            ro.onSuccess5 = on_pub_ok5;
            ro.onFailure5 = on_pub_fail5;
        } else {
            ro.onSuccess = on_pub_ok;
            ro.onFailure = on_pub_fail;
        }
    }
    rc = MQTTAsync_sendMessage(m->client, msg->topic, &pm, &ro);
    if (rc == MQTTASYNC_SUCCESS)
        m->handed++;
    if (rc != MQTTASYNC_SUCCESS) {
        free(ctx);
        gw_debug(MQTT, "publish not handed over (%s)", MQTTAsync_strerror(rc));
        if (rc == MQTTASYNC_DISCONNECTED)
            return -ENOTCONN;
        if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES)
            return -ENOBUFS;
        if (rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT)
            return -EAGAIN;
        return -EIO;
    }
    return 0;
}

/*
 * Paho 1.3.12's sending thread waits up to a second whenever the broker's
 * Receive Maximum (or max_inflight) is reached, and only a new command wakes
 * it (eclipse-paho/paho.mqtt.c#1404). Live traffic brings new commands; a
 * backlog from the offline buffer does not, and would go at one window a
 * second (20 messages a second with Mosquitto's defaults). So while more
 * publishes wait than can be in flight, a completion not followed within
 * KICK_MS by a publish (which wakes the thread as well) adds a command that
 * costs one small round trip: an UNSUBSCRIBE from a filter never subscribed.
 * Under live load, the publishes do it: no round trip per completion.
 */
#define KICK_MS 2

void mqtt_kick(bridge_mqtt_t *m, size_t waiting)
{
    atomic_store(&m->delivered, false);
    /* Counting Paho's queue takes a walk through it: only when it may be long. */
    if (!atomic_load(&m->backlog) && waiting <= (size_t)atomic_load(&m->window))
        return;
    if (!m->kick_wanted)
        m->kick_at_ms = gw_now_ms() + KICK_MS;
    m->kick_wanted = true;
    m->kick_handed = m->handed;
}

int mqtt_kick_wait_ms(const bridge_mqtt_t *m)
{
    if (!m->kick_wanted || m->handed != m->kick_handed)
        return -1;
    uint64_t now = gw_now_ms();
    return now < m->kick_at_ms ? (int)(m->kick_at_ms - now) : 0;
}

void mqtt_kick_due(bridge_mqtt_t *m)
{
    MQTTAsync_token *tokens = NULL;
    int n = 0;

    if (!m->kick_wanted)
        return;
    if (m->handed != m->kick_handed) {
        m->kick_wanted = false; /* a publish since has woken the thread */
        return;
    }
    if (gw_now_ms() < m->kick_at_ms)
        return;
    m->kick_wanted = false;
    if (!MQTTAsync_isConnected(m->client))
        return;
    if (MQTTAsync_getPendingTokens(m->client, &tokens) != MQTTASYNC_SUCCESS)
        return;
    while (tokens && tokens[n] != -1)
        n++;
    MQTTAsync_free(tokens);
    if (n <= atomic_load(&m->window)) {
        atomic_store(&m->backlog, false); /* what a reconnection found has gone */
        return;
    }
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_unsubscribe(m->client, KICK_FILTER, &ro);
}

int mqtt_subscribe(bridge_mqtt_t *m, char *const *filters, const int *qos, int n, uint64_t id)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int rc;
    if (n == 0)
        return 0;
    struct sub_ctx *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (struct sub_ctx){ .m = m, .n = n, .id = id };
    ro.context = c;
    if (m->v5) {
        ro.onSuccess5 = on_sub_ok5;
        ro.onFailure5 = on_sub_fail5;
    } else {
        ro.onSuccess = on_sub_ok;
        ro.onFailure = on_sub_fail;
    }
    rc = MQTTAsync_subscribeMany(m->client, n, filters, (int *)qos, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        free(c);
        gw_warn(MQTT, "cannot subscribe (%s)", MQTTAsync_strerror(rc));
        return -EIO;
    }
    return 0;
}

int mqtt_unsubscribe(bridge_mqtt_t *m, char *const *filters, int n)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    if (n == 0)
        return 0;
    int rc = MQTTAsync_unsubscribeMany(m->client, n, filters, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        gw_warn(MQTT, "cannot unsubscribe (%s)", MQTTAsync_strerror(rc));
        return -EIO;
    }
    return 0;
}

void mqtt_set_config(bridge_mqtt_t *m, const gw_config_t *cfg)
{
    /* m->cfg is the loop thread's; Paho's threads read only max_payload. */
    m->cfg = cfg;
    atomic_store(&m->max_payload, cfg->coap.max_payload);
}

uint64_t mqtt_dropped(bridge_mqtt_t *m, uint64_t *too_large)
{
    *too_large = atomic_load(&m->too_large);
    return atomic_load(&m->dropped);
}

void mqtt_shutdown(bridge_mqtt_t *m, int timeout_ms)
{
    if (!MQTTAsync_isConnected(m->client))
        return;
    if (*m->cfg->mqtt.status_topic) {
        MQTTAsync_message pm = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
        pm.payload = "offline";
        pm.payloadlen = 7;
        pm.qos = 1;
        pm.retained = 1;
        ro.context = m;
        if (m->v5)
            ro.onFailure5 = on_offline_fail5;
        else
            ro.onFailure = on_offline_fail;
        if (MQTTAsync_sendMessage(m->client, m->cfg->mqtt.status_topic, &pm, &ro) ==
            MQTTASYNC_SUCCESS)
            MQTTAsync_waitForCompletion(m->client, ro.token, (unsigned long)timeout_ms);
    }
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    d.timeout = timeout_ms;
    atomic_store(&m->connected, false);
    MQTTAsync_disconnect(m->client, &d);
    /* Let the DISCONNECT go out before the handle is destroyed (bounded). */
    for (int i = 0; i < timeout_ms / 10 && MQTTAsync_isConnected(m->client); i++)
        nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
}

void mqtt_set_one_at_a_time(bridge_mqtt_t *m, bool on)
{
    m->one_at_a_time = on;
}

/* MQTT 5 properties (wire format, no length) back into Paho's list: those Tandem sends. */
static void props_of(const uint8_t *p, size_t len, MQTTProperties *out)
{
    const uint8_t *end = p + len;
    while (p < end) {
        MQTTProperty prop = { .identifier = (enum MQTTPropertyCodes) * p++ };
        size_t n;
        switch (prop.identifier) {
        case MQTTPROPERTY_CODE_PAYLOAD_FORMAT_INDICATOR:
            if (end - p < 1)
                return;
            prop.value.byte = *p++;
            break;
        case MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL:
            if (end - p < 4)
                return;
            prop.value.integer4 =
                (unsigned)p[0] << 24 | (unsigned)p[1] << 16 | (unsigned)p[2] << 8 | p[3];
            p += 4;
            break;
        case MQTTPROPERTY_CODE_CONTENT_TYPE:
        case MQTTPROPERTY_CODE_USER_PROPERTY:
            if (end - p < 2 || (n = (size_t)(p[0] << 8 | p[1])) > (size_t)(end - p - 2))
                return;
            prop.value.data.data = (char *)p + 2;
            prop.value.data.len = (int)n;
            p += 2 + n;
            if (prop.identifier == MQTTPROPERTY_CODE_USER_PROPERTY) {
                if (end - p < 2 || (n = (size_t)(p[0] << 8 | p[1])) > (size_t)(end - p - 2))
                    return;
                prop.value.value.data = (char *)p + 2;
                prop.value.value.len = (int)n;
                p += 2 + n;
            }
            break;
        default:
            return; /* record_read() let only well-formed properties through; the rest is not ours */
        }
        MQTTProperties_add(out, &prop);
    }
}

int mqtt_republish(bridge_mqtt_t *m, const record_pub_t *pub)
{
    MQTTAsync_message pm = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTProperties props = MQTTProperties_initializer;
    char *topic = strndup(pub->topic, pub->topic_len);
    if (!topic)
        return -ENOMEM;
    pm.payload = (void *)pub->payload;
    pm.payloadlen = (int)pub->len;
    pm.qos = pub->qos;
    pm.retained = pub->retain;
    if (m->v5 && pub->props) {
        props_of(pub->props, pub->props_len, &props);
        pm.properties = props;
    }
    int rc = MQTTAsync_sendMessage(m->client, topic, &pm, &ro);
    MQTTProperties_free(&props);
    free(topic);
    return rc == MQTTASYNC_SUCCESS ? 0 : -EIO;
}

/* A message taken from the store, kept while the client is made again. */
struct saved {
    struct saved *next;
    char key[80];
    record_pub_t pub; /* points into bytes */
    uint8_t bytes[];
};

static int keep_sent(void *arg, const char *key, const record_pub_t *pub)
{
    struct saved **list = arg;
    struct saved *s = malloc(sizeof(*s) + pub->topic_len + pub->len + pub->props_len);
    if (!s)
        return -ENOMEM;
    s->pub = *pub;
    snprintf(s->key, sizeof(s->key), "%s", key);
    uint8_t *p = s->bytes;
    memcpy(p, pub->topic, pub->topic_len);
    s->pub.topic = (const char *)p;
    p += pub->topic_len;
    if (pub->len)
        memcpy(p, pub->payload, pub->len);
    s->pub.payload = p;
    p += pub->len;
    if (pub->props) {
        memcpy(p, pub->props, pub->props_len);
        s->pub.props = p;
    }
    s->next = *list;
    *list = s;
    return 0;
}

int mqtt_restart(bridge_mqtt_t *m, bool resend_sent)
{
    struct saved *list = NULL;
    if (MQTTAsync_isConnected(m->client))
        return -EISCONN;
    /*
     * The client in use is given up as client_replace() does (destroying a
     * client can free twice what Paho already freed): it stays, idle. The
     * messages it sent and had no acknowledgement for are taken out of the
     * store first, so that the new client sends them as new messages, at the
     * pace its maxInflight allows, rather than all at once at the connection.
     */
    persist_t *store = m->pp.context;
    int n = resend_sent ? persist_take_sent(store, keep_sent, &list) : 0;
    int rc = client_create(m);
    if (rc == 0) {
        atomic_store(&m->tainted, false);
        m->replaced++;
    }
    int kept = 0;
    for (struct saved *s = list, *next; s; s = next) {
        next = s->next;
        /* Not handed over (the offline buffer full, say): back in the store, for the next start. */
        bool ok = rc == 0 && mqtt_republish(m, &s->pub) == 0;
        persist_resent(store, s->key, ok);
        kept += !ok;
        free(s);
    }
    if (n > 0)
        gw_info(MQTT, "%d unacknowledged messages are sent again as new ones%s", n - kept,
                kept ? "; the others stay in the store" : "");
    return rc < 0 ? -EIO : 0;
}

static void on_quiet_disconnect(void *ctx, MQTTAsync_successData *r)
{
    (void)r;
    push(ctx, EV_CONN_LOST, 0, 0, "disconnected to send at the full rate again");
}

static void on_quiet_disconnect5(void *ctx, MQTTAsync_successData5 *r)
{
    (void)r;
    push(ctx, EV_CONN_LOST, 0, 0, "disconnected to send at the full rate again");
}

int mqtt_disconnect(bridge_mqtt_t *m)
{
    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    MQTTAsync_disconnectOptions d5 = MQTTAsync_disconnectOptions_initializer5;
    MQTTAsync_disconnectOptions *o = m->v5 ? &d5 : &d;
    o->timeout = 1000;
    o->context = m;
    atomic_store(&m->connected, false);
    if (m->v5)
        o->onSuccess5 = on_quiet_disconnect5;
    else
        o->onSuccess = on_quiet_disconnect;
    return MQTTAsync_disconnect(m->client, o) == MQTTASYNC_SUCCESS ? 0 : -EIO;
}

static int send_lost(void *arg, const record_pub_t *pub)
{
    return mqtt_republish(arg, pub);
}

int mqtt_resend_lost(bridge_mqtt_t *m)
{
    int n = persist_take_lost(m->pp.context, send_lost, m);
    if (n > 0)
        gw_warn(MQTT,
                "the broker had no session for us: %d messages it had not acknowledged "
                "are sent again",
                n);
    return n;
}
