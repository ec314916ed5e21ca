#include "pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "file.h"

/* Certificates start this long before they are made: a device's clock a little behind still accepts them. */
#define PKI_BACKDATE_S 3600

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static bool is_address(const char *s, unsigned char *bin, size_t *len)
{
    if (inet_pton(AF_INET, s, bin) == 1) {
        *len = 4;
        return true;
    }
    if (inet_pton(AF_INET6, s, bin) == 1) {
        *len = 16;
        return true;
    }
    return false;
}

int pki_name_ok(const char *s)
{
    unsigned char bin[16];
    size_t len = strlen(s), label = 0;

    if (is_address(s, bin, &len))
        return 1;
    if (len == 0 || len > 253 || s[0] == '.' || s[len - 1] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || (c == '*' && i == 0 && len > 2 && s[1] == '.');
        if (!ok || ++label > 63)
            return 0;
    }
    return 1;
}

/* One certificate and its key, being made or read. */
struct pair {
    gnutls_x509_crt_t crt;
    gnutls_x509_privkey_t key;
};

static void pair_free(struct pair *p)
{
    if (p->crt)
        gnutls_x509_crt_deinit(p->crt);
    if (p->key)
        gnutls_x509_privkey_deinit(p->key);
    p->crt = NULL;
    p->key = NULL;
}

enum role { ROLE_CA, ROLE_SERVER, ROLE_CLIENT };

/*
 * Makes p: a new P-256 key and a certificate for cn valid days days, signed
 * by issuer (or by itself when issuer is NULL).
 */
