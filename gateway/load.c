/*
 * Loading a configuration with everything it points at, for the start, for
 * `tandem check` and for a reload.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config_file.h"
#include "dtls.h"
#include "gateway.h"
#include "log.h"
#include "tls.h"

/*
 * Checks what the configuration points at: certificates and keys match and
 * are in date, CA bundles load, the PSK file parses. Warnings go to the log.
 */
static dtls_psk_store_t *check_files(const gw_config_t *cfg, gw_errs_t *errs)
{
    char err[512];
    int days;
    dtls_psk_store_t *psk = NULL;
    const struct {
        const char *name, *key_name, *cert, *key;
    } pairs[] = {
        { "coap.dtls.cert", "coap.dtls.key", cfg->coap.dtls.cert, cfg->coap.dtls.key },
        { "mqtt.cert", "mqtt.key", cfg->mqtt.cert, cfg->mqtt.key },
        { "mqtt_listener.cert", "mqtt_listener.key",
          cfg->mqtt_listener.enabled ? cfg->mqtt_listener.cert : "", cfg->mqtt_listener.key },
    };
    const struct {
        const char *name, *path;
    } cas[] = { { "coap.dtls.ca", cfg->coap.dtls.ca },
                { "mqtt.ca", cfg->mqtt.ca },
                { "mqtt_listener.ca", cfg->mqtt_listener.enabled ? cfg->mqtt_listener.ca : "" } };

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (!*pairs[i].cert)
            continue;
        if (tls_cert_check(pairs[i].cert, pairs[i].key, &days, err, sizeof(err)) < 0) {
            /* What only the key is to blame for is the key's setting's. */
            const char *name = strstr(err, pairs[i].key) && !strstr(err, pairs[i].cert)
                                   ? pairs[i].key_name
                                   : pairs[i].name;
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, name), name, "%s", err);
        } else if (days < TLS_EXPIRY_WARN_DAYS) {
            gw_warn(CONFIG, "%s: %s expires in %d day%s", pairs[i].name, pairs[i].cert, days,
                    days == 1 ? "" : "s");
        }
    }
    for (size_t i = 0; i < sizeof(cas) / sizeof(cas[0]); i++)
        if (*cas[i].path && tls_ca_check(cas[i].path, err, sizeof(err)) < 0)
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, cas[i].name), cas[i].name, "%s", err);
    const struct {
        const char *name, *path, *ca;
    } crls[] = { { "coap.dtls.crl", cfg->coap.dtls.crl, cfg->coap.dtls.ca },
                 { "mqtt_listener.crl", cfg->mqtt_listener.enabled ? cfg->mqtt_listener.crl : "",
                   cfg->mqtt_listener.ca } };
    for (size_t i = 0; i < sizeof(crls) / sizeof(crls[0]); i++) {
        time_t next;
        if (!*crls[i].path || !*crls[i].ca)
            continue;
        if (tls_crl_check(crls[i].path, crls[i].ca, &next, err, sizeof(err)) < 0)
            gw_errs_add(errs, cfg->file, gw_config_line(cfg, crls[i].name), crls[i].name, "%s",
                        err);
        else if ((days = tls_days_left(next, time(NULL))) < TLS_CRL_WARN_DAYS)
            gw_warn(CONFIG, "%s: %s has its next update in %d days (re-sign it: tandem pki crl)",
                    crls[i].name, crls[i].path, days);
    }
    if (*cfg->coap.dtls.psk_file) {
        psk = dtls_psk_load(cfg->coap.dtls.psk_file, "coap.dtls.psk_file", errs);
        if (psk && dtls_psk_count(psk) == 0)
            gw_warn(CONFIG, "coap.dtls.psk_file: %s holds no identities", cfg->coap.dtls.psk_file);
    }
    return psk;
}

gw_config_t *gw_load(const char *path, const gw_config_t *running, dtls_psk_store_t **psk,
                     gw_errs_t *errs)
{
    unsigned before = errs->count;
    gw_config_t *cfg = gw_config_load(path, errs);
    *psk = NULL;
    if (!cfg)
        return NULL;
    /* At a reload, the files checked are those the process would use (fixed settings stay). */
    if (running)
        gw_config_keep_fixed(cfg, running);
    *psk = check_files(cfg, errs);
    if (errs->count != before) {
        dtls_psk_free(*psk);
        *psk = NULL;
        gw_config_free(cfg);
        return NULL;
    }
    return cfg;
}

/* What the service user is asked to do with one path, and what came of it. */
struct access_item {
    const char *setting, *path;
    int line;
    bool folder;            /* a folder it writes in, rather than a file it reads */
    int root_err, user_err; /* 0, or errno */
};

struct access_list {
    struct access_item items[64];
    size_t n;
};

static void add_item(const char *setting, const char *path, int line, void *arg)
{
    struct access_list *l = arg;
    bool sock = !strcmp(setting, "gateway.control_socket");
    if (l->n >= sizeof(l->items) / sizeof(l->items[0]))
        return;
    struct access_item *it = &l->items[l->n++];
    *it = (struct access_item){ .setting = setting, .path = path, .line = line };
    if (sock) {
        /* The socket is made in its folder. */
        const char *slash = strrchr(path, '/');
        char *dir = !slash          ? strdup(".")
                    : slash == path ? strdup("/")
                                    : strndup(path, (size_t)(slash - path));
        it->path = dir ? dir : path;
        it->folder = true;
    } else {
        it->folder = !strcmp(setting, "gateway.state_dir");
    }
}

