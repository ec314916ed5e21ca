/*
 * Fuzz target: the CoAP request path. A real libcoap context with a plain
 * CoAP endpoint on loopback, the real bridge (routing, Block1, duplicates,
 * pending answers, sessions and their bound, the down direction's values,
 * Observe, discovery), and the MQTT client replaced by broker_stub.c. Each
 * input is a script, run on a fresh gateway:
 *
 *   op 0-3  a datagram from device 0-3 (each its own port): 2-byte length, bytes
 *   op 4    a message from the broker: 1-byte topic length, topic, 1-byte
 *           payload length, payload (topics under fz/ reach the mappings)
 *   op 5    the broker acknowledges what waits (next byte: the reason code)
 *   op 6    the broker connection drops, and comes back
 *   op 7    a turn of the bridge's timers
 *
 * Checks, besides the sanitizers: every topic handed to the MQTT client is
 * one a broker accepts under fz/ (broker_stub.c); never more sessions than
 * coap.max_sessions; the Block1 buffers and the values held within their
 * bounds.
 */
#include "fuzz.h"

#include <arpa/inet.h>
#include <coap3/coap.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridge_int.h"
#include "broker_stub.h"
#include "config_file.h"
#include "log.h"

#define DEVICES 4

static const char config_fmt[] =
    "gateway = { id = \"fz\"; log_level = \"error\"; state_dir = \"state\"; };\n"
    "coap = { bind = \"127.0.0.1\"; plain = true; port = %d; max_sessions = 3;\n"
    "  max_payload = 256; max_resources = 16; session_idle_timeout = 1; };\n"
    "mqtt = { uri = \"mqtt://127.0.0.1:1\"; offline_buffer = 0; stats_interval = 0;\n"
    "  max_inflight = 8; publish_timeout = 1; };\n"
    "mappings = (\n"
    " { name = \"up\"; resource = \"u/{a}\"; topic = \"fz/u/{a}\"; direction = \"up\"; qos = 1; "
    "},\n"
    " { name = \"up0\"; resource = \"u0/{a}/{rest*}\"; topic = \"fz/u0/{a}/{rest*}\";\n"
    "   direction = \"up\"; qos = 0; retain = true; },\n"
    " { name = \"both\"; resource = \"b/{x}\"; topic = \"fz/b/{x}\"; direction = \"both\"; qos = "
    "2; },\n"
    " { name = \"down\"; resource = \"d/{rest*}\"; topic = \"fz/d/{rest*}\"; direction = \"down\"; "
    "},\n"
    " { name = \"me\"; resource = \"m/{identity}/c\"; topic = \"fz/m/{identity}/c\";\n"
    "   direction = \"both\"; qos = 1; },\n"
    " { name = \"fixed\"; resource = \"f/{gateway}/x\"; topic = \"fz/f\"; direction = \"down\"; }\n"
    ");\n";

