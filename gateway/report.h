/*
 * The process's own statistics (doc/operating.md, Metrics): the gateway's name, version and
 * uptime, reloads, suppressed log lines, and the certificates it presents,
 * whose expiry is read at start and at each reload (never per render).
 */
#ifndef TANDEM_REPORT_H
#define TANDEM_REPORT_H

#include <stdbool.h>

#include "config.h"
#include "stats.h"

typedef struct gw_report gw_report_t;

/* Registers its sections in stats (borrowed; outlives the report). NULL when out of memory. */
gw_report_t *gw_report_new(stats_t *stats, const gw_config_t *cfg);
void gw_report_free(gw_report_t *r);

/*
 * Sections added after the bridge's, to keep the order of doc/operating.md's metrics: config, log,
 * the MQTT listener's (listener_sec over listener_obj, borrowed until the
 * report is freed) and certificates.
 */
int gw_report_add_tail(gw_report_t *r, const stats_section_t *listener_sec,
                       const void *listener_obj);

/* A reload happened (ok) or was refused; cfg is the configuration running now. */
void gw_report_reload(gw_report_t *r, const gw_config_t *cfg, bool ok);

#endif
