/*
 * The import of the store an earlier Tandem left in state_dir/mqtt, written
 * by Paho MQTT C 1.3 through bridge/persist.c: one file per record,
 * "<key>.msg", and "<key>.limbo" or "<key>.resend" for a sent message whose
 * delivery was not reported. The keys that hold a publish:
 *
 * - "s-N"/"s5-N": a QoS 1/2 PUBLISH sent and not acknowledged, as on the
 *   wire (3.1.1 or 5; N is its packet identifier);
 * - "c-N"/"c5-N": a command queued while disconnected, in the host's own
 *   layout (ints): type, token, then for a PUBLISH its topic
 *   (NUL-terminated), payload length, payload, QoS, retained, and for MQTT 5
 *   its properties (wire format); N is Paho's command sequence number.
 *
 * The others ("sc-" PUBRELs, "r-" messages received, "q-" messages queued
 * for the application, subscriptions) are not publishes of a device and are
 * not imported. Sent messages come first (in the order they were written),
 * then the queued commands in Paho's order, each a new record of the offline
 * store (sent again as a new message: the broker's session for Paho's client
 * is not resumed). A record that is damaged or that a broker would refuse is
 * set aside in state_dir/mqtt-refused, as before.
 *
 * The steps, and what a crash at each leads to:
 *
 * 1. Each publish is written as "<seq>.imp" in state_dir/offline, fsync'ed,
 *    and the folder fsync'ed. A crash: no marker (step 2), so the next open
 *    removes every ".imp" file and imports again from the Paho files, which
 *    are untouched: nothing lost, nothing twice.
 * 2. The commit: the marker "paho-import" (the names of the Paho files
 *    imported or skipped, one a line) is written whole (temporary file,
 *    fsync, rename, folder fsync). A crash before the rename is as in 1.
 * 3. Each ".imp" is renamed "<seq>.rec"; the folder is fsync'ed.
 * 4. The Paho files named in the marker are removed, the folder is fsync'ed
 *    and removed when nothing else is in it.
 * 5. The marker is removed.
 *    A crash in 3 to 5: the next open finds the marker and does 3 to 5 again
 *    (store_paho_recover): each record held once, no Paho file imported twice.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "log.h"
#include "mapping.h"
#include "store_int.h"

#define MARKER "paho-import"
#define IMP ".imp"

/* ---- Paho's records --------------------------------------------------------- */

struct rd {
    const uint8_t *p, *end;
};

static bool take(struct rd *r, size_t n, const uint8_t **out)
{
    if ((size_t)(r->end - r->p) < n)
        return false;
    if (out)
        *out = r->p;
    r->p += n;
    return true;
}

/* A host int of a command record. */
static bool take_int(struct rd *r, int *v)
{
    const uint8_t *b;
    if (!take(r, sizeof(int), &b))
        return false;
    memcpy(v, b, sizeof(int));
    return true;
}

/* MQTT's variable byte integer: at most 4 bytes. */
static bool take_varint(struct rd *r, size_t *v)
{
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        const uint8_t *b;
        if (!take(r, 1, &b))
            return false;
        n |= (size_t)(*b & 0x7f) << (7 * i);
        if (!(*b & 0x80)) {
            *v = n;
            return true;
        }
    }
    return false;
}

