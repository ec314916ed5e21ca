/*
 * The offline store (mqtt/store.c): records added, read back in order and
 * removed; its bounds; when it fsyncs; what a crash or a damaged disk leaves,
 * at the next open; set-aside; and the import of the store an earlier
 * version left in state_dir/mqtt, in Paho's record format.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "store.h"
#include "store_int.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/tandem-mqtt-store-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(mqtt_store, .init = setup, .fini = teardown);

#define BIG 1000000

/* Every flush the store (and gw_file_write under it) makes is counted here: fsync and syncfs. */
static unsigned fsyncs;

int fsync(int fd)
{
    fsyncs++;
    return (int)syscall(SYS_fsync, fd);
}

int syncfs(int fd)
{
    fsyncs++;
    return (int)syscall(SYS_syncfs, fd);
}

static mqtt_publish_t pub_of(const char *topic, const char *payload, int qos)
{
    mqtt_publish_t p;
    memset(&p, 0, sizeof(p));
    p.qos = (uint8_t)qos;
    p.topic = (mqtt_bytes_t){ (const uint8_t *)topic, strlen(topic) };
    p.payload = (mqtt_bytes_t){ (const uint8_t *)payload, strlen(payload) };
    return p;
}

static char *path(const char *sub, const char *name)
{
    static char buf[4][256];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 256, "%s/%s/%s", dir, sub, name);
    return b;
}

static bool exists(const char *sub, const char *name)
{
    struct stat st;
    return stat(path(sub, name), &st) == 0;
}

/* Files in dir/sub (names without a leading dot). */
static unsigned count(const char *sub)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    DIR *d = opendir(p);
    unsigned n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += de->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static void write_file(const char *sub, const char *name, const void *data, size_t len)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    mkdir(p, 0700);
    int fd = open(path(sub, name), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static size_t read_file(const char *sub, const char *name, uint8_t *buf, size_t cap)
{
    int fd = open(path(sub, name), O_RDONLY);
    cr_assert_geq(fd, 0, "%s/%s", sub, name);
    ssize_t n = read(fd, buf, cap);
    close(fd);
    cr_assert_geq(n, 0);
    return (size_t)n;
}

static mqtt_store_stats_t stats(mqtt_store_t *s)
{
    mqtt_store_stats_t st;
    mqtt_store_stats(s, &st);
    return st;
}

/* The payloads of every record, in order, joined by spaces. */
static char *payloads(mqtt_store_t *s)
{
    static char out[4096];
    size_t n = 0;
    out[0] = '\0';
    for (uint64_t q = mqtt_store_first(s); q; q = mqtt_store_next(s, q)) {
        mqtt_store_rec_t rec;
        cr_assert_eq(mqtt_store_get(s, q, &rec), 0, "record %llu", (unsigned long long)q);
        n += (size_t)snprintf(out + n, sizeof(out) - n, "%s%.*s", n ? " " : "",
                              (int)rec.pub.payload.len, (const char *)rec.pub.payload.p);
    }
    return out;
}

static uint64_t add(mqtt_store_t *s, const char *payload)
{
    mqtt_publish_t p = pub_of("redback/p1/zones/a", payload, 1);
    uint64_t seq = 0;
    cr_assert_eq(mqtt_store_add(s, &p, &seq), 0, "add %s", payload);
    cr_assert_neq(seq, 0);
    return seq;
}

Test(mqtt_store, added_records_come_back_in_order_and_leave_when_removed)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_not_null(s);
    uint64_t a = add(s, "a"), b = add(s, "b");
    add(s, "c");
    uint64_t d = add(s, "d");
    cr_assert_str_eq(payloads(s), "a b c d");
    cr_assert_eq(stats(s).records, 4);
    uint64_t bytes = stats(s).bytes;
    cr_assert_gt(bytes, 4 * 28);
    cr_assert_eq(mqtt_store_remove(s, b), 0);
    cr_assert_eq(mqtt_store_remove(s, b), -ENOENT);
    cr_assert_eq(mqtt_store_get(s, b, &(mqtt_store_rec_t){ 0 }), -ENOENT);
    cr_assert_str_eq(payloads(s), "a c d");
    cr_assert_eq(stats(s).records, 3, "what it holds now, not a running total");
    cr_assert_eq(stats(s).bytes, bytes / 4 * 3);
    mqtt_store_rec_t rec;
    cr_assert_eq(mqtt_store_get(s, a, &rec), 0);
    cr_assert_eq(rec.seq, a);
    cr_assert_eq(rec.pub.qos, 1);
    cr_assert_not(rec.sent);
    cr_assert_eq(rec.id, 0);
    cr_assert_eq(rec.pub.topic.len, strlen("redback/p1/zones/a"));
    cr_assert_eq(memcmp(rec.pub.topic.p, "redback/p1/zones/a", rec.pub.topic.len), 0);
    mqtt_store_close(s);

    /* A restart: the same records in the same order, and new ones after them. */
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_not_null(s);
    cr_assert_str_eq(payloads(s), "a c d");
    cr_assert_eq(stats(s).records, 3);
    cr_assert_eq(stats(s).bytes, bytes / 4 * 3);
    cr_assert_eq(stats(s).damaged, 0);
    cr_assert_gt(add(s, "e"), d);
    cr_assert_str_eq(payloads(s), "a c d e");
    /* Drained: the store reads empty. */
    while (mqtt_store_first(s))
        cr_assert_eq(mqtt_store_remove(s, mqtt_store_first(s)), 0);
    cr_assert_eq(stats(s).records, 0);
    cr_assert_eq(stats(s).bytes, 0);
    mqtt_store_close(s);
    cr_assert_eq(count("offline"), 0);
}

