/*
 * The MQTT device listener (see listener.h): the listening socket, the
 * device connections' TLS, their identities and limits, their upstream
 * connections, and one timer for every deadline. What the MQTT packets say is
 * relay.c's.
 *
 * A connection's callbacks never free it while relay.c works on it: closing
 * marks it (lconn_close), and settle() frees it once the callback is done and
 * what had to go out has gone.
 */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "listener_int.h"
#include "log.h"
#include "packet.h"
#include "slots.h"
#include "tls.h"

/* How long a closing connection may take to send what is queued, ms. */
#define CLOSE_FLUSH_MS 2000
/* The timer's period, ms: deadlines are kept to within this. */
#define TICK_MS 250
/* Connections accepted per readiness of the listening socket. */
#define ACCEPT_BATCH 64
/* Reads per side per callback, so that one busy device does not hold the loop. */
#define READ_BATCH 16
/* Bytes read at a time into an input buffer. */
#define READ_CHUNK 4096

struct listener {
    ev_loop_t *loop;
    const gw_config_t *cfg; /* borrowed; a reload replaces it */
    listener_count_fn *count;
    void *count_arg;
    presence_t *presence; /* borrowed; NULL for none */
    int lfd;
    bool accepting;
    lcred_t *cred;          /* for new handshakes; a reference */
    int client_cert;        /* 0 none asked, 1 asked, 2 required */
    mqtt_link_shared_t *up; /* what the devices' upstream links share (mqtt.*) */
    bool accept_paused;     /* out of file descriptors: the listening socket rests until the tick */
    slots_t *slots;
    lconn_t *conns;
    size_t relayed, handshaking;
    uint64_t timer;
    listener_stats_t st;
};

/* ------------------------------------------------------------------ statistics */

#define FIELD(f, k, h, u)                                                                          \
    {                                                                                              \
        .name = #f, .help = h, .kind = STATS_##k, .unit = u, .type = STATS_U64,                    \
        .offset = offsetof(listener_stats_t, f)                                                    \
    }
#define FIELD_PROM(f, p, k, h, u)                                                                  \
    {                                                                                              \
        .name = #f, .prom = p, .help = h, .kind = STATS_##k, .unit = u, .type = STATS_U64,         \
        .offset = offsetof(listener_stats_t, f)                                                    \
    }
static const stats_field_t listener_fields[] = {
    FIELD(connections, GAUGE, "MQTT devices relayed to the broker now", NULL),
    FIELD(rejected, COUNTER,
          "MQTT device connections refused: limits, a Will topic not allowed, authentication",
          NULL),
    FIELD(denied_publish, COUNTER, "PUBLISH and Will topics refused by the identity policy", NULL),
    FIELD(denied_subscribe, COUNTER, "SUBSCRIBE filters refused by the identity policy", NULL),
    FIELD(accepted, COUNTER, "MQTT devices whose CONNECT was accepted and relayed", NULL),
    FIELD(handshaking, GAUGE, "MQTT device connections before their CONNECT was accepted", NULL),
    FIELD_PROM(bytes_in, "received", COUNTER, "Bytes of MQTT packets from devices", "bytes"),
    FIELD_PROM(bytes_out, "sent", COUNTER, "Bytes of MQTT packets to devices", "bytes"),
    FIELD(handshake_failures, COUNTER,
          "TLS handshakes of MQTT devices that failed (certificate, identity, protocol)", NULL),
    FIELD(timeouts, COUNTER,
          "MQTT device connections dropped for a handshake, CONNECT, "
          "keep-alive or packet that ran out",
          NULL),
    FIELD(malformed, COUNTER,
          "MQTT device connections closed for a malformed, too large or "
          "out-of-protocol packet",
          NULL),
    FIELD(upstream_failures, COUNTER,
          "Upstream broker connections of MQTT devices that failed or broke", NULL),
    FIELD(closed_at_reload, COUNTER,
          "MQTT device connections closed because a reload's mappings no longer allow them", NULL),
    FIELD(denied_deliver, COUNTER,
          "Messages from the broker to MQTT devices refused by the identity policy (acknowledged "
          "upstream, not relayed)",
          NULL),
    FIELD(retain_cleared, COUNTER,
          "Retain flags of MQTT devices' publishes and Wills cleared by a mapping with retain off",
          NULL),
    FIELD(broker_dropped, COUNTER,
          "Packets from the broker to MQTT devices not relayed: over the packet size bound or "
          "with more properties than the gateway holds",
          NULL),
    FIELD(evicted, COUNTER,
          "MQTT device connections in their handshake dropped to make room for a newer one", NULL),
    FIELD(over_identity_limit, COUNTER,
          "MQTT device CONNECTs refused by mqtt_listener.max_connections_per_identity", NULL),
    FIELD(
        sessions_refused, COUNTER,
        "MQTT device CONNECTs refused because their identity holds all the broker sessions it may",
        NULL),
    FIELD(accept_paused, COUNTER,
          "Times the MQTT listener stopped accepting for a while (out of file descriptors)", NULL),
};
const stats_section_t listener_section = { .json = "mqtt_listener",
                                           .prom = "mqtt_listener",
                                           .fields = listener_fields,
                                           .nfields = sizeof(listener_fields) /
                                                      sizeof(listener_fields[0]) };

