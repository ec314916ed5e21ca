/*
 * CoAP -> MQTT (SPEC §3 and the up rows of §6).
 *
 * A request for a QoS 1/2 mapping waits for the broker's acknowledgement.
 * The handler leaves libcoap nothing to send (an empty NON response, which
 * libcoap drops), and the bridge answers by itself: piggybacked on the ACK
 * when the acknowledgement comes within PIGGYBACK_MS, otherwise with an
 * empty ACK then and a separate response later (RFC 7252 §5.2.2).
 */
#include "bridge.h"

#include "tandem_build.h"

#include <MQTTAsync.h>
#include <limits.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dtls.h"
#include "inbox.h"
#include "clock.h"
#include "error.h"
#include "log.h"
#include "mapping.h"
#include "mqtt.h"
#include "tls.h"
#include "bridge_int.h"
#include "block1.h"
#include "down.h"
#include "pending.h"
#include "resources.h"

/*
 * A connection that lasted this long was a good one: the next reconnection
 * starts again at 1 s. One the broker drops sooner (it refuses something we
 * send, say) does not reset the backoff, so a broker that accepts and drops
 * at once is not hammered every second. ms.
 */
#define STABLE_MS 10000
/* Longest reconnect backoff, s. */
#define BACKOFF_MAX_S 30
/* Events taken from the inbox per turn. */
#define INBOX_BATCH 64
/* Bytes the offline buffer holds at most, besides mqtt.offline_buffer messages. */
#define OFFLINE_BYTES_MAX (64ull << 20)
/* Bytes of arrived messages the inbox holds at most. */
#define INBOX_BYTES (16u << 20)
/* How often bridge_tick needs to run while anything waits, ms. */
#define TICK_MS 100
/* Max-Age of a 5.03 to a new session refused at coap.max_sessions, s. */
#define SESSIONS_FULL_RETRY_S 5

/* libcoap 4.3 has no context app data: the event handler finds the bridge here. */
static bridge_t *event_bridge;


/* Frees the Block1 transfer of s (the session is no longer busy with it). */
static void b1_release(sess_t *s)
{
    b1_t *t = s->up;
    if (!t)
        return;
    if (b1_active(t))
        s->busy--;
    b1_free(t);
    s->up = NULL;
}

/* sessions_t's free_up: a session went with its transfer. */
static void free_up(void *up)
{
    b1_free(up);
}

/* The Block1 transfer of s, made on first use; NULL on ENOMEM. */
static b1_t *b1_of(bridge_t *b, sess_t *s)
{
    if (!s->up)
        s->up = b1_new(b->b1);
    return s->up;
}

/* The bridge's state of a session. */
static sess_t *session_state(bridge_t *b, coap_session_t *session)
{
    return sess_get(b->sessions, session);
}


int bridge_retry_after_s(const bridge_t *b)
{
    uint64_t now = gw_now_ms();
    if (b->connecting || b->reconnect_at_ms <= now)
        return 1;
    return (int)((b->reconnect_at_ms - now + 999) / 1000);
}


/*
 * Answers the request of p with code (see pending_answer) and counts it for
 * its mapping.
 */
static void answer_pending(bridge_t *b, pending_slot_t *p, int code)
{
    int max_age = code == 503 ? bridge_retry_after_s(b) : -1;
    if (p->map == SIZE_MAX) /* its mapping went at a reload */
        ;
    else if (code == p->ok_code)
        b->maps[p->map].up++;
    else
        b->maps[p->map].refused++;
    pending_answer(b->pend, p, code, max_age, &b->st.responses);
}


/*
 * The answer to a publish the MQTT client did not take (mqtt_publish's
 * negative code): 5.03 with Max-Age while the broker or the buffer cannot
 * take it, 4.13 with Size1 when the broker's limit is smaller than the body,
 * 5.00 for a message the broker would refuse (never handed over).
 */
static int publish_refused(bridge_t *b, int rc, const mqtt_msg_t *msg, int *max_age, int *size1)
{
    if (rc == -EMSGSIZE) {
        size_t room = mqtt_payload_room(b->mqtt, msg);
        *size1 = room < (size_t)INT_MAX ? (int)room : INT_MAX;
        return 413;
    }
    if (rc == -EINVAL) {
        b->st.unpublishable++;
        gw_log_limited(GW_LOG_ERROR, MQTT, "a message for %s was not published (the broker "
                       "would refuse it)", msg->topic);
        return 500;
    }
    *max_age = bridge_retry_after_s(b);
    return 503;
}

enum body_state { BODY_READY, BODY_CONTINUE, BODY_ERROR };

/*
 * Block1 (RFC 7959 §2.3, block1.h): blocks are taken in order into the
 * session's transfer. Sets *code (and *size1 or *max_age) on error, *block1
 * to the option to echo. After BODY_READY from blocks, *data is the
 * transfer's buffer until b1_release().
 */
