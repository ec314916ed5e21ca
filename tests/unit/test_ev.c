/*
 * The event loop registry: readiness, registrations changed from inside
 * callbacks (removed, or removed and the fd number used again, in the same
 * turn), timers, hooks, ev_stop, and more fds than one epoll_wait returns.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "clock.h"
#include "ev.h"

/* Generous: a loaded CI machine (or a sanitizer build) is slow, never early. */
#define SLACK_MS 1000

typedef struct {
    int calls;
    int fd;
    unsigned mask;
    void *data;
} seen_t;

static void record(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop;
    seen_t *s = data;
    s->calls++;
    s->fd = fd;
    s->mask = mask;
    s->data = data;
}

static void make_pipe(int p[2])
{
    cr_assert_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
}

static void put_byte(int fd)
{
    cr_assert_eq(write(fd, "x", 1), 1);
}

static void close_pair(int p[2])
{
    close(p[0]);
    close(p[1]);
}

Test(ev, pipe_readiness_calls_back_with_data)
{
    ev_loop_t *loop = ev_new();
    int p[2];
    seen_t s = { 0 };
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &s), 0);
    cr_assert_eq(ev_turn(loop, 0), 0, "nothing to read yet");
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.fd, p[0]);
    cr_assert_eq(s.mask, EV_READABLE);
    cr_assert_eq(s.data, &s);
    ev_del_file(loop, p[0]);
    ev_free(loop);
    close_pair(p);
}

Test(ev, eventfd_readiness)
{
    ev_loop_t *loop = ev_new();
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    seen_t s = { 0 };
    uint64_t one = 1;
    cr_assert_eq(ev_add_file(loop, efd, EV_READABLE, record, &s), 0);
    cr_assert_eq(write(efd, &one, sizeof(one)), (ssize_t)sizeof(one));
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.fd, efd);
    cr_assert_eq(s.mask, EV_READABLE);
    ev_free(loop);
    close(efd);
}

Test(ev, bad_arguments)
{
    ev_loop_t *loop = ev_new();
    seen_t s = { 0 };
    int p[2];
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, -1, EV_READABLE, record, &s), -EBADF);
    cr_assert_eq(ev_add_file(loop, p[0], 4, record, &s), -EINVAL);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, NULL, &s), -EINVAL);
    /* A number that is not open is refused by the kernel, before the table grows. */
    cr_assert_eq(ev_add_file(loop, 100000, EV_READABLE, record, &s), -EBADF);
    cr_assert_eq(ev_set_mask(loop, p[0], EV_READABLE), -ENOENT);
    cr_assert_eq(ev_set_mask(loop, 100000, EV_READABLE), -ENOENT);
    ev_del_file(loop, p[0]);
    ev_del_file(loop, 100000);
    ev_del_file(loop, -1);
    cr_assert_eq(ev_set_timer(loop, 0, 1), -ENOENT);
    cr_assert_eq(ev_set_timer(loop, 42, 1), -ENOENT);
    ev_del_timer(loop, 0);
    ev_del_timer(loop, 42);
    cr_assert_eq(ev_add_hook(loop, NULL, NULL), -EINVAL);
    ev_free(loop);
    ev_free(NULL);
    close_pair(p);
}

Test(ev, add_again_changes_callback_and_data)
{
    ev_loop_t *loop = ev_new();
    int p[2];
    seen_t a = { 0 }, b = { 0 };
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &a), 0);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &b), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(a.calls, 0);
    cr_assert_eq(b.calls, 1);
    ev_free(loop);
    close_pair(p);
}

/* Two ready pipes; whichever callback runs first removes the other. */
typedef struct {
    int fd[2];
    int calls[2];
} rivals_t;

static void remove_rival(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)mask;
    rivals_t *r = data;
    int me = fd == r->fd[1];
    r->calls[me]++;
    ev_del_file(loop, r->fd[!me]);
}