Test(mqtt_store, many_removals_out_of_order_keep_the_order)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    mqtt_store_set_durable(s, false); /* in memory: quick */
    uint64_t seq[300];
    char p[16];
    for (int i = 0; i < 300; i++) {
        snprintf(p, sizeof(p), "%d", i);
        seq[i] = add(s, p);
    }
    for (int i = 0; i < 300; i++)
        if (i % 3)
            cr_assert_eq(mqtt_store_remove(s, seq[i]), 0);
    int i = 0;
    for (uint64_t q = mqtt_store_first(s); q; q = mqtt_store_next(s, q), i += 3)
        cr_assert_eq(q, seq[i]);
    cr_assert_eq(i, 300);
    cr_assert_eq(stats(s).records, 100);
    mqtt_store_close(s);
}

Test(mqtt_store, a_full_store_says_so)
{
    mqtt_store_t *s = mqtt_store_open(dir, 2, BIG);
    mqtt_publish_t p = pub_of("redback/x", "v", 1);
    uint64_t a = add(s, "1");
    add(s, "2");
    cr_assert_eq(mqtt_store_add(s, &p, NULL), -ENOBUFS);
    cr_assert_eq(stats(s).full, 1);
    cr_assert_eq(stats(s).records, 2);
    mqtt_store_remove(s, a);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), 0);
    /* The byte bound: a record is 28 bytes of header and its packet. */
    uint64_t bytes = stats(s).bytes;
    mqtt_store_set_limits(s, 100, bytes + 10);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), -ENOBUFS);
    cr_assert_eq(stats(s).full, 2);
    mqtt_store_set_limits(s, 100, 2 * bytes);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), 0);
    /* No store at all. */
    mqtt_store_set_limits(s, 0, BIG);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), -ENOBUFS);
    /* What cannot be stored. */
    mqtt_store_set_limits(s, 100, BIG);
    mqtt_publish_t bad = pub_of("redback/+", "v", 1);
    cr_assert_eq(mqtt_store_add(s, &bad, NULL), -EINVAL);
    bad = pub_of("", "v", 1);
    cr_assert_eq(mqtt_store_add(s, &bad, NULL), -EINVAL);
    bad = pub_of("redback/x", "v", 3);
    cr_assert_eq(mqtt_store_add(s, &bad, NULL), -EINVAL);
    mqtt_store_close(s);
}

