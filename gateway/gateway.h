/*
 * The process: the one event loop, signals, systemd readiness.
 */
#ifndef TANDEM_GATEWAY_H
#define TANDEM_GATEWAY_H

#include "config_file.h"
#include "dtls.h"

/* Exit statuses (SPEC §1). */
enum { GW_EXIT_OK = 0, GW_EXIT_CONFIG = 1, GW_EXIT_USAGE = 2, GW_EXIT_RUNTIME = 3 };

/*
 * Loads path and checks the files it names (certificates, keys, PSK file).
 * For a reload, running is the running configuration: the settings that take
 * a restart keep its values (gw_config_keep_fixed) before the files are
 * checked; NULL at the start. NULL with errs filled when anything is wrong;
 * *psk is NULL without a psk_file.
 */
gw_config_t *gw_load(const char *path, const gw_config_t *running, dtls_psk_store_t **psk,
                     gw_errs_t *errs);

/*
 * Runs the gateway until SIGTERM or SIGINT. *cfg and *psk (may be NULL) stay
 * the caller's to free; a reload (SIGHUP) replaces them. Returns an exit
 * status.
 */
int gw_run(gw_config_t **cfg, dtls_psk_store_t **psk);

#endif
