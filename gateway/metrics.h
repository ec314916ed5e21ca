/*
 * The metrics endpoint (metrics.listen): GET /metrics answers the statistics
 * in the Prometheus text format (version 0.0.4). Other paths get 404, other
 * methods 405. libmicrohttpd serves it without a thread of its own: its epoll
 * descriptor is registered with the loop, and a timer follows the deadline it
 * asks for.
 *
 * Bounds: GW_METRICS_CONNECTIONS connections at once (more are closed at
 * once), each closed after GW_METRICS_TIMEOUT_S seconds without traffic;
 * requests are answered in the loop's thread, one at a time.
 */
#ifndef TANDEM_METRICS_H
#define TANDEM_METRICS_H

#include <stdint.h>

#include "ev.h"
#include "stats.h"

#define GW_METRICS_CONNECTIONS 16
#define GW_METRICS_TIMEOUT_S 10

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
    uint64_t requests;    /* HTTP requests, whatever they asked */
    uint64_t not_found;   /* answered 404 */
    uint64_t not_allowed; /* answered 405 */
} gw_metrics_stats_t;

/* The counters, for the caller to add to the registry with gw_metrics_section. */
const gw_metrics_stats_t *gw_metrics_stats(const gw_metrics_t *m);
/* The statistics section "metrics", for a gw_metrics_stats_t. */
extern const stats_section_t gw_metrics_section;

#endif
