/*
 * The broker connection's life: the MQTT client (mqtt/client.h) and the
 * offline buffer (mqtt/store.h) together. What the client reports, the
 * offline buffer's commit and drain, the guard against a message the broker
 * drops the connection for, and the timers.
 *
 * Every QoS 1/2 publish is a record of the offline buffer first: in memory
 * while the broker is connected (its 2.04 waits for the acknowledgement),
 * written durably the moment the connection drops (with mqtt.offline_buffer >
 * 0 the requests waiting are answered 2.04 then), and fsync'ed before its
 * 2.04 while the broker is away (with mqtt.offline_buffer = 0, 5.03 then). Records go to the client in their
 * order, at most mqtt.max_inflight unacknowledged at a time, each with its seq
 * as the client's id; the acknowledgement removes the record, a refusal sets
 * it aside. The client keeps what it was handed across a connection loss and
 * sends it again; a record leaves the buffer only with its acknowledgement,
 * so a gateway restart sends again what was not acknowledged.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "clock.h"
#include "error.h"
#include "log.h"

/*
 * A connection that lasted this long was a good one (the client's backoff
 * starts again at 1 s then, and the guard below stands down). ms.
 */
#define STABLE_MS 10000
/* The longest wait between connection attempts the bridge paces, ms. */
#define BACKOFF_MAX_MS 30000
/* How often bridge_tick needs to run while anything waits, ms. */
#define TICK_MS 100
/* Bytes the offline buffer holds at most. */
#define OFFLINE_BYTES_MAX (64ull << 20)

/*
 * Client ids. A buffer record's: its seq in the low SEQ_BITS, and the index
 * (plus one) of the request slot waiting for it above them, 0 when none.
 */
#define SEQ_BITS 44
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)
/* The "online" status publish. */
#define STATUS_ID UINT64_MAX

static void on_connected(void *data, bool session_present);
static void on_lost(void *data, int err, const char *why);
static void on_acked(void *data, uint64_t id, int reason);
static void on_subscribed(void *data, uint64_t id, size_t n, const uint8_t *codes);
static void on_message(void *data, const mqtt_incoming_t *m);
static void on_sent(void *data, uint64_t id, uint16_t pid);

static const mqtt_client_handlers_t handlers = {
    .sent = on_sent,
    .connected = on_connected,
    .lost = on_lost,
    .acked = on_acked,
    .subscribed = on_subscribed,
    .message = on_message,
};

static int make_client(bridge_t *b, int max_inflight)
{
    mqtt_client_options_t o;
    char err[256];
    mqtt_client_options_from_config(&o, b->cfg);
    o.max_inflight = max_inflight;
    o.stable_ms = STABLE_MS;
    b->mqtt = mqtt_client_new(b->loop, &o, &handlers, b, err, sizeof(err));
    if (!b->mqtt) {
        gw_err(MQTT, "cannot set up the MQTT client (%s)", err);
        return -1;
    }
    /* A resumed session may hold what was sent before under its identifiers: not for new ones. */
    for (uint64_t seq = mqtt_store_first(b->store); seq; seq = mqtt_store_next(b->store, seq)) {
        mqtt_store_rec_t rec;
        if (mqtt_store_get(b->store, seq, &rec) == 0 && rec.sent)
            mqtt_client_reserve_id(b->mqtt, rec.id);
    }
    return 0;
}

/*
 * The offline buffer's bounds: mqtt.offline_buffer messages while the broker
 * is away; while connected, room for what waits for its acknowledgement too
 * (with offline_buffer = 0 as well: that is what the poison guard and a
 * restart find there).
 */
static void set_limits(bridge_t *b, bool connected)
{
    size_t n = (size_t)b->cfg->mqtt.offline_buffer;
    if (connected)
        n += (size_t)b->cfg->mqtt.max_inflight;
    mqtt_store_set_limits(b->store, n, OFFLINE_BYTES_MAX);
}

int upstream_init(bridge_t *b)
{
    set_limits(b, false);
    return make_client(b, b->cfg->mqtt.max_inflight);
}

bool upstream_connected(const bridge_t *b)
{
    return b->link.connected;
}

