/*
 * The broker's name looked up without blocking the loop (for listener.c):
 * getaddrinfo_a, polled by the listener's timer. glibc's helper thread
 * writes only into the lookup, never into the gateway's state. Not for other
 * modules.
 */
#ifndef TANDEM_LISTENER_LOOKUP_H
#define TANDEM_LISTENER_LOOKUP_H

#include <sys/socket.h>

typedef struct lookup lookup_t;

/*
 * Starts looking host:port up (a TCP address). A literal address is done at
 * once. NULL when it cannot start (*err: a gai_strerror text).
 */
lookup_t *lookup_start(const char *host, int port, const char **err);

/*
 * 0 with the first address in *addr and *len once done; -EINPROGRESS while
 * under way; -EHOSTUNREACH when it failed (*err: why).
 */
int lookup_poll(lookup_t *q, struct sockaddr_storage *addr, socklen_t *len, const char **err);

/*
 * Frees q (NULL: nothing). One glibc still works on is kept until it is done
 * and freed by a later call of any of these functions.
 */
void lookup_free(lookup_t *q);

#endif
