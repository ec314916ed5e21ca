/*
 * The broker link (see link.h).
 *
 * The lookup is the shared part's (mqtt_link_shared_t): getaddrinfo_a runs
 * it on a thread of glibc's own that never touches Tandem's state, and one
 * timer of the shared part asks gai_error whether it is done, then wakes the
 * links waiting for it. Each link has one timer for its attempt, which
 * bounds it. A lookup that is still running when an attempt is abandoned is
 * kept: the next attempt waits for it rather than starting another. One
 * that glibc cannot cancel when the shared part goes waits on the list of
 * abandoned lookups (reachable, so no leak is reported at exit) until it is
 * done: freeing never waits for a name server. The addresses are counted
 * references, so that a new answer does not pull them from under a link
 * still trying them.
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
/* A failed lookup of shared links is not started again before this, ms. */
#define RESOLVE_RETRY_MS 5000

enum link_state { L_IDLE, L_RESOLVING, L_CONNECTING, L_HANDSHAKE, L_UP };

/* The addresses of one lookup (or of an IP literal), counted. */
typedef struct addrs {
    unsigned refs;
    struct addrinfo *ai; /* glibc's, or &lit */
    bool literal;
    struct sockaddr_storage ss;
    struct addrinfo lit;
} addrs_t;

/* One lookup, owned by the shared part, or by the abandoned list once that has gone. */
typedef struct lookup {
    struct gaicb req; /* glibc's until it is done */
    struct addrinfo hints;
    char host[256], port[8];
    struct lookup *next; /* in the abandoned list */
} lookup_t;

static lookup_t *abandoned;

struct mqtt_link_shared {
    unsigned refs; /* the owner's and one per link */
    ev_loop_t *loop;
    gw_uri_t uri;
    char peer[300];
    char *ca; /* for messages */
    bool verify_hostname;
    bool keep; /* an answer serves later attempts (shared links) */
    int timeout_ms;
    gnutls_certificate_credentials_t cred; /* NULL for mqtt:// */

    addrs_t *addrs;   /* the known addresses (a reference); NULL when none */
    lookup_t *lookup; /* under way; NULL when none */
    uint64_t poll_timer;
    unsigned started, done;  /* lookups started, and finished */
    uint64_t retry_after_ms; /* keep: after a failed lookup */
    char why[512];           /* why the last lookup failed */
    mqtt_link_t *waiting;    /* links whose attempt waits for the lookup */
};

struct mqtt_link {
    ev_loop_t *loop; /* borrowed */
    mqtt_link_shared_t *s;
    mqtt_link_fn *fn;
    void *data;