const listener_stats_t *listener_stats(const listener_t *l)
{
    return &l->st;
}

listener_stats_t *listener_stats_mut(listener_t *l)
{
    return &l->st;
}

const gw_config_t *listener_cfg(const listener_t *l)
{
    return l->cfg;
}

size_t listener_max_packet(const listener_t *l)
{
    return (size_t)l->cfg->coap.max_payload + LISTENER_PACKET_EXTRA;
}

bool listener_room(const listener_t *l)
{
    return l->relayed < (size_t)l->cfg->mqtt_listener.max_connections;
}

void listener_count(listener_t *l, const map_entry_t *e, enum listener_count what)
{
    if (e && l->count)
        l->count(l->count_arg, map_entry_index(e), what);
}

/* ------------------------------------------------------------------ credentials */

static void cred_unref(lcred_t *c)
{
    if (c && --c->refs == 0) {
        gnutls_certificate_free_credentials(c->cred);
        free(c);
    }
}

/*
 * During the handshake, once the device's certificate is in: it must verify
 * against mqtt_listener.ca, be meant for a TLS client (no extended key usage,
 * or one with clientAuth: a server's certificate from the same CA is no
 * device), and its subject CN must be an identity (tandem.conf(5), Identities). Otherwise the
 * handshake fails with an alert (counted in handshake_failures).
 */
static int verify_device(gnutls_session_t session)
{
    lconn_t *c = gnutls_session_get_ptr(session);
    unsigned n = 0, status = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(session, &n);
    if (!certs || n == 0)
        return 0; /* none: refused by GnuTLS when one is required, else anonymous */
    char cn[MAP_IDENTITY_MAX * 2];
    bool cn_ok = tls_der_cn(certs[0].data, certs[0].size, cn, sizeof(cn)) == 0 &&
                 map_identity_ok(cn, strlen(cn));
    if (cn_ok)
        snprintf(c->tried, sizeof(c->tried), "%s", cn);
    int rc = gnutls_certificate_verify_peers2(session, &status);
    /* GnuTLS goes on with a CRL past its next update: refused here, as over DTLS. */
    if (rc >= 0 && c->cred && c->cred->crl_next_update && time(NULL) >= c->cred->crl_next_update)
        status |= GNUTLS_CERT_REVOCATION_DATA_SUPERSEDED;
    if (rc >= 0 && (status & (GNUTLS_CERT_REVOKED | GNUTLS_CERT_REVOCATION_DATA_SUPERSEDED))) {
        /* mqtt_listener.crl lists it, or has passed its next update. */
        c->why = status & GNUTLS_CERT_REVOKED ? "certificate revoked"
                                              : "mqtt_listener.crl is past its next update";
        gw_debug(TLS, "MQTT device certificate refused (%s: \"%s\")", c->why, c->tried);
        return -1;
    }
    if (rc < 0 || status) {
        gw_debug(TLS, "MQTT device certificate refused (%s)",
                 rc < 0 ? gnutls_strerror(rc) : "does not verify against mqtt_listener.ca");
        c->why = "not signed by the device CA";
        return -1;
    }
    if (tls_der_client_purpose(certs[0].data, certs[0].size) < 0) {
        gw_debug(TLS, "MQTT device certificate refused (its extended key usage has no clientAuth)");
        c->why = "not for client authentication";
        return -1;
    }
    if (!cn_ok) {
        gw_debug(TLS, "MQTT device certificate refused (its CN is no identity)");
        c->why = "certificate CN not acceptable";
        return -1;
    }
    memcpy(c->identity, cn, strlen(cn) + 1);
    return 0;
}

/* One line per failed handshake: the peer, the certificate's CN when known, the cause. */
static void log_handshake_failure(lconn_t *c, const char *why)
{
    char peer[INET6_ADDRSTRLEN + 8] = "?", host[INET6_ADDRSTRLEN] = "?";
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    const struct sockaddr *sa = NULL;
    if (getpeername(c->fd, (struct sockaddr *)&ss, &sslen) == 0) {
        sa = (const struct sockaddr *)&ss;
        bool v6 = ss.ss_family == AF_INET6;
        inet_ntop(ss.ss_family,
                  v6 ? (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                     : (void *)&((struct sockaddr_in *)&ss)->sin_addr,
                  host, sizeof(host));
        snprintf(peer, sizeof(peer), v6 ? "[%s]:%u" : "%s:%u", host,
                 ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                          : ((struct sockaddr_in *)&ss)->sin_port));
    }
    if (c->why)
        why = c->why;
    if (*c->tried)
        gw_log_peer(sa, GW_LOG_INFO, GW_GRP_TLS,
                    "MQTT device handshake failed from %s (identity \"%s\": %s)", peer, c->tried,
                    why);
    else
        gw_log_peer(sa, GW_LOG_INFO, GW_GRP_TLS, "MQTT device handshake failed from %s (%s)", peer,
                    why);
}