Test(ev, fd_removed_by_another_callback_is_not_called)
{
    ev_loop_t *loop = ev_new();
    int a[2], b[2];
    make_pipe(a);
    make_pipe(b);
    rivals_t r = { .fd = { a[0], b[0] } };
    cr_assert_eq(ev_add_file(loop, a[0], EV_READABLE, remove_rival, &r), 0);
    cr_assert_eq(ev_add_file(loop, b[0], EV_READABLE, remove_rival, &r), 0);
    put_byte(a[1]);
    put_byte(b[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1, "both were ready: one ran, one was removed");
    cr_assert_eq(r.calls[0] + r.calls[1], 1);
    /* The survivor is still registered; the removed one stays quiet. */
    cr_assert_eq(ev_turn(loop, 0), 1);
    cr_assert_eq(r.calls[0] + r.calls[1], 2);
    ev_free(loop);
    close_pair(a);
    close_pair(b);
}

/*
 * Two ready pipes; whichever callback runs first removes the other, closes
 * it and puts a new, empty pipe at the same fd number, registered with
 * another callback. The event already taken for the old pipe must reach
 * neither.
 */
typedef struct {
    int rd[2], wr[2];
    int calls, fresh_calls;
    bool swapped;
} swap_t;

static void fresh(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop, (void)fd, (void)mask;
    ((swap_t *)data)->fresh_calls++;
}

static void swap_rival(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)mask;
    swap_t *s = data;
    s->calls++;
    if (s->swapped)
        return;
    s->swapped = true;
    int other = fd == s->rd[0];
    int old = s->rd[other], p[2];
    make_pipe(p);
    ev_del_file(loop, old);
    close(old);
    close(s->wr[other]);
    /* The number just closed, for sure (the lowest free one may be another). */
    cr_assert_eq(dup3(p[0], old, O_CLOEXEC), old);
    close(p[0]);
    s->wr[other] = p[1];
    cr_assert_eq(ev_add_file(loop, old, EV_READABLE, fresh, s), 0);
}

Test(ev, fd_number_reused_in_the_same_turn_gets_no_stale_event)
{
    ev_loop_t *loop = ev_new();
    int a[2], b[2];
    make_pipe(a);
    make_pipe(b);
    swap_t s = { .rd = { a[0], b[0] }, .wr = { a[1], b[1] } };
    cr_assert_eq(ev_add_file(loop, a[0], EV_READABLE, swap_rival, &s), 0);
    cr_assert_eq(ev_add_file(loop, b[0], EV_READABLE, swap_rival, &s), 0);
    put_byte(a[1]);
    put_byte(b[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.fresh_calls, 0, "the new pipe is empty: the old pipe's event was delivered");
    /* The new registration works. */
    int other = s.wr[0] != a[1] ? 0 : 1;
    put_byte(s.wr[other]);
    for (int i = 0; i < 10 && !s.fresh_calls; i++)
        ev_turn(loop, SLACK_MS);
    cr_assert_eq(s.fresh_calls, 1);
    ev_free(loop);
    for (int i = 0; i < 2; i++) {
        close(s.rd[i]);
        close(s.wr[i]);
    }
}

/* A callback that removes and closes its own fd, then registers a high fd (the table grows). */
typedef struct {
    int self, high, calls;
    seen_t high_seen;
} self_t;

static void drop_self(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)mask;
    self_t *s = data;
    s->calls++;
    ev_del_file(loop, fd);
    close(fd);
    cr_assert_eq(ev_add_file(loop, s->high, EV_READABLE, record, &s->high_seen), 0);
}

Test(ev, callback_removes_itself_and_grows_the_table)
{
    ev_loop_t *loop = ev_new();
    int p[2], q[2];
    make_pipe(p);
    make_pipe(q);
    self_t s = { .self = p[0], .high = 900 };
    cr_assert_eq(dup3(q[0], s.high, O_CLOEXEC), s.high);
    put_byte(p[1]);
    put_byte(q[1]);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, drop_self, &s), 0);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.high_seen.calls, 1);
    cr_assert_eq(s.high_seen.fd, s.high);
    ev_free(loop);
    close(p[1]);
    close_pair(q);
    close(s.high);
}

Test(ev, writable_socketpair)
{
    ev_loop_t *loop = ev_new();
    int sp[2];
    seen_t s = { 0 };
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
    cr_assert_eq(ev_add_file(loop, sp[0], EV_READABLE | EV_WRITABLE, record, &s), 0);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.mask, EV_WRITABLE, "writable, nothing to read");
    cr_assert_eq(write(sp[1], "x", 1), 1);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.mask, EV_READABLE | EV_WRITABLE);
    ev_free(loop);
    close_pair(sp);
}