    enum link_state state;
    uint64_t timer, deadline_ms;
    unsigned wait_for;            /* L_RESOLVING without set: the lookup it waits for */
    mqtt_link_t *w_prev, *w_next; /* in s->waiting */
    bool in_waiting;
    addrs_t *set; /* a reference while the attempt uses it */
    struct addrinfo *next_addr;
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

static int load_cred(mqtt_link_shared_t *s, const mqtt_link_config_t *cfg, char *err, size_t errlen)
{
    if (gnutls_certificate_allocate_credentials(&s->cred) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = cfg->ca && *cfg->ca
                 ? gnutls_certificate_set_x509_trust_file(s->cred, cfg->ca, GNUTLS_X509_FMT_PEM)
                 : gnutls_certificate_set_x509_system_trust(s->cred);
    if (rc < 0) {
        snprintf(err, errlen, "cannot load the broker's CA %s (%s)",
                 cfg->ca && *cfg->ca ? cfg->ca : "(system store)", gnutls_strerror(rc));
        return -EINVAL;
    }
    if (cfg->cert && *cfg->cert) {
        rc = gnutls_certificate_set_x509_key_file2(s->cred, cfg->cert, cfg->key ? cfg->key : "",
                                                   GNUTLS_X509_FMT_PEM, NULL, 0);
        if (rc < 0) {
            snprintf(err, errlen, "cannot load %s and %s (%s)", cfg->cert, cfg->key,
                     gnutls_strerror(rc));
            return -EINVAL;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ addresses */

static void addrs_unref(addrs_t *a)
{
    if (!a || --a->refs)
        return;
    if (!a->literal && a->ai)
        freeaddrinfo(a->ai);
    free(a);
}

/* The address of an IP literal, without a lookup; NULL when host is a name (or out of memory). */
static addrs_t *literal(const gw_uri_t *uri)
{
    struct sockaddr_storage ss = { 0 };
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;
    if (inet_pton(AF_INET, uri->host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)uri->port);
        len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, uri->host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)uri->port);
        len = sizeof(*v6);
    } else {
        return NULL;
    }
    addrs_t *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->refs = 1;
    a->literal = true;
    a->ss = ss;
    a->lit.ai_family = ss.ss_family;
    a->lit.ai_socktype = SOCK_STREAM;
    a->lit.ai_addrlen = len;
    a->lit.ai_addr = (struct sockaddr *)&a->ss;
    a->ai = &a->lit;
    return a;
}

static bool is_literal(const gw_uri_t *uri)
{
    uint8_t buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, uri->host, buf) == 1 || inet_pton(AF_INET6, uri->host, buf) == 1;
}

static void waiting_del(mqtt_link_t *l)
{
    if (!l->in_waiting)
        return;
    if (l->w_prev)
        l->w_prev->w_next = l->w_next;
    else
        l->s->waiting = l->w_next;
    if (l->w_next)
        l->w_next->w_prev = l->w_prev;
    l->w_prev = l->w_next = NULL;
    l->in_waiting = false;
}

static void lookup_destroy(lookup_t *q)
{
    if (q->req.ar_result)
        freeaddrinfo(q->req.ar_result);
    free(q);
}

/* Frees the abandoned lookups that are done. */
static void reap(void)
{
    for (lookup_t **pp = &abandoned; *pp;) {
        lookup_t *q = *pp;
        if (gai_error(&q->req) == EAI_INPROGRESS) {
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        lookup_destroy(q);
    }
}

/* The lookup is done: its answer becomes the known addresses, and the links waiting for it wake. */
static int64_t on_lookup_poll(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_link_shared_t *s = data;
    lookup_t *q = s->lookup;
    int rc = gai_error(&q->req);
    if (rc == EAI_INPROGRESS)
        return RESOLVE_POLL_MS;
    s->poll_timer = 0;
    s->lookup = NULL;
    s->done = s->started;
    addrs_t *a = rc == 0 ? calloc(1, sizeof(*a)) : NULL;
    if (a) {
        a->refs = 1;
        a->ai = q->req.ar_result;
        q->req.ar_result = NULL;
        addrs_unref(s->addrs);
        s->addrs = a;
    } else {
        snprintf(s->why, sizeof(s->why), "the broker's host name %s was not resolved (%s)",
                 s->uri.host, rc == 0 ? "out of memory" : gai_strerror(rc));
        if (s->keep)
            s->retry_after_ms = gw_now_ms() + RESOLVE_RETRY_MS;
    }
    lookup_destroy(q);
    while (s->waiting) {
        mqtt_link_t *l = s->waiting;
        waiting_del(l);
        if (l->timer)
            ev_set_timer(s->loop, l->timer, 0);
    }
    return EV_NOMORE;
}

/* Starts a lookup of the broker's name. 0, or a negative errno code. */
static int start_lookup(mqtt_link_shared_t *s)
{
    reap();
    if (s->lookup)
        return 0;
    lookup_t *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->hints = (struct addrinfo){ .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
    snprintf(q->host, sizeof(q->host), "%s", s->uri.host);
    snprintf(q->port, sizeof(q->port), "%d", s->uri.port);
    q->req.ar_name = q->host;
    q->req.ar_service = q->port;
    q->req.ar_request = &q->hints;
    s->poll_timer = ev_add_timer(s->loop, RESOLVE_POLL_MS, on_lookup_poll, s);
    if (!s->poll_timer) {
        free(q);
        return -ENOMEM;
    }
    struct gaicb *list[1] = { &q->req };
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
    if (rc != 0) {
        ev_del_timer(s->loop, s->poll_timer);
        s->poll_timer = 0;
        free(q);
        return rc == EAI_MEMORY ? -ENOMEM : -EAGAIN;
    }
    s->lookup = q;
    s->started++;
    return 0;
}

/* ------------------------------------------------------------------ the shared part */

static mqtt_link_shared_t *shared_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, bool keep,
                                      char *err, size_t errlen)
{
    mqtt_link_shared_t *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->refs = 1;
    s->loop = loop;
    s->keep = keep;
    s->verify_hostname = cfg->verify_hostname;
    s->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    if (!cfg->uri || gw_uri_parse(cfg->uri, &s->uri) < 0) {
        snprintf(err, errlen, "not an MQTT URI: %s", cfg->uri ? cfg->uri : "(none)");
        free(s);
        return NULL;
    }
    snprintf(s->peer, sizeof(s->peer), strchr(s->uri.host, ':') ? "[%s]:%d" : "%s:%d", s->uri.host,
             s->uri.port);
    s->ca = strdup(cfg->ca && *cfg->ca ? cfg->ca : "the system trust store");
    if (!s->ca || (is_literal(&s->uri) && !(s->addrs = literal(&s->uri)))) {
        snprintf(err, errlen, "out of memory");
        mqtt_link_shared_free(s);
        return NULL;
    }
    if (s->uri.tls && load_cred(s, cfg, err, errlen) < 0) {
        mqtt_link_shared_free(s);
        return NULL;
    }
    return s;
}

mqtt_link_shared_t *mqtt_link_shared_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, char *err,
                                         size_t errlen)
{
    mqtt_link_shared_t *s = shared_new(loop, cfg, true, err, errlen);
    if (s && !s->addrs)
        start_lookup(s); /* a failure to start is tried again at the first attempt */
    return s;
}

void mqtt_link_shared_refresh(mqtt_link_shared_t *s)
{
    if (s && !is_literal(&s->uri))
        start_lookup(s);
}

const char *mqtt_link_shared_peer(const mqtt_link_shared_t *s)
{
    return s->peer;
}

void mqtt_link_shared_free(mqtt_link_shared_t *s)
{
    if (!s || --s->refs)
        return;
    if (s->poll_timer)
        ev_del_timer(s->loop, s->poll_timer);
    if (s->lookup) {
        /* glibc's thread holds req: one it cannot cancel is freed once done, by a later reap. */
        if (gai_cancel(&s->lookup->req) == EAI_NOTCANCELED) {
            s->lookup->next = abandoned;
            abandoned = s->lookup;
        } else {
            lookup_destroy(s->lookup);
        }
    }
    reap();
    addrs_unref(s->addrs);
    if (s->cred)
        gnutls_certificate_free_credentials(s->cred);
    free(s->ca);
    free(s);
}

/* ------------------------------------------------------------------ links */

mqtt_link_t *mqtt_link_new_shared(mqtt_link_shared_t *s, mqtt_link_fn *fn, void *data)
{
    mqtt_link_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->loop = s->loop;
    l->s = s;
    s->refs++;
    l->fn = fn;
    l->data = data;
    l->fd = -1;
    return l;
}

mqtt_link_t *mqtt_link_new(ev_loop_t *loop, const mqtt_link_config_t *cfg, mqtt_link_fn *fn,
                           void *data, char *err, size_t errlen)
{
    mqtt_link_shared_t *s = shared_new(loop, cfg, false, err, errlen);
    if (!s)
        return NULL;
    mqtt_link_t *l = mqtt_link_new_shared(s, fn, data);
    mqtt_link_shared_free(s); /* the link's reference stays */
    if (!l)
        snprintf(err, errlen, "out of memory");
    return l;
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
    waiting_del(l);
    addrs_unref(l->set);
    l->set = NULL;
    l->next_addr = NULL;
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
    mqtt_link_shared_free(l->s);
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
        set_why(l, "the broker's certificate is not trusted by mqtt.ca %s (%s)", l->s->ca, detail);
    else if (status & GNUTLS_CERT_EXPIRED)
        set_why(l, "the broker's certificate has expired (%s)", detail);
    else if (status & GNUTLS_CERT_NOT_ACTIVATED)
        set_why(l, "the broker's certificate is not valid yet (%s)", detail);
    else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
        set_why(l, "the broker's certificate is not valid for the host name %s (%s)",
                l->s->uri.host, detail);
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
        set_why(l, "TLS handshake with %s failed (%s)", l->s->peer, tls_stream_error(l->stream));
        fail(l, -EPROTO);
        return;
    }
    l->state = L_UP;
    ev_del_timer(l->loop, l->timer);
    l->timer = 0;
    addrs_unref(l->set);
    l->set = NULL;
    l->next_addr = NULL;
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
    mqtt_link_shared_t *s = l->s;
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
        l->stream = tls_stream_client(fd, s->cred, s->uri.host, s->verify_hostname);
        if (!l->stream || ev_add_file(l->loop, fd, EV_WRITABLE, on_io, l) < 0) {
            set_why(l, "out of memory");
            fail(l, -ENOMEM);
            return;
        }
        l->state = L_CONNECTING;
        return;
    }
    /* None of them took the connection: the next attempt asks for the addresses again. */
    if (s->keep && s->addrs == l->set && !l->set->literal) {
        addrs_unref(s->addrs);
        s->addrs = NULL;
    }
    int err = l->last_err ? l->last_err : EHOSTUNREACH;
    if (err == ECONNREFUSED)
        set_why(l, "connection refused by %s (is the broker running and listening there?)",
                s->peer);
    else
        set_why(l, "cannot connect to %s (%s)", s->peer, strerror(err));
    fail(l, -err);
}

