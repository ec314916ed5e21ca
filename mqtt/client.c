/*
 * Tandem's MQTT client (see client.h): the connection's life and what the
 * broker sends. The publishes' side (the queue, the window, the packet
 * identifiers, what is sent again after a reconnection) is in client_out.c.
 *
 * Nothing is written from a callback: packets are appended to the output
 * buffer and written once, by a timer due at once (it runs at the end of the
 * loop's turn, after the file callbacks), so that the publishes of one turn
 * leave in one write.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "clock.h"
#include "log.h"

#define READ_CHUNK 16384

/* ------------------------------------------------------------------ words */

const char *mqtt_reason_text(int version, int code)
{
    if (version == MQTT_V311) {
        switch (code) {
        case 0:
            return "accepted";
        case 1:
            return "unacceptable protocol version";
        case 2:
            return "client identifier rejected";
        case 3:
            return "server unavailable";
        case 4:
            return "bad user name or password";
        case 5:
            return "not authorized";
        case 0x80:
            return "refused";
        default:
            return "unknown reason";
        }
    }
    switch (code) {
    case 0x00:
        return "success";
    case 0x01:
        return "granted QoS 1";
    case 0x02:
        return "granted QoS 2";
    case 0x04:
        return "disconnect with Will message";
    case 0x10:
        return "no matching subscribers";
    case 0x11:
        return "no subscription existed";
    case 0x80:
        return "unspecified error";
    case 0x81:
        return "malformed packet";
    case 0x82:
        return "protocol error";
    case 0x83:
        return "implementation specific error";
    case 0x84:
        return "unsupported protocol version";
    case 0x85:
        return "client identifier not valid";
    case 0x86:
        return "bad user name or password";
    case 0x87:
        return "not authorized";
    case 0x88:
        return "server unavailable";
    case 0x89:
        return "server busy";
    case 0x8A:
        return "banned";
    case 0x8B:
        return "server shutting down";
    case 0x8C:
        return "bad authentication method";
    case 0x8D:
        return "keep alive timeout";
    case 0x8E:
        return "session taken over";
    case 0x8F:
        return "topic filter invalid";
    case 0x90:
        return "topic name invalid";
    case 0x91:
        return "packet identifier in use";
    case 0x92:
        return "packet identifier not found";
    case 0x93:
        return "receive maximum exceeded";
    case 0x94:
        return "topic alias invalid";
    case 0x95:
        return "packet too large";
    case 0x96:
        return "message rate too high";
    case 0x97:
        return "quota exceeded";
    case 0x98:
        return "administrative action";
    case 0x99:
        return "payload format invalid";
    case 0x9A:
        return "retain not supported";
    case 0x9B:
        return "QoS not supported";
    case 0x9C:
        return "use another server";
    case 0x9D:
        return "server moved";
    case 0x9E:
        return "shared subscriptions not supported";
    case 0x9F:
        return "connection rate exceeded";
    case 0xA0:
        return "maximum connect time";
    case 0xA1:
        return "subscription identifiers not supported";
    case 0xA2:
        return "wildcard subscriptions not supported";
    default:
        return "unknown reason";
    }
}

/* ------------------------------------------------------------------ options */

void mqtt_client_options_from_config(mqtt_client_options_t *o, const gw_config_t *cfg)
{
    const gw_mqtt_config_t *m = &cfg->mqtt;
    *o = (mqtt_client_options_t){
        .uri = m->uri,
        .client_id = m->client_id,
        .version = m->version == 3 || m->version == MQTT_V311 ? MQTT_V311 : MQTT_V5,
        .username = m->username && *m->username ? m->username : NULL,
        .password = m->password,
        .ca = m->ca,
        .cert = m->cert,
        .key = m->key,
        .verify_hostname = m->verify_hostname,
        .keepalive_s = m->keepalive,
        .clean_start = m->clean_start,
        .max_inflight = m->max_inflight,
        .status_topic = m->status_topic,
    };
}

/* ------------------------------------------------------------------ life */

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

