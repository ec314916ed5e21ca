/*
 * The clock: monotonic milliseconds for every timeout and age, wall-clock
 * seconds only for what is shown to people (certificate dates).
 */
#ifndef TANDEM_CLOCK_H
#define TANDEM_CLOCK_H

#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC (never goes back, not the time of day). */
uint64_t gw_now_ms(void);

#endif