static int64_t on_timer(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop;
    (void)id;
    mqtt_link_t *l = data;
    mqtt_link_shared_t *s = l->s;
    uint64_t now = gw_now_ms();
    int64_t left = l->deadline_ms > now ? (int64_t)(l->deadline_ms - now) : 0;
    if (l->state == L_RESOLVING) {
        if (!l->set) {
            if (s->done < l->wait_for) { /* the lookup wakes it when done */
                if (left > 0)
                    return left;
                l->timer = 0;
                set_why(l, "timed out resolving the broker's host name %s", s->uri.host);
                fail(l, -ETIMEDOUT);
                return EV_NOMORE;
            }
            if (!s->addrs) {
                l->timer = 0;
                set_why(l, "%s", s->why);
                fail(l, -EHOSTUNREACH);
                return EV_NOMORE;
            }
            l->set = s->addrs;
            l->set->refs++;
            l->next_addr = l->set->ai;
        }
        try_next_address(l); /* may end in fn, which may free the link */
        return left;
    }
    if (left > 0)
        return left;
    l->timer = 0;
    if (l->state == L_CONNECTING)
        set_why(l, "timed out connecting to %s", s->peer);
    else
        set_why(l, "timed out in the TLS handshake with %s", s->peer);
    fail(l, -ETIMEDOUT);
    return EV_NOMORE;
}