static int try_access(const struct access_item *it)
{
    if (it->folder)
        return access(it->path, W_OK | X_OK) == 0 ? 0 : errno;
    int fd = open(it->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return errno;
    close(fd);
    return 0;
}

/*
 * Tries each item as the user pw in a child process: its groups, then its
 * group and user id, as systemd's User= and Group= give the service. 0, or a
 * negative errno code when that could not be done.
 */
static int try_as(const struct passwd *pw, struct access_list *l)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return -err;
    }
    if (pid == 0) {
        int res[64];
        close(fds[0]);
        if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
            setuid(pw->pw_uid) < 0)
            _exit(1);
        for (size_t i = 0; i < l->n; i++)
            res[i] = try_access(&l->items[i]);
        ssize_t want = (ssize_t)(l->n * sizeof(int));
        _exit(write(fds[1], res, (size_t)want) == want ? 0 : 1);
    }
    close(fds[1]);
    int res[64];
    size_t got = 0, want = l->n * sizeof(int);
    while (got < want) {
        ssize_t r = read(fds[0], (char *)res + got, want - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (got != want)
        return -EPERM; /* the child could not become the user */
    for (size_t i = 0; i < l->n; i++)
        l->items[i].user_err = res[i];
    return 0;
}

void gw_check_service_access(const gw_config_t *cfg, gw_errs_t *errs)
{
    const char *user = getenv("TANDEM_SERVICE_USER");
    if (!user)
        user = GW_SERVICE_USER;
    if (!*user)
        return; /* TANDEM_SERVICE_USER="": not asked for */
    const struct passwd *pw = getpwnam(user);
    if (!pw) {
        gw_info(CONFIG,
                "no user %s on this system: cannot tell whether the service can read its files",
                user);
        return;
    }
    if (geteuid() == pw->pw_uid)
        return; /* everything above was already opened as that user */
    if (geteuid() != 0) {
        gw_info(CONFIG,
                "not run as root: cannot tell whether the service user %s can read its files",
                user);
        return;
    }
    struct passwd who = *pw;
    char *name = strdup(pw->pw_name);
    const struct group *gr = getgrgid(pw->pw_gid);
    char *group = gr ? strdup(gr->gr_name) : NULL;
    if (!name) {
        free(group);
        gw_info(CONFIG,
                "cannot tell whether the service user %s can read its files (out of memory)", user);
        return;
    }
    who.pw_name = name;

    struct access_list l = { .n = 0 };
    add_item("config", cfg->file, 0, &l);
    gw_config_each_path(cfg, add_item, &l);
    for (size_t i = 0; i < l.n; i++)
        l.items[i].root_err = try_access(&l.items[i]);
    int rc = try_as(&who, &l);
    if (rc < 0) {
        gw_info(CONFIG, "cannot tell whether the service user %s can read its files (%s)", user,
                strerror(-rc));
    } else {
        for (size_t i = 0; i < l.n; i++) {
            const struct access_item *it = &l.items[i];
            const char *g = group ? group : name;
            if (!it->user_err)
                continue;
            if (it->folder && it->user_err == ENOENT) {
                gw_warn(CONFIG,
                        "%s: the folder %s does not exist; systemd makes it when it starts the "
                        "service, otherwise: systemd-tmpfiles --create tandem.conf, or "
                        "install -d -o %s -g %s -m 0750 %s",
                        it->setting, it->path, name, g, it->path);
            } else if (it->folder) {
                gw_errs_add(errs, cfg->file, it->line, it->setting,
                            "the folder %s cannot be written by the service user %s (%s); "
                            "chown %s:%s %s",
                            it->path, name, strerror(it->user_err), name, g, it->path);
            } else if (!it->root_err) {
                gw_errs_add(errs, cfg->file, it->line, it->setting,
                            "%s cannot be read by the service user %s (%s); make it readable by "
                            "group %s (chgrp %s %s; chmod g+r %s), and its folders searchable",
                            it->path, name, strerror(it->user_err), g, g, it->path, it->path);
            }
        }
    }
    for (size_t i = 0; i < l.n; i++)
        if (!strcmp(l.items[i].setting, "gateway.control_socket") && l.items[i].path)
            free((char *)l.items[i].path);
    free(name);
    free(group);
}

/*
 * A folder the gateway writes in (state_dir, the control socket's): made
 * when missing and its parent allows, as the mqtt store would; when it
 * cannot be, an error naming the folder and how to make it.
 */
static void need_folder(const gw_config_t *cfg, const char *setting, const char *dir, mode_t mode,
                        gw_errs_t *errs)
{
    struct stat st;
    if (stat(dir, &st) == 0)
        return;
    int err = errno;
    if (err == ENOENT) {
        if (mkdir(dir, mode) == 0 || errno == EEXIST)
            return;
        err = errno;
        gw_errs_add(errs, cfg->file, gw_config_line(cfg, setting), setting,
                    "the folder %s does not exist and cannot be made (%s); make it for the "
                    "service user: systemd-tmpfiles --create tandem.conf (the package's "
                    "tmpfiles.d), or install -d -o %s -g %s -m 0750 %s",
                    dir, strerror(err), GW_SERVICE_USER, GW_SERVICE_USER, dir);
        return;
    }
    gw_errs_add(errs, cfg->file, gw_config_line(cfg, setting), setting,
                "cannot use the folder %s (%s)", dir, strerror(err));
}

int gw_check_folders(const gw_config_t *cfg, gw_errs_t *errs)
{
    unsigned before = errs->count;
    if (*cfg->gateway.state_dir)
        need_folder(cfg, "gateway.state_dir", cfg->gateway.state_dir, 0700, errs);
    const char *sock = cfg->gateway.control_socket;
    const char *slash = strrchr(sock, '/');
    if (*sock && slash && slash != sock) {
        char *dir = strndup(sock, (size_t)(slash - sock));
        if (dir)
            need_folder(cfg, "gateway.control_socket", dir, 0750, errs);
        free(dir);
    }
    return errs->count == before ? 0 : -ENOENT;
}
