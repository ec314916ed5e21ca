/*
 * `tandem pki`: a development CA, the gateway's certificate, device
 * certificates (tls/pki.c) and device PSKs. Nothing existing is ever
 * replaced; a refusal leaves every file as it was.
 *
 *   tandem pki init --dir DIR [--days N] [--hostname NAME ...]
 *   tandem pki device --dir DIR [--days N] NAME
 *   tandem pki psk --file PSKFILE NAME
 */
#include "pki_cmd.h"

#include <errno.h>
#include <getopt.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
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

/* Bytes of a key `pki psk` makes: 128 bits. */
#define PSK_BYTES 16
/* Largest PSK file `pki psk` rewrites. */
#define PSK_FILE_MAX (16u << 20)

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: tandem pki init --dir DIR [--days N] [--hostname NAME ...]\n"
            "       tandem pki device --dir DIR [--days N] NAME\n"
            "       tandem pki psk --file PSKFILE NAME\n"
            "init: an ECDSA P-256 CA (DIR/ca.pem, DIR/ca.key) and the gateway's certificate\n"
            "      (DIR/gateway.pem, DIR/gateway.key) for each NAME (DNS name or IP address;\n"
            "      default: this machine's hostname)\n"
            "device: DIR/NAME.pem and DIR/NAME.key with CN=NAME, signed by DIR's CA\n"
            "psk: appends NAME and a random 128-bit key to PSKFILE and prints the key\n"
            "Certificates are valid %d days unless --days says otherwise. Existing files are\n"
            "never replaced. Keys are written mode 0600.\n",
            PKI_DAYS);
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

static int cmd_init(const char *dir, int days, const char **names, size_t n)
{
    char err[PATH_MAX + 200], host[256];

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

static int cmd_device(const char *dir, int days, const char *name)
{
    char err[PATH_MAX + 200];

    if (!identity_ok(name))
        return GW_EXIT_CONFIG;
    if (pki_device(dir, name, days, err, sizeof(err)) < 0) {
        fprintf(stderr, "tandem pki: %s\n", err);
        return GW_EXIT_CONFIG;
    }
    printf("Made %s/%s.pem and %s/%s.key for the device \"%s\" (signed by %s/ca.pem)\n", dir, name,
           dir, name, name, dir);
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

static int cmd_psk(const char *path, const char *name)
{
    unsigned char key[PSK_BYTES];
    char hex[2 * PSK_BYTES + 1], line[MAP_IDENTITY_MAX + sizeof(hex) + 3];
    char *old = NULL;
    size_t oldlen = 0;
    struct stat st;
    bool exists = stat(path, &st) == 0;
    int rc;

    if (!identity_ok(name))
        return GW_EXIT_CONFIG;
    if (exists) {
        /* Read as the gateway reads it: a file it would refuse is not added to. */
        gw_errs_t errs = { 0 };
        dtls_psk_store_t *psk = dtls_psk_load(path, "psk", &errs);
        if (!psk || errs.count) {
            fprintf(stderr, "tandem pki: %s has errors; nothing was added:\n%s", path,
                    errs.text ? errs.text : "");
            gw_errs_clear(&errs);
            dtls_psk_free(psk);
            return GW_EXIT_CONFIG;
        }
        gw_errs_clear(&errs);
        for (size_t i = 0; i < dtls_psk_count(psk); i++) {
            if (!strcmp(dtls_psk_identity(psk, i), name)) {
                fprintf(stderr, "tandem pki: %s already has a key for \"%s\"; nothing was added\n",
                        path, name);
                dtls_psk_free(psk);
                return GW_EXIT_CONFIG;
            }
        }
        dtls_psk_free(psk);
        if ((rc = slurp(path, &old, &oldlen)) < 0) {
            fprintf(stderr, "tandem pki: cannot read %s: %s\n", path, strerror(-rc));
            return GW_EXIT_CONFIG;
        }
    } else if (errno != ENOENT) {
        fprintf(stderr, "tandem pki: %s: %s\n", path, strerror(errno));
        return GW_EXIT_CONFIG;
    }
    if ((rc = gnutls_rnd(GNUTLS_RND_KEY, key, sizeof(key))) < 0) {
        fprintf(stderr, "tandem pki: no random key: %s\n", gnutls_strerror(rc));
        free(old);
        return GW_EXIT_CONFIG;
    }
    for (size_t i = 0; i < sizeof(key); i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    int linelen = snprintf(line, sizeof(line), "%s%s:%s\n",
                           oldlen && old[oldlen - 1] != '\n' ? "\n" : "", name, hex);
    struct iovec iov[2] = { { old, oldlen }, { line, (size_t)linelen } };
    rc = gw_file_write_mode(path, iov, 2, GW_FILE_SYNC | GW_FILE_SYNC_DIR,
                            exists ? st.st_mode & 07777 : 0600);
    free(old);
    if (rc == 0 && exists && (st.st_uid != geteuid() || st.st_gid != getegid()) &&
        chown(path, st.st_uid, st.st_gid) < 0)
        rc = -errno;
    if (rc < 0) {
        fprintf(stderr, "tandem pki: cannot write %s: %s\n", path, strerror(-rc));
        return GW_EXIT_CONFIG;
    }
    printf("%s\n", hex);
    return GW_EXIT_OK;
}

int gw_pki_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dir", required_argument, NULL, 'd' },      { "days", required_argument, NULL, 'n' },
        { "hostname", required_argument, NULL, 'H' }, { "file", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },           { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *file = NULL, *names[PKI_NAMES_MAX];
    size_t nnames = 0;
    int days = PKI_DAYS, c;

    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? GW_EXIT_USAGE : GW_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "init") && strcmp(sub, "device") && strcmp(sub, "psk")) {
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
        case 'h':
            usage(stdout);
            return GW_EXIT_OK;
        default:
            usage(stderr);
            return GW_EXIT_USAGE;
        }
    }
    int rest = argc - optind;
    bool is_psk = !strcmp(sub, "psk"), is_init = !strcmp(sub, "init");
    if ((is_psk ? !file || dir : !dir || file) || (nnames && !is_init) ||
        (is_psk && days != PKI_DAYS) || rest != (is_init ? 0 : 1)) {
        usage(stderr);
        return GW_EXIT_USAGE;
    }
    if (is_init)
        return cmd_init(dir, days, names, nnames);
    if (is_psk)
        return cmd_psk(file, argv[optind]);
    return cmd_device(dir, days, argv[optind]);
}
