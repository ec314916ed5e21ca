/*
 * `tandem pki`: a development CA, the gateway's certificate, device
 * certificates (tls/pki.c) and device PSKs. Nothing existing is ever
 * replaced; a refusal leaves every file as it was.
 *
 *   tandem pki init --dir DIR [--days N] [--hostname NAME ...] [--group GROUP]
 *   tandem pki device --dir DIR [--days N] [--group GROUP] NAME
 *   tandem pki gateway --dir DIR [--days N] [--hostname NAME ...] [--group GROUP]
 *   tandem pki revoke --dir DIR [--days N] NAME
 *   tandem pki crl --dir DIR [--days N]
 *   tandem pki psk --file PSKFILE [--group GROUP] NAME | --remove NAME | --list
 */
#include "pki_cmd.h"

#include <errno.h>
#include <getopt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "dtls.h"
#include "file.h"
#include "gateway.h"
#include "mapping.h"
#include "pki.h"

/*
 * Characters of a key `pki psk` makes, each one of 62 letters and digits
 * (5.95 bits): 24 of them are 142 bits, and a key of printable bytes can be
 * typed into clients that take text keys.
 */
#define PSK_BYTES 24
/* Largest PSK file `pki psk` rewrites. */
#define PSK_FILE_MAX (16u << 20)

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: tandem pki init --dir DIR [--days N] [--hostname NAME ...] [--group GROUP]\n"
            "       tandem pki device --dir DIR [--days N] [--group GROUP] NAME\n"
            "       tandem pki gateway --dir DIR [--days N] [--hostname NAME ...] [--group GROUP]\n"
            "       tandem pki revoke --dir DIR [--days N] NAME\n"
            "       tandem pki crl --dir DIR [--days N]\n"
            "       tandem pki psk --file PSKFILE [--group GROUP] NAME\n"
            "       tandem pki psk --file PSKFILE --remove NAME | --list\n"
            "init: an ECDSA P-256 CA (DIR/ca.pem, DIR/ca.key) and the gateway's certificate\n"
            "      (DIR/gateway.pem, DIR/gateway.key) for each NAME (DNS name or IP address;\n"
            "      default: this machine's hostname)\n"
            "device: DIR/NAME.pem and DIR/NAME.key with CN=NAME, signed by DIR's CA\n"
            "gateway: a new DIR/gateway.pem and DIR/gateway.key from DIR's CA, for the NAMEs\n"
            "      (default: those of the certificate in place); the old pair is kept as\n"
            "      DIR/gateway.pem.old and DIR/gateway.key.old. Reload the gateway (SIGHUP).\n"
            "revoke: adds DIR/NAME.pem to DIR/crl.pem, signed by DIR's CA, next update in\n"
            "      %d days unless --days says otherwise (the crl settings name this file)\n"
            "crl: signs DIR/crl.pem anew (made when missing), before its next update passes\n"
            "psk: appends NAME and a random key of %d letters and digits to PSKFILE and prints\n"
            "      the key as text (coap-client -k) and as hex (as the file holds it);\n"
            "      --remove NAME takes NAME out, --list prints the identities (never keys)\n"
            "--group GROUP: keys and PSK files are written 0640 and given to GROUP, so that\n"
            "      the service's group can read them.\n"
            "Certificates are valid %d days unless --days says otherwise. Existing files are\n"
            "never replaced (but by gateway, revoke and crl). Keys are written mode 0600.\n",
            PKI_CRL_DAYS, PSK_BYTES, PKI_DAYS);
}

/* Gives path to group gid, readable by it (0640); (gid_t)-1 does nothing. */
static int give_group(const char *path, gid_t gid)
{
    if (gid == (gid_t)-1)
        return 0;
    if (chown(path, (uid_t)-1, gid) < 0 || chmod(path, 0640) < 0) {
        fprintf(stderr, "tandem pki: cannot make %s readable by group %u: %s\n", path,
                (unsigned)gid, strerror(errno));
        return -1;
    }
    return 0;
}