Test(ev, mask_zero_silences)
{
    ev_loop_t *loop = ev_new();
    int p[2];
    seen_t s = { 0 };
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &s), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_set_mask(loop, p[0], 0), 0);
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(ev_set_mask(loop, p[0], EV_READABLE), 0);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.mask, EV_READABLE);
    ev_free(loop);
    close_pair(p);
}

/* epoll reports a hang-up even to an fd that waits for nothing: it must not make the loop spin. */
Test(ev, mask_zero_silences_a_hang_up_without_spinning)
{
    ev_loop_t *loop = ev_new();
    int p[2];
    seen_t s = { 0 };
    char c;
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], 0, record, &s), 0);
    close(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 0, "the hang-up is taken, and not delivered");
    for (int i = 0; i < 3; i++) {
        uint64_t start = gw_now_ms();
        cr_assert_eq(ev_turn(loop, 30), 0);
        cr_assert_geq(gw_now_ms() - start, 25, "turn %d did not wait", i);
    }
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(ev_set_mask(loop, p[0], EV_READABLE), 0);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(s.mask, EV_READABLE);
    cr_assert_eq(read(p[0], &c, 1), 0, "end of file");
    ev_del_file(loop, p[0]);
    ev_free(loop);
    close(p[0]);
}

Test(ev, hang_up_is_delivered)
{
    ev_loop_t *loop = ev_new();
    int p[2], q[2];
    seen_t r = { 0 }, w = { 0 };
    char c;
    signal(SIGPIPE, SIG_IGN);
    make_pipe(p);
    make_pipe(q);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &r), 0);
    close(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(r.mask, EV_READABLE, "a hang-up comes as what the fd waits for");
    cr_assert_eq(read(p[0], &c, 1), 0);
    ev_del_file(loop, p[0]);
    /* The writer's side, with the pipe full: the reader went away. */
    while (write(q[1], "x", 1) == 1)
        ;
    cr_assert_eq(errno, EAGAIN);
    cr_assert_eq(ev_add_file(loop, q[1], EV_WRITABLE, record, &w), 0);
    cr_assert_eq(ev_turn(loop, 0), 0, "full");
    close(q[0]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(w.mask, EV_WRITABLE);
    cr_assert_eq(write(q[1], "x", 1), -1);
    cr_assert_eq(errno, EPIPE);
    ev_free(loop);
    close(p[0]);
    close(q[1]);
}

/* Timers */

typedef struct {
    char order[16];
    size_t n;
    int rearms;     /* times left that the timer asks to run again */
    uint64_t other; /* a timer to delete */
    ev_loop_t *loop;
} trace_t;

static void mark(trace_t *t, char c)
{
    if (t->n < sizeof(t->order) - 1)
        t->order[t->n++] = c;
}

static int64_t mark_a(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id;
    mark(data, 'a');
    return EV_NOMORE;
}

static int64_t mark_b(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id;
    mark(data, 'b');
    return EV_NOMORE;
}

static int64_t mark_c(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id;
    mark(data, 'c');
    return EV_NOMORE;
}

/* Turns until n marks were made, at most SLACK_MS. */
static void turn_until(ev_loop_t *loop, trace_t *t, size_t n)
{
    uint64_t end = gw_now_ms() + SLACK_MS;
    while (t->n < n && gw_now_ms() < end)
        cr_assert_geq(ev_turn(loop, SLACK_MS), 0);
    cr_assert_eq(t->n, n, "%zu marks, wanted %zu (%s)", t->n, n, t->order);
}

Test(ev, timers_fire_in_order_of_due_time)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    cr_assert_neq(ev_add_timer(loop, 30, mark_c, &t), 0);
    cr_assert_neq(ev_add_timer(loop, 10, mark_a, &t), 0);
    cr_assert_neq(ev_add_timer(loop, 20, mark_b, &t), 0);
    turn_until(loop, &t, 3);
    cr_assert_str_eq(t.order, "abc");
    ev_free(loop);
}

