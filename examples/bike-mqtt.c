/*
 * bike-mqtt: a reference bike over MQTT 5/TLS, on Eclipse Paho MQTT C's
 * asynchronous API (MQTTAsync).
 *
 * It publishes a reading (JSON: heart rate, cadence, power, a sequence number)
 * every interval at QoS 1 to its telemetry topic and takes commands on its
 * commands topic, authenticated by its certificate. Its MQTT session survives
 * connection losses: clean start off with a session expiry interval, Paho's
 * persistence in a folder (readings not yet acknowledged are kept there),
 * automatic reconnect, and readings taken while disconnected are buffered and
 * sent when the connection is back.
 *
 * Exit status: 0 every reading acknowledged; 1 a local failure; 2 a usage
 * error; 3 the first connection failed; 4 a reading or the subscription
 * refused, or readings not acknowledged in time.
 */
#include "bike.h"
#include "reading.h"

#include <MQTTAsync.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct options {
    struct bike_options common; /* host, identity, ca, cert, key, topics, count, ... */
    int port;
    const char *client_id;
    const char *store;
    int session_expiry;
    int keepalive;
    int retry_max;
    int wait_s;
    bool verify_hostname;
};

/* What Paho's threads tell the main one, under lock. */
struct bike {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    const struct options *opt;
    MQTTAsync client;
    char telemetry[512];
    char commands[512];
    bool connected_once;
    bool first_failed; /* the first connection failed: exit */
    bool refused;      /* a reading or the subscription was refused */
    unsigned long sent, acked;
};

static const char *failure_text(const MQTTAsync_failureData5 *r)
{
    if (!r)
        return "unknown";
    if (r->message)
        return r->message;
    if (r->reasonCode)
        return MQTTReasonCode_toString(r->reasonCode);
    return MQTTAsync_strerror(r->code);
}

static void on_subscribed(void *ctx, MQTTAsync_successData5 *r)
{
    struct bike *b = ctx;
    if (r->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
        bike_note("subscription to %s refused (%s)", b->commands,
                  MQTTReasonCode_toString(r->reasonCode));
        pthread_mutex_lock(&b->lock);
        b->refused = true;
        pthread_mutex_unlock(&b->lock);
        return;
    }
    bike_note("subscribed to %s", b->commands);
}

static void on_subscribe_failed(void *ctx, MQTTAsync_failureData5 *r)
{
    struct bike *b = ctx;
    bike_note("subscription to %s refused (%s)", b->commands, failure_text(r));
    pthread_mutex_lock(&b->lock);
    b->refused = true;
    pthread_mutex_unlock(&b->lock);
}

static void subscribe(struct bike *b)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onSuccess5 = on_subscribed;
    ro.onFailure5 = on_subscribe_failed;
    ro.context = b;
    int rc = MQTTAsync_subscribe(b->client, b->commands, 1, &ro);
    if (rc != MQTTASYNC_SUCCESS)
        bike_note("cannot subscribe to %s (%s)", b->commands, MQTTAsync_strerror(rc));
}

/* The first connection. */
static void on_connected(void *ctx, MQTTAsync_successData5 *r)
{
    struct bike *b = ctx;
    int present = r->alt.connect.sessionPresent;
    bike_note("connected to %s (session present: %s)", r->alt.connect.serverURI,
              present ? "yes" : "no");
    pthread_mutex_lock(&b->lock);
    b->connected_once = true;
    pthread_cond_broadcast(&b->changed);
    pthread_mutex_unlock(&b->lock);
    /* A resumed session still has the subscription; a new one needs it. */
    if (!present)
        subscribe(b);
}

/*
 * Each connection; after an automatic reconnect Paho calls only this, without
 * telling whether the broker had kept the session. Subscribing again is
 * harmless when it had (the subscription is replaced, and the commands queued
 * for the session while the bike was away are delivered either way) and
 * needed when it had not (the session expired).
 */
static void on_connection(void *ctx, char *cause)
{
    struct bike *b = ctx;
    if (!cause || strcmp(cause, "automatic reconnect"))
        return; /* the first connection: on_connected */
    bike_note("reconnected");
    subscribe(b);
}

static void on_connect_failed(void *ctx, MQTTAsync_failureData5 *r)
{
    struct bike *b = ctx;
    pthread_mutex_lock(&b->lock);
    bool first = !b->connected_once;
    if (first) {
        b->first_failed = true;
        pthread_cond_broadcast(&b->changed);
    }
    pthread_mutex_unlock(&b->lock);
    bike_note("%s (%s)", first ? "cannot connect" : "reconnect failed, trying again",
              failure_text(r));
}

