/*
 * Certificate and key checks (tandem(8), pki).
 */
#include "tls.h"

#include <errno.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* Loads every certificate of a PEM file. */
static int load_chain(const char *path, gnutls_x509_crt_t **list, unsigned *n, char *err,
                      size_t errlen)
{
    gnutls_datum_t data = { NULL, 0 };
    int rc = gnutls_load_file(path, &data);
    if (rc < 0)
        return fail(err, errlen, "cannot read %s (%s)", path, strerror(errno ? errno : ENOENT));
    rc = gnutls_x509_crt_list_import2(list, n, &data, GNUTLS_X509_FMT_PEM, 0);
    gnutls_free(data.data);
    if (rc < 0 || *n == 0)
        return fail(err, errlen, "%s holds no PEM certificate (%s)", path,
                    rc < 0 ? gnutls_strerror(rc) : "empty");
    return 0;
}

static void free_chain(gnutls_x509_crt_t *list, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        gnutls_x509_crt_deinit(list[i]);
    gnutls_free(list);
}

/* Validity window of one certificate; days_left may be NULL. */
static int check_dates(gnutls_x509_crt_t crt, const char *path, int *days_left, char *err,
                       size_t errlen)
{
    time_t now = time(NULL);
    time_t from = gnutls_x509_crt_get_activation_time(crt);
    time_t until = gnutls_x509_crt_get_expiration_time(crt);
    if (from != (time_t)-1 && now < from)
        return fail(err, errlen, "%s is not valid yet", path);
    if (until != (time_t)-1 && now > until)
        return fail(err, errlen, "%s has expired", path);
    if (days_left)
        *days_left = until == (time_t)-1 ? 99999 : (int)((until - now) / 86400);
    return 0;
}

int tls_cert_expiry(const char *cert_path, time_t *not_after)
{
    gnutls_x509_crt_t *chain = NULL;
    unsigned n = 0;
    char err[256];
    int rc = load_chain(cert_path, &chain, &n, err, sizeof(err));
    if (rc < 0)
        return rc;
    time_t until = gnutls_x509_crt_get_expiration_time(chain[0]);
    free_chain(chain, n);
    if (until == (time_t)-1)
        return -EINVAL;
    *not_after = until;
    return 0;
}

int tls_days_left(time_t not_after, time_t now)
{
    double left = difftime(not_after, now) / 86400;
    return (int)(left < 0 ? left - 1 : left); /* whole days, rounded down */
}

int tls_cert_days_left(const char *cert_path, int *days)
{
    time_t until;
    int rc = tls_cert_expiry(cert_path, &until);
    if (rc == 0)
        *days = tls_days_left(until, time(NULL));
    return rc;
}

int tls_cert_check(const char *cert_path, const char *key_path, int *days_left, char *err,
                   size_t errlen)
{
    gnutls_x509_crt_t *chain = NULL;
    unsigned n = 0;
    gnutls_datum_t kdata = { NULL, 0 };
    gnutls_privkey_t key = NULL;
    gnutls_pubkey_t certpub = NULL, keypub = NULL;
    unsigned char id1[64], id2[64];
    size_t l1 = sizeof(id1), l2 = sizeof(id2);
    int rc;

    if ((rc = load_chain(cert_path, &chain, &n, err, errlen)) < 0)
        return rc;
    if ((rc = check_dates(chain[0], cert_path, days_left, err, errlen)) < 0)
        goto out;
    if (gnutls_load_file(key_path, &kdata) < 0) {
        rc = fail(err, errlen, "cannot read %s (%s)", key_path, strerror(errno ? errno : ENOENT));
        goto out;
    }
    if (gnutls_privkey_init(&key) < 0 || gnutls_pubkey_init(&certpub) < 0 ||
        gnutls_pubkey_init(&keypub) < 0) {
        rc = fail(err, errlen, "out of memory");
        goto out;
    }
    if (gnutls_privkey_import_x509_raw(key, &kdata, GNUTLS_X509_FMT_PEM, NULL, 0) < 0) {
        rc = fail(err, errlen, "%s is not a PEM private key (or it is encrypted)", key_path);
        goto out;
    }
    if (gnutls_pubkey_import_x509(certpub, chain[0], 0) < 0 ||
        gnutls_pubkey_import_privkey(keypub, key, 0, 0) < 0 ||
        gnutls_pubkey_get_key_id(certpub, 0, id1, &l1) < 0 ||
        gnutls_pubkey_get_key_id(keypub, 0, id2, &l2) < 0 || l1 != l2 || memcmp(id1, id2, l1)) {
        rc = fail(err, errlen, "%s does not match the key in %s", cert_path, key_path);
        goto out;
    }
    rc = 0;
out:
    if (kdata.data) {
        gnutls_memset(kdata.data, 0, kdata.size);
        gnutls_free(kdata.data);
    }
    gnutls_privkey_deinit(key);
    gnutls_pubkey_deinit(certpub);
    gnutls_pubkey_deinit(keypub);
    free_chain(chain, n);
    return rc;
}

