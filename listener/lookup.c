/*
 * The broker's name, looked up off the loop (see lookup.h). A lookup that
 * could not be cancelled when freed waits on the list of abandoned ones
 * (reachable, so no leak is reported at exit) until glibc is done with it.
 */
#include "lookup.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lookup {
    struct gaicb cb;
    struct addrinfo hints;
    char host[256], port[16];
    struct addrinfo *literal; /* a literal address, taken at once */
    struct lookup *next;      /* in the abandoned list */
};

static lookup_t *abandoned;

static void destroy(lookup_t *q)
{
    if (q->cb.ar_result)
        freeaddrinfo(q->cb.ar_result);
    if (q->literal)
        freeaddrinfo(q->literal);
    free(q);
}

/* Frees the abandoned lookups that are done. */
static void reap(void)
{
    for (lookup_t **pp = &abandoned; *pp;) {
        lookup_t *q = *pp;
        if (gai_error(&q->cb) == EAI_INPROGRESS) {
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        destroy(q);
    }
}

lookup_t *lookup_start(const char *host, int port, const char **err)
{
    reap();
    lookup_t *q = calloc(1, sizeof(*q));
    if (!q) {
        *err = gai_strerror(EAI_MEMORY);
        return NULL;
    }
    snprintf(q->host, sizeof(q->host), "%s", host);
    snprintf(q->port, sizeof(q->port), "%d", port);
    q->hints.ai_socktype = SOCK_STREAM;
    q->hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICHOST;
    if (getaddrinfo(q->host, q->port, &q->hints, &q->literal) == 0)
        return q;
    q->literal = NULL;
    q->hints.ai_flags = AI_ADDRCONFIG;
    q->cb.ar_name = q->host;
    q->cb.ar_service = q->port;
    q->cb.ar_request = &q->hints;
    struct gaicb *list[1] = { &q->cb };
    struct sigevent none = { .sigev_notify = SIGEV_NONE };
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &none);
    if (rc != 0) {
        *err = gai_strerror(rc);
        free(q);
        return NULL;
    }
    return q;
}

int lookup_poll(lookup_t *q, struct sockaddr_storage *addr, socklen_t *len, const char **err)
{
    reap();
    const struct addrinfo *res = q->literal;
    if (!res) {
        int rc = gai_error(&q->cb);
        if (rc == EAI_INPROGRESS)
            return -EINPROGRESS;
        if (rc != 0 || !q->cb.ar_result) {
            *err = gai_strerror(rc ? rc : EAI_NONAME);
            return -EHOSTUNREACH;
        }
        res = q->cb.ar_result;
    }
    if (res->ai_addrlen > sizeof(*addr)) {
        *err = gai_strerror(EAI_FAMILY);
        return -EHOSTUNREACH;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    return 0;
}

void lookup_free(lookup_t *q)
{
    reap();
    if (!q)
        return;
    if (!q->literal && gai_cancel(&q->cb) == EAI_NOTCANCELED) {
        q->next = abandoned;
        abandoned = q;
        return;
    }
    destroy(q);
}
