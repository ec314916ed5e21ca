/*
 * Certificates and keys for `tandem pki` (tandem(8), pki), made with GnuTLS's X.509
 * API: an ECDSA P-256 CA, a gateway certificate for the names it is reached
 * by, and device certificates whose subject CN is the device identity.
 * (`tandem pki psk` is in gateway/pki_cmd.c: it reads PSK files as the DTLS
 * side does.)
 *
 * Every file is written whole or not at all (common/file.h), keys mode 0600
 * and certificates 0644. pki_init and pki_device never replace a file (they
 * fail with -EEXIST and write nothing); pki_gateway replaces the gateway pair
 * keeping the old one beside it, and pki_crl_update replaces DIR/crl.pem.
 */
#ifndef TANDEM_PKI_H
#define TANDEM_PKI_H

#include <stddef.h>
#include <sys/types.h>

/* Days a certificate is valid by default; the CA lives at least PKI_CA_DAYS. */
#define PKI_DAYS 825
#define PKI_CA_DAYS 3650
/* Most names a gateway certificate may carry. */
#define PKI_NAMES_MAX 32

/*
 * DIR/ca.pem, DIR/ca.key, DIR/gateway.pem, DIR/gateway.key: a CA valid
 * max(days, PKI_CA_DAYS) days, and a gateway certificate valid days days,
 * for TLS servers and clients, whose subject alternative names are names
 * (an IPv4 or IPv6 literal becomes an IP address, anything else a DNS name;
 * the first is also its CN). DIR is created (0755) when missing. Returns 0,
 * or a negative errno code with a one-line reason in err: -EEXIST when any
 * of the four files exists (nothing is written then), -EINVAL for a name
 * that is neither an address nor a DNS name.
 */
int pki_init(const char *dir, int days, const char *const *names, size_t n, char *err,
             size_t errlen);

/*
 * DIR/NAME.pem and DIR/NAME.key: a device certificate (TLS client) with
 * CN=name, signed by DIR/ca.pem and DIR/ca.key, valid days days. name must
 * already have passed the identity rules (map_identity_ok). Returns 0, or a
 * negative errno code with a reason in err (-EEXIST when either file exists;
 * -ENOENT when the CA is missing).
 */
int pki_device(const char *dir, const char *name, int days, char *err, size_t errlen);

/*
 * A new gateway certificate and key from DIR's CA (renewal, or new names):
 * for names, or when n is 0 for the names of DIR/gateway.pem. Written beside
 * as gateway.{key,pem}.new, the pair in place is then linked as
 * gateway.{key,pem}.old and the new one renamed over it, key first. The new
 * key gets group's read permission (0640) when group is not (gid_t)-1, else
 * the old key's mode and group. 0, or a negative errno code with a reason.
 */
int pki_gateway(const char *dir, int days, const char *const *names, size_t n, gid_t group,
                char *err, size_t errlen);

/*
 * Signs DIR/crl.pem anew with DIR's CA (this update now, next update in days
 * days), keeping what it lists and, when name is not NULL, adding the serial
 * of DIR/NAME.pem (-EALREADY when listed already). The file is made when
 * missing, replaced whole otherwise. 0, or a negative errno code with a reason.
 */
int pki_crl_update(const char *dir, const char *name, int days, char *err, size_t errlen);

/* Days until a CRL's next update, by default. */
#define PKI_CRL_DAYS 30

/* True when s is an IPv4 or IPv6 address literal, or a DNS name a certificate may carry. */
int pki_name_ok(const char *s);

#endif