static void on_link(void *data, int err, const char *why);

mqtt_client_t *mqtt_client_new(ev_loop_t *loop, const mqtt_client_options_t *o,
                               const mqtt_client_handlers_t *h, void *data, char *err,
                               size_t errlen)
{
    mqtt_client_t *c = calloc(1, sizeof(*c));
    if (!c || !(c->pkt = malloc(sizeof(*c->pkt)))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bool oom = false;
    c->loop = loop;
    if (h)
        c->h = *h;
    c->data = data;
    c->version = o->version == MQTT_V311 ? MQTT_V311 : MQTT_V5;
    c->client_id = dup_or_null(o->client_id ? o->client_id : "", &oom);
    c->username = dup_or_null(o->username, &oom);
    c->password = dup_or_null(o->password, &oom);
    c->status_topic =
        o->status_topic && *o->status_topic ? dup_or_null(o->status_topic, &oom) : NULL;
    c->keepalive_s = o->keepalive_s > 0 ? (o->keepalive_s > 65535 ? 65535 : o->keepalive_s) : 0;
    c->clean_start = o->clean_start;
    c->session_expiry = o->session_expiry_s ? o->session_expiry_s : 0xFFFFFFFFu;
    c->max_inflight =
        o->max_inflight > 0 ? (o->max_inflight > 65535 ? 65535 : o->max_inflight) : 65535;
    c->max_packet = o->max_packet ? o->max_packet : 1u << 20;
    c->max_queued = o->max_queued ? o->max_queued : 65536;
    c->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000;
    c->backoff_min_ms = o->backoff_min_ms > 0 ? o->backoff_min_ms : 1000;
    c->backoff_max_ms = o->backoff_max_ms > 0 ? o->backoff_max_ms : 30000;
    if (c->backoff_max_ms < c->backoff_min_ms)
        c->backoff_max_ms = c->backoff_min_ms;
    c->stable_ms = o->stable_ms > 0 ? o->stable_ms : 10000;
    c->backoff_ms = c->backoff_min_ms;
    out_reset_limits(c);
    if (oom) {
        snprintf(err, errlen, "out of memory");
        mqtt_client_free(c);
        return NULL;
    }
    mqtt_link_config_t lc = { .uri = o->uri,
                              .ca = o->ca,
                              .cert = o->cert,
                              .key = o->key,
                              .verify_hostname = o->verify_hostname,
                              .timeout_ms = c->connect_timeout_ms };
    c->link = mqtt_link_new(loop, &lc, on_link, c, err, errlen);
    if (!c->link) {
        mqtt_client_free(c);
        return NULL;
    }
    return c;
}

static void drop_timers(mqtt_client_t *c)
{
    if (c->tick_timer)
        ev_del_timer(c->loop, c->tick_timer);
    if (c->flush_timer)
        ev_del_timer(c->loop, c->flush_timer);
    c->tick_timer = c->flush_timer = 0;
}

void mqtt_client_free(mqtt_client_t *c)
{
    if (!c)
        return;
    drop_timers(c);
    if (c->retry_timer)
        ev_del_timer(c->loop, c->retry_timer);
    mqtt_link_free(c->link);
    out_free_all(c);
    free(c->out);
    free(c->in);
    free(c->pkt);
    free(c->client_id);
    free(c->username);
    free(c->password);
    free(c->status_topic);
    free(c);
}

bool mqtt_client_connected(const mqtt_client_t *c)
{
    return c->state == C_UP;
}

uint64_t mqtt_client_retry_in_ms(const mqtt_client_t *c)
{
    uint64_t now = gw_now_ms();
    return c->state == C_IDLE && c->retry_at_ms > now ? c->retry_at_ms - now : 0;
}

/* ------------------------------------------------------------------ output */

static int64_t on_flush(ev_loop_t *loop, uint64_t id, void *data);

int client_emit(mqtt_client_t *c, const mqtt_packet_t *p)
{
    ssize_t n =
        mqtt_encode(p, c->version, c->out ? c->out + c->out_len : NULL, c->out_cap - c->out_len);
    if (n < 0)
        return (int)n;
    if ((size_t)n > c->out_cap - c->out_len) {
        int rc = client_emit_raw(c, NULL, (size_t)n);
        if (rc < 0)
            return rc;
        c->out_len -= (size_t)n;
        n = mqtt_encode(p, c->version, c->out + c->out_len, c->out_cap - c->out_len);
    }
    c->out_len += (size_t)n;
    return client_emit_raw(c, NULL, 0);
}

/* Appends len bytes (buf NULL: room only, counted in out_len) and makes sure a flush is due. */
int client_emit_raw(mqtt_client_t *c, const void *buf, size_t len)
{
    if (c->out_cap - c->out_len < len) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap - c->out_len < len)
            cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p)
            return -ENOMEM;
        c->out = p;
        c->out_cap = cap;
    }
    if (buf)
        memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    if (c->out_len && !c->flush_timer && c->state != C_IDLE) {
        c->flush_timer = ev_add_timer(c->loop, 0, on_flush, c);
        if (!c->flush_timer)
            return -ENOMEM;
    }
    return 0;
}

