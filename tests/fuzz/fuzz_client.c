/*
 * Fuzz target: the MQTT client (mqtt/client.c, client_out.c) reading what
 * the broker sends, through mqtt_client_feed (as if on a connection just
 * made, CONNECT sent).
 *
 * Input: one byte of settings (bit 0: MQTT 3.1.1, bit 1: clean_start, bits
 * 2-3: max_inflight 1..4), then chunks: a length byte and that many bytes
 * of the broker's stream. Before each chunk, while connected, the target
 * publishes a QoS 1 and a QoS 2 message and subscribes, so that the
 * broker's acknowledgements find something. A chunk after a lost connection
 * is a new connection.
 *
 * Checked: nothing crashes or leaks; every acknowledgement reported is for
 * a publish made and not yet reported; what waits never exceeds what was
 * published; the payload room, when the broker set a Maximum Packet Size, is
 * below it.
 */
#include "fuzz.h"

#include <string.h>

#include "client.h"
#include "log.h"

#define MAX_IDS 512

static bool acked[MAX_IDS];
static uint64_t published;

static void on_acked(void *d, uint64_t id, int reason)
{
    (void)d;
    (void)reason;
    FUZZ_CHECK(id < published);
    FUZZ_CHECK(!acked[id]);
    acked[id] = true;
}

static void on_message(void *d, const mqtt_incoming_t *m)
{
    (void)d;
    FUZZ_CHECK(strlen(m->topic) == m->topic_len);
    FUZZ_CHECK(m->qos >= 0 && m->qos <= 2);
    if (m->len)
        FUZZ_CHECK(m->payload != NULL);
}

static const mqtt_client_handlers_t handlers = { .acked = on_acked, .message = on_message };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ev_loop_t *loop;
    if (!loop) {
        loop = ev_new();
        gw_log_set_level(GW_LOG_ERROR);
    }
    if (size < 1)
        return 0;
    uint8_t settings = data[0];
    mqtt_client_options_t o = { .uri = "mqtt://127.0.0.1:1",
                                .client_id = "fuzz",
                                .version = settings & 1 ? 4 : 5,
                                .clean_start = settings & 2,
                                .max_inflight = 1 + ((settings >> 2) & 3),
                                .keepalive_s = 60,
                                .status_topic = "gw/status",
                                .max_packet = 4096,
                                .max_queued = 64 };
    char err[128];
    mqtt_client_t *c = mqtt_client_new(loop, &o, &handlers, NULL, err, sizeof(err));
    FUZZ_CHECK(c);
    memset(acked, 0, sizeof(acked));
    published = 0;

    size_t off = 1;
    while (off < size) {
        size_t len = data[off++];
        if (len > size - off)
            len = size - off;
        if (mqtt_client_connected(c) && published + 2 <= MAX_IDS) {
            mqtt_message_t m = { .topic = "up/x",
                                 .payload = "v",
                                 .len = 1,
                                 .qos = 1,
                                 .content_type = "text/plain",
                                 .device = "d" };
            if (mqtt_client_publish(c, &m, published) == 0)
                published++;
            m.qos = 2;
            if (mqtt_client_publish(c, &m, published) == 0)
                published++;
            size_t room = mqtt_client_payload_room(c, &m);
            FUZZ_CHECK(room == SIZE_MAX || room < 268435461u);
            const char *filters[] = { "down/#" };
            int qos[] = { 2 };
            mqtt_client_subscribe(c, filters, qos, 1, 1);
        }
        mqtt_client_feed(c, data + off, len);
        FUZZ_CHECK(mqtt_client_unacked(c) <= published);
        off += len;
    }
    mqtt_client_free(c);
    return 0;
}
