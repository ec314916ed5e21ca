#include "bike.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

volatile sig_atomic_t bike_stop_requested;

static const char *log_program = "bike", *log_identity = "";

static void on_signal(int sig)
{
    (void)sig;
    bike_stop_requested = 1;
}

void bike_catch_signals(void)
{
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void bike_log_as(const char *program, const char *identity)
{
    log_program = program;
    log_identity = identity;
}

void bike_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s %s: ", log_program, log_identity);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

bool bike_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

long long bike_reading_due(long long start_ms, unsigned long seq, long interval_ms)
{
    return start_ms + (long long)(seq - 1) * interval_ms;
}

int bike_option(int c, const char *arg, struct bike_options *o)
{
    long v;
    switch (c) {
    case 'H':
        o->host = arg;
        return 1;
    case 'i':
        o->identity = arg;
        return 1;
    case BIKE_OPT_CA:
        o->ca = arg;
        return 1;
    case BIKE_OPT_CERT:
        o->cert = arg;
        return 1;
    case BIKE_OPT_KEY:
        o->key = arg;
        return 1;
    case BIKE_OPT_TELEMETRY:
        o->telemetry = arg;
        return 1;
    case BIKE_OPT_COMMANDS:
        o->commands = arg;
        return 1;
    case 'n':
        if (!bike_parse_long(arg, 0, LONG_MAX, &v))
            return -EINVAL;
        o->count = (unsigned long)v;
        return 1;
    case 'I':
        if (!bike_parse_long(arg, 1, 86400000, &v))
            return -EINVAL;
        o->interval_ms = v;
        return 1;
    case 'c':
        o->print_commands = true;
        return 1;
    case 'v':
        o->verbose = true;
        return 1;
    default:
        return 0;
    }
}