static lcred_t *cred_load(const gw_listener_config_t *lc)
{
    lcred_t *c = calloc(1, sizeof(*c));
    int rc;
    if (!c || gnutls_certificate_allocate_credentials(&c->cred) < 0) {
        free(c);
        return NULL;
    }
    c->refs = 1;
    rc = gnutls_certificate_set_x509_key_file2(c->cred, lc->cert, lc->key, GNUTLS_X509_FMT_PEM,
                                               NULL, 0);
    if (rc < 0) {
        gw_err(TLS, "mqtt_listener: cannot load %s and %s (%s)", lc->cert, lc->key,
               gnutls_strerror(rc));
        cred_unref(c);
        return NULL;
    }
    if (*lc->ca) {
        rc = gnutls_certificate_set_x509_trust_file(c->cred, lc->ca, GNUTLS_X509_FMT_PEM);
        if (rc <= 0) {
            gw_err(TLS, "mqtt_listener: cannot load the CA bundle %s (%s)", lc->ca,
                   rc < 0 ? gnutls_strerror(rc) : "no certificate");
            cred_unref(c);
            return NULL;
        }
    }
    if (*lc->crl) {
        rc = gnutls_certificate_set_x509_crl_file(c->cred, lc->crl, GNUTLS_X509_FMT_PEM);
        if (rc <= 0) {
            gw_err(TLS, "mqtt_listener: cannot load the CRL %s (%s)", lc->crl,
                   rc < 0 ? gnutls_strerror(rc) : "no CRL");
            cred_unref(c);
            return NULL;
        }
        if (tls_crl_next_update(lc->crl, &c->crl_next_update) < 0)
            c->crl_next_update = 0;
    }
    gnutls_certificate_set_verify_function(c->cred, verify_device);
    return c;
}

static int client_cert_mode(const gw_listener_config_t *lc)
{
    return lc->require_client_cert ? 2 : *lc->ca ? 1 : 0;
}

static void settle(lconn_t *c);

/* ------------------------------------------------------------------ connections */

static void on_dev(ev_loop_t *loop, int fd, unsigned mask, void *data);
static void on_up(ev_loop_t *loop, int fd, unsigned mask, void *data);

/* The upstream connection goes (its link closes the socket; a close_notify when it was open). */
static void close_upstream(lconn_t *c)
{
    mqtt_link_free(c->link);
    c->link = NULL;
    c->up = NULL;
    c->up_fd = -1;
    c->up_state = UP_CLOSED;
}

/* c no longer counts against its identity's relayed connections, nor in its presence (it is closing). */
static void unclaim(lconn_t *c)
{
    presence_end(c->l->presence, c->presence, "connection closed");
    c->presence = NULL;
    if (c->id_counted && c->id->relayed)
        c->id->relayed--;
    c->id_counted = false;
}

static void destroy(lconn_t *c)
{
    listener_t *l = c->l;
    unclaim(c);
    slots_halfopen_del(l->slots, c);
    if (c->sess)
        slots_session_release(l->slots, c->sess, c->sess_key, c->sess_expiry, c->established,
                              gw_now_ms());
    slots_put(l->slots, c->sess);
    slots_put(l->slots, c->id);
    slots_put(l->slots, c->addr);
    if (c->prev)
        c->prev->next = c->next;
    else
        l->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->relayed) {
        l->relayed--;
        l->st.connections = l->relayed;
    } else {
        l->handshaking--;
        l->st.handshaking = l->handshaking;
    }
    close_upstream(c);
    ev_del_file(l->loop, c->fd);
    tls_stream_free(c->dev);
    close(c->fd);
    relay_free(c->r);
    cred_unref(c->cred);
    free(c->din.p);
    free(c->uin.p);
    free(c->upq.p);
    free(c);
}

void lconn_close(lconn_t *c, bool flush, bool up_flush)
{
    unclaim(c);
    if (!flush)
        c->dev_gone = true;
    if (!up_flush || c->up_state != UP_OPEN)
        close_upstream(c);
    if (c->state == LC_CLOSING)
        return;
    c->state = LC_CLOSING;
    c->deadline_ms = gw_now_ms() + (c->up ? LISTENER_CLOSE_DRAIN_MS : CLOSE_FLUSH_MS);
    c->up_closing = true;
}

void lconn_relayed(lconn_t *c)
{
    listener_t *l = c->l;
    slots_halfopen_del(l->slots, c);
    c->relayed = true;
    l->handshaking--;
    l->relayed++;
    l->st.handshaking = l->handshaking;
    l->st.connections = l->relayed;
    l->st.accepted++;
    if (!c->anonymous) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        bool known = getpeername(c->fd, (struct sockaddr *)&ss, &len) == 0;
        c->presence =
            presence_begin(l->presence, c->identity, "mqtt", known ? (struct sockaddr *)&ss : NULL);
    }
}

