/*
 * bike-coap: the reference bike over CoAP/DTLS, on libcoap 4.3.
 *
 * The same readings as bike-mqtt (reading.c), each POSTed confirmable to
 * bikes/{identity}/telemetry with Content-Format application/json and
 * acknowledged 2.04 Changed; a 5.03 Service Unavailable (the gateway's broker
 * is away) is retried after its Max-Age. Commands come by observing
 * bikes/{identity}/commands (RFC 7641). The DTLS session is authenticated by a
 * PSK (identity and key) or by the bike's certificate.
 *
 * Exit status: 0 every reading acknowledged 2.04; 1 a local failure; 2 a
 * usage error; 3 no DTLS session; 4 a reading refused or never answered, or
 * the observation refused.
 */
#include "bike.h"
#include "reading.h"

#include <coap3/coap.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRIES 3 /* a reading that gets no answer this many times is given up */

struct options {
    struct bike_options common; /* host, identity, ca, cert, key, topics, count, ... */
    const char *port;
    const char *psk_identity;
    uint8_t psk_key[64];
    size_t psk_key_len;
    bool observe;
};

struct token {
    uint8_t data[8];
    size_t len;
};

struct bike {
    const struct options *opt;
    coap_session_t *session;
    char telemetry[256];
    char commands[256];
    /* The reading in flight: its sequence number, token and tries. */
    bool pending;
    unsigned long seq;
    struct token post;
    int tries;
    long long retry_at; /* after a 5.03 or an unanswered try: not before */
    unsigned long acked;
    bool failed;
    /* The observation of the commands resource. */
    struct token observe;
    bool observing;
    bool observe_refused;
    long long observe_again_at; /* register (again) then (0: no) */
    bool ever_up;               /* a DTLS session was established */
    bool up;                    /* and is now */
    bool handshake_failed;      /* the last handshake failed */
    bool closing;               /* the bike is done: a closed session is expected */
};

static struct bike *the_bike; /* for libcoap's handlers, which take no argument */

static bool same_token(const struct token *t, coap_bin_const_t got)
{
    return t->len == got.length && !memcmp(t->data, got.s, got.length);
}

/* Uri-Path options for path ("a/b/c"), in order. */
static int add_path(coap_optlist_t **opts, const char *path)
{
    while (*path) {
        const char *end = strchr(path, '/');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (len && !coap_insert_optlist(
                       opts, coap_new_optlist(COAP_OPTION_URI_PATH, len, (const uint8_t *)path)))
            return -ENOMEM;
        path += len;
        if (*path == '/')
            path++;
    }
    return 0;
}

static coap_pdu_t *request(struct bike *b, coap_pdu_code_t code, const char *path,
                           struct token *token, coap_optlist_t *extra)
{
    coap_pdu_t *pdu = coap_new_pdu(COAP_MESSAGE_CON, code, b->session);
    if (!pdu) {
        coap_delete_optlist(extra);
        return NULL;
    }
    coap_session_new_token(b->session, &token->len, token->data);
    coap_add_token(pdu, token->len, token->data);
    coap_optlist_t *opts = extra;
    if (add_path(&opts, path) < 0 || !coap_add_optlist_pdu(pdu, &opts)) {
        coap_delete_optlist(opts);
        coap_delete_pdu(pdu);
        return NULL;
    }
    coap_delete_optlist(opts);
    return pdu;
}

static int send_reading(struct bike *b)
{
    char payload[256];
    int len = bike_reading(payload, sizeof payload, b->opt->common.identity, b->seq);
    if (len < 0)
        return len;
    uint8_t buf[4];
    coap_optlist_t *opts = coap_new_optlist(
        COAP_OPTION_CONTENT_FORMAT,
        coap_encode_var_safe(buf, sizeof buf, COAP_MEDIATYPE_APPLICATION_JSON), buf);
    coap_pdu_t *pdu = request(b, COAP_REQUEST_CODE_POST, b->telemetry, &b->post, opts);
    if (!pdu || !coap_add_data(pdu, (size_t)len, (const uint8_t *)payload)) {
        coap_delete_pdu(pdu);
        return -ENOMEM;
    }
    if (coap_send(b->session, pdu) == COAP_INVALID_MID)
        return -EIO;
    b->pending = true;
    b->tries++;
    if (b->opt->common.verbose)
        bike_note("reading %lu: %s", b->seq, payload);
    return 0;
}