static void on_connection_lost(void *ctx, char *cause)
{
    (void)ctx;
    bike_note("connection lost (%s), reconnecting", cause ? cause : "closed by the server");
}

static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *m)
{
    struct bike *b = ctx;
    int tl = topic_len ? topic_len : (int)strlen(topic);
    if (b->opt->common.print_commands) {
        /* One line per command, written whole (stdout is line-buffered). */
        printf("%.*s\t%.*s\n", tl, topic, m->payloadlen, (const char *)m->payload);
        fflush(stdout);
    }
    if (b->opt->common.verbose)
        bike_note("command on %.*s (%d bytes)", tl, topic, m->payloadlen);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
}

static void on_reading_acked(void *ctx, MQTTAsync_successData5 *r)
{
    struct bike *b = ctx;
    (void)r;
    pthread_mutex_lock(&b->lock);
    b->acked++;
    pthread_cond_broadcast(&b->changed);
    pthread_mutex_unlock(&b->lock);
}

/* A PUBACK with a failure reason (0x87 Not authorized: not this bike's topic). */
static void on_reading_failed(void *ctx, MQTTAsync_failureData5 *r)
{
    struct bike *b = ctx;
    bike_note("reading refused (%s)", failure_text(r));
    pthread_mutex_lock(&b->lock);
    b->refused = true;
    b->acked++;
    pthread_cond_broadcast(&b->changed);
    pthread_mutex_unlock(&b->lock);
}

static int publish_reading(struct bike *b, unsigned long seq)
{
    char payload[256];
    int len = bike_reading(payload, sizeof payload, b->opt->common.identity, seq);
    if (len < 0)
        return len;
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = payload;
    m.payloadlen = len;
    m.qos = 1;
    MQTTProperty ct = { .identifier = MQTTPROPERTY_CODE_CONTENT_TYPE };
    ct.value.data.data = "application/json";
    ct.value.data.len = (int)strlen(ct.value.data.data);
    MQTTProperty pfi = { .identifier = MQTTPROPERTY_CODE_PAYLOAD_FORMAT_INDICATOR };
    pfi.value.byte = 1;
    MQTTProperties_add(&m.properties, &ct);
    MQTTProperties_add(&m.properties, &pfi);

    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.onSuccess5 = on_reading_acked;
    ro.onFailure5 = on_reading_failed;
    ro.context = b;
    /* Copied by Paho, kept in the store until acknowledged; buffered while
     * the connection is down. */
    int rc = MQTTAsync_sendMessage(b->client, b->telemetry, &m, &ro);
    MQTTProperties_free(&m.properties);
    if (rc != MQTTASYNC_SUCCESS) {
        bike_note("reading %lu not sent (%s)", seq, MQTTAsync_strerror(rc));
        return -EIO;
    }
    pthread_mutex_lock(&b->lock);
    b->sent++;
    pthread_mutex_unlock(&b->lock);
    if (b->opt->common.verbose)
        bike_note("reading %lu: %s", seq, payload);
    return 0;
}

