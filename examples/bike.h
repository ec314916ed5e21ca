/*
 * What the reference bikes share whatever the protocol: exit statuses, stopping
 * on SIGINT/SIGTERM, their lines on stderr, numeric options and the readings'
 * schedule.
 */
#ifndef BIKE_BIKE_H
#define BIKE_BIKE_H

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>

/* Exit statuses (0 every reading acknowledged, 1 EXIT_FAILURE a local failure). */
enum {
    EXIT_USAGE = 2,      /* bad options */
    EXIT_NO_LINK = 3,    /* no connection (MQTT) or DTLS session (CoAP) to the gateway */
    EXIT_UNDELIVERED = 4 /* a reading or the commands' subscription refused or unanswered */
};

/* Set by SIGINT or SIGTERM once bike_catch_signals() has run. */
extern volatile sig_atomic_t bike_stop_requested;

/* SIGINT and SIGTERM set bike_stop_requested (waits are not restarted). */
void bike_catch_signals(void);

/* Names the bike in its lines on stderr: "PROGRAM IDENTITY: ...". */
void bike_log_as(const char *program, const char *identity);

/* One line on stderr, prefixed with the program and the identity. */
void bike_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The options both bikes take (each sets its own defaults). */
struct bike_options {
    const char *host;
    const char *identity;
    const char *ca, *cert, *key;
    const char *telemetry, *commands;
    unsigned long count;
    long interval_ms;
    bool print_commands;
    bool verbose;
};

/* getopt_long's codes for the shared options that have no letter; a bike's
 * own such options are numbered from BIKE_OPT_OWN. */
enum {
    BIKE_OPT_CA = 256,
    BIKE_OPT_CERT,
    BIKE_OPT_KEY,
    BIKE_OPT_TELEMETRY,
    BIKE_OPT_COMMANDS,
    BIKE_OPT_OWN
};

/* The shared options, for getopt_long's short options and long options table. */
#define BIKE_SHORT_OPTIONS "H:i:n:I:cv"
/* clang-format off */
#define BIKE_LONG_OPTIONS                                          \
    { "host", required_argument, NULL, 'H' },                      \
    { "identity", required_argument, NULL, 'i' },                  \
    { "ca", required_argument, NULL, BIKE_OPT_CA },                \
    { "cert", required_argument, NULL, BIKE_OPT_CERT },            \
    { "key", required_argument, NULL, BIKE_OPT_KEY },              \
    { "telemetry", required_argument, NULL, BIKE_OPT_TELEMETRY },  \
    { "commands", required_argument, NULL, BIKE_OPT_COMMANDS },    \
    { "count", required_argument, NULL, 'n' },                     \
    { "interval", required_argument, NULL, 'I' },                  \
    { "print-commands", no_argument, NULL, 'c' },                  \
    { "verbose", no_argument, NULL, 'v' }
/* clang-format on */

/* Takes option c (getopt_long's answer, with its argument arg) into o: 1 when
 * it is a shared option, 0 when it is not, -EINVAL for a bad value. */
int bike_option(int c, const char *arg, struct bike_options *o);

/* Parses s as a whole decimal number in [min, max] into *out; false if it is not one. */
bool bike_parse_long(const char *s, long min, long max, long *out);

/* When reading seq (from 1) is due: one every interval_ms from start_ms. */
long long bike_reading_due(long long start_ms, unsigned long seq, long interval_ms);

#endif
