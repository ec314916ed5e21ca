/*
 * Where the MQTT client keeps what it has not delivered yet: Paho's
 * persistence interface, implemented on files in gateway.state_dir/mqtt.
 *
 * Each record is written to a temporary file and renamed into place, so a
 * crash never leaves a half-written record. While the broker is unreachable
 * (persist_set_durable(true)) every record is also fsync'ed with its folder
 * before Paho reports it stored: what a device was answered 2.04 for then
 * survives a power cut too. While connected, a 2.04 waits for the broker's
 * acknowledgement, so records are not fsync'ed.
 */
#ifndef TANDEM_PERSIST_H
#define TANDEM_PERSIST_H

#include <MQTTClientPersistence.h>
#include <stdbool.h>
#include <stdint.h>

#include "record.h"

typedef struct persist persist_t;

/*
 * state_dir must exist; the subfolder "mqtt" is made. Every record found is
 * read and checked (record.h); one that is damaged or holds a message a
 * broker would refuse is removed, logged and counted. NULL with errno on
 * failure.
 */
persist_t *persist_new(const char *state_dir);
void persist_free(persist_t *p);

/* The Paho persistence callbacks for p; p must outlive the client. */
MQTTClient_persistence persist_paho(persist_t *p);

void persist_set_durable(persist_t *p, bool durable);

/* fsyncs every record held and the folder. 0, or -errno of the first failure. */
int persist_flush(persist_t *p);

/*
 * Group commit. Between persist_defer(p, true) and persist_defer(p, false),
 * new records that the calling thread makes durable are written and renamed
 * but not yet fsync'ed; persist_sync() then fsyncs them all and the folder
 * once. Nothing may be promised about them before persist_sync() returns 0.
 * Records replaced, and records other threads write, are fsync'ed at once.
 */
void persist_defer(persist_t *p, bool on);
/* 0, or -errno of the first failure (the records stay unsynced then). */
int persist_sync(persist_t *p);

/* Records removed when the store was opened: damaged, or refused by a broker. */
unsigned persist_refused(const persist_t *p);

/*
 * Messages the client sent and the broker has not acknowledged ("s-" and
 * "s5-" records), on disk (the store durable: disconnected). How many, and
 * the key of one of them in key.
 */
unsigned persist_sent(persist_t *p, char *key, size_t keylen);

/*
 * Gives each of those messages to fn, for the client to send them again as
 * new messages; when fn returns 0 its record is put aside until
 * persist_resent() says whether it was handed over (then it goes) or not
 * (then it is back in the store). A crash in between puts it back at the next
 * start. Only while no client uses the store. Returns how many, or -errno.
 */
int persist_take_sent(persist_t *p, int (*fn)(void *arg, const char *key, const record_pub_t *pub),
                      void *arg);
void persist_resent(persist_t *p, const char *key, bool ok);

/*
 * Takes the record key out of the store into state_dir/mqtt-refused, where
 * the operator finds it (at most 1,000 kept; past that it is removed). Only
 * while no client uses the store. 0, or -errno.
 */
int persist_set_aside(persist_t *p, const char *key);

/*
 * A sent message the client removes from the store waits in limbo until its
 * delivery is reported: the broker acknowledged it (persist_delivered, from
 * the client's delivery callback). When the broker has no session for us at
 * a connection, the client drops what it had in flight: at each connection
 * (persist_session_start, from the connect callback) what is in limbo is
 * marked lost, and persist_take_lost() gives each to fn to be sent again as a
 * new message (then it goes; when fn fails it waits for the next connection).
 */
void persist_delivered(persist_t *p, int msgid);
void persist_session_start(persist_t *p);
int persist_take_lost(persist_t *p, int (*fn)(void *arg, const record_pub_t *pub), void *arg);

/* Records and bytes held now (safe from any thread). */
uint64_t persist_bytes(persist_t *p);
unsigned persist_records(persist_t *p);

#endif
