/*
 * The records of the MQTT client's store (Paho 1.3's persistence formats),
 * read without trusting them: a record is a file in gateway.state_dir that a
 * crash, a disk, an older version or a person may have damaged, and Paho
 * reads some of them with few checks. Every length is checked here, and a
 * message a broker would refuse (its topic or a property breaking MQTT's
 * rules) makes the record invalid, so that it never reaches the broker.
 *
 * Pure code: no I/O.
 */
#ifndef TANDEM_RECORD_H
#define TANDEM_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A publish found in a record; pointers borrow the record's bytes. */
typedef struct record_pub {
    const char *topic; /* not NUL-terminated */
    size_t topic_len;
    const uint8_t *payload;
    size_t len;
    int qos;
    bool retain;
    const uint8_t *props; /* MQTT 5 properties, wire format without their length; NULL for 3.1.1 */
    size_t props_len;
} record_pub_t;

enum record_kind {
    RECORD_PUBLISH,  /* a message to send (a queued command, or sent and unacknowledged) */
    RECORD_RECEIVED, /* a QoS 2 message from the broker, not yet completed */
    RECORD_OTHER,    /* a PUBREL, a subscription, a queued message for the application */
};

/*
 * Reads the record stored under key (e.g. "s-12", "c5-3"). Returns its kind
 * (and fills *pub, when not NULL, for a publish), or -1 with a reason in why
 * when it is damaged, of a kind Tandem does not know, or carries a message a
 * broker would refuse.
 */
int record_read(const char *key, const uint8_t *data, size_t len, record_pub_t *pub, char *why,
                size_t whylen);

#endif