static enum body_state take_body(bridge_t *b, sess_t *s, const coap_session_t *session,
                                 const coap_pdu_t *req, const char *topic, const uint8_t **data,
                                 size_t *len, uint32_t *block1, int *code, int *size1,
                                 int *max_age)
{
    coap_block_b_t blk;
    size_t max = (size_t)b->cfg->coap.max_payload;

    *block1 = NO_BLOCK1;
    if (!coap_get_block_b(session, req, COAP_OPTION_BLOCK1, &blk)) {
        if (*len > max) {
            *code = 413;
            *size1 = (int)max;
            return BODY_ERROR;
        }
        return BODY_READY;
    }
    b1_t *t = b1_of(b, s);
    if (!t) {
        *code = 500;
        return BODY_ERROR;
    }
    b1_block_t in = {
        .num = blk.num,
        .more = blk.m,
        .szx = blk.szx,
        .size1 = blk.num == 0 ? bridge_option_uint(req, COAP_OPTION_SIZE1, -1) : -1,
        .cf = bridge_option_uint(req, COAP_OPTION_CONTENT_FORMAT, -1),
        .topic = topic,
        .data = *data,
        .len = *len,
        .now_ms = gw_now_ms(),
    };
    b1_refusal_t why;
    bool was = b1_active(t);
    enum b1_verdict v = b1_take(t, &in, max, &why);
    /* A body being put together: the session is busy. */
    if (b1_active(t) && !was)
        s->busy++;
    else if (!b1_active(t) && was)
        s->busy--;
    switch (v) {
    case B1_REFUSED:
        *code = why.code;
        if (why.size1 >= 0)
            *size1 = why.size1;
        if (why.max_age >= 0)
            *max_age = why.max_age;
        b1_release(s);
        return BODY_ERROR;
    case B1_CONTINUE:
        *block1 = b1_option(&in);
        return BODY_CONTINUE;
    case B1_COMPLETE:
        break;
    }
    *block1 = b1_option(&in);
    *data = b1_body(t, len);
    return BODY_READY;
}

