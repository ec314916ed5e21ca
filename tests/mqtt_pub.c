/*
 * A test program over mqtt/client: connects to a broker once, publishes
 * COUNT messages, waits for their acknowledgements, and stops gracefully
 * (publishing "offline" on the status topic when one is given). What
 * happened goes to stdout, one line an event ("connected", "acked N",
 * "lost: WHY"); the client's own log lines go to stderr.
 *
 *   mqtt_pub [-V 4|5] [-q QOS] [-n COUNT] [-c CA] [--cert C --key K]
 *            [--no-verify-hostname] [-s STATUS_TOPIC] [-u USER -P PASS]
 *            URI TOPIC PAYLOAD
 *
 * Exit status: 0 when every message was acknowledged, 2 when the connection
 * failed or was lost, 1 for a usage error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "clock.h"
#include "log.h"

#define WAIT_MS 10000

static int acked, refused, lost, connected;

static void on_connected(void *d, bool session)
{
    (void)d;
    connected = 1;
    printf("connected%s\n", session ? " (session present)" : "");
}

static void on_lost(void *d, int err, const char *why)
{
    (void)d;
    (void)err;
    lost = 1;
    printf("lost: %s\n", why);
}

static void on_acked(void *d, uint64_t id, int reason)
{
    (void)d;
    if (reason >= 0x80) {
        refused++;
        printf("refused %llu: %s\n", (unsigned long long)id, mqtt_reason_text(5, reason));
    } else {
        acked++;
    }
}

int main(int argc, char **argv)
{
    mqtt_client_options_t o = { .client_id = "tandem-mqtt-pub",
                                .version = 5,
                                .verify_hostname = true,
                                .keepalive_s = 30,
                                .clean_start = true,
                                .max_inflight = 10,
                                .ca = "" };
    int qos = 1, count = 1;
    enum { OPT_CERT = 256, OPT_KEY, OPT_NOVERIFY };
    static const struct option longs[] = { { "cert", required_argument, NULL, OPT_CERT },
                                           { "key", required_argument, NULL, OPT_KEY },
                                           { "no-verify-hostname", no_argument, NULL,
                                             OPT_NOVERIFY },
                                           { 0 } };
    int opt;
    while ((opt = getopt_long(argc, argv, "V:q:n:c:s:u:P:i:", longs, NULL)) != -1) {
        switch (opt) {
        case 'V':
            o.version = atoi(optarg);
            break;
        case 'q':
            qos = atoi(optarg);
            break;
        case 'n':
            count = atoi(optarg);
            break;
        case 'c':
            o.ca = optarg;
            break;
        case 's':
            o.status_topic = optarg;
            break;
        case 'u':
            o.username = optarg;
            break;
        case 'P':
            o.password = optarg;
            break;
        case 'i':
            o.client_id = optarg;
            break;
        case OPT_CERT:
            o.cert = optarg;
            break;
        case OPT_KEY:
            o.key = optarg;
            break;
        case OPT_NOVERIFY:
            o.verify_hostname = false;
            break;
        default:
            return 1;
        }
    }
    if (argc - optind != 3) {
        fprintf(stderr, "usage: mqtt_pub [options] URI TOPIC PAYLOAD\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    o.uri = argv[optind];
    const char *topic = argv[optind + 1], *payload = argv[optind + 2];
    ev_loop_t *loop = ev_new();
    mqtt_client_handlers_t h = { .connected = on_connected, .lost = on_lost, .acked = on_acked };
    char err[512];
    mqtt_client_t *c = mqtt_client_new(loop, &o, &h, NULL, err, sizeof(err));
    if (!c) {
        printf("lost: %s\n", err);
        ev_free(loop);
        return 2;
    }
    int status = 2;
    mqtt_client_start(c);
    uint64_t deadline = gw_now_ms() + WAIT_MS;
    while (!connected && !lost && gw_now_ms() < deadline)
        ev_turn(loop, 100);
    if (connected) {
        mqtt_message_t m = { .topic = topic,
                             .payload = payload,
                             .len = strlen(payload),
                             .qos = qos,
                             .content_type = "text/plain",
                             .utf8 = true,
                             .device = "mqtt_pub" };
        for (int i = 0; i < count; i++) {
            int rc = mqtt_client_publish(c, &m, (uint64_t)i);
            if (rc < 0) {
                printf("publish refused: %s\n", strerror(-rc));
                break;
            }
        }
        int want = qos ? count : 0;
        while (acked + refused < want && !lost && gw_now_ms() < deadline)
            ev_turn(loop, 100);
        if (qos == 0)
            ev_turn(loop, 0); /* the flush */
        printf("acked %d\n", acked);
        if (acked == want)
            status = 0;
        mqtt_client_shutdown(c, 2000);
    }
    mqtt_client_free(c);
    ev_free(loop);
    return status;
}
