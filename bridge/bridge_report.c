/*
 * The bridge's statistics (doc/operating.md, Metrics) as tables for the registry (common/stats.h).
 * Its figures live in several parts (up, upstream, down, sessions, Block1,
 * the MQTT client and its store), and some are sums over them (requests and
 * answers of both directions), so each section's prepare() gathers them into
 * a snapshot that the tables describe, just before a render.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "mapping.h"

struct map_snap {
    uint64_t up, down, refused;
};

struct snap {
    /* coap */
    uint64_t sessions, sessions_evicted, sessions_refused, observers, observers_refused,
        peers_remembered, dtls_handshakes_ok, dtls_handshakes_failed, requests, duplicates,
        bytes_in, bytes_out, block1_bytes, block1_refused, notifications;
    uint64_t responses[256]; /* by class * 32 + detail */
    stats_hist_t answer_latency;
    /* mqtt */
    bool connected;
    uint64_t reconnects, published, acked, received, timeouts, inflight, refused,
        broker_disconnects, unpublishable, stored_refused, set_aside, offline_buffered,
        stored_records, stored_bytes;
    uint64_t buffer_added, buffer_full, buffer_failures, buffer_drained, buffer_refused,
        buffer_imported, buffer_syncs;
    uint64_t connect_attempts, connect_failures, connects_refused, connection_losses,
        broker_malformed, writes, client_waiting;
    stats_hist_t ack_latency;
    /* mqtt_in */
    uint64_t dropped_too_large;
    /* down */
    uint64_t resources, value_bytes, down_received, evicted, dropped_full, dropped_bad_topic,
        down_notifications, confirmations, subscriptions_failed, observe_refused;
};

struct bridge_report {
    const bridge_t *b; /* the bridge this reports on */
    struct snap s;
    struct map_snap *maps; /* owned, nmaps of them */
    size_t nmaps;
};

static void gather(const void *obj)
{
    struct bridge_report *r = (struct bridge_report *)((const struct bridge_report *)obj);
    const bridge_t *b = r->b;
    struct snap *s = &r->s;
    const struct up_stats *us = &b->up.st;
    const struct upstream_stats *ls = &b->link.st;
    const down_stats_t *ds = down_stats(b->down);
    const block1_stats_t *b1 = b1_pool_stats(b->b1);
    struct sessions_stats ss;

    sessions_stats(b->sessions, &ss);
    s->sessions = ss.sessions;
    s->sessions_evicted = ss.evicted;
    s->sessions_refused = ss.refused;
    s->observers = ss.observers;
    s->observers_refused = ss.observers_refused;
    s->peers_remembered = ss.peers;
    s->dtls_handshakes_ok = ss.handshakes_ok;
    s->dtls_handshakes_failed = ss.handshakes_failed;
    s->requests = us->requests + ds->requests;
    s->duplicates = us->duplicates;
    s->bytes_in = us->bytes_in;
    s->bytes_out = ds->bytes_out;
    s->block1_bytes = b1->bytes;
    s->block1_refused = b1->refused;
    s->notifications = ds->notifications;
    for (int i = 0; i < 256; i++)
        s->responses[i] = us->responses.n[i] + ls->responses.n[i] + ds->responses.n[i];
    s->answer_latency = ls->answer_latency;

    s->connected = upstream_connected(b);
    s->reconnects = ls->reconnects;
    s->published = us->published;
    s->acked = ls->acked;
    s->received = ds->received;
    s->timeouts = ls->timeouts;
    s->inflight = pending_inflight(b->pend);
    s->refused = ls->broker_refused;
    s->broker_disconnects = ls->broker_disconnects;
    s->unpublishable = us->unpublishable;
    s->set_aside = ls->broker_dropped_for;
    mqtt_store_stats_t st;
    mqtt_store_stats(b->store, &st);
    s->stored_refused = st.damaged;
    s->offline_buffered = st.records; /* what the buffer holds now */
    s->stored_records = st.records;
    s->stored_bytes = st.bytes;
    s->buffer_added = us->offline_buffered + ls->kept_offline;
    s->buffer_full = us->buffer_full;
    s->buffer_failures = ls->store_failures;
    s->buffer_drained = ls->drained;
    s->buffer_refused = st.set_aside;
    s->buffer_imported = st.imported;
    s->buffer_syncs = st.syncs;
    if (b->mqtt) {
        /* Over every client made (upstream.c's guard may make one again). */
        const mqtt_client_stats_t *cs = mqtt_client_stats(b->mqtt);
        s->connect_attempts = ls->client_base.attempts + cs->attempts;
        s->connect_failures = ls->client_base.failed_attempts + cs->failed_attempts;
        s->connects_refused = ls->client_base.refused_connects + cs->refused_connects;
        s->connection_losses = ls->client_base.losses + cs->losses;
        s->broker_malformed = ls->client_base.malformed + cs->malformed;
        s->writes = ls->client_base.writes + cs->writes;
        s->client_waiting = mqtt_client_unacked(b->mqtt);
    }
    s->ack_latency = ls->ack_latency;

    s->dropped_too_large = ds->dropped_too_large;

    s->resources = down_resources(b->down);
    s->value_bytes = down_value_bytes(b->down);
    s->down_received = ds->received;
    s->evicted = ds->evicted;
    s->dropped_full = ds->dropped_full;
    s->dropped_bad_topic = ds->dropped_bad_topic;
    s->down_notifications = ds->notifications;
    s->confirmations = ds->confirmations;
    s->subscriptions_failed = ds->subscriptions_failed;
    s->observe_refused = ds->observe_refused;
}

