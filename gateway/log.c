#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
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

void gw_log(int level, const char *subsystem, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    if (level > atomic_load(&current))
        return;
    n = snprintf(line, sizeof(line), "%s %s: ", names[level], subsystem);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
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

const char *gw_strerror(int rc)
{
    return strerror(rc < 0 ? -rc : rc);
}
