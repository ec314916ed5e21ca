#include "report.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "tandem_build.h"
#include "tls.h"

/* The certificates Tandem presents, by the setting that names them. */
static const char *const cert_settings[] = { "coap.dtls.cert", "mqtt.cert", "mqtt_listener.cert",
                                             "coap.dtls.crl", "mqtt_listener.crl" };
/* The last ones are CRLs: their "expiry" is their next update. */
#define FIRST_CRL 3
#define NCERTS (sizeof(cert_settings) / sizeof(cert_settings[0]))

struct cert {
    const char *setting;
    time_t not_after; /* 0: none configured, or unreadable */
};

struct gw_report {
    stats_t *stats; /* borrowed */
    char *id;       /* owned copy of gateway.id */
    const char *version;
    uint64_t started_ms;
    uint64_t reloads, reload_failures;
    const stats_section_t *listener_sec; /* the MQTT listener's section, borrowed */
    const void *listener_obj;
    struct cert certs[NCERTS];
    size_t ncerts;
};

static double uptime_s(const void *obj)
{
    const gw_report_t *r = obj;
    return (double)((gw_now_ms() - r->started_ms) / 1000);
}

static double log_suppressed(const void *obj)
{
    (void)obj;
    return (double)gw_log_suppressed();
}

static double days_left(const void *obj)
{
    const struct cert *c = obj;
    return c->not_after ? tls_days_left(c->not_after, time(NULL)) : NAN;
}

static const stats_field_t top_fields[] = {
    { .name = "gateway",
      .help = "The gateway's gateway.id",
      .type = STATS_STR,
      .offset = offsetof(gw_report_t, id) },
    { .name = "version",
      .help = "Tandem's version",
      .type = STATS_STR,
      .offset = offsetof(gw_report_t, version) },
    { .name = "uptime_s",
      .prom = "uptime",
      .unit = "seconds",
      .help = "Time since the start",
      .kind = STATS_GAUGE,
      .type = STATS_FN,
      .get = uptime_s },
};
static const stats_section_t top_section = { .fields = top_fields, .nfields = 3 };

static const stats_field_t config_fields[] = {
    { .name = "reloads",
      .help = "Reloads (SIGHUP) that took effect",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(gw_report_t, reloads) },
    { .name = "reload_failures",
      .help = "Reloads refused: the running configuration stayed",
      .kind = STATS_COUNTER,
      .type = STATS_U64,
      .offset = offsetof(gw_report_t, reload_failures) },
};
static const stats_section_t config_section = {
    .json = "config", .prom = "config", .fields = config_fields, .nfields = 2
};

static const stats_field_t log_fields[] = {
    { .name = "suppressed",
      .help = "Log lines held back by the rate limit on what peers cause",
      .kind = STATS_COUNTER,
      .type = STATS_FN,
      .get = log_suppressed },
};
static const stats_section_t log_section = {
    .json = "log", .prom = "log", .fields = log_fields, .nfields = 1
};

static const stats_field_t cert_fields[] = {
    { .name = "days_left",
      .prom = "expiry",
      .unit = "seconds",
      .scale = 86400,
      .help = "Time until the certificate expires, or the CRL's next update (whole days; "
              "negative once past)",
      .kind = STATS_GAUGE,
      .type = STATS_FN,
      .get = days_left },
};

static size_t cert_count(const void *obj)
{
    return ((const gw_report_t *)obj)->ncerts;
}

static const void *cert_instance(const void *obj, size_t i, const char **name)
{
    const struct cert *c = &((const gw_report_t *)obj)->certs[i];
    *name = c->setting;
    return c;
}

static const stats_section_t cert_section = { .json = "certificates",
                                              .prom = "certificate",
                                              .fields = cert_fields,
                                              .nfields = 1,
                                              .label = "certificate",
                                              .count = cert_count,
                                              .instance = cert_instance };

/* Reads when each configured certificate expires: at start and at each reload. */
static void read_certs(gw_report_t *r, const gw_config_t *cfg)
{
    const char *paths[NCERTS] = { cfg->coap.dtls.cert, cfg->mqtt.cert,
                                  cfg->mqtt_listener.enabled ? cfg->mqtt_listener.cert : "",
                                  cfg->coap.dtls.crl,
                                  cfg->mqtt_listener.enabled ? cfg->mqtt_listener.crl : "" };
    r->ncerts = 0;
    for (size_t i = 0; i < NCERTS; i++) {
        if (!paths[i] || !*paths[i])
            continue;
        struct cert *c = &r->certs[r->ncerts++];
        c->setting = cert_settings[i];
        if ((i < FIRST_CRL ? tls_cert_expiry(paths[i], &c->not_after)
                           : tls_crl_next_update(paths[i], &c->not_after)) < 0)
            c->not_after = 0;
    }
}

static char *set_id(gw_report_t *r, const char *id)
{
    char *copy = strdup(id);
    if (copy) {
        free(r->id);
        r->id = copy;
    }
    return copy;
}

gw_report_t *gw_report_new(stats_t *stats, const gw_config_t *cfg)
{
    gw_report_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->stats = stats;
    r->version = TANDEM_VERSION;
    r->started_ms = gw_now_ms();
    if (!set_id(r, cfg->gateway.id) || stats_add(stats, &top_section, r) < 0) {
        gw_report_free(r);
        return NULL;
    }
    read_certs(r, cfg);
    return r;
}

int gw_report_add_tail(gw_report_t *r, const stats_section_t *listener_sec,
                       const void *listener_obj)
{
    r->listener_sec = listener_sec;
    r->listener_obj = listener_obj;
    if (stats_add(r->stats, &config_section, r) < 0 || stats_add(r->stats, &log_section, r) < 0 ||
        stats_add(r->stats, listener_sec, listener_obj) < 0 ||
        stats_add(r->stats, &cert_section, r) < 0)
        return -1;
    return 0;
}

void gw_report_free(gw_report_t *r)
{
    if (!r)
        return;
    stats_remove(r->stats, &top_section, r);
    stats_remove(r->stats, &config_section, r);
    stats_remove(r->stats, &log_section, r);
    if (r->listener_sec)
        stats_remove(r->stats, r->listener_sec, r->listener_obj);
    stats_remove(r->stats, &cert_section, r);
    free(r->id);
    free(r);
}

void gw_report_reload(gw_report_t *r, const gw_config_t *cfg, bool ok)
{
    if (!ok) {
        r->reload_failures++;
        return;
    }
    r->reloads++;
    set_id(r, cfg->gateway.id);
    read_certs(r, cfg);
}
