/*
 * GnuTLS work that is not libcoap's: loading and checking certificates and
 * keys, reading a device certificate's subject CN.
 */
#ifndef TANDEM_TLS_H
#define TANDEM_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Days within which an expiry is warned about (tandem(8), pki). */
#define TLS_EXPIRY_WARN_DAYS 21

/*
 * Checks a PEM certificate chain and its private key: both load, the key
 * matches the first certificate, and that certificate is valid now.
 * *days_left gets the days until it expires. Returns 0, or a negative errno
 * code with a reason in err.
 */
int tls_cert_check(const char *cert_path, const char *key_path, int *days_left, char *err,
                   size_t errlen);

/*
 * Whole days until the first certificate of a PEM file expires (negative once
 * it has). Returns 0, or a negative errno code.
 */
int tls_cert_days_left(const char *cert_path, int *days);

/* When the first certificate of a PEM file expires. 0, or a negative errno code. */
int tls_cert_expiry(const char *cert_path, time_t *not_after);
/* Whole days from now until not_after, rounded down (negative once past). */
int tls_days_left(time_t not_after, time_t now);

/* Checks a PEM CA bundle: at least one certificate, none expired. */
int tls_ca_check(const char *ca_path, char *err, size_t errlen);

/* Subject CN of a DER certificate into cn. Returns 0, or a negative errno code. */
int tls_der_cn(const uint8_t *der, size_t len, char *cn, size_t cnlen);

/*
 * Whether a DER certificate may authenticate a TLS client: it carries no
 * extended key usage, or one that lists clientAuth (or anyExtendedKeyUsage,
 * as GnuTLS's own purpose check takes it). 0 when it may; -EPERM when its
 * extended key usage leaves clientAuth out (a server's certificate, say);
 * -EINVAL when it does not parse.
 */
int tls_der_client_purpose(const uint8_t *der, size_t len);

/* Days before a CRL's next update within which it is warned about. */
#define TLS_CRL_WARN_DAYS 7

/*
 * Checks a PEM file of CRLs against the CA bundle ca_path: at least one CRL,
 * each signed by a certificate of the bundle, issued already and with a next
 * update still ahead. *next_update (may be NULL) gets the earliest next
 * update. Returns 0, or a negative errno code with a reason in err.
 */
int tls_crl_check(const char *crl_path, const char *ca_path, time_t *next_update, char *err,
                  size_t errlen);

/* The earliest next update of the CRLs in a PEM file. 0, or a negative errno code. */
int tls_crl_next_update(const char *crl_path, time_t *next_update);

/* CRLs loaded for the handshakes: which device certificates are revoked. */
typedef struct tls_crl tls_crl_t;

/* Reads a PEM file of CRLs (checked before by tls_crl_check). NULL with a reason in err. */
tls_crl_t *tls_crl_load(const char *crl_path, char *err, size_t errlen);
void tls_crl_free(tls_crl_t *crl);

/*
 * Whether a DER certificate may still be used: 0 when it may; -EKEYREVOKED
 * when a CRL of its issuer lists it; -EKEYEXPIRED when the CRLs are past
 * their next update (no revocation can be told then, as Mosquitto's
 * crlfile); -EINVAL when it does not parse. NULL crl: 0.
 */
int tls_crl_verdict(const tls_crl_t *crl, const uint8_t *der, size_t len, time_t now);

#endif