Test(mqtt_store, durable_adds_are_fsynced_before_they_return)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    uint64_t before = stats(s).syncs;
    unsigned calls = fsyncs;
    uint64_t a = add(s, "away"); /* opened durable: the broker is not connected yet */
    char name[32];
    snprintf(name, sizeof(name), "%016llx.rec", (unsigned long long)a);
    cr_assert(exists("offline", name));
    cr_assert_eq(stats(s).syncs, before + 2, "the record and its folder");
    cr_assert_eq(fsyncs, calls + 2, "the record and its folder");

    /* Connected: in memory only. */
    cr_assert_eq(mqtt_store_set_durable(s, false), 0);
    before = stats(s).syncs;
    calls = fsyncs;
    uint64_t b = add(s, "connected");
    snprintf(name, sizeof(name), "%016llx.rec", (unsigned long long)b);
    cr_assert_not(exists("offline", name));
    cr_assert_eq(stats(s).syncs, before);
    cr_assert_eq(fsyncs, calls);
    cr_assert_eq(mqtt_store_sync(s), 0);
    cr_assert_not(exists("offline", name), "a sync while connected writes nothing");
    /* The connection drops: what is held goes to disk, durably. */
    cr_assert_eq(mqtt_store_set_durable(s, true), 0);
    cr_assert(exists("offline", name));
    cr_assert_eq(stats(s).syncs, before + 2);
    cr_assert_eq(fsyncs, calls + 2);

    /* Group commit: a burst of ten, then one sync. */
    mqtt_store_defer(s, true);
    before = stats(s).syncs;
    calls = fsyncs;
    uint64_t first = 0;
    for (int i = 0; i < 10; i++) {
        uint64_t q = add(s, "burst");
        first = first ? first : q;
    }
    snprintf(name, sizeof(name), "%016llx.rec", (unsigned long long)first);
    cr_assert_not(exists("offline", name), "nothing written before the sync");
    cr_assert_eq(stats(s).syncs, before);
    cr_assert_eq(fsyncs, calls);
    cr_assert_eq(mqtt_store_sync(s), 0);
    mqtt_store_defer(s, false);
    cr_assert(exists("offline", name));
    cr_assert_eq(stats(s).syncs, before + 2, "the records once, and the folder once");
    cr_assert_eq(fsyncs, calls + 2);
    cr_assert_eq(count("offline"), 12);
    cr_assert_str_eq(payloads(s), "away connected burst burst burst burst burst burst burst burst "
                                  "burst burst");
    mqtt_store_close(s);
}

/* A connection loss with many records in flight: one group commit, not a flush each. */
Test(mqtt_store, a_connection_loss_flushes_once_whatever_is_held)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_eq(mqtt_store_set_durable(s, false), 0);
    for (int i = 0; i < 300; i++)
        add(s, "inflight");
    uint64_t before = stats(s).syncs;
    unsigned calls = fsyncs;
    cr_assert_eq(mqtt_store_set_durable(s, true), 0);
    cr_assert_eq(fsyncs, calls + 2, "the records' contents once, the folder once (%u)",
                 fsyncs - calls);
    cr_assert_eq(stats(s).syncs, before + 2);
    cr_assert_eq(count("offline"), 300, "every record in place, no .tmp left");
    mqtt_store_close(s);
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_eq(stats(s).records, 300);
    cr_assert_eq(stats(s).damaged, 0);
    mqtt_store_close(s);
}

Test(mqtt_store, what_is_held_in_memory_is_written_at_close)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    mqtt_store_set_durable(s, false);
    add(s, "one");
    add(s, "two");
    cr_assert_eq(count("offline"), 0);
    mqtt_store_close(s);
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), "one two");
    mqtt_store_close(s);
}