static void handle_request(bridge_t *b, coap_session_t *session, const coap_pdu_t *req,
                           coap_pdu_t *resp)
{
    sess_t *s;
    map_segs_t segs;
    const map_entry_t *e = NULL;
    char topic[MAP_PATH_MAX + 1];
    const uint8_t *data = NULL;
    size_t len = 0;
    uint32_t block1 = NO_BLOCK1;
    int code = 0, size1 = -1, max_age = -1;
    coap_pdu_code_t method = coap_pdu_get_code(req);
    uint16_t mid = (uint16_t)coap_pdu_get_mid(req);

    b->st.requests++;
    s = session_state(b, session);
    if (!s) {
        bridge_answer(&b->st.responses, resp, 500, NO_BLOCK1, -1, -1);
        return;
    }
    uint64_t now = gw_now_ms();
    sess_touch(s, now);
    const char *identity = dtls_identity(session);
    coap_get_data(req, &len, &data);
    b->st.bytes_in += len;

    const struct dedup *d = sess_dedup_find(s, identity, mid, now);
    if (d) {
        b->st.duplicates++;
        if (d->code == CODE_PENDING) {
            /*
             * The device retransmits while the broker has not answered:
             * libcoap sends the empty ACK (the response is left empty), and
             * the answer will be separate.
             */
            pending_slot_t *p = pending_by_id(b->pend, d->pending);
            if (p)
                p->separate = true;
            return;
        }
        bridge_answer(&b->st.responses, resp, d->code, d->block1, d->code == 503 ? d->max_age : -1, -1);
        return;
    }

    if (s->refused) {
        /* Over coap.max_sessions with every session busy: this one goes after this turn. */
        code = 503;
        max_age = SESSIONS_FULL_RETRY_S;
        goto refuse;
    }
    /* GET has its own handler (down.c); other methods no mapping allows. */
    int dir = method == COAP_REQUEST_CODE_POST || method == COAP_REQUEST_CODE_PUT ||
                      method == COAP_REQUEST_CODE_DELETE
                  ? MAP_UP
                  : 0;
    enum map_status ms = bridge_uri_segments(req, &segs)
                             ? map_route(b->cfg->maps, &segs, dir, identity, &e, topic,
                                         sizeof(topic))
                             : MAP_NOT_FOUND;
    if (ms != MAP_OK) {
        code = map_status_code(ms);
        goto refuse;
    }
    if (method == COAP_REQUEST_CODE_DELETE && !map_entry_retain(e)) {
        code = 405;
        goto refuse;
    }
    if (b->draining) {
        code = 503;
        max_age = 5;
        goto refuse;
    }
    if (method == COAP_REQUEST_CODE_DELETE) {
        len = 0;
    } else {
        switch (take_body(b, s, session, req, topic, &data, &len, &block1, &code, &size1,
                          &max_age)) {
        case BODY_ERROR:
            goto refuse;
        case BODY_CONTINUE:
            bridge_answer(&b->st.responses, resp, 231, block1, -1, -1);
            sess_dedup_add(s, identity, mid, 231, block1, -1);
            return;
        case BODY_READY:
            break;
        }
    }
    if (!b->connected && (b->cfg->mqtt.offline_buffer == 0 ||
                          persist_bytes(b->persist) + len > OFFLINE_BYTES_MAX)) {
        code = 503;
        max_age = bridge_retry_after_s(b);
        goto refuse;
    }

    bool text = false;
    int cf = bridge_option_uint(req, COAP_OPTION_CONTENT_FORMAT, -1);
    const char *ctype = cf >= 0 ? bridge_content_type(cf, &text) : NULL;
    mqtt_msg_t msg = {
        .topic = topic,
        .payload = len ? data : (const uint8_t *)"",
        .len = len,
        .qos = map_entry_qos(e),
        .retain = map_entry_retain(e) || method == COAP_REQUEST_CODE_DELETE,
        .content_type = ctype,
        .utf8 = text && map_utf8_ok((const char *)data, len),
        .device = identity,
    };
    int ok_code = method == COAP_REQUEST_CODE_DELETE ? 202 : 204;
    size_t mi = map_entry_index(e);

    if (!b->connected) {
        /*
         * Into the offline buffer. The record is written now and fsync'ed
         * with the others of this turn at bridge_commit(), which answers.
         */
        pending_slot_t *p = pending_alloc(b->pend);
        persist_defer(b->persist, p != NULL);
        int rc = mqtt_publish(b->mqtt, &msg, UINT64_MAX);
        persist_defer(b->persist, false);
        if (rc < 0) {
            if (p)
                pending_release(b->pend, p); /* no session held yet: releasing NULL is a no-op */
            code = publish_refused(b, rc, &msg, &max_age, &size1);
            goto refuse;
        }
        b->st.offline_buffered++;
        if (!p) { /* no slot to wait in: the record was fsync'ed at once */
            b->maps[mi].up++;
            bridge_answer(&b->st.responses, resp, ok_code, block1, -1, -1);
            sess_dedup_add(s, identity, mid, ok_code, block1, -1);
            return;
        }
        pending_fill(b->pend, p, session, req, mid, ok_code, block1, mi,
                     (uint64_t)b->cfg->mqtt.publish_timeout * 1000);
        pending_mark_stored(b->pend, p);
        sess_dedup_add(s, identity, mid, CODE_PENDING, block1, -1)->pending = pending_id(b->pend, p);
        coap_pdu_set_type(resp, COAP_MESSAGE_NON); /* dropped: bridge_commit() answers */
        return;
    }
    if (msg.qos == 0) {
        int rc = mqtt_publish(b->mqtt, &msg, 0);
        if (rc < 0) {
            code = publish_refused(b, rc, &msg, &max_age, &size1);
            goto refuse;
        }
        b->st.published++;
        b->maps[mi].up++;
        bridge_answer(&b->st.responses, resp, ok_code, block1, -1, -1);
        sess_dedup_add(s, identity, mid, ok_code, block1, -1);
        return;
    }

    pending_slot_t *p = pending_alloc(b->pend);
    if (!p) {
        code = 503;
        max_age = 1;
        goto refuse;
    }
    pending_fill(b->pend, p, session, req, mid, ok_code, block1, mi,
                     (uint64_t)b->cfg->mqtt.publish_timeout * 1000);
    int rc = mqtt_publish(b->mqtt, &msg, pending_id(b->pend, p));
    if (rc < 0) {
        pending_release(b->pend, p);
        code = publish_refused(b, rc, &msg, &max_age, &size1);
        goto refuse;
    }
    b->st.published++;
    sess_dedup_add(s, identity, mid, CODE_PENDING, block1, -1)->pending = pending_id(b->pend, p);
    /* Nothing for libcoap to send: an empty NON response is dropped. */
    coap_pdu_set_type(resp, COAP_MESSAGE_NON);
    return;

refuse:
    if (e)
        b->maps[map_entry_index(e)].refused++;
    gw_debug(COAP, "request refused with %d.%02d", code / 100, code % 100);
    bridge_answer(&b->st.responses, resp, code, block1, max_age, size1);
    sess_dedup_add(s, identity, mid, code, block1, max_age);
}

void bridge_on_request(void *data, enum res_kind kind, coap_resource_t *resource,
                       coap_session_t *session, const coap_pdu_t *req, coap_pdu_t *resp)
{
    bridge_t *b = data;
    (void)kind;
    (void)resource;
    handle_request(b, session, req, resp);
    /* A body put together from blocks has been handed over: its buffer goes. */
    sess_t *s = session_state(b, session);
    b1_t *t = s ? s->up : NULL;
    if (t && !b1_active(t))
        b1_release(s);
}

static int on_event(coap_session_t *session, const coap_event_t event)
{
    bridge_t *b = event_bridge;
    if (!b)
        return 0;
    switch (event) {
    case COAP_EVENT_SERVER_SESSION_NEW:
        sess_open(b->sessions, session);
        break;
    case COAP_EVENT_SERVER_SESSION_DEL:
        sess_close(b->sessions, session);
        break;
    default:
        break;
    }
    return 0;
}

/*
 * A confirmable message libcoap gave up on (no ACK after its retransmissions,
 * an RST, the session gone). When it was a notification, libcoap has removed
 * that observer: so does the session's count of registrations.
 */
