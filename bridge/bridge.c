/*
 * The bridge's life and glue: it makes its parts and joins them (the up
 * direction in up.c, the broker connection in upstream.c, the down
 * direction in down.c, resources, sessions, pending answers, Block1), and
 * takes a reloaded configuration to each of them; libcoap's session events;
 * and the statistics, gathered from every part's counters.
 */
#include "bridge.h"

#include "tandem_build.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "clock.h"
#include "dtls.h"
#include "log.h"
#include "mapping.h"
#include "tls.h"

/* libcoap 4.3 has no context app data: the event handler finds the bridge here. */
static bridge_t *event_bridge;

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

/* presence_publish_fn: a presence document, retained, QoS 1, through the offline buffer. */
static int publish_presence(void *arg, const char *topic, const char *json, size_t len)
{
    bridge_t *b = arg;
    mqtt_message_t msg = { .topic = topic,
                           .payload = json,
                           .len = len,
                           .qos = 1,
                           .retain = true,
                           .content_type = "application/json",
                           .utf8 = true };
    int rc = upstream_publish(b, &msg, NULL);
    if (rc == 0)
        upstream_pump(b);
    return rc;
}

presence_t *bridge_presence(bridge_t *b)
{
    return b->presence;
}

void bridge_stop_presence(bridge_t *b)
{
    presence_stop(b->presence);
}

/* down_wait_fn: how long a device waits for values not subscribed yet. */
static int values_wait_s(void *arg)
{
    bridge_t *b = arg;
    return upstream_connected(b) ? 1 : bridge_retry_after_s(b);
}

bridge_t *bridge_new(const gw_config_t *cfg, coap_context_t *ctx, ev_loop_t *loop)
{
    bridge_t *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->cfg = cfg;
    b->ctx = ctx;
    b->loop = loop;
    b->up.maps = calloc(map_table_count(cfg->maps) + 1, sizeof(*b->up.maps));
    if (!b->up.maps)
        goto fail;
    b->store = mqtt_store_open(cfg->gateway.state_dir, 0, 0);
    if (!b->store) {
        gw_err(BRIDGE, "cannot keep the offline buffer in %s/offline (%s)", cfg->gateway.state_dir,
               strerror(errno));
        goto fail;
    }
    mqtt_store_set_durable(b->store, true); /* not connected yet */
    mqtt_store_stats_t st;
    mqtt_store_stats(b->store, &st);
    if (st.records)
        gw_info(MQTT, "%llu messages kept from before the restart will be delivered",
                (unsigned long long)st.records);
    if (upstream_init(b) < 0)
        goto fail;
    b->started_ms = gw_now_ms();
    b->b1 = b1_pool_new();
    if (!b->b1)
        goto fail;
    b->sessions = sessions_new(ctx, (size_t)cfg->coap.max_sessions, up_free_transfer, on_ready, b);
    if (!b->sessions)
        goto fail;
    b->presence = presence_new(loop, cfg->mqtt.presence_topic, publish_presence, b);
    if (!b->presence)
        goto fail;
    sessions_set_presence(b->sessions, b->presence);
    b->pend = pending_new((size_t)cfg->mqtt.max_inflight, b->sessions);
    if (!b->pend)
        goto fail;

    b->res = resources_new(ctx);
    if (!b->res)
        goto fail;
    b->down = down_new(cfg, ctx, b->res, &b->mqtt, b->sessions, values_wait_s, b);
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
    if (b->sessions)
        sessions_set_presence(b->sessions, NULL); /* nothing is published from here on */
    sessions_free(b->sessions);                   /* and their Block1 transfers */
    presence_free(b->presence);
    b1_pool_free(b->b1);
    down_free(b->down);
    resources_free(b->res);
    mqtt_client_free(b->mqtt);
    mqtt_store_close(b->store);
    free(b->up.maps);
    bridge_report_free(b->report);
    free(b);
}

void bridge_drain(bridge_t *b)
{
    b->draining = true;
}

void bridge_abandon(bridge_t *b)
{
    /*
     * With an offline buffer, what is still waiting is in it and is sent
     * again after a restart: written durably, it is answered 2.04. Without one
     * it gets 5.03 and the device sends it again.
     */
    bool kept = b->cfg->mqtt.offline_buffer > 0 && pending_inflight(b->pend) &&
                mqtt_store_set_durable(b->store, true) == 0;
    for (pending_slot_t *p = pending_next(b->pend, NULL); p; p = pending_next(b->pend, p))
        upstream_answer(b, p, kept && (p->seq || p->stored) ? p->ok_code : 503);
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

/* What a reload needs, allocated ahead (bridge_reload_prepare). */
struct bridge_next {
    const gw_config_t *cfg;    /* borrowed */
    struct up_map_stats *maps; /* the up path's counters, one per mapping of cfg (and one more) */
    size_t *index;             /* of each running mapping in cfg, or SIZE_MAX */
    down_next_t *down;
};

void bridge_next_free(bridge_next_t *n)
{
    if (!n)
        return;
    down_next_free(n->down);
    free(n->index);
    free(n->maps);
    free(n);
}

int bridge_reload_prepare(const bridge_t *b, const gw_config_t *next, bridge_next_t **out)
{
    bridge_next_t *n = calloc(1, sizeof(*n));
    *out = NULL;
    if (!n)
        return -ENOMEM;
    n->cfg = next;
    n->maps = calloc(map_table_count(next->maps) + 1, sizeof(*n->maps));
    n->index = calloc(map_table_count(b->cfg->maps) + 1, sizeof(*n->index));
    if (!n->maps || !n->index || down_reload_prepare(b->down, next, &n->down) < 0) {
        bridge_next_free(n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < map_table_count(b->cfg->maps); i++)
        n->index[i] = same_mapping(b->cfg, i, next);
    *out = n;
    return 0;
}

void bridge_reload_commit(bridge_t *b, bridge_next_t *n)
{
    const gw_config_t *next = n->cfg;
    down_reload(b->down, n->down, next, n->index, upstream_connected(b));
    n->down = NULL;
    up_remap(&b->up, n->maps, n->index, map_table_count(b->cfg->maps));
    n->maps = NULL;
    pending_remap(b->pend, n->index, map_table_count(b->cfg->maps));
    sessions_set_max(b->sessions, (size_t)next->coap.max_sessions);
    b->cfg = next;
    /* The MQTT client keeps its settings: none of them is reloadable (gateway/config_file.c). */
    bridge_next_free(n);
}

void bridge_count_mqtt(bridge_t *b, size_t map, enum bridge_mqtt_count what)
{
    if (map >= map_table_count(b->cfg->maps))
        return;
    struct up_map_stats *m = &b->up.maps[map];
    if (what == BRIDGE_MQTT_UP)
        m->up++;
    else if (what == BRIDGE_MQTT_DOWN)
        m->mqtt_down++;
    else
        m->refused++;
}

void bridge_publish_stats(bridge_t *b, const char *json, size_t len)
{
    if (!upstream_connected(b))
        return;
    mqtt_message_t msg = { .topic = b->cfg->mqtt.stats_topic,
                           .payload = json,
                           .len = len,
                           .qos = 0,
                           .content_type = "application/json",
                           .utf8 = true };
    mqtt_client_publish(b->mqtt, &msg, 0);
}