int bridge_retry_after_s(const bridge_t *b)
{
    uint64_t ms = b->mqtt ? mqtt_client_retry_in_ms(b->mqtt) : 0;
    uint64_t now = gw_now_ms();
    if (b->link.start_at_ms > now && (b->link.remake || ms == 0 || b->link.start_at_ms - now < ms))
        ms = b->link.start_at_ms - now;
    return ms < 1000 ? 1 : (int)((ms + 999) / 1000);
}

void upstream_answer(bridge_t *b, pending_slot_t *p, int code)
{
    int max_age = code == 503 ? bridge_retry_after_s(b) : -1;
    up_count(&b->up, p->map, code == p->ok_code);
    stats_hist_add(&b->link.st.answer_latency, gw_now_ms() - p->started_ms);
    pending_answer(b->pend, p, code, max_age, &b->link.st.responses);
    b->answered = true;
}

bool bridge_take_answered(bridge_t *b)
{
    bool a = b->answered;
    b->answered = false;
    return a;
}

int bridge_start(bridge_t *b)
{
    gw_info(MQTT, "connecting to %s", b->cfg->mqtt.uri);
    return mqtt_client_start(b->mqtt);
}

/* ------------------------------------------------------------------ records */

/* The publish msg is, for the buffer (its strings borrowed). */
static void to_publish(const mqtt_message_t *m, mqtt_publish_t *pb)
{
    memset(pb, 0, sizeof(*pb));
    pb->qos = (uint8_t)m->qos;
    pb->retain = m->retain;
    pb->topic = (mqtt_bytes_t){ (const uint8_t *)m->topic, strlen(m->topic) };
    pb->id = m->qos ? 1 : 0;
    pb->payload = (mqtt_bytes_t){ m->payload, m->len };
    if (m->utf8)
        mqtt_prop_set_value(&pb->props, MQTT_PROP_PAYLOAD_FORMAT, 1);
    if (m->content_type)
        mqtt_prop_set_data(&pb->props, MQTT_PROP_CONTENT_TYPE, m->content_type,
                           strlen(m->content_type));
    if (m->device)
        mqtt_prop_add_user(&pb->props, "device", 6, m->device, strlen(m->device));
}

/* A string of the record, NUL-terminated, in buf; NULL when it has a NUL inside. */
static const char *string_of(mqtt_bytes_t v, char *buf)
{
    if (memchr(v.p, '\0', v.len))
        return NULL;
    memcpy(buf, v.p, v.len);
    buf[v.len] = '\0';
    return buf;
}

/* The message a record holds, its strings in static buffers (one record at a time). 0 or -EINVAL. */
static int to_message(const mqtt_publish_t *pb, mqtt_message_t *m)
{
    static char topic[65536], ctype[65536], device[65536];
    memset(m, 0, sizeof(*m));
    m->topic = pb->topic.len ? string_of(pb->topic, topic) : NULL;
    if (!m->topic)
        return -EINVAL;
    m->payload = pb->payload.len ? pb->payload.p : (const uint8_t *)"";
    m->len = pb->payload.len;
    m->qos = pb->qos;
    m->retain = pb->retain;
    for (size_t i = 0; i < pb->props.n; i++) {
        const mqtt_prop_t *pr = &pb->props.p[i];
        if (pr->id == MQTT_PROP_PAYLOAD_FORMAT)
            m->utf8 = pr->value == 1;
        else if (pr->id == MQTT_PROP_CONTENT_TYPE)
            m->content_type = string_of(pr->data, ctype);
        else if (pr->id == MQTT_PROP_USER && pr->data.len == 6 && !memcmp(pr->data.p, "device", 6))
            m->device = string_of(pr->data2, device);
    }
    return 0;
}

/* The first record not handed to the client yet, or 0. */
static uint64_t first_waiting(const bridge_t *b)
{
    return b->link.hand_next ? mqtt_store_next(b->store, b->link.hand_next - 1)
                             : mqtt_store_first(b->store);
}

/* The client's id for record seq: with the slot waiting for it, when one does. */
static uint64_t record_id(bridge_t *b, uint64_t seq)
{
    for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p))
        if (p->seq == seq)
            return seq | (uint64_t)(pending_index(b->pend, p) + 1) << SEQ_BITS;
    return seq;
}

/* The request waiting for the record of client id, or NULL. */
static pending_slot_t *pending_of(bridge_t *b, uint64_t id)
{
    size_t slot = (size_t)(id >> SEQ_BITS);
    pending_slot_t *p = slot ? pending_at(b->pend, slot - 1) : NULL;
    return p && p->seq == (id & SEQ_MASK) ? p : NULL;
}

