/*
 * The offline store: the publishes the MQTT client holds until the broker
 * has them, kept in order in gateway.state_dir/offline so that what a device
 * was answered 2.04 for survives a broker outage and a gateway restart.
 *
 * On disk each record is one file, "<seq>.rec" (seq as 16 hex digits), made
 * of a 28-byte header and the publish as the codec encodes it for MQTT 5
 * (integers big-endian):
 *
 *    0  4  magic "TQS\n"
 *    4  1  format version (MQTT_STORE_VERSION)
 *    5  1  flags: 1 = sent once
 *    6  2  the packet identifier it was sent with (0: never sent)
 *    8  4  reserved, 0
 *   12  8  seq, as in the file's name: the order records were added in
 *   20  4  the packet's length
 *   24  4  CRC-32C of the header (this field as 0) and of the packet
 *   28     the PUBLISH packet
 *
 * A record sent once has the DUP flag and the identifier it was sent with in
 * its packet too, for a resumed session to send it again as the same message;
 * a record never sent has the identifier 1 in its packet, which means nothing.
 *
 * Crash safety: a record is written to "<seq>.rec.tmp", its content made
 * durable, then renamed into place and the folder fsync'ed; only then is it
 * promised. One record alone is fsync'ed; a batch (the records held in memory
 * when the connection drops, a group commit) is written whole to its .tmp
 * files, flushed by one syncfs() of the store's file system, renamed, and the
 * folder fsync'ed once, so no rename can be durable before its content. A
 * crash leaves either the old state or the new one, and at most .tmp files
 * that were never promised (removed at the next open). A record that does not read back whole (torn
 * by a disk, the wrong checksum, a format version this Tandem does not know,
 * a packet the codec refuses, a topic a broker refuses) is set aside in
 * state_dir/mqtt-refused, logged and counted, never sent. A removal is an
 * unlink that is not fsync'ed: lost in a crash, the record is sent again
 * (at least once, as MQTT QoS 1 promises).
 *
 * Memory and disk: while the broker is connected (mqtt_store_set_durable
 * false) records are kept in memory only, since a 2.04 then waits for the
 * broker's acknowledgement; mqtt_store_set_durable(true), when the
 * connection drops, writes them all durably, and every record added after
 * that is fsync'ed with its folder before mqtt_store_add returns 0. Group
 * commit: between mqtt_store_defer(true) and mqtt_store_sync(), records
 * added are held in memory and written together by mqtt_store_sync(), two
 * flushes for the burst; nothing may be promised about them before it
 * returns 0.
 *
 * The first open after an upgrade imports what Paho's store left in
 * state_dir/mqtt (store_paho.c says how, and what a crash does at each step).
 *
 * Single-threaded: the loop owns the store.
 */
#ifndef TANDEM_MQTT_STORE_H
#define TANDEM_MQTT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "packet.h"

typedef struct mqtt_store mqtt_store_t;

/* The current on-disk format version, in each record's header. */
#define MQTT_STORE_VERSION 1
/* Records kept at most in state_dir/mqtt-refused; past that they are removed. */
#define MQTT_STORE_SET_ASIDE_MAX 1000

/* What the store holds now, and what it did since it was opened. */
typedef struct mqtt_store_stats {
    uint64_t records, bytes; /* held now, in memory and on disk (bytes as on disk) */
    uint64_t full;           /* adds refused: the store at its bound */
    uint64_t damaged;        /* records found damaged (at open or read), set aside */
    uint64_t set_aside;      /* records the broker refused, set aside */
    uint64_t imported;       /* records imported from Paho's store */
    uint64_t syncs;          /* flushes made: fsync and syncfs calls (records and folder) */
} mqtt_store_stats_t;

/* A stored publish, as mqtt_store_get gives it. */
typedef struct mqtt_store_rec {
    uint64_t seq;       /* its place in the order: increasing, never 0 */
    bool sent;          /* sent to a broker once: again with DUP and id */
    uint16_t id;        /* the packet identifier it was sent with; 0 when never sent */
    mqtt_publish_t pub; /* its bytes borrowed: see mqtt_store_get */
} mqtt_store_rec_t;

