/*
 * The configuration file: one schema table, two validation passes (each
 * setting, then the rules between settings), errors as
 * "FILE:LINE: setting: reason".
 */
#ifndef TANDEM_CONFIG_FILE_H
#define TANDEM_CONFIG_FILE_H

#include <stdio.h>

#include "config.h"

/*
 * Loads and validates path. Returns NULL with errs filled when anything is
 * wrong; nothing is half-loaded.
 */
gw_config_t *gw_config_load(const char *path, gw_errs_t *errs);
void gw_config_free(gw_config_t *cfg);

/* Line in the file of setting (e.g. "coap.dtls.cert"), 0 when defaulted. */
int gw_config_line(const gw_config_t *cfg, const char *setting);

/*
 * For a reload: settings that cannot change while running take their value
 * in cur again, each change logged.
 */
void gw_config_keep_fixed(gw_config_t *next, const gw_config_t *cur);

/*
 * gateway.control_socket of the file at path, resolved as gw_config_load()
 * does, without validating or reading anything else (for `tandem stats`,
 * which may run as a user who cannot read the password file). Returns the
 * path, malloc'd ("" when the file turns the socket off), or NULL with errs
 * filled when the file cannot be read or the setting is not a string. With
 * path NULL: the default.
 */
char *gw_config_control_socket(const char *path, gw_errs_t *errs);

/*
 * Calls fn for each setting that names a file or a folder and is set (those
 * of a listener turned off left out), with the resolved path and its line.
 */
void gw_config_each_path(const gw_config_t *cfg,
                         void (*fn)(const char *setting, const char *path, int line, void *arg),
                         void *arg);

/* Prints the mapping table, with shadowing warnings, for `tandem check`. */
void gw_config_print_mappings(const gw_config_t *cfg, FILE *out);

#endif
