/*
 * The broker link: from mqtt.uri to a connected byte stream, on the loop.
 * The host name is resolved without blocking (glibc's getaddrinfo_a, polled
 * from a timer; an IP literal needs no lookup), each address is connected
 * to in turn without blocking, and for mqtts:// the TLS handshake is made
 * over tls/ streams with mqtt.ca (empty: the system trust store), the
 * client certificate, SNI (not for an IP literal) and the host name checked
 * when asked.
 *
 * When an attempt fails, the reason is said in words an operator can act
 * on: the name not resolved, the connection refused, timed out, the broker's
 * certificate not trusted by mqtt.ca, or not valid for the host name.
 *
 * Many links to one broker (the listener's, one per relayed device) share
 * what does not belong to one connection (mqtt_link_shared_t): the
 * credentials, loaded once, and the broker's addresses, looked up once.
 */
#ifndef TANDEM_MQTT_LINK_H
#define TANDEM_MQTT_LINK_H

#include <stdbool.h>
#include <stddef.h>

#include "ev.h"
#include "stream.h"

typedef struct mqtt_link mqtt_link_t;

/* Strings are copied by mqtt_link_new. */
typedef struct mqtt_link_config {
    const char *uri;      /* mqtt://host[:port] or mqtts://host[:port] */
    const char *ca;       /* PEM CA bundle for mqtts://; "" or NULL: the system trust store */
    const char *cert;     /* client certificate (PEM), "" or NULL for none */
    const char *key;      /* its key */
    bool verify_hostname; /* the broker's certificate must name the host */
    int timeout_ms;       /* for one attempt: lookup, connect, handshake; 0: 10 s */
} mqtt_link_config_t;

/*
 * The outcome of mqtt_link_open, from the loop: err 0 when the stream is
 * ready (connected, handshake done), else a negative errno code with why in
 * words: -EHOSTUNREACH the name was not resolved, -ECONNREFUSED, -ETIMEDOUT,
 * -EACCES the broker's certificate was refused, -EPROTO another TLS failure.
 * why lives until the next call on the link.
 */
typedef void mqtt_link_fn(void *data, int err, const char *why);

/*
 * A link for cfg on loop (borrowed, must outlive it). The credentials are
 * loaded here: NULL with the reason in err when they cannot be (or the URI
 * is not one). Each attempt looks the name up again.
 */
mqtt_link_t *mqtt_link_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, mqtt_link_fn *fn,
                           void *data, char *err, size_t errlen);
void mqtt_link_free(mqtt_link_t *l);

typedef struct mqtt_link_shared mqtt_link_shared_t;

/*
 * What the links made with mqtt_link_new_shared share: cfg's URI and
 * credentials (loaded here: NULL with the reason in err when they cannot
 * be), and the broker's addresses. The name is looked up at once, one
 * lookup at a time, and its answer serves every attempt until one finds that
 * none of the addresses takes a connection (the next attempt then looks it
 * up again). After a failed lookup, attempts within 5 s fail at once with its
 * words rather than asking again.
 */
mqtt_link_shared_t *mqtt_link_shared_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, char *err,
                                         size_t errlen);
/* Looks the name up again; the addresses known so far serve until it is done. */
void mqtt_link_shared_refresh(mqtt_link_shared_t *s);
/* The owner's reference goes; what the links still use goes with the last of them. */
void mqtt_link_shared_free(mqtt_link_shared_t *s);
/* "host:port", for logs. */
const char *mqtt_link_shared_peer(const mqtt_link_shared_t *s);

/* A link over s (which it references). NULL when out of memory. */
mqtt_link_t *mqtt_link_new_shared(mqtt_link_shared_t *s, mqtt_link_fn *fn, void *data);

/* Starts an attempt (closing what was open); the outcome comes to fn. 0, or -ENOMEM. */
int mqtt_link_open(mqtt_link_t *l);

/* Closes the connection or abandons the attempt; fn is not called for it. */
void mqtt_link_close(mqtt_link_t *l);

/*
 * Once fn said 0: the stream and its socket (owned by the link until
 * mqtt_link_close). The owner registers the socket with the loop itself
 * (ev_add_file replaces the link's registration).
 */
tls_stream_t *mqtt_link_stream(mqtt_link_t *l);
int mqtt_link_fd(const mqtt_link_t *l);

/* "host:port", for logs. */
const char *mqtt_link_peer(const mqtt_link_t *l);

#endif
