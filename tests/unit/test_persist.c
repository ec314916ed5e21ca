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
    char *bufs[2] = {(char *)a, (char *)b};
    int lens[2] = {(int)strlen(a), (int)strlen(b)};
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
    n = command(rec, "redback/a\x01" "b", "poison");
    write_file("c-2.msg", rec, n);
    write_file("c-3.msg", rec, 5);                 /* cut short */
    write_file("c-4.tmp", "half", 4);              /* a write a crash interrupted */
    write_file("notes.txt", "not ours", 8);        /* left alone */
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
    char *bufs[1] = {(char *)rec};
    int lens[1] = {(int)n};
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
