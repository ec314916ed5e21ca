/*
 * The offline store. See store.h for the format and the guarantees.
 *
 * In memory the store is an array of entries ordered by seq (records are
 * only ever added at the end); a removed record leaves a hole that the next
 * compaction closes, so that removal and lookup (a binary search) stay cheap
 * for the tens of thousands of records mqtt.offline_buffer allows.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "file.h"
#include "log.h"
#include "mapping.h"
#include "store_int.h"

#define HDR 28
#define MAGIC "TQS\n"
#define F_SENT 1
/* A record file's name: 16 hex digits and ".rec". */
#define NAME_LEN 20

/* ---- the record format ---------------------------------------------------- */

static uint32_t crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            table[i] = c;
        }
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The CRC of a record: its header with the CRC field as zero, then its packet. */
static uint32_t record_crc(const uint8_t *rec, size_t len)
{
    static const uint8_t zero[4];
    uint32_t crc = crc32c(0, rec, 24);
    crc = crc32c(crc, zero, 4);
    return crc32c(crc, rec + HDR, len - HDR);
}

/* Whether pub is a publish the store keeps: one a broker accepts, with its topic. */
static bool storable(const mqtt_publish_t *pub)
{
    return pub->qos <= 2 && pub->topic.len > 0 &&
           map_topic_ok((const char *)pub->topic.p, pub->topic.len) &&
           !mqtt_prop_find(&pub->props, MQTT_PROP_TOPIC_ALIAS);
}

ssize_t mqtt_store_encode(const mqtt_publish_t *pub, uint64_t seq, bool sent, uint16_t id,
                          uint8_t *buf, size_t cap)
{
    if (!storable(pub) || (sent && (pub->qos == 0 || id == 0)))
        return -EINVAL;
    mqtt_packet_t pkt = { .type = MQTT_PUBLISH };
    pkt.u.publish = *pub;
    pkt.u.publish.dup = sent;
    pkt.u.publish.id = pub->qos == 0 ? 0 : sent ? id : 1;
    ssize_t n = mqtt_encode(&pkt, MQTT_V5, cap > HDR ? buf + HDR : NULL, cap > HDR ? cap - HDR : 0);
    if (n < 0)
        return n;
    size_t total = HDR + (size_t)n;
    if (total > cap)
        return (ssize_t)total;
    memcpy(buf, MAGIC, 4);
    buf[4] = MQTT_STORE_VERSION;
    buf[5] = sent ? F_SENT : 0;
    put_be(buf + 6, sent ? id : 0, 2);
    put_be(buf + 8, 0, 4);
    put_be(buf + 12, seq, 8);
    put_be(buf + 20, (uint64_t)n, 4);
    put_be(buf + 24, record_crc(buf, total), 4);
    return (ssize_t)total;
}

static int why_fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int why_fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    if (why && whylen) {
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int mqtt_store_decode(const uint8_t *data, size_t len, mqtt_store_rec_t *rec, char *why,
                      size_t whylen)
{
    if (len < HDR)
        return why_fail(why, whylen, "%zu bytes, shorter than a header", len);
    if (memcmp(data, MAGIC, 4))
        return why_fail(why, whylen, "not a record of the offline store");
    if (data[4] != MQTT_STORE_VERSION)
        return why_fail(why, whylen, "format version %u, this Tandem reads %u", data[4],
                        MQTT_STORE_VERSION);
    uint64_t plen = get_be(data + 20, 4);
    if (plen != len - HDR)
        return why_fail(why, whylen, "a packet of %" PRIu64 " bytes, the record holds %zu", plen,
                        len - HDR);
    if (get_be(data + 24, 4) != record_crc(data, len))
        return why_fail(why, whylen, "wrong checksum");
    unsigned flags = data[5];
    uint16_t id = (uint16_t)get_be(data + 6, 2);
    if ((flags & ~F_SENT) || get_be(data + 8, 4) != 0)
        return why_fail(why, whylen, "unknown flags");
    size_t whole;
    mqtt_packet_t pkt;
    if (mqtt_frame(data + HDR, plen, plen, &whole) != 1 || whole != plen ||
        mqtt_decode(data + HDR, plen, MQTT_V5, &pkt) < 0 || pkt.type != MQTT_PUBLISH)
        return why_fail(why, whylen, "not a PUBLISH packet");
    mqtt_publish_t *p = &pkt.u.publish;
    if (!storable(p))
        return why_fail(why, whylen, "a publish a broker refuses");
    bool sent = flags & F_SENT;
    if (sent ? p->qos == 0 || !p->dup || id == 0 || p->id != id : id != 0 || p->dup)
        return why_fail(why, whylen, "its sent flag and its packet disagree");
    if (rec) {
        rec->seq = get_be(data + 12, 8);
        rec->sent = sent;
        rec->id = id;
        rec->pub = *p;
        rec->pub.id = id;
    }
    return 0;
}

/* ---- files ---------------------------------------------------------------- */

int store_read_file(const char *path, uint8_t **data, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > STORE_RECORD_MAX) {
        int e = S_ISREG(st.st_mode) ? EFBIG : EINVAL;
        close(fd);
        return -e;
    }
    uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    ssize_t got = buf ? read(fd, buf, (size_t)st.st_size) : -1;
    int e = buf ? errno : ENOMEM;
    close(fd);
    if (got != st.st_size) {
        free(buf);
        return got < 0 ? -e : -EIO;
    }
    *data = buf;
    *len = (size_t)got;
    return 0;
}

