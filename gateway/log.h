/*
 * Logging: one line per event on stderr, "level subsystem: message".
 * Safe to call from any thread (one write per line).
 */
#ifndef TANDEM_LOG_H
#define TANDEM_LOG_H

#include "config.h"

void gw_log_set_level(int level); /* enum gw_log_level */
int gw_log_level(void);
void gw_log(int level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define gw_err(sub, ...) gw_log(GW_LOG_ERROR, sub, __VA_ARGS__)
#define gw_warn(sub, ...) gw_log(GW_LOG_WARNING, sub, __VA_ARGS__)
#define gw_info(sub, ...) gw_log(GW_LOG_INFO, sub, __VA_ARGS__)
#define gw_debug(sub, ...) gw_log(GW_LOG_DEBUG, sub, __VA_ARGS__)

/* Text for a negative errno-style code. */
const char *gw_strerror(int rc);

#endif