static int start_observing(struct bike *b)
{
    uint8_t buf[4];
    coap_optlist_t *opts = coap_new_optlist(
        COAP_OPTION_OBSERVE, coap_encode_var_safe(buf, sizeof buf, COAP_OBSERVE_ESTABLISH), buf);
    coap_pdu_t *pdu = request(b, COAP_REQUEST_CODE_GET, b->commands, &b->observe, opts);
    if (!pdu)
        return -ENOMEM;
    if (coap_send(b->session, pdu) == COAP_INVALID_MID)
        return -EIO;
    return 0;
}

static unsigned max_age(const coap_pdu_t *pdu)
{
    coap_opt_iterator_t it;
    coap_opt_t *opt = coap_check_option(pdu, COAP_OPTION_MAXAGE, &it);
    if (!opt)
        return 60; /* RFC 7252's default */
    return coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt));
}

static void reading_answered(struct bike *b, const coap_pdu_t *got)
{
    coap_pdu_code_t code = coap_pdu_get_code(got);
    unsigned cls = COAP_RESPONSE_CLASS(code), detail = code & 0x1f;
    if (code == COAP_RESPONSE_CODE_CHANGED || code == COAP_RESPONSE_CODE_CREATED) {
        b->acked++;
        b->pending = false;
        b->seq++;
        b->tries = 0;
        return;
    }
    b->pending = false;
    if (code == COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE) {
        unsigned age = max_age(got);
        bike_note("reading %lu: 5.03, again in %u s", b->seq, age);
        b->retry_at = bike_now_ms() + 1000LL * age;
        b->tries = 0;
        return;
    }
    /* 4.xx: this request will never succeed; 5.xx other than 5.03: not ours to wait for. */
    bike_note("reading %lu refused: %u.%02u", b->seq, cls, detail);
    b->failed = true;
    b->seq++;
    b->tries = 0;
}

static void command_notified(struct bike *b, const coap_pdu_t *got)
{
    coap_pdu_code_t code = coap_pdu_get_code(got);
    if (code == COAP_RESPONSE_CODE_SERVICE_UNAVAILABLE) {
        /* The gateway's subscriptions are not in place yet: ask again. */
        unsigned age = max_age(got);
        bike_note("observation of %s: 5.03, again in %u s", b->commands, age);
        b->observing = false;
        b->observe_again_at = bike_now_ms() + 1000LL * age;
        return;
    }
    if (COAP_RESPONSE_CLASS(code) != 2 && b->observing) {
        /* An observation ends with an error notification, e.g. 4.04 when the
         * gateway stops: register again (at once if a new session comes). */
        bike_note("observation of %s ended by the gateway: %u.%02u", b->commands,
                  COAP_RESPONSE_CLASS(code), code & 0x1f);
        b->observing = false;
        b->observe_again_at = bike_now_ms() + 5000;
        return;
    }
    if (COAP_RESPONSE_CLASS(code) != 2) {
        bike_note("observation of %s refused: %u.%02u", b->commands, COAP_RESPONSE_CLASS(code),
                  code & 0x1f);
        b->observe_refused = true;
        return;
    }
    coap_opt_iterator_t it;
    if (!coap_check_option(got, COAP_OPTION_OBSERVE, &it) && b->observing) {
        bike_note("observation of %s ended by the gateway", b->commands);
        b->observing = false;
    } else if (!b->observing && coap_check_option(got, COAP_OPTION_OBSERVE, &it)) {
        b->observing = true;
        bike_note("observing %s", b->commands);
    }
    size_t len = 0, offset = 0, total = 0;
    const uint8_t *data = NULL;
    if (!coap_get_data_large(got, &len, &data, &offset, &total) || !len)
        return; /* the registration before any command: no body */
    if (b->opt->common.print_commands) {
        printf("%s\t%.*s\n", b->commands, (int)len, (const char *)data);
        fflush(stdout);
    }
    if (b->opt->common.verbose)
        bike_note("command (%zu bytes)", len);
}

/* A DTLS session is up: libcoap 4.3 tells a client of it by the first answer
 * (it has no event for that), of its end by COAP_EVENT_DTLS_CLOSED. */