static int identity_ok(const char *name)
{
    if (map_identity_ok(name, strlen(name)))
        return 1;
    fprintf(stderr,
            "tandem pki: \"%s\" is not a device identity: 1..%d bytes of UTF-8 without '/', "
            "'+', '#', a leading '$', control characters or Unicode noncharacters\n",
            name, MAP_IDENTITY_MAX);
    return 0;
}

static int parse_days(const char *s, int *days)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < 1 || v > 36500) {
        fprintf(stderr, "tandem pki: --days must be a number of days, 1..36500\n");
        return -1;
    }
    *days = (int)v;
    return 0;
}

static int cmd_init(const char *dir, int days, const char **names, size_t n, gid_t gid)
{
    char err[PATH_MAX + 200], host[256], path[PATH_MAX];

    if (n == 0) {
        if (gethostname(host, sizeof(host)) < 0 || !*host) {
            fprintf(stderr, "tandem pki: this machine has no hostname; give --hostname\n");
            return GW_EXIT_CONFIG;
        }
        host[sizeof(host) - 1] = '\0';
        names[n++] = host;
    }
    if (pki_init(dir, days, names, n, err, sizeof(err)) < 0) {
        fprintf(stderr, "tandem pki: %s\n", err);
        return GW_EXIT_CONFIG;
    }
    snprintf(path, sizeof(path), "%s/gateway.key", dir);
    if (give_group(path, gid) < 0)
        return GW_EXIT_CONFIG;
    printf("Made %s/ca.pem, %s/ca.key (keep it offline), %s/gateway.pem and %s/gateway.key\n"
           "for:",
           dir, dir, dir, dir);
    for (size_t i = 0; i < n; i++)
        printf(" %s", names[i]);
    printf("\n\nIn tandem.conf:\n"
           "  coap = { dtls = { cert = \"%s/gateway.pem\"; key = \"%s/gateway.key\";\n"
           "                    ca = \"%s/ca.pem\"; }; };\n"
           "  mqtt_listener = { cert = \"%s/gateway.pem\"; key = \"%s/gateway.key\";\n"
           "                    ca = \"%s/ca.pem\"; };\n"
           "Devices: tandem pki device --dir %s NAME (certificate), or\n"
           "         tandem pki psk --file PSKFILE NAME (coap.dtls.psk_file).\n",
           dir, dir, dir, dir, dir, dir, dir);
    return GW_EXIT_OK;
}

static int cmd_device(const char *dir, int days, const char *name, gid_t gid)
{
    char err[PATH_MAX + 200], path[PATH_MAX];

    if (!identity_ok(name))
        return GW_EXIT_CONFIG;
    if (pki_device(dir, name, days, err, sizeof(err)) < 0) {
        fprintf(stderr, "tandem pki: %s\n", err);
        return GW_EXIT_CONFIG;
    }
    snprintf(path, sizeof(path), "%s/%s.key", dir, name);
    if (give_group(path, gid) < 0)
        return GW_EXIT_CONFIG;
    printf("Made %s/%s.pem and %s/%s.key for the device \"%s\" (signed by %s/ca.pem)\n", dir, name,
           dir, name, name, dir);
    return GW_EXIT_OK;
}

static int cmd_gateway(const char *dir, int days, const char **names, size_t n, gid_t gid)
{
    char err[PATH_MAX + 200];

    if (pki_gateway(dir, days, names, n, gid, err, sizeof(err)) < 0) {
        fprintf(stderr, "tandem pki: %s\n", err);
        return GW_EXIT_CONFIG;
    }
    printf("Made a new %s/gateway.pem and %s/gateway.key (valid %d days); the old pair is\n"
           "%s/gateway.pem.old and %s/gateway.key.old.\n"
           "Reload the gateway to serve it: systemctl reload tandem (or kill -HUP its pid).\n",
           dir, dir, days, dir, dir);
    return GW_EXIT_OK;
}