int tls_ca_check(const char *ca_path, char *err, size_t errlen)
{
    gnutls_x509_crt_t *chain = NULL;
    unsigned n = 0;
    int rc = load_chain(ca_path, &chain, &n, err, errlen);
    if (rc < 0)
        return rc;
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = check_dates(chain[i], ca_path, NULL, err, errlen);
    free_chain(chain, n);
    return rc;
}

int tls_der_cn(const uint8_t *der, size_t len, char *cn, size_t cnlen)
{
    gnutls_x509_crt_t crt;
    gnutls_datum_t d = { (unsigned char *)der, (unsigned)len };
    size_t size = cnlen;
    int rc = -EINVAL;

    if (gnutls_x509_crt_init(&crt) < 0)
        return -ENOMEM;
    if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) >= 0 &&
        gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &size) >= 0 &&
        size < cnlen && strlen(cn) == size)
        rc = 0;
    gnutls_x509_crt_deinit(crt);
    return rc;
}

int tls_der_client_purpose(const uint8_t *der, size_t len)
{
    gnutls_x509_crt_t crt;
    gnutls_datum_t d = { (unsigned char *)der, (unsigned)len };
    int rc = -EINVAL;

    if (gnutls_x509_crt_init(&crt) < 0)
        return -ENOMEM;
    if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) < 0)
        goto out;
    for (unsigned i = 0;; i++) {
        char oid[128];
        size_t size = sizeof(oid);
        int r = gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &size, NULL);
        if (r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
            /* No extended key usage at all (i == 0): any purpose. */
            rc = i == 0 ? 0 : -EPERM;
            break;
        }
        if (r < 0) {
            /* An OID too long for any purpose known here, or a damaged extension. */
            if (r == GNUTLS_E_SHORT_MEMORY_BUFFER)
                continue;
            break;
        }
        if (!strcmp(oid, GNUTLS_KP_TLS_WWW_CLIENT) || !strcmp(oid, GNUTLS_KP_ANY)) {
            rc = 0;
            break;
        }
    }
out:
    gnutls_x509_crt_deinit(crt);
    return rc;
}

/* ------------------------------------------------------------------ CRLs */

struct tls_crl {
    gnutls_x509_crl_t *list;
    unsigned n;
    time_t next_update; /* the earliest; (time_t)-1 when none says */
};

static int load_crls(const char *path, gnutls_x509_crl_t **list, unsigned *n, char *err,
                     size_t errlen)
{
    gnutls_datum_t data = { NULL, 0 };
    int rc = gnutls_load_file(path, &data);
    if (rc < 0)
        return fail(err, errlen, "cannot read %s (%s)", path, strerror(errno ? errno : ENOENT));
    rc = gnutls_x509_crl_list_import2(list, n, &data, GNUTLS_X509_FMT_PEM, 0);
    gnutls_free(data.data);
    if (rc < 0 || *n == 0)
        return fail(err, errlen, "%s holds no PEM CRL (%s)", path,
                    rc < 0 ? gnutls_strerror(rc) : "empty");
    return 0;
}

static void free_crls(gnutls_x509_crl_t *list, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        gnutls_x509_crl_deinit(list[i]);
    gnutls_free(list);
}