void listener_set_presence(listener_t *l, presence_t *p)
{
    if (l)
        l->presence = p;
}

int lconn_send_dev(lconn_t *c, const void *buf, size_t len)
{
    if (c->dev_gone)
        return -EPIPE;
    c->l->st.bytes_out += len;
    int rc = tls_stream_write(c->dev, buf, len);
    if (rc < 0)
        lconn_close(c, false, true); /* the device is gone; what it sent still goes up */
    return rc;
}

int lconn_send_up(lconn_t *c, const void *buf, size_t len)
{
    if (c->up_state == UP_CONNECTING) {
        /* Kept until the link is open (the CONNECT): bounded by the packet size. */
        uint8_t *p = realloc(c->upq.p, c->upq.len + len);
        if (!p)
            return -ENOMEM;
        memcpy(p + c->upq.len, buf, len);
        c->upq.p = p;
        c->upq.len += len;
        c->upq.cap = c->upq.len;
        return 0;
    }
    if (!c->up)
        return -EPIPE;
    int rc = tls_stream_write(c->up, buf, len);
    if (rc < 0 && c->state == LC_UPSTREAM) {
        char why[300];
        snprintf(why, sizeof(why), "cannot send to %s (%s)", mqtt_link_peer(c->link),
                 tls_stream_error(c->up));
        close_upstream(c);
        relay_upstream_failed(c, why);
    } else if (rc < 0) {
        c->l->st.upstream_failures++;
        lconn_close(c, true, false);
    }
    return rc;
}

int lconn_admit(lconn_t *c, const void *cid, size_t cidlen, bool persistent, uint32_t expiry_s)
{
    listener_t *l = c->l;
    const char *who = c->anonymous ? "(anonymous)" : c->identity;
    slot_t *id = c->anonymous
                     ? slots_get(l->slots, SLOT_ANON, c->addr->key + 1, c->addr->keylen - 1)
                     : slots_get(l->slots, SLOT_IDENTITY, c->identity, strlen(c->identity));
    if (!id)
        return -ENOMEM;
    if (id->relayed >= (unsigned)l->cfg->mqtt_listener.max_connections_per_identity) {
        slots_put(l->slots, id);
        l->st.over_identity_limit++;
        gw_log_limited(GW_LOG_INFO, MQTT,
                       "device %s: CONNECT refused (mqtt_listener.max_connections_per_identity "
                       "reached)",
                       who);
        return -EUSERS;
    }
    /* Anonymous devices share one identity for sessions: their client ids are theirs alone. */
    slot_t *sess = c->anonymous ? slots_get(l->slots, SLOT_IDENTITY, "", 0) : id;
    if (!sess) {
        slots_put(l->slots, id);
        return -ENOMEM;
    }
    if (!c->anonymous)
        sess->refs++;
    uint8_t digest[32];
    bool used = false;
    int rc = gnutls_hash_fast(GNUTLS_DIG_SHA256, cid, cidlen, digest) < 0 ? -ENOMEM : 0;
    if (rc == 0)
        rc = slots_session_take(l->slots, sess, digest, persistent, LISTENER_SESSIONS_PER_IDENTITY,
                                gw_now_ms(), &used);
    if (rc < 0) {
        slots_put(l->slots, sess);
        slots_put(l->slots, id);
        if (rc == -EDQUOT) {
            l->st.sessions_refused++;
            gw_log_limited(GW_LOG_INFO, MQTT,
                           "device %s: CONNECT refused (its identity holds %d broker sessions "
                           "already)",
                           who, LISTENER_SESSIONS_PER_IDENTITY);
        }
        return rc;
    }
    if (used) {
        c->sess = sess;
        memcpy(c->sess_key, digest, sizeof(c->sess_key));
        c->sess_expiry = expiry_s;
    } else {
        slots_put(l->slots, sess);
    }
    c->id = id;
    c->id_counted = true;
    id->relayed++;
    return 0;
}

void lconn_session_expiry(lconn_t *c, uint32_t expiry_s)
{
    c->sess_expiry = expiry_s;
}

uint16_t lconn_keepalive(lconn_t *c, uint16_t asked)
{
    uint16_t k = asked == 0 || asked > LISTENER_KEEPALIVE_MAX ? LISTENER_KEEPALIVE_MAX : asked;
    c->keepalive_ms = (uint64_t)k * 1500;
    return k;
}

static void on_up(ev_loop_t *loop, int fd, unsigned mask, void *data);

