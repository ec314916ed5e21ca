/*
 * The event loop registry on epoll (Linux only), after Redis's ae.c.
 *
 * Files: a table indexed by fd. Every time an fd enters the kernel's set it
 * gets a new generation number, kept with the fd in epoll_event.data.u64. An
 * event whose generation is no longer its fd's (removed by a callback earlier
 * in the same turn, perhaps registered again since) is dropped: the callback
 * and data it was meant for may be gone. epoll is level-triggered, so an
 * event dropped for a registration that still exists comes back next turn.
 *
 * Timers: there are few (a handful per module), so an unsorted array that is
 * scanned. A turn runs the timers that were due when its timer phase began,
 * earliest first; one added by a file callback of the same turn runs if it is
 * already due, one added by a timer callback waits for the next turn (so a
 * timer that keeps adding 0 ms timers cannot hold the loop in one turn).
 *
 * One turn: wait (bounded by the earliest timer), file callbacks, due timers,
 * then the hooks. Nothing here is thread-safe; callbacks run on the thread
 * that turns the loop and must not turn it or free it.
 */
#include "ev.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "clock.h"

/* Events taken per turn; more wait for the next one (epoll hands them out in rotation). */
#define EV_BATCH 64

#define EV_ALL ((unsigned)(EV_READABLE | EV_WRITABLE))

struct ev_file {
    ev_file_fn *fn;
    void *data;    /* the owner's, given back to fn */
    unsigned mask; /* what the owner waits for: EV_READABLE, EV_WRITABLE, both or 0 */
    uint32_t gen;  /* of the kernel registration; 0: fd not registered */
    bool parked;   /* registered here but out of the kernel's set (see park()) */
};

struct ev_timer {
    uint64_t id;     /* 0: deleted, taken out of the array after the timer phase */
    uint64_t due_ms; /* gw_now_ms() time */
    uint64_t phase;  /* the last timer phase that ran it */
    ev_time_fn *fn;
    void *data;
};

struct ev_hook {
    ev_hook_fn *fn;
    void *data;
};

struct ev_loop {
    int epfd;
    struct ev_file *files; /* owned, nfiles entries indexed by fd */
    size_t nfiles;
    uint32_t last_gen;
    struct ev_timer *timers; /* owned, ntimers used of timers_cap */
    size_t ntimers, timers_cap;
    uint64_t last_timer_id, timer_phase;
    bool in_timers;        /* the timer phase walks the array by index: deletions wait */
    struct ev_hook *hooks; /* owned, nhooks used of hooks_cap */
    size_t nhooks, hooks_cap;
    bool in_turn, stop;
    struct epoll_event evs[EV_BATCH];
};

ev_loop_t *ev_new(void)
{
    ev_loop_t *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return NULL;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        free(loop);
        return NULL;
    }
    return loop;
}

void ev_free(ev_loop_t *loop)
{
    if (!loop)
        return;
    close(loop->epfd);
    free(loop->files);
    free(loop->timers);
    free(loop->hooks);
    free(loop);
}

/*
 * Room for one more element in an array of *cap elements of size bytes, used
 * of them taken: the array (perhaps moved), or NULL when out of memory (the
 * old one is left as it was).
 */
static void *reserve(void *arr, size_t *cap, size_t used, size_t size)
{
    if (used < *cap)
        return arr;
    size_t n = *cap ? *cap * 2 : 8;
    if (n > SIZE_MAX / size)
        return NULL;
    void *grown = realloc(arr, n * size);
    if (grown)
        *cap = n;
    return grown;
}

/* Files */

/* Makes the table reach fd; the new entries are not registered. */
static int reach_fd(ev_loop_t *loop, int fd)
{
    size_t need = (size_t)fd + 1, n = loop->nfiles ? loop->nfiles : 64;
    if (need <= loop->nfiles)
        return 0;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / sizeof(*loop->files))
        return -ENOMEM;
    struct ev_file *files = realloc(loop->files, n * sizeof(*files));
    if (!files)
        return -ENOMEM;
    memset(files + loop->nfiles, 0, (n - loop->nfiles) * sizeof(*files));
    loop->files = files;
    loop->nfiles = n;
    return 0;
}