static int fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    if (why && whylen) {
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A whole PUBLISH packet of version v, checked by the codec: 1, or -1. */
static int decode_publish(const uint8_t *pkt, size_t len, int v, mqtt_publish_t *pub, char *why,
                          size_t whylen)
{
    size_t whole;
    mqtt_packet_t p;
    if (mqtt_frame(pkt, len, len, &whole) != 1 || whole != len)
        return fail(why, whylen, "not a whole packet");
    int rc = mqtt_decode(pkt, len, v, &p);
    if (rc < 0 || p.type != MQTT_PUBLISH)
        return fail(why, whylen, "not a PUBLISH packet (%s)", rc < 0 ? strerror(-rc) : "type");
    if (!p.u.publish.topic.len ||
        !map_topic_ok((const char *)p.u.publish.topic.p, p.u.publish.topic.len) ||
        mqtt_prop_find(&p.u.publish.props, MQTT_PROP_TOPIC_ALIAS))
        return fail(why, whylen, "a topic a broker refuses");
    *pub = p.u.publish;
    return 1;
}

/* A command queued while disconnected ("c", "c5"), a PUBLISH rebuilt in buf. */
static int read_command(const uint8_t *data, size_t len, bool v5, uint8_t *buf, size_t cap,
                        mqtt_publish_t *pub, char *why, size_t whylen)
{
    struct rd r = { data, data + len };
    int type, token, payloadlen, qos, retained;
    const uint8_t *topic, *payload, *props = NULL;
    size_t tlen, plen = 0, propslen = 0;
    if (!take_int(&r, &type) || !take_int(&r, &token))
        return fail(why, whylen, "truncated command");
    if (type == MQTT_SUBSCRIBE || type == MQTT_UNSUBSCRIBE)
        return 0;
    if (type != MQTT_PUBLISH)
        return fail(why, whylen, "command type %d", type);
    const uint8_t *nul = memchr(r.p, '\0', (size_t)(r.end - r.p));
    if (!nul)
        return fail(why, whylen, "truncated topic");
    topic = r.p;
    tlen = (size_t)(nul - r.p);
    r.p = nul + 1;
    if (!take_int(&r, &payloadlen) || payloadlen < 0 || !take(&r, (size_t)payloadlen, &payload))
        return fail(why, whylen, "bad payload length");
    if (!take_int(&r, &qos) || qos < 0 || qos > 2 || !take_int(&r, &retained) || retained < 0 ||
        retained > 1)
        return fail(why, whylen, "bad QoS or retain flag");
    if (v5) {
        props = r.p;
        if (!take_varint(&r, &plen) || !take(&r, plen, NULL))
            return fail(why, whylen, "malformed properties");
        propslen = (size_t)(r.p - props);
    }
    if (r.p != r.end)
        return fail(why, whylen, "bytes after the command");
    if (tlen > 65535)
        return fail(why, whylen, "a topic a broker refuses");
    /* The PUBLISH as it would have gone out (packet identifier 1). */
    size_t rem = 2 + tlen + (qos ? 2 : 0) + propslen + (size_t)payloadlen, n = 0;
    if (rem > MQTT_REMAINING_MAX || rem + 5 > cap)
        return fail(why, whylen, "too large");
    buf[n++] = (uint8_t)(MQTT_PUBLISH << 4 | qos << 1 | retained);
    for (size_t v = rem;; v >>= 7) {
        buf[n++] = (uint8_t)((v & 0x7f) | (v >> 7 ? 0x80 : 0));
        if (!(v >> 7))
            break;
    }
    buf[n++] = (uint8_t)(tlen >> 8);
    buf[n++] = (uint8_t)tlen;
    memcpy(buf + n, topic, tlen);
    n += tlen;
    if (qos) {
        buf[n++] = 0;
        buf[n++] = 1;
    }
    if (propslen)
        memcpy(buf + n, props, propslen);
    n += propslen;
    if (payloadlen)
        memcpy(buf + n, payload, (size_t)payloadlen);
    n += (size_t)payloadlen;
    return decode_publish(buf, n, v5 ? MQTT_V5 : MQTT_V311, pub, why, whylen);
}

int store_paho_read(const char *key, const uint8_t *data, size_t len, uint8_t *buf, size_t cap,
                    mqtt_publish_t *pub, char *why, size_t whylen)
{
    static const struct {
        const char *prefix;
        char kind; /* 's' sent, 'c' command, 'o' other */
        bool v5;
    } kinds[] = {
        { "s5-", 's', true }, { "sc5-", 'o', true }, { "r5-", 'o', true },  { "c5-", 'c', true },
        { "q5-", 'o', true }, { "s-", 's', false },  { "sc-", 'o', false }, { "r-", 'o', false },
        { "c-", 'c', false }, { "q-", 'o', false },
    };
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        size_t n = strlen(kinds[i].prefix);
        if (strncmp(key, kinds[i].prefix, n))
            continue;
        const char *num = key + n;
        if (!*num || strspn(num, "0123456789") != strlen(num))
            return fail(why, whylen, "not a record name");
        switch (kinds[i].kind) {
        case 's': {
            int rc = decode_publish(data, len, kinds[i].v5 ? MQTT_V5 : MQTT_V311, pub, why, whylen);
            if (rc == 1 && pub->qos == 0)
                return fail(why, whylen, "a sent PUBLISH of QoS 0");
            return rc;
        }
        case 'c':
            return read_command(data, len, kinds[i].v5, buf, cap, pub, why, whylen);
        default:
            return 0;
        }
    }
    return fail(why, whylen, "not a record name");
}

/* ---- the import ------------------------------------------------------------ */

/* One Paho file and its place in the order. */
struct item {
    char name[80];
    char key[72];
    int cls; /* 0 sent, 1 command, 2 not a publish */
    unsigned long num;
    struct timespec mtime;
};