static void session_up(struct bike *b)
{
    if (!b->up && b->ever_up) {
        bike_note("DTLS session up again");
        /* A new session has no observation: register again. */
        if (b->opt->observe && !b->observing && !b->observe_refused)
            b->observe_again_at = bike_now_ms();
    }
    b->ever_up = b->up = true;
    b->handshake_failed = false;
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *got, const coap_mid_t mid)
{
    struct bike *b = the_bike;
    (void)session;
    (void)sent;
    (void)mid;
    coap_bin_const_t token = coap_pdu_get_token(got);
    session_up(b);
    if (b->pending && same_token(&b->post, token)) {
        reading_answered(b, got);
        return COAP_RESPONSE_OK;
    }
    if (same_token(&b->observe, token)) {
        command_notified(b, got);
        return COAP_RESPONSE_OK;
    }
    return COAP_RESPONSE_FAIL; /* not ours: RST */
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t why,
                    const coap_mid_t mid)
{
    struct bike *b = the_bike;
    (void)session;
    (void)mid;
    if (why == COAP_NACK_TLS_FAILED) {
        b->handshake_failed = true;
        bike_note("DTLS handshake failed");
    }
    if (!sent)
        return;
    coap_bin_const_t token = coap_pdu_get_token(sent);
    if (b->pending && same_token(&b->post, token)) {
        b->pending = false;
        if (why == COAP_NACK_RST) {
            bike_note("reading %lu refused (RST)", b->seq);
            b->failed = true;
            b->seq++;
            b->tries = 0;
        } else if (why != COAP_NACK_TOO_MANY_RETRIES) {
            /* No session (the gateway is away): the reading waits for one. */
            b->tries = 0;
            b->retry_at = bike_now_ms() + b->opt->common.interval_ms;
        } else if (b->tries >= TRIES) {
            bike_note("reading %lu: no answer, given up after %d tries", b->seq, b->tries);
            b->failed = true;
            b->seq++;
            b->tries = 0;
        } else {
            bike_note("reading %lu: no answer (try %d of %d)", b->seq, b->tries, TRIES);
            b->retry_at = bike_now_ms() + b->opt->common.interval_ms;
        }
    } else if (same_token(&b->observe, token)) {
        if (why == COAP_NACK_RST) {
            bike_note("the observation request was refused (RST)");
            b->observe_refused = true;
        } else {
            /* Asked again when a session is up. */
            b->observe_again_at = bike_now_ms() + 5000;
        }
    }
}

static int on_event(coap_session_t *session, const coap_event_t event)
{
    struct bike *b = the_bike;
    (void)session;
    if (event == COAP_EVENT_DTLS_CONNECTED) {
        session_up(b);
    } else if (event == COAP_EVENT_DTLS_ERROR) {
        b->handshake_failed = true;
    } else if (event == COAP_EVENT_DTLS_CLOSED) {
        b->observing = false;
        if (b->up && !b->closing)
            bike_note("DTLS session closed");
        b->up = false;
    }
    return 0;
}

/* libcoap's messages go to stderr with the bike's (stdout has the commands only). */
static void on_log(coap_log_t level, const char *message)
{
    (void)level;
    fprintf(stderr, "bike-coap %s: libcoap: %s", the_bike->opt->common.identity, message);
    if (!*message || message[strlen(message) - 1] != '\n')
        fputc('\n', stderr);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: bike-coap -i IDENTITY (--psk-key KEY | --psk-hex HEX | --ca FILE --cert FILE\n"
            "                 --key FILE) [options]\n"
            "  -H, --host HOST          the gateway's DTLS address (127.0.0.1)\n"
            "  -p, --port PORT          its port (5684)\n"
            "  -i, --identity NAME      the bike's identity, for the resources (and the PSK\n"
            "                           identity unless --psk-identity)\n"
            "      --psk-identity NAME  PSK identity (the identity)\n"
            "      --psk-key KEY        PSK key, the bytes of this text\n"
            "      --psk-hex HEX        PSK key in hex (as in the gateway's psk_file)\n"
            "      --ca FILE            CA of the gateway's certificate (certificate mode)\n"
            "      --cert FILE          this bike's certificate (its CN is the identity)\n"
            "      --key FILE           its private key\n"
            "      --telemetry PATH     (bikes/{identity}/telemetry)\n"
            "      --commands PATH      (bikes/{identity}/commands)\n"
            "  -n, --count N            readings to post, 0 = until SIGINT/SIGTERM (10)\n"
            "  -I, --interval MS        milliseconds between readings (1000)\n"
            "  -c, --print-commands     print each command as PATH<TAB>PAYLOAD on stdout\n"
            "      --no-observe         do not observe the commands resource\n"
            "  -v, --verbose            log each reading (and libcoap's notices) on stderr\n");
}

