/*
 * The MQTT client's store on files (bridge/persist.c), through the
 * persistence interface Paho calls: records written, replaced, read back and
 * removed, in memory while connected and on disk while not; what a crash or a
 * damaged disk leaves is cleaned up when the store is opened.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "persist.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/tandem-persist-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(persist, .init = setup, .fini = teardown);

static bool exists(const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "%s/mqtt/%s", dir, name);
    return stat(path, &st) == 0;
}

static void write_file(const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/mqtt/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static int put(MQTTClient_persistence *pp, void *h, const char *key, const char *a, const char *b)
{
    char *bufs[2] = { (char *)a, (char *)b };
    int lens[2] = { (int)strlen(a), (int)strlen(b) };
    return pp->pput(h, (char *)key, 2, bufs, lens);
}

static char *get(MQTTClient_persistence *pp, void *h, const char *key)
{
    char *buf = NULL;
    int len = 0;
    if (pp->pget(h, (char *)key, &buf, &len) != 0)
        return NULL;
    char *s = strndup(buf, (size_t)len);
    MQTTAsync_free(buf);
    return s;
}

Test(persist, durable_records_are_files)
{
    persist_t *p = persist_new(dir);
    cr_assert_not_null(p);
    MQTTClient_persistence pp = persist_paho(p);
    void *h;
    cr_assert_eq(pp.popen(&h, "id", "uri", pp.context), 0);
    persist_set_durable(p, true);
    cr_assert_eq(put(&pp, h, "c-1", "hello ", "world"), 0);
    cr_assert(exists("c-1.msg"));
    cr_assert_eq(persist_records(p), 1);
    cr_assert_eq(persist_bytes(p), 11);
    char *v = get(&pp, h, "c-1");
    cr_assert_str_eq(v, "hello world");
    free(v);
    /* Replaced: one record still, its new size counted. */
    cr_assert_eq(put(&pp, h, "c-1", "hi", ""), 0);
    cr_assert_eq(persist_records(p), 1);
    cr_assert_eq(persist_bytes(p), 2);
    cr_assert_eq(pp.pcontainskey(h, "c-1"), 0);
    cr_assert_eq(pp.premove(h, "c-1"), 0);
    cr_assert_not(exists("c-1.msg"));
    cr_assert_eq(persist_records(p), 0);
    cr_assert_neq(pp.pcontainskey(h, "c-1"), 0);
    /* Keys that are not Paho's short names never become paths. */
    cr_assert_neq(put(&pp, h, "../x", "a", "b"), 0);
    cr_assert_neq(put(&pp, h, "", "a", "b"), 0);
    persist_free(p);
}

Test(persist, memory_while_connected_disk_when_not)
{
    persist_t *p = persist_new(dir);
    MQTTClient_persistence pp = persist_paho(p);
    void *h;
    pp.popen(&h, "id", "uri", pp.context);
    persist_set_durable(p, false); /* connected: a 2.04 waits for the broker */
    cr_assert_eq(put(&pp, h, "s-5", "in ", "flight"), 0);
    cr_assert_not(exists("s-5.msg"));
    cr_assert_eq(persist_records(p), 1);
    char *v = get(&pp, h, "s-5");
    cr_assert_str_eq(v, "in flight");
    free(v);
    /* The connection drops: what is held goes to disk. */
    persist_set_durable(p, true);
    cr_assert(exists("s-5.msg"));
    cr_assert_eq(persist_records(p), 1);
    persist_free(p);
    /* And is there after a restart. */
    p = persist_new(dir);
    cr_assert_eq(persist_records(p), 0, "a record that is not a valid one is not kept");
    persist_free(p);
}

/* A command record as Paho 1.3 writes one for a PUBLISH (host ints). */
static size_t command(uint8_t *buf, const char *topic, const char *payload)
{
    size_t n = 0;
    int v;
#define PUT_INT(x) (v = (x), memcpy(buf + n, &v, sizeof(int)), n += sizeof(int))
    PUT_INT(3);
    PUT_INT(1);
    memcpy(buf + n, topic, strlen(topic) + 1);
    n += strlen(topic) + 1;
    PUT_INT((int)strlen(payload));
    memcpy(buf + n, payload, strlen(payload));
    n += strlen(payload);
    PUT_INT(1);
    PUT_INT(0);
#undef PUT_INT
    return n;
}