static struct ev_file *registered(ev_loop_t *loop, int fd)
{
    if (fd < 0 || (size_t)fd >= loop->nfiles || !loop->files[fd].gen)
        return NULL;
    return &loop->files[fd];
}

static uint32_t next_gen(ev_loop_t *loop)
{
    /* 0 means "not registered"; wrapping needs 2^32 registrations within one turn to matter. */
    if (++loop->last_gen == 0)
        loop->last_gen = 1;
    return loop->last_gen;
}

static int kernel_ctl(ev_loop_t *loop, int op, int fd, unsigned mask, uint32_t gen)
{
    struct epoll_event ev = {
        .events = (mask & EV_READABLE ? EPOLLIN : 0u) | (mask & EV_WRITABLE ? EPOLLOUT : 0u),
        .data.u64 = (uint64_t)gen << 32 | (uint32_t)fd,
    };
    return epoll_ctl(loop->epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static void kernel_del(ev_loop_t *loop, int fd)
{
    /* Linux before 2.6.9 wanted an event even for DEL. */
    struct epoll_event ev = { 0 };
    /* A failure means the owner closed fd already, which took it out of the set. */
    (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ev);
}

/* Tells the kernel what registered fd waits for now. */
static int set_kernel_mask(ev_loop_t *loop, int fd, struct ev_file *f, unsigned mask)
{
    int rc = 0;
    if (!f->parked) {
        rc = kernel_ctl(loop, EPOLL_CTL_MOD, fd, mask, f->gen);
    } else if (mask) {
        /* Back into the set: a new generation, as for every ADD. */
        uint32_t gen = next_gen(loop);
        rc = kernel_ctl(loop, EPOLL_CTL_ADD, fd, mask, gen);
        if (rc == 0) {
            f->gen = gen;
            f->parked = false;
        }
    }
    if (rc == 0)
        f->mask = mask;
    return rc;
}

/* A registration for an fd the table does not hold. */
static int add_new_file(ev_loop_t *loop, int fd, unsigned mask, ev_file_fn *fn, void *data)
{
    /* The kernel first: an fd that is not open never grows the table. */
    uint32_t gen = next_gen(loop);
    int rc = kernel_ctl(loop, EPOLL_CTL_ADD, fd, mask, gen);
    if (rc < 0)
        return rc;
    if (reach_fd(loop, fd) < 0) {
        kernel_del(loop, fd);
        return -ENOMEM;
    }
    loop->files[fd] = (struct ev_file){ .fn = fn, .data = data, .mask = mask, .gen = gen };
    return 0;
}

int ev_add_file(ev_loop_t *loop, int fd, unsigned mask, ev_file_fn *fn, void *data)
{
    if (fd < 0)
        return -EBADF;
    if (!fn || (mask & ~EV_ALL))
        return -EINVAL;
    struct ev_file *f = registered(loop, fd);
    if (f) {
        int rc = set_kernel_mask(loop, fd, f, mask);
        if (rc == 0) {
            f->fn = fn;
            f->data = data;
        }
        /*
         * ENOENT: the owner closed fd without ev_del_file and the number was
         * reused; what is registered now is a new file.
         */
        if (rc != -ENOENT)
            return rc;
        *f = (struct ev_file){ 0 };
    }
    return add_new_file(loop, fd, mask, fn, data);
}

int ev_set_mask(ev_loop_t *loop, int fd, unsigned mask)
{
    if (mask & ~EV_ALL)
        return -EINVAL;
    struct ev_file *f = registered(loop, fd);
    if (!f)
        return -ENOENT;
    /* Owners may set the mask every turn (writable while output waits): no system call then. */
    if (f->mask == mask)
        return 0;
    return set_kernel_mask(loop, fd, f, mask);
}

void ev_del_file(ev_loop_t *loop, int fd)
{
    struct ev_file *f = registered(loop, fd);
    if (!f)
        return;
    if (!f->parked)
        kernel_del(loop, fd);
    /* gen 0: events for fd already taken from the kernel this turn are dropped. */
    *f = (struct ev_file){ 0 };
}

/*
 * epoll reports errors and hang-ups even to an fd that waits for nothing, and
 * level-triggered it reports them again at every wait: a silenced fd whose
 * peer hung up would make the loop spin. Such an fd leaves the kernel's set
 * and stays registered here; a mask other than 0 puts it back.
 */
static void park(ev_loop_t *loop, int fd, struct ev_file *f)
{
    struct epoll_event ev = { 0 };
    if (epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ev) == 0)
        f->parked = true;
}

/*
 * What an event means to the owner of the fd. Errors and hang-ups come as all
 * it waits for, so that its read or write meets the error (or the end).
 */
static unsigned ready_mask(uint32_t events, unsigned wanted)
{
    unsigned mask = 0;
    if (events & EPOLLIN)
        mask |= EV_READABLE;
    if (events & EPOLLOUT)
        mask |= EV_WRITABLE;
    if (events & (EPOLLERR | EPOLLHUP))
        mask |= EV_ALL;
    return mask & wanted;
}

/* Runs the callback for one event unless its registration is gone. 1 if it ran. */
static int dispatch(ev_loop_t *loop, const struct epoll_event *ev)
{
    int fd = (int)(uint32_t)ev->data.u64;
    uint32_t gen = (uint32_t)(ev->data.u64 >> 32);
    struct ev_file *f = registered(loop, fd);
    if (!f || f->gen != gen)
        return 0;
    /* The mask may have changed since the wait: only what the owner waits for now. */
    unsigned mask = ready_mask(ev->events, f->mask);
    if (!mask) {
        if (!f->mask && (ev->events & (EPOLLERR | EPOLLHUP)))
            park(loop, fd, f);
        return 0;
    }
    /* The callback may move the table (registering a higher fd): f is not used after. */
    f->fn(loop, fd, mask, f->data);
    return 1;
}

/* Timers */

static uint64_t due_in(uint64_t ms)
{
    uint64_t now = gw_now_ms();
    return ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
}

static struct ev_timer *find_timer(ev_loop_t *loop, uint64_t id)
{
    for (size_t i = 0; id && i < loop->ntimers; i++)
        if (loop->timers[i].id == id)
            return &loop->timers[i];
    return NULL;
}

/* Takes the deleted timers out of the array, keeping the order of the others. */
static void compact_timers(ev_loop_t *loop)
{
    size_t kept = 0;
    for (size_t i = 0; i < loop->ntimers; i++)
        if (loop->timers[i].id)
            loop->timers[kept++] = loop->timers[i];
    loop->ntimers = kept;
}

uint64_t ev_add_timer(ev_loop_t *loop, uint64_t ms, ev_time_fn *fn, void *data)
{
    if (!fn)
        return 0;
    struct ev_timer *timers =
        reserve(loop->timers, &loop->timers_cap, loop->ntimers, sizeof(*timers));
    if (!timers)
        return 0;
    loop->timers = timers;
    /* 64 bits: the counter does not wrap, so an id is never reused nor 0. */
    uint64_t id = ++loop->last_timer_id;
    timers[loop->ntimers++] =
        (struct ev_timer){ .id = id, .due_ms = due_in(ms), .fn = fn, .data = data };
    return id;
}

int ev_set_timer(ev_loop_t *loop, uint64_t id, uint64_t ms)
{
    struct ev_timer *t = find_timer(loop, id);
    if (!t)
        return -ENOENT;
    t->due_ms = due_in(ms);
    return 0;
}

void ev_del_timer(ev_loop_t *loop, uint64_t id)
{
    struct ev_timer *t = find_timer(loop, id);
    if (!t)
        return;
    t->id = 0;
    if (!loop->in_timers)
        compact_timers(loop);
}

static bool earliest_due(const ev_loop_t *loop, uint64_t *due)
{
    bool any = false;
    for (size_t i = 0; i < loop->ntimers; i++) {
        const struct ev_timer *t = &loop->timers[i];
        if (t->id && (!any || t->due_ms < *due)) {
            *due = t->due_ms;
            any = true;
        }
    }
    return any;
}

/*
 * The timer of this phase to run next: due by now, not added during the phase
 * (id above last_id), not run yet; earliest first, then oldest. SIZE_MAX: none.
 */
static size_t next_due(const ev_loop_t *loop, uint64_t now, uint64_t last_id)
{
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < loop->ntimers; i++) {
        const struct ev_timer *t = &loop->timers[i];
        if (!t->id || t->id > last_id || t->due_ms > now || t->phase == loop->timer_phase)
            continue;
        const struct ev_timer *b = best == SIZE_MAX ? NULL : &loop->timers[best];
        if (!b || t->due_ms < b->due_ms || (t->due_ms == b->due_ms && t->id < b->id))
            best = i;
    }
    return best;
}

