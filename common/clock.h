/*
 * The clock every module measures time with: CLOCK_MONOTONIC, so that
 * deadlines and timers do not jump when the wall clock is set.
 */
#ifndef TANDEM_CLOCK_H
#define TANDEM_CLOCK_H

#include <stdint.h>

/* Milliseconds since an arbitrary point (boot), never going back. */
uint64_t gw_now_ms(void);

#endif