/* The link's outcome: the device's CONNECT goes to the broker, or the device hears why not. */
static void on_link(void *data, int err, const char *why)
{
    lconn_t *c = data;
    char words[512];
    if (err < 0) {
        snprintf(words, sizeof(words), "%s", why); /* why goes with the link */
        close_upstream(c);
        relay_upstream_failed(c, words);
        settle(c);
        return;
    }
    c->up = mqtt_link_stream(c->link);
    c->up_fd = mqtt_link_fd(c->link);
    c->up_state = UP_OPEN;
    c->up_mask = EV_READABLE | EV_WRITABLE;
    int rc = ev_add_file(c->l->loop, c->up_fd, c->up_mask, on_up, c);
    if (rc == 0 && c->upq.len)
        rc = tls_stream_write(c->up, c->upq.p, c->upq.len);
    free(c->upq.p);
    c->upq = (lbuf_t){ 0 };
    if (rc < 0) {
        snprintf(words, sizeof(words), "cannot send the CONNECT to %s (%s)",
                 mqtt_link_peer(c->link),
                 rc == -ENOMEM ? "out of memory" : tls_stream_error(c->up));
        close_upstream(c);
        relay_upstream_failed(c, words);
    }
    settle(c);
}

int lconn_open_upstream(lconn_t *c)
{
    listener_t *l = c->l;
    c->state = LC_UPSTREAM;
    c->deadline_ms = gw_now_ms() + LISTENER_UPSTREAM_TIMEOUT_MS;
    c->link = mqtt_link_new_shared(l->up, on_link, c);
    int rc = c->link ? mqtt_link_open(c->link) : -ENOMEM;
    if (rc < 0) {
        close_upstream(c);
        return rc;
    }
    c->up_state = UP_CONNECTING; /* the link's outcome comes to on_link, never from here */
    return 0;
}