static int free_udp_port(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* The gateway's state_dir ("state" beside the configuration), removed at exit. */
static char state[4200];

static void state_remove(void)
{
    char sub[4300];
    snprintf(sub, sizeof(sub), "%s/offline", state);
    rmdir(sub);
    rmdir(state);
}

static void setup_once(const char *conf_path)
{
    static bool done;
    if (done)
        return;
    done = true;
    coap_startup();
    coap_set_log_level(LOG_EMERG);
    gw_log_set_level(GW_LOG_ERROR);
    const char *slash = strrchr(conf_path, '/');
    snprintf(state, sizeof(state), "%.*s/state", slash ? (int)(slash - conf_path) : 1,
             slash ? conf_path : ".");
    atexit(state_remove); /* before the folder it is in goes (atexit runs in reverse) */
}

/* Lets libcoap and the bridge handle what is there, as the loop does. */
static void turn(coap_context_t *ctx, bridge_t *b)
{
    for (int i = 0; i < 2; i++) {
        coap_io_process(ctx, COAP_IO_NO_WAIT);
        bridge_after_io(b);
    }
    coap_io_process(ctx, COAP_IO_NO_WAIT);
    bridge_after_io(b);
    bridge_commit(b);
}

static void drain(int fd)
{
    uint8_t buf[2048];
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

static void check_bounds(const bridge_t *b)
{
    struct sessions_stats ss;
    sessions_stats(b->sessions, &ss);
    FUZZ_CHECK(ss.sessions <= (uint64_t)b->cfg->coap.max_sessions);
    FUZZ_CHECK(down_resources(b->down) <= (size_t)b->cfg->coap.max_resources);
    FUZZ_CHECK(b1_pool_stats(b->b1)->bytes <= (size_t)512 * (size_t)b->cfg->coap.max_payload);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char conf[2048], path[4096];
    int devs[DEVICES] = { -1, -1, -1, -1 };
    coap_context_t *ctx = NULL;
    bridge_t *b = NULL;
    gw_config_t *cfg = NULL;
    gw_errs_t errs = { 0 };
    struct sockaddr_in gw = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

    int port = free_udp_port();
    if (port < 0)
        return 0;
    int n = snprintf(conf, sizeof(conf), config_fmt, port);
    if (fuzz_file_new((const uint8_t *)conf, (size_t)n, "tandem.conf", path, sizeof(path)) < 0)
        return 0;
    setup_once(path);
    cfg = gw_config_load(path, &errs);
    fuzz_file_remove(path);
    FUZZ_CHECK(cfg); /* the target's own configuration is valid */
    gw_errs_clear(&errs);

    ctx = coap_new_context(NULL);
    coap_address_t addr;
    coap_address_init(&addr);
    addr.addr.sin = (struct sockaddr_in){ .sin_family = AF_INET,
                                          .sin_port = htons((uint16_t)port),
                                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    addr.size = sizeof(addr.addr.sin);
    if (!ctx || !coap_new_endpoint(ctx, &addr, COAP_PROTO_UDP))
        goto out; /* the port was taken meanwhile */
    coap_context_set_max_idle_sessions(ctx, (unsigned)cfg->coap.max_sessions);
    b = bridge_new(cfg, ctx, NULL);
    FUZZ_CHECK(b);
    bridge_start(b);
    turn(ctx, b);
    gw.sin_port = htons((uint16_t)port);
    for (int i = 0; i < DEVICES; i++) {
        devs[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (devs[i] < 0)
            goto out;
    }

    size_t pos = 0;
    while (pos < size) {
        uint8_t op = data[pos++] % 8;
        if (op < DEVICES) {
            if (size - pos < 2)
                break;
            size_t len = (size_t)data[pos] << 8 | data[pos + 1];
            pos += 2;
            if (len > size - pos)
                len = size - pos;
            if (len > 1400)
                len = 1400;
            sendto(devs[op], data + pos, len, 0, (struct sockaddr *)&gw, sizeof(gw));
            pos += len;
        } else if (op == 4) {
            if (size - pos < 1)
                break;
            size_t tlen = data[pos++];
            if (tlen > size - pos)
                tlen = size - pos;
            const char *topic = (const char *)data + pos;
            pos += tlen;
            size_t plen = pos < size ? data[pos++] : 0;
            if (plen > size - pos)
                plen = size - pos;
            stub_message(b->mqtt, topic, tlen, data + pos, plen);
            pos += plen;
        } else if (op == 5) {
            stub_acknowledge(b->mqtt, pos < size ? data[pos++] : 0);
        } else if (op == 6) {
            stub_lose_connection(b->mqtt);
            turn(ctx, b);
            mqtt_client_start(b->mqtt);
        } else {
            bridge_tick(b);
        }
        turn(ctx, b);
        check_bounds(b);
        for (int i = 0; i < DEVICES; i++)
            drain(devs[i]);
    }
    bridge_drain(b);
    bridge_abandon(b);
    coap_io_process(ctx, COAP_IO_NO_WAIT);
out:
    for (int i = 0; i < DEVICES; i++)
        if (devs[i] >= 0)
            close(devs[i]);
    bridge_free(b);
    coap_free_context(ctx);
    gw_config_free(cfg);
    return 0;
}