Test(mqtt_store, a_record_sent_once_keeps_its_identifier)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    uint64_t a = add(s, "a");
    mqtt_publish_t p0 = pub_of("redback/q0", "z", 0);
    uint64_t z;
    cr_assert_eq(mqtt_store_add(s, &p0, &z), 0);
    cr_assert_eq(mqtt_store_set_durable(s, false), 0); /* connected: the drain sends it */
    cr_assert_eq(mqtt_store_mark_sent(s, a, 0x1234), 0);
    cr_assert_eq(mqtt_store_mark_sent(s, z, 7), -EINVAL, "QoS 0 has no identifier");
    cr_assert_eq(mqtt_store_mark_sent(s, a, 0), -EINVAL);
    cr_assert_eq(mqtt_store_mark_sent(s, 999, 1), -ENOENT);
    mqtt_store_rec_t rec;
    cr_assert_eq(mqtt_store_get(s, a, &rec), 0);
    cr_assert(rec.sent);
    cr_assert_eq(rec.id, 0x1234);
    cr_assert(rec.pub.dup);
    cr_assert_eq(rec.pub.id, 0x1234);
    /* The connection drops before the PUBACK; the gateway restarts. */
    cr_assert_eq(mqtt_store_set_durable(s, true), 0);
    mqtt_store_close(s);
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_eq(mqtt_store_get(s, a, &rec), 0);
    cr_assert(rec.sent);
    cr_assert_eq(rec.id, 0x1234);
    cr_assert_eq(mqtt_store_get(s, z, &rec), 0);
    cr_assert_not(rec.sent);
    cr_assert_eq(rec.pub.qos, 0);
    cr_assert_eq(stats(s).damaged, 0);
    mqtt_store_close(s);
}

Test(mqtt_store, properties_are_kept)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    mqtt_publish_t p = pub_of("redback/p", "{}", 2);
    p.retain = true;
    cr_assert_eq(mqtt_prop_set_data(&p.props, MQTT_PROP_CONTENT_TYPE, "application/json", 16), 0);
    cr_assert_eq(mqtt_prop_add_user(&p.props, "device", 6, "bike-1", 6), 0);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), 0);
    mqtt_store_close(s);
    s = mqtt_store_open(dir, BIG, BIG);
    mqtt_store_rec_t rec;
    cr_assert_eq(mqtt_store_get(s, mqtt_store_first(s), &rec), 0);
    cr_assert_eq(rec.pub.qos, 2);
    cr_assert(rec.pub.retain);
    const mqtt_prop_t *ct = mqtt_prop_find(&rec.pub.props, MQTT_PROP_CONTENT_TYPE);
    cr_assert_not_null(ct);
    cr_assert_eq(memcmp(ct->data.p, "application/json", 16), 0);
    const mqtt_prop_t *u = mqtt_prop_find(&rec.pub.props, MQTT_PROP_USER);
    cr_assert_not_null(u);
    cr_assert_eq(memcmp(u->data2.p, "bike-1", 6), 0);
    mqtt_store_close(s);
    /* A Topic Alias stands for nothing once stored: refused. */
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_eq(mqtt_prop_set_value(&p.props, MQTT_PROP_TOPIC_ALIAS, 3), 0);
    cr_assert_eq(mqtt_store_add(s, &p, NULL), -EINVAL);
    mqtt_store_close(s);
}

/* Three records on disk, "a b c"; returns the name of b's file in name. */
static void three(char *name, size_t len)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    add(s, "a");
    uint64_t b = add(s, "b");
    add(s, "c");
    mqtt_store_close(s);
    snprintf(name, len, "%016llx.rec", (unsigned long long)b);
}

/* Opens the store after the damage done to b's file; checks b was set aside, a and c kept. */
static void check_b_set_aside(const char *name)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_not_null(s);
    cr_assert_str_eq(payloads(s), "a c");
    cr_assert_eq(stats(s).damaged, 1);
    cr_assert_eq(stats(s).records, 2);
    cr_assert_not(exists("offline", name));
    cr_assert_eq(count("mqtt-refused"), 1, "set aside for the operator");
    mqtt_store_close(s);
    /* Once: nothing left to refuse. */
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_eq(stats(s).damaged, 0);
    cr_assert_str_eq(payloads(s), "a c");
    mqtt_store_close(s);
}

Test(mqtt_store, a_truncated_record_is_set_aside)
{
    char name[32];
    uint8_t buf[512];
    three(name, sizeof(name));
    size_t n = read_file("offline", name, buf, sizeof(buf));
    for (size_t cut = 0; cut < n; cut += 7) {
        write_file("offline", name, buf, cut);
        mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
        cr_assert_str_eq(payloads(s), "a c", "cut at %zu", cut);
        cr_assert_eq(stats(s).damaged, 1);
        mqtt_store_close(s);
    }
    write_file("offline", name, buf, n - 1);
    check_b_set_aside(name);
}