static int cmp_item(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    if (x->cls != y->cls)
        return x->cls - y->cls;
    if (x->cls == 0 && x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->cls == 0 && x->mtime.tv_nsec != y->mtime.tv_nsec)
        return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return x->num < y->num ? -1 : x->num > y->num;
}

/* dir/name in buf; "" (which names no file) when it does not fit. */
static char *path2(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len)
        buf[0] = '\0';
    return buf;
}

/* The key of a Paho file name ("s-3.msg", "s-3.limbo", "s-3.resend"), or false. */
static bool paho_key(const char *name, char *key, size_t len)
{
    static const char *const suffixes[] = { ".msg", ".limbo", ".resend" };
    size_t n = strlen(name);
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(suffixes[i]);
        if (n > k && n - k < len && !strcmp(name + n - k, suffixes[i])) {
            snprintf(key, len, "%.*s", (int)(n - k), name);
            return true;
        }
    }
    return false;
}

/* Steps 3 to 5, from the marker's list of Paho files. 0 or -errno. */
static int finish(mqtt_store_t *s, const char *paho)
{
    char path[4096], to[4096];
    DIR *d = opendir(s->dir);
    struct dirent *de;
    if (!d)
        return -errno;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n != 16 + strlen(IMP) || strcmp(de->d_name + 16, IMP))
            continue;
        snprintf(to, sizeof(to), "%s/%.16s.rec", s->dir, de->d_name);
        if (rename(path2(path, sizeof(path), s->dir, de->d_name), to) < 0) {
            closedir(d);
            return -errno;
        }
    }
    closedir(d);
    int rc = store_sync_dir(s, s->dir);
    if (rc < 0)
        return rc;
    uint8_t *list;
    size_t len;
    rc = store_read_file(path2(path, sizeof(path), s->dir, MARKER), &list, &len);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < len;) {
        uint8_t *nl = memchr(list + i, '\n', len - i);
        size_t k = nl ? (size_t)(nl - list) - i : len - i;
        char name[256];
        if (k && k < sizeof(name) && !memchr(list + i, '/', k)) {
            snprintf(name, sizeof(name), "%.*s", (int)k, (const char *)list + i);
            unlink(path2(path, sizeof(path), paho, name));
        }
        i += k + 1;
    }
    free(list);
    store_sync_dir(s, paho);
    rmdir(paho); /* left when something else is in it */
    unlink(path2(path, sizeof(path), s->dir, MARKER));
    return store_sync_dir(s, s->dir);
}

int store_paho_recover(mqtt_store_t *s)
{
    char paho[4096], path[4096];
    struct stat st;
    path2(paho, sizeof(paho), s->root, "mqtt");
    if (stat(path2(path, sizeof(path), s->dir, MARKER), &st) == 0)
        return finish(s, paho); /* committed: its records are the store's */
    /* Not committed: what step 1 wrote goes, the Paho files are imported again. */
    DIR *d = opendir(s->dir);
    struct dirent *de;
    if (!d)
        return -errno;
    while ((de = readdir(d)))
        if (strlen(de->d_name) > strlen(IMP) &&
            !strcmp(de->d_name + strlen(de->d_name) - strlen(IMP), IMP))
            unlink(path2(path, sizeof(path), s->dir, de->d_name));
    closedir(d);
    return 0;
}

/* Lists the Paho files in *items, in the order they are imported in. */
static int list_paho(const char *paho, struct item **items, size_t *nitems)
{
    DIR *d = opendir(paho);
    struct dirent *de;
    size_t n = 0, cap = 0;
    *items = NULL;
    *nitems = 0;
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    while ((de = readdir(d))) {
        char path[4096], key[72];
        struct stat st;
        path2(path, sizeof(path), paho, de->d_name);
        if (strstr(de->d_name, ".tmp")) {
            unlink(path); /* a write a crash interrupted: never promised */
            continue;
        }
        if (!paho_key(de->d_name, key, sizeof(key)) || strlen(de->d_name) >= 80 ||
            stat(path, &st) < 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            struct item *v = realloc(*items, cap * sizeof(*v));
            if (!v) {
                closedir(d);
                return -ENOMEM;
            }
            *items = v;
        }
        struct item *it = &(*items)[n++];
        snprintf(it->name, sizeof(it->name), "%s", de->d_name);
        snprintf(it->key, sizeof(it->key), "%s", key);
        it->cls = key[0] == 's' && key[1] != 'c' ? 0 : key[0] == 'c' ? 1 : 2;
        it->num = strtoul(key + strcspn(key, "-") + 1, NULL, 10);
        it->mtime = st.st_mtim;
    }
    closedir(d);
    *nitems = n;
    if (n)
        qsort(*items, n, sizeof(**items), cmp_item);
    return 0;
}