/*
 * Runs the due timers. A callback's return re-arms its timer from the time it
 * returned (any negative value, EV_NOMORE among them, removes it); that
 * return wins over an ev_set_timer of its own timer from inside, a deletion
 * wins over both. The number run.
 */
static int run_timers(ev_loop_t *loop)
{
    uint64_t now = gw_now_ms(), last_id = loop->last_timer_id;
    int ran = 0;
    size_t i;
    loop->timer_phase++;
    loop->in_timers = true;
    /* Indices hold during the phase: timers are only appended, and deleted ones stay as id 0. */
    while ((i = next_due(loop, now, last_id)) != SIZE_MAX) {
        struct ev_timer *t = &loop->timers[i];
        uint64_t id = t->id;
        t->phase = loop->timer_phase;
        int64_t next = t->fn(loop, id, t->data);
        ran++;
        t = &loop->timers[i]; /* the callback may have moved the array */
        if (t->id != id)
            continue;
        if (next < 0)
            t->id = 0;
        else
            t->due_ms = due_in((uint64_t)next);
    }
    loop->in_timers = false;
    compact_timers(loop);
    return ran;
}

/* Hooks */

int ev_add_hook(ev_loop_t *loop, ev_hook_fn *fn, void *data)
{
    if (!fn)
        return -EINVAL;
    struct ev_hook *hooks = reserve(loop->hooks, &loop->hooks_cap, loop->nhooks, sizeof(*hooks));
    if (!hooks)
        return -ENOMEM;
    loop->hooks = hooks;
    hooks[loop->nhooks++] = (struct ev_hook){ .fn = fn, .data = data };
    return 0;
}

