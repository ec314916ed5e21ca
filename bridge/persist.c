#include "persist.h"

#include "file.h"
#include "log.h"
#include "record.h"

#include <MQTTAsync.h>

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
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

/* A record kept in memory while the broker is connected. */
struct mrec {
    char key[72];
    char *data; /* owned */
    size_t len;
    struct mrec *next;
};

#define MEM_BUCKETS 1024

struct persist {
    char *dir; /* owned: state_dir/mqtt */
    atomic_bool durable;
    atomic_ullong bytes;  /* on disk and in memory */
    atomic_uint records;  /* on disk and in memory */
    unsigned refused;     /* records removed at start: damaged, or refused by a broker */
    pthread_mutex_t lock; /* the memory tier; Paho's threads and the loop use it */
    struct mrec *mem[MEM_BUCKETS];
    unsigned mem_records; /* of records: those in memory (lock held) */
    /* Group commit (persist_defer): new records written, not yet fsync'ed. */
    bool deferring;
    pthread_t defer_thread;
    char **dirty; /* owned: their paths */
    size_t ndirty, dirty_cap;
    /*
     * Sent messages the client removed before their delivery was reported
     * (lock held): see persist_session_start().
     */
    struct limbo *limbo;
};

/* A sent message removed from the store, its delivery not reported yet. */
struct limbo {
    struct limbo *next;
    char key[72];
    uint8_t *data; /* owned, when it was in memory; NULL: the file key.limbo */
    size_t len;
    bool lost; /* removed before the connection was made: to send again */
};

#define SUFFIX ".msg"
/* A sent message removed, its delivery not yet reported (struct limbo). */
#define LIMBO ".limbo"
/* A sent message being handed to a new client as a new one (persist_take_sent). */
#define RESEND ".resend"
/* Records set aside in state_dir/mqtt-refused at most (persist_set_aside). */
#define SET_ASIDE_MAX 1000
/* Largest record read back, bytes (what p_get also refuses past). */
#define RECORD_MAX (1 << 28)

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

