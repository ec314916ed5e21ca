/*
 * The process: the one event loop, signals, systemd readiness.
 */
#ifndef TANDEM_GATEWAY_H
#define TANDEM_GATEWAY_H

#include "config_file.h"
#include "dtls.h"

/* Exit statuses (tandem(8)). */
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

/* The user the packaged service runs as (deploy/tandem.service's User= and Group=). */
#define GW_SERVICE_USER "tandem"

/*
 * For `tandem check` run as root: opens each file the configuration names as
 * the service user (TANDEM_SERVICE_USER, by default GW_SERVICE_USER), and
 * tries the folders it writes in; what that user cannot do is an error naming
 * the setting. Says in one line when it cannot tell (not root, no such user).
 */
void gw_check_service_access(const gw_config_t *cfg, gw_errs_t *errs);

/*
 * Before the gateway starts: gateway.state_dir and the control socket's
 * folder exist, or are made; 0, or -ENOENT with an error naming the folder
 * and how to make it.
 */
int gw_check_folders(const gw_config_t *cfg, gw_errs_t *errs);

/*
 * Runs the gateway until SIGTERM or SIGINT. *cfg and *psk (may be NULL) stay
 * the caller's to free; a reload (SIGHUP) replaces them. Returns an exit
 * status.
 */
int gw_run(gw_config_t **cfg, dtls_psk_store_t **psk);

#endif
