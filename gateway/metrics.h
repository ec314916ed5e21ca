/*
 * The metrics endpoint (metrics.listen): GET /metrics answers the statistics
 * in the Prometheus text format (version 0.0.4). Other paths get 404, other
 * methods 405. libmicrohttpd serves it without a thread of its own: its epoll
 * descriptor is registered with the loop, and a timer follows the deadline it
 * asks for.
 *
 * Bounds: GW_METRICS_CONNECTIONS connections at once, at most
 * GW_METRICS_PER_ADDRESS of them from one address (more are closed at once);
 * when all are taken, the oldest one goes for the new one. A request must be
 * in and its answer out within GW_METRICS_REQUEST_MS of the connection (or of
 * the previous answer on the same connection), whatever the client trickles
 * meanwhile; a connection past that is closed. Requests are answered in the
 * loop's thread, one at a time.
 */
#ifndef TANDEM_METRICS_H
#define TANDEM_METRICS_H

#include <stdint.h>

#include "ev.h"
#include "stats.h"

#define GW_METRICS_CONNECTIONS 16
#define GW_METRICS_PER_ADDRESS 4
#define GW_METRICS_REQUEST_MS 5000
/* Without traffic, libmicrohttpd closes a connection after this, s. */
#define GW_METRICS_TIMEOUT_S 5

typedef struct gw_metrics gw_metrics_t;

/*
 * Listens at listen ("IPv4:PORT" or "[IPv6]:PORT", as gw_listen_parse()
 * reads it) and answers from stats. NULL when that fails, with the reason
 * logged (the caller exits with status 3). loop and stats are borrowed and
 * must outlive the endpoint.
 */
gw_metrics_t *gw_metrics_new(ev_loop_t *loop, const char *listen, const stats_t *stats);
/* Closes the connections and the listener. */
void gw_metrics_free(gw_metrics_t *m);

typedef struct gw_metrics_stats {
    uint64_t requests;            /* HTTP requests, whatever they asked */
    uint64_t not_found;           /* answered 404 */
    uint64_t not_allowed;         /* answered 405 */
    uint64_t refused_per_address; /* closed at once: GW_METRICS_PER_ADDRESS from its address */
    uint64_t dropped_for_new;     /* the oldest connection, when all were taken */
    uint64_t dropped_deadline;    /* no request and answer within GW_METRICS_REQUEST_MS */
} gw_metrics_stats_t;

/* The counters, for the caller to add to the registry with gw_metrics_section. */
const gw_metrics_stats_t *gw_metrics_stats(const gw_metrics_t *m);
/* The statistics section "metrics", for a gw_metrics_stats_t. */
extern const stats_section_t gw_metrics_section;

#endif