static void on_nack(coap_session_t *session, const coap_pdu_t *sent, coap_nack_reason_t reason,
                    const coap_mid_t mid)
{
    bridge_t *b = event_bridge;
    (void)reason;
    (void)mid;
    if (!b || !sent || COAP_RESPONSE_CLASS(coap_pdu_get_code(sent)) != 2)
        return;
    dtls_peer_t *peer = coap_session_get_app_data(session);
    if (!peer || !peer->app)
        return;
    coap_bin_const_t token = coap_pdu_get_token(sent);
    sess_obs_remove(peer->app, token.s, token.length);
}

void bridge_after_io(bridge_t *b)
{
    sessions_after_io(b->sessions);
}

/* sessions_t's on_ready: a device's handshake succeeded; its own resources are made. */
static void on_ready(void *arg, coap_session_t *session, const char *identity)
{
    bridge_t *b = arg;
    down_on_ready(b->down, session, identity);
}

/* down_wait_fn: how long a device waits for values not subscribed yet. */
static int values_wait_s(void *arg)
{
    bridge_t *b = arg;
    return b->connected ? 1 : bridge_retry_after_s(b);
}

bridge_t *bridge_new(const gw_config_t *cfg, coap_context_t *ctx)
{
    bridge_t *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->cfg = cfg;
    b->ctx = ctx;
    b->maps = calloc(map_table_count(cfg->maps) + 1, sizeof(*b->maps));
    /* Room for every acknowledgement in flight plus connection news. */
    /* Room for every acknowledgement in flight, connection news and messages. */
    b->inbox = inbox_new((size_t)cfg->mqtt.max_inflight + 4096, INBOX_BYTES);
    if (!b->maps || !b->inbox)
        goto fail;
    b->persist = persist_new(cfg->gateway.state_dir);
    if (!b->persist) {
        gw_err(BRIDGE, "cannot keep state in %s/mqtt (%s)", cfg->gateway.state_dir, strerror(errno));
        goto fail;
    }
    persist_set_durable(b->persist, true); /* not connected yet */
    if (persist_records(b->persist))
        gw_info(MQTT, "%u messages kept from before the restart will be delivered",
                persist_records(b->persist));
    b->mqtt = mqtt_new(cfg, b->inbox, b->persist);
    if (!b->mqtt)
        goto fail;
    b->backoff_s = 1;
    b->started_ms = gw_now_ms();
    b->b1 = b1_pool_new();
    if (!b->b1)
        goto fail;
    b->sessions = sessions_new(ctx, (size_t)cfg->coap.max_sessions, free_up, on_ready, b);
    if (!b->sessions)
        goto fail;
    b->pend = pending_new((size_t)cfg->mqtt.max_inflight, b->sessions);
    if (!b->pend)
        goto fail;

    b->res = resources_new(ctx);
    if (!b->res)
        goto fail;
    b->down = down_new(cfg, ctx, b->res, b->mqtt, b->sessions, values_wait_s, b);
    if (!b->down)
        goto fail;
    resources_set_handlers(b->res, down_on_get, b->down, bridge_on_request, b);
    event_bridge = b;
    coap_register_event_handler(ctx, on_event);
    coap_register_nack_handler(ctx, on_nack);
    return b;
fail:
    bridge_free(b);
    return NULL;
}

void bridge_free(bridge_t *b)
{
    if (!b)
        return;
    if (event_bridge == b)
        event_bridge = NULL;
    pending_free(b->pend);
    sessions_free(b->sessions); /* and their Block1 transfers */
    b1_pool_free(b->b1);
    down_free(b->down);
    resources_free(b->res);
    mqtt_free(b->mqtt);
    persist_free(b->persist);
    inbox_free(b->inbox);
    free(b->maps);
    free(b);
}

int bridge_start(bridge_t *b)
{
    b->connecting = true;
    gw_info(MQTT, "connecting to %s", b->cfg->mqtt.uri);
    return mqtt_connect(b->mqtt);
}

int bridge_inbox_fd(const bridge_t *b)
{
    return inbox_fd(b->inbox);
}

static void schedule_reconnect(bridge_t *b)
{
    persist_set_durable(b->persist, true);
    b->connected = false;
    b->connecting = false;
    b->reconnect_at_ms = gw_now_ms() + (uint64_t)b->backoff_s * 1000;
    b->backoff_s = b->backoff_s * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : b->backoff_s * 2;
}

/*
 * The connection is lost with publishes still waiting for their
 * acknowledgement. The client keeps them in its store and sends them again
 * once reconnected; with an offline buffer, made durable, they are answered
 * 2.04 now, as a publish made while disconnected would be.
 */
static void keep_inflight(bridge_t *b)
{
    if (b->cfg->mqtt.offline_buffer == 0 || pending_inflight(b->pend) == 0 ||
        persist_flush(b->persist) < 0)
        return;
    for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p)) {
        if (!p->stored)
            b->st.offline_buffered++;
        answer_pending(b, p, p->ok_code);
    }
}

