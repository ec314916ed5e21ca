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

/* Bytes of arrived messages the inbox holds at most. */
#define INBOX_BYTES (16u << 20)
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

/* down_wait_fn: how long a device waits for values not subscribed yet. */
static int values_wait_s(void *arg)
{
    bridge_t *b = arg;
    return upstream_connected(b) ? 1 : bridge_retry_after_s(b);
}

bridge_t *bridge_new(const gw_config_t *cfg, coap_context_t *ctx)
{
    bridge_t *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->cfg = cfg;
    b->ctx = ctx;
    b->up.maps = calloc(map_table_count(cfg->maps) + 1, sizeof(*b->up.maps));
    /* Room for every acknowledgement in flight, connection news and messages. */
    b->inbox = inbox_new((size_t)cfg->mqtt.max_inflight + 4096, INBOX_BYTES);
    if (!b->up.maps || !b->inbox)
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
    upstream_init(&b->link);
    b->started_ms = gw_now_ms();
    b->b1 = b1_pool_new();
    if (!b->b1)
        goto fail;
    b->sessions = sessions_new(ctx, (size_t)cfg->coap.max_sessions, up_free_transfer, on_ready, b);
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
    free(b->up.maps);
    free(b);
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
        upstream_answer(b, p, kept ? p->ok_code : 503);
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
    struct up_map_stats *maps = calloc(n + 1, sizeof(*maps));
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
    for (size_t i = 0; i < map_table_count(b->cfg->maps); i++)
        index[i] = same_mapping(b->cfg, i, next);
    if (down_reload(b->down, next, index, upstream_connected(b)) < 0) {
        free(index);
        free(maps);
        gw_err(GATEWAY, "reload: out of memory; the old mappings stay");
        return;
    }
    up_remap(&b->up, maps, index, map_table_count(b->cfg->maps));
    pending_remap(b->pend, index, map_table_count(b->cfg->maps));
    free(index);
    sessions_set_max(b->sessions, (size_t)next->coap.max_sessions);
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

    if (!upstream_connected(b) || !(f = open_memstream(&json, &len)))
        return;
    bridge_stats_json(b, f);
    fclose(f);
    mqtt_msg_t msg = {.topic = b->cfg->mqtt.stats_topic, .payload = json, .len = len ? len - 1 : 0,
                      .qos = 0, .content_type = "application/json", .utf8 = true};
    mqtt_publish(b->mqtt, &msg, 0);
    free(json);
}

static uint64_t percentile(const struct upstream_stats *ls, double q)
{
    uint64_t total = 0, seen = 0;
    for (size_t i = 0; i < 1024; i++)
        total += ls->lat_ms[i];
    if (!total)
        return 0;
    for (size_t i = 0; i < 1024; i++) {
        seen += ls->lat_ms[i];
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
    const struct up_stats *us = &b->up.st;
    const struct upstream_stats *ls = &b->link.st;
    const down_stats_t *ds = down_stats(b->down);
    const block1_stats_t *b1 = b1_pool_stats(b->b1);
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
            (unsigned long long)(us->requests + ds->requests), (unsigned long long)us->duplicates,
            (unsigned long long)us->bytes_in, b1->bytes, (unsigned long long)b1->refused, (unsigned long long)ds->notifications);
    bool first = true;
    for (int i = 0; i < 256; i++) {
        uint64_t n = us->responses.n[i] + ls->responses.n[i] + ds->responses.n[i];
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
            upstream_connected(b) ? "true" : "false", (unsigned long long)ls->reconnects,
            (unsigned long long)us->published, (unsigned long long)ls->acked,
            (unsigned long long)ds->received, (unsigned long long)ls->timeouts,
            pending_inflight(b->pend),
            (unsigned long long)inbox_dropped(b->inbox), (unsigned long long)ls->broker_refused,
            (unsigned long long)ls->broker_disconnects, (unsigned long long)us->unpublishable,
            persist_refused(b->persist), (unsigned long long)ls->broker_dropped_for,
            (unsigned long long)(us->offline_buffered + ls->kept_offline), persist_records(b->persist),
            (unsigned long long)persist_bytes(b->persist), (unsigned long long)percentile(ls, 0.5),
            (unsigned long long)percentile(ls, 0.99));
    for (size_t i = 0; i < map_table_count(b->cfg->maps); i++) {
        if (i)
            fputc(',', out);
        json_str(out, map_entry_name(map_table_get(b->cfg->maps, i)));
        const down_map_stats_t *dm = down_map_stats(b->down, i);
        fprintf(out, ":{\"up\":%llu,\"down\":%llu,\"refused\":%llu}",
                (unsigned long long)b->up.maps[i].up, (unsigned long long)dm->down,
                (unsigned long long)(b->up.maps[i].refused + dm->refused));
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