/* Step 1 for one Paho file: 1 written as .imp, 0 not a publish, -1 set aside, -errno. */
static int import_one(mqtt_store_t *s, const char *paho, struct item *it, uint64_t seq,
                      uint32_t *size)
{
    char path[4096], why[128];
    uint8_t *data = NULL, *buf = NULL, *rec = NULL;
    size_t len;
    mqtt_publish_t pub;
    int rc = store_read_file(path2(path, sizeof(path), paho, it->name), &data, &len);
    if (rc == 0 && !(buf = malloc(len + 16)))
        rc = -ENOMEM;
    if (rc == -ENOMEM) {
        free(data);
        return rc;
    }
    if (rc < 0) {
        snprintf(why, sizeof(why), "%s", strerror(-rc));
        rc = -1;
    } else {
        rc = store_paho_read(it->key, data, len, buf, len + 16, &pub, why, sizeof(why));
    }
    if (rc == 1) {
        ssize_t n = mqtt_store_encode(&pub, seq, false, 0, NULL, 0);
        if (n < 0 || (size_t)n > UINT32_MAX) {
            rc = fail(why, sizeof(why), "cannot be stored");
        } else if (!(rec = malloc((size_t)n))) {
            rc = -ENOMEM;
        } else {
            char to[4096];
            mqtt_store_encode(&pub, seq, false, 0, rec, (size_t)n);
            snprintf(to, sizeof(to), "%s/%016" PRIx64 IMP, s->dir, seq);
            struct iovec iov = { rec, (size_t)n };
            int w = gw_file_write(to, &iov, 1, GW_FILE_SYNC);
            s->st.syncs++;
            if (w < 0)
                rc = w;
            *size = (uint32_t)n;
        }
    }
    if (rc == -1) {
        gw_log_limited(GW_LOG_WARNING, STORE, "Paho's stored record %s/%s set aside (%s)", paho,
                       it->name, why);
        store_set_aside_file(s, path, it->name);
        s->st.damaged++;
    }
    free(rec);
    free(buf);
    free(data);
    return rc;
}

int store_paho_import(mqtt_store_t *s)
{
    char paho[4096], path[4096];
    struct item *items;
    size_t n;
    path2(paho, sizeof(paho), s->root, "mqtt");
    int rc = list_paho(paho, &items, &n);
    if (rc < 0 || n == 0) {
        free(items);
        if (rc == 0)
            rmdir(paho); /* an empty Paho store: nothing to keep */
        return rc;
    }
    /* Step 1. */
    uint64_t first = s->next_seq, seq = first;
    uint32_t *sizes = calloc(n, sizeof(*sizes));
    char *list = calloc(n, sizeof(items->name) + 1);
    size_t listlen = 0, skipped = 0;
    bool committed = false;
    if (!sizes || !list)
        rc = -ENOMEM;
    for (size_t i = 0; rc >= 0 && i < n; i++) {
        int r = import_one(s, paho, &items[i], seq, &sizes[i]);
        if (r < -1)
            rc = r;
        if (r == 1)
            seq++;
        skipped += r == 0;
        if (r >= 0)
            listlen += (size_t)sprintf(list + listlen, "%s\n", items[i].name);
        else
            sizes[i] = 0;
    }
    if (rc >= 0)
        rc = store_sync_dir(s, s->dir);
    /* Step 2: the commit. */
    if (rc >= 0) {
        struct iovec iov = { list, listlen };
        rc = gw_file_write(path2(path, sizeof(path), s->dir, MARKER), &iov, 1,
                           GW_FILE_SYNC | GW_FILE_SYNC_DIR);
        s->st.syncs += 2;
        committed = rc >= 0;
    }
    /* Steps 3 to 5. */
    if (rc >= 0)
        rc = finish(s, paho);
    if (rc >= 0) {
        for (size_t i = 0, q = first; i < n && rc >= 0; i++)
            if (sizes[i])
                rc = store_push(s, q++, sizes[i], true, NULL);
        s->st.imported += seq - first;
        gw_info(STORE,
                "%" PRIu64 " publishes imported into %s from the store of an earlier version "
                "in %s (%zu records that were not publishes dropped)",
                seq - first, s->dir, paho, skipped);
    } else {
        gw_err(STORE, "the store in %s not imported (%s); kept for the next start", paho,
               strerror(-rc));
        if (!committed)
            store_paho_recover(s); /* what step 1 wrote goes; the Paho files stay */
        rc = 0;                    /* the store works without them until then */
    }
    free(list);
    free(sizes);
    free(items);
    return rc;
}
