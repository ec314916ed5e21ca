#include "persist.h"

#include <MQTTAsync.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/*
 * What pget and pkeys return, Paho frees with its own allocator (it tracks
 * its heap), so it must come from Paho's malloc. The library exports it;
 * this version's headers do not declare it.
 */
extern void *MQTTAsync_malloc(size_t size);

static char *paho_strndup(const char *s, size_t n)
{
    char *d = MQTTAsync_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

struct persist {
    char *dir; /* owned: state_dir/mqtt */
    atomic_bool durable;
    atomic_ullong bytes;
    atomic_uint records;
};

#define SUFFIX ".msg"

/* Paho's keys are short names such as "s-12"; anything else is refused. */
static bool key_ok(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

static int path_of(const persist_t *p, const char *key, const char *suffix, char *buf,
                   size_t len)
{
    if (!key_ok(key))
        return -1;
    int n = snprintf(buf, len, "%s/%s%s", p->dir, key, suffix);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static bool is_record(const char *name)
{
    size_t n = strlen(name), s = strlen(SUFFIX);
    return n > s && !strcmp(name + n - s, SUFFIX);
}

persist_t *persist_new(const char *state_dir)
{
    persist_t *p = calloc(1, sizeof(*p));
    if (!p || asprintf(&p->dir, "%s/mqtt", state_dir) < 0) {
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    if ((mkdir(state_dir, 0700) < 0 && errno != EEXIST) ||
        (mkdir(p->dir, 0700) < 0 && errno != EEXIST)) {
        int e = errno;
        persist_free(p);
        errno = e;
        return NULL;
    }
    DIR *d = opendir(p->dir);
    if (!d) {
        int e = errno;
        persist_free(p);
        errno = e;
        return NULL;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", p->dir, de->d_name);
        if (is_record(de->d_name) && stat(path, &st) == 0) {
            p->bytes += (unsigned long long)st.st_size;
            p->records++;
        } else if (strstr(de->d_name, ".tmp")) {
            unlink(path); /* a write a crash interrupted: never renamed, never promised */
        }
    }
    closedir(d);
    return p;
}

void persist_free(persist_t *p)
{
    if (!p)
        return;
    free(p->dir);
    free(p);
}

void persist_set_durable(persist_t *p, bool durable)
{
    atomic_store(&p->durable, durable);
}

uint64_t persist_bytes(persist_t *p)
{
    return atomic_load(&p->bytes);
}

unsigned persist_records(persist_t *p)
{
    return atomic_load(&p->records);
}

static int sync_dir(const persist_t *p)
{
    int fd = open(p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int persist_flush(persist_t *p)
{
    DIR *d = opendir(p->dir);
    struct dirent *de;
    int rc = 0;
    if (!d)
        return -errno;
    while ((de = readdir(d))) {
        char path[4096];
        if (!is_record(de->d_name))
            continue;
        snprintf(path, sizeof(path), "%s/%s", p->dir, de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (fsync(fd) < 0 && rc == 0)
                rc = -errno;
            close(fd);
        }
    }
    closedir(d);
    if (sync_dir(p) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

static int p_open(void **handle, const char *client_id, const char *uri, void *context)
{
    (void)client_id;
    (void)uri;
    *handle = context;
    return 0;
}

static int p_close(void *handle)
{
    (void)handle;
    return 0;
}

static int p_put(void *handle, char *key, int bufcount, char *buffers[], int buflens[])
{
    persist_t *p = handle;
    char path[4096], tmp[4096];
    struct stat old;
    size_t total = 0;

    if (bufcount < 0 || bufcount > 64 || path_of(p, key, SUFFIX, path, sizeof(path)) < 0 ||
        path_of(p, key, ".tmp", tmp, sizeof(tmp)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    struct iovec iov[64];
    for (int i = 0; i < bufcount; i++) {
        iov[i].iov_base = buffers[i];
        iov[i].iov_len = buflens[i] > 0 ? (size_t)buflens[i] : 0;
        total += iov[i].iov_len;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    ssize_t w = writev(fd, iov, bufcount);
    bool durable = atomic_load(&p->durable);
    if (w < 0 || (size_t)w != total || (durable && fsync(fd) < 0)) {
        close(fd);
        unlink(tmp);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    close(fd);
    bool existed = stat(path, &old) == 0;
    if (rename(tmp, path) < 0 || (durable && sync_dir(p) < 0)) {
        unlink(tmp);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    if (existed)
        atomic_fetch_sub(&p->bytes, (unsigned long long)old.st_size);
    else
        atomic_fetch_add(&p->records, 1);
    atomic_fetch_add(&p->bytes, total);
    return 0;
}

static int p_get(void *handle, char *key, char **buffer, int *buflen)
{
    persist_t *p = handle;
    char path[4096];
    struct stat st;
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size > (1 << 28)) {
        if (fd >= 0)
            close(fd);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    char *buf = MQTTAsync_malloc(st.st_size ? (size_t)st.st_size : 1);
    ssize_t r = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (r != st.st_size) {
        MQTTAsync_free(buf);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    *buffer = buf;
    *buflen = (int)st.st_size;
    return 0;
}

static int p_remove(void *handle, char *key)
{
    persist_t *p = handle;
    char path[4096];
    struct stat st;
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    if (stat(path, &st) < 0 || unlink(path) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    atomic_fetch_sub(&p->bytes, (unsigned long long)st.st_size);
    atomic_fetch_sub(&p->records, 1);
    return 0;
}

static int p_keys(void *handle, char ***keys, int *nkeys)
{
    persist_t *p = handle;
    DIR *d = opendir(p->dir);
    char **v = NULL;
    int n = 0, cap = 0;
    struct dirent *de;

    *keys = NULL;
    *nkeys = 0;
    if (!d)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    while ((de = readdir(d))) {
        if (!is_record(de->d_name))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = MQTTAsync_malloc((size_t)cap * sizeof(*v));
            if (!nv)
                goto fail;
            if (v)
                memcpy(nv, v, (size_t)n * sizeof(*v));
            MQTTAsync_free(v);
            v = nv;
        }
        v[n] = paho_strndup(de->d_name, strlen(de->d_name) - strlen(SUFFIX));
        if (!v[n])
            goto fail;
        n++;
    }
    closedir(d);
    *keys = v;
    *nkeys = n;
    return 0;
fail:
    closedir(d);
    for (int i = 0; i < n; i++)
        MQTTAsync_free(v[i]);
    MQTTAsync_free(v);
    return MQTTCLIENT_PERSISTENCE_ERROR;
}

static int p_clear(void *handle)
{
    char **keys;
    int n;
    if (p_keys(handle, &keys, &n) != 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    for (int i = 0; i < n; i++) {
        p_remove(handle, keys[i]);
        MQTTAsync_free(keys[i]);
    }
    MQTTAsync_free(keys);
    return 0;
}

static int p_containskey(void *handle, char *key)
{
    persist_t *p = handle;
    char path[4096];
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0 || access(path, F_OK) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    return 0;
}

MQTTClient_persistence persist_paho(persist_t *p)
{
    MQTTClient_persistence pp = {
        .context = p,
        .popen = p_open,
        .pclose = p_close,
        .pput = p_put,
        .pget = p_get,
        .premove = p_remove,
        .pkeys = p_keys,
        .pclear = p_clear,
        .pcontainskey = p_containskey,
    };
    return pp;
}