static int path_of(const persist_t *p, const char *key, const char *suffix, char *buf, size_t len)
{
    if (!key_ok(key))
        return -1;
    int n = snprintf(buf, len, "%s/%s%s", p->dir, key, suffix);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static bool ends_with(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = strlen(suffix);
    return n > s && !strcmp(name + n - s, suffix);
}

static bool is_record(const char *name)
{
    size_t n = strlen(name), s = strlen(SUFFIX);
    return n > s && !strcmp(name + n - s, SUFFIX);
}

static size_t bucket(const char *key)
{
    size_t h = 5381;
    for (; *key; key++)
        h = h * 33 + (unsigned char)*key;
    return h % MEM_BUCKETS;
}

/* The memory record of key (lock held), and where it hangs. */
static struct mrec **mem_find(persist_t *p, const char *key)
{
    struct mrec **pp = &p->mem[bucket(key)];
    while (*pp && strcmp((*pp)->key, key))
        pp = &(*pp)->next;
    return pp;
}

/*
 * Whether a record not in memory may be on disk (lock held): while
 * connected, Paho removes keys it never stored ("sc-" and the like), and a
 * look at the disk for each would cost a system call per message.
 */
static bool maybe_on_disk(const persist_t *p)
{
    return atomic_load(&p->records) != p->mem_records;
}

static void mem_drop(persist_t *p, struct mrec **pp)
{
    struct mrec *r = *pp;
    *pp = r->next;
    p->mem_records--;
    atomic_fetch_sub(&p->bytes, r->len);
    atomic_fetch_sub(&p->records, 1);
    free(r->data);
    free(r);
}

/*
 * Whether the record file name (of st) is one the client may restore: read
 * whole and checked, so that neither a damaged record reaches Paho's reader
 * nor a message a broker would refuse (and drop the connection for) reaches
 * the broker, at every reconnection again.
 */
static bool record_ok(const persist_t *p, const char *name, const char *path, const struct stat *st)
{
    char key[80], why[128];
    size_t n = strlen(name) - strlen(SUFFIX);
    (void)p;
    if (n >= sizeof(key) || st->st_size > RECORD_MAX)
        return false;
    memcpy(key, name, n);
    key[n] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    uint8_t *buf = malloc(st->st_size ? (size_t)st->st_size : 1);
    ssize_t got = buf ? read(fd, buf, (size_t)st->st_size) : -1;
    close(fd);
    bool ok = got == st->st_size && record_read(key, buf, (size_t)got, NULL, why, sizeof(why)) >= 0;
    if (!ok)
        gw_log_limited(GW_LOG_WARNING, MQTT, "stored record %s refused (%s)", key,
                       got == st->st_size ? why : "unreadable");
    free(buf);
    return ok;
}

persist_t *persist_new(const char *state_dir)
{
    persist_t *p = calloc(1, sizeof(*p));
    if (!p || asprintf(&p->dir, "%s/mqtt", state_dir) < 0) {
        free(p);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
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
    /*
     * Two passes: first what a crash left (interrupted writes removed,
     * records handed over again or in limbo renamed back), then every
     * record checked and counted once, the renamed ones included (a file
     * renamed during a readdir() may or may not be seen again by it).
     */
    struct dirent *de;
    for (int pass = 0; pass < 2; pass++) {
        rewinddir(d);
        while ((de = readdir(d))) {
            char path[4096];
            struct stat st;
            snprintf(path, sizeof(path), "%s/%s", p->dir, de->d_name);
            if (pass == 1 && is_record(de->d_name) && stat(path, &st) == 0) {
                if (!record_ok(p, de->d_name, path, &st)) {
                    unlink(path);
                    p->refused++;
                    continue;
                }
                p->bytes += (unsigned long long)st.st_size;
                p->records++;
            } else if (pass == 0 && !is_record(de->d_name) && strstr(de->d_name, ".tmp")) {
                unlink(path); /* a write a crash interrupted: never renamed, never promised */
            } else if (pass == 0 &&
                       (ends_with(de->d_name, RESEND) || ends_with(de->d_name, LIMBO))) {
                /*
                 * A crash while it was handed over again, or before its
                 * delivery was reported: it is sent again (at least once).
                 */
                char back[4096];
                size_t cut = strlen(ends_with(de->d_name, RESEND) ? RESEND : LIMBO);
                snprintf(back, sizeof(back), "%.*s%s", (int)(strlen(path) - cut), path, SUFFIX);
                rename(path, back);
            }
        }
    }
    closedir(d);
    if (p->refused)
        gw_err(MQTT,
               "%u records of the store in %s were damaged or held messages a broker "
               "refuses; they were removed",
               p->refused, p->dir);
    return p;
}

unsigned persist_refused(const persist_t *p)
{
    return p->refused;
}

static int write_record(persist_t *p, const char *key, struct iovec *iov, int n, size_t total);
static uint8_t *read_whole(const persist_t *p, const char *name, size_t *len);
static int sync_dir(const persist_t *p);

/* Writes the memory tier to disk, durably (lock held). 0 or -1. */
static int spill(persist_t *p)
{
    int rc = 0;
    for (size_t b = 0; b < MEM_BUCKETS; b++) {
        while (p->mem[b]) {
            struct mrec *r = p->mem[b];
            struct iovec iov = { r->data, r->len };
            if (write_record(p, r->key, &iov, 1, r->len) < 0)
                rc = -1;
            else /* now counted on disk */
                atomic_fetch_add(&p->records, 1), atomic_fetch_add(&p->bytes, r->len);
            mem_drop(p, &p->mem[b]);
        }
    }
    return rc;
}

void persist_free(persist_t *p)
{
    if (!p)
        return;
    /* What the client still held (not acknowledged) is sent after the next start. */
    pthread_mutex_lock(&p->lock);
    p->deferring = false;
    atomic_store(&p->durable, true);
    spill(p);
    pthread_mutex_unlock(&p->lock);
    persist_sync(p);
    /* What is in limbo was sent and its delivery not reported: sent again after the next start. */
    for (struct limbo *l = p->limbo, *next; l; l = next) {
        next = l->next;
        if (l->data) {
            struct iovec iov = { l->data, l->len };
            write_record(p, l->key, &iov, 1, l->len);
        } else {
            char from[4096], to[4096];
            if (path_of(p, l->key, LIMBO, from, sizeof(from)) == 0 &&
                path_of(p, l->key, SUFFIX, to, sizeof(to)) == 0)
                rename(from, to);
        }
        free(l->data);
        free(l);
    }
    sync_dir(p);
    pthread_mutex_destroy(&p->lock);
    free(p->dir);
    free(p);
}

void persist_defer(persist_t *p, bool on)
{
    pthread_mutex_lock(&p->lock);
    p->deferring = on;
    p->defer_thread = pthread_self();
    pthread_mutex_unlock(&p->lock);
}

/*
 * Whether a new record written now by this thread may wait for
 * persist_sync(). With p->lock held, as in every write_record().
 */
static bool deferred_here(const persist_t *p)
{
    return p->deferring && pthread_equal(p->defer_thread, pthread_self());
}

/* Remembers a record for persist_sync(). With p->lock held. */
static int dirty_add(persist_t *p, const char *path)
{
    if (p->ndirty == p->dirty_cap) {
        size_t cap = p->dirty_cap ? 2 * p->dirty_cap : 64;
        char **d = realloc(p->dirty, cap * sizeof(*d));
        if (!d)
            return -1;
        p->dirty = d;
        p->dirty_cap = cap;
    }
    if (!(p->dirty[p->ndirty] = strdup(path)))
        return -1;
    p->ndirty++;
    return 0;
}

void persist_set_durable(persist_t *p, bool durable)
{
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->durable, durable);
    if (durable)
        spill(p);
    pthread_mutex_unlock(&p->lock);
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

/* Takes the list of records waiting for persist_sync(); the caller frees it. */
static char **dirty_take(persist_t *p, size_t *n)
{
    pthread_mutex_lock(&p->lock);
    char **dirty = p->dirty;
    *n = p->ndirty;
    p->dirty = NULL;
    p->ndirty = p->dirty_cap = 0;
    pthread_mutex_unlock(&p->lock);
    return dirty;
}

int persist_sync(persist_t *p)
{
    size_t n;
    char **dirty = dirty_take(p, &n);
    if (n == 0) {
        free(dirty);
        return 0;
    }
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int fd = open(dirty[i], O_RDONLY | O_CLOEXEC);
        /* Gone already: delivered and removed, nothing left to keep. */
        if (fd < 0 && errno != ENOENT && rc == 0)
            rc = -errno;
        if (fd >= 0) {
            if (fsync(fd) < 0 && rc == 0)
                rc = -errno;
            close(fd);
        }
        free(dirty[i]);
    }
    free(dirty);
    if (sync_dir(p) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

int persist_flush(persist_t *p)
{
    size_t n;
    char **dirty = dirty_take(p, &n); /* every record is fsync'ed below */
    for (size_t i = 0; i < n; i++)
        free(dirty[i]);
    free(dirty);
    pthread_mutex_lock(&p->lock);
    bool was = atomic_load(&p->durable);
    atomic_store(&p->durable, true);
    int rc = spill(p) < 0 ? -EIO : 0;
    atomic_store(&p->durable, was);
    pthread_mutex_unlock(&p->lock);
    DIR *d = opendir(p->dir);
    struct dirent *de;
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

/*
 * Writes one record file: to a temporary name, then renamed (fsync'ed when
 * durable, now or at persist_sync()). With p->lock held.
 */
static int write_record(persist_t *p, const char *key, struct iovec *iov, int n, size_t total)
{
    char path[4096];
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0)
        return -1;
    struct stat old;
    bool existed = stat(path, &old) == 0;
    bool durable = atomic_load(&p->durable);
    /* A replaced record was durable: its new version is, before the rename. */
    bool defer = durable && !existed && deferred_here(p);
    bool sync_now = durable && !defer;
    (void)total;
    if (gw_file_write(path, iov, n, sync_now ? GW_FILE_SYNC : 0) < 0 ||
        (sync_now && sync_dir(p) < 0))
        return -1;
    if (defer && dirty_add(p, path) < 0) {
        /* Cannot remember it for the group commit: make it durable now. */
        int fd2 = open(path, O_RDONLY | O_CLOEXEC);
        bool ok = fd2 >= 0 && fsync(fd2) == 0 && sync_dir(p) == 0;
        if (fd2 >= 0)
            close(fd2);
        if (!ok)
            return -1;
    }
    if (existed) {
        atomic_fetch_sub(&p->bytes, (unsigned long long)old.st_size);
        atomic_fetch_sub(&p->records, 1);
    }
    return 0;
}

/*
 * While connected, records live in memory: a 2.04 then waits for the broker,
 * so a crash loses nothing that was promised, and the disk is spared two
 * files per publish. They go to disk when the connection drops, at a stop,
 * and whenever the gateway must keep what is in flight.
 */
static int p_put(void *handle, char *key, int bufcount, char *buffers[], int buflens[])
{
    persist_t *p = handle;
    size_t total = 0;
    struct iovec iov[64];
    int rc = 0;

    if (bufcount < 0 || bufcount > 64 || !key_ok(key))
        return MQTTCLIENT_PERSISTENCE_ERROR;
    for (int i = 0; i < bufcount; i++) {
        iov[i].iov_base = buffers[i];
        iov[i].iov_len = buflens[i] > 0 ? (size_t)buflens[i] : 0;
        total += iov[i].iov_len;
    }
    pthread_mutex_lock(&p->lock);
    struct mrec **pp = mem_find(p, key);
    if (*pp)
        mem_drop(p, pp);
    if (atomic_load(&p->durable)) {
        rc = write_record(p, key, iov, bufcount, total);
    } else {
        struct mrec *r = calloc(1, sizeof(*r));
        char *data = malloc(total ? total : 1);
        if (!r || !data) {
            free(r);
            free(data);
            rc = -1;
        } else {
            snprintf(r->key, sizeof(r->key), "%s", key);
            for (int i = 0, off = 0; i < bufcount; off += (int)iov[i].iov_len, i++)
                memcpy(data + off, iov[i].iov_base, iov[i].iov_len);
            r->data = data;
            r->len = total;
            r->next = p->mem[bucket(key)];
            p->mem[bucket(key)] = r;
            p->mem_records++;
        }
    }
    if (rc == 0) {
        atomic_fetch_add(&p->records, 1);
        atomic_fetch_add(&p->bytes, total);
    }
    pthread_mutex_unlock(&p->lock);
    return rc == 0 ? 0 : MQTTCLIENT_PERSISTENCE_ERROR;
}

/*
 * The length Paho is given for a record of len bytes read into buf, which
 * has room for one byte more. Paho 1.3.12 cannot restore a 3.1.1
 * UNSUBSCRIBE command (key "c-", type 10: type, token, count, topics): its
 * MQTTAsync_restoreCommand() takes the topic that ends the record for one
 * without its NUL (the check at MQTTAsyncUtils.c:539 is one off), fails, and
 * MQTTAsync_processCommand() then dereferences the NULL it returns
 * (MQTTAsyncUtils.c:1269 -> :232). mqtt_kick()'s UNSUBSCRIBEs are persisted
 * like any command: a gateway stopped with one still queued crashed once
 * connected, at every start after. One more NUL at the end, which Paho
 * ignores (3.1.1 has no properties after the topics), makes the record
 * readable.
 */
#define PAHO_UNSUBSCRIBE 10

static size_t paho_readable(const char *key, char *buf, size_t len)
{
    int type;
    if (strncmp(key, "c-", 2) || len <= 3 * sizeof(int) || buf[len - 1] != '\0')
        return len;
    memcpy(&type, buf, sizeof(int));
    if (type != PAHO_UNSUBSCRIBE)
        return len;
    buf[len] = '\0';
    return len + 1;
}

static int p_get(void *handle, char *key, char **buffer, int *buflen)
{
    persist_t *p = handle;
    char path[4096];
    struct stat st;
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_lock(&p->lock);
    struct mrec *m = *mem_find(p, key);
    if (m) {
        char *buf = MQTTAsync_malloc(m->len + 1);
        if (buf) {
            memcpy(buf, m->data, m->len);
            *buffer = buf;
            *buflen = (int)paho_readable(key, buf, m->len);
        }
        pthread_mutex_unlock(&p->lock);
        return buf ? 0 : MQTTCLIENT_PERSISTENCE_ERROR;
    }
    pthread_mutex_unlock(&p->lock);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size > RECORD_MAX) {
        if (fd >= 0)
            close(fd);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    char *buf = MQTTAsync_malloc((size_t)st.st_size + 1);
    ssize_t r = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (r != st.st_size) {
        MQTTAsync_free(buf);
        return MQTTCLIENT_PERSISTENCE_ERROR;
    }
    *buffer = buf;
    *buflen = (int)paho_readable(key, buf, (size_t)st.st_size);
    return 0;
}

static bool is_sent_key(const char *key)
{
    return !strncmp(key, "s-", 2) || !strncmp(key, "s5-", 3);
}

/*
 * A sent message leaves the store when the broker acknowledged it, and also
 * when Paho drops it because the broker has no session for us any more
 * (MQTTAsync_cleanSession at the CONNACK): a message answered 2.04 would then
 * be lost. So it waits in limbo until its delivery is reported
 * (persist_delivered); what is still there when the next connection is made
 * was dropped, and is sent again as a new message (persist_take_lost).
 */
static int p_remove(void *handle, char *key)
{
    persist_t *p = handle;
    char path[4096], limbo[4096];
    struct stat st;
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0 ||
        path_of(p, key, LIMBO, limbo, sizeof(limbo)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    bool sent = is_sent_key(key);
    struct limbo *l = sent ? calloc(1, sizeof(*l)) : NULL;
    if (l)
        snprintf(l->key, sizeof(l->key), "%s", key);
    pthread_mutex_lock(&p->lock);
    struct mrec **pp = mem_find(p, key);
    if (*pp) {
        if (l) { /* the record's data goes to limbo as it is */
            l->data = (uint8_t *)(*pp)->data;
            l->len = (*pp)->len;
            (*pp)->data = NULL;
            l->next = p->limbo;
            p->limbo = l;
        }
        mem_drop(p, pp);
        pthread_mutex_unlock(&p->lock);
        return 0;
    }
    int rc = !maybe_on_disk(p) || stat(path, &st) < 0 ? -1 : l ? rename(path, limbo) : unlink(path);
    if (rc == 0 && l) {
        l->next = p->limbo;
        p->limbo = l;
        l = NULL;
    }
    pthread_mutex_unlock(&p->lock);
    free(l);
    if (rc < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    atomic_fetch_sub(&p->bytes, (unsigned long long)st.st_size);
    atomic_fetch_sub(&p->records, 1);
    return 0;
}

static void limbo_free(persist_t *p, struct limbo *l)
{
    char path[4096];
    if (!l->data && path_of(p, l->key, LIMBO, path, sizeof(path)) == 0)
        unlink(path);
    free(l->data);
    free(l);
}

void persist_delivered(persist_t *p, int msgid)
{
    char a[24], b[24];
    snprintf(a, sizeof(a), "s-%d", msgid);
    snprintf(b, sizeof(b), "s5-%d", msgid);
    pthread_mutex_lock(&p->lock);
    for (struct limbo **pp = &p->limbo; *pp;) {
        struct limbo *l = *pp;
        if (!l->lost && (!strcmp(l->key, a) || !strcmp(l->key, b))) {
            *pp = l->next;
            limbo_free(p, l);
        } else {
            pp = &l->next;
        }
    }
    pthread_mutex_unlock(&p->lock);
}

void persist_session_start(persist_t *p)
{
    pthread_mutex_lock(&p->lock);
    for (struct limbo *l = p->limbo; l; l = l->next)
        l->lost = true;
    pthread_mutex_unlock(&p->lock);
}

int persist_take_lost(persist_t *p, int (*fn)(void *arg, const record_pub_t *pub), void *arg)
{
    int n = 0;
    pthread_mutex_lock(&p->lock);
    struct limbo *lost = NULL;
    for (struct limbo **pp = &p->limbo; *pp;) {
        struct limbo *l = *pp;
        if (l->lost) {
            *pp = l->next;
            l->next = lost;
            lost = l;
        } else {
            pp = &l->next;
        }
    }
    pthread_mutex_unlock(&p->lock);
    for (struct limbo *l = lost, *next; l; l = next) {
        next = l->next;
        size_t len = l->len;
        char name[96], why[128];
        snprintf(name, sizeof(name), "%s%s", l->key, LIMBO);
        uint8_t *buf = l->data ? l->data : read_whole(p, name, &len);
        record_pub_t pub;
        bool ok = buf && record_read(l->key, buf, len, &pub, why, sizeof(why)) == RECORD_PUBLISH &&
                  fn(arg, &pub) == 0;
        if (buf != l->data)
            free(buf);
        if (!ok) {
            /* Not handed over: back to limbo, to be tried at the next connection. */
            pthread_mutex_lock(&p->lock);
            l->next = p->limbo;
            p->limbo = l;
            pthread_mutex_unlock(&p->lock);
            continue;
        }
        limbo_free(p, l);
        n++;
    }
    return n;
}

static int p_keys(void *handle, char ***keys, int *nkeys)
{
    persist_t *p = handle;
    /* Paho asks at create, when nothing is in memory yet; spill anything that is. */
    pthread_mutex_lock(&p->lock);
    bool was = atomic_load(&p->durable);
    atomic_store(&p->durable, true);
    spill(p);
    atomic_store(&p->durable, was);
    pthread_mutex_unlock(&p->lock);
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
    if (path_of(p, key, SUFFIX, path, sizeof(path)) < 0)
        return MQTTCLIENT_PERSISTENCE_ERROR;
    pthread_mutex_lock(&p->lock);
    bool in_memory = *mem_find(p, key) != NULL, on_disk = !in_memory && maybe_on_disk(p);
    pthread_mutex_unlock(&p->lock);
    return in_memory || (on_disk && access(path, F_OK) == 0) ? 0 : MQTTCLIENT_PERSISTENCE_ERROR;
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

/* Whether name is a record of a message sent and not acknowledged ("s-N"/"s5-N"). */
static bool is_sent(const char *name)
{
    return is_record(name) && (!strncmp(name, "s-", 2) || !strncmp(name, "s5-", 3));
}

unsigned persist_sent(persist_t *p, char *key, size_t keylen)
{
    unsigned n = 0;
    DIR *d = opendir(p->dir);
    struct dirent *de;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        if (!is_sent(de->d_name))
            continue;
        if (n++ == 0 && key)
            snprintf(key, keylen, "%.*s", (int)(strlen(de->d_name) - strlen(SUFFIX)), de->d_name);
    }
    closedir(d);
    return n;
}

/* Reads the record file name whole; NULL on failure. */
static uint8_t *read_whole(const persist_t *p, const char *name, size_t *len)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", p->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) == 0 && st.st_size <= RECORD_MAX)
        buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    ssize_t got = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    close(fd);
    if (got != st.st_size) {
        free(buf);
        return NULL;
    }
    *len = (size_t)got;
    return buf;
}

int persist_take_sent(persist_t *p, int (*fn)(void *arg, const char *key, const record_pub_t *pub),
                      void *arg)
{
    int n = 0;
    DIR *d = opendir(p->dir);
    struct dirent *de;
    if (!d)
        return -errno;
    while ((de = readdir(d))) {
        if (!is_sent(de->d_name))
            continue;
        char key[80], why[128], from[4096], to[4096];
        size_t len;
        snprintf(key, sizeof(key), "%.*s", (int)(strlen(de->d_name) - strlen(SUFFIX)), de->d_name);
        uint8_t *buf = read_whole(p, de->d_name, &len);
        record_pub_t pub;
        if (!buf || record_read(key, buf, len, &pub, why, sizeof(why)) != RECORD_PUBLISH ||
            path_of(p, key, SUFFIX, from, sizeof(from)) < 0 ||
            path_of(p, key, RESEND, to, sizeof(to)) < 0 || fn(arg, key, &pub) < 0 ||
            rename(from, to) < 0) {
            free(buf);
            continue; /* left as it is: the client sends it again itself */
        }
        free(buf);
        atomic_fetch_sub(&p->bytes, (unsigned long long)len);
        atomic_fetch_sub(&p->records, 1);
        n++;
    }
    closedir(d);
    sync_dir(p);
    return n;
}

void persist_resent(persist_t *p, const char *key, bool ok)
{
    char from[4096], to[4096];
    struct stat st;
    if (path_of(p, key, RESEND, from, sizeof(from)) < 0 ||
        path_of(p, key, SUFFIX, to, sizeof(to)) < 0)
        return;
    if (ok) {
        unlink(from);
    } else if (stat(from, &st) == 0 && rename(from, to) == 0) {
        atomic_fetch_add(&p->bytes, (unsigned long long)st.st_size);
        atomic_fetch_add(&p->records, 1);
    }
}

int persist_set_aside(persist_t *p, const char *key)
{
    char from[4096], dir[4096], to[4200];
    if (path_of(p, key, SUFFIX, from, sizeof(from)) < 0)
        return -EINVAL;
    snprintf(dir, sizeof(dir), "%s-refused", p->dir);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -errno;
    /* At most SET_ASIDE_MAX are kept: the operator's to look at, not to fill the disk. */
    DIR *d = opendir(dir);
    unsigned n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += de->d_name[0] != '.';
    if (d)
        closedir(d);
    struct stat st;
    if (stat(from, &st) < 0)
        return -errno;
    if (n >= SET_ASIDE_MAX) {
        p_remove(p, (char *)key);
        return 0;
    }
    snprintf(to, sizeof(to), "%s/%s-%lld%s", dir, key, (long long)time(NULL), SUFFIX);
    if (rename(from, to) < 0)
        return -errno;
    atomic_fetch_sub(&p->bytes, (unsigned long long)st.st_size);
    atomic_fetch_sub(&p->records, 1);
    return 0;
}