/* Writes what the turn queued, in one write. 0, or the error the connection is lost with. */
static int flush(mqtt_client_t *c)
{
    tls_stream_t *s = mqtt_link_stream(c->link);
    if (c->out_len && s) {
        int rc = tls_stream_write(s, c->out, c->out_len);
        if (rc < 0)
            return rc;
        c->last_tx_ms = gw_now_ms();
        c->st.writes++;
        ev_set_mask(c->loop, mqtt_link_fd(c->link), EV_READABLE | tls_stream_want(s));
    }
    c->out_len = 0;
    if (c->out_cap > 65536) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    return 0;
}

static int64_t on_flush(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_client_t *c = data;
    c->flush_timer = 0;
    int rc = flush(c);
    if (rc < 0)
        client_lose(c, rc, "cannot write to the broker (%s)",
                    tls_stream_error(mqtt_link_stream(c->link)));
    return EV_NOMORE;
}

/* ------------------------------------------------------------------ connection */

static int64_t on_retry(ev_loop_t *loop, uint64_t id, void *data);
static int64_t on_tick(ev_loop_t *loop, uint64_t id, void *data);

static void schedule_retry(mqtt_client_t *c)
{
    if (c->stopping)
        return;
    c->retry_at_ms = gw_now_ms() + (uint64_t)c->backoff_ms;
    c->retry_timer = ev_add_timer(c->loop, (uint64_t)c->backoff_ms, on_retry, c);
    c->backoff_ms = c->backoff_ms * 2 > c->backoff_max_ms ? c->backoff_max_ms : c->backoff_ms * 2;
}

void client_lose(mqtt_client_t *c, int err, const char *fmt, ...)
{
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    bool was_up = c->state == C_UP;
    if (c->state == C_IDLE)
        return;
    c->generation++;
    c->last_err = err;
    drop_timers(c);
    mqtt_link_close(c->link);
    c->state = C_IDLE;
    c->out_len = 0;
    c->in_len = 0;
    out_connection_lost(c);
    if (was_up) {
        c->st.losses++;
        if (gw_now_ms() - c->connected_at_ms >= (uint64_t)c->stable_ms)
            c->backoff_ms = c->backoff_min_ms;
        gw_log_limited(GW_LOG_WARNING, MQTT, "connection to the broker at %s lost (%s)",
                       mqtt_link_peer(c->link), why);
    } else {
        c->st.failed_attempts++;
        gw_log_limited(GW_LOG_WARNING, MQTT, "cannot connect to the broker at %s (%s)",
                       mqtt_link_peer(c->link), why);
    }
    schedule_retry(c);
    if (c->h.lost)
        c->h.lost(c->data, err, why);
}

