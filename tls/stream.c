/*
 * Non-blocking TLS or TCP streams (see stream.h).
 *
 * GnuTLS on a non-blocking socket: a call that returns GNUTLS_E_AGAIN or
 * GNUTLS_E_INTERRUPTED is made again later, and gnutls_record_get_direction()
 * says whether it waits to read or to write. A gnutls_record_send() that
 * returned GNUTLS_E_AGAIN has taken its record already: it must be called
 * again with the same length, which is why a send here always starts at the
 * head of the queue and remembers the length it asked for.
 */
#include "stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ev.h"

/* The most one send asks for: one TLS record's worth. */
#define SEND_CHUNK 16384

struct tls_stream {
    int fd;
    gnutls_session_t tls; /* NULL: plain TCP */
    bool handshaken;
    unsigned want;     /* EV_* the last call waits for */
    size_t send_again; /* a send that returned AGAIN asked for this many bytes; 0: none */
    uint8_t *out;      /* queued output, out_head..out_head+out_len; NULL when empty */
    size_t out_head, out_len, out_cap;
    const char *error; /* static text, or GnuTLS's */
};

static tls_stream_t *stream_new(int fd)
{
    tls_stream_t *s = calloc(1, sizeof(*s));
    if (s)
        s->fd = fd;
    return s;
}

tls_stream_t *tls_stream_server(int fd, gnutls_certificate_credentials_t cred, int client_cert)
{
    tls_stream_t *s = stream_new(fd);
    if (!s)
        return NULL;
    if (gnutls_init(&s->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK) < 0) {
        free(s);
        return NULL;
    }
    if (gnutls_priority_set_direct(s->tls, TLS_STREAM_PRIORITY, NULL) < 0 ||
        gnutls_credentials_set(s->tls, GNUTLS_CRD_CERTIFICATE, cred) < 0) {
        tls_stream_free(s);
        return NULL;
    }
    gnutls_certificate_server_set_request(s->tls, client_cert == 2   ? GNUTLS_CERT_REQUIRE
                                                  : client_cert == 1 ? GNUTLS_CERT_REQUEST
                                                                     : GNUTLS_CERT_IGNORE);
    gnutls_transport_set_int(s->tls, fd);
    s->want = EV_READABLE;
    return s;
}

static bool is_ip(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

tls_stream_t *tls_stream_client(int fd, gnutls_certificate_credentials_t cred, const char *host,
                                bool verify_host)
{
    tls_stream_t *s = stream_new(fd);
    if (!s)
        return NULL;
    if (!cred) {
        s->want = EV_WRITABLE; /* connecting: tls_stream_handshake once connected */
        return s;
    }
    if (gnutls_init(&s->tls, GNUTLS_CLIENT | GNUTLS_NONBLOCK) < 0) {
        free(s);
        return NULL;
    }
    if (gnutls_priority_set_direct(s->tls, TLS_STREAM_PRIORITY, NULL) < 0 ||
        gnutls_credentials_set(s->tls, GNUTLS_CRD_CERTIFICATE, cred) < 0 ||
        (host && !is_ip(host) &&
         gnutls_server_name_set(s->tls, GNUTLS_NAME_DNS, host, strlen(host)) < 0)) {
        tls_stream_free(s);
        return NULL;
    }
    /* The chain is verified during the handshake; the name too when asked. */
    gnutls_session_set_verify_cert(s->tls, verify_host && host ? host : NULL, 0);
    gnutls_transport_set_int(s->tls, fd);
    s->want = EV_WRITABLE;
    return s;
}

void tls_stream_free(tls_stream_t *s)
{
    if (!s)
        return;
    if (s->tls)
        gnutls_deinit(s->tls);
    free(s->out);
    free(s);
}

/* Records what a GnuTLS call that returned AGAIN waits for. */
static void wait_for(tls_stream_t *s)
{
    s->want = gnutls_record_get_direction(s->tls) ? EV_WRITABLE : EV_READABLE;
}

int tls_stream_handshake(tls_stream_t *s)
{
    if (s->handshaken)
        return 0;
    if (!s->tls) {
        s->handshaken = true;
        s->want = 0;
        return 0;
    }
    int rc = gnutls_handshake(s->tls);
    if (rc == GNUTLS_E_SUCCESS) {
        s->handshaken = true;
        s->want = 0;
        return 0;
    }
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
        wait_for(s);
        return -EAGAIN;
    }
    if (!gnutls_error_is_fatal(rc)) {
        /* A warning alert: go on. */
        s->want = EV_READABLE;
        return -EAGAIN;
    }
    s->error = gnutls_strerror(rc);
    return rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR ? -EACCES : -EPROTO;
}

