/*
 * The broker connection's life: connecting and reconnecting with a backoff,
 * publishes kept across a connection loss, the guard against a message the
 * broker drops the connection for, what the MQTT client reports through the
 * inbox, the offline buffer's commit, and the timers.
 */
#include <MQTTAsync.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "clock.h"
#include "error.h"
#include "log.h"

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
/* How often bridge_tick needs to run while anything waits, ms. */
#define TICK_MS 100

void upstream_init(struct upstream *link)
{
    link->backoff_s = 1;
}

bool upstream_connected(const bridge_t *b)
{
    return b->link.connected;
}

int bridge_retry_after_s(const bridge_t *b)
{
    uint64_t now = gw_now_ms();
    if (b->link.connecting || b->link.reconnect_at_ms <= now)
        return 1;
    return (int)((b->link.reconnect_at_ms - now + 999) / 1000);
}

void upstream_answer(bridge_t *b, pending_slot_t *p, int code)
{
    int max_age = code == 503 ? bridge_retry_after_s(b) : -1;
    up_count(&b->up, p->map, code == p->ok_code);
    stats_hist_add(&b->link.st.answer_latency, gw_now_ms() - p->started_ms);
    pending_answer(b->pend, p, code, max_age, &b->link.st.responses);
}

int bridge_start(bridge_t *b)
{
    b->link.connecting = true;
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
    b->link.connected = false;
    b->link.connecting = false;
    b->link.reconnect_at_ms = gw_now_ms() + (uint64_t)b->link.backoff_s * 1000;
    b->link.backoff_s =
        b->link.backoff_s * 2 > BACKOFF_MAX_S ? BACKOFF_MAX_S : b->link.backoff_s * 2;
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
            b->link.st.kept_offline++;
        upstream_answer(b, p, p->ok_code);
    }
}

static void on_connected(bridge_t *b)
{
    persist_set_durable(b->persist, false);
    b->link.connected = true;
    b->link.connecting = false;
    b->link.connected_at_ms = gw_now_ms();
    b->link.guard.acked = false;
    if (b->link.ever_connected)
        b->link.st.reconnects++;
    b->link.ever_connected = true;
    gw_info(MQTT, "connected to %s", b->cfg->mqtt.uri);
    mqtt_resend_lost(b->mqtt);
    down_on_connected(b->down);
    if (*b->cfg->mqtt.status_topic) {
        mqtt_msg_t online = { .topic = b->cfg->mqtt.status_topic,
                              .payload = "online",
                              .len = 6,
                              .qos = 1,
                              .retain = true };
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
    if (!b->link.guard.one_at_a_time) {
        if (++b->link.guard.strikes < GUARD_STRIKES)
            return;
        b->link.guard.one_at_a_time = true;
        b->link.guard.suspect[0] = '\0';
        gw_warn(MQTT,
                "the broker dropped %u connections in a row soon after they were made: "
                "messages go one at a time to find one it refuses",
                b->link.guard.strikes);
        mqtt_set_one_at_a_time(b->mqtt, true);
        mqtt_restart(b->mqtt, true);
        return;
    }
    if (persist_sent(b->persist, key, sizeof(key)) != 1)
        return; /* nothing, or not one message, in flight: nothing to blame */
    if (strcmp(key, b->link.guard.suspect)) {
        snprintf(b->link.guard.suspect, sizeof(b->link.guard.suspect), "%s", key);
        b->link.guard.suspect_strikes = 1;
        return;
    }
    if (++b->link.guard.suspect_strikes < SUSPECT_STRIKES)
        return;
    int rc = persist_set_aside(b->persist, key);
    if (rc == 0)
        mqtt_restart(b->mqtt, false); /* a client that no longer holds it */
    b->link.guard.suspect[0] = '\0';
    b->link.st.broker_dropped_for++;
    gw_err(MQTT,
           "the broker drops the connection whenever message %s is sent: %s "
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
    bool refused = gw_now_ms() - b->link.connected_at_ms < STABLE_MS && !b->link.guard.acked &&
                   persist_records(b->persist) > 0;
    schedule_reconnect(b); /* what waits is on disk from here on */
    keep_inflight(b);
    if (refused) {
        guard_dropped(b); /* and the backoff goes on growing */
    } else {
        b->link.guard.strikes = 0;
        b->link.guard.suspect[0] = '\0';
        b->link.backoff_s = 1;
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
                    ev[i].text, b->link.backoff_s);
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
            if (!b->link.connected)
                break; /* a DISCONNECT before the CONNACK: the connect failure follows */
            if (ev[i].rc)
                b->link.st.broker_disconnects++;
            gw_warn(MQTT, "connection to %s lost (%s)", b->cfg->mqtt.uri, ev[i].text);
            connection_lost(b);
            break;
        case EV_PUB_OK:
            b->link.guard.acked = true;
            if (ev[i].id == UINT64_MAX)
                break;
            p = pending_by_id(b->pend, ev[i].id);
            if (!p)
                break; /* answered already (timed out) */
            b->link.st.acked++;
            stats_hist_add(&b->link.st.ack_latency, gw_now_ms() - p->started_ms);
            upstream_answer(b, p, p->ok_code);
            break;
        case EV_MESSAGE:
            down_message(b->down, ev[i].data);
            free(ev[i].data);
            break;
        case EV_DELIVERED:
            b->link.guard.acked = true;
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
                b->link.st.broker_refused++;
                gw_log_limited(GW_LOG_WARNING, MQTT, "publish refused by the broker (%s)",
                               ev[i].text);
            } else {
                gw_log_limited(GW_LOG_WARNING, MQTT, "publish failed (%s)", ev[i].text);
            }
            upstream_answer(b, p, ev[i].rc >= 0x80 ? 502 : 503);
            break;
        }
    }
    if (n)
        mqtt_trace_settle(b->mqtt);
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
            upstream_answer(b, p, rc == 0 ? p->ok_code : 503);
}

void bridge_tick(bridge_t *b)
{
    down_check_ready(b->down);
    mqtt_kick_due(b->mqtt);
    uint64_t now = gw_now_ms();
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
        mqtt_set_one_at_a_time(b->mqtt, false);
        gw_info(MQTT, "messages go at the full rate again");
        mqtt_disconnect(b->mqtt);
    }
    if (!b->link.connected && !b->link.connecting && !b->draining &&
        now >= b->link.reconnect_at_ms) {
        b->link.connecting = true;
        gw_info(MQTT, "connecting to %s", b->cfg->mqtt.uri);
        mqtt_connect(b->mqtt);
    }
}

int bridge_timeout_ms(const bridge_t *b)
{
    int kick = mqtt_kick_wait_ms(b->mqtt);
    if (kick >= 0 && kick < TICK_MS)
        return kick;
    if (pending_inflight(b->pend) || (!b->link.connected && !b->link.connecting))
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
    mqtt_shutdown(b->mqtt, timeout_ms);
    b->link.connected = false;
}