static int cmd_crl(const char *dir, int days, const char *name)
{
    char err[PATH_MAX + 200];

    if (name && !identity_ok(name))
        return GW_EXIT_CONFIG;
    if (pki_crl_update(dir, name, days, err, sizeof(err)) < 0) {
        fprintf(stderr, "tandem pki: %s\n", err);
        return GW_EXIT_CONFIG;
    }
    if (name)
        printf("Revoked %s/%s.pem in %s/crl.pem", dir, name, dir);
    else
        printf("Signed %s/crl.pem anew", dir);
    printf(" (next update in %d days: run tandem pki crl --dir %s before then).\n"
           "Name it in coap.dtls.crl and mqtt_listener.crl, and reload the gateway.\n",
           days, dir);
    return GW_EXIT_OK;
}

/* The whole file in *buf (malloc'd; *len bytes). 0, or a negative errno code. */
static int slurp(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    char *b = malloc(PSK_FILE_MAX + 1);
    size_t n = b ? fread(b, 1, PSK_FILE_MAX + 1, f) : 0;
    int rc = !b ? -ENOMEM : ferror(f) ? -EIO : n > PSK_FILE_MAX ? -EFBIG : 0;
    fclose(f);
    if (rc < 0) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = n;
    return 0;
}

/* Reads a PSK file as the gateway reads it; NULL (said why) when it would refuse it. */
static dtls_psk_store_t *psk_read(const char *path, const char *what)
{
    gw_errs_t errs = { 0 };
    dtls_psk_store_t *psk = dtls_psk_load(path, "psk", &errs);
    if (!psk || errs.count) {
        fprintf(stderr, "tandem pki: %s has errors; %s:\n%s", path, what,
                errs.text ? errs.text : "");
        gw_errs_clear(&errs);
        dtls_psk_free(psk);
        return NULL;
    }
    gw_errs_clear(&errs);
    return psk;
}

static bool psk_has(const dtls_psk_store_t *psk, const char *name)
{
    for (size_t i = 0; i < dtls_psk_count(psk); i++)
        if (!strcmp(dtls_psk_identity(psk, i), name))
            return true;
    return false;
}

/*
 * Replaces path whole with iov, keeping the mode and owner of st (when the
 * file existed), or mode 0600; then gives it to gid when not (gid_t)-1.
 */
static int psk_write(const char *path, const struct iovec *iov, int n, const struct stat *st,
                     gid_t gid)
{
    unsigned mode = st ? st->st_mode & 07777 : 0600;
    if (gid != (gid_t)-1)
        mode = 0640;
    int rc = gw_file_write_mode(path, iov, n, GW_FILE_SYNC | GW_FILE_SYNC_DIR, mode);
    if (rc == 0 && st && (st->st_uid != geteuid() || st->st_gid != getegid()) &&
        chown(path, st->st_uid, gid != (gid_t)-1 ? gid : st->st_gid) < 0)
        rc = -errno;
    if (rc == 0 && gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0)
        rc = -errno;
    if (rc < 0)
        fprintf(stderr, "tandem pki: cannot write %s: %s\n", path, strerror(-rc));
    return rc;
}

/* A random key of PSK_BYTES letters and digits, each drawn without bias. */
static int psk_make(char key[PSK_BYTES + 1])
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const unsigned size = sizeof(alphabet) - 1, limit = 256 - 256 % size;
    size_t n = 0;
    while (n < PSK_BYTES) {
        unsigned char r[64];
        int rc = gnutls_rnd(GNUTLS_RND_KEY, r, sizeof(r));
        if (rc < 0)
            return rc;
        for (size_t i = 0; i < sizeof(r) && n < PSK_BYTES; i++)
            if (r[i] < limit)
                key[n++] = alphabet[r[i] % size];
        explicit_bzero(r, sizeof(r));
    }
    key[n] = '\0';
    return 0;
}