Test(mqtt_store, a_record_with_the_wrong_checksum_is_set_aside)
{
    char name[32];
    uint8_t buf[512];
    three(name, sizeof(name));
    size_t n = read_file("offline", name, buf, sizeof(buf));
    buf[n - 1] ^= 0x20; /* "b" becomes "B": a flipped bit */
    write_file("offline", name, buf, n);
    check_b_set_aside(name);
}

Test(mqtt_store, a_record_of_another_format_version_is_set_aside)
{
    char name[32];
    uint8_t buf[512];
    three(name, sizeof(name));
    size_t n = read_file("offline", name, buf, sizeof(buf));
    buf[4] = MQTT_STORE_VERSION + 1;
    write_file("offline", name, buf, n);
    char why[128];
    cr_assert_eq(mqtt_store_decode(buf, n, NULL, why, sizeof(why)), -1);
    cr_assert_not_null(strstr(why, "format version"), "%s", why);
    check_b_set_aside(name);
}

Test(mqtt_store, a_record_under_another_name_is_set_aside)
{
    char name[32];
    uint8_t buf[512];
    three(name, sizeof(name));
    size_t n = read_file("offline", name, buf, sizeof(buf));
    unlink(path("offline", name));
    write_file("offline", "00000000000000ff.rec", buf, n); /* seq 2 in it */
    check_b_set_aside("00000000000000ff.rec");
}

Test(mqtt_store, a_write_a_crash_interrupted_is_removed_and_not_counted)
{
    char name[32], tmp[40];
    uint8_t buf[512];
    three(name, sizeof(name));
    size_t n = read_file("offline", name, buf, sizeof(buf));
    /* What gw_file_write leaves when a crash comes before the rename. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    write_file("offline", tmp, buf, n / 2);
    write_file("offline", "00000000000000aa.rec.tmp", buf, n);
    write_file("offline", "notes.txt", "mine", 4);
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), "a b c", "the record it was replacing stays");
    cr_assert_eq(stats(s).damaged, 0);
    cr_assert_not(exists("offline", tmp));
    cr_assert_not(exists("offline", "00000000000000aa.rec.tmp"), "never renamed: never promised");
    cr_assert(exists("offline", "notes.txt"), "not ours: left alone");
    mqtt_store_close(s);
}

Test(mqtt_store, a_record_damaged_after_the_open_is_set_aside_when_read)
{
    char name[32];
    three(name, sizeof(name));
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    uint64_t b = mqtt_store_next(s, mqtt_store_first(s));
    write_file("offline", name, "garbage", 7);
    mqtt_store_rec_t rec;
    cr_assert_eq(mqtt_store_get(s, b, &rec), -EBADMSG);
    cr_assert_eq(stats(s).damaged, 1);
    cr_assert_eq(stats(s).records, 2);
    cr_assert_str_eq(payloads(s), "a c");
    cr_assert_eq(count("mqtt-refused"), 1);
    mqtt_store_close(s);
}

Test(mqtt_store, a_record_the_broker_refused_is_set_aside)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    add(s, "a");
    uint64_t b = add(s, "b");
    mqtt_store_set_durable(s, false);
    uint64_t c = add(s, "c"); /* in memory only */
    cr_assert_eq(mqtt_store_set_aside(s, b), 0);
    cr_assert_eq(mqtt_store_set_aside(s, c), 0);
    cr_assert_eq(mqtt_store_set_aside(s, c), -ENOENT);
    cr_assert_eq(stats(s).set_aside, 2);
    cr_assert_eq(stats(s).records, 1);
    cr_assert_str_eq(payloads(s), "a");
    cr_assert_eq(count("mqtt-refused"), 2);
    cr_assert_eq(count("offline"), 1);
    /* A set-aside record is readable as it was. */
    char p[256];
    snprintf(p, sizeof(p), "%s/mqtt-refused", dir);
    DIR *d = opendir(p);
    struct dirent *de;
    unsigned found = 0;
    while ((de = readdir(d))) {
        uint8_t buf[512];
        mqtt_store_rec_t rec;
        if (de->d_name[0] == '.')
            continue;
        size_t n = read_file("mqtt-refused", de->d_name, buf, sizeof(buf));
        cr_assert_eq(mqtt_store_decode(buf, n, &rec, NULL, 0), 0);
        found |= 1u << (rec.pub.payload.p[0] - 'a');
    }
    closedir(d);
    cr_assert_eq(found, 6, "b and c");
    mqtt_store_close(s);
    /* Bounded: past MQTT_STORE_SET_ASIDE_MAX, removed. */
    for (int i = 0; i < MQTT_STORE_SET_ASIDE_MAX; i++) {
        char name[32];
        snprintf(name, sizeof(name), "old-%d", i);
        write_file("mqtt-refused", name, "x", 1);
    }
    s = mqtt_store_open(dir, BIG, BIG);
    uint64_t a = mqtt_store_first(s);
    cr_assert_eq(mqtt_store_set_aside(s, a), 0);
    cr_assert_eq(count("mqtt-refused"), MQTT_STORE_SET_ASIDE_MAX + 2);
    cr_assert_eq(count("offline"), 0, "removed all the same");
    mqtt_store_close(s);
}