Test(ev, timers_due_in_the_same_turn_run_earliest_first)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    ev_add_timer(loop, 5, mark_b, &t);
    ev_add_timer(loop, 0, mark_a, &t);
    ev_add_timer(loop, 5, mark_c, &t);
    /* All due before the turn starts (waiting for the clock, not a fixed sleep). */
    uint64_t due = gw_now_ms() + 6;
    while (gw_now_ms() < due)
        ;
    cr_assert_eq(ev_turn(loop, 0), 3);
    cr_assert_str_eq(t.order, "abc", "ties go to the older timer");
    ev_free(loop);
}

static int64_t count_down(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id;
    trace_t *t = data;
    mark(t, 'r');
    return t->rearms-- > 0 ? 5 : EV_NOMORE;
}

Test(ev, return_value_rearms_and_ev_nomore_removes)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { .rearms = 3 };
    uint64_t id = ev_add_timer(loop, 0, count_down, &t);
    cr_assert_neq(id, 0);
    turn_until(loop, &t, 4);
    cr_assert_str_eq(t.order, "rrrr");
    cr_assert_eq(ev_set_timer(loop, id, 0), -ENOENT, "EV_NOMORE removed it");
    cr_assert_eq(ev_turn(loop, 20), 0);
    ev_free(loop);
}

static int64_t delete_other(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)id;
    trace_t *t = data;
    mark(t, 'd');
    ev_del_timer(loop, t->other);
    return EV_NOMORE;
}

static int64_t delete_self(ev_loop_t *loop, uint64_t id, void *data)
{
    mark(data, 's');
    ev_del_timer(loop, id);
    return 1000; /* the deletion wins */
}

Test(ev, timers_deleted_from_callbacks)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    /* Due at the same time: the deleter is older, so it runs first and the victim never does. */
    ev_add_timer(loop, 0, delete_other, &t);
    t.other = ev_add_timer(loop, 0, mark_a, &t);
    uint64_t self = ev_add_timer(loop, 0, delete_self, &t);
    turn_until(loop, &t, 2);
    cr_assert_str_eq(t.order, "ds");
    cr_assert_eq(ev_set_timer(loop, t.other, 0), -ENOENT);
    cr_assert_eq(ev_set_timer(loop, self, 0), -ENOENT);
    cr_assert_eq(ev_turn(loop, 20), 0);
    ev_free(loop);
}

static int64_t delete_other_and_wait(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)id;
    trace_t *t = data;
    mark(t, 'd');
    ev_del_timer(loop, t->other);
    return 60000;
}

/* The victim is older than the deleter: what the deleter returns still goes to the deleter. */
Test(ev, timer_deleting_an_older_timer_is_rearmed_itself)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    t.other = ev_add_timer(loop, 60000, mark_a, &t);
    uint64_t deleter = ev_add_timer(loop, 0, delete_other_and_wait, &t);
    uint64_t bystander = ev_add_timer(loop, 60000, mark_c, &t);
    turn_until(loop, &t, 1);
    cr_assert_eq(ev_turn(loop, 20), 0, "the deleter waits a minute, the bystander too");
    cr_assert_str_eq(t.order, "d");
    cr_assert_eq(ev_set_timer(loop, deleter, 60000), 0);
    cr_assert_eq(ev_set_timer(loop, bystander, 60000), 0);
    ev_free(loop);
}

static void delete_timer_fd(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)fd, (void)mask;
    ev_del_timer(loop, ((trace_t *)data)->other);
}

Test(ev, timer_deleted_from_a_file_callback)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    make_pipe(p);
    t.other = ev_add_timer(loop, 0, mark_a, &t);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, delete_timer_fd, &t), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1, "the file callback ran, the timer did not");
    cr_assert_eq(t.n, 0);
    ev_free(loop);
    close_pair(p);
}

Test(ev, set_timer_moves_the_due_time)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    uint64_t id = ev_add_timer(loop, 60000, mark_a, &t);
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_eq(ev_set_timer(loop, id, 0), 0);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_str_eq(t.order, "a");
    ev_free(loop);
}

