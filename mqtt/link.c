/*
 * The broker link (see link.h).
 *
 * One timer per attempt polls the lookup (getaddrinfo_a runs it on a thread
 * of glibc's own that never touches Tandem's state; the loop only asks
 * gai_error whether it is done) and bounds the attempt. A lookup that is
 * still running when an attempt is abandoned is kept: the next attempt waits
 * for it rather than starting another.
 */
#include "link.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "log.h"

#define DEFAULT_TIMEOUT_MS 10000
/* How often a running lookup is asked whether it is done, ms. */
#define RESOLVE_POLL_MS 5

enum link_state { L_IDLE, L_RESOLVING, L_CONNECTING, L_HANDSHAKE, L_UP };

struct mqtt_link {
    ev_loop_t *loop; /* borrowed */
    mqtt_link_fn *fn;
    void *data;
    gw_uri_t uri;
    char peer[300];
    char *ca; /* owned copies, for messages */
    bool verify_hostname;
    int timeout_ms;
    gnutls_certificate_credentials_t cred; /* owned; NULL for mqtt:// */

    enum link_state state;
    uint64_t timer, deadline_ms;
    bool lookup_running; /* req below is glibc's until it is done */
    struct gaicb req;
    struct addrinfo hints;
    char port[8];
    struct addrinfo *addrs, *next_addr; /* owned (from the lookup or made for a literal) */
    struct sockaddr_storage literal;
    struct addrinfo literal_ai;
    int fd;
    tls_stream_t *stream; /* owned */
    int last_err;
    char why[512];
};

static void set_why(mqtt_link_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(mqtt_link_t *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->why, sizeof(l->why), fmt, ap);
    va_end(ap);
}

static int load_cred(mqtt_link_t *l, const mqtt_link_config_t *cfg, char *err, size_t errlen)
{
    if (gnutls_certificate_allocate_credentials(&l->cred) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = cfg->ca && *cfg->ca
                 ? gnutls_certificate_set_x509_trust_file(l->cred, cfg->ca, GNUTLS_X509_FMT_PEM)
                 : gnutls_certificate_set_x509_system_trust(l->cred);
    if (rc < 0) {
        snprintf(err, errlen, "cannot load the broker's CA %s (%s)",
                 cfg->ca && *cfg->ca ? cfg->ca : "(system store)", gnutls_strerror(rc));
        return -EINVAL;
    }
    if (cfg->cert && *cfg->cert) {
        rc = gnutls_certificate_set_x509_key_file2(l->cred, cfg->cert, cfg->key ? cfg->key : "",
                                                   GNUTLS_X509_FMT_PEM, NULL, 0);
        if (rc < 0) {
            snprintf(err, errlen, "cannot load %s and %s (%s)", cfg->cert, cfg->key,
                     gnutls_strerror(rc));
            return -EINVAL;
        }
    }
    return 0;
}

mqtt_link_t *mqtt_link_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, mqtt_link_fn *fn,
                           void *data, char *err, size_t errlen)
{
    mqtt_link_t *l = calloc(1, sizeof(*l));
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->loop = loop;
    l->fn = fn;
    l->data = data;
    l->fd = -1;
    l->verify_hostname = cfg->verify_hostname;
    l->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    if (!cfg->uri || gw_uri_parse(cfg->uri, &l->uri) < 0) {
        snprintf(err, errlen, "not an MQTT URI: %s", cfg->uri ? cfg->uri : "(none)");
        free(l);
        return NULL;
    }
    snprintf(l->peer, sizeof(l->peer), strchr(l->uri.host, ':') ? "[%s]:%d" : "%s:%d", l->uri.host,
             l->uri.port);
    l->ca = strdup(cfg->ca && *cfg->ca ? cfg->ca : "the system trust store");
    if (!l->ca || (l->uri.tls && load_cred(l, cfg, err, errlen) < 0)) {
        if (!l->ca)
            snprintf(err, errlen, "out of memory");
        mqtt_link_free(l);
        return NULL;
    }
    return l;
}

static void free_addrs(mqtt_link_t *l)
{
    if (l->addrs && l->addrs != &l->literal_ai)
        freeaddrinfo(l->addrs);
    l->addrs = l->next_addr = NULL;
}

static void close_socket(mqtt_link_t *l)
{
    tls_stream_free(l->stream);
    l->stream = NULL;
    if (l->fd >= 0) {
        ev_del_file(l->loop, l->fd);
        close(l->fd);
        l->fd = -1;
    }
}