static void on_connected(bridge_t *b)
{
    persist_set_durable(b->persist, false);
    b->connected = true;
    b->connecting = false;
    b->connected_at_ms = gw_now_ms();
    b->guard.acked = false;
    if (b->ever_connected)
        b->st.reconnects++;
    b->ever_connected = true;
    gw_info(MQTT, "connected to %s", b->cfg->mqtt.uri);
    mqtt_resend_lost(b->mqtt);
    down_on_connected(b->down);
    if (*b->cfg->mqtt.status_topic) {
        mqtt_msg_t online = {.topic = b->cfg->mqtt.status_topic, .payload = "online", .len = 6,
                             .qos = 1, .retain = true};
        if (mqtt_publish(b->mqtt, &online, UINT64_MAX) < 0)
            gw_warn(MQTT, "cannot publish \"online\" on %s", b->cfg->mqtt.status_topic);
    }
}

/*
 * A message the broker drops the connection for (a packet over its size
 * limit, or a topic its policy disconnects for, on MQTT 3.1.1 where it has no
 * other way to refuse) would be sent again at every reconnection, and hold
 * everything behind it, forever. When the broker drops GUARD_STRIKES
 * connections in a row within STABLE_MS of making them, with messages waiting
 * and none acknowledged, the client sends one message at a time: two such
 * connections in a row with the same message in flight name it, and it is
 * set aside (into
 * state_dir/mqtt-refused, for the operator), logged and counted. After a
 * connection has lasted STABLE_MS, messages go at the full rate again.
 */
#define GUARD_STRIKES 2
#define SUSPECT_STRIKES 2

static void guard_dropped(bridge_t *b)
{
    char key[80];
    if (!b->guard.one_at_a_time) {
        if (++b->guard.strikes < GUARD_STRIKES)
            return;
        b->guard.one_at_a_time = true;
        b->guard.suspect[0] = '\0';
        gw_warn(MQTT, "the broker dropped %u connections in a row soon after they were made: "
                        "messages go one at a time to find one it refuses",
                b->guard.strikes);
        mqtt_set_one_at_a_time(b->mqtt, true);
        mqtt_restart(b->mqtt, true);
        return;
    }
    if (persist_sent(b->persist, key, sizeof(key)) != 1)
        return; /* nothing, or not one message, in flight: nothing to blame */
    if (strcmp(key, b->guard.suspect)) {
        snprintf(b->guard.suspect, sizeof(b->guard.suspect), "%s", key);
        b->guard.suspect_strikes = 1;
        return;
    }
    if (++b->guard.suspect_strikes < SUSPECT_STRIKES)
        return;
    int rc = persist_set_aside(b->persist, key);
    if (rc == 0)
        mqtt_restart(b->mqtt, false); /* a client that no longer holds it */
    b->guard.suspect[0] = '\0';
    b->st.broker_dropped_for++;
    gw_err(MQTT, "the broker drops the connection whenever message %s is sent: %s "
                   "(%s-refused)",
           key, rc == 0 ? "it was set aside" : "it cannot be set aside", b->cfg->gateway.state_dir);
}

static void connection_lost(bridge_t *b)
{
    /*
     * Dropped soon, with messages waiting and none acknowledged: what the
     * broker does to a message it refuses this way (it reads up to it, and
     * the client sends the oldest unacknowledged first). A connection in which
     * the broker acknowledged anything was a good one: a broker restarted under
     * load, say.
     */
    bool refused = gw_now_ms() - b->connected_at_ms < STABLE_MS && !b->guard.acked &&
                   persist_records(b->persist) > 0;
    schedule_reconnect(b); /* what waits is on disk from here on */
    keep_inflight(b);
    if (refused) {
        guard_dropped(b); /* and the backoff goes on growing */
    } else {
        b->guard.strikes = 0;
        b->guard.suspect[0] = '\0';
        b->backoff_s = 1;
    }
}