/* Grows b for one more read; false when out of memory. */
static bool reserve(lbuf_t *b)
{
    if (b->cap - b->len >= READ_CHUNK)
        return true;
    size_t cap = b->cap ? b->cap * 2 : READ_CHUNK;
    while (cap - b->len < READ_CHUNK)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool dev_may_read(const lconn_t *c)
{
    return (c->state == LC_CONNECT || c->state == LC_RELAY) &&
           tls_stream_buffered(c->dev) <= LISTENER_HIGH_WATER &&
           (!c->up || tls_stream_buffered(c->up) <= LISTENER_HIGH_WATER) &&
           c->din.len < listener_max_packet(c->l) + READ_CHUNK;
}

static bool up_may_read(const lconn_t *c)
{
    return c->up_state == UP_OPEN && c->state != LC_CLOSING &&
           tls_stream_buffered(c->dev) <= LISTENER_HIGH_WATER &&
           c->uin.len < listener_max_packet(c->l) + READ_CHUNK;
}

/* Reads the device while it may; hands each read to relay.c. <0 when c is closing. */
static int read_dev(lconn_t *c)
{
    for (int k = 0; k < READ_BATCH && dev_may_read(c); k++) {
        if (!reserve(&c->din)) {
            lconn_close(c, false, false);
            return -1;
        }
        ssize_t n = tls_stream_read(c->dev, c->din.p + c->din.len, c->din.cap - c->din.len);
        if (n == -EAGAIN)
            break;
        if (n <= 0) {
            /*
             * Gone without DISCONNECT: what it sent before still goes up, then
             * the upstream closes without DISCONNECT, so the broker sends the Will.
             */
            gw_log_limited(GW_LOG_DEBUG, MQTT, "device %s: connection closed (%s)",
                           c->anonymous ? "(anonymous)" : c->identity,
                           n == 0 ? "by the device" : tls_stream_error(c->dev));
            lconn_close(c, false, true);
            return -1;
        }
        if (c->din.len == 0)
            c->pkt_since_ms = gw_now_ms();
        c->din.len += (size_t)n;
        if (relay_device_input(c) < 0)
            return -1;
    }
    if (c->din.len == 0 && c->din.p) {
        free(c->din.p);
        c->din.p = NULL;
        c->din.cap = 0;
    }
    return 0;
}

static int read_up(lconn_t *c)
{
    for (int k = 0; k < READ_BATCH && up_may_read(c); k++) {
        if (!reserve(&c->uin)) {
            lconn_close(c, false, false);
            return -1;
        }
        ssize_t n = tls_stream_read(c->up, c->uin.p + c->uin.len, c->uin.cap - c->uin.len);
        if (n == -EAGAIN)
            break;
        if (n <= 0) {
            gw_log_limited(GW_LOG_INFO, MQTT, "broker closed the connection of device %s (%s)",
                           c->anonymous ? "(anonymous)" : c->identity,
                           n == 0 ? "end of stream" : tls_stream_error(c->up));
            lconn_close(c, true, false);
            return -1;
        }
        c->uin.len += (size_t)n;
        if (relay_upstream_input(c) < 0)
            return -1;
    }
    if (c->uin.len == 0 && c->uin.p) {
        free(c->uin.p);
        c->uin.p = NULL;
        c->uin.cap = 0;
    }
    return 0;
}

/* Sends what is queued both ways; a broken side closes the connection. */
static void flush_both(lconn_t *c)
{
    int rc = c->dev_gone ? 0 : tls_stream_flush(c->dev);
    if (rc < 0 && rc != -EAGAIN)
        lconn_close(c, false, true); /* what is queued upstream still goes */
    if (c->up && c->up_state == UP_OPEN) {
        rc = tls_stream_flush(c->up);
        if (rc < 0 && rc != -EAGAIN) {
            c->l->st.upstream_failures++;
            lconn_close(c, true, false);
        }
    }
}

/*
 * After a callback: what waited for room goes on (input already read, bytes
 * GnuTLS holds), the masks follow, and a finished connection is freed.
 */
static void settle(lconn_t *c)
{
    listener_t *l = c->l;
    for (int round = 0; round < 4 && !c->dead && c->state != LC_CLOSING; round++) {
        size_t before = c->din.len + c->uin.len + tls_stream_buffered(c->dev) +
                        (c->up ? tls_stream_buffered(c->up) : 0);
        if ((c->din.len && relay_device_input(c) < 0) ||
            (c->uin.len && relay_upstream_input(c) < 0))
            break;
        bool more = (dev_may_read(c) && tls_stream_pending(c->dev)) ||
                    (up_may_read(c) && tls_stream_pending(c->up));
        if (more && (read_dev(c) < 0 || (c->up && read_up(c) < 0)))
            break;
        flush_both(c);
        size_t after = c->din.len + c->uin.len + tls_stream_buffered(c->dev) +
                       (c->up ? tls_stream_buffered(c->up) : 0);
        if (!more && after == before)
            break;
    }
    if (c->state == LC_CLOSING && !c->dead) {
        flush_both(c);
        if (c->link && (c->up_state != UP_OPEN || tls_stream_buffered(c->up) == 0))
            close_upstream(c); /* with a close_notify when it was open */
        if (!c->up && (c->dev_gone || tls_stream_buffered(c->dev) == 0)) {
            if (!c->dev_gone)
                tls_stream_bye(c->dev);
            c->dead = true;
        }
    }
    if (c->dead) {
        destroy(c);
        return;
    }
    unsigned dm = tls_stream_want(c->dev);
    if (c->dev_gone) {
        dm = 0; /* waits only for what goes upstream */
    } else if (c->state != LC_HANDSHAKE) {
        dm = dm & EV_WRITABLE;
        if (tls_stream_buffered(c->dev))
            dm |= EV_WRITABLE;
        if (dev_may_read(c))
            dm |= EV_READABLE;
    }
    if (dm != c->dev_mask && ev_set_mask(l->loop, c->fd, dm) == 0)
        c->dev_mask = dm;
    if (c->up) {
        unsigned um = tls_stream_want(c->up) & EV_WRITABLE;
        if (tls_stream_buffered(c->up))
            um |= EV_WRITABLE;
        if (up_may_read(c))
            um |= EV_READABLE;
        if (um != c->up_mask && ev_set_mask(l->loop, c->up_fd, um) == 0)
            c->up_mask = um;
    }
}

/* The device's handshake is done: its identity, or anonymous. false when refused. */
static bool identify(lconn_t *c)
{
    gnutls_session_t s = tls_stream_session(c->dev);
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
    if (!certs || n == 0) {
        if (c->l->client_cert == 2)
            return false;
        c->anonymous = true;
        c->identity[0] = '\0';
        return true;
    }
    /* verify_device() checked the certificate and wrote its CN during the handshake. */
    return c->identity[0] != '\0';
}

static void on_dev(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    lconn_t *c = data;
    (void)loop, (void)fd;
    if (c->state == LC_HANDSHAKE) {
        int rc = tls_stream_handshake(c->dev);
        if (rc == -EAGAIN) {
            settle(c);
            return;
        }
        if (rc < 0 || !identify(c)) {
            c->l->st.handshake_failures++;
            log_handshake_failure(c, rc < 0 ? tls_stream_error(c->dev) : "no client certificate");
            c->dead = true;
            settle(c);
            return;
        }
        gw_log_limited(GW_LOG_DEBUG, MQTT, "device %s: TLS handshake done",
                       c->anonymous ? "(anonymous)" : c->identity);
        c->state = LC_CONNECT;
        mask |= EV_READABLE;
    }
    if ((mask & EV_WRITABLE) || tls_stream_buffered(c->dev))
        flush_both(c);
    if (!c->dead && (mask & EV_READABLE))
        read_dev(c);
    settle(c);
}

static void on_up(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    lconn_t *c = data;
    (void)loop, (void)fd;
    if (mask & EV_WRITABLE)
        flush_both(c);
    if (!c->dead && c->up && (mask & EV_READABLE))
        read_up(c);
    settle(c);
}

/*
 * The key of a source address for the per-address bound: an IPv4 address
 * (IPv4-mapped ones included) whole, an IPv6 address by its /64, as one host
 * usually holds a whole /64. Its length.
 */
static size_t addr_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
    if (ss->ss_family == AF_INET) {
        memcpy(key, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return 4;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            memcpy(key, a->s6_addr + 12, 4);
            return 4;
        }
        memcpy(key, a->s6_addr, 8);
        return 8;
    }
    return 0;
}

