/*
 * What store.c and store_paho.c share: the store's state and the file work
 * the import of Paho's store needs. Not for other modules.
 */
#ifndef TANDEM_MQTT_STORE_INT_H
#define TANDEM_MQTT_STORE_INT_H

#include "store.h"

/* One record held: on disk, in memory, or both (data newer than the file). */
struct store_ent {
    uint64_t seq;
    uint32_t size; /* the record's bytes */
    bool gone;     /* removed: a hole until the array is compacted */
    bool on_disk;  /* a file "<seq>.rec" holds it (or an older version of it) */
    bool staged;   /* during a group commit: written to "<seq>.rec.tmp", not yet renamed */
    uint8_t *data; /* owned: the record when not on disk or newer than its file; else NULL */
};

struct mqtt_store {
    char *root;     /* owned: state_dir */
    char *dir;      /* owned: state_dir/offline */
    char *refused;  /* owned: state_dir/mqtt-refused */
    long refused_n; /* files in it, counted once when first needed; -1 before */
    size_t max_records;
    uint64_t max_bytes;
    bool durable, deferring;
    struct store_ent *v; /* owned: ordered by seq, holes included */
    size_t n, cap, head; /* entries, room, the first that is not a hole */
    size_t holes;
    uint64_t next_seq;
    mqtt_store_stats_t st;
    uint8_t *rbuf; /* owned: the last record read from disk (mqtt_store_get) */
};

/* The largest record file read back, bytes. */
#define STORE_RECORD_MAX ((size_t)MQTT_REMAINING_MAX + 64)

/* Reads the whole file path into a new buffer (*len its size). 0 or -errno. */
int store_read_file(const char *path, uint8_t **data, size_t *len);
/* fsync of the folder dir, counted. 0 or -errno. */
int store_sync_dir(mqtt_store_t *s, const char *dir);
/* Moves the file path into state_dir/mqtt-refused as name (removed past the bound). */
void store_set_aside_file(mqtt_store_t *s, const char *path, const char *name);
/* Appends a record on disk of size bytes (seq above every one held). 0 or -ENOMEM. */
int store_push(mqtt_store_t *s, uint64_t seq, uint32_t size, bool on_disk, uint8_t *data);

/*
 * The import of Paho's store (store_paho.c). store_paho_recover() runs before
 * the store's folder is read: it finishes an import a crash interrupted after
 * its commit, or undoes one interrupted before. store_paho_import() runs
 * after: it imports state_dir/mqtt when there is one. 0 or -errno.
 */
int store_paho_recover(mqtt_store_t *s);
int store_paho_import(mqtt_store_t *s);

/*
 * Reads a record of Paho's store (its key, e.g. "s-12" or "c5-3", and its
 * bytes): 1 for a publish, in *pub (its bytes in data or in buf, cap bytes,
 * at least len + 16); 0 for a record of another kind (a PUBREL, a
 * subscription, a message received), which is not imported; -1 with a
 * reason in why for one that is damaged, of a kind Tandem does not know, or
 * carries a message a broker would refuse.
 */
int store_paho_read(const char *key, const uint8_t *data, size_t len, uint8_t *buf, size_t cap,
                    mqtt_publish_t *pub, char *why, size_t whylen);

#endif
