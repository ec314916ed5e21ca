/*
 * A non-blocking byte stream over a connected socket: TLS (GnuTLS, server or
 * client side) or plain TCP through the same calls, for the MQTT listener's
 * device and upstream connections. Nothing here blocks: every call does what
 * the socket allows now and says, as an ev mask (common/ev.h), what it waits
 * for (tls_stream_want).
 *
 * Output goes through a buffer of the stream's own, bounded by the caller
 * (tls_stream_buffered says how much waits); input is read straight into the
 * caller's buffer. Buffers are allocated when needed and freed when empty, so
 * an idle stream holds only its GnuTLS session.
 */
#ifndef TANDEM_TLS_STREAM_H
#define TANDEM_TLS_STREAM_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct tls_stream tls_stream_t;

/*
 * TLS 1.3 (its suites are all AEAD with (EC)DHE, as GnuTLS has them), and TLS
 * 1.2 with ECDHE key exchange and AEAD ciphers only: no static RSA (no
 * forward secrecy), no DHE, no CBC. ECDHE-ECDSA-AES128-GCM-SHA256, the suite
 * of small TLS 1.2 devices (Tasmota), stays. Both sides use it: devices on
 * the MQTT listener and its connections to the broker (Mosquitto offers
 * these with OpenSSL's defaults).
 */
#define TLS_STREAM_PRIORITY                                                                        \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:-CIPHER-ALL:"      \
    "+AES-256-GCM:+CHACHA20-POLY1305:+AES-128-GCM:+AES-256-CCM:+AES-128-CCM:-MAC-ALL:+AEAD"

/*
 * The server side of a TLS connection accepted on fd (borrowed: the caller
 * closes it after tls_stream_free). cred is borrowed and must live as long as
 * the stream. client_cert: 0 asks for no certificate, 1 asks for one (the
 * device may send none), 2 requires one. NULL on failure.
 */
tls_stream_t *tls_stream_server(int fd, gnutls_certificate_credentials_t cred, int client_cert);

/*
 * The client side on fd (connected, or connecting): cred borrowed; host, when
 * not NULL, is sent as SNI (unless an IP address) and, when verify_host, must
 * match the server's certificate, whose chain is always verified against
 * cred's trust. cred NULL: plain TCP, no TLS.
 */
tls_stream_t *tls_stream_client(int fd, gnutls_certificate_credentials_t cred, const char *host,
                                bool verify_host);

void tls_stream_free(tls_stream_t *s);

/*
 * Advances the handshake. 0 once it is done (at once for plain TCP; then
 * tls_stream_flush sends what was queued before);
 * -EAGAIN while it waits for the socket (tls_stream_want says which way); any
 * other negative value: it failed, with a reason for logs in
 * tls_stream_error.
 */
int tls_stream_handshake(tls_stream_t *s);

/*
 * Reads up to len bytes. >0 bytes read; 0 when the peer closed; -EAGAIN when
 * nothing is there now; another negative errno code on an error.
 */
ssize_t tls_stream_read(tls_stream_t *s, void *buf, size_t len);

/* Whether bytes already decrypted wait to be read (the socket may not say so). */
bool tls_stream_pending(tls_stream_t *s);

/*
 * Queues len bytes and sends what the socket takes now. 0, or a negative
 * errno code (-ENOMEM; an error of the connection).
 */
int tls_stream_write(tls_stream_t *s, const void *buf, size_t len);

/* Sends what is queued. 0 when all went, -EAGAIN when some still waits, or an error. */
int tls_stream_flush(tls_stream_t *s);

/* Bytes queued and not yet sent. */
size_t tls_stream_buffered(const tls_stream_t *s);

/*
 * What the stream waits for on its socket (EV_READABLE, EV_WRITABLE): for
 * a handshake, or a send that the socket did not take. Reading is the
 * caller's to ask for.
 */
unsigned tls_stream_want(const tls_stream_t *s);

/* The GnuTLS session, NULL for plain TCP (to read the peer's certificate). */
gnutls_session_t tls_stream_session(tls_stream_t *s);

/* Why the last call failed, for logs. */
const char *tls_stream_error(const tls_stream_t *s);

/* A close_notify when the socket takes it at once (never waits). */
void tls_stream_bye(tls_stream_t *s);

#endif