/* Drops a connection still in its handshake to make room for a newer one. */
static void evict(listener_t *l, lconn_t *c, const char *why)
{
    l->st.evicted++;
    gw_log_limited(GW_LOG_INFO, MQTT,
                   "mqtt_listener: a connection in its handshake dropped for a newer one (%s)",
                   why);
    destroy(c);
}

/*
 * Out of file descriptors (or memory): the listening socket, level-triggered,
 * would wake the loop at once again, so it rests until the next tick.
 */
static void pause_accepting(listener_t *l, int err)
{
    l->st.accept_paused++;
    gw_log_limited(GW_LOG_WARNING, MQTT, "mqtt_listener: cannot accept (%s); paused for %d ms",
                   strerror(err), TICK_MS);
    if (ev_set_mask(l->loop, l->lfd, 0) == 0)
        l->accept_paused = true;
}

static void on_accept(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    listener_t *l = data;
    (void)mask;
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof(ss);
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                pause_accepting(l, errno);
            return;
        }
        uint8_t key[16];
        slot_t *a = l->accepting ? slots_get(l->slots, SLOT_ADDR, key, addr_key(&ss, key)) : NULL;
        if (!a) {
            close(cfd);
            continue;
        }
        if (a->halfopen >= LISTENER_HANDSHAKE_PER_ADDR) {
            evict(l, a->oldest, "too many from one address");
        } else if (l->handshaking >=
                   (size_t)l->cfg->mqtt_listener.max_connections + LISTENER_HANDSHAKE_EXTRA) {
            lconn_t *victim = slots_halfopen_victim(l->slots);
            if (victim)
                evict(l, victim, "too many in their handshake");
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        lconn_t *c = calloc(1, sizeof(*c));
        if (c)
            c->dev = tls_stream_server(cfd, l->cred->cred, l->client_cert);
        if (!c || !c->dev || ev_add_file(loop, cfd, EV_READABLE, on_dev, c) < 0) {
            if (c)
                tls_stream_free(c->dev);
            free(c);
            close(cfd);
            slots_put(l->slots, a);
            continue;
        }
        gnutls_session_set_ptr(tls_stream_session(c->dev), c);
        c->l = l;
        c->fd = cfd;
        c->up_fd = -1;
        c->dev_mask = EV_READABLE;
        c->cred = l->cred;
        l->cred->refs++;
        c->state = LC_HANDSHAKE;
        c->deadline_ms = gw_now_ms() + LISTENER_CONNECT_TIMEOUT_MS;
        c->addr = a;
        slots_halfopen_add(l->slots, a, c);
        c->next = l->conns;
        if (l->conns)
            l->conns->prev = c;
        l->conns = c;
        l->handshaking++;
        l->st.handshaking = l->handshaking;
    }
}

/* Deadlines: handshake and CONNECT, the upstream connection, keep-alive, closing. */
static int64_t on_tick(ev_loop_t *loop, uint64_t id, void *data)
{
    listener_t *l = data;
    uint64_t now = gw_now_ms();
    (void)loop, (void)id;
    if (l->accept_paused && l->lfd >= 0 && l->accepting &&
        ev_set_mask(l->loop, l->lfd, EV_READABLE) == 0)
        l->accept_paused = false;
    for (lconn_t *c = l->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == LC_RELAY) {
            /* A packet waiting for room upstream is not the device's delay. */
            if (c->din.len && !dev_may_read(c))
                c->pkt_since_ms = now;
            bool silent = c->keepalive_ms && now - c->last_rx_ms > c->keepalive_ms;
            /* The packet in din began with the read that found din empty, or with the last one done. */
            uint64_t began = c->pkt_since_ms > c->last_rx_ms ? c->pkt_since_ms : c->last_rx_ms;
            bool stalled = c->din.len && now - began > LISTENER_PACKET_TIMEOUT_MS;
            if (silent || stalled) {
                l->st.timeouts++;
                gw_log_limited(GW_LOG_INFO, MQTT, "device %s: %s; closed",
                               c->anonymous ? "(anonymous)" : c->identity,
                               silent ? "silent past its keep-alive"
                                      : "a packet unfinished past its deadline");
                relay_disconnect(c, MQTT_RC_KEEPALIVE_TIMEOUT);
                settle(c);
            }
            continue;
        }
        if (!c->deadline_ms || now < c->deadline_ms)
            continue;
        if (c->state == LC_UPSTREAM) {
            /* The device gets its CONNACK (0x88, 3.1.1: 0x03) while the connection closes. */
            char why[400];
            snprintf(why, sizeof(why), "%s %s within %d s",
                     c->up ? "no CONNACK from" : "timed out connecting to",
                     mqtt_link_shared_peer(l->up), LISTENER_UPSTREAM_TIMEOUT_MS / 1000);
            close_upstream(c);
            relay_upstream_failed(c, why);
        } else {
            if (c->state != LC_CLOSING) {
                l->st.timeouts++;
                gw_log_limited(GW_LOG_INFO, MQTT, "MQTT device: no %s within %d s; closed",
                               c->state == LC_HANDSHAKE ? "TLS handshake" : "CONNECT",
                               LISTENER_CONNECT_TIMEOUT_MS / 1000);
            }
            c->dead = true;
        }
        settle(c);
    }
    return TICK_MS;
}

