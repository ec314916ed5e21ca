/*
 * What listener.c (sockets, TLS, limits, timers) and relay.c (the MQTT
 * packets of one device connection) share. Not for other modules.
 */
#ifndef TANDEM_LISTENER_INT_H
#define TANDEM_LISTENER_INT_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stdint.h>

#include "listener.h"
#include "mapping.h"
#include "stream.h"

/* Credentials shared by the connections handshaken with them; freed with the last. */
typedef struct lcred {
    gnutls_certificate_credentials_t cred;
    unsigned refs;
} lcred_t;

/* A byte buffer read into from one side; NULL when empty. */
typedef struct lbuf {
    uint8_t *p;
    size_t len, cap;
} lbuf_t;

enum lconn_state {
    LC_HANDSHAKE, /* device TLS handshake */
    LC_CONNECT,   /* waiting for the device's CONNECT */
    LC_UPSTREAM,  /* CONNECT accepted; the upstream connection is being made */
    LC_RELAY,     /* both ways */
    LC_CLOSING,   /* what is queued to the device goes, then the connection closes */
};

enum up_state { UP_NONE, UP_CONNECTING, UP_HANDSHAKE, UP_OPEN, UP_CLOSED };

typedef struct relay relay_t;

typedef struct lconn {
    struct lconn *prev, *next;
    listener_t *l;
    enum lconn_state state;
    bool relayed;    /* counted as a relayed device (after its CONNECT) */
    bool dead;       /* to be freed once the callback is done */
    bool up_closing; /* the upstream side goes once what is queued to it has */
    int fd;
    tls_stream_t *dev;
    lcred_t *cred; /* a reference; NULL once released */
    unsigned dev_mask;
    lbuf_t din;
    char identity[MAP_IDENTITY_MAX + 1];
    bool anonymous;
    uint64_t deadline_ms;  /* of the current state; 0 for none */
    uint64_t last_rx_ms;   /* last packet from the device */
    uint64_t keepalive_ms; /* 1.5 x the keep-alive; 0 for none */

    int up_fd;
    enum up_state up_state;
    tls_stream_t *up;
    unsigned up_mask;
    lbuf_t uin;

    relay_t *r; /* the MQTT state, from the CONNECT on */
} lconn_t;

/* listener.c for relay.c */
const gw_config_t *listener_cfg(const listener_t *l);
listener_stats_t *listener_stats_mut(listener_t *l);
void listener_count(listener_t *l, const map_entry_t *e, enum listener_count what);
size_t listener_max_packet(const listener_t *l);
/* Relayed devices now, and whether one more may be. */
bool listener_room(const listener_t *l);
/* Queues bytes to the device / upstream. 0, or a negative errno code. */
int lconn_send_dev(lconn_t *c, const void *buf, size_t len);
int lconn_send_up(lconn_t *c, const void *buf, size_t len);
/* Starts the upstream connection (LC_UPSTREAM); the CONNECT is queued by then. 0 or error. */
int lconn_open_upstream(lconn_t *c);
/* The device's CONNECT was accepted: from now on it counts as a relayed connection. */
void lconn_relayed(lconn_t *c);
/*
 * Ends the connection: flush (what is queued to the device goes first, with a
 * bound in time), or at once. The upstream side is closed at once either way
 * (the broker then publishes the device's Will) unless up_flush, when what is
 * queued to it goes first (a DISCONNECT).
 */
void lconn_close(lconn_t *c, bool flush, bool up_flush);

/* relay.c */
/* The device's packets in c->din (from LC_CONNECT on). <0 when c was closed. */
int relay_device_input(lconn_t *c);
/* The broker's packets in c->uin. <0 when c was closed. */
int relay_upstream_input(lconn_t *c);
/* The upstream connection failed or timed out before its CONNACK: answer the device. */
void relay_upstream_failed(lconn_t *c);
/* Whether c's subscriptions and Will are all allowed by t. */
bool relay_allowed(const lconn_t *c, const map_table_t *t);

/*
 * Closes the device's connection, after a DISCONNECT with reason (an MQTT_RC_
 * code) when it speaks MQTT 5 (3.1.1 has none): what is queued for it still goes.
 */
void relay_disconnect(lconn_t *c, uint8_t reason);
void relay_free(relay_t *r);

#endif
