/*
 * Loading a configuration with everything it points at, for the start, for
 * `tandem check` and for a reload.
 */
#include <stdio.h>
#include <time.h>

#include "dtls.h"
#include "gateway.h"
#include "log.h"
#include "tls.h"

/*
 * Checks what the configuration points at: certificates and keys match and
 * are in date, CA bundles load, the PSK file parses. Warnings go to the log.
 */
static dtls_psk_store_t *check_files(const gw_config_t *cfg, gw_errs_t *errs)
{
    char err[512];
    int days;
    dtls_psk_store_t *psk = NULL;
    const struct {
        const char *name, *cert, *key;
    } pairs[] = {
        { "coap.dtls.cert", cfg->coap.dtls.cert, cfg->coap.dtls.key },
        { "mqtt.cert", cfg->mqtt.cert, cfg->mqtt.key },
        { "mqtt_listener.cert", cfg->mqtt_listener.enabled ? cfg->mqtt_listener.cert : "",
          cfg->mqtt_listener.key },
    };
    const struct {
        const char *name, *path;
    } cas[] = { { "coap.dtls.ca", cfg->coap.dtls.ca },
                { "mqtt.ca", cfg->mqtt.ca },
                { "mqtt_listener.ca", cfg->mqtt_listener.enabled ? cfg->mqtt_listener.ca : "" } };

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (!*pairs[i].cert)
            continue;
        if (tls_cert_check(pairs[i].cert, pairs[i].key, &days, err, sizeof(err)) < 0)
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, pairs[i].name), pairs[i].name, "%s",
                        err);
        else if (days < TLS_EXPIRY_WARN_DAYS)
            gw_warn(CONFIG, "%s: %s expires in %d days", pairs[i].name, pairs[i].cert, days);
    }
    for (size_t i = 0; i < sizeof(cas) / sizeof(cas[0]); i++)
        if (*cas[i].path && tls_ca_check(cas[i].path, err, sizeof(err)) < 0)
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, cas[i].name), cas[i].name, "%s", err);
    const struct {
        const char *name, *path, *ca;
    } crls[] = { { "coap.dtls.crl", cfg->coap.dtls.crl, cfg->coap.dtls.ca },
                 { "mqtt_listener.crl", cfg->mqtt_listener.enabled ? cfg->mqtt_listener.crl : "",
                   cfg->mqtt_listener.ca } };
    for (size_t i = 0; i < sizeof(crls) / sizeof(crls[0]); i++) {
        time_t next;
        if (!*crls[i].path || !*crls[i].ca)
            continue;
        if (tls_crl_check(crls[i].path, crls[i].ca, &next, err, sizeof(err)) < 0)
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, crls[i].name), crls[i].name, "%s",
                        err);
        else if ((days = tls_days_left(next, time(NULL))) < TLS_CRL_WARN_DAYS)
            gw_warn(CONFIG, "%s: %s has its next update in %d days (re-sign it: tandem pki crl)",
                    crls[i].name, crls[i].path, days);
    }
    if (*cfg->coap.dtls.psk_file) {
        psk = dtls_psk_load(cfg->coap.dtls.psk_file, "coap.dtls.psk_file", errs);
        if (psk && dtls_psk_count(psk) == 0)
            gw_warn(CONFIG, "coap.dtls.psk_file: %s holds no identities", cfg->coap.dtls.psk_file);
    }
    return psk;
}

gw_config_t *gw_load(const char *path, const gw_config_t *running, dtls_psk_store_t **psk,
                     gw_errs_t *errs)
{
    unsigned before = errs->count;
    gw_config_t *cfg = gw_config_load(path, errs);
    *psk = NULL;
    if (!cfg)
        return NULL;
    /* At a reload, the files checked are those the process would use (fixed settings stay). */
    if (running)
        gw_config_keep_fixed(cfg, running);
    *psk = check_files(cfg, errs);
    if (errs->count != before) {
        dtls_psk_free(*psk);
        *psk = NULL;
        gw_config_free(cfg);
        return NULL;
    }
    return cfg;
}