static int64_t add_zero_timer(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)id;
    mark(data, 'z');
    cr_assert_neq(ev_add_timer(loop, 0, mark_a, data), 0);
    return EV_NOMORE;
}

Test(ev, timer_added_by_a_timer_waits_for_the_next_turn)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    ev_add_timer(loop, 0, add_zero_timer, &t);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_str_eq(t.order, "z");
    uint64_t start = gw_now_ms();
    cr_assert_eq(ev_turn(loop, -1), 1, "the new timer is due: the next turn does not wait");
    cr_assert_lt(gw_now_ms() - start, SLACK_MS);
    cr_assert_str_eq(t.order, "za");
    ev_free(loop);
}

static void add_zero_timer_fd(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)fd, (void)mask;
    mark(data, 'f');
    ev_add_timer(loop, 0, mark_a, data);
}

Test(ev, timer_added_by_a_file_callback_runs_in_the_same_turn)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, add_zero_timer_fd, &t), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 2);
    cr_assert_str_eq(t.order, "fa");
    ev_free(loop);
    close_pair(p);
}

Test(ev, wait_is_bounded_by_the_earliest_timer)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    seen_t s = { 0 };
    make_pipe(p);
    /* An fd that never becomes ready, so that only the timer can end the wait. */
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &s), 0);
    ev_add_timer(loop, 60000, mark_b, &t);
    ev_add_timer(loop, 20, mark_a, &t);
    uint64_t start = gw_now_ms();
    cr_assert_eq(ev_turn(loop, -1), 1);
    uint64_t took = gw_now_ms() - start;
    cr_assert_str_eq(t.order, "a");
    cr_assert_geq(took, 20, "returned after %llu ms", (unsigned long long)took);
    cr_assert_lt(took, 20 + SLACK_MS, "returned after %llu ms", (unsigned long long)took);
    /* And by max_wait_ms when that is shorter. */
    start = gw_now_ms();
    cr_assert_eq(ev_turn(loop, 10), 0);
    cr_assert_lt(gw_now_ms() - start, SLACK_MS);
    ev_free(loop);
    close_pair(p);
}

/* Hooks */

static void hook_1(ev_loop_t *loop, void *data)
{
    (void)loop;
    mark(data, '1');
}

static void hook_2(ev_loop_t *loop, void *data)
{
    (void)loop;
    mark(data, '2');
}

static void mark_fd(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop, (void)mask;
    char c;
    cr_assert_eq(read(fd, &c, 1), 1);
    mark(data, 'f');
}

Test(ev, hooks_run_after_callbacks_in_order)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, mark_fd, &t), 0);
    cr_assert_eq(ev_add_hook(loop, hook_1, &t), 0);
    cr_assert_eq(ev_add_hook(loop, hook_2, &t), 0);
    ev_add_timer(loop, 0, mark_a, &t);
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 2, "hooks are not counted");
    cr_assert_str_eq(t.order, "fa12");
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_str_eq(t.order, "fa1212", "hooks run after every turn");
    ev_free(loop);
    close_pair(p);
}

static void add_hook_2(ev_loop_t *loop, void *data)
{
    mark(data, 'h');
    if (((trace_t *)data)->n == 1)
        cr_assert_eq(ev_add_hook(loop, hook_2, data), 0);
}

Test(ev, hook_added_by_a_hook_runs_from_the_next_turn)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    cr_assert_eq(ev_add_hook(loop, add_hook_2, &t), 0);
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_str_eq(t.order, "h");
    cr_assert_eq(ev_turn(loop, 0), 0);
    cr_assert_str_eq(t.order, "hh2");
    ev_free(loop);
}

/* ev_stop and ev_run */

static int64_t stop_third(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)id;
    trace_t *t = data;
    mark(t, 't');
    if (++t->rearms == 3)
        ev_stop(loop);
    return 1;
}

Test(ev, stop_from_a_timer_ends_run)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    ev_add_timer(loop, 0, stop_third, &t);
    ev_add_hook(loop, hook_1, &t);
    cr_assert_eq(ev_run(loop), 0);
    cr_assert_str_eq(t.order, "t1t1t1", "the turn that stopped finished with its hooks");
    ev_free(loop);
}

