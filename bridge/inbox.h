/*
 * The bounded inbox between the MQTT client's threads and the loop thread.
 * Producers copy an event in and write the eventfd; the loop drains it.
 */
#ifndef TANDEM_INBOX_H
#define TANDEM_INBOX_H

#include <stddef.h>
#include <stdint.h>

enum inbox_type {
    EV_CONNECTED,      /* the MQTT connection is up */
    EV_CONNECT_FAILED, /* a connection attempt failed */
    EV_CONN_LOST,      /* an established connection was lost */
    EV_PUB_OK,         /* a publish was acknowledged */
    EV_PUB_FAILED,     /* a publish failed or was refused */
    EV_MESSAGE,        /* a message arrived on a subscription; data is an inbox_msg_t */
    EV_SUB_OK,         /* the broker acknowledged subscriptions; id: their generation */
    EV_SUB_FAILED,     /* a subscription was refused */
    EV_DELIVERED,      /* publishes completed: queued ones may go now (mqtt_kick) */
};

/* A message from the broker, in one allocation: topic, then payload. */
typedef struct inbox_msg {
    size_t topic_len, len;
    int qos;
    long expiry_s;         /* MQTT 5 Message Expiry Interval, -1 when not set */
    char content_type[96]; /* MQTT 5 Content Type, "" when not set or too long */
    char bytes[];          /* topic_len bytes of topic, then len bytes of payload */
} inbox_msg_t;

typedef struct inbox_event {
    enum inbox_type type;
    uint64_t id;    /* EV_PUB_*: the publish's request id */
    int rc;         /* library or MQTT reason code */
    char text[120]; /* a short reason, for the log */
    void *data;     /* EV_MESSAGE: owned by whoever holds the event; free() it */
    size_t bytes;   /* what data weighs against the inbox's byte limit */
} inbox_event_t;

typedef struct bridge_inbox bridge_inbox_t;

/*
 * capacity: events held at most; max_bytes: data bytes held at most. At either
 * limit new events are refused and counted.
 */
bridge_inbox_t *inbox_new(size_t capacity, size_t max_bytes);
void inbox_free(bridge_inbox_t *in);
int inbox_fd(const bridge_inbox_t *in);

/*
 * Any thread. Returns 0 (the inbox owns ev->data now), or -ENOBUFS when full
 * (the caller still owns ev->data).
 */
int inbox_push(bridge_inbox_t *in, const inbox_event_t *ev);

/* Loop thread: takes up to max events into out; returns how many. */
size_t inbox_drain(bridge_inbox_t *in, inbox_event_t *out, size_t max);

/* Events dropped because the inbox was full. */
uint64_t inbox_dropped(bridge_inbox_t *in);

#endif
