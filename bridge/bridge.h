/*
 * The bridge: CoAP requests in, MQTT publishes out (the "up" direction), the
 * broker connection's life, and the statistics. Everything here runs on the
 * loop thread, which owns libcoap.
 */
#ifndef TANDEM_BRIDGE_H
#define TANDEM_BRIDGE_H

#include <coap3/coap.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "ev.h"
#include "stats.h"

typedef struct bridge bridge_t;

/*
 * cfg, ctx and loop (where the MQTT client runs) are borrowed and must
 * outlive the bridge. Opens the offline buffer in gateway.state_dir.
 * Registers the request handlers and the session event handler on ctx.
 */
bridge_t *bridge_new(const gw_config_t *cfg, coap_context_t *ctx, ev_loop_t *loop);
void bridge_free(bridge_t *b);

/* Starts the broker connection. */
int bridge_start(bridge_t *b);

/*
 * Makes the readings put into the offline buffer since the last call durable
 * (one fsync round for all of them) and answers their devices.
 */
void bridge_commit(bridge_t *b);

/*
 * After each coap_io_process() (never from inside one): handshakes that
 * finished, sessions refused at coap.max_sessions.
 */
void bridge_after_io(bridge_t *b);

/* Expires publishes past publish_timeout, reconnects when it is time. */
void bridge_tick(bridge_t *b);

/* Milliseconds until bridge_tick has work, or -1 for none. */
int bridge_timeout_ms(const bridge_t *b);

/* Whether requests were answered since the last call (libcoap has work then). */
bool bridge_take_answered(bridge_t *b);

/* Publishes awaiting a broker acknowledgement. */
size_t bridge_inflight(const bridge_t *b);

/* Graceful stop: refuse new requests from now on (5.03). */
void bridge_drain(bridge_t *b);

/* Answers every publish still waiting with 5.03 (at the end of a stop). */
void bridge_abandon(bridge_t *b);

/* Publishes json (the statistics object) on mqtt.stats_topic, QoS 0, when connected. */
void bridge_publish_stats(bridge_t *b, const char *json, size_t len);

/*
 * Registers the bridge's sections (coap, mqtt, mappings, mqtt_in, down) in
 * stats, which must outlive the bridge or the next bridge_remove_stats().
 */
int bridge_add_stats(bridge_t *b, stats_t *stats);
void bridge_remove_stats(bridge_t *b, stats_t *stats);

/* What bridge_count_mqtt counts. */
enum bridge_mqtt_count { BRIDGE_MQTT_UP, BRIDGE_MQTT_DOWN, BRIDGE_MQTT_REFUSED };

/*
 * Counts a message of an MQTT device (the MQTT listener's) in the per-mapping
 * figures of the "mappings" section, beside the CoAP devices': a publish
 * relayed up, a delivery down, a refusal. map is the mapping's index in the
 * running table; an index out of range is ignored.
 */
void bridge_count_mqtt(bridge_t *b, size_t map, enum bridge_mqtt_count what);

/*
 * The registry of connected devices (common/presence.h), for the MQTT
 * listener's connections, `tandem devices` and the statistics; it lives as
 * long as the bridge.
 */
struct presence;
struct presence *bridge_presence(bridge_t *b);

/* A graceful stop: every connected device's presence goes "offline" (before bridge_shutdown). */
void bridge_stop_presence(bridge_t *b);

/* Says "offline" on the status topic and disconnects. */
void bridge_shutdown(bridge_t *b, int timeout_ms);

/* What a reload needs, made ahead so that taking it cannot fail. */
typedef struct bridge_next bridge_next_t;

/*
 * For a reload to next (borrowed until the commit or the free): 0 and *n,
 * or -ENOMEM with nothing changed.
 */
int bridge_reload_prepare(const bridge_t *b, const gw_config_t *next, bridge_next_t **n);

/*
 * Takes the reloaded configuration n was prepared for: mappings, counters,
 * held values and subscriptions follow it. It is borrowed from now on (and
 * the old one no longer used); it must have the running values of what takes
 * a restart (gw_config_keep_fixed). Cannot fail; n is taken.
 */
void bridge_reload_commit(bridge_t *b, bridge_next_t *n);

/* Frees n when the reload is not taken; NULL does nothing. */
void bridge_next_free(bridge_next_t *n);

#endif