/* ---- Paho's store, as an earlier version left it -------------------------- */

/* A command record as Paho 1.3 writes one for a PUBLISH (host ints). */
static size_t command(uint8_t *buf, const char *topic, const char *payload, int qos, bool v5)
{
    size_t n = 0;
    int v;
#define PUT_INT(x) (v = (x), memcpy(buf + n, &v, sizeof(int)), n += sizeof(int))
    PUT_INT(3); /* PUBLISH */
    PUT_INT(7); /* token */
    memcpy(buf + n, topic, strlen(topic) + 1);
    n += strlen(topic) + 1;
    PUT_INT((int)strlen(payload));
    memcpy(buf + n, payload, strlen(payload));
    n += strlen(payload);
    PUT_INT(qos);
    PUT_INT(0);
    if (v5) {
        /* properties: content type "text/plain", user property device=bike-1 */
        static const uint8_t props[] = { 30,  0x03, 0,   10,   't', 'e', 'x', 't', '/', 'p', 'l',
                                         'a', 'i',  'n', 0x26, 0,   6,   'd', 'e', 'v', 'i', 'c',
                                         'e', 0,    6,   'b',  'i', 'k', 'e', '-', '1' };
        memcpy(buf + n, props, sizeof(props));
        n += sizeof(props);
    }
#undef PUT_INT
    return n;
}

/* A sent PUBLISH (QoS 1) as Paho stores it in an "s-"/"s5-" record: the packet. */
static size_t packet(uint8_t *buf, const char *topic, const char *payload, uint16_t id, bool v5)
{
    size_t t = strlen(topic), p = strlen(payload), n = 0;
    buf[n++] = 0x32;
    buf[n++] = (uint8_t)(2 + t + 2 + (v5 ? 1 : 0) + p); /* under 128 here */
    buf[n++] = 0;
    buf[n++] = (uint8_t)t;
    memcpy(buf + n, topic, t);
    n += t;
    buf[n++] = (uint8_t)(id >> 8);
    buf[n++] = (uint8_t)id;
    if (v5)
        buf[n++] = 0; /* no properties */
    memcpy(buf + n, payload, p);
    return n + p;
}

static void paho_file(const char *name, const uint8_t *data, size_t len, time_t mtime)
{
    write_file("mqtt", name, data, len);
    struct timespec ts[2] = { { mtime, 0 }, { mtime, 0 } };
    cr_assert_eq(utimensat(AT_FDCWD, path("mqtt", name), ts, 0), 0);
}