static int send_connect(mqtt_client_t *c)
{
    mqtt_packet_t *p = c->pkt;
    memset(p, 0, sizeof(*p));
    p->type = MQTT_CONNECT;
    mqtt_connect_t *cn = &p->u.connect;
    cn->version = (uint8_t)c->version;
    cn->clean_start = c->clean_start;
    cn->keepalive = (uint16_t)c->keepalive_s;
    cn->client_id = (mqtt_bytes_t){ (const uint8_t *)c->client_id, strlen(c->client_id) };
    if (c->version == MQTT_V5) {
        if (!c->clean_start)
            mqtt_prop_set_value(&cn->props, MQTT_PROP_SESSION_EXPIRY, c->session_expiry);
        if (c->max_packet < MQTT_REMAINING_MAX)
            mqtt_prop_set_value(&cn->props, MQTT_PROP_MAXIMUM_PACKET_SIZE, (uint32_t)c->max_packet);
    }
    if (c->status_topic) {
        cn->will = true;
        cn->will_qos = 1;
        cn->will_retain = true;
        cn->will_topic =
            (mqtt_bytes_t){ (const uint8_t *)c->status_topic, strlen(c->status_topic) };
        cn->will_payload = (mqtt_bytes_t){ (const uint8_t *)"offline", 7 };
    }
    if (c->username) {
        cn->has_username = true;
        cn->username = (mqtt_bytes_t){ (const uint8_t *)c->username, strlen(c->username) };
    }
    if (c->password) {
        cn->has_password = true;
        cn->password = (mqtt_bytes_t){ (const uint8_t *)c->password, strlen(c->password) };
    }
    return client_emit(c, p);
}

static void on_io(ev_loop_t *loop, int fd, unsigned mask, void *data);

static void on_link(void *data, int err, const char *why)
{
    mqtt_client_t *c = data;
    if (err < 0) {
        client_lose(c, err, "%s", why);
        return;
    }
    int fd = mqtt_link_fd(c->link);
    c->state = C_CONNACK;
    c->last_rx_ms = c->last_tx_ms = gw_now_ms();
    int rc = ev_add_file(c->loop, fd, EV_READABLE, on_io, c);
    if (rc == 0)
        rc = send_connect(c);
    if (rc == 0)
        rc = (c->tick_timer = ev_add_timer(c->loop, (uint64_t)c->connect_timeout_ms, on_tick, c))
                 ? 0
                 : -ENOMEM;
    if (rc < 0)
        client_lose(c, rc, "cannot send CONNECT (%s)", strerror(-rc));
}

static int start_attempt(mqtt_client_t *c)
{
    c->state = C_LINKING;
    c->st.attempts++;
    int rc = mqtt_link_open(c->link);
    if (rc < 0)
        client_lose(c, rc, "cannot start a connection (%s)", strerror(-rc));
    return rc;
}

static int64_t on_retry(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_client_t *c = data;
    c->retry_timer = 0;
    if (c->state == C_IDLE && !c->stopping)
        start_attempt(c);
    return EV_NOMORE;
}

int mqtt_client_start(mqtt_client_t *c)
{
    if (c->state != C_IDLE)
        return 0;
    c->stopping = false;
    if (c->retry_timer)
        ev_del_timer(c->loop, c->retry_timer);
    c->retry_timer = 0;
    return start_attempt(c);
}

static int64_t on_tick(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_client_t *c = data;
    uint64_t now = gw_now_ms();
    if (c->state == C_CONNACK) {
        c->tick_timer = 0;
        client_lose(c, -ETIMEDOUT, "no CONNACK from the broker within %d ms",
                    c->connect_timeout_ms);
        return EV_NOMORE;
    }
    uint64_t ka = (uint64_t)c->keepalive_ms;
    if (c->state != C_UP || !ka) {
        c->tick_timer = 0;
        return EV_NOMORE;
    }
    if (c->ping_out && now - c->ping_sent_ms >= ka) {
        c->tick_timer = 0;
        client_lose(c, -ETIMEDOUT,
                    "no answer from the broker within the keep-alive (%" PRIu64 " ms)", ka);
        return EV_NOMORE;
    }
    if (!c->ping_out && (now - c->last_tx_ms >= ka * 3 / 4 || now - c->last_rx_ms >= ka)) {
        mqtt_packet_t ping = { .type = MQTT_PINGREQ };
        if (client_emit(c, &ping) == 0) {
            c->ping_out = true;
            c->ping_sent_ms = now;
        }
    }
    return ka / 4 ? (int64_t)(ka / 4) : 1;
}