int store_sync_dir(mqtt_store_t *s, const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    s->st.syncs++;
    return rc;
}

static void path_of(const mqtt_store_t *s, uint64_t seq, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%016" PRIx64 ".rec", s->dir, seq);
}

void store_set_aside_file(mqtt_store_t *s, const char *path, const char *name)
{
    char to[4096];
    if (mkdir(s->refused, 0700) < 0 && errno != EEXIST) {
        gw_log_limited(GW_LOG_WARNING, STORE, "%s removed (%s cannot be made: %s)", path,
                       s->refused, strerror(errno));
        unlink(path);
        return;
    }
    /* At most MQTT_STORE_SET_ASIDE_MAX are kept: the operator's to look at, not to fill the disk. */
    if (s->refused_n < 0) {
        DIR *d = opendir(s->refused);
        struct dirent *de;
        s->refused_n = 0;
        while (d && (de = readdir(d)))
            s->refused_n += de->d_name[0] != '.';
        if (d)
            closedir(d);
    }
    snprintf(to, sizeof(to), "%s/%s-%lld", s->refused, name, (long long)time(NULL));
    if (s->refused_n >= MQTT_STORE_SET_ASIDE_MAX || rename(path, to) < 0) {
        gw_log_limited(GW_LOG_WARNING, STORE, "%s removed (%s holds %ld records already)", path,
                       s->refused, s->refused_n);
        unlink(path);
        return;
    }
    s->refused_n++;
}

/* ---- the entries ---------------------------------------------------------- */

int store_push(mqtt_store_t *s, uint64_t seq, uint32_t size, bool on_disk, uint8_t *data)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        struct store_ent *v = realloc(s->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (struct store_ent){ .seq = seq, .size = size, .on_disk = on_disk, .data = data };
    s->st.records++;
    s->st.bytes += size;
    if (seq >= s->next_seq)
        s->next_seq = seq + 1;
    return 0;
}