Test(persist, opening_cleans_what_a_crash_or_a_disk_left)
{
    uint8_t rec[256];
    persist_t *p = persist_new(dir); /* makes the folder */
    persist_free(p);
    size_t n = command(rec, "redback/a/b", "good");
    write_file("c-1.msg", rec, n);
    n = command(rec,
                "redback/a\x01"
                "b",
                "poison");
    write_file("c-2.msg", rec, n);
    write_file("c-3.msg", rec, 5);          /* cut short */
    write_file("c-4.tmp", "half", 4);       /* a write a crash interrupted */
    write_file("notes.txt", "not ours", 8); /* left alone */
    p = persist_new(dir);
    cr_assert_eq(persist_records(p), 1);
    cr_assert_eq(persist_refused(p), 2);
    cr_assert(exists("c-1.msg"));
    cr_assert_not(exists("c-2.msg"));
    cr_assert_not(exists("c-3.msg"));
    cr_assert_not(exists("c-4.tmp"));
    cr_assert(exists("notes.txt"));
    /* Paho restores what is left. */
    MQTTClient_persistence pp = persist_paho(p);
    void *h;
    char **keys;
    int nkeys;
    pp.popen(&h, "id", "uri", pp.context);
    cr_assert_eq(pp.pkeys(h, &keys, &nkeys), 0);
    cr_assert_eq(nkeys, 1);
    cr_assert_str_eq(keys[0], "c-1");
    MQTTAsync_free(keys[0]);
    MQTTAsync_free(keys);
    persist_free(p);
}

Test(persist, group_commit)
{
    uint8_t rec[256];
    size_t n = command(rec, "redback/a/b", "x");
    persist_t *p = persist_new(dir);
    MQTTClient_persistence pp = persist_paho(p);
    void *h;
    pp.popen(&h, "id", "uri", pp.context);
    persist_set_durable(p, true);
    persist_defer(p, true);
    char *bufs[1] = { (char *)rec };
    int lens[1] = { (int)n };
    cr_assert_eq(pp.pput(h, "c-1", 1, bufs, lens), 0);
    cr_assert_eq(pp.pput(h, "c-2", 1, bufs, lens), 0);
    persist_defer(p, false);
    cr_assert(exists("c-1.msg") && exists("c-2.msg"), "renamed into place before the sync");
    cr_assert_eq(persist_sync(p), 0);
    cr_assert_eq(persist_records(p), 2);
    persist_free(p);
    p = persist_new(dir);
    cr_assert_eq(persist_records(p), 2);
    persist_free(p);
}

