/*
 * Logging: one line per event on stderr, "level subsystem: message".
 * Safe to call from any thread (one write per line).
 */
#ifndef TANDEM_LOG_H
#define TANDEM_LOG_H

#include <stdint.h>

#include "config.h"

void gw_log_set_level(int level); /* enum gw_log_level */
int gw_log_level(void);
void gw_log(int level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define gw_err(sub, ...) gw_log(GW_LOG_ERROR, sub, __VA_ARGS__)
#define gw_warn(sub, ...) gw_log(GW_LOG_WARNING, sub, __VA_ARGS__)
#define gw_info(sub, ...) gw_log(GW_LOG_INFO, sub, __VA_ARGS__)
#define gw_debug(sub, ...) gw_log(GW_LOG_DEBUG, sub, __VA_ARGS__)

/*
 * Lines that a peer (a device, a flood, the broker) can cause as often as it
 * likes. Each call site is one kind: it writes at most GW_LOG_KIND_PER_S lines
 * a second, and all kinds together at most GW_LOG_LIMITED_PER_S; what is held
 * back is counted and reported by the kind's next line that gets through
 * ("... (K similar lines suppressed)"). So the log grows by a few kilobytes
 * a second at most, whatever peers send.
 */
#define GW_LOG_KIND_PER_S 5
#define GW_LOG_LIMITED_PER_S 20

typedef struct gw_log_kind {
    uint64_t second;     /* the second the count is for */
    unsigned lines;      /* lines written in that second */
    uint64_t suppressed; /* held back since the last line written */
} gw_log_kind_t;

void gw_log_rl(gw_log_kind_t *kind, int level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define gw_log_limited(level, sub, ...)                                                           \
    do {                                                                                      \
        static gw_log_kind_t gw_kind_;                                                        \
        gw_log_rl(&gw_kind_, level, sub, __VA_ARGS__);                                        \
    } while (0)

/* Lines held back by gw_log_limited() since the start. */
uint64_t gw_log_suppressed(void);

/* Text for a negative errno-style code. */
const char *gw_strerror(int rc);

#endif