static struct timespec deadline_after_ms(long long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Waits on b->changed until done(b) or the deadline; b->lock held. Wakes at
 * least every 100 ms to see a signal. */
static bool wait_for(struct bike *b, bool (*done)(const struct bike *), long long deadline_ms,
                     bool stop_on_signal)
{
    while (!done(b)) {
        long long left = deadline_ms - bike_now_ms();
        if (left <= 0 || (stop_on_signal && bike_stop_requested))
            return false;
        struct timespec ts = deadline_after_ms(left < 100 ? left : 100);
        pthread_cond_timedwait(&b->changed, &b->lock, &ts);
    }
    return true;
}

static bool connect_settled(const struct bike *b)
{
    return b->connected_once || b->first_failed;
}

static bool all_acked(const struct bike *b)
{
    return b->acked >= b->sent;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bike-mqtt -i IDENTITY --ca FILE --cert FILE --key FILE [options]\n"
                 "  -H, --host HOST           the gateway's MQTT listener (127.0.0.1)\n"
                 "  -p, --port PORT           its port (8883)\n"
                 "      --ca FILE             CA that signed the gateway's certificate\n"
                 "      --cert FILE           this bike's certificate (its CN is the identity)\n"
                 "      --key FILE            its private key\n"
                 "  -i, --identity NAME       the bike's identity, for the topics\n"
                 "      --client-id ID        MQTT client identifier (the identity)\n"
                 "      --telemetry TOPIC     (redback/p1/bikes/{identity}/telemetry)\n"
                 "      --commands FILTER     (redback/p1/bikes/{identity}/commands)\n"
                 "  -n, --count N             readings to publish, 0 = until SIGINT/SIGTERM (10)\n"
                 "  -I, --interval MS         milliseconds between readings (1000)\n"
                 "      --store DIR           Paho's persistence folder (./bike-mqtt-store)\n"
                 "      --session-expiry S    MQTT 5 session expiry interval, seconds (3600)\n"
                 "      --keepalive S         keep-alive, seconds (30)\n"
                 "      --retry-max S         longest wait between reconnect attempts (30)\n"
                 "      --wait S              after the last reading, how long to wait for\n"
                 "                            acknowledgements (30)\n"
                 "  -c, --print-commands      print each command as TOPIC<TAB>PAYLOAD on stdout\n"
                 "      --no-verify-hostname  do not check the gateway's name in its certificate\n"
                 "  -v, --verbose             log each reading on stderr\n");
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum {
        OPT_CLIENT_ID = BIKE_OPT_OWN,
        OPT_STORE,
        OPT_EXPIRY,
        OPT_KEEPALIVE,
        OPT_RETRY_MAX,
        OPT_WAIT,
        OPT_NO_VERIFY,
    };
    static const struct option longs[] = {
        BIKE_LONG_OPTIONS,
        { "port", required_argument, NULL, 'p' },
        { "client-id", required_argument, NULL, OPT_CLIENT_ID },
        { "store", required_argument, NULL, OPT_STORE },
        { "session-expiry", required_argument, NULL, OPT_EXPIRY },
        { "keepalive", required_argument, NULL, OPT_KEEPALIVE },
        { "retry-max", required_argument, NULL, OPT_RETRY_MAX },
        { "wait", required_argument, NULL, OPT_WAIT },
        { "no-verify-hostname", no_argument, NULL, OPT_NO_VERIFY },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    *o = (struct options){
        .common = {
            .host = "127.0.0.1",
            .telemetry = "redback/p1/bikes/{identity}/telemetry",
            .commands = "redback/p1/bikes/{identity}/commands",
            .count = 10,
            .interval_ms = 1000,
        },
        .port = 8883,
        .store = "bike-mqtt-store",
        .session_expiry = 3600,
        .keepalive = 30,
        .retry_max = 30,
        .wait_s = 30,
        .verify_hostname = true,
    };
    struct bike_options *co = &o->common;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, BIKE_SHORT_OPTIONS "p:h", longs, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (!bike_parse_long(optarg, 1, 65535, &v))
                goto bad;
            o->port = (int)v;
            break;
        case OPT_CLIENT_ID:
            o->client_id = optarg;
            break;
        case OPT_STORE:
            o->store = optarg;
            break;
        case OPT_EXPIRY:
            if (!bike_parse_long(optarg, 0, INT32_MAX, &v))
                goto bad;
            o->session_expiry = (int)v;
            break;
        case OPT_KEEPALIVE:
            if (!bike_parse_long(optarg, 0, 65535, &v))
                goto bad;
            o->keepalive = (int)v;
            break;
        case OPT_RETRY_MAX:
            if (!bike_parse_long(optarg, 1, 3600, &v))
                goto bad;
            o->retry_max = (int)v;
            break;
        case OPT_WAIT:
            if (!bike_parse_long(optarg, 0, 86400, &v))
                goto bad;
            o->wait_s = (int)v;
            break;
        case OPT_NO_VERIFY:
            o->verify_hostname = false;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default: /* the options both bikes take */
            switch (bike_option(c, optarg, co)) {
            case 1:
                break;
            case 0:
                usage(stderr);
                return -EINVAL;
            default:
                goto bad;
            }
        }
    }
    if (optind != argc || !co->identity || !*co->identity || !co->ca || !co->cert || !co->key) {
        fprintf(stderr, "bike-mqtt: -i IDENTITY, --ca, --cert and --key are needed\n");
        usage(stderr);
        return -EINVAL;
    }
    if (!o->client_id)
        o->client_id = co->identity;
    return 0;
bad:
    fprintf(stderr, "bike-mqtt: bad value for -%c: %s\n", c < 256 ? c : '-', optarg);
    return -EINVAL;
}