/* The index of the first entry whose seq is at least seq (n when none). */
static size_t lower_bound(const mqtt_store_t *s, uint64_t seq)
{
    size_t lo = s->head, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->v[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct store_ent *find(mqtt_store_t *s, uint64_t seq)
{
    size_t i = lower_bound(s, seq);
    return i < s->n && s->v[i].seq == seq && !s->v[i].gone ? &s->v[i] : NULL;
}

/* Closes the holes once they are as many as the records. */
static void compact(mqtt_store_t *s)
{
    while (s->head < s->n && s->v[s->head].gone)
        s->head++;
    if (s->holes < 64 || s->holes < s->st.records)
        return;
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (!s->v[i].gone)
            s->v[k++] = s->v[i];
    s->n = k;
    s->head = 0;
    s->holes = 0;
}

/* Drops e from the store (its file already dealt with). */
static void drop(mqtt_store_t *s, struct store_ent *e)
{
    free(e->data);
    e->data = NULL;
    e->gone = true;
    s->holes++;
    s->st.records--;
    s->st.bytes -= e->size;
    compact(s);
}

uint64_t mqtt_store_first(const mqtt_store_t *s)
{
    for (size_t i = s->head; i < s->n; i++)
        if (!s->v[i].gone)
            return s->v[i].seq;
    return 0;
}

uint64_t mqtt_store_next(const mqtt_store_t *s, uint64_t seq)
{
    if (seq == UINT64_MAX)
        return 0;
    for (size_t i = lower_bound(s, seq + 1); i < s->n; i++)
        if (!s->v[i].gone)
            return s->v[i].seq;
    return 0;
}

/* ---- open and close ------------------------------------------------------- */

static int cmp_ent(const void *a, const void *b)
{
    uint64_t x = ((const struct store_ent *)a)->seq, y = ((const struct store_ent *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Whether name is "<16 hex digits>.rec"; its seq in *seq. */
static bool record_name(const char *name, uint64_t *seq)
{
    if (strlen(name) != NAME_LEN || strcmp(name + 16, ".rec") ||
        strspn(name, "0123456789abcdef") != 16)
        return false;
    *seq = strtoull(name, NULL, 16);
    return *seq != 0;
}

static bool ends_with(const char *name, const char *suffix)
{
    size_t n = strlen(name), k = strlen(suffix);
    return n > k && !strcmp(name + n - k, suffix);
}

/* Reads every record in the folder; damaged ones set aside. 0 or -errno. */
static int load(mqtt_store_t *s)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return -errno;
    struct dirent *de;
    uint64_t damaged = 0;
    while ((de = readdir(d))) {
        char path[4096], why[128];
        uint64_t seq;
        snprintf(path, sizeof(path), "%s/%s", s->dir, de->d_name);
        if (ends_with(de->d_name, ".rec.tmp")) {
            unlink(path); /* a write a crash interrupted: never renamed, never promised */
            continue;
        }
        if (!record_name(de->d_name, &seq))
            continue; /* not ours: left alone */
        uint8_t *data = NULL;
        size_t len;
        mqtt_store_rec_t rec;
        int rc = store_read_file(path, &data, &len);
        if (rc == -ENOENT)
            continue; /* gone since the folder was read */
        if (rc < 0)
            snprintf(why, sizeof(why), "%s", strerror(-rc));
        else if (mqtt_store_decode(data, len, &rec, why, sizeof(why)) < 0)
            rc = -EBADMSG;
        else if (rec.seq != seq)
            rc = why_fail(why, sizeof(why), "seq %" PRIx64 " in a file named %s", rec.seq,
                          de->d_name);
        if (rc == 0 && store_push(s, seq, (uint32_t)len, true, NULL) < 0) {
            free(data);
            closedir(d);
            return -ENOMEM;
        }
        free(data);
        if (rc < 0) {
            gw_log_limited(GW_LOG_WARNING, STORE, "stored record %s set aside (%s)", de->d_name,
                           why);
            store_set_aside_file(s, path, de->d_name);
            damaged++;
        }
    }
    closedir(d);
    if (s->n)
        qsort(s->v, s->n, sizeof(*s->v), cmp_ent);
    s->st.damaged += damaged;
    if (damaged)
        gw_err(STORE,
               "%" PRIu64 " records of the offline store in %s were damaged; they were set "
               "aside in %s",
               damaged, s->dir, s->refused);
    return 0;
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a), k = strlen(b);
    char *p = malloc(n + k + 1);
    if (p) {
        memcpy(p, a, n);
        memcpy(p + n, b, k + 1);
    }
    return p;
}

mqtt_store_t *mqtt_store_open(const char *state_dir, size_t max_records, uint64_t max_bytes)
{
    mqtt_store_t *s = calloc(1, sizeof(*s));
    if (!s || !(s->root = strdup(state_dir)) || !(s->dir = join(state_dir, "/offline")) ||
        !(s->refused = join(state_dir, "/mqtt-refused"))) {
        mqtt_store_close(s);
        errno = ENOMEM;
        return NULL;
    }
    s->max_records = max_records;
    s->max_bytes = max_bytes;
    s->next_seq = 1;
    s->refused_n = -1;
    s->durable = true;
    int rc = 0;
    if ((mkdir(state_dir, 0700) < 0 && errno != EEXIST) ||
        (mkdir(s->dir, 0700) < 0 && errno != EEXIST))
        rc = -errno;
    /*
     * An import a crash interrupted that cannot be finished now waits for the
     * next start (its marker stays), and no new import may begin meanwhile:
     * it would hold the same messages twice.
     */
    bool recovered = true;
    if (rc == 0 && (rc = store_paho_recover(s)) < 0) {
        gw_err(STORE,
               "the import of the store in %s/mqtt not finished (%s); tried again at the "
               "next start",
               state_dir, strerror(-rc));
        recovered = false;
        rc = 0;
    }
    if (rc == 0)
        rc = load(s);
    if (rc == 0 && recovered)
        rc = store_paho_import(s);
    if (rc < 0) {
        mqtt_store_close(s);
        errno = -rc;
        return NULL;
    }
    return s;
}

/* Writes e's record to "<seq>.rec.tmp" in tmp, not synced. 0 or -errno. */
static int stage(const mqtt_store_t *s, const struct store_ent *e, char *tmp, size_t len)
{
    snprintf(tmp, len, "%s/%016" PRIx64 ".rec.tmp", s->dir, e->seq);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    size_t done = 0;
    int rc = 0;
    while (done < e->size) {
        ssize_t w = write(fd, e->data + done, e->size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = w < 0 ? -errno : -EIO;
            break;
        }
        done += (size_t)w;
    }
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/*
 * Writes every record held in memory to disk as one group commit: each to
 * its .tmp file, then one syncfs() for their contents, the renames into
 * place, and one fsync of the folder; two flushes whatever the number of
 * records (a connection loss with max_inflight records in flight would
 * otherwise cost as many fsyncs). 0 or -errno; the records that failed stay
 * in memory.
 */
static int spill(mqtt_store_t *s)
{
    int rc = 0;
    size_t staged = 0;
    char path[4096], tmp[4096];
    for (size_t i = s->head; i < s->n; i++) {
        struct store_ent *e = &s->v[i];
        e->staged = false;
        if (e->gone || !e->data)
            continue;
        int w = stage(s, e, tmp, sizeof(tmp));
        if (w < 0) {
            if (rc == 0)
                rc = w;
            continue;
        }
        e->staged = true;
        staged++;
    }
    if (staged) {
        /* The contents first: a rename must never make a file durable before what it holds. */
        int fd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int f = fd < 0 ? -errno : syncfs(fd) < 0 ? -errno : 0;
        if (fd >= 0)
            close(fd);
        s->st.syncs++;
        bool renamed = false;
        for (size_t i = s->head; i < s->n; i++) {
            struct store_ent *e = &s->v[i];
            if (!e->staged)
                continue;
            e->staged = false;
            snprintf(tmp, sizeof(tmp), "%s/%016" PRIx64 ".rec.tmp", s->dir, e->seq);
            path_of(s, e->seq, path, sizeof(path));
            int w = f < 0 ? f : rename(tmp, path) < 0 ? -errno : 0;
            if (w < 0) {
                unlink(tmp);
                if (rc == 0)
                    rc = w;
                continue;
            }
            renamed = true;
            e->on_disk = true;
            free(e->data);
            e->data = NULL;
        }
        if (renamed) {
            int d = store_sync_dir(s, s->dir);
            if (rc == 0)
                rc = d;
        }
    }
    if (rc < 0)
        gw_log_limited(GW_LOG_ERROR, STORE, "offline store not written to %s (%s)", s->dir,
                       strerror(-rc));
    return rc;
}

void mqtt_store_close(mqtt_store_t *s)
{
    if (!s)
        return;
    if (s->v)
        spill(s);
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].data);
    free(s->v);
    free(s->rbuf);
    free(s->root);
    free(s->dir);
    free(s->refused);
    free(s);
}

void mqtt_store_set_limits(mqtt_store_t *s, size_t max_records, uint64_t max_bytes)
{
    s->max_records = max_records;
    s->max_bytes = max_bytes;
}

int mqtt_store_set_durable(mqtt_store_t *s, bool durable)
{
    s->durable = durable;
    return durable ? spill(s) : 0;
}

void mqtt_store_defer(mqtt_store_t *s, bool on)
{
    s->deferring = on;
}

int mqtt_store_sync(mqtt_store_t *s)
{
    /* Connected, records stay in memory on purpose: nothing waits for a sync. */
    return s->durable ? spill(s) : 0;
}

/* ---- records -------------------------------------------------------------- */

int mqtt_store_add(mqtt_store_t *s, const mqtt_publish_t *pub, uint64_t *seq)
{
    uint64_t q = s->next_seq;
    ssize_t n = mqtt_store_encode(pub, q, false, 0, NULL, 0);
    if (n < 0)
        return (int)n;
    if (s->st.records >= s->max_records || s->st.bytes + (uint64_t)n > s->max_bytes) {
        s->st.full++;
        return -ENOBUFS;
    }
    uint8_t *data = malloc((size_t)n);
    if (!data)
        return -ENOMEM;
    mqtt_store_encode(pub, q, false, 0, data, (size_t)n);
    bool on_disk = false;
    if (s->durable && !s->deferring) {
        char path[4096];
        path_of(s, q, path, sizeof(path));
        struct iovec iov = { data, (size_t)n };
        int rc = gw_file_write(path, &iov, 1, GW_FILE_SYNC | GW_FILE_SYNC_DIR);
        s->st.syncs += 2;
        if (rc < 0) {
            free(data);
            gw_log_limited(GW_LOG_ERROR, STORE, "publish not stored in %s (%s)", s->dir,
                           strerror(-rc));
            return rc;
        }
        free(data);
        data = NULL;
        on_disk = true;
    }
    if (store_push(s, q, (uint32_t)n, on_disk, data) < 0) {
        free(data);
        return -ENOMEM; /* a file written is read back at the next open: sent, at least once */
    }
    if (seq)
        *seq = q;
    return 0;
}

/* Reads e's record into s->rbuf (when only on disk) and decodes it. */
static int read_ent(mqtt_store_t *s, struct store_ent *e, mqtt_store_rec_t *rec)
{
    char why[128], path[4096];
    if (e->data)
        return mqtt_store_decode(e->data, e->size, rec, NULL, 0) == 0 ? 0 : -EBADMSG;
    path_of(s, e->seq, path, sizeof(path));
    uint8_t *data;
    size_t len;
    int rc = store_read_file(path, &data, &len);
    if (rc == -ENOMEM)
        return rc;
    if (rc == 0 && mqtt_store_decode(data, len, rec, why, sizeof(why)) == 0 && rec->seq == e->seq) {
        free(s->rbuf);
        s->rbuf = data;
        return 0;
    }
    if (rc == 0)
        free(data);
    gw_log_limited(GW_LOG_WARNING, STORE, "stored record %s set aside (%s)", path,
                   rc < 0 ? strerror(-rc) : why);
    store_set_aside_file(s, path, path + strlen(s->dir) + 1);
    s->st.damaged++;
    drop(s, e);
    return -EBADMSG;
}

int mqtt_store_get(mqtt_store_t *s, uint64_t seq, mqtt_store_rec_t *rec)
{
    struct store_ent *e = find(s, seq);
    return e ? read_ent(s, e, rec) : -ENOENT;
}

int mqtt_store_mark_sent(mqtt_store_t *s, uint64_t seq, uint16_t id)
{
    struct store_ent *e = find(s, seq);
    mqtt_store_rec_t rec;
    if (!e)
        return -ENOENT;
    int rc = read_ent(s, e, &rec);
    if (rc < 0)
        return rc;
    if (rec.pub.qos == 0 || id == 0)
        return -EINVAL;
    if (rec.sent && rec.id == id)
        return 0;
    /* Same length: only the DUP flag, the identifier, the header's flags and CRC change. */
    uint8_t *data = malloc(e->size);
    if (!data)
        return -ENOMEM;
    ssize_t n = mqtt_store_encode(&rec.pub, seq, true, id, data, e->size);
    if (n != (ssize_t)e->size) {
        free(data);
        return -EINVAL;
    }
    if (e->on_disk) {
        /*
         * Its file is replaced now (not fsync'ed: a process killed keeps it, a
         * power cut may not, and the record is then sent as a new message).
         */
        char path[4096];
        path_of(s, seq, path, sizeof(path));
        struct iovec iov = { data, e->size };
        if (gw_file_write(path, &iov, 1, 0) == 0) {
            free(data);
            free(e->data);
            e->data = NULL;
            return 0;
        }
    }
    free(e->data);
    e->data = data;
    return 0;
}

int mqtt_store_remove(mqtt_store_t *s, uint64_t seq)
{
    struct store_ent *e = find(s, seq);
    if (!e)
        return -ENOENT;
    if (e->on_disk) {
        char path[4096];
        path_of(s, seq, path, sizeof(path));
        unlink(path); /* not fsync'ed: lost in a crash, the record is sent again */
    }
    drop(s, e);
    return 0;
}

int mqtt_store_set_aside(mqtt_store_t *s, uint64_t seq)
{
    struct store_ent *e = find(s, seq);
    if (!e)
        return -ENOENT;
    char path[4096];
    path_of(s, seq, path, sizeof(path));
    if (e->data) { /* the newest version is in memory: that one goes aside */
        struct iovec iov = { e->data, e->size };
        int rc = gw_file_write(path, &iov, 1, 0);
        if (rc < 0)
            return rc;
    }
    store_set_aside_file(s, path, path + strlen(s->dir) + 1);
    s->st.set_aside++;
    drop(s, e);
    return 0;
}

void mqtt_store_stats(const mqtt_store_t *s, mqtt_store_stats_t *st)
{
    *st = s->st;
}
