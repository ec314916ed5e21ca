/*
 * The process: the one event loop, signals, systemd readiness.
 */
#ifndef TANDEM_GATEWAY_H
#define TANDEM_GATEWAY_H

#include "config.h"
#include "dtls.h"

/* Exit statuses (SPEC §1). */
enum { GW_EXIT_OK = 0, GW_EXIT_CONFIG = 1, GW_EXIT_USAGE = 2, GW_EXIT_RUNTIME = 3 };

/*
 * Runs the gateway until SIGTERM or SIGINT. cfg and psk (may be NULL) are
 * borrowed. Returns an exit status.
 */
int gw_run(const gw_config_t *cfg, const dtls_psk_store_t *psk);

#endif
