/*
 * What listener.c (sockets, TLS, limits, timers) and relay.c (the MQTT
 * packets of one device connection) share. Not for other modules.
 */
#ifndef TANDEM_LISTENER_INT_H
#define TANDEM_LISTENER_INT_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "link.h"
#include "listener.h"
#include "mapping.h"
#include "presence.h"
#include "slots.h"
#include "stream.h"

/* Credentials shared by the connections handshaken with them; freed with the last. */
typedef struct lcred {
    gnutls_certificate_credentials_t cred;
    unsigned refs;
    time_t crl_next_update; /* mqtt_listener.crl's earliest next update; 0 for no CRL */
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

/* The upstream side: its link (mqtt/link.h) is making the connection, then it is open. */
enum up_state { UP_NONE, UP_CONNECTING, UP_OPEN, UP_CLOSED };

typedef struct relay relay_t;

typedef struct lconn {
    struct lconn *prev, *next;
    listener_t *l;
    enum lconn_state state;
    bool relayed;     /* counted as a relayed device (after its CONNECT) */
    bool dead;        /* to be freed once the callback is done */
    bool up_closing;  /* the upstream side goes once what is queued to it has */
    bool dev_gone;    /* the device side is broken or done: nothing more goes to it */
    bool established; /* the broker accepted the CONNECT */
    int fd;
    tls_stream_t *dev;
    lcred_t *cred; /* a reference; NULL once released */
    unsigned dev_mask;
    lbuf_t din;
    char identity[MAP_IDENTITY_MAX + 1];
    /* What a failed handshake is logged with: the certificate's CN, the cause. */
    char tried[MAP_IDENTITY_MAX + 1];
    const char *why; /* static text, NULL when not known */
    bool anonymous;
    uint64_t deadline_ms;  /* of the current state; 0 for none */
    uint64_t last_rx_ms;   /* last packet from the device */
    uint64_t keepalive_ms; /* 1.5 x the keep-alive; 0 for none */
    uint64_t pkt_since_ms; /* when the first byte of the packet in din came */

    /* Slots (slots.h): references to the table's entries, NULL when none. */
    slot_t *addr;  /* its source address */
    bool halfopen; /* in addr's list of connections in their handshake */
    struct lconn *h_prev, *h_next;
    slot_t *id;      /* its identity (anonymous: SLOT_ANON of its address) */
    bool id_counted; /* counted in id->relayed */
    slot_t *sess;    /* the identity whose session it uses, when it uses one */
    uint8_t sess_key[16];
    uint32_t sess_expiry; /* seconds the broker keeps the session after it; UINT32_MAX: ever */

    mqtt_link_t *link; /* the upstream connection, from LC_UPSTREAM on; NULL once closed */
    enum up_state up_state;
    tls_stream_t *up; /* the link's stream once open; NULL before */
    int up_fd;        /* its socket, -1 before */
    unsigned up_mask;
    lbuf_t uin;
    lbuf_t upq; /* what goes upstream once the link is open (UP_CONNECTING) */

    relay_t *r;               /* the MQTT state, from the CONNECT on */
    presence_dev_t *presence; /* its identity's presence while relayed; NULL when anonymous */
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
 * Before lconn_relayed: whether c's identity may have one more relayed
 * connection (mqtt_listener.max_connections_per_identity) and, when
 * persistent, one more broker session under client id cid (upstream's).
 * 0 (c then counts against both); -EUSERS over the connections, -EDQUOT over
 * the sessions (counted and logged here).
 */
int lconn_admit(lconn_t *c, const void *cid, size_t cidlen, bool persistent, uint32_t expiry_s);
/* The Session Expiry the broker will keep once c ends (a DISCONNECT may change it). */
void lconn_session_expiry(lconn_t *c, uint32_t expiry_s);
/*
 * The keep-alive c is held to, from the one the device asked for: never none
 * and at most LISTENER_KEEPALIVE_MAX. Returns what it is.
 */
uint16_t lconn_keepalive(lconn_t *c, uint16_t asked);
/*
 * Ends the connection: flush (what is queued to the device goes first, with a
 * bound in time), or not (the device side is gone). The upstream side is
 * closed at once (the broker then publishes the device's Will) unless
 * up_flush, when what is queued to it goes first (within
 * LISTENER_CLOSE_DRAIN_MS), then the connection closes.
 */
void lconn_close(lconn_t *c, bool flush, bool up_flush);

/* relay.c */
/* The device's packets in c->din (from LC_CONNECT on). <0 when c was closed. */
int relay_device_input(lconn_t *c);
/* The broker's packets in c->uin. <0 when c was closed. */
int relay_upstream_input(lconn_t *c);
/*
 * The upstream connection failed or timed out before its CONNACK: answer the
 * device, and log why (the link's words: mqtt/link.h).
 */
void relay_upstream_failed(lconn_t *c, const char *why);
/* Whether c's subscriptions and Will are all allowed by t. */
bool relay_allowed(const lconn_t *c, const map_table_t *t);

/*
 * Closes the device's connection, after a DISCONNECT with reason (an MQTT_RC_
 * code) when it speaks MQTT 5 (3.1.1 has none): what is queued for it still goes.
 */
void relay_disconnect(lconn_t *c, uint8_t reason);
void relay_free(relay_t *r);

#endif