void mqtt_link_close(mqtt_link_t *l)
{
    if (!l)
        return;
    if (l->state == L_UP && l->stream)
        tls_stream_bye(l->stream);
    close_socket(l);
    free_addrs(l);
    if (l->timer)
        ev_del_timer(l->loop, l->timer);
    l->timer = 0;
    l->state = L_IDLE;
}

void mqtt_link_free(mqtt_link_t *l)
{
    if (!l)
        return;
    mqtt_link_close(l);
    if (l->lookup_running) {
        /* glibc's thread holds req: wait for it (only when the link goes, never on the loop's way). */
        if (gai_cancel(&l->req) != EAI_CANCELED) {
            const struct gaicb *list[1] = { &l->req };
            while (gai_error(&l->req) == EAI_INPROGRESS)
                gai_suspend(list, 1, NULL);
        }
        if (l->req.ar_result)
            freeaddrinfo(l->req.ar_result);
    }
    if (l->cred)
        gnutls_certificate_free_credentials(l->cred);
    free(l->ca);
    free(l);
}

/* Ends the attempt with err (l->why set); fn may free or reopen the link. */
static void fail(mqtt_link_t *l, int err)
{
    mqtt_link_close(l);
    l->fn(l->data, err, l->why);
}

static void on_io(ev_loop_t *loop, int fd, unsigned mask, void *data);

/* The words for a certificate GnuTLS refused. */
static void certificate_refused(mqtt_link_t *l)
{
    unsigned status = gnutls_session_get_verify_cert_status(tls_stream_session(l->stream));
    gnutls_datum_t text = { 0 };
    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0);
    const char *detail = text.data ? (const char *)text.data : "refused";
    if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA))
        set_why(l, "the broker's certificate is not trusted by mqtt.ca %s (%s)", l->ca, detail);
    else if (status & GNUTLS_CERT_EXPIRED)
        set_why(l, "the broker's certificate has expired (%s)", detail);
    else if (status & GNUTLS_CERT_NOT_ACTIVATED)
        set_why(l, "the broker's certificate is not valid yet (%s)", detail);
    else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
        set_why(l, "the broker's certificate is not valid for the host name %s (%s)", l->uri.host,
                detail);
    else
        set_why(l, "the broker's certificate was refused (%s)", detail);
    gnutls_free(text.data);
}

static void try_next_address(mqtt_link_t *l);

static void handshake(mqtt_link_t *l)
{
    int rc = tls_stream_handshake(l->stream);
    if (rc == -EAGAIN) {
        ev_set_mask(l->loop, l->fd, tls_stream_want(l->stream));
        return;
    }
    if (rc == -EACCES) {
        certificate_refused(l);
        fail(l, -EACCES);
        return;
    }
    if (rc < 0) {
        set_why(l, "TLS handshake with %s failed (%s)", l->peer, tls_stream_error(l->stream));
        fail(l, -EPROTO);
        return;
    }
    l->state = L_UP;
    ev_del_timer(l->loop, l->timer);
    l->timer = 0;
    free_addrs(l);
    ev_set_mask(l->loop, l->fd, EV_READABLE);
    l->why[0] = '\0';
    l->fn(l->data, 0, l->why);
}

static void on_io(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    (void)loop;
    (void)fd;
    (void)mask;
    mqtt_link_t *l = data;
    if (l->state == L_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err == EINPROGRESS || err == EALREADY)
            return;
        if (err) {
            l->last_err = err;
            close_socket(l);
            try_next_address(l);
            return;
        }
        l->state = L_HANDSHAKE;
    }
    if (l->state == L_HANDSHAKE)
        handshake(l);
}

/* Connects to the next address of the lookup; reports the failure when none is left. */
static void try_next_address(mqtt_link_t *l)
{
    while (l->next_addr) {
        struct addrinfo *ai = l->next_addr;
        l->next_addr = ai->ai_next;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            l->last_err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            l->last_err = errno;
            close(fd);
            continue;
        }
        l->fd = fd;
        l->stream = tls_stream_client(fd, l->cred, l->uri.host, l->verify_hostname);
        if (!l->stream || ev_add_file(l->loop, fd, EV_WRITABLE, on_io, l) < 0) {
            set_why(l, "out of memory");
            fail(l, -ENOMEM);
            return;
        }
        l->state = L_CONNECTING;
        return;
    }
    int err = l->last_err ? l->last_err : EHOSTUNREACH;
    if (err == ECONNREFUSED)
        set_why(l, "connection refused by %s (is the broker running and listening there?)",
                l->peer);
    else
        set_why(l, "cannot connect to %s (%s)", l->peer, strerror(err));
    fail(l, -err);
}