static int make(struct pair *p, enum role role, const char *cn, int days, const char *const *names,
                size_t n, const struct pair *issuer)
{
    unsigned char serial[16], id[64];
    size_t idlen = sizeof(id);
    time_t now = time(NULL);
    int rc;

    if ((rc = gnutls_x509_privkey_init(&p->key)) < 0 ||
        (rc = gnutls_x509_privkey_generate(
             p->key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)) < 0 ||
        (rc = gnutls_x509_crt_init(&p->crt)) < 0)
        return rc;
    if ((rc = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial))) < 0)
        return rc;
    serial[0] = (serial[0] & 0x7f) | 0x01; /* positive, 16 bytes long */
    if ((rc = gnutls_x509_crt_set_version(p->crt, 3)) < 0 ||
        (rc = gnutls_x509_crt_set_serial(p->crt, serial, sizeof(serial))) < 0 ||
        (rc = gnutls_x509_crt_set_activation_time(p->crt, now - PKI_BACKDATE_S)) < 0 ||
        (rc = gnutls_x509_crt_set_expiration_time(p->crt, now + (time_t)days * 86400)) < 0 ||
        (rc = gnutls_x509_crt_set_dn_by_oid(p->crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                            strlen(cn))) < 0 ||
        (rc = gnutls_x509_crt_set_key(p->crt, p->key)) < 0)
        return rc;
    if (role == ROLE_CA) {
        if ((rc = gnutls_x509_crt_set_basic_constraints(p->crt, 1, 0)) < 0 ||
            (rc = gnutls_x509_crt_set_key_usage(p->crt, GNUTLS_KEY_KEY_CERT_SIGN |
                                                            GNUTLS_KEY_CRL_SIGN)) < 0)
            return rc;
    } else {
        if ((rc = gnutls_x509_crt_set_basic_constraints(p->crt, 0, -1)) < 0 ||
            (rc = gnutls_x509_crt_set_key_usage(p->crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0)
            return rc;
        /* A gateway certificate also serves as the gateway's client certificate to a broker. */
        if (role == ROLE_SERVER &&
            (rc = gnutls_x509_crt_set_key_purpose_oid(p->crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0)
            return rc;
        if ((rc = gnutls_x509_crt_set_key_purpose_oid(p->crt, GNUTLS_KP_TLS_WWW_CLIENT, 0)) < 0)
            return rc;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char bin[16];
        size_t len;
        if (is_address(names[i], bin, &len))
            rc = gnutls_x509_crt_set_subject_alt_name(p->crt, GNUTLS_SAN_IPADDRESS, bin,
                                                      (unsigned)len, GNUTLS_FSAN_APPEND);
        else
            rc = gnutls_x509_crt_set_subject_alt_name(p->crt, GNUTLS_SAN_DNSNAME, names[i],
                                                      (unsigned)strlen(names[i]),
                                                      GNUTLS_FSAN_APPEND);
        if (rc < 0)
            return rc;
    }
    if ((rc = gnutls_x509_crt_get_key_id(p->crt, GNUTLS_KEYID_USE_SHA1, id, &idlen)) < 0 ||
        (rc = gnutls_x509_crt_set_subject_key_id(p->crt, id, idlen)) < 0)
        return rc;
    if (issuer) {
        idlen = sizeof(id);
        if ((rc = gnutls_x509_crt_get_subject_key_id(issuer->crt, id, &idlen, NULL)) < 0 ||
            (rc = gnutls_x509_crt_set_authority_key_id(p->crt, id, idlen)) < 0)
            return rc;
    }
    const struct pair *by = issuer ? issuer : p;
    return gnutls_x509_crt_sign2(p->crt, by->crt, by->key, GNUTLS_DIG_SHA256, 0);
}

static int path_in(char *buf, size_t len, const char *dir, const char *name, const char *ext)
{
    if ((size_t)snprintf(buf, len, "%s/%s%s", dir, name, ext) >= len)
        return -ENAMETOOLONG;
    return 0;
}

/* A file to write: its path, its PEM bytes, its mode. */
struct out {
    char path[PATH_MAX];
    gnutls_datum_t pem;
    unsigned mode;
    bool written;
};

static int export(struct out *o, const struct pair *p, bool key)
{
    if (key)
        return gnutls_x509_privkey_export2_pkcs8(p->key, GNUTLS_X509_FMT_PEM, NULL,
                                                 GNUTLS_PKCS_PLAIN, &o->pem);
    return gnutls_x509_crt_export2(p->crt, GNUTLS_X509_FMT_PEM, &o->pem);
}

/*
 * Writes the n files, none replacing anything: keys first, so that a
 * certificate never exists without its key. On failure the ones written are
 * removed again.
 */
static int write_all(struct out *o, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (access(o[i].path, F_OK) == 0)
            return fail(err, errlen, -EEXIST, "%s exists; it is never replaced", o[i].path);
    }
    for (size_t i = 0; i < n; i++) {
        struct iovec iov = { o[i].pem.data, o[i].pem.size };
        int rc = gw_file_write_mode(o[i].path, &iov, 1, GW_FILE_SYNC | GW_FILE_EXCL, o[i].mode);
        if (rc < 0) {
            for (size_t j = 0; j < i; j++)
                unlink(o[j].path);
            return fail(err, errlen, rc, "cannot write %s: %s", o[i].path, strerror(-rc));
        }
        o[i].written = true;
    }
    return 0;
}

static void outs_free(struct out *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        gnutls_free(o[i].pem.data);
}

int pki_init(const char *dir, int days, const char *const *names, size_t n, char *err,
             size_t errlen)
{
    struct pair ca = { 0 }, gw = { 0 };
    struct out o[4] = { 0 };
    int rc;

    if (n == 0 || n > PKI_NAMES_MAX)
        return fail(err, errlen, -EINVAL, "give 1 to %d names", PKI_NAMES_MAX);
    for (size_t i = 0; i < n; i++)
        if (!pki_name_ok(names[i]))
            return fail(err, errlen, -EINVAL, "\"%s\" is neither an IP address nor a DNS name",
                        names[i]);
    if (days < 1 || days > 36500)
        return fail(err, errlen, -EINVAL, "--days must be 1..36500");
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return fail(err, errlen, -errno, "cannot make %s: %s", dir, strerror(errno));
    if ((rc = path_in(o[0].path, sizeof(o[0].path), dir, "ca", ".key")) < 0 ||
        (rc = path_in(o[1].path, sizeof(o[1].path), dir, "ca", ".pem")) < 0 ||
        (rc = path_in(o[2].path, sizeof(o[2].path), dir, "gateway", ".key")) < 0 ||
        (rc = path_in(o[3].path, sizeof(o[3].path), dir, "gateway", ".pem")) < 0)
        return fail(err, errlen, rc, "%s: the path is too long", dir);
    for (size_t i = 0; i < 4; i++) {
        o[i].mode = i % 2 ? 0644 : 0600;
        if (access(o[i].path, F_OK) == 0)
            return fail(err, errlen, -EEXIST, "%s exists; it is never replaced", o[i].path);
    }

    char cn[300];
    snprintf(cn, sizeof(cn), "Tandem CA %s", names[0]);
    rc = make(&ca, ROLE_CA, cn, days > PKI_CA_DAYS ? days : PKI_CA_DAYS, NULL, 0, NULL);
    if (rc >= 0)
        rc = make(&gw, ROLE_SERVER, names[0], days, names, n, &ca);
    if (rc >= 0 && (rc = export(&o[0], &ca, true)) >= 0 && (rc = export(&o[1], &ca, false)) >= 0 &&
        (rc = export(&o[2], &gw, true)) >= 0)
        rc = export(&o[3], &gw, false);
    if (rc < 0)
        rc = fail(err, errlen, -EIO, "cannot make the certificates: %s", gnutls_strerror(rc));
    else
        rc = write_all(o, 4, err, errlen);
    outs_free(o, 4);
    pair_free(&ca);
    pair_free(&gw);
    return rc;
}

/* Reads DIR/ca.pem and DIR/ca.key. */
static int read_ca(struct pair *ca, const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    gnutls_datum_t d = { 0 };
    int rc;

    if (path_in(path, sizeof(path), dir, "ca", ".pem") < 0)
        return fail(err, errlen, -ENAMETOOLONG, "%s: the path is too long", dir);
    if (access(path, R_OK) < 0)
        return fail(err, errlen, -ENOENT, "%s: %s (make the CA with tandem pki init)", path,
                    strerror(errno));
    if ((rc = gnutls_load_file(path, &d)) < 0 || (rc = gnutls_x509_crt_init(&ca->crt)) < 0 ||
        (rc = gnutls_x509_crt_import(ca->crt, &d, GNUTLS_X509_FMT_PEM)) < 0) {
        gnutls_free(d.data);
        return fail(err, errlen, -EINVAL, "%s: not a PEM certificate (%s)", path,
                    gnutls_strerror(rc));
    }
    gnutls_free(d.data);
    d.data = NULL;
    path_in(path, sizeof(path), dir, "ca", ".key");
    if (access(path, R_OK) < 0)
        return fail(err, errlen, -ENOENT, "%s: %s", path, strerror(errno));
    if ((rc = gnutls_load_file(path, &d)) < 0 || (rc = gnutls_x509_privkey_init(&ca->key)) < 0 ||
        (rc = gnutls_x509_privkey_import2(ca->key, &d, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
        gnutls_free(d.data);
        return fail(err, errlen, -EINVAL, "%s: not a PEM private key (%s)", path,
                    gnutls_strerror(rc));
    }
    gnutls_free(d.data);

    /* The key must be the certificate's: else every device certificate would fail to verify. */
    unsigned char a[64], b[64];
    size_t alen = sizeof(a), blen = sizeof(b);
    if (gnutls_x509_crt_get_key_id(ca->crt, GNUTLS_KEYID_USE_SHA256, a, &alen) < 0 ||
        gnutls_x509_privkey_get_key_id(ca->key, GNUTLS_KEYID_USE_SHA256, b, &blen) < 0 ||
        alen != blen || memcmp(a, b, alen))
        return fail(err, errlen, -EINVAL, "%s does not match %s/ca.pem", path, dir);
    return 0;
}

int pki_device(const char *dir, const char *name, int days, char *err, size_t errlen)
{
    struct pair ca = { 0 }, dev = { 0 };
    struct out o[2] = { 0 };
    int rc;

    if (days < 1 || days > 36500)
        return fail(err, errlen, -EINVAL, "--days must be 1..36500");
    if (path_in(o[0].path, sizeof(o[0].path), dir, name, ".key") < 0 ||
        path_in(o[1].path, sizeof(o[1].path), dir, name, ".pem") < 0)
        return fail(err, errlen, -ENAMETOOLONG, "%s/%s: the path is too long", dir, name);
    o[0].mode = 0600;
    o[1].mode = 0644;
    for (size_t i = 0; i < 2; i++)
        if (access(o[i].path, F_OK) == 0)
            return fail(err, errlen, -EEXIST, "%s exists; it is never replaced", o[i].path);
    if ((rc = read_ca(&ca, dir, err, errlen)) < 0) {
        pair_free(&ca);
        return rc;
    }
    rc = make(&dev, ROLE_CLIENT, name, days, NULL, 0, &ca);
    if (rc >= 0 && (rc = export(&o[0], &dev, true)) >= 0)
        rc = export(&o[1], &dev, false);
    if (rc < 0)
        rc = fail(err, errlen, -EIO, "cannot make the certificate: %s", gnutls_strerror(rc));
    else
        rc = write_all(o, 2, err, errlen);
    outs_free(o, 2);
    pair_free(&ca);
    pair_free(&dev);
    return rc;
}

/* The names of a certificate's subject alternative names (DNS names and IP addresses) into names. */
static int read_names(const char *path, char names[][256], size_t *n)
{
    gnutls_datum_t d = { 0 };
    gnutls_x509_crt_t crt = NULL;
    int rc;

    *n = 0;
    if ((rc = gnutls_load_file(path, &d)) < 0 || (rc = gnutls_x509_crt_init(&crt)) < 0 ||
        (rc = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM)) < 0) {
        gnutls_free(d.data);
        if (crt)
            gnutls_x509_crt_deinit(crt);
        return -EINVAL;
    }
    gnutls_free(d.data);
    for (unsigned i = 0; *n < PKI_NAMES_MAX; i++) {
        unsigned char buf[256];
        size_t size = sizeof(buf) - 1;
        unsigned critical;
        rc = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size, &critical);
        if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
            break;
        if (rc == GNUTLS_SAN_DNSNAME) {
            buf[size] = '\0';
            snprintf(names[(*n)++], 256, "%s", (char *)buf);
        } else if (rc == GNUTLS_SAN_IPADDRESS && (size == 4 || size == 16)) {
            inet_ntop(size == 4 ? AF_INET : AF_INET6, buf, names[(*n)++], 256);
        }
    }
    gnutls_x509_crt_deinit(crt);
    return *n ? 0 : -ENOENT;
}

/* Makes dst a hard link to src, replacing dst; nothing when src is missing. */
static int keep_old(const char *src, const char *dst)
{
    if (access(src, F_OK) < 0)
        return 0;
    if (unlink(dst) < 0 && errno != ENOENT)
        return -errno;
    return link(src, dst) < 0 ? -errno : 0;
}

int pki_gateway(const char *dir, int days, const char *const *given, size_t ngiven, gid_t group,
                char *err, size_t errlen)
{
    struct pair ca = { 0 }, gw = { 0 };
    struct out o[2] = { 0 };
    char keypath[PATH_MAX], pempath[PATH_MAX], oldkey[PATH_MAX], oldpem[PATH_MAX];
    char found[PKI_NAMES_MAX][256];
    const char *names[PKI_NAMES_MAX];
    size_t n = ngiven;
    struct stat st;
    int rc;

    if (days < 1 || days > 36500)
        return fail(err, errlen, -EINVAL, "--days must be 1..36500");
    if (path_in(keypath, sizeof(keypath), dir, "gateway", ".key") < 0 ||
        path_in(pempath, sizeof(pempath), dir, "gateway", ".pem") < 0 ||
        path_in(oldkey, sizeof(oldkey), dir, "gateway", ".key.old") < 0 ||
        path_in(oldpem, sizeof(oldpem), dir, "gateway", ".pem.old") < 0 ||
        path_in(o[0].path, sizeof(o[0].path), dir, "gateway", ".key.new") < 0 ||
        path_in(o[1].path, sizeof(o[1].path), dir, "gateway", ".pem.new") < 0)
        return fail(err, errlen, -ENAMETOOLONG, "%s: the path is too long", dir);
    if (n > PKI_NAMES_MAX)
        return fail(err, errlen, -EINVAL, "give 1 to %d names", PKI_NAMES_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!pki_name_ok(given[i]))
            return fail(err, errlen, -EINVAL, "\"%s\" is neither an IP address nor a DNS name",
                        given[i]);
        names[i] = given[i];
    }
    if (n == 0) {
        /* Renewal: the names of the certificate in place. */
        if (read_names(pempath, found, &n) < 0)
            return fail(err, errlen, -ENOENT, "%s: no names to renew it for; give --hostname",
                        pempath);
        for (size_t i = 0; i < n; i++)
            names[i] = found[i];
    }
    if ((rc = read_ca(&ca, dir, err, errlen)) < 0) {
        pair_free(&ca);
        return rc;
    }
    /* The new key is readable as the old one was (mode and group), unless a group is given. */
    unsigned keymode = 0600;
    gid_t keygid = group;
    if (stat(keypath, &st) == 0 && group == (gid_t)-1) {
        keymode = st.st_mode & 0640;
        keygid = st.st_gid;
    } else if (group != (gid_t)-1) {
        keymode = 0640;
    }
    o[0].mode = 0600;
    o[1].mode = 0644;
    rc = make(&gw, ROLE_SERVER, names[0], days, names, n, &ca);
    if (rc >= 0 && (rc = export(&o[0], &gw, true)) >= 0)
        rc = export(&o[1], &gw, false);
    if (rc < 0) {
        rc = fail(err, errlen, -EIO, "cannot make the certificate: %s", gnutls_strerror(rc));
        goto out;
    }
    /* Leftovers of an interrupted run are not the pair in place: they go. */
    unlink(o[0].path);
    unlink(o[1].path);
    if ((rc = write_all(o, 2, err, errlen)) < 0)
        goto out;
    if (keygid != (gid_t)-1 && keygid != getegid() && chown(o[0].path, (uid_t)-1, keygid) < 0) {
        rc = fail(err, errlen, -errno, "cannot give %s to group %u: %s", o[0].path,
                  (unsigned)keygid, strerror(errno));
        goto undo;
    }
    if (chmod(o[0].path, keymode | 0600) < 0) {
        rc = fail(err, errlen, -errno, "cannot chmod %s: %s", o[0].path, strerror(errno));
        goto undo;
    }
    if ((rc = keep_old(keypath, oldkey)) < 0 || (rc = keep_old(pempath, oldpem)) < 0) {
        rc = fail(err, errlen, rc, "cannot keep the old pair as %s and %s: %s", oldkey, oldpem,
                  strerror(-rc));
        goto undo;
    }
    /* The key first: a certificate in place always has its key beside it or in .old. */
    if (rename(o[0].path, keypath) < 0 || rename(o[1].path, pempath) < 0) {
        rc = fail(err, errlen, -errno, "cannot put the new pair in place: %s", strerror(errno));
        if (access(oldkey, F_OK) == 0) {
            /* Back to the old pair, whole. */
            unlink(keypath);
            link(oldkey, keypath);
        }
        goto undo;
    }
    rc = 0;
    goto out;
undo:
    unlink(o[0].path);
    unlink(o[1].path);
out:
    outs_free(o, 2);
    pair_free(&ca);
    pair_free(&gw);
    return rc;
}

/* Reads a certificate (PEM). */
static int read_crt(gnutls_x509_crt_t *crt, const char *path, char *err, size_t errlen)
{
    gnutls_datum_t d = { 0 };
    int rc;
    if (access(path, R_OK) < 0)
        return fail(err, errlen, -ENOENT, "%s: %s", path, strerror(errno));
    if ((rc = gnutls_load_file(path, &d)) < 0 || (rc = gnutls_x509_crt_init(crt)) < 0 ||
        (rc = gnutls_x509_crt_import(*crt, &d, GNUTLS_X509_FMT_PEM)) < 0) {
        gnutls_free(d.data);
        return fail(err, errlen, -EINVAL, "%s: not a PEM certificate (%s)", path,
                    gnutls_strerror(rc));
    }
    gnutls_free(d.data);
    return 0;
}

int pki_crl_update(const char *dir, const char *name, int days, char *err, size_t errlen)
{
    struct pair ca = { 0 };
    gnutls_x509_crt_t dev = NULL;
    gnutls_x509_crl_t old = NULL, crl = NULL;
    gnutls_datum_t d = { 0 }, pem = { 0 };
    char path[PATH_MAX], devpath[PATH_MAX];
    unsigned char serial[64], num[20] = { 0 };
    size_t serial_len = sizeof(serial), numlen = sizeof(num);
    time_t now = time(NULL);
    int rc;

    if (days < 1 || days > 36500)
        return fail(err, errlen, -EINVAL, "--days must be 1..36500");
    if (path_in(path, sizeof(path), dir, "crl", ".pem") < 0 ||
        (name && path_in(devpath, sizeof(devpath), dir, name, ".pem") < 0))
        return fail(err, errlen, -ENAMETOOLONG, "%s: the path is too long", dir);
    if ((rc = read_ca(&ca, dir, err, errlen)) < 0)
        goto out;
    if (name) {
        if ((rc = read_crt(&dev, devpath, err, errlen)) < 0)
            goto out;
        unsigned status = 0;
        if (gnutls_x509_crt_verify(dev, &ca.crt, 1, 0, &status) < 0 ||
            (status & ~(GNUTLS_CERT_EXPIRED | GNUTLS_CERT_INVALID))) {
            rc = fail(err, errlen, -EINVAL, "%s is not signed by %s/ca.pem", devpath, dir);
            goto out;
        }
        if ((rc = gnutls_x509_crt_get_serial(dev, serial, &serial_len)) < 0) {
            rc = fail(err, errlen, -EINVAL, "%s: no serial (%s)", devpath, gnutls_strerror(rc));
            goto out;
        }
    }
    if ((rc = gnutls_x509_crl_init(&crl)) < 0)
        goto gnutls_fail;
    if (access(path, F_OK) == 0) {
        unsigned status = 0;
        if ((rc = gnutls_load_file(path, &d)) < 0 || (rc = gnutls_x509_crl_init(&old)) < 0 ||
            (rc = gnutls_x509_crl_import(old, &d, GNUTLS_X509_FMT_PEM)) < 0) {
            rc = fail(err, errlen, -EINVAL, "%s: not a PEM CRL (%s); nothing was changed", path,
                      gnutls_strerror(rc));
            goto out;
        }
        /* Expired or not, it must be the CA's: re-signing an expired one is what crl is for. */
        if (gnutls_x509_crl_verify(old, &ca.crt, 1, 0, &status) < 0 ||
            (status & ~(unsigned)(GNUTLS_CERT_INVALID | GNUTLS_CERT_REVOCATION_DATA_SUPERSEDED |
                                  GNUTLS_CERT_REVOCATION_DATA_ISSUED_IN_FUTURE))) {
            rc = fail(err, errlen, -EINVAL, "%s is not signed by %s/ca.pem; nothing was changed",
                      path, dir);
            goto out;
        }
        int count = gnutls_x509_crl_get_crt_count(old);
        for (int i = 0; i < count; i++) {
            unsigned char s[64];
            size_t slen = sizeof(s);
            time_t when;
            if ((rc = gnutls_x509_crl_get_crt_serial(old, i, s, &slen, &when)) < 0)
                goto gnutls_fail;
            if (name && slen == serial_len && !memcmp(s, serial, slen)) {
                rc = fail(err, errlen, -EALREADY, "%s is already revoked in %s", devpath, path);
                goto out;
            }
            if ((rc = gnutls_x509_crl_set_crt_serial(crl, s, slen, when)) < 0)
                goto gnutls_fail;
        }
        /* The CRL number goes up by one at each signing. */
        unsigned critical;
        if (gnutls_x509_crl_get_number(old, num, &numlen, &critical) < 0 || numlen > 19)
            numlen = 0;
    } else {
        numlen = 0;
    }
    if (name && (rc = gnutls_x509_crl_set_crt(crl, dev, now)) < 0)
        goto gnutls_fail;
    /* num as a big-endian number, plus one. */
    unsigned char next[20] = { 0 };
    memcpy(next + sizeof(next) - numlen, num, numlen);
    for (int i = (int)sizeof(next) - 1; i >= 0 && ++next[i] == 0; i--)
        ;
    size_t skip = 0;
    while (skip < sizeof(next) - 1 && next[skip] == 0 && !(next[skip + 1] & 0x80))
        skip++;
    unsigned char id[64];
    size_t idlen = sizeof(id);
    if ((rc = gnutls_x509_crl_set_version(crl, 2)) < 0 ||
        (rc = gnutls_x509_crl_set_this_update(crl, now)) < 0 ||
        (rc = gnutls_x509_crl_set_next_update(crl, now + (time_t)days * 86400)) < 0 ||
        (rc = gnutls_x509_crl_set_number(crl, next + skip, sizeof(next) - skip)) < 0 ||
        (rc = gnutls_x509_crt_get_subject_key_id(ca.crt, id, &idlen, NULL)) < 0 ||
        (rc = gnutls_x509_crl_set_authority_key_id(crl, id, idlen)) < 0 ||
        (rc = gnutls_x509_crl_sign2(crl, ca.crt, ca.key, GNUTLS_DIG_SHA256, 0)) < 0 ||
        (rc = gnutls_x509_crl_export2(crl, GNUTLS_X509_FMT_PEM, &pem)) < 0)
        goto gnutls_fail;
    struct iovec iov = { pem.data, pem.size };
    rc = gw_file_write_mode(path, &iov, 1, GW_FILE_SYNC | GW_FILE_SYNC_DIR, 0644);
    if (rc < 0)
        rc = fail(err, errlen, rc, "cannot write %s: %s", path, strerror(-rc));
    goto out;
gnutls_fail:
    rc = fail(err, errlen, -EIO, "cannot make the CRL: %s", gnutls_strerror(rc));
out:
    gnutls_free(d.data);
    gnutls_free(pem.data);
    if (dev)
        gnutls_x509_crt_deinit(dev);
    if (old)
        gnutls_x509_crl_deinit(old);
    if (crl)
        gnutls_x509_crl_deinit(crl);
    pair_free(&ca);
    return rc;
}