int mqtt_link_open(mqtt_link_t *l)
{
    mqtt_link_shared_t *s = l->s;
    mqtt_link_close(l);
    l->last_err = 0;
    uint64_t now = gw_now_ms();
    l->deadline_ms = now + (uint64_t)s->timeout_ms;
    /* The addresses are tried from the timer, so that fn never runs from here. */
    uint64_t first = 0;
    if (s->addrs && (s->keep || s->addrs->literal)) {
        l->set = s->addrs;
        l->set->refs++;
        l->next_addr = l->set->ai;
    } else if (s->keep && !s->lookup && now < s->retry_after_ms) {
        l->wait_for = s->done; /* fails at once with the last lookup's words */
    } else {
        if (!s->keep && !s->lookup) {
            addrs_unref(s->addrs); /* this attempt's lookup answers it */
            s->addrs = NULL;
        }
        int rc = start_lookup(s);
        if (rc < 0)
            return rc;
        l->wait_for = s->started;
        l->w_next = s->waiting;
        if (s->waiting)
            s->waiting->w_prev = l;
        s->waiting = l;
        l->in_waiting = true;
        first = (uint64_t)s->timeout_ms;
    }
    l->state = L_RESOLVING;
    l->timer = ev_add_timer(l->loop, first, on_timer, l);
    if (!l->timer) {
        mqtt_link_close(l);
        return -ENOMEM;
    }
    return 0;
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
    return l->s->peer;
}