/* How many publishes the client may hold unacknowledged. */
static size_t hand_limit(const bridge_t *b)
{
    return b->link.guard.one_at_a_time ? 1 : (size_t)b->cfg->mqtt.max_inflight;
}

void upstream_pump(bridge_t *b)
{
    if (!b->link.connected || !b->mqtt)
        return;
    uint64_t seq = first_waiting(b);
    while (seq && mqtt_client_unacked(b->mqtt) < hand_limit(b)) {
        uint64_t next = mqtt_store_next(b->store, seq);
        mqtt_store_rec_t rec;
        mqtt_message_t m;
        int rc = mqtt_store_get(b->store, seq, &rec);
        if (rc == -ENOENT || rc == -EBADMSG) { /* gone, or set aside by the store */
            b->link.hand_next = seq + 1;
            seq = next;
            continue;
        }
        if (rc < 0) {
            gw_log_limited(GW_LOG_ERROR, MQTT, "cannot read the offline buffer (%s)",
                           gw_strerror(rc));
            return; /* tried again at the next acknowledgement or connection */
        }
        rc = to_message(&rec.pub, &m);
        int qos = rec.pub.qos;
        if (rc == 0 &&
            rec.sent) /* by an earlier client: again with DUP if the session is resumed */
            rc = mqtt_client_publish_again(b->mqtt, &m, record_id(b, seq), rec.id);
        else if (rc == 0)
            rc = mqtt_client_publish(b->mqtt, &m, record_id(b, seq));
        if (rc == -EINVAL || rc == -EMSGSIZE) {
            /* The broker would refuse it (its limits changed, say): for the operator. */
            b->up.st.unpublishable++;
            gw_log_limited(GW_LOG_ERROR, MQTT,
                           "a buffered message for %.*s cannot be published (%s); set aside in "
                           "%s/mqtt-refused",
                           (int)(rec.pub.topic.len > 200 ? 200 : rec.pub.topic.len),
                           rec.pub.topic.p, gw_strerror(rc), b->cfg->gateway.state_dir);
            mqtt_store_set_aside(b->store, seq);
            pending_slot_t *p = pending_of(b, record_id(b, seq));
            if (p)
                upstream_answer(b, p, rc == -EMSGSIZE ? 413 : 500);
            b->link.hand_next = seq + 1;
            seq = next;
            continue;
        }
        if (rc < 0)
            return; /* not connected any more, or the client is full: later */
        b->link.hand_next = seq + 1;
        b->link.st.drained++;
        if (qos == 0) /* no acknowledgement comes: the client has it */
            mqtt_store_remove(b->store, seq);
        seq = next;
    }
}

int upstream_publish(bridge_t *b, const mqtt_message_t *msg, pending_slot_t *p)
{
    bool connected = b->link.connected;
    if (p)
        p->seq = 0;
    if (connected && msg->qos == 0)
        return mqtt_client_publish(b->mqtt, msg, 0);
    if (!connected && b->cfg->mqtt.offline_buffer == 0)
        return -ENOTCONN;
    if (connected) {
        /* 0: it cannot be sent at all; the client says why below. */
        size_t room = mqtt_client_payload_room(b->mqtt, msg);
        if (room && msg->len > room)
            return -EMSGSIZE;
    }
    mqtt_publish_t pb;
    to_publish(msg, &pb);
    uint64_t seq;
    /* Disconnected: written now, fsync'ed with the others of this turn at bridge_commit(). */
    mqtt_store_defer(b->store, p != NULL && !connected);
    int rc = mqtt_store_add(b->store, &pb, &seq);
    mqtt_store_defer(b->store, false);
    if (rc == -ENOBUFS) {
        b->up.st.buffer_full++;
        gw_log_limited(GW_LOG_WARNING, MQTT, "the offline buffer is full; answering 5.03");
        return rc;
    }
    if (rc < 0) {
        if (rc != -EINVAL)
            b->link.st.store_failures++;
        return rc == -EINVAL ? rc : -ENOBUFS;
    }
    if (!connected)
        return 0;
    if (seq > SEQ_MASK) {
        mqtt_store_remove(b->store, seq);
        return -ENOBUFS; /* not in this store's life */
    }
    if (p)
        p->seq = seq;
    if (first_waiting(b) == seq && mqtt_client_unacked(b->mqtt) < hand_limit(b)) {
        /* Nothing older waits: straight to the client. */
        rc = mqtt_client_publish(
            b->mqtt, msg, p ? seq | (uint64_t)(pending_index(b->pend, p) + 1) << SEQ_BITS : seq);
        if (rc < 0) {
            mqtt_store_remove(b->store, seq);
            if (p)
                p->seq = 0;
            return rc;
        }
        b->link.hand_next = seq + 1;
    }
    upstream_pump(b);
    return 0;
}