void bridge_process_inbox(bridge_t *b)
{
    inbox_event_t ev[INBOX_BATCH];
    size_t n = inbox_drain(b->inbox, ev, INBOX_BATCH);

    for (size_t i = 0; i < n; i++) {
        pending_slot_t *p;
        switch (ev[i].type) {
        case EV_CONNECTED:
            on_connected(b);
            break;
        case EV_CONNECT_FAILED:
            gw_warn(MQTT, "cannot connect to %s (%s); retrying in %us", b->cfg->mqtt.uri,
                    ev[i].text, b->backoff_s);
            schedule_reconnect(b);
            /*
             * The broker accepted the connection and dropped it while the
             * client sent again what it had in flight (Paho does that before
             * it reports the connection made): dropped soon, nothing
             * acknowledged.
             */
            if (ev[i].rc == MQTTASYNC_DISCONNECTED && persist_records(b->persist) > 0)
                guard_dropped(b);
            break;
        case EV_CONN_LOST:
            if (!b->connected)
                break; /* a DISCONNECT before the CONNACK: the connect failure follows */
            if (ev[i].rc)
                b->st.broker_disconnects++;
            gw_warn(MQTT, "connection to %s lost (%s)", b->cfg->mqtt.uri, ev[i].text);
            connection_lost(b);
            break;
        case EV_PUB_OK:
            b->guard.acked = true;
            if (ev[i].id == UINT64_MAX)
                break;
            p = pending_by_id(b->pend, ev[i].id);
            if (!p)
                break; /* answered already (timed out) */
            b->st.acked++;
            uint64_t lat = gw_now_ms() - p->started_ms;
            b->st.lat_ms[lat < 1023 ? lat : 1023]++;
            answer_pending(b, p, p->ok_code);
            break;
        case EV_MESSAGE:
            down_message(b->down, ev[i].data);
            free(ev[i].data);
            break;
        case EV_DELIVERED:
            b->guard.acked = true;
            mqtt_kick(b->mqtt, pending_inflight(b->pend));
            break;
        case EV_SUB_OK:
            down_subscribed(b->down, ev[i].id);
            break;
        case EV_SUB_FAILED:
            down_subscription_failed(b->down, ev[i].text);
            break;
        case EV_PUB_FAILED:
            if (ev[i].id == UINT64_MAX)
                break;
            p = pending_by_id(b->pend, ev[i].id);
            if (!p)
                break;
            /*
             * A broker's refusal (reason >= 0x80) is final: the client has
             * dropped the message from its store, the device gets 5.02.
             * Anything else is an outage.
             */
            if (ev[i].rc >= 0x80) {
                b->st.broker_refused++;
                gw_log_limited(GW_LOG_WARNING, MQTT, "publish refused by the broker (%s)",
                               ev[i].text);
            } else {
                gw_log_limited(GW_LOG_WARNING, MQTT, "publish failed (%s)", ev[i].text);
            }
            answer_pending(b, p, ev[i].rc >= 0x80 ? 502 : 503);
            break;
        }
    }
}

void bridge_commit(bridge_t *b)
{
    if (!pending_stored(b->pend))
        return;
    int rc = persist_sync(b->persist);
    if (rc < 0)
        gw_log_limited(GW_LOG_ERROR, MQTT,
                       "cannot make the offline buffer durable (%s); answering 5.03",
                       gw_strerror(rc));
    for (pending_slot_t *p = pending_next(b->pend, NULL); p && pending_stored(b->pend);
         p = pending_next(b->pend, p))
        if (p->stored)
            answer_pending(b, p, rc == 0 ? p->ok_code : 503);
}

void bridge_tick(bridge_t *b)
{
    down_check_ready(b->down);
    uint64_t now = gw_now_ms();
    if (now - b->last_tick_ms < TICK_MS)
        return;
    b->last_tick_ms = now;
    if (now - b->last_second_ms >= 1000) {
        b->last_second_ms = now;
        down_tick(b->down);
    }
    if (pending_inflight(b->pend)) {
        for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p)) {
            if (now >= p->deadline_ms) {
                b->st.timeouts++;
                gw_log_limited(GW_LOG_WARNING, MQTT, "no acknowledgement within %ds; answering 5.04",
                               b->cfg->mqtt.publish_timeout);
                answer_pending(b, p, 504);
            } else if (!p->separate && now >= p->piggyback_ms) {
                gw_debug(COAP, "broker slow: empty ACK now, separate answer later");
                pending_send_empty_ack(p);
            }
        }
    }
    if (b->guard.one_at_a_time && b->connected && now - b->connected_at_ms >= STABLE_MS) {
        /* The connection holds: what was refused is out; back to the full rate. */
        b->guard.one_at_a_time = false;
        b->guard.strikes = 0;
        mqtt_set_one_at_a_time(b->mqtt, false);
        gw_info(MQTT, "messages go at the full rate again");
        mqtt_disconnect(b->mqtt);
    }
    if (!b->connected && !b->connecting && !b->draining && now >= b->reconnect_at_ms) {
        b->connecting = true;
        gw_info(MQTT, "connecting to %s", b->cfg->mqtt.uri);
        mqtt_connect(b->mqtt);
    }
}

int bridge_timeout_ms(const bridge_t *b)
{
    if (pending_inflight(b->pend) || (!b->connected && !b->connecting))
        return TICK_MS;
    int t = down_timeout_ms(b->down);
    struct sessions_stats ss;
    sessions_stats(b->sessions, &ss);
    if (ss.observers && (t < 0 || t > 1000))
        t = 1000; /* observers of silent devices are confirmed (down_tick) */
    return t;
}

size_t bridge_inflight(const bridge_t *b)
{
    return pending_inflight(b->pend);
}

void bridge_drain(bridge_t *b)
{
    b->draining = true;
}

void bridge_abandon(bridge_t *b)
{
    /*
     * With an offline buffer, what is still waiting is in the MQTT client's
     * store and is sent again after a restart: made durable, it is answered
     * 2.04. Without one it gets 5.03 and the device sends it again.
     */
    bool kept = b->cfg->mqtt.offline_buffer > 0 && pending_inflight(b->pend) &&
                persist_flush(b->persist) == 0;
    for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p))
        answer_pending(b, p, kept ? p->ok_code : 503);
}