/* What an earlier version left: two sent, three queued, a PUBREL, a damaged one, a leftover. */
static void paho_store(void)
{
    uint8_t rec[256];
    size_t n;
    n = packet(rec, "redback/x", "sent-1", 40, false);
    paho_file("s-40.msg", rec, n, 1000);
    n = packet(rec, "redback/x", "sent-2", 3, true);
    paho_file("s5-3.limbo", rec, n, 2000); /* delivery not reported when it stopped */
    n = command(rec, "redback/y", "queued-3", 1, false);
    paho_file("c-9.msg", rec, n, 100);
    n = command(rec, "redback/y", "queued-4", 2, true);
    paho_file("c5-10.msg", rec, n, 100);
    n = command(rec, "redback/y", "queued-5", 0, false);
    paho_file("c-11.msg", rec, n, 100);
    static const uint8_t pubrel[] = { 0x62, 0x02, 0x00, 0x09 };
    paho_file("sc-9.msg", pubrel, sizeof(pubrel), 100);
    n = command(rec,
                "redback/a\x01"
                "b",
                "poison", 1, false);
    paho_file("c-12.msg", rec, n, 100);
    paho_file("c-13.msg.tmp", rec, 5, 100);
}

static const char *const paho_order = "sent-1 sent-2 queued-3 queued-4 queued-5";

Test(mqtt_store, the_store_of_an_earlier_version_is_imported_in_order)
{
    paho_store();
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_not_null(s);
    cr_assert_str_eq(payloads(s), paho_order);
    cr_assert_eq(stats(s).imported, 5);
    cr_assert_eq(stats(s).records, 5);
    cr_assert_eq(stats(s).damaged, 1, "the poison record");
    cr_assert_eq(count("mqtt-refused"), 1);
    struct stat st;
    cr_assert_neq(stat(path("mqtt", ""), &st), 0, "the old store is gone");
    cr_assert_not(exists("offline", "paho-import"));
    /* What each became. */
    uint64_t q = mqtt_store_first(s);
    mqtt_store_rec_t rec;
    cr_assert_eq(mqtt_store_get(s, q, &rec), 0);
    cr_assert_eq(rec.pub.qos, 1);
    cr_assert_not(rec.sent, "sent again as a new message");
    q = mqtt_store_next(s, mqtt_store_next(s, mqtt_store_next(s, q)));
    cr_assert_eq(mqtt_store_get(s, q, &rec), 0);
    cr_assert_eq(rec.pub.qos, 2);
    const mqtt_prop_t *ct = mqtt_prop_find(&rec.pub.props, MQTT_PROP_CONTENT_TYPE);
    cr_assert_not_null(ct);
    cr_assert_eq(memcmp(ct->data.p, "text/plain", 10), 0);
    cr_assert_eq(mqtt_store_get(s, mqtt_store_next(s, q), &rec), 0);
    cr_assert_eq(rec.pub.qos, 0);
    mqtt_store_close(s);
    /* Once only. */
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), paho_order);
    cr_assert_eq(stats(s).imported, 0);
    mqtt_store_close(s);
}

Test(mqtt_store, the_import_follows_what_the_store_holds)
{
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    add(s, "before");
    mqtt_store_close(s);
    paho_store();
    s = mqtt_store_open(dir, BIG, BIG);
    char want[256];
    snprintf(want, sizeof(want), "before %s", paho_order);
    cr_assert_str_eq(payloads(s), want);
    mqtt_store_close(s);
}

/* Files in offline/ whose name ends with suffix. */
static unsigned count_suffix(const char *suffix)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/offline", dir);
    DIR *d = opendir(p);
    unsigned n = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t l = strlen(de->d_name), k = strlen(suffix);
        n += l > k && !strcmp(de->d_name + l - k, suffix);
    }
    if (d)
        closedir(d);
    return n;
}