/* ------------------------------------------------------------------ events */

/* A record went to the broker with pid: kept with it, for a resumed session after a restart. */
static void on_sent(void *data, uint64_t id, uint16_t pid)
{
    bridge_t *b = data;
    if (id != STATUS_ID)
        mqtt_store_mark_sent(b->store, id & SEQ_MASK, pid);
}

static void on_connected(void *data, bool session_present)
{
    bridge_t *b = data;
    size_t resent = mqtt_client_unacked(b->mqtt);
    if (!session_present && resent && b->link.ever_connected)
        gw_warn(MQTT,
                "the broker had no session for us: %zu messages it had not acknowledged "
                "are sent again",
                resent);
    int rc = mqtt_store_set_durable(b->store, false);
    if (rc < 0)
        gw_log_limited(GW_LOG_ERROR, MQTT, "the offline buffer (%s)", gw_strerror(rc));
    set_limits(b, true);
    b->link.connected = true;
    b->link.own_retry = false;
    b->link.start_at_ms = 0;
    b->link.connected_at_ms = gw_now_ms();
    b->link.guard.acked = false;
    if (b->link.ever_connected)
        b->link.st.reconnects++;
    b->link.ever_connected = true;
    if (*b->cfg->mqtt.status_topic) {
        mqtt_message_t online = { .topic = b->cfg->mqtt.status_topic,
                                  .payload = "online",
                                  .len = 6,
                                  .qos = 1,
                                  .retain = true };
        if (mqtt_client_publish(b->mqtt, &online, STATUS_ID) < 0)
            gw_warn(MQTT, "cannot publish \"online\" on %s", b->cfg->mqtt.status_topic);
    }
    down_on_connected(b->down, session_present);
    mqtt_store_stats_t st;
    mqtt_store_stats(b->store, &st);
    if (first_waiting(b))
        gw_info(MQTT, "delivering the %llu messages of the offline buffer",
                (unsigned long long)st.records);
    upstream_pump(b);
}

/*
 * The connection is lost with publishes still waiting for their
 * acknowledgement. The client keeps them and sends them again once
 * reconnected; with an offline buffer, written durably, they are answered
 * 2.04 now, as a publish made while disconnected would be.
 */
static void keep_inflight(bridge_t *b, bool durable)
{
    if (!durable || b->cfg->mqtt.offline_buffer == 0 || pending_inflight(b->pend) == 0)
        return;
    for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p)) {
        if (!p->seq)
            continue;
        if (!p->stored)
            b->link.st.kept_offline++;
        upstream_answer(b, p, p->ok_code);
    }
}

/*
 * A message the broker drops the connection for (a packet over its size
 * limit, or a topic its policy disconnects for, on MQTT 3.1.1 where it has no
 * other way to refuse) would be sent again at every reconnection, and hold
 * everything behind it, forever. When the broker drops GUARD_STRIKES
 * connections in a row within STABLE_MS of making them, with messages waiting
 * and none acknowledged, the client is made again to send one message at a
 * time: two such connections in a row with the same buffer record in flight
 * name it, and it is set aside (into state_dir/mqtt-refused, for the
 * operator), logged and counted. After a connection has lasted STABLE_MS,
 * messages go at the full rate again.
 */
#define GUARD_STRIKES 2
#define SUSPECT_STRIKES 2

