/*
 * Device presence: the authenticated devices connected now, and their
 * retained online/offline documents on mqtt.presence_topic.
 *
 * An identity is present while it holds at least one live CoAP DTLS session
 * or MQTT listener connection. Its entry says the protocol, address and time
 * (UTC) of the first of them, and counts its requests (CoAP requests, and
 * MQTT packets from the device). Anonymous devices have no entry.
 *
 * When an identity's first session or connection begins, the document
 *   {"online": true, "protocol": "coap", "address": "[2001:db8::7]:53122",
 *    "since": "2026-12-07T10:00:00Z"}
 * is published (through the publish function: retained, QoS 1); when its
 * last one ends, the same with "online": false. At most one document per
 * identity goes per PRESENCE_INTERVAL_MS: a change within that window is held
 * back (counted as suppressed), and at its end the latest document goes if it
 * differs from the last one published, so the last state always ends up
 * published. presence_stop() publishes every device offline at once.
 *
 * Bounds: entries exist while an identity is connected, and for one
 * PRESENCE_INTERVAL_MS after the last document of an identity that left:
 * at most coap.max_sessions + mqtt_listener.max_connections identities
 * connected, plus those that left within that window.
 *
 * Everything here runs on the loop thread.
 */
#ifndef TANDEM_PRESENCE_H
#define TANDEM_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ev.h"
#include "stats.h"

/* The shortest time between two documents of one identity, ms. */
#define PRESENCE_INTERVAL_MS 1000

typedef struct presence presence_t;
/* One identity's entry: the handle its sessions and connections hold. */
typedef struct presence_dev presence_dev_t;

/* Publishes json on topic (retained, QoS 1); 0, or a negative errno code. */
typedef int presence_publish_fn(void *arg, const char *topic, const char *json, size_t len);

/*
 * topic is the presence topic with {gateway} already in place and {identity}
 * to fill in ("" publishes nothing; the registry is kept all the same); it is
 * copied. loop is borrowed.
 */
presence_t *presence_new(ev_loop_t *loop, const char *topic, presence_publish_fn *publish,
                         void *arg);
void presence_free(presence_t *p);

/*
 * A session or connection of identity began, from sa (protocol "coap" or
 * "mqtt"). Beginnings and ends are logged at info, at most 20 lines a second
 * all together. The handle to give presence_end(), or NULL (identity NULL or empty:
 * anonymous; out of memory).
 */
presence_dev_t *presence_begin(presence_t *p, const char *identity, const char *protocol,
                               const struct sockaddr *sa);
/* A request (CoAP) or a packet (MQTT) from the device; d may be NULL. */
void presence_request(presence_dev_t *d);
/* A session or connection ended, why (may be NULL); d may be NULL. */
void presence_end(presence_t *p, presence_dev_t *d, const char *why);

/*
 * A graceful stop: every connected device's "offline" goes now, whatever the
 * rate; nothing is published after.
 */
void presence_stop(presence_t *p);

/*
 * The connected devices: json, one line {"devices": [{"identity": ...,
 * "protocol": ..., "address": ..., "since": ..., "requests": N}, ...]};
 * otherwise a table with a header. malloc'd, NUL-terminated; NULL when out
 * of memory.
 */
char *presence_list(const presence_t *p, bool json, size_t *len);

/* The section "devices". */
typedef struct presence_stats {
    uint64_t online;              /* gauge: identities connected now */
    uint64_t presence_published;  /* documents handed to the broker connection */
    uint64_t presence_suppressed; /* changes held back by the rate limit */
    uint64_t presence_failed;     /* documents the broker connection refused (buffer full) */
} presence_stats_t;

extern const stats_section_t presence_section;
const presence_stats_t *presence_stats(const presence_t *p);

#endif