static time_t earliest_next(gnutls_x509_crl_t *list, unsigned n)
{
    time_t next = (time_t)-1;
    for (unsigned i = 0; i < n; i++) {
        time_t t = gnutls_x509_crl_get_next_update(list[i]);
        if (t != (time_t)-1 && (next == (time_t)-1 || t < next))
            next = t;
    }
    return next;
}

int tls_crl_check(const char *crl_path, const char *ca_path, time_t *next_update, char *err,
                  size_t errlen)
{
    gnutls_x509_crl_t *crls = NULL;
    gnutls_x509_crt_t *cas = NULL;
    unsigned ncrl = 0, nca = 0;
    time_t now = time(NULL);
    int rc;

    if ((rc = load_crls(crl_path, &crls, &ncrl, err, errlen)) < 0)
        return rc;
    if ((rc = load_chain(ca_path, &cas, &nca, err, errlen)) < 0)
        goto out;
    for (unsigned i = 0; i < ncrl; i++) {
        unsigned status = 0;
        time_t next = gnutls_x509_crl_get_next_update(crls[i]);
        /* Its times are told apart from its signature, which GnuTLS's verdict mixes. */
        if (gnutls_x509_crl_verify(crls[i], cas, nca, 0, &status) < 0 ||
            (status & ~(unsigned)(GNUTLS_CERT_INVALID | GNUTLS_CERT_REVOCATION_DATA_SUPERSEDED |
                                  GNUTLS_CERT_REVOCATION_DATA_ISSUED_IN_FUTURE))) {
            rc = fail(err, errlen, "%s is not signed by a CA of %s", crl_path, ca_path);
            goto out;
        }
        if (gnutls_x509_crl_get_this_update(crls[i]) > now) {
            rc = fail(err, errlen, "%s is not valid yet (its this update is ahead)", crl_path);
            goto out;
        }
        if (next == (time_t)-1) {
            rc = fail(err, errlen, "%s has no next update", crl_path);
            goto out;
        }
        if (next <= now) {
            rc = fail(err, errlen,
                      "%s has expired (its next update has passed; re-sign it with "
                      "tandem pki crl)",
                      crl_path);
            goto out;
        }
    }
    if (next_update)
        *next_update = earliest_next(crls, ncrl);
    rc = 0;
out:
    free_crls(crls, ncrl);
    free_chain(cas, nca);
    return rc;
}

int tls_crl_next_update(const char *crl_path, time_t *next_update)
{
    gnutls_x509_crl_t *crls = NULL;
    unsigned n = 0;
    char err[256];
    int rc = load_crls(crl_path, &crls, &n, err, sizeof(err));
    if (rc < 0)
        return rc;
    time_t next = earliest_next(crls, n);
    free_crls(crls, n);
    if (next == (time_t)-1)
        return -EINVAL;
    *next_update = next;
    return 0;
}

tls_crl_t *tls_crl_load(const char *crl_path, char *err, size_t errlen)
{
    tls_crl_t *c = calloc(1, sizeof(*c));
    if (!c) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    if (load_crls(crl_path, &c->list, &c->n, err, errlen) < 0) {
        free(c);
        return NULL;
    }
    c->next_update = earliest_next(c->list, c->n);
    return c;
}

void tls_crl_free(tls_crl_t *crl)
{
    if (!crl)
        return;
    free_crls(crl->list, crl->n);
    free(crl);
}

int tls_crl_verdict(const tls_crl_t *crl, const uint8_t *der, size_t len, time_t now)
{
    gnutls_x509_crt_t crt;
    gnutls_datum_t d = { (unsigned char *)der, (unsigned)len };
    int rc;

    if (!crl)
        return 0;
    if (gnutls_x509_crt_init(&crt) < 0)
        return -ENOMEM;
    if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_DER) < 0)
        rc = -EINVAL;
    else if (gnutls_x509_crt_check_revocation(crt, crl->list, crl->n) == 1)
        rc = -EKEYREVOKED;
    else if (crl->next_update != (time_t)-1 && now >= crl->next_update)
        rc = -EKEYEXPIRED;
    else
        rc = 0;
    gnutls_x509_crt_deinit(crt);
    return rc;
}