static int cmd_psk(const char *path, const char *name, gid_t gid)
{
    char key[PSK_BYTES + 1], hex[2 * PSK_BYTES + 1], line[MAP_IDENTITY_MAX + sizeof(hex) + 3];
    char *old = NULL;
    size_t oldlen = 0;
    struct stat st;
    bool exists = stat(path, &st) == 0;
    int rc;

    if (!identity_ok(name))
        return GW_EXIT_CONFIG;
    if (exists) {
        /* Read as the gateway reads it: a file it would refuse is not added to. */
        dtls_psk_store_t *psk = psk_read(path, "nothing was added");
        if (!psk)
            return GW_EXIT_CONFIG;
        bool dup = psk_has(psk, name);
        dtls_psk_free(psk);
        if (dup) {
            fprintf(stderr, "tandem pki: %s already has a key for \"%s\"; nothing was added\n",
                    path, name);
            return GW_EXIT_CONFIG;
        }
        if ((rc = slurp(path, &old, &oldlen)) < 0) {
            fprintf(stderr, "tandem pki: cannot read %s: %s\n", path, strerror(-rc));
            return GW_EXIT_CONFIG;
        }
    } else if (errno != ENOENT) {
        fprintf(stderr, "tandem pki: %s: %s\n", path, strerror(errno));
        return GW_EXIT_CONFIG;
    }
    if ((rc = psk_make(key)) < 0) {
        fprintf(stderr, "tandem pki: no random key: %s\n", gnutls_strerror(rc));
        free(old);
        return GW_EXIT_CONFIG;
    }
    for (size_t i = 0; i < PSK_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)key[i]);
    int linelen = snprintf(line, sizeof(line), "%s%s:%s\n",
                           oldlen && old[oldlen - 1] != '\n' ? "\n" : "", name, hex);
    struct iovec iov[2] = { { old, oldlen }, { line, (size_t)linelen } };
    rc = psk_write(path, iov, 2, exists ? &st : NULL, gid);
    free(old);
    if (rc < 0)
        return GW_EXIT_CONFIG;
    printf("identity: %s\nkey (text): %s\nkey (hex):  %s\n", name, key, hex);
    explicit_bzero(key, sizeof(key));
    return GW_EXIT_OK;
}

static int cmd_psk_list(const char *path)
{
    dtls_psk_store_t *psk = psk_read(path, "nothing was listed");
    if (!psk)
        return GW_EXIT_CONFIG;
    for (size_t i = 0; i < dtls_psk_count(psk); i++)
        printf("%s\n", dtls_psk_identity(psk, i));
    dtls_psk_free(psk);
    return GW_EXIT_OK;
}

/* The identity of a line "identity:hexkey" (as dtls_psk_load splits it): its length, or -1. */
static long line_identity(const char *l, size_t len)
{
    if (len == 0 || l[0] == '#' || l[0] == '\n' || l[0] == '\r')
        return -1;
    for (size_t i = len; i-- > 0;)
        if (l[i] == ':')
            return (long)i;
    return -1;
}

static int cmd_psk_remove(const char *path, const char *name, gid_t gid)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int rc;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "tandem pki: %s: %s\n", path, strerror(errno));
        return GW_EXIT_CONFIG;
    }
    dtls_psk_store_t *psk = psk_read(path, "nothing was removed");
    if (!psk)
        return GW_EXIT_CONFIG;
    bool found = psk_has(psk, name);
    dtls_psk_free(psk);
    if (!found) {
        fprintf(stderr, "tandem pki: %s has no identity \"%s\"; nothing was removed\n", path, name);
        return GW_EXIT_CONFIG;
    }
    if ((rc = slurp(path, &buf, &len)) < 0) {
        fprintf(stderr, "tandem pki: cannot read %s: %s\n", path, strerror(-rc));
        return GW_EXIT_CONFIG;
    }
    /* Every line but NAME's, as it was (comments and blank lines included). */
    size_t out = 0, nl = strlen(name);
    for (size_t at = 0; at < len;) {
        const char *eol = memchr(buf + at, '\n', len - at);
        size_t linelen = eol ? (size_t)(eol - (buf + at)) + 1 : len - at;
        long idlen = line_identity(buf + at, linelen);
        if (!(idlen == (long)nl && !memcmp(buf + at, name, nl))) {
            memmove(buf + out, buf + at, linelen);
            out += linelen;
        }
        at += linelen;
    }
    struct iovec iov = { buf, out };
    rc = psk_write(path, &iov, 1, &st, gid);
    explicit_bzero(buf, len);
    free(buf);
    if (rc < 0)
        return GW_EXIT_CONFIG;
    printf("Removed \"%s\" from %s; reload the gateway for it to take effect.\n", name, path);
    return GW_EXIT_OK;
}

