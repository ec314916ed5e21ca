/*
 * The reference bikes' readings: the same JSON document for the same identity
 * and sequence number, whichever protocol carries it.
 */
#ifndef BIKE_READING_H
#define BIKE_READING_H

#include <stddef.h>

/*
 * Writes reading number seq of bike identity into buf (size n) as JSON:
 * {"bike":"...","seq":N,"heart_rate":...,"cadence":...,"power_w":...}.
 * The values are a function of seq only, so that the backend can compare what
 * an MQTT bike and a CoAP bike sent. Returns the length, or -ENOSPC.
 */
int bike_reading(char *buf, size_t n, const char *identity, unsigned long seq);

/* Renders a topic or resource template: each "{identity}" becomes identity.
 * Returns 0, or -ENOSPC when out (size n) is too small. */
int bike_render(char *out, size_t n, const char *tmpl, const char *identity);

/* Milliseconds of CLOCK_MONOTONIC. */
long long bike_now_ms(void);

#endif
