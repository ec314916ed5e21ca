/*
 * libcoap's DTLS credentials (PSK and X.509) and device identities.
 */
#ifndef TANDEM_DTLS_H
#define TANDEM_DTLS_H

#include <coap3/coap.h>
#include <stdbool.h>

#include "config.h"
#include "mapping.h"

/* Pre-shared keys read from a Mosquitto-style psk_file ("identity:hexkey"). */
typedef struct dtls_psk_store dtls_psk_store_t;

/* Longest PSK accepted, bytes. */
#define DTLS_PSK_MAX 64

/*
 * Reads path; errors go to errs as "PSKFILE:LINE: setting: reason". NULL on
 * any error: a file with one bad line is refused whole.
 */
dtls_psk_store_t *dtls_psk_load(const char *path, const char *setting, gw_errs_t *errs);
void dtls_psk_free(dtls_psk_store_t *store);
size_t dtls_psk_count(const dtls_psk_store_t *store);
/* The i-th identity in byte order, NUL-terminated and owned by store; NULL past the end. */
const char *dtls_psk_identity(const dtls_psk_store_t *store, size_t i);

/*
 * Sets up DTLS on ctx from cfg at start: dtls_prepare() then dtls_commit().
 * psk may be NULL; it is borrowed and must live until the next commit or the
 * end of ctx. Returns 0, or a negative errno code (logged).
 */
int dtls_setup(coap_context_t *ctx, const gw_config_t *cfg, const dtls_psk_store_t *psk);

/* DTLS credentials made on the side, not yet given to libcoap. */
typedef struct dtls_creds dtls_creds_t;

/*
 * For a reload: the credentials of cfg and psk (borrowed, as for
 * dtls_setup), made without changing what libcoap runs with. 0 and *creds,
 * or a negative errno code (logged).
 */
int dtls_prepare(const gw_config_t *cfg, const dtls_psk_store_t *psk, dtls_creds_t **creds);

/*
 * New handshakes use creds (taken) from now on; established sessions go on.
 * Does not fail: nothing the previous setup gave libcoap is used afterwards.
 */
void dtls_commit(coap_context_t *ctx, dtls_creds_t *creds);

/* Frees credentials that are not committed; NULL does nothing. */
void dtls_creds_free(dtls_creds_t *creds);

/* Frees what dtls_setup() keeps, after coap_free_context(). */
void dtls_release(void);

/*
 * Per-session state kept as the session's app data: the device identity, and
 * an opaque slot for the bridge, freed with free_app when the session goes.
 */
typedef struct dtls_peer {
    char identity[MAP_IDENTITY_MAX + 1];
    bool has_identity;
    /* What a failed handshake is logged with: the identity offered, the cause. */
    char tried[MAP_IDENTITY_MAX + 1];
    const char *why; /* static text, NULL when not known */
    void *app;
    coap_session_t *session;       /* the session this belongs to */
    struct dtls_peer *prev, *next; /* every live peer, for dtls_peers_free */
} dtls_peer_t;

/*
 * Logs a failed handshake of session once, rate-limited per peer address:
 * "handshake failed from ADDR (identity \"ID\": CAUSE)", the cause as the
 * credential callbacks found it, else fallback.
 */
void dtls_log_failure(coap_session_t *session, const char *fallback);

/* The session's peer state, created on first use; NULL on ENOMEM. */
dtls_peer_t *dtls_peer_get(coap_session_t *session);

/* Frees the session's peer state (at COAP_EVENT_SERVER_SESSION_DEL). */
void dtls_peer_release(coap_session_t *session, void (*free_app)(void *app));

/*
 * Frees the peer state whose app data is app, without touching its session:
 * for a session libcoap has freed without an event.
 */
void dtls_peer_forget(void *app, void (*free_app)(void *app));

/*
 * Frees every peer state still held: libcoap 4.3 frees the sessions left at
 * coap_free_context() without a COAP_EVENT_SERVER_SESSION_DEL. Call it just
 * before coap_free_context().
 */
void dtls_peers_free(void (*free_app)(void *app));

/*
 * What libcoap 4.3.1's GnuTLS backend negotiates, and what Tandem adds.
 * libcoap sets its own priority string on every DTLS session ("NORMAL:+ECDHE-
 * PSK:+PSK:+ECDHE-ECDSA:+AES-128-CCM-8:..." in src/coap_gnutls.c) and has no
 * setting to change it: DTLS 1.0 and 1.2, static RSA and DHE key exchange
 * with an RSA certificate, CBC ciphers with any certificate or key, plain PSK.
 * libcoap fixes none of these (it only adds the CCM-8 suites of RFC 7925), nor
 * does it check a device certificate's key purpose. Tandem holds the session
 * to its own rules at the first points libcoap gives it: a device
 * certificate's handshake is refused unless the key exchange is ECDHE and the
 * certificate is meant for a TLS client (the CN callback, where the key
 * exchange is known and the cipher not yet); and once a handshake is done,
 * dtls_suite_ok() says whether its suite is one a session may keep.
 */

/*
 * Whether the established DTLS session's suite is allowed: an AEAD cipher
 * (GCM, CCM, CCM-8, ChaCha20-Poly1305), with ECDHE key exchange for
 * certificates and PSK or ECDHE-PSK for pre-shared keys (RFC 7925's
 * TLS_PSK_WITH_AES_128_CCM_8 stays). why gets a reason for logs when not.
 */
bool dtls_suite_ok(coap_session_t *session, const char **why);

/* The device identity of the session, or NULL when anonymous. */
const char *dtls_identity(coap_session_t *session);

#endif