static int parse_hex(const char *hex, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(hex);
    if (!n || n % 2 || n / 2 > cap)
        return -EINVAL;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -EINVAL;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum {
        OPT_PSK_ID = BIKE_OPT_OWN,
        OPT_PSK_KEY,
        OPT_PSK_HEX,
        OPT_NO_OBSERVE,
    };
    static const struct option longs[] = {
        BIKE_LONG_OPTIONS,
        { "port", required_argument, NULL, 'p' },
        { "psk-identity", required_argument, NULL, OPT_PSK_ID },
        { "psk-key", required_argument, NULL, OPT_PSK_KEY },
        { "psk-hex", required_argument, NULL, OPT_PSK_HEX },
        { "no-observe", no_argument, NULL, OPT_NO_OBSERVE },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    *o = (struct options){
        .common = {
            .host = "127.0.0.1",
            .telemetry = "bikes/{identity}/telemetry",
            .commands = "bikes/{identity}/commands",
            .count = 10,
            .interval_ms = 1000,
        },
        .port = "5684",
        .observe = true,
    };
    struct bike_options *co = &o->common;
    int c;
    long v;
    bool have_key = false;
    while ((c = getopt_long(argc, argv, BIKE_SHORT_OPTIONS "p:h", longs, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (!bike_parse_long(optarg, 1, 65535, &v))
                goto bad;
            o->port = optarg;
            break;
        case OPT_PSK_ID:
            o->psk_identity = optarg;
            break;
        case OPT_PSK_KEY:
            if (!*optarg || strlen(optarg) > sizeof o->psk_key)
                goto bad;
            o->psk_key_len = strlen(optarg);
            memcpy(o->psk_key, optarg, o->psk_key_len);
            have_key = true;
            break;
        case OPT_PSK_HEX:
            if (parse_hex(optarg, o->psk_key, sizeof o->psk_key, &o->psk_key_len) < 0)
                goto bad;
            have_key = true;
            break;
        case OPT_NO_OBSERVE:
            o->observe = false;
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
    bool pki = co->ca || co->cert || co->key;
    if (optind != argc || !co->identity || !*co->identity || have_key == pki ||
        (pki && !(co->ca && co->cert && co->key))) {
        fprintf(stderr, "bike-coap: -i IDENTITY and either a PSK key or --ca, --cert and "
                        "--key are needed\n");
        usage(stderr);
        return -EINVAL;
    }
    if (!o->psk_identity)
        o->psk_identity = co->identity;
    return 0;
bad:
    fprintf(stderr, "bike-coap: bad value for -%c: %s\n", c < 256 ? c : '-', optarg);
    return -EINVAL;
}

static coap_session_t *open_session(coap_context_t *ctx, const struct options *o)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM };
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(o->common.host, o->port, &hints, &ai);
    if (rc) {
        fprintf(stderr, "bike-coap: %s: %s\n", o->common.host, gai_strerror(rc));
        return NULL;
    }
    coap_address_t dst;
    coap_address_init(&dst);
    memcpy(&dst.addr, ai->ai_addr, ai->ai_addrlen);
    dst.size = ai->ai_addrlen;
    freeaddrinfo(ai);

    static char sni[256];
    snprintf(sni, sizeof sni, "%s", o->common.host);
    if (o->common.cert) {
        static coap_dtls_pki_t pki;
        memset(&pki, 0, sizeof pki);
        pki.version = COAP_DTLS_PKI_SETUP_VERSION;
        pki.verify_peer_cert = 1;
        pki.check_common_ca = 1;
        pki.cert_chain_validation = 1;
        pki.cert_chain_verify_depth = 3;
        pki.client_sni = sni;
        pki.pki_key.key_type = COAP_PKI_KEY_PEM;
        pki.pki_key.key.pem.ca_file = o->common.ca;
        pki.pki_key.key.pem.public_cert = o->common.cert;
        pki.pki_key.key.pem.private_key = o->common.key;
        return coap_new_client_session_pki(ctx, NULL, &dst, COAP_PROTO_DTLS, &pki);
    }
    static coap_dtls_cpsk_t psk;
    memset(&psk, 0, sizeof psk);
    psk.version = COAP_DTLS_CPSK_SETUP_VERSION;
    psk.client_sni = sni;
    psk.psk_info.identity.s = (const uint8_t *)o->psk_identity;
    psk.psk_info.identity.length = strlen(o->psk_identity);
    psk.psk_info.key.s = o->psk_key;
    psk.psk_info.key.length = o->psk_key_len;
    return coap_new_client_session_psk2(ctx, NULL, &dst, COAP_PROTO_DTLS, &psk);
}

int main(int argc, char **argv)
{
    struct options opt;
    if (parse_options(argc, argv, &opt) < 0)
        return EXIT_USAGE;
    bike_log_as("bike-coap", opt.common.identity);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct bike b = { .opt = &opt, .seq = 1 };
    the_bike = &b;
    if (bike_render(b.telemetry, sizeof b.telemetry, opt.common.telemetry, opt.common.identity) <
            0 ||
        bike_render(b.commands, sizeof b.commands, opt.common.commands, opt.common.identity) < 0) {
        fprintf(stderr, "bike-coap: resource path too long\n");
        return EXIT_USAGE;
    }

    bike_catch_signals();

    coap_startup();
    coap_set_log_handler(on_log);
    coap_set_log_level(opt.common.verbose ? LOG_NOTICE : LOG_WARNING);
    coap_dtls_set_log_level(opt.common.verbose ? LOG_NOTICE : LOG_WARNING);
    coap_context_t *ctx = coap_new_context(NULL);
    if (!ctx) {
        fprintf(stderr, "bike-coap: cannot make a libcoap context\n");
        return EXIT_FAILURE;
    }
    /* Large commands come block-wise (Block2); libcoap puts them together. */
    coap_context_set_block_mode(ctx, COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY);
    coap_register_response_handler(ctx, on_response);
    coap_register_nack_handler(ctx, on_nack);
    coap_register_event_handler(ctx, on_event);

    int status = 0;
    b.session = open_session(ctx, &opt);
    if (!b.session) {
        bike_note("cannot open a DTLS session to %s:%s", opt.common.host, opt.port);
        status = EXIT_NO_LINK;
        goto out;
    }
    if (opt.observe && start_observing(&b) < 0) {
        bike_note("cannot send the observation request");
        status = EXIT_FAILURE;
        goto out;
    }

    long long start = bike_now_ms();
    while (!bike_stop_requested) {
        if (b.handshake_failed && !b.ever_up) {
            bike_note("no DTLS session with %s:%s", opt.common.host, opt.port);
            status = EXIT_NO_LINK;
            break;
        }
        bool finished = opt.common.count && b.seq > opt.common.count && !b.pending;
        if (finished)
            break;
        long long now = bike_now_ms();
        if (b.observe_again_at && now >= b.observe_again_at) {
            b.observe_again_at = 0;
            if (start_observing(&b) < 0)
                bike_note("cannot send the observation request");
        }
        /* Reading seq is due at start + (seq - 1) * interval; one in flight at a time. */
        long long due = bike_reading_due(start, b.seq, opt.common.interval_ms);
        if (due < b.retry_at)
            due = b.retry_at;
        if (!b.pending && now >= due) {
            if (send_reading(&b) < 0) {
                bike_note("reading %lu not sent", b.seq);
                b.failed = true;
                b.seq++;
            }
            continue;
        }
        long long wait = b.pending ? 1000 : due - now;
        if (b.observe_again_at && b.observe_again_at - now < wait)
            wait = b.observe_again_at - now;
        coap_io_process(ctx, (uint32_t)(wait < 1 ? 1 : wait > 1000 ? 1000 : wait));
    }
    if (b.failed || b.observe_refused)
        status = status ? status : EXIT_UNDELIVERED;
    bike_note("%lu readings acknowledged", b.acked);
out:
    b.closing = true;
    if (b.session)
        coap_session_release(b.session);
    coap_free_context(ctx);
    coap_cleanup();
    return status;
}
