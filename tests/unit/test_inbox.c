/*
 * The inbox between the MQTT client's threads and the loop: bounded, ordered.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>

#include "inbox.h"

Test(inbox, bounded_and_in_order)
{
    bridge_inbox_t *in = inbox_new(4, 1 << 20);
    inbox_event_t ev = { .type = EV_PUB_OK }, out[8];
    cr_assert_not_null(in);
    for (uint64_t i = 0; i < 4; i++) {
        ev.id = i;
        cr_assert_eq(inbox_push(in, &ev), 0);
    }
    ev.id = 99;
    cr_assert_eq(inbox_push(in, &ev), -ENOBUFS);
    cr_assert_eq(inbox_dropped(in), 1);
    struct pollfd p = { .fd = inbox_fd(in), .events = POLLIN };
    cr_assert_eq(poll(&p, 1, 0), 1, "the eventfd is readable");
    cr_assert_eq(inbox_drain(in, out, 3), 3);
    cr_assert_eq(out[0].id, 0);
    cr_assert_eq(out[2].id, 2);
    cr_assert_eq(poll(&p, 1, 0), 1, "still readable while events wait");
    cr_assert_eq(inbox_drain(in, out, 8), 1);
    cr_assert_eq(out[0].id, 3);
    cr_assert_eq(poll(&p, 1, 0), 0, "quiet once empty");
    inbox_free(in);
}

static void *producer(void *arg)
{
    inbox_event_t ev = { .type = EV_PUB_OK };
    for (int i = 0; i < 1000; i++)
        while (inbox_push(arg, &ev) < 0)
            sched_yield();
    return NULL;
}

Test(inbox, threads)
{
    bridge_inbox_t *in = inbox_new(16, 1 << 20);
    pthread_t t[4];
    inbox_event_t out[16];
    size_t got = 0;
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, producer, in);
    while (got < 4000) {
        struct pollfd p = { .fd = inbox_fd(in), .events = POLLIN };
        cr_assert_eq(poll(&p, 1, 5000), 1, "no wake-up after %zu events", got);
        got += inbox_drain(in, out, 16);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(got, 4000);
    inbox_free(in);
}

Test(inbox, byte_limit)
{
    bridge_inbox_t *in = inbox_new(8, 100);
    inbox_event_t ev = { .type = EV_MESSAGE, .bytes = 60 }, out[8];
    ev.data = malloc(60);
    cr_assert_eq(inbox_push(in, &ev), 0);
    void *second = malloc(60);
    ev.data = second;
    cr_assert_eq(inbox_push(in, &ev), -ENOBUFS, "60 + 60 bytes is over 100");
    free(second);
    cr_assert_eq(inbox_drain(in, out, 8), 1);
    free(out[0].data);
    ev.data = malloc(60);
    cr_assert_eq(inbox_push(in, &ev), 0, "room again once drained");
    inbox_free(in); /* frees what it still holds */
}