ssize_t tls_stream_read(tls_stream_t *s, void *buf, size_t len)
{
    if (!s->tls) {
        ssize_t n = recv(s->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -EAGAIN;
        s->error = strerror(errno);
        return -errno;
    }
    ssize_t n = gnutls_record_recv(s->tls, buf, len);
    if (n >= 0)
        return n;
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_REHANDSHAKE) {
        /* TLS 1.3 post-handshake messages may want to write; the caller waits to read. */
        if (n == GNUTLS_E_AGAIN && gnutls_record_get_direction(s->tls))
            s->want |= EV_WRITABLE;
        return -EAGAIN;
    }
    if (n == GNUTLS_E_PREMATURE_TERMINATION)
        return 0; /* closed without close_notify: an MQTT peer often does */
    s->error = gnutls_strerror((int)n);
    return -EPROTO;
}

bool tls_stream_pending(tls_stream_t *s)
{
    return s->tls && gnutls_record_check_pending(s->tls) > 0;
}

int tls_stream_flush(tls_stream_t *s)
{
    s->want &= ~(unsigned)EV_WRITABLE;
    while (s->out_len) {
        size_t len =
            s->send_again ? s->send_again : (s->out_len < SEND_CHUNK ? s->out_len : SEND_CHUNK);
        /*
         * A peer's max_fragment_length (RFC 6066) bounds our records. GnuTLS
         * 3.7 negotiates it but does not split a larger send to fit it, so
         * each send is at most one record of the size agreed.
         */
        if (s->tls && !s->send_again) {
            size_t max = gnutls_record_get_max_size(s->tls);
            if (max && len > max)
                len = max;
        }
        const uint8_t *p = s->out + s->out_head;
        ssize_t n;
        if (s->tls) {
            n = gnutls_record_send(s->tls, p, len);
            if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
                s->send_again = len;
                s->want |= EV_WRITABLE;
                return -EAGAIN;
            }
            if (n < 0) {
                s->error = gnutls_strerror((int)n);
                return -EPIPE;
            }
        } else {
            n = send(s->fd, p, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    s->want |= EV_WRITABLE;
                    return -EAGAIN;
                }
                s->error = strerror(errno);
                return -EPIPE;
            }
        }
        s->send_again = 0;
        s->out_head += (size_t)n;
        s->out_len -= (size_t)n;
    }
    /* Empty: the buffer goes, so that an idle stream holds none. */
    free(s->out);
    s->out = NULL;
    s->out_head = s->out_cap = 0;
    return 0;
}

int tls_stream_write(tls_stream_t *s, const void *buf, size_t len)
{
    if (s->out_head + s->out_len + len > s->out_cap) {
        if (s->out_head && !s->send_again) {
            memmove(s->out, s->out + s->out_head, s->out_len);
            s->out_head = 0;
        }
        if (s->out_head + s->out_len + len > s->out_cap) {
            size_t cap = s->out_cap ? s->out_cap : 1024;
            while (cap < s->out_head + s->out_len + len)
                cap *= 2;
            uint8_t *p = realloc(s->out, cap);
            if (!p)
                return -ENOMEM;
            s->out = p;
            s->out_cap = cap;
        }
    }
    memcpy(s->out + s->out_head + s->out_len, buf, len);
    s->out_len += len;
    if (!s->handshaken)
        return 0; /* goes once the handshake is done */
    int rc = tls_stream_flush(s);
    return rc == -EAGAIN ? 0 : rc;
}

size_t tls_stream_buffered(const tls_stream_t *s)
{
    return s->out_len;
}

unsigned tls_stream_want(const tls_stream_t *s)
{
    return s->want;
}

gnutls_session_t tls_stream_session(tls_stream_t *s)
{
    return s->tls;
}

const char *tls_stream_error(const tls_stream_t *s)
{
    return s->error ? s->error : "connection closed";
}

void tls_stream_bye(tls_stream_t *s)
{
    if (s->tls && s->handshaken)
        gnutls_bye(s->tls, GNUTLS_SHUT_WR);
}
