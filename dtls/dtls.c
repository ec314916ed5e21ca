/*
 * DTLS credentials for libcoap (GnuTLS backend) and device identities.
 */
#include "dtls.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#include "log.h"
#include "tls.h"

struct psk {
    char *identity; /* owned, NUL-terminated */
    size_t idlen;
    uint8_t key[DTLS_PSK_MAX];
    coap_bin_const_t bin; /* points into key; what libcoap is given */
};

struct dtls_psk_store {
    struct psk *v; /* owned, sorted by identity for bsearch */
    size_t n;
};

static int psk_cmp(const void *a, const void *b)
{
    const struct psk *x = a, *y = b;
    size_t l = x->idlen < y->idlen ? x->idlen : y->idlen;
    int c = memcmp(x->identity, y->identity, l);
    return c ? c : (x->idlen > y->idlen) - (x->idlen < y->idlen);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void dtls_psk_free(dtls_psk_store_t *store)
{
    if (!store)
        return;
    for (size_t i = 0; i < store->n; i++) {
        explicit_bzero(store->v[i].key, sizeof(store->v[i].key));
        free(store->v[i].identity);
    }
    free(store->v);
    free(store);
}

size_t dtls_psk_count(const dtls_psk_store_t *store)
{
    return store ? store->n : 0;
}

const char *dtls_psk_identity(const dtls_psk_store_t *store, size_t i)
{
    return store && i < store->n ? store->v[i].identity : NULL;
}

dtls_psk_store_t *dtls_psk_load(const char *path, const char *setting, gw_errs_t *errs)
{
    FILE *f = fopen(path, "r");
    dtls_psk_store_t *st;
    char *line = NULL;
    size_t cap = 0, alloc = 0;
    int lineno = 0;
    unsigned before = errs->count;

    if (!f) {
        gw_errs_add(errs, path, 0, setting, "cannot read the file (%s)", strerror(errno));
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (!st)
        goto nomem;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        char *colon = strrchr(line, ':');
        if (!colon) {
            gw_errs_add(errs, path, lineno, setting, "expected identity:hexkey");
            continue;
        }
        size_t idlen = (size_t)(colon - line);
        const char *hex = colon + 1;
        size_t hexlen = strlen(hex);
        if (!map_identity_ok(line, idlen)) {
            gw_errs_add(errs, path, lineno, setting,
                        "identity must be 1..%d bytes of UTF-8 without '/', '+', '#', a "
                        "leading '$', control characters or Unicode noncharacters",
                        MAP_IDENTITY_MAX);
            continue;
        }
        if (hexlen == 0 || hexlen % 2 || hexlen / 2 > DTLS_PSK_MAX) {
            gw_errs_add(errs, path, lineno, setting, "key must be 2..%d hex digits, an even number",
                        DTLS_PSK_MAX * 2);
            continue;
        }
        if (st->n == alloc) {
            size_t na = alloc ? alloc * 2 : 16;
            struct psk *v = realloc(st->v, na * sizeof(*v));
            if (!v)
                goto nomem;
            st->v = v;
            alloc = na;
        }
        struct psk *p = &st->v[st->n];
        bool ok = true;
        for (size_t i = 0; i < hexlen / 2 && ok; i++) {
            int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            if (ok)
                p->key[i] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok) {
            gw_errs_add(errs, path, lineno, setting, "key is not hexadecimal");
            continue;
        }
        p->identity = strndup(line, idlen);
        if (!p->identity)
            goto nomem;
        p->idlen = idlen;
        p->bin.s = p->key;
        p->bin.length = hexlen / 2;
        st->n++;
        for (size_t i = 0; i + 1 < st->n; i++) {
            if (st->v[i].idlen == idlen && !memcmp(st->v[i].identity, line, idlen)) {
                gw_errs_add(errs, path, lineno, setting, "identity \"%s\" appears twice",
                            p->identity);
                break;
            }
        }
    }
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    fclose(f);
    if (errs->count != before) {
        dtls_psk_free(st);
        return NULL;
    }
    /* A file without keys leaves v NULL, which qsort() and bsearch() must not get. */
    if (st->n)
        qsort(st->v, st->n, sizeof(*st->v), psk_cmp);
    /* qsort moved the keys: point each binary back at its own key. */
    for (size_t i = 0; i < st->n; i++)
        st->v[i].bin.s = st->v[i].key;
    return st;
nomem:
    gw_errs_add(errs, path, lineno, setting, "out of memory");
    free(line);
    fclose(f);
    dtls_psk_free(st);
    return NULL;
}

static const coap_bin_const_t *psk_lookup(const dtls_psk_store_t *st, const uint8_t *id, size_t len)
{
    struct psk key = { .identity = (char *)id, .idlen = len };
    const struct psk *p = st && st->n ? bsearch(&key, st->v, st->n, sizeof(*st->v), psk_cmp) : NULL;
    return p ? &p->bin : NULL;
}

/*
 * The PSK store new handshakes use: libcoap is given the callback once and
 * no pointer to a store, so that replacing the store (a reload) leaves it
 * nothing to hold on to. NULL knows no identity.
 */
static const dtls_psk_store_t *psk_running;

/* libcoap asks for the key of an identity during the handshake. */
static const coap_bin_const_t *on_psk_identity(coap_bin_const_t *identity, coap_session_t *session,
                                               void *arg)
{
    const dtls_psk_store_t *st = psk_running;
    dtls_peer_t *peer = dtls_peer_get(session);
    (void)arg;
    if (!identity || !map_identity_ok((const char *)identity->s, identity->length)) {
        gw_debug(DTLS, "handshake refused (PSK identity not acceptable)");
        if (peer)
            peer->why = "identity not acceptable";
        return NULL;
    }
    if (peer)
        snprintf(peer->tried, sizeof(peer->tried), "%.*s", (int)identity->length,
                 (const char *)identity->s);
    const coap_bin_const_t *key = psk_lookup(st, identity->s, identity->length);
    if (!key) {
        gw_debug(DTLS, "handshake refused (unknown PSK identity \"%.*s\")", (int)identity->length,
                 (const char *)identity->s);
        if (peer)
            peer->why = "unknown identity";
        return NULL;
    }
    /* Should the handshake fail from here, the device's key was not this one. */
    if (peer)
        peer->why = "wrong key";
    return key;
}

/* The session's GnuTLS session (libcoap-3-gnutls), or NULL. */
static gnutls_session_t gnutls_of(coap_session_t *session)
{
    coap_tls_library_t lib = COAP_TLS_LIBRARY_NOTLS;
    void *tls = coap_session_get_tls(session, &lib);
    return lib == COAP_TLS_LIBRARY_GNUTLS ? tls : NULL;
}

/*
 * The CRLs (coap.dtls.crl) new handshakes check device certificates against:
 * libcoap 4.3.1's GnuTLS backend takes no CRL, so the certificate callback
 * checks the serial. NULL when none is configured; replaced by a commit.
 */
static tls_crl_t *crl_running;

/* Whether the running X.509 credentials ask each device for a certificate. */
static bool cert_asked;

/*
 * libcoap hands over the device certificate once it has been verified. The
 * key exchange (already chosen; the cipher is not known yet) must be ECDHE,
 * the certificate meant for a TLS client (no extended key usage, or one with
 * clientAuth), its subject CN an identity, and it must not be revoked by
 * coap.dtls.crl. Returning 0 fails the
 * handshake (counted as a failed DTLS handshake).
 */
static int on_cert(const char *cn, const uint8_t *der, size_t len, coap_session_t *session,
                   unsigned depth, int validated, void *arg)
{
    char subject_cn[MAP_IDENTITY_MAX + 2];
    (void)cn;
    (void)arg;
    if (depth != 0)
        return 1;
    dtls_peer_t *peer = dtls_peer_get(session);
    if (!peer)
        return 0;
    if (tls_der_cn(der, len, subject_cn, sizeof(subject_cn)) == 0 &&
        map_identity_ok(subject_cn, strlen(subject_cn)))
        snprintf(peer->tried, sizeof(peer->tried), "%s", subject_cn);
    else
        subject_cn[0] = '\0';
    if (!validated) {
        gw_debug(DTLS, "handshake refused (device certificate not verified)");
        peer->why = "not signed by the device CA";
        return 0;
    }
    gnutls_session_t tls = gnutls_of(session);
    gnutls_kx_algorithm_t kx = tls ? gnutls_kx_get(tls) : GNUTLS_KX_UNKNOWN;
    if (kx != GNUTLS_KX_ECDHE_ECDSA && kx != GNUTLS_KX_ECDHE_RSA) {
        gw_debug(DTLS, "handshake refused (key exchange %s is not ECDHE)",
                 gnutls_kx_get_name(kx) ? gnutls_kx_get_name(kx) : "unknown");
        peer->why = "key exchange not ECDHE";
        return 0;
    }
    if (tls_der_client_purpose(der, len) < 0) {
        gw_debug(DTLS, "handshake refused (device certificate's extended key usage has no "
                       "clientAuth)");
        peer->why = "not for client authentication";
        return 0;
    }
    if (!*subject_cn) {
        gw_debug(DTLS, "handshake refused (device certificate CN not acceptable)");
        peer->why = "certificate CN not acceptable";
        return 0;
    }
    int verdict = tls_crl_verdict(crl_running, der, len, time(NULL));
    if (verdict < 0) {
        peer->why = verdict == -EKEYREVOKED   ? "certificate revoked"
                    : verdict == -EKEYEXPIRED ? "coap.dtls.crl is past its next update"
                                              : "device certificate does not parse";
        gw_debug(DTLS, "handshake refused (%s: \"%s\")", peer->why, subject_cn);
        return 0;
    }
    snprintf(peer->identity, sizeof(peer->identity), "%s", subject_cn);
    peer->has_identity = true;
    return 1;
}

void dtls_log_failure(coap_session_t *session, const char *fallback)
{
    dtls_peer_t *peer = coap_session_get_app_data(session);
    const coap_address_t *remote = coap_session_get_addr_remote(session);
    char addr[INET6_ADDRSTRLEN + 8] = "?";
    const char *why = peer && peer->why ? peer->why : fallback;

    /*
     * Neither credential callback ran: the device offered no PSK identity and
     * no certificate the gateway's CA list let it send.
     */
    if (!(peer && peer->why) && cert_asked && !(peer && *peer->tried))
        why = "no client certificate signed by the device CA";

    if (remote)
        coap_print_addr(remote, (unsigned char *)addr, sizeof(addr));
    if (peer && *peer->tried)
        gw_log_peer(remote ? &remote->addr.sa : NULL, GW_LOG_INFO, GW_GRP_DTLS,
                    "handshake failed from %s (identity \"%s\": %s)", addr, peer->tried, why);
    else
        gw_log_peer(remote ? &remote->addr.sa : NULL, GW_LOG_INFO, GW_GRP_DTLS,
                    "handshake failed from %s (%s)", addr, why);
}

/*
 * The certificate, key and CA paths libcoap was given: it keeps the pointers
 * and reads the files at each new handshake (so a renewed certificate is
 * picked up by new sessions). Owned here, replaced by the next setup.
 */
static char *pki_paths[3];

static void set_paths(char *paths[3])
{
    for (int i = 0; i < 3; i++) {
        free(pki_paths[i]);
        pki_paths[i] = paths[i];
    }
}

void dtls_release(void)
{
    char *none[3] = { NULL, NULL, NULL };
    set_paths(none);
    psk_running = NULL;
    tls_crl_free(crl_running);
    crl_running = NULL;
}

struct dtls_creds {
    bool psk_on; /* PSK handshakes: psk (NULL knows no identity) */
    const dtls_psk_store_t *psk;
    bool pki_on; /* X.509 handshakes: p, with paths */
    coap_dtls_pki_t p;
    char *paths[3]; /* owned until given to libcoap */
    tls_crl_t *crl; /* coap.dtls.crl, owned until committed; NULL for none */
};

void dtls_creds_free(dtls_creds_t *c)
{
    if (!c)
        return;
    for (int i = 0; i < 3; i++)
        free(c->paths[i]);
    tls_crl_free(c->crl);
    free(c);
}

/* Whether PSK handshakes were ever set up: a reload without psk_file then knows no identity. */
static bool psk_set;

int dtls_prepare(const gw_config_t *cfg, const dtls_psk_store_t *psk, dtls_creds_t **out)
{
    *out = NULL;
    if (!coap_dtls_is_supported()) {
        gw_err(DTLS, "libcoap was built without DTLS");
        return -ENOTSUP;
    }
    dtls_creds_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->psk_on = psk || psk_set;
    c->psk = psk;
    if (*cfg->coap.dtls.cert) {
        coap_dtls_pki_t *p = &c->p;
        c->pki_on = true;
        p->version = COAP_DTLS_PKI_SETUP_VERSION;
        /*
         * libcoap 4.3.1's GnuTLS server either requires a client certificate
         * (verify_peer_cert) or does not ask for one; there is no "request".
         * So a configured CA means certificate handshakes must present a
         * device certificate signed by it; PSK handshakes are not affected.
         */
        p->verify_peer_cert = *cfg->coap.dtls.ca ? 1 : 0;
        p->check_common_ca = *cfg->coap.dtls.ca ? 1 : 0;
        p->allow_self_signed = 0;
        p->allow_expired_certs = 0;
        p->cert_chain_validation = 1;
        p->cert_chain_verify_depth = 4;
        p->validate_cn_call_back = on_cert;
        c->paths[0] = strdup(cfg->coap.dtls.cert);
        c->paths[1] = strdup(cfg->coap.dtls.key);
        c->paths[2] = *cfg->coap.dtls.ca ? strdup(cfg->coap.dtls.ca) : NULL;
        if (!c->paths[0] || !c->paths[1] || (*cfg->coap.dtls.ca && !c->paths[2])) {
            dtls_creds_free(c);
            return -ENOMEM;
        }
        p->pki_key.key_type = COAP_PKI_KEY_PEM;
        p->pki_key.key.pem.public_cert = c->paths[0];
        p->pki_key.key.pem.private_key = c->paths[1];
        p->pki_key.key.pem.ca_file = c->paths[2];
        if (*cfg->coap.dtls.crl) {
            char err[512];
            if (!(c->crl = tls_crl_load(cfg->coap.dtls.crl, err, sizeof(err)))) {
                gw_err(DTLS, "coap.dtls.crl: %s", err);
                dtls_creds_free(c);
                return -EINVAL;
            }
        }
    }
    *out = c;
    return 0;
}

/*
 * libcoap 4.3.1 copies what it is given and refuses it only without DTLS
 * support or for another version of the structure, both checked when the
 * credentials were prepared; a refusal all the same keeps what it had (the
 * copy comes after its checks) and is logged.
 */
void dtls_commit(coap_context_t *ctx, dtls_creds_t *c)
{
    if (c->pki_on) {
        if (coap_context_set_pki(ctx, &c->p)) {
            set_paths(c->paths); /* libcoap reads them at each handshake: kept until the next */
            memset(c->paths, 0, sizeof(c->paths));
            tls_crl_free(crl_running);
            crl_running = c->crl;
            c->crl = NULL;
            cert_asked = c->p.verify_peer_cert;
        } else {
            gw_err(DTLS, "libcoap refused the X.509 credentials from %s; the running ones stay",
                   c->paths[0]);
        }
    }
    if (c->psk_on) {
        psk_running = c->psk;
        if (!psk_set) {
            coap_dtls_spsk_t s;
            memset(&s, 0, sizeof(s));
            s.version = COAP_DTLS_SPSK_SETUP_VERSION;
            s.validate_id_call_back = on_psk_identity;
            if (coap_context_set_psk2(ctx, &s))
                psk_set = true;
            else
                gw_err(DTLS, "libcoap refused the PSK credentials");
        }
    }
    dtls_creds_free(c);
}

int dtls_setup(coap_context_t *ctx, const gw_config_t *cfg, const dtls_psk_store_t *psk)
{
    dtls_creds_t *c;
    int rc = dtls_prepare(cfg, psk, &c);
    if (rc < 0)
        return rc;
    dtls_commit(ctx, c);
    return 0;
}

/*
 * Every live peer state. The loop thread owns libcoap and so this list; one
 * CoAP context per process.
 */
static dtls_peer_t *peers;

dtls_peer_t *dtls_peer_get(coap_session_t *session)
{
    dtls_peer_t *peer = coap_session_get_app_data(session);
    if (!peer) {
        peer = calloc(1, sizeof(*peer));
        if (!peer)
            return NULL;
        peer->session = session;
        peer->next = peers;
        if (peers)
            peers->prev = peer;
        peers = peer;
        coap_session_set_app_data(session, peer);
    }
    return peer;
}

static void peer_unlink(dtls_peer_t *peer)
{
    if (peer->prev)
        peer->prev->next = peer->next;
    else
        peers = peer->next;
    if (peer->next)
        peer->next->prev = peer->prev;
}

static void peer_free(dtls_peer_t *peer, void (*free_app)(void *app))
{
    peer_unlink(peer);
    if (free_app)
        free_app(peer->app);
    coap_session_set_app_data(peer->session, NULL);
    free(peer);
}

void dtls_peer_forget(void *app, void (*free_app)(void *app))
{
    for (dtls_peer_t *peer = peers; peer; peer = peer->next) {
        if (peer->app == app) {
            peer_unlink(peer);
            if (free_app)
                free_app(app);
            free(peer);
            return;
        }
    }
}

void dtls_peer_release(coap_session_t *session, void (*free_app)(void *app))
{
    dtls_peer_t *peer = coap_session_get_app_data(session);
    if (peer)
        peer_free(peer, free_app);
}

void dtls_peers_free(void (*free_app)(void *app))
{
    while (peers)
        peer_free(peers, free_app);
}

bool dtls_suite_ok(coap_session_t *session, const char **why)
{
    if (coap_session_get_proto(session) != COAP_PROTO_DTLS)
        return true;
    gnutls_session_t tls = gnutls_of(session);
    if (!tls) {
        *why = "no DTLS state";
        return false;
    }
    switch (gnutls_kx_get(tls)) {
    case GNUTLS_KX_ECDHE_ECDSA:
    case GNUTLS_KX_ECDHE_RSA:
    case GNUTLS_KX_PSK:
    case GNUTLS_KX_ECDHE_PSK:
        break;
    default:
        *why = "key exchange without ECDHE";
        return false;
    }
    if (gnutls_mac_get(tls) != GNUTLS_MAC_AEAD) {
        *why = "cipher is not AEAD";
        return false;
    }
    return true;
}

const char *dtls_identity(coap_session_t *session)
{
    dtls_peer_t *peer = dtls_peer_get(session);
    if (!peer)
        return NULL;
    if (peer->has_identity)
        return peer->identity;
    if (coap_session_get_proto(session) != COAP_PROTO_DTLS)
        return NULL;
    const coap_bin_const_t *id = coap_session_get_psk_identity(session);
    if (!id || !map_identity_ok((const char *)id->s, id->length))
        return NULL;
    memcpy(peer->identity, id->s, id->length);
    peer->identity[id->length] = '\0';
    peer->has_identity = true;
    return peer->identity;
}
