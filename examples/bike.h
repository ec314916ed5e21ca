/*
 * What the reference bikes share whatever the protocol: exit statuses, stopping
 * on SIGINT/SIGTERM, their lines on stderr, numeric options and the readings'
 * schedule.
 */
#ifndef BIKE_BIKE_H
#define BIKE_BIKE_H

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

/* Parses s as a whole decimal number in [min, max] into *out; false if it is not one. */
bool bike_parse_long(const char *s, long min, long max, long *out);

/* When reading seq (from 1) is due: one every interval_ms from start_ms. */
long long bike_reading_due(long long start_ms, unsigned long seq, long interval_ms);

#endif