/* The per-mapping counters, for the mappings running now (a reload changes them). */
static void gather_maps(const void *obj)
{
    struct bridge_report *r = (struct bridge_report *)((const struct bridge_report *)obj);
    const bridge_t *b = r->b;
    size_t n = map_table_count(b->cfg->maps);
    if (n != r->nmaps) {
        struct map_snap *m = calloc(n ? n : 1, sizeof(*m));
        if (!m) {
            r->nmaps = 0; /* shown without mappings rather than with stale ones */
            return;
        }
        free(r->maps);
        r->maps = m;
        r->nmaps = n;
    }
    for (size_t i = 0; i < n; i++) {
        const down_map_stats_t *dm = down_map_stats(b->down, i);
        r->maps[i].up = b->up.maps[i].up;
        r->maps[i].down = dm->down + b->up.maps[i].mqtt_down;
        r->maps[i].refused = b->up.maps[i].refused + dm->refused;
    }
}

static void code_label(size_t i, char *buf, size_t len)
{
    snprintf(buf, len, "%zu.%02zu", i / 32, i % 32);
}

#define U64(json, prom_, kind_, help_)                                                             \
    {                                                                                              \
        .name = #json, .prom = prom_, .help = help_, .kind = STATS_##kind_, .type = STATS_U64,     \
        .offset = offsetof(struct bridge_report, s.json)                                           \
    }
#define BYTES(json, prom_, kind_, help_)                                                           \
    {                                                                                              \
        .name = #json, .prom = prom_, .unit = "bytes", .help = help_, .kind = STATS_##kind_,       \
        .type = STATS_U64, .offset = offsetof(struct bridge_report, s.json)                        \
    }

static const stats_field_t coap_fields[] = {
    U64(sessions, NULL, GAUGE, "CoAP sessions (DTLS and plain) held now"),
    U64(sessions_evicted, NULL, COUNTER, "Sessions evicted at coap.max_sessions"),
    U64(sessions_refused, NULL, COUNTER, "Sessions refused at coap.max_sessions"),
    U64(observers, NULL, GAUGE, "Observe registrations held now"),
    U64(observers_refused, NULL, COUNTER, "Observe registrations refused (per-session bound)"),
    U64(peers_remembered, NULL, GAUGE, "Peers whose recent Message IDs are kept for duplicates"),
    U64(dtls_handshakes_ok, NULL, COUNTER, "DTLS handshakes that authenticated a device"),
    U64(dtls_handshakes_failed, NULL, COUNTER, "DTLS handshakes refused or failed"),
    U64(requests, NULL, COUNTER, "CoAP requests handled (both directions)"),
    U64(duplicates, NULL, COUNTER, "Retransmitted requests answered from duplicate detection"),
    BYTES(bytes_in, "received_payload", COUNTER, "Payload bytes of the requests handled"),
    BYTES(bytes_out, "sent_payload", COUNTER, "Payload bytes of answers and notifications"),
    BYTES(block1_bytes, "block1_buffered", GAUGE, "Bytes held by Block1 transfers in progress"),
    U64(block1_refused, NULL, COUNTER, "Block1 transfers refused: buffers at their bound (5.03)"),
    U64(notifications, NULL, COUNTER, "Messages that notified observers"),
    { .name = "responses",
      .help = "CoAP answers by response code",
      .kind = STATS_COUNTER,
      .type = STATS_ARRAY,
      .offset = offsetof(struct bridge_report, s.responses),
      .n = 256,
      .label = "code",
      .label_of = code_label },
    { .name = "answer_latency_ms",
      .prom = "answer_latency",
      .unit = "seconds",
      .help = "Time from a request to its answer, for answers that waited for the broker",
      .kind = STATS_HISTOGRAM,
      .type = STATS_HIST,
      .offset = offsetof(struct bridge_report, s.answer_latency) },
};