static void stop_fd(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)fd, (void)mask;
    mark(data, 's');
    ev_stop(loop);
}

Test(ev, stop_from_a_file_callback_ends_run)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, stop_fd, &t), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_run(loop), 0);
    cr_assert_str_eq(t.order, "s");
    /* The stop is spent: run again and stop again (the byte is still there). */
    cr_assert_eq(ev_run(loop), 0);
    cr_assert_str_eq(t.order, "ss");
    ev_free(loop);
    close_pair(p);
}

static void turn_inside(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)fd, (void)mask;
    *(int *)data = ev_turn(loop, 0);
}

Test(ev, turning_from_a_callback_is_refused)
{
    ev_loop_t *loop = ev_new();
    int p[2], rc = 0;
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, turn_inside, &rc), 0);
    put_byte(p[1]);
    cr_assert_eq(ev_turn(loop, SLACK_MS), 1);
    cr_assert_eq(rc, -EBUSY);
    ev_free(loop);
    close_pair(p);
}

static void on_alarm(int sig)
{
    (void)sig;
}

Test(ev, signal_during_the_wait_is_not_an_error)
{
    ev_loop_t *loop = ev_new();
    trace_t t = { 0 };
    int p[2];
    seen_t s = { 0 };
    struct sigaction sa = { .sa_handler = on_alarm };
    struct itimerval it = { .it_value = { .tv_usec = 20000 } };
    make_pipe(p);
    cr_assert_eq(ev_add_file(loop, p[0], EV_READABLE, record, &s), 0);
    cr_assert_eq(ev_add_hook(loop, hook_1, &t), 0);
    cr_assert_eq(sigaction(SIGALRM, &sa, NULL), 0);
    cr_assert_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
    uint64_t start = gw_now_ms();
    cr_assert_eq(ev_turn(loop, 10 * SLACK_MS), 0);
    cr_assert_lt(gw_now_ms() - start, 5 * SLACK_MS, "the signal ended the wait");
    cr_assert_str_eq(t.order, "1", "the hooks ran");
    ev_free(loop);
    close_pair(p);
}

/* More fds than one epoll_wait returns, within the default limit of 1024 open files. */
#define PAIRS 450

typedef struct {
    int calls[2 * PAIRS + 64];
    int max_fd;
} many_t;

static void drain_one(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop;
    many_t *m = data;
    char c;
    cr_assert_eq(mask, EV_READABLE);
    cr_assert_eq(read(fd, &c, 1), 1);
    cr_assert_lt(fd, m->max_fd + 1);
    m->calls[fd]++;
}

Test(ev, many_fds)
{
    ev_loop_t *loop = ev_new();
    static many_t m;
    static int sp[PAIRS][2];
    int total = 0, turns = 0;
    for (int i = 0; i < PAIRS; i++) {
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp[i]), 0,
                     "socketpair %d: %s", i, strerror(errno));
        for (int k = 0; k < 2; k++) {
            cr_assert_lt(sp[i][k], (int)(sizeof(m.calls) / sizeof(m.calls[0])));
            if (sp[i][k] > m.max_fd)
                m.max_fd = sp[i][k];
            cr_assert_eq(ev_add_file(loop, sp[i][k], EV_READABLE, drain_one, &m), 0);
        }
    }
    for (int i = 0; i < PAIRS; i++)
        for (int k = 0; k < 2; k++)
            put_byte(sp[i][k]);
    while (total < 2 * PAIRS && turns < 1000) {
        int n = ev_turn(loop, SLACK_MS);
        cr_assert_gt(n, 0);
        cr_assert_leq(n, 64, "at most one batch per turn");
        total += n;
        turns++;
    }
    cr_assert_eq(total, 2 * PAIRS);
    cr_assert_geq(turns, 2 * PAIRS / 64);
    for (int i = 0; i < PAIRS; i++)
        for (int k = 0; k < 2; k++)
            cr_assert_eq(m.calls[sp[i][k]], 1, "fd %d", sp[i][k]);
    cr_assert_eq(ev_turn(loop, 0), 0, "all read");
    ev_free(loop);
    for (int i = 0; i < PAIRS; i++)
        close_pair(sp[i]);
}