static void guard_dropped(bridge_t *b)
{
    if (!b->link.guard.one_at_a_time) {
        if (++b->link.guard.strikes < GUARD_STRIKES)
            return;
        b->link.guard.one_at_a_time = true;
        b->link.guard.suspect = 0;
        gw_warn(MQTT,
                "the broker dropped %u connections in a row soon after they were made: "
                "messages go one at a time to find one it refuses",
                b->link.guard.strikes);
        b->link.remake = true; /* a client that sends what it holds one at a time */
        return;
    }
    uint64_t seq = mqtt_store_first(b->store);
    if (!seq || seq >= b->link.hand_next)
        return; /* no buffer record in flight: nothing to blame */
    if (seq != b->link.guard.suspect) {
        b->link.guard.suspect = seq;
        b->link.guard.suspect_strikes = 1;
        return;
    }
    if (++b->link.guard.suspect_strikes < SUSPECT_STRIKES)
        return;
    int rc = mqtt_store_set_aside(b->store, seq);
    if (rc == 0)
        b->link.remake = true; /* a client that no longer holds it */
    b->link.guard.suspect = 0;
    b->link.st.broker_dropped_for++;
    gw_err(MQTT,
           "the broker drops the connection whenever message %016llx is sent: %s "
           "(%s/mqtt-refused)",
           (unsigned long long)seq, rc == 0 ? "it was set aside" : "it cannot be set aside",
           b->cfg->gateway.state_dir);
}

static void on_lost(void *data, int err, const char *why)
{
    bridge_t *b = data;
    (void)err;
    if (!b->link.connected) {
        /* An attempt that failed: the client said why and tries again. */
        if (b->link.own_retry) {
            b->link.retry_ms =
                b->link.retry_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b->link.retry_ms * 2;
            b->link.start_at_ms = gw_now_ms() + b->link.retry_ms;
        }
        return;
    }
    if (!strncmp(why, "the broker disconnected", 23))
        b->link.st.broker_disconnects++;
    /*
     * Dropped soon, with messages waiting and none acknowledged: what the
     * broker does to a message it refuses this way (it reads up to it, and
     * the client sends the oldest unacknowledged first). A connection in which
     * the broker acknowledged anything was a good one: a broker restarted under
     * load, say.
     */
    bool refused = gw_now_ms() - b->link.connected_at_ms < STABLE_MS && !b->link.guard.acked &&
                   mqtt_store_first(b->store) != 0 &&
                   mqtt_store_first(b->store) < b->link.hand_next;
    b->link.connected = false;
    set_limits(b, false);
    int rc = mqtt_store_set_durable(b->store, true); /* what waits is on disk from here on */
    if (rc < 0)
        gw_log_limited(GW_LOG_ERROR, MQTT, "cannot write the offline buffer (%s)", gw_strerror(rc));
    keep_inflight(b, rc == 0);
    if (refused) {
        guard_dropped(b); /* and the client's backoff goes on growing */
    } else {
        /*
         * A good connection (a broker restarted under load, say): attempts
         * start again at 1 s, whatever the client's backoff had grown to.
         */
        b->link.guard.strikes = 0;
        b->link.guard.suspect = 0;
        b->link.own_retry = true;
        b->link.retry_ms = 1000;
        b->link.start_at_ms = gw_now_ms() + b->link.retry_ms;
    }
}

static void on_acked(void *data, uint64_t id, int reason)
{
    bridge_t *b = data;
    pending_slot_t *p;
    if (id == STATUS_ID) {
        upstream_pump(b); /* it says nothing of the messages a broker drops connections for */
        return;
    }
    b->link.guard.acked = true;
    p = pending_of(b, id);
    if (reason >= 0x80)
        mqtt_store_set_aside(b->store, id & SEQ_MASK);
    else
        mqtt_store_remove(b->store, id & SEQ_MASK);
    if (reason >= 0x80) {
        b->link.st.broker_refused++;
        gw_log_limited(GW_LOG_WARNING, MQTT, "publish refused by the broker (%s)",
                       mqtt_reason_text(b->cfg->mqtt.version == 3 ? MQTT_V311 : MQTT_V5, reason));
    }
    if (p) {
        if (reason < 0x80) {
            b->link.st.acked++;
            stats_hist_add(&b->link.st.ack_latency, gw_now_ms() - p->started_ms);
        }
        upstream_answer(b, p, reason < 0x80 ? p->ok_code : 502);
    }
    upstream_pump(b);
}