static const stats_field_t mqtt_fields[] = {
    { .name = "connected",
      .help = "1 while connected to the broker",
      .kind = STATS_GAUGE,
      .type = STATS_BOOL,
      .offset = offsetof(struct bridge_report, s.connected) },
    U64(reconnects, NULL, COUNTER, "Connections to the broker after the first"),
    U64(published, NULL, COUNTER, "Publishes handed to the MQTT client while connected"),
    U64(acked, NULL, COUNTER, "Publishes the broker acknowledged"),
    U64(received, NULL, COUNTER, "Messages received from the broker"),
    U64(timeouts, NULL, COUNTER, "Publishes not acknowledged within mqtt.publish_timeout (5.04)"),
    U64(inflight, NULL, GAUGE, "Publishes waiting for the broker's acknowledgement"),
    U64(refused, NULL, COUNTER, "Publishes the broker refused with a reason code (5.02)"),
    U64(broker_disconnects, NULL, COUNTER, "DISCONNECT packets from the broker"),
    U64(unpublishable, NULL, COUNTER, "Messages the broker would refuse, never sent (5.00)"),
    U64(stored_refused, NULL, COUNTER, "Offline store records removed at start as damaged"),
    U64(set_aside, NULL, COUNTER, "Messages set aside: the broker dropped the connection for them"),
    U64(offline_buffered, NULL, GAUGE, "Messages in the offline buffer now"),
    U64(stored_records, NULL, GAUGE, "Messages in the offline store now"),
    BYTES(stored_bytes, "stored", GAUGE, "Size of the offline store now"),
    U64(buffer_added, NULL, COUNTER,
        "Publishes put into the offline buffer while disconnected, or kept there at a loss"),
    U64(buffer_full, NULL, COUNTER, "Publishes refused: the offline buffer was full (5.03)"),
    U64(buffer_failures, NULL, COUNTER, "Offline buffer writes that failed (5.03)"),
    U64(buffer_drained, NULL, COUNTER, "Offline buffer records handed to the broker after waiting"),
    U64(buffer_refused, NULL, COUNTER, "Offline buffer records the broker refused, set aside"),
    U64(buffer_imported, NULL, COUNTER, "Records imported from the earlier Paho store"),
    U64(buffer_syncs, NULL, COUNTER, "fsync calls of the offline buffer"),
    U64(connect_attempts, NULL, COUNTER, "Connection attempts to the broker"),
    U64(connect_failures, NULL, COUNTER, "Connection attempts that got no CONNACK"),
    U64(connects_refused, NULL, COUNTER, "CONNACKs that refused the connection"),
    U64(connection_losses, NULL, COUNTER, "Connections lost after their CONNACK"),
    U64(broker_malformed, NULL, COUNTER, "Connections closed for what the broker sent"),
    U64(writes, NULL, COUNTER, "Writes to the broker connection (each turn's packets in one)"),
    U64(client_waiting, NULL, GAUGE,
        "Publishes in the MQTT client: unacknowledged or waiting for the broker's window"),
    { .name = "ack_latency_ms",
      .prom = "ack_latency",
      .unit = "seconds",
      .help = "Time from a request to the broker's acknowledgement of its publish",
      .kind = STATS_HISTOGRAM,
      .type = STATS_HIST,
      .offset = offsetof(struct bridge_report, s.ack_latency) },
};

