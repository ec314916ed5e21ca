/*
 * CRLs: what tandem pki revoke and pki crl write, and what the handshakes
 * and tandem check make of it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pki.h"
#include "tls.h"

static char dir[] = "/tmp/tandem-crl-XXXXXX";
static char err[1024];

static void setup(void)
{
    const char *names[] = { "localhost" };
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(pki_init(dir, 30, names, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pki_device(dir, "bike-1", 30, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pki_device(dir, "bike-2", 30, err, sizeof(err)), 0, "%s", err);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    strcpy(dir, "/tmp/tandem-crl-XXXXXX");
}

TestSuite(crl, .init = setup, .fini = teardown);

static char *in(const char *name)
{
    static char paths[4][256];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

/* The DER of DIR/NAME.pem, in der (gnutls_free it). */
static void der_of(const char *name, gnutls_datum_t *der)
{
    gnutls_datum_t pem = { 0 };
    gnutls_x509_crt_t crt;
    char file[64];
    snprintf(file, sizeof(file), "%s.pem", name);
    cr_assert_geq(gnutls_load_file(in(file), &pem), 0);
    cr_assert_geq(gnutls_x509_crt_init(&crt), 0);
    cr_assert_geq(gnutls_x509_crt_import(crt, &pem, GNUTLS_X509_FMT_PEM), 0);
    cr_assert_geq(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, der), 0);
    gnutls_x509_crt_deinit(crt);
    gnutls_free(pem.data);
}

static int verdict(const char *name, time_t now)
{
    gnutls_datum_t der = { 0 };
    der_of(name, &der);
    tls_crl_t *crl = tls_crl_load(in("crl.pem"), err, sizeof(err));
    cr_assert_not_null(crl, "%s", err);
    int rc = tls_crl_verdict(crl, der.data, der.size, now);
    tls_crl_free(crl);
    gnutls_free(der.data);
    return rc;
}

Test(crl, revoked_one_only)
{
    time_t next, now = time(NULL);
    cr_assert_eq(pki_crl_update(dir, "bike-2", 30, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(tls_crl_check(in("crl.pem"), in("ca.pem"), &next, err, sizeof(err)), 0, "%s", err);
    cr_assert(next > now + 29 * 86400 && next <= now + 30 * 86400 + 5);
    cr_assert_eq(verdict("bike-2", now), -EKEYREVOKED);
    cr_assert_eq(verdict("bike-1", now), 0);
    /* Past its next update, no certificate passes. */
    cr_assert_eq(verdict("bike-1", next + 1), -EKEYEXPIRED);
    /* Revoking again is refused; one more keeps the first. */
    cr_assert_eq(pki_crl_update(dir, "bike-2", 30, err, sizeof(err)), -EALREADY);
    cr_assert_eq(pki_crl_update(dir, "bike-1", 30, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(verdict("bike-1", now), -EKEYREVOKED);
    cr_assert_eq(verdict("bike-2", now), -EKEYREVOKED);
    cr_assert_eq(tls_crl_verdict(NULL, (const uint8_t *)"x", 1, now), 0);
}

Test(crl, empty_crl_and_resign)
{
    time_t next;
    cr_assert_eq(pki_crl_update(dir, NULL, 2, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(tls_crl_next_update(in("crl.pem"), &next), 0);
    cr_assert(tls_days_left(next, time(NULL)) >= 1 && tls_days_left(next, time(NULL)) <= 2);
    cr_assert_eq(verdict("bike-1", time(NULL)), 0);
    cr_assert_eq(pki_crl_update(dir, NULL, 40, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(tls_crl_next_update(in("crl.pem"), &next), 0);
    cr_assert(tls_days_left(next, time(NULL)) >= 39 && tls_days_left(next, time(NULL)) <= 40);
}

Test(crl, another_ca_refused)
{
    char other[300];
    const char *names[] = { "other" };
    snprintf(other, sizeof(other), "%s/other", dir);
    cr_assert_eq(pki_init(other, 30, names, 1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(pki_crl_update(other, NULL, 30, err, sizeof(err)), 0, "%s", err);
    snprintf(other, sizeof(other), "%s/other/crl.pem", dir);
    cr_assert_lt(tls_crl_check(other, in("ca.pem"), NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, "not signed by"), "%s", err);
    cr_assert_lt(tls_crl_check(in("ca.pem"), in("ca.pem"), NULL, err, sizeof(err)), 0);
    cr_assert(strstr(err, "no PEM CRL"), "%s", err);
}

Test(crl, gateway_renewed_keeps_the_old_pair)
{
    int days;
    cr_assert_eq(pki_gateway(dir, 10, NULL, 0, (gid_t)-1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(tls_cert_check(in("gateway.pem"), in("gateway.key"), &days, err, sizeof(err)), 0,
                 "%s", err);
    cr_assert(days >= 9 && days <= 10, "%d", days);
    cr_assert_eq(
        tls_cert_check(in("gateway.pem.old"), in("gateway.key.old"), &days, err, sizeof(err)), 0,
        "%s", err);
    cr_assert(days >= 29 && days <= 30, "%d", days);
    cr_assert_neq(access(in("gateway.pem.new"), F_OK), 0);
}
