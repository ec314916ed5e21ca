/*
 * The event loop as a registry, one thread (as Redis's ae.c): modules register
 * a file descriptor with a callback and its data, timers, and hooks that run
 * after every turn (Redis's beforeSleep). Adding a socket type adds a module
 * that registers here, not a case in the loop.
 *
 * Callbacks run on the loop's thread and may add or remove any registration,
 * their own included: an fd removed during a turn gets no further callback in
 * that turn, even if the same number is registered again.
 */
#ifndef TANDEM_EV_H
#define TANDEM_EV_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ev_loop ev_loop_t;

enum { EV_READABLE = 1, EV_WRITABLE = 2 };

/* fd is ready for what mask says (EV_READABLE, EV_WRITABLE; errors and hang-ups as both). */
typedef void ev_file_fn(ev_loop_t *loop, int fd, unsigned mask, void *data);

/*
 * A timer is due. Returns the milliseconds until it is due again (counted
 * from its return), or EV_NOMORE to remove it (any negative value does). The
 * return wins over ev_set_timer of the same timer from inside; ev_del_timer
 * wins over both. Due timers run earliest first; a timer added by a timer
 * callback runs from the next turn on, one added by a file callback already
 * in this turn if it is due.
 */
typedef int64_t ev_time_fn(ev_loop_t *loop, uint64_t id, void *data);
#define EV_NOMORE (-1)

/* After every turn, before the loop waits again; in order of registration. */
typedef void ev_hook_fn(ev_loop_t *loop, void *data);

ev_loop_t *ev_new(void);
/* Frees the loop; the registered fds are not closed (their owners close them). */
void ev_free(ev_loop_t *loop);

/*
 * Registers fd for mask, or changes the mask, callback and data of fd.
 * 0, or a negative errno-style code.
 */
int ev_add_file(ev_loop_t *loop, int fd, unsigned mask, ev_file_fn *fn, void *data);
/* Changes what fd waits for (EV_READABLE, EV_WRITABLE, both, or 0 for nothing). */
int ev_set_mask(ev_loop_t *loop, int fd, unsigned mask);
/* Removes fd (before its owner closes it). Nothing for an fd not registered. */
void ev_del_file(ev_loop_t *loop, int fd);

/* A timer due in ms milliseconds. Its id (never 0), or 0 when out of memory. */
uint64_t ev_add_timer(ev_loop_t *loop, uint64_t ms, ev_time_fn *fn, void *data);
/* Makes timer id due in ms milliseconds from now. */
int ev_set_timer(ev_loop_t *loop, uint64_t id, uint64_t ms);
/* Removes timer id; nothing for an unknown id. */
void ev_del_timer(ev_loop_t *loop, uint64_t id);

int ev_add_hook(ev_loop_t *loop, ev_hook_fn *fn, void *data);

/*
 * One turn: waits at most max_wait_ms (-1: until something happens) for fds
 * and timers, runs the callbacks, then the hooks. The number of callbacks run
 * (files and timers, not hooks), or a negative errno-style code: -EBUSY from
 * inside a callback. A signal that interrupts the wait is no error.
 */
int ev_turn(ev_loop_t *loop, int max_wait_ms);

/* Turns until ev_stop(). 0, or a negative errno-style code if waiting failed. */
int ev_run(ev_loop_t *loop);
/* ev_run returns after the current turn (its hooks included); before ev_run, at once. */
void ev_stop(ev_loop_t *loop);

#endif