static void run_hooks(ev_loop_t *loop)
{
    /* A hook added by a hook runs from the next turn on. */
    size_t n = loop->nhooks;
    for (size_t i = 0; i < n; i++)
        loop->hooks[i].fn(loop, loop->hooks[i].data);
}

/* The turn */

/* The epoll timeout: max_wait_ms (negative: no bound), shortened to the earliest timer. */
static int wait_ms(const ev_loop_t *loop, int max_wait_ms)
{
    uint64_t due = 0;
    if (!earliest_due(loop, &due))
        return max_wait_ms < 0 ? -1 : max_wait_ms;
    uint64_t now = gw_now_ms(), left = due > now ? due - now : 0;
    if (max_wait_ms >= 0 && (uint64_t)max_wait_ms < left)
        return max_wait_ms;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/*
 * The number of file and timer callbacks run (hooks not counted). A signal
 * that interrupts the wait is no error: the turn goes on with no fd ready, so
 * that due timers and the hooks still run.
 */
int ev_turn(ev_loop_t *loop, int max_wait_ms)
{
    /* A callback turning its own loop would reuse the events being dispatched. */
    if (loop->in_turn)
        return -EBUSY;
    int n = epoll_wait(loop->epfd, loop->evs, EV_BATCH, wait_ms(loop, max_wait_ms));
    if (n < 0) {
        if (errno != EINTR)
            return -errno;
        n = 0;
    }
    int ran = 0;
    loop->in_turn = true;
    for (int i = 0; i < n; i++)
        ran += dispatch(loop, &loop->evs[i]);
    ran += run_timers(loop);
    run_hooks(loop);
    loop->in_turn = false;
    return ran;
}

int ev_run(ev_loop_t *loop)
{
    while (!loop->stop) {
        int rc = ev_turn(loop, -1);
        if (rc < 0)
            return rc;
    }
    /* Spent: a later ev_run turns again. Kept until then, so an early ev_stop is not lost. */
    loop->stop = false;
    return 0;
}

void ev_stop(ev_loop_t *loop)
{
    loop->stop = true;
}