static const stats_field_t mqtt_in_fields[] = {
    U64(dropped_too_large, NULL, COUNTER, "Broker messages dropped: larger than coap.max_payload"),
};

#define DOWN(json, field, kind_, help_)                                                            \
    {                                                                                              \
        .name = #json, .help = help_, .kind = STATS_##kind_, .type = STATS_U64,                    \
        .offset = offsetof(struct bridge_report, s.field)                                          \
    }
static const stats_field_t down_fields[] = {
    DOWN(resources, resources, GAUGE, "Values held for devices to GET or observe"),
    { .name = "value_bytes",
      .prom = "values",
      .unit = "bytes",
      .help = "Bytes of the values held",
      .kind = STATS_GAUGE,
      .type = STATS_U64,
      .offset = offsetof(struct bridge_report, s.value_bytes) },
    DOWN(received, down_received, COUNTER, "Broker messages taken as values"),
    DOWN(evicted, evicted, COUNTER, "Values dropped for room, or gone at a reload"),
    DOWN(dropped_full, dropped_full, COUNTER, "Messages dropped: no room for their value"),
    DOWN(dropped_bad_topic, dropped_bad_topic, COUNTER, "Messages on a topic no mapping matches"),
    DOWN(notifications, down_notifications, COUNTER, "Values that notified observers"),
    DOWN(confirmations, confirmations, COUNTER, "Confirmable notifications to silent observers"),
    DOWN(subscriptions_failed, subscriptions_failed, COUNTER, "Subscriptions the broker refused"),
    DOWN(observe_refused, observe_refused, COUNTER,
         "Observe registrations refused (5.03): coap.max_resources reached, every resource "
         "observed"),
};

#define MAP(f, help_)                                                                              \
    {                                                                                              \
        .name = #f, .help = help_, .kind = STATS_COUNTER, .type = STATS_U64,                       \
        .offset = offsetof(struct map_snap, f)                                                     \
    }
static const stats_field_t map_fields[] = {
    MAP(up, "CoAP requests answered with success and MQTT device publishes relayed"),
    MAP(down, "Values stored for CoAP devices and messages delivered to MQTT devices"),
    MAP(refused, "CoAP requests and MQTT device publishes and filters refused"),
};

static size_t map_count(const void *obj)
{
    return ((const struct bridge_report *)obj)->nmaps;
}

static const void *map_instance(const void *obj, size_t i, const char **name)
{
    const struct bridge_report *r = obj;
    *name = map_entry_name(map_table_get(r->b->cfg->maps, i));
    return &r->maps[i];
}

#define N(a) (sizeof(a) / sizeof((a)[0]))
static const stats_section_t sections[] = {
    { .json = "coap",
      .prom = "coap",
      .fields = coap_fields,
      .nfields = N(coap_fields),
      .prepare = gather },
    { .json = "mqtt",
      .prom = "mqtt",
      .fields = mqtt_fields,
      .nfields = N(mqtt_fields),
      .prepare = gather },
    { .json = "mappings",
      .prom = "mapping",
      .fields = map_fields,
      .nfields = N(map_fields),
      .label = "mapping",
      .count = map_count,
      .instance = map_instance,
      .prepare = gather_maps },
    { .json = "mqtt_in",
      .prom = "mqtt_in",
      .fields = mqtt_in_fields,
      .nfields = N(mqtt_in_fields),
      .prepare = gather },
    { .json = "down",
      .prom = "down",
      .fields = down_fields,
      .nfields = N(down_fields),
      .prepare = gather },
};

int bridge_add_stats(bridge_t *b, stats_t *stats)
{
    if (!b->report) {
        b->report = calloc(1, sizeof(*b->report));
        if (!b->report)
            return -1;
        b->report->b = b;
    }
    for (size_t i = 0; i < N(sections); i++)
        if (stats_add(stats, &sections[i], b->report) < 0)
            return -1;
    return 0;
}

void bridge_remove_stats(bridge_t *b, stats_t *stats)
{
    if (!b || !b->report)
        return;
    for (size_t i = 0; i < N(sections); i++)
        stats_remove(stats, &sections[i], b->report);
}

void bridge_report_free(struct bridge_report *r)
{
    if (!r)
        return;
    free(r->maps);
    free(r);
}