/* Index in next of the mapping named as mapping i of cur, or SIZE_MAX. */
static size_t same_mapping(const gw_config_t *cur, size_t i, const gw_config_t *next)
{
    const map_entry_t *e = map_table_get(cur->maps, i);
    for (size_t k = 0; e && k < map_table_count(next->maps); k++)
        if (!strcmp(map_entry_name(map_table_get(next->maps, k)), map_entry_name(e)))
            return k;
    return SIZE_MAX;
}

void bridge_reload(bridge_t *b, const gw_config_t *next)
{
    size_t n = map_table_count(next->maps);
    struct map_counters *maps = calloc(n + 1, sizeof(*maps));
    if (!maps) {
        gw_err(GATEWAY, "reload: out of memory; the old mappings stay");
        return;
    }
    size_t *index = calloc(map_table_count(b->cfg->maps) + 1, sizeof(*index));
    if (!index) {
        free(maps);
        gw_err(GATEWAY, "reload: out of memory; the old mappings stay");
        return;
    }
    for (size_t i = 0; i < map_table_count(b->cfg->maps); i++) {
        index[i] = same_mapping(b->cfg, i, next);
        if (index[i] != SIZE_MAX)
            maps[index[i]] = b->maps[i];
    }
    if (down_reload(b->down, next, index, b->connected) < 0) {
        free(index);
        free(maps);
        gw_err(GATEWAY, "reload: out of memory; the old mappings stay");
        return;
    }
    pending_remap(b->pend, index, map_table_count(b->cfg->maps));
    free(index);
    sessions_set_max(b->sessions, (size_t)next->coap.max_sessions);
    free(b->maps);
    b->maps = maps;
    b->cfg = next;
    mqtt_set_config(b->mqtt, next);
}

void bridge_show_gate(bridge_t *b, const void *gate_stats)
{
    b->gate = gate_stats;
}

void bridge_count_reload(bridge_t *b, bool ok)
{
    if (ok)
        b->st.reloads++;
    else
        b->st.reload_failures++;
}

void bridge_publish_stats(bridge_t *b)
{
    char *json = NULL;
    size_t len = 0;
    FILE *f;

    if (!b->connected || !(f = open_memstream(&json, &len)))
        return;
    bridge_stats_json(b, f);
    fclose(f);
    mqtt_msg_t msg = {.topic = b->cfg->mqtt.stats_topic, .payload = json, .len = len ? len - 1 : 0,
                      .qos = 0, .content_type = "application/json", .utf8 = true};
    mqtt_publish(b->mqtt, &msg, 0);
    free(json);
}

void bridge_shutdown(bridge_t *b, int timeout_ms)
{
    mqtt_shutdown(b->mqtt, timeout_ms);
    b->connected = false;
}

static uint64_t percentile(const bridge_t *b, double q)
{
    uint64_t total = 0, seen = 0;
    for (size_t i = 0; i < 1024; i++)
        total += b->st.lat_ms[i];
    if (!total)
        return 0;
    for (size_t i = 0; i < 1024; i++) {
        seen += b->st.lat_ms[i];
        if ((double)seen >= q * (double)total)
            return i;
    }
    return 1023;
}

/* A JSON string: names come from the configuration and may hold any character. */
static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

/* Days left of each certificate Tandem presents, read from the files in use. */
static void certificates_json(const bridge_t *b, FILE *out)
{
    const struct {
        const char *name, *path;
    } certs[] = {{"coap.dtls.cert", b->cfg->coap.dtls.cert}, {"mqtt.cert", b->cfg->mqtt.cert}};
    bool first = true;
    int days;

    fputs("\"certificates\":{", out);
    for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
        if (!*certs[i].path)
            continue;
        fprintf(out, "%s\"%s\":{\"days_left\":", first ? "" : ",", certs[i].name);
        if (tls_cert_days_left(certs[i].path, &days) == 0)
            fprintf(out, "%d}", days);
        else
            fputs("null}", out);
        first = false;
    }
    fputs("},", out);
}