/* ------------------------------------------------------------------ input */

static void on_connack(mqtt_client_t *c, const mqtt_connack_t *ca)
{
    if (ca->reason != 0) {
        int err = ca->reason == 0x86 || ca->reason == 0x87 || ca->reason == 0x8C ||
                          (c->version == MQTT_V311 && (ca->reason == 4 || ca->reason == 5))
                      ? -EPERM
                      : -ECONNABORTED;
        c->st.refused_connects++;
        client_lose(c, err, "the broker refused the connection: %s (CONNACK reason 0x%02x)",
                    mqtt_reason_text(c->version, ca->reason), ca->reason);
        return;
    }
    const mqtt_prop_t *pr;
    c->broker_receive_max = 65535;
    c->broker_max_packet = SIZE_MAX;
    c->broker_max_qos = 2;
    c->broker_retain = true;
    c->keepalive_ms = c->keepalive_s * 1000;
    if ((pr = mqtt_prop_find(&ca->props, MQTT_PROP_RECEIVE_MAXIMUM)) && pr->value)
        c->broker_receive_max = pr->value;
    if ((pr = mqtt_prop_find(&ca->props, MQTT_PROP_MAXIMUM_PACKET_SIZE)) && pr->value)
        c->broker_max_packet = pr->value;
    if ((pr = mqtt_prop_find(&ca->props, MQTT_PROP_MAXIMUM_QOS)))
        c->broker_max_qos = (int)pr->value;
    if ((pr = mqtt_prop_find(&ca->props, MQTT_PROP_RETAIN_AVAILABLE)))
        c->broker_retain = pr->value != 0;
    if ((pr = mqtt_prop_find(&ca->props, MQTT_PROP_SERVER_KEEPALIVE)))
        c->keepalive_ms = (int)pr->value * 1000;
    bool session = ca->session_present && !c->clean_start;
    c->state = C_UP;
    c->connected_at_ms = gw_now_ms();
    c->ping_out = false;
    c->st.connects++;
    if (c->tick_timer)
        ev_del_timer(c->loop, c->tick_timer);
    c->tick_timer =
        c->keepalive_ms ? ev_add_timer(c->loop, (uint64_t)c->keepalive_ms / 4 + 1, on_tick, c) : 0;
    gw_info(MQTT, "connected to the broker at %s (MQTT %s, %s)", mqtt_link_peer(c->link),
            c->version == MQTT_V5 ? "5" : "3.1.1", session ? "session resumed" : "new session");
    c->session_resumed = session;
    out_connected(c, session);
    if (c->h.connected)
        c->h.connected(c->data, session);
}

static void deliver(mqtt_client_t *c, const mqtt_publish_t *pb)
{
    if (!c->h.message)
        return;
    const mqtt_prop_t *ct = mqtt_prop_find(&pb->props, MQTT_PROP_CONTENT_TYPE);
    const mqtt_prop_t *pf = mqtt_prop_find(&pb->props, MQTT_PROP_PAYLOAD_FORMAT);
    const mqtt_prop_t *ex = mqtt_prop_find(&pb->props, MQTT_PROP_MESSAGE_EXPIRY);
    size_t ctlen = ct ? ct->data.len : 0;
    char *strings = malloc(pb->topic.len + 1 + ctlen + 1);
    if (!strings) {
        gw_log_limited(GW_LOG_WARNING, MQTT, "message on a subscription dropped (out of memory)");
        return;
    }
    memcpy(strings, pb->topic.p, pb->topic.len);
    strings[pb->topic.len] = '\0';
    char *ctype = strings + pb->topic.len + 1;
    if (ct)
        memcpy(ctype, ct->data.p, ctlen);
    ctype[ctlen] = '\0';
    mqtt_incoming_t m = { .topic = strings,
                          .topic_len = pb->topic.len,
                          .payload = pb->payload.p,
                          .len = pb->payload.len,
                          .qos = pb->qos,
                          .retain = pb->retain,
                          .content_type = ct ? ctype : NULL,
                          .utf8 = pf && pf->value == 1,
                          .has_expiry = ex != NULL,
                          .expiry = ex ? ex->value : 0 };
    c->st.messages++;
    c->h.message(c->data, &m);
    free(strings);
}