static void on_subscribed(void *data, uint64_t id, size_t n, const uint8_t *codes)
{
    bridge_t *b = data;
    /* A refused filter is said and counted; the others' values are served. */
    for (size_t i = 0; i < n; i++) {
        if (codes[i] >= 0x80) {
            down_subscription_failed(
                b->down,
                mqtt_reason_text(b->cfg->mqtt.version == 3 ? MQTT_V311 : MQTT_V5, codes[i]));
            break;
        }
    }
    down_subscribed(b->down, id);
}

static void on_message(void *data, const mqtt_incoming_t *m)
{
    bridge_t *b = data;
    down_message(b->down, m);
}

/* ------------------------------------------------------------------ the loop */

void bridge_commit(bridge_t *b)
{
    if (!pending_stored(b->pend))
        return;
    int rc = mqtt_store_sync(b->store);
    if (rc < 0) {
        b->link.st.store_failures++;
        gw_log_limited(GW_LOG_ERROR, MQTT,
                       "cannot make the offline buffer durable (%s); answering 5.03",
                       gw_strerror(rc));
    }
    for (pending_slot_t *p = pending_next(b->pend, NULL); p && pending_stored(b->pend);
         p = pending_next(b->pend, p))
        if (p->stored)
            upstream_answer(b, p, rc == 0 ? p->ok_code : 503);
}

/* The client made again (outside its callbacks): what it held goes back to the buffer's turn. */
static void remake_client(bridge_t *b)
{
    uint64_t wait = mqtt_client_retry_in_ms(b->mqtt);
    b->link.remake = false;
    const mqtt_client_stats_t *cs = mqtt_client_stats(b->mqtt);
    mqtt_client_stats_t *base = &b->link.st.client_base;
    base->attempts += cs->attempts;
    base->failed_attempts += cs->failed_attempts;
    base->refused_connects += cs->refused_connects;
    base->losses += cs->losses;
    base->malformed += cs->malformed;
    base->writes += cs->writes;
    mqtt_client_free(b->mqtt);
    b->mqtt = NULL;
    b->link.hand_next = 0;
    if (make_client(b, (int)hand_limit(b)) < 0) {
        b->link.start_at_ms = gw_now_ms() + 1000; /* made at the next try */
        b->link.remake = true;
        return;
    }
    b->link.start_at_ms = gw_now_ms() + (wait > 1000 ? wait : 1000);
}

void bridge_tick(bridge_t *b)
{
    down_check_ready(b->down);
    uint64_t now = gw_now_ms();
    if (b->link.remake && !b->link.connected && !b->draining)
        remake_client(b);
    if (b->link.start_at_ms && now >= b->link.start_at_ms && b->mqtt) {
        b->link.start_at_ms = 0;
        mqtt_client_start(b->mqtt);
    }
    if (now - b->link.last_tick_ms < TICK_MS)
        return;
    b->link.last_tick_ms = now;
    if (now - b->link.last_second_ms >= 1000) {
        b->link.last_second_ms = now;
        down_tick(b->down);
    }
    if (pending_inflight(b->pend)) {
        for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p)) {
            if (now >= p->deadline_ms) {
                b->link.st.timeouts++;
                gw_log_limited(GW_LOG_WARNING, MQTT,
                               "no acknowledgement within %ds; answering 5.04",
                               b->cfg->mqtt.publish_timeout);
                upstream_answer(b, p, 504);
            } else if (!p->separate && now >= p->piggyback_ms) {
                gw_debug(COAP, "broker slow: empty ACK now, separate answer later");
                pending_send_empty_ack(p);
            }
        }
    }
    if (b->link.guard.one_at_a_time && b->link.connected &&
        now - b->link.connected_at_ms >= STABLE_MS) {
        /* The connection holds: what was refused is out; back to the full rate. */
        b->link.guard.one_at_a_time = false;
        b->link.guard.strikes = 0;
        mqtt_client_set_max_inflight(b->mqtt, b->cfg->mqtt.max_inflight);
        gw_info(MQTT, "messages go at the full rate again");
        upstream_pump(b);
    }
}

int bridge_timeout_ms(const bridge_t *b)
{
    if (b->link.remake || b->link.start_at_ms || pending_inflight(b->pend) ||
        b->link.guard.one_at_a_time)
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

void bridge_shutdown(bridge_t *b, int timeout_ms)
{
    if (b->mqtt)
        mqtt_client_shutdown(b->mqtt, timeout_ms);
    b->link.connected = false;
}