/* Runs persist_new(dir) with stderr captured into out (NUL-terminated). */
static persist_t *open_capturing(char *out, size_t size)
{
    int fds[2], saved = dup(STDERR_FILENO);
    cr_assert_geq(saved, 0);
    cr_assert_eq(pipe(fds), 0);
    fflush(stderr);
    cr_assert_geq(dup2(fds[1], STDERR_FILENO), 0);
    persist_t *p = persist_new(dir);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < size && (r = read(fds[0], out + n, size - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fds[0]);
    return p;
}

Test(persist, written_records_are_read_back_after_a_restart)
{
    uint8_t rec[256], rec2[256];
    size_t n = command(rec, "redback/a/b", "first"), n2 = command(rec2, "redback/a/b", "second!");
    persist_t *p = persist_new(dir);
    MQTTClient_persistence pp = persist_paho(p);
    void *h;
    pp.popen(&h, "id", "uri", pp.context);
    persist_set_durable(p, true);
    char *bufs[1] = { (char *)rec };
    int lens[1] = { (int)n };
    cr_assert_eq(pp.pput(h, "c-1", 1, bufs, lens), 0);
    cr_assert_eq(pp.pput(h, "c-2", 1, bufs, lens), 0);
    /* c-2 replaced by another message. */
    bufs[0] = (char *)rec2;
    lens[0] = (int)n2;
    cr_assert_eq(pp.pput(h, "c-2", 1, bufs, lens), 0);
    cr_assert_eq(persist_records(p), 2);
    cr_assert_eq(persist_bytes(p), n + n2);
    persist_free(p);

    p = persist_new(dir);
    cr_assert_eq(persist_records(p), 2);
    cr_assert_eq(persist_bytes(p), n + n2, "the replaced record counted at its new size");
    cr_assert_eq(persist_refused(p), 0);
    pp = persist_paho(p);
    pp.popen(&h, "id", "uri", pp.context);
    char *buf = NULL;
    int len = 0;
    cr_assert_eq(pp.pget(h, "c-2", &buf, &len), 0);
    cr_assert_eq(len, (int)n2);
    cr_assert_arr_eq(buf, rec2, n2, "the new content, not the old");
    MQTTAsync_free(buf);
    cr_assert_eq(pp.pget(h, "c-1", &buf, &len), 0);
    cr_assert_eq(len, (int)n);
    cr_assert_arr_eq(buf, rec, n);
    MQTTAsync_free(buf);
    persist_free(p);
}

Test(persist, an_interrupted_write_is_removed_at_open)
{
    uint8_t rec[256];
    persist_free(persist_new(dir));
    size_t n = command(rec, "redback/a/b", "old");
    write_file("c-1.msg", rec, n);
    /* What gw_file_write() leaves when a crash comes before the rename. */
    write_file("c-1.msg.tmp", rec, n / 2);
    write_file("c-2.msg.tmp", rec, n);
    persist_t *p = persist_new(dir);
    cr_assert_not(exists("c-1.msg.tmp"));
    cr_assert_not(exists("c-2.msg.tmp"), "never renamed: never promised, even when whole");
    cr_assert(exists("c-1.msg"), "the record it was replacing stays");
    cr_assert_eq(persist_records(p), 1);
    cr_assert_eq(persist_bytes(p), n);
    cr_assert_eq(persist_refused(p), 0, "a leftover is not a refused record");
    persist_free(p);
}

/* A sent PUBLISH (QoS 1) as Paho stores it in an "s-" record: the packet. */
static size_t publish(uint8_t *buf, const char *topic, const char *payload, uint16_t msgid)
{
    size_t tl = strlen(topic), pl = strlen(payload), n = 0;
    buf[n++] = 0x32;
    buf[n++] = (uint8_t)(2 + tl + 2 + pl); /* remaining length, < 128 here */
    buf[n++] = (uint8_t)(tl >> 8);
    buf[n++] = (uint8_t)tl;
    memcpy(buf + n, topic, tl);
    n += tl;
    buf[n++] = (uint8_t)(msgid >> 8);
    buf[n++] = (uint8_t)msgid;
    memcpy(buf + n, payload, pl);
    return n + pl;
}

Test(persist, resend_and_limbo_records_are_restored_at_open)
{
    uint8_t rec[256];
    persist_free(persist_new(dir));
    size_t n = publish(rec, "redback/a/b", "again", 3);
    write_file("s-3.resend", rec, n); /* a crash while handed over again */
    write_file("s-4.limbo", rec, n);  /* a crash before its delivery was reported */
    persist_t *p = persist_new(dir);
    cr_assert(exists("s-3.msg"));
    cr_assert(exists("s-4.msg"));
    cr_assert_not(exists("s-3.resend"));
    cr_assert_not(exists("s-4.limbo"));
    cr_assert_eq(persist_records(p), 2, "%u records", persist_records(p));
    cr_assert_eq(persist_bytes(p), 2 * n);
    cr_assert_eq(persist_refused(p), 0);
    persist_free(p);
}

Test(persist, a_damaged_record_is_refused_logged_and_counted)
{
    uint8_t rec[256];
    persist_free(persist_new(dir));
    size_t n = command(rec, "redback/a/b", "good");
    write_file("c-1.msg", rec, n);
    write_file("c-2.msg", "\xff\xff\xff\xff garbage", 12);
    char log[4096], folder[128];
    persist_t *p = open_capturing(log, sizeof(log));
    cr_assert_not_null(p);
    cr_assert_eq(persist_refused(p), 1);
    cr_assert_eq(persist_records(p), 1);
    cr_assert_eq(persist_bytes(p), n);
    cr_assert_not(exists("c-2.msg"), "removed");
    cr_assert(exists("c-1.msg"));
    snprintf(folder, sizeof(folder), "%s/mqtt", dir);
    cr_assert_not_null(strstr(log, folder), "the log names the store's folder: %s", log);
    cr_assert_not_null(strstr(log, "c-2"), "and the record refused: %s", log);
    persist_free(p);
    /* Opened again: nothing left to refuse, nothing logged. */
    p = open_capturing(log, sizeof(log));
    cr_assert_eq(persist_refused(p), 0);
    cr_assert_null(strstr(log, folder), "%s", log);
    persist_free(p);
}

/* A damaged record that was handed over again, or in limbo, is refused like any other. */
Test(persist, a_damaged_resend_or_limbo_record_is_refused)
{
    persist_free(persist_new(dir));
    write_file("s-5.resend", "\xff\xff\xff\xff garbage", 12);
    write_file("s-6.limbo", "\xff\xff\xff\xff garbage", 12);
    char log[4096];
    persist_t *p = open_capturing(log, sizeof(log));
    cr_assert_not_null(p);
    cr_assert_eq(persist_refused(p), 2, "%u refused", persist_refused(p));
    cr_assert_eq(persist_records(p), 0);
    cr_assert_not(exists("s-5.msg"));
    cr_assert_not(exists("s-6.msg"));
    cr_assert_not(exists("s-5.resend"));
    cr_assert_not(exists("s-6.limbo"));
    persist_free(p);
}