void bridge_stats_json(const bridge_t *b, FILE *out)
{
    const down_stats_t *ds = down_stats(b->down);
    struct sessions_stats ss;
    sessions_stats(b->sessions, &ss);
    fputs("{\"gateway\":", out);
    json_str(out, b->cfg->gateway.id);
    fprintf(out,
            ",\"version\":\"%s\",\"uptime_s\":%llu,\"coap\":{\"sessions\":%llu,"
            "\"sessions_evicted\":%llu,\"sessions_refused\":%llu,\"observers\":%llu,"
            "\"observers_refused\":%llu,\"peers_remembered\":%llu,"
            "\"dtls_handshakes_ok\":%llu,\"dtls_handshakes_failed\":%llu,\"requests\":%llu,"
            "\"duplicates\":%llu,\"bytes_in\":%llu,\"block1_bytes\":%zu,"
            "\"block1_refused\":%llu,\"notifications\":%llu,\"responses\":{",
            TANDEM_VERSION, (unsigned long long)((gw_now_ms() - b->started_ms) / 1000),
            (unsigned long long)ss.sessions, (unsigned long long)ss.evicted,
            (unsigned long long)ss.refused, (unsigned long long)ss.observers,
            (unsigned long long)ss.observers_refused, (unsigned long long)ss.peers,
            (unsigned long long)ss.handshakes_ok, (unsigned long long)ss.handshakes_failed,
            (unsigned long long)(b->st.requests + ds->requests), (unsigned long long)b->st.duplicates,
            (unsigned long long)b->st.bytes_in, b1_pool_stats(b->b1)->bytes,
            (unsigned long long)b1_pool_stats(b->b1)->refused, (unsigned long long)ds->notifications);
    bool first = true;
    for (int i = 0; i < 256; i++) {
        uint64_t n = b->st.responses.n[i] + ds->responses.n[i];
        if (!n)
            continue;
        fprintf(out, "%s\"%d.%02d\":%llu", first ? "" : ",", i / 32, i % 32,
                (unsigned long long)n);
        first = false;
    }
    fprintf(out,
            "}},\"mqtt\":{\"connected\":%s,\"reconnects\":%llu,\"published\":%llu,"
            "\"acked\":%llu,\"received\":%llu,\"timeouts\":%llu,\"inflight\":%zu,"
            "\"inbox_dropped\":%llu,\"refused\":%llu,\"broker_disconnects\":%llu,"
            "\"unpublishable\":%llu,\"stored_refused\":%u,\"set_aside\":%llu,\"offline_buffered\":%llu,\"stored_records\":%u,\"stored_bytes\":%llu,"
            "\"ack_latency_ms\":{\"p50\":%llu,\"p99\":%llu}},\"mappings\":{",
            b->connected ? "true" : "false", (unsigned long long)b->st.reconnects,
            (unsigned long long)b->st.published, (unsigned long long)b->st.acked,
            (unsigned long long)ds->received, (unsigned long long)b->st.timeouts,
            pending_inflight(b->pend),
            (unsigned long long)inbox_dropped(b->inbox), (unsigned long long)b->st.broker_refused,
            (unsigned long long)b->st.broker_disconnects, (unsigned long long)b->st.unpublishable,
            persist_refused(b->persist), (unsigned long long)b->st.broker_dropped_for,
            (unsigned long long)b->st.offline_buffered, persist_records(b->persist),
            (unsigned long long)persist_bytes(b->persist), (unsigned long long)percentile(b, 0.5),
            (unsigned long long)percentile(b, 0.99));
    for (size_t i = 0; i < map_table_count(b->cfg->maps); i++) {
        if (i)
            fputc(',', out);
        json_str(out, map_entry_name(map_table_get(b->cfg->maps, i)));
        const down_map_stats_t *dm = down_map_stats(b->down, i);
        fprintf(out, ":{\"up\":%llu,\"down\":%llu,\"refused\":%llu}",
                (unsigned long long)b->maps[i].up, (unsigned long long)dm->down,
                (unsigned long long)(b->maps[i].refused + dm->refused));
    }
    uint64_t too_large, dropped = mqtt_dropped(b->mqtt, &too_large);
    fprintf(out, "},\"mqtt_in\":{\"dropped_inbox_full\":%llu,\"dropped_too_large\":%llu},",
            (unsigned long long)dropped, (unsigned long long)too_large);
    fprintf(out, "\"config\":{\"reloads\":%llu,\"reload_failures\":%llu},",
            (unsigned long long)b->st.reloads, (unsigned long long)b->st.reload_failures);
    fprintf(out, "\"log\":{\"suppressed\":%llu},", (unsigned long long)gw_log_suppressed());
    if (b->gate)
        fprintf(out,
                "\"dtls_cookies\":{\"hellos_answered\":%llu,\"peers_verified\":%llu,"
                "\"dropped\":%llu,\"peers_forgotten\":%llu},",
                (unsigned long long)b->gate->hellos_answered,
                (unsigned long long)b->gate->peers_verified, (unsigned long long)b->gate->dropped,
                (unsigned long long)b->gate->peers_forgotten);
    /* No MQTT device listener in this version: nothing connects to it. */
    fputs("\"mqtt_listener\":{\"connections\":0,\"rejected\":0,\"denied_publish\":0,"
          "\"denied_subscribe\":0},",
          out);
    certificates_json(b, out);
    fprintf(out,
            "\"down\":{\"resources\":%zu,\"value_bytes\":%zu,\"received\":%llu,"
            "\"evicted\":%llu,\"dropped_full\":%llu,\"dropped_bad_topic\":%llu,"
            "\"notifications\":%llu,\"confirmations\":%llu,\"subscriptions_failed\":%llu}",
            down_resources(b->down), down_value_bytes(b->down), (unsigned long long)ds->received,
            (unsigned long long)ds->evicted, (unsigned long long)ds->dropped_full,
            (unsigned long long)ds->dropped_bad_topic, (unsigned long long)ds->notifications,
            (unsigned long long)ds->confirmations, (unsigned long long)ds->subscriptions_failed);
    fprintf(out, "}\n");
}
