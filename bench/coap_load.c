/*
 * coap_load: a CoAP-over-DTLS load generator for Tandem's benchmark.
 *
 * Opens S DTLS-PSK sessions (identities PREFIX0..PREFIX{S-1}, key "key-" +
 * identity) and has each post COUNT confirmable requests to
 * PATH_PREFIX/<identity>/PATH_SUFFIX, one outstanding per session. Prints
 * requests per second and the latency distribution.
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_SESSIONS 256

struct dev {
    coap_session_t *session;
    char identity[32], key[40];
    int sent, done;
    double sent_at;
};

static struct dev devs[MAX_SESSIONS];
static int nsessions, count, ok, failed, finished;
static const char *path_prefix = "bikes", *path_suffix = "telemetry";
static double *lat;
static size_t nlat;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void send_one(struct dev *d)
{
    coap_pdu_t *pdu =
        coap_pdu_init(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, coap_new_message_id(d->session),
                      coap_session_max_pdu_size(d->session));
    uint8_t token[8];
    size_t tlen;
    char body[96];
    int n = snprintf(body, sizeof(body), "{\"seq\":%d,\"hr\":%d,\"cadence\":%d}", d->sent,
                     100 + d->sent % 80, 60 + d->sent % 40);
    coap_session_new_token(d->session, &tlen, token);
    coap_add_token(pdu, tlen, token);
    coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path_prefix), (const uint8_t *)path_prefix);
    coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(d->identity), (const uint8_t *)d->identity);
    coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path_suffix), (const uint8_t *)path_suffix);
    uint8_t cf[1] = { 50 };
    coap_add_option(pdu, COAP_OPTION_CONTENT_FORMAT, 1, cf);
    coap_add_data(pdu, (size_t)n, (const uint8_t *)body);
    d->sent_at = now();
    d->sent++;
    coap_send(d->session, pdu);
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    struct dev *d = coap_session_get_app_data(session);
    (void)sent;
    (void)mid;
    if (!d || coap_pdu_get_code(received) == 0)
        return COAP_RESPONSE_OK;
    if (coap_pdu_get_code(received) == COAP_RESPONSE_CODE(204))
        ok++;
    else
        failed++;
    lat[nlat++] = now() - d->sent_at;
    d->done++;
    if (d->sent < count)
        send_one(d);
    else
        finished++;
    return COAP_RESPONSE_OK;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: coap_load HOST PORT SESSIONS COUNT [PREFIX [PATH_PREFIX "
                        "PATH_SUFFIX]]\n");
        return 2;
    }
    const char *host = argv[1], *prefix = argc > 5 ? argv[5] : "bike-";
    int port = atoi(argv[2]);
    nsessions = atoi(argv[3]);
    count = atoi(argv[4]);
    if (argc > 7) {
        path_prefix = argv[6];
        path_suffix = argv[7];
    }
    if (nsessions < 1 || nsessions > MAX_SESSIONS || count < 1)
        return 2;
    lat = calloc((size_t)nsessions * (size_t)count, sizeof(*lat));

    coap_startup();
    coap_set_log_level(LOG_ERR);
    coap_context_t *ctx = coap_new_context(NULL);
    coap_register_response_handler(ctx, on_response);
    coap_address_t dst;
    coap_address_init(&dst);
    dst.addr.sin.sin_family = AF_INET;
    dst.addr.sin.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &dst.addr.sin.sin_addr);
    dst.size = sizeof(dst.addr.sin);

    double t0 = now();
    for (int i = 0; i < nsessions; i++) {
        struct dev *d = &devs[i];
        coap_dtls_cpsk_t psk;
        snprintf(d->identity, sizeof(d->identity), "%s%d", prefix, i);
        snprintf(d->key, sizeof(d->key), "key-%s", d->identity);
        memset(&psk, 0, sizeof(psk));
        psk.version = COAP_DTLS_CPSK_SETUP_VERSION;
        psk.psk_info.identity.s = (const uint8_t *)d->identity;
        psk.psk_info.identity.length = strlen(d->identity);
        psk.psk_info.key.s = (const uint8_t *)d->key;
        psk.psk_info.key.length = strlen(d->key);
        d->session = coap_new_client_session_psk2(ctx, NULL, &dst, COAP_PROTO_DTLS, &psk);
        if (!d->session) {
            fprintf(stderr, "coap_load: cannot open session %d\n", i);
            return 1;
        }
        coap_session_set_app_data(d->session, d);
        send_one(d);
    }
    double deadline = t0 + 120;
    while (finished < nsessions && now() < deadline)
        coap_io_process(ctx, 100);
    double elapsed = now() - t0;

    qsort(lat, nlat, sizeof(*lat), cmp);
    printf("sessions %d, requests %d, 2.04 %d, other %d, in %.2f s\n", nsessions, nsessions * count,
           ok, failed, elapsed);
    printf("throughput %.0f requests/s (handshakes included)\n", (double)(ok + failed) / elapsed);
    if (nlat)
        printf("latency ms: p50 %.2f, p99 %.2f, max %.2f\n", lat[nlat / 2] * 1000,
               lat[nlat * 99 / 100] * 1000, lat[nlat - 1] * 1000);
    for (int i = 0; i < nsessions; i++)
        coap_session_release(devs[i].session);
    coap_free_context(ctx);
    coap_cleanup();
    free(lat);
    return finished == nsessions && failed == 0 ? 0 : 1;
}