/* ------------------------------------------------------------------ life cycle */

static int bind_socket(const gw_listener_config_t *lc)
{
    struct sockaddr_storage ss = { 0 };
    socklen_t len;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET6, lc->bind, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)lc->port);
        len = sizeof(*s6);
    } else if (inet_pton(AF_INET, lc->bind, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)lc->port);
        len = sizeof(*s4);
    } else {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* "::" takes IPv4 too, as the CoAP side does. */
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 512) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

listener_t *listener_new(ev_loop_t *loop, const gw_config_t *cfg, listener_count_fn *count,
                         void *arg)
{
    const gw_listener_config_t *lc = &cfg->mqtt_listener;
    listener_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->loop = loop;
    l->cfg = cfg;
    l->count = count;
    l->count_arg = arg;
    l->lfd = -1;
    mqtt_link_config_t up = { .uri = cfg->mqtt.uri,
                              .ca = cfg->mqtt.ca,
                              .cert = cfg->mqtt.cert,
                              .key = cfg->mqtt.key,
                              .verify_hostname = cfg->mqtt.verify_hostname,
                              .timeout_ms = LISTENER_UPSTREAM_TIMEOUT_MS };
    char err[600];
    l->up = mqtt_link_shared_new(loop, &up, err, sizeof(err)); /* the lookup starts here */
    if (!l->up)
        gw_err(TLS, "mqtt_listener: %s", err);
    if (!l->up || !(l->cred = cred_load(lc))) {
        listener_free(l);
        return NULL;
    }
    l->client_cert = client_cert_mode(lc);
    if (!(l->slots = slots_new())) {
        listener_free(l);
        return NULL;
    }
    l->lfd = bind_socket(lc);
    if (l->lfd < 0) {
        gw_err(MQTT, "cannot bind the MQTT listener to [%s]:%d (%s)", lc->bind, lc->port,
               strerror(errno));
        listener_free(l);
        return NULL;
    }
    if (ev_add_file(loop, l->lfd, EV_READABLE, on_accept, l) < 0 ||
        !(l->timer = ev_add_timer(loop, TICK_MS, on_tick, l))) {
        gw_err(MQTT, "cannot register the MQTT listener (out of memory)");
        listener_free(l);
        return NULL;
    }
    l->accepting = true;
    gw_info(MQTT, "listening for MQTT devices over TLS on [%s]:%d (%s)", lc->bind, lc->port,
            lc->require_client_cert ? "client certificate required" : "anonymous devices allowed");
    return l;
}

void listener_shutdown(listener_t *l)
{
    if (!l)
        return;
    l->accepting = false;
    if (l->lfd >= 0) {
        ev_del_file(l->loop, l->lfd);
        close(l->lfd);
        l->lfd = -1;
    }
    while (l->conns)
        destroy(l->conns);
}

void listener_free(listener_t *l)
{
    if (!l)
        return;
    while (l->conns)
        destroy(l->conns);
    if (l->lfd >= 0) {
        ev_del_file(l->loop, l->lfd);
        close(l->lfd);
    }
    if (l->timer)
        ev_del_timer(l->loop, l->timer);
    slots_free(l->slots);
    cred_unref(l->cred);
    mqtt_link_shared_free(l->up);
    free(l);
}

int listener_reload_prepare(const gw_config_t *next, listener_cred_t **cred)
{
    *cred = cred_load(&next->mqtt_listener);
    return *cred ? 0 : -EINVAL;
}

void listener_cred_free(listener_cred_t *cred)
{
    cred_unref(cred);
}

void listener_reload_commit(listener_t *l, const gw_config_t *next, listener_cred_t *cred)
{
    cred_unref(l->cred);
    l->cred = cred;
    l->client_cert = client_cert_mode(&next->mqtt_listener);
    l->cfg = next;
    /* mqtt.* take a restart; the name is looked up again, the addresses known serving meanwhile. */
    mqtt_link_shared_refresh(l->up);
    size_t closed = 0;
    for (lconn_t *c = l->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->state == LC_CLOSING || relay_allowed(c, next->maps))
            continue;
        l->st.closed_at_reload++;
        closed++;
        gw_info(MQTT, "device %s: its subscriptions or Will are no longer allowed; closed",
                c->anonymous ? "(anonymous)" : c->identity);
        relay_disconnect(c, MQTT_RC_ADMIN_ACTION);
        settle(c);
    }
    if (closed)
        gw_info(MQTT, "reload closed %zu MQTT device connection%s", closed, closed == 1 ? "" : "s");
}
