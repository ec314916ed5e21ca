#include "inbox.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct bridge_inbox {
    pthread_mutex_t lock;
    inbox_event_t *ring; /* owned, capacity entries */
    size_t capacity, head, count, bytes, max_bytes;
    uint64_t dropped;
    int efd;
};

bridge_inbox_t *inbox_new(size_t capacity, size_t max_bytes)
{
    bridge_inbox_t *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    in->ring = calloc(capacity, sizeof(*in->ring));
    in->capacity = capacity;
    in->max_bytes = max_bytes;
    in->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!in->ring || in->efd < 0 || pthread_mutex_init(&in->lock, NULL)) {
        if (in->efd >= 0)
            close(in->efd);
        free(in->ring);
        free(in);
        return NULL;
    }
    return in;
}

void inbox_free(bridge_inbox_t *in)
{
    if (!in)
        return;
    for (size_t i = 0; i < in->count; i++)
        free(in->ring[(in->head + i) % in->capacity].data);
    pthread_mutex_destroy(&in->lock);
    close(in->efd);
    free(in->ring);
    free(in);
}

int inbox_fd(const bridge_inbox_t *in)
{
    return in->efd;
}

/*
 * The eventfd is written only when the inbox was empty: while events wait,
 * it is readable already, and the loop takes them all (up to its batch) at
 * each read. A write per event would cost a system call in Paho's thread
 * and a wake-up of the loop for each acknowledgement.
 */
int inbox_push(bridge_inbox_t *in, const inbox_event_t *ev)
{
    int rc = 0;
    bool wake = false;
    pthread_mutex_lock(&in->lock);
    if (in->count == in->capacity || in->bytes + ev->bytes > in->max_bytes) {
        in->dropped++;
        rc = -ENOBUFS;
    } else {
        in->ring[(in->head + in->count) % in->capacity] = *ev;
        wake = in->count++ == 0;
        in->bytes += ev->bytes;
    }
    pthread_mutex_unlock(&in->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t w = write(in->efd, &one, sizeof(one));
        (void)w; /* a full counter still leaves the fd readable */
    }
    return rc;
}

size_t inbox_drain(bridge_inbox_t *in, inbox_event_t *out, size_t max)
{
    uint64_t v;
    size_t n = 0;
    ssize_t r = read(in->efd, &v, sizeof(v));
    (void)r;
    pthread_mutex_lock(&in->lock);
    while (n < max && in->count) {
        in->bytes -= in->ring[in->head].bytes;
        out[n++] = in->ring[in->head];
        in->head = (in->head + 1) % in->capacity;
        in->count--;
    }
    if (in->count) {
        /* More than max were waiting: keep the fd readable for the next turn. */
        uint64_t one = 1;
        ssize_t w = write(in->efd, &one, sizeof(one));
        (void)w;
    }
    pthread_mutex_unlock(&in->lock);
    return n;
}

uint64_t inbox_dropped(bridge_inbox_t *in)
{
    pthread_mutex_lock(&in->lock);
    uint64_t d = in->dropped;
    pthread_mutex_unlock(&in->lock);
    return d;
}