static int64_t on_timer(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_link_t *l = data;
    uint64_t now = gw_now_ms();
    if (l->state == L_RESOLVING) {
        int64_t left = l->deadline_ms > now ? (int64_t)(l->deadline_ms - now) : 0;
        if (l->addrs) {          /* an IP literal */
            try_next_address(l); /* may end in fn, which may free the link */
            return left;
        }
        int rc = gai_error(&l->req);
        if (rc == EAI_INPROGRESS) {
            if (now < l->deadline_ms)
                return RESOLVE_POLL_MS;
            l->timer = 0;
            set_why(l, "timed out resolving the broker's host name %s", l->uri.host);
            fail(l, -ETIMEDOUT);
            return EV_NOMORE;
        }
        l->lookup_running = false;
        if (rc != 0) {
            l->timer = 0;
            set_why(l, "the broker's host name %s was not resolved (%s)", l->uri.host,
                    gai_strerror(rc));
            fail(l, -EHOSTUNREACH);
            return EV_NOMORE;
        }
        l->addrs = l->next_addr = l->req.ar_result;
        l->req.ar_result = NULL;
        try_next_address(l);
        return left;
    }
    if (now < l->deadline_ms)
        return (int64_t)(l->deadline_ms - now);
    l->timer = 0;
    if (l->state == L_CONNECTING)
        set_why(l, "timed out connecting to %s", l->peer);
    else
        set_why(l, "timed out in the TLS handshake with %s", l->peer);
    fail(l, -ETIMEDOUT);
    return EV_NOMORE;
}

/* The address of an IP literal, without a lookup. */
static bool literal(mqtt_link_t *l)
{
    struct sockaddr_in *v4 = (struct sockaddr_in *)&l->literal;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&l->literal;
    memset(&l->literal, 0, sizeof(l->literal));
    memset(&l->literal_ai, 0, sizeof(l->literal_ai));
    if (inet_pton(AF_INET, l->uri.host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)l->uri.port);
        l->literal_ai.ai_addrlen = sizeof(*v4);
    } else if (inet_pton(AF_INET6, l->uri.host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)l->uri.port);
        l->literal_ai.ai_addrlen = sizeof(*v6);
    } else {
        return false;
    }
    l->literal_ai.ai_family = l->literal.ss_family;
    l->literal_ai.ai_socktype = SOCK_STREAM;
    l->literal_ai.ai_addr = (struct sockaddr *)&l->literal;
    l->addrs = l->next_addr = &l->literal_ai;
    return true;
}

int mqtt_link_open(mqtt_link_t *l)
{
    mqtt_link_close(l);
    l->last_err = 0;
    l->deadline_ms = gw_now_ms() + (uint64_t)l->timeout_ms;
    /* An IP literal is connected to from the timer too, so that fn never runs from here. */
    if (!literal(l) && !l->lookup_running) {
        memset(&l->req, 0, sizeof(l->req));
        l->hints = (struct addrinfo){ .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
        snprintf(l->port, sizeof(l->port), "%d", l->uri.port);
        l->req.ar_name = l->uri.host;
        l->req.ar_service = l->port;
        l->req.ar_request = &l->hints;
        struct gaicb *list[1] = { &l->req };
        int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
        if (rc != 0)
            return rc == EAI_MEMORY ? -ENOMEM : -EAGAIN;
        l->lookup_running = true;
    }
    l->state = L_RESOLVING;
    l->timer = ev_add_timer(l->loop, l->addrs ? 0 : RESOLVE_POLL_MS, on_timer, l);
    return l->timer ? 0 : -ENOMEM;
}

tls_stream_t *mqtt_link_stream(mqtt_link_t *l)
{
    return l->state == L_UP ? l->stream : NULL;
}

int mqtt_link_fd(const mqtt_link_t *l)
{
    return l->state == L_UP ? l->fd : -1;
}

const char *mqtt_link_peer(const mqtt_link_t *l)
{
    return l->peer;
}