/*
 * Opens the store in state_dir/offline (made, with state_dir, when missing),
 * reading back every record in order; damaged ones are set aside, logged and
 * counted. Then imports Paho's store from state_dir/mqtt when one is there.
 * At most max_records records and max_bytes bytes are accepted by
 * mqtt_store_add (what is found on disk is kept whatever the bounds). NULL
 * with errno on failure.
 */
mqtt_store_t *mqtt_store_open(const char *state_dir, size_t max_records, uint64_t max_bytes);
/* Writes what is held in memory durably (sent again after the next open), then frees s. */
void mqtt_store_close(mqtt_store_t *s);

/* Changes the bounds (a reload); what is held already stays. */
void mqtt_store_set_limits(mqtt_store_t *s, size_t max_records, uint64_t max_bytes);

/*
 * durable (the broker away): writes every record held in memory to disk and
 * fsyncs it, and makes each mqtt_store_add durable before it returns.
 * Not durable (connected): new records stay in memory. 0, or -errno of the
 * first failure (the records that failed stay in memory).
 */
int mqtt_store_set_durable(mqtt_store_t *s, bool durable);

/*
 * Adds a copy of pub (QoS 0 to 2, a topic, no Topic Alias; its id and dup are
 * not kept) after every record held; *seq (may be NULL) its place. 0;
 * -ENOBUFS when the store is at its bounds (the caller answers 5.03);
 * -EINVAL when pub cannot be stored; another -errno when a durable write
 * failed (nothing added).
 */
int mqtt_store_add(mqtt_store_t *s, const mqtt_publish_t *pub, uint64_t *seq);

/*
 * Group commit: while on, records added while durable wait in memory for
 * mqtt_store_sync(), which writes and fsyncs them all and the folder once.
 * 0, or -errno of the first failure (those records stay in memory, unsynced).
 */
void mqtt_store_defer(mqtt_store_t *s, bool on);
int mqtt_store_sync(mqtt_store_t *s);

/* The first record's seq, the one after seq, or 0 when there is none. */
uint64_t mqtt_store_first(const mqtt_store_t *s);
uint64_t mqtt_store_next(const mqtt_store_t *s, uint64_t seq);

/*
 * The record seq in *rec. Its bytes (topic, payload, properties) live until
 * the next mqtt_store_get or mqtt_store_mark_sent, or the record's removal.
 * 0; -ENOENT when there is no such record; -EBADMSG when it was damaged on
 * disk (then it is set aside, logged and counted, and no longer held);
 * -errno when it cannot be read.
 */
int mqtt_store_get(mqtt_store_t *s, uint64_t seq, mqtt_store_rec_t *rec);

/*
 * Records that seq was sent with the packet identifier id (1..65535), for a
 * resumed session to send it again with DUP. A record on disk has its file
 * replaced at once, not fsync'ed (the gateway killed keeps it; a power cut
 * may lose it, and the record is sent again as a new message); one in memory
 * only is written at the next mqtt_store_set_durable(true) or close. 0,
 * -ENOENT, -EINVAL, -ENOMEM, or -errno when it cannot be read.
 */
int mqtt_store_mark_sent(mqtt_store_t *s, uint64_t seq, uint16_t id);

/* The broker has seq: it leaves the store. 0 or -ENOENT. */
int mqtt_store_remove(mqtt_store_t *s, uint64_t seq);

/*
 * The broker refused seq: it leaves the store into state_dir/mqtt-refused,
 * where the operator finds it (at most MQTT_STORE_SET_ASIDE_MAX records kept
 * there; past that it is removed). Counted. 0, -ENOENT, or -errno.
 */
int mqtt_store_set_aside(mqtt_store_t *s, uint64_t seq);

void mqtt_store_stats(const mqtt_store_t *s, mqtt_store_stats_t *st);

/*
 * The record format alone (pure, for the fuzz target and the tests).
 * mqtt_store_encode writes the record of pub (seq, sent with id when sent)
 * into buf and returns its length, larger than cap when nothing usable was
 * written, or -EINVAL. mqtt_store_decode reads one: 0, with *rec's bytes in
 * data; -1 with a reason in why (a version this Tandem does not know says so).
 */
ssize_t mqtt_store_encode(const mqtt_publish_t *pub, uint64_t seq, bool sent, uint16_t id,
                          uint8_t *buf, size_t cap);
int mqtt_store_decode(const uint8_t *data, size_t len, mqtt_store_rec_t *rec, char *why,
                      size_t whylen);

#endif
