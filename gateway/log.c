#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int current = GW_LOG_INFO;
static const char *const names[] = {"error", "warning", "info", "debug"};

void gw_log_set_level(int level)
{
    atomic_store(&current, level);
}

int gw_log_level(void)
{
    return atomic_load(&current);
}

/* Formats and writes one line; suffix (may be NULL) is appended. */
static void emit(int level, const char *subsystem, const char *suffix, const char *fmt, va_list ap)
{
    char line[1024];
    int n;

    n = snprintf(line, sizeof(line), "%s %s: ", names[level], subsystem);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (suffix) {
        size_t len = strlen(line);
        snprintf(line + len, sizeof(line) - len - 1, "%s", suffix);
    }
    /*
     * One line per event, and nothing a device sent may drive a terminal:
     * control characters in the message become '?'.
     */
    for (char *p = line + n; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = *p == '\n' || *p == '\r' || *p == '\t' ? ' ' : '?';
    size_t len = strlen(line);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void gw_log(int level, const char *subsystem, const char *fmt, ...)
{
    va_list ap;

    if (level > atomic_load(&current))
        return;
    va_start(ap, fmt);
    emit(level, subsystem, NULL, fmt, ap);
    va_end(ap);
}

static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t limit_second;  /* the second all_lines counts */
static unsigned all_lines;     /* limited lines of every kind written in it */
static uint64_t all_suppressed;

static uint64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

void gw_log_rl(gw_log_kind_t *kind, int level, const char *subsystem, const char *fmt, ...)
{
    char suffix[64] = "";
    va_list ap;

    if (level > atomic_load(&current))
        return;
    uint64_t now = now_s();
    pthread_mutex_lock(&limit_lock);
    if (kind->second != now) {
        kind->second = now;
        kind->lines = 0;
    }
    if (limit_second != now) {
        limit_second = now;
        all_lines = 0;
    }
    bool write_it = kind->lines < GW_LOG_KIND_PER_S && all_lines < GW_LOG_LIMITED_PER_S;
    if (write_it) {
        kind->lines++;
        all_lines++;
        if (kind->suppressed)
            snprintf(suffix, sizeof(suffix), " (%llu similar lines suppressed)",
                     (unsigned long long)kind->suppressed);
        kind->suppressed = 0;
    } else {
        kind->suppressed++;
        all_suppressed++;
    }
    pthread_mutex_unlock(&limit_lock);
    if (!write_it)
        return;
    va_start(ap, fmt);
    emit(level, subsystem, *suffix ? suffix : NULL, fmt, ap);
    va_end(ap);
}

uint64_t gw_log_suppressed(void)
{
    pthread_mutex_lock(&limit_lock);
    uint64_t n = all_suppressed;
    pthread_mutex_unlock(&limit_lock);
    return n;
}

const char *gw_strerror(int rc)
{
    return strerror(rc < 0 ? -rc : rc);
}