static int send_ack(mqtt_client_t *c, enum mqtt_type type, uint16_t id)
{
    mqtt_packet_t p = { .type = type, .flags = type == MQTT_PUBREL ? 2 : 0 };
    p.u.ack.id = id;
    return client_emit(c, &p);
}

static int on_publish(mqtt_client_t *c, const mqtt_publish_t *pb)
{
    if (!pb->topic.len)
        return -EPROTO; /* a Topic Alias: we allow none */
    switch (pb->qos) {
    case 0:
        deliver(c, pb);
        return 0;
    case 1:
        deliver(c, pb);
        return send_ack(c, MQTT_PUBACK, pb->id);
    default:
        /* Delivered once: a PUBLISH with an identifier awaiting its PUBREL is the same message. */
        if (!bit_test(c->qos2_in, pb->id)) {
            bit_set(c->qos2_in, pb->id);
            deliver(c, pb);
        }
        return send_ack(c, MQTT_PUBREC, pb->id);
    }
}

/* One packet from the broker. 0, or the error the connection closes with (why in *why). */
static int handle(mqtt_client_t *c, mqtt_packet_t *p, const char **why)
{
    if (c->state == C_CONNACK && p->type != MQTT_CONNACK) {
        *why = "the broker sent something before CONNACK";
        return -EPROTO;
    }
    switch (p->type) {
    case MQTT_CONNACK:
        if (c->state != C_CONNACK) {
            *why = "a second CONNACK";
            return -EPROTO;
        }
        on_connack(c, &p->u.connack);
        return 0;
    case MQTT_PUBLISH:
        *why = "a PUBLISH with a Topic Alias, which the client did not allow";
        return on_publish(c, &p->u.publish);
    case MQTT_PUBREL:
        bit_clear(c->qos2_in, p->u.ack.id);
        return send_ack(c, MQTT_PUBCOMP, p->u.ack.id);
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBCOMP:
        return out_ack(c, p->type, &p->u.ack);
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        out_suback(c, p->type, &p->u.suback);
        return 0;
    case MQTT_PINGRESP:
        c->ping_out = false;
        return 0;
    case MQTT_DISCONNECT:
        client_lose(c, -ECONNRESET, "the broker disconnected: %s (reason 0x%02x)",
                    mqtt_reason_text(c->version, p->u.reason.reason), p->u.reason.reason);
        return 0;
    default:
        *why = "a packet a broker does not send";
        return -EPROTO;
    }
}