Test(mqtt_store, a_crash_before_the_import_commits_imports_again_once)
{
    /* The import had written two records (step 1) when the crash came. */
    mkdir(path("offline", ""), 0700);
    const char *leftover[] = { "sent-1", "sent-2" };
    for (int i = 0; i < 2; i++) {
        uint8_t rec[256];
        char name[32];
        mqtt_publish_t p = pub_of("redback/x", leftover[i], 1);
        ssize_t n = mqtt_store_encode(&p, 0x100 + (uint64_t)i, false, 0, rec, sizeof(rec));
        cr_assert_gt(n, 0);
        snprintf(name, sizeof(name), "%016llx.imp", 0x100ull + (unsigned long long)i);
        write_file("offline", name, rec, (size_t)n);
    }
    paho_store();
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), paho_order, "nothing twice, nothing lost");
    cr_assert_eq(stats(s).records, 5);
    cr_assert_eq(count_suffix(".imp"), 0);
    mqtt_store_close(s);
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), paho_order, "nothing twice after a restart either");
    cr_assert_eq(stats(s).damaged, 0);
    mqtt_store_close(s);
}

Test(mqtt_store, a_crash_after_the_import_commits_finishes_it)
{
    paho_store();
    mqtt_store_t *s = mqtt_store_open(dir, BIG, BIG);
    mqtt_store_close(s);
    /* As after step 2: records as .imp, the marker, the Paho files still there. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "cd %s/offline && for f in *.rec; do mv $f ${f%%.rec}.imp; done && "
             "printf 's-40.msg\\ns5-3.limbo\\nc-9.msg\\nc5-10.msg\\nc-11.msg\\nsc-9.msg\\n' > "
             "paho-import",
             dir);
    cr_assert_eq(system(cmd), 0);
    paho_store();
    /* One of them already renamed (step 3 under way). */
    snprintf(cmd, sizeof(cmd), "cd %s/offline && f=$(ls *.imp | head -1) && mv $f ${f%%.imp}.rec",
             dir);
    cr_assert_eq(system(cmd), 0);
    s = mqtt_store_open(dir, BIG, BIG);
    cr_assert_str_eq(payloads(s), paho_order, "nothing twice, nothing lost");
    cr_assert_eq(stats(s).imported, 0, "not imported again");
    cr_assert_not(exists("offline", "paho-import"));
    cr_assert_not(exists("mqtt", "s-40.msg"));
    cr_assert_not(exists("mqtt", "c-11.msg"));
    /* The poison record was not in the marker: a new import sets it aside. */
    cr_assert_eq(stats(s).damaged, 1);
    mqtt_store_close(s);
}

Test(mqtt_store, paho_records_are_read_without_trusting_them)
{
    uint8_t rec[256], buf[512];
    mqtt_publish_t pub;
    char why[128];
    size_t n = command(rec, "redback/p1", "hello", 1, false);
    cr_assert_eq(store_paho_read("c-1", rec, n, buf, n + 16, &pub, why, sizeof(why)), 1, "%s", why);
    cr_assert_eq(pub.payload.len, 5);
    for (size_t k = 0; k < n; k++)
        cr_assert_eq(store_paho_read("c-1", rec, k, buf, k + 16, &pub, why, sizeof(why)), -1,
                     "length %zu", k);
    n = packet(rec, "redback/x", "v", 9, true);
    cr_assert_eq(store_paho_read("s5-9", rec, n, buf, n + 16, &pub, why, sizeof(why)), 1, "%s",
                 why);
    for (size_t k = 0; k < n; k++)
        cr_assert_eq(store_paho_read("s5-9", rec, k, buf, k + 16, &pub, why, sizeof(why)), -1,
                     "length %zu", k);
    cr_assert_eq(store_paho_read("r5-9", rec, n, buf, n + 16, &pub, why, sizeof(why)), 0);
    cr_assert_eq(store_paho_read("x-9", rec, n, buf, n + 16, &pub, why, sizeof(why)), -1);
    cr_assert_eq(store_paho_read("s-9a", rec, n, buf, n + 16, &pub, why, sizeof(why)), -1);
    n = command(rec, "redback/+/x", "v", 1, false);
    cr_assert_eq(store_paho_read("c-1", rec, n, buf, n + 16, &pub, why, sizeof(why)), -1);
    int neg = -5;
    n = command(rec, "t", "abc", 1, false);
    memcpy(rec + 2 * sizeof(int) + 2, &neg, sizeof(int));
    cr_assert_eq(store_paho_read("c-1", rec, n, buf, n + 16, &pub, why, sizeof(why)), -1);
}