int main(int argc, char **argv)
{
    struct options opt;
    if (parse_options(argc, argv, &opt) < 0)
        return EXIT_USAGE;
    bike_log_as("bike-mqtt", opt.common.identity);
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct bike b = { .opt = &opt };
    pthread_mutex_init(&b.lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b.changed, &ca);
    if (bike_render(b.telemetry, sizeof b.telemetry, opt.common.telemetry, opt.common.identity) <
            0 ||
        bike_render(b.commands, sizeof b.commands, opt.common.commands, opt.common.identity) < 0) {
        fprintf(stderr, "bike-mqtt: topic too long\n");
        return EXIT_USAGE;
    }

    bike_catch_signals();

    if (mkdir(opt.store, 0700) < 0 && errno != EEXIST) {
        bike_note("cannot make the store %s (%s)", opt.store, strerror(errno));
        return EXIT_FAILURE;
    }
    char uri[512];
    snprintf(uri, sizeof uri, "ssl://%s:%d", opt.common.host, opt.port);
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    co.sendWhileDisconnected = 1;   /* readings taken while disconnected are kept */
    co.maxBufferedMessages = 10000; /* ... up to this many */
    co.allowDisconnectedSendAtAnyTime = 1;
    int rc = MQTTAsync_createWithOptions(&b.client, uri, opt.client_id,
                                         MQTTCLIENT_PERSISTENCE_DEFAULT, (void *)opt.store, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        bike_note("cannot create the MQTT client (%s)", MQTTAsync_strerror(rc));
        return EXIT_FAILURE;
    }
    MQTTAsync_setCallbacks(b.client, &b, on_connection_lost, on_message, NULL);
    MQTTAsync_setConnected(b.client, &b, on_connection);

    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    ssl.trustStore = opt.common.ca;
    ssl.keyStore = opt.common.cert;
    ssl.privateKey = opt.common.key;
    ssl.enableServerCertAuth = 1;
    ssl.verify = opt.verify_hostname;
    ssl.sslVersion = MQTT_SSL_VERSION_TLS_1_2; /* 1.2 or newer */

    MQTTProperties props = MQTTProperties_initializer;
    MQTTProperty expiry = { .identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL };
    expiry.value.integer4 = (unsigned int)opt.session_expiry;
    MQTTProperties_add(&props, &expiry);

    MQTTAsync_connectOptions conn = MQTTAsync_connectOptions_initializer5;
    conn.cleanstart = 0; /* resume the session the broker kept */
    conn.connectProperties = &props;
    conn.keepAliveInterval = opt.keepalive;
    conn.automaticReconnect = 1;
    conn.minRetryInterval = 1;
    conn.maxRetryInterval = opt.retry_max;
    conn.connectTimeout = 10;
    conn.ssl = &ssl;
    conn.onSuccess5 = on_connected;
    conn.onFailure5 = on_connect_failed;
    conn.context = &b;
    rc = MQTTAsync_connect(b.client, &conn);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
        bike_note("cannot connect (%s)", MQTTAsync_strerror(rc));
        MQTTAsync_destroy(&b.client);
        return EXIT_NO_LINK;
    }

    int status = 0;
    pthread_mutex_lock(&b.lock);
    bool settled = wait_for(&b, connect_settled, bike_now_ms() + 1000LL * 60, true);
    bool failed = b.first_failed || !settled;
    pthread_mutex_unlock(&b.lock);
    if (failed) {
        if (!bike_stop_requested)
            bike_note("no connection to %s", uri);
        MQTTAsync_destroy(&b.client);
        return bike_stop_requested ? 0 : EXIT_NO_LINK;
    }

    long long start = bike_now_ms();
    for (unsigned long seq = 1;
         (!opt.common.count || seq <= opt.common.count) && !bike_stop_requested; seq++) {
        long long due = bike_reading_due(start, seq, opt.common.interval_ms), left;
        while ((left = due - bike_now_ms()) > 0 && !bike_stop_requested) {
            struct timespec ts = { .tv_sec = 0, .tv_nsec = (left < 100 ? left : 100) * 1000000L };
            nanosleep(&ts, NULL);
        }
        if (bike_stop_requested)
            break;
        if (publish_reading(&b, seq) < 0)
            status = EXIT_UNDELIVERED;
    }

    /* Every reading acknowledged, or the bound. */
    pthread_mutex_lock(&b.lock);
    bool done = wait_for(&b, all_acked, bike_now_ms() + 1000LL * opt.wait_s, false);
    if (!done) {
        bike_note("%lu of %lu readings not acknowledged after %d s", b.sent - b.acked, b.sent,
                  opt.wait_s);
        status = EXIT_UNDELIVERED;
    }
    if (b.refused)
        status = EXIT_UNDELIVERED;
    bike_note("%lu readings sent, %lu acknowledged", b.sent, b.acked);
    pthread_mutex_unlock(&b.lock);

    MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
    d.timeout = 2000;
    if (MQTTAsync_isConnected(b.client) &&
        MQTTAsync_disconnect(b.client, &d) == MQTTASYNC_SUCCESS) {
        for (int i = 0; i < 200 && MQTTAsync_isConnected(b.client); i++) {
            struct timespec ts = { .tv_sec = 0, .tv_nsec = 10000000L };
            nanosleep(&ts, NULL);
        }
    }
    MQTTAsync_destroy(&b.client);
    return status;
}