static int parse_group(const char *s, gid_t *gid)
{
    struct group *g = getgrnam(s);
    if (!g) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || *end || end == s) {
            fprintf(stderr, "tandem pki: no group \"%s\"\n", s);
            return -1;
        }
        *gid = (gid_t)v;
        return 0;
    }
    *gid = g->gr_gid;
    return 0;
}

int gw_pki_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dir", required_argument, NULL, 'd' },
        { "days", required_argument, NULL, 'n' },
        { "hostname", required_argument, NULL, 'H' },
        { "file", required_argument, NULL, 'f' },
        { "group", required_argument, NULL, 'g' },
        { "remove", required_argument, NULL, 'r' },
        { "list", no_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *file = NULL, *names[PKI_NAMES_MAX], *remove = NULL;
    size_t nnames = 0;
    int days = 0, c;
    bool list = false;
    gid_t gid = (gid_t)-1;

    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? GW_EXIT_USAGE : GW_EXIT_OK;
    }
    const char *sub = argv[1];
    static const char *const subs[] = { "init", "device", "psk", "gateway", "revoke", "crl" };
    size_t which = 0;
    while (which < sizeof(subs) / sizeof(subs[0]) && strcmp(sub, subs[which]))
        which++;
    if (which == sizeof(subs) / sizeof(subs[0])) {
        fprintf(stderr, "tandem pki: unknown command '%s'\n", sub);
        usage(stderr);
        return GW_EXIT_USAGE;
    }
    optind = 2;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir = optarg;
            break;
        case 'n':
            if (parse_days(optarg, &days) < 0)
                return GW_EXIT_USAGE;
            break;
        case 'H':
            if (nnames == PKI_NAMES_MAX) {
                fprintf(stderr, "tandem pki: at most %d --hostname\n", PKI_NAMES_MAX);
                return GW_EXIT_USAGE;
            }
            names[nnames++] = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'g':
            if (parse_group(optarg, &gid) < 0)
                return GW_EXIT_USAGE;
            break;
        case 'r':
            remove = optarg;
            break;
        case 'l':
            list = true;
            break;
        case 'h':
            usage(stdout);
            return GW_EXIT_OK;
        default:
            usage(stderr);
            return GW_EXIT_USAGE;
        }
    }
    int rest = argc - optind;
    bool is_psk = which == 2, is_crl = which == 5, is_revoke = which == 4;
    bool takes_names = which == 0 || which == 3, writes_keys = which <= 3;
    bool psk_manage = remove || list;
    int names_wanted = is_psk ? !psk_manage : (which == 1 || is_revoke);
    if ((is_psk ? !file || dir || days : !dir || file) || (nnames && !takes_names) ||
        (gid != (gid_t)-1 && !writes_keys) || (psk_manage && !is_psk) || (remove && list) ||
        (list && gid != (gid_t)-1) || rest != names_wanted) {
        usage(stderr);
        return GW_EXIT_USAGE;
    }
    if (!days)
        days = is_crl || is_revoke ? PKI_CRL_DAYS : PKI_DAYS;
    switch (which) {
    case 0:
        return cmd_init(dir, days, names, nnames, gid);
    case 1:
        return cmd_device(dir, days, argv[optind], gid);
    case 2:
        if (list)
            return cmd_psk_list(file);
        if (remove)
            return cmd_psk_remove(file, remove, gid);
        return cmd_psk(file, argv[optind], gid);
    case 3:
        return cmd_gateway(dir, days, names, nnames, gid);
    case 4:
        return cmd_crl(dir, days, argv[optind]);
    default:
        return cmd_crl(dir, days, NULL);
    }
}