/* Handles every whole packet in the input buffer. 0, or the error the connection was lost with. */
static int process(mqtt_client_t *c)
{
    unsigned gen = c->generation;
    size_t off = 0;
    int rc = 0;
    while (off < c->in_len) {
        size_t plen;
        rc = mqtt_frame(c->in + off, c->in_len - off, c->max_packet, &plen);
        if (rc == 0)
            break;
        const char *why = "malformed";
        int type = c->in[off] >> 4;
        if (rc == 1) {
            rc = mqtt_decode(c->in + off, plen, c->version, c->pkt);
            if (rc == 0)
                rc = handle(c, c->pkt, &why);
            else
                why =
                    rc == -E2BIG ? "more properties or filters than the client takes" : "malformed";
            off += plen;
        } else if (rc == -EMSGSIZE) {
            why = "larger than the client's Maximum Packet Size";
        }
        if (c->generation != gen)
            return c->last_err ? c->last_err : -ECONNRESET; /* a callback or DISCONNECT closed it */
        if (rc < 0) {
            c->st.malformed++;
            client_lose(c, rc, "%s packet from the broker: %s",
                        type && rc != -EMSGSIZE ? mqtt_type_name(type) : "a", why);
            return rc;
        }
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return 0;
}

static void on_io(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop;
    (void)fd;
    mqtt_client_t *c = data;
    tls_stream_t *s = mqtt_link_stream(c->link);
    unsigned gen = c->generation;
    if (!s)
        return;
    if (mask & EV_WRITABLE) {
        int rc = tls_stream_flush(s);
        if (rc < 0 && rc != -EAGAIN) {
            client_lose(c, rc, "cannot write to the broker (%s)", tls_stream_error(s));
            return;
        }
    }
    for (;;) {
        if (c->in_cap - c->in_len < READ_CHUNK) {
            size_t cap = c->in_cap ? c->in_cap * 2 : READ_CHUNK * 2;
            uint8_t *p = realloc(c->in, cap);
            if (!p) {
                client_lose(c, -ENOMEM, "out of memory");
                return;
            }
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t n = tls_stream_read(s, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == -EAGAIN)
            break;
        if (n <= 0) {
            client_lose(c, n == 0 ? -ECONNRESET : (int)n, "%s",
                        n == 0 ? "the broker closed the connection" : tls_stream_error(s));
            return;
        }
        c->in_len += (size_t)n;
        c->last_rx_ms = gw_now_ms();
        if (process(c) < 0 || c->generation != gen)
            return;
    }
    ev_set_mask(c->loop, mqtt_link_fd(c->link), EV_READABLE | tls_stream_want(s));
}

int mqtt_client_feed(mqtt_client_t *c, const uint8_t *buf, size_t len)
{
    if (c->state == C_IDLE) {
        c->state = C_CONNACK;
        c->last_err = 0;
    }
    if (c->in_cap - c->in_len < len) {
        uint8_t *p = realloc(c->in, c->in_len + len);
        if (!p)
            return -ENOMEM;
        c->in = p;
        c->in_cap = c->in_len + len;
    }
    if (len)
        memcpy(c->in + c->in_len, buf, len);
    c->in_len += len;
    unsigned gen = c->generation;
    int rc = process(c);
    flush(c); /* no stream: thrown away */
    return rc < 0 ? rc : c->generation != gen ? -ECONNRESET : 0;
}

/* ------------------------------------------------------------------ shutdown */

void mqtt_client_shutdown(mqtt_client_t *c, int timeout_ms)
{
    uint64_t deadline = gw_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    c->stopping = true;
    if (c->retry_timer)
        ev_del_timer(c->loop, c->retry_timer);
    c->retry_timer = 0;
    if (c->state == C_UP && c->status_topic) {
        mqtt_message_t off = {
            .topic = c->status_topic, .payload = "offline", .len = 7, .qos = 1, .retain = true
        };
        c->offline_acked = false;
        if (out_publish(c, &off, 0, true, 0) == 0)
            while (c->state == C_UP && !c->offline_acked && gw_now_ms() < deadline)
                ev_turn(c->loop, (int)(deadline - gw_now_ms()));
    }
    if (c->state == C_UP) {
        mqtt_packet_t d = { .type = MQTT_DISCONNECT };
        client_emit(c, &d);
        if (flush(c) == 0) {
            tls_stream_t *s = mqtt_link_stream(c->link);
            while (c->state == C_UP && tls_stream_buffered(s) && gw_now_ms() < deadline)
                ev_turn(c->loop, (int)(deadline - gw_now_ms()));
        }
        gw_info(MQTT, "disconnected from the broker at %s", mqtt_link_peer(c->link));
    }
    drop_timers(c);
    mqtt_link_close(c->link);
    c->state = C_IDLE;
    c->generation++;
}
