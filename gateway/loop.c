/*
 * The one loop: a single thread owns libcoap and all bridge state. One epoll
 * waits on libcoap's own epoll fd (which carries its timers), the DTLS socket
 * that the cookie gate (dtls/gate.h) reads ahead of libcoap, the bridge's
 * inbox eventfd and a signalfd.
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "gate.h"
#include "gateway.h"
#include "clock.h"
#include "log.h"
#include "tandem_build.h"
#if HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* How long a graceful stop waits for broker acknowledgements, ms (SPEC §7). */
#define STOP_WAIT_MS 5000

enum { TAG_COAP = 1, TAG_DTLS, TAG_INBOX, TAG_SIGNAL };

/* Datagrams libcoap may take in one turn of the loop. */
#define COAP_BATCH 32

/* Whether fd (libcoap's epoll descriptor) has events waiting now. */
static bool readable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 1;
}


/*
 * libcoap's messages are mostly about what peers send (bad packets, RSTs,
 * handshake failures): they are kept below Tandem's own levels and limited
 * in rate, one kind per level.
 */
static void coap_log_to_gw(coap_log_t level, const char *message)
{
    char line[512];
    snprintf(line, sizeof(line), "%s", message);
    line[strcspn(line, "\n")] = '\0';
    if (level <= LOG_ERR)
        gw_log_limited(GW_LOG_WARNING, COAP, "%s", line);
    else if (level <= LOG_WARNING)
        gw_log_limited(GW_LOG_INFO, COAP, "%s", line);
    else
        gw_log_limited(GW_LOG_DEBUG, COAP, "%s", line);
}

static int make_address(const char *host, int port, coap_address_t *addr)
{
    coap_address_init(addr);
    if (inet_pton(AF_INET6, host, &addr->addr.sin6.sin6_addr) == 1) {
        addr->addr.sin6.sin6_family = AF_INET6;
        addr->addr.sin6.sin6_port = htons((uint16_t)port);
        addr->size = sizeof(addr->addr.sin6);
        return 0;
    }
    if (inet_pton(AF_INET, host, &addr->addr.sin.sin_addr) == 1) {
        addr->addr.sin.sin_family = AF_INET;
        addr->addr.sin.sin_port = htons((uint16_t)port);
        addr->size = sizeof(addr->addr.sin);
        return 0;
    }
    return -EINVAL;
}

/*
 * libcoap's session limits from the configuration, at start and at each reload.
 *
 * Half-open DTLS handshakes: libcoap's default allows 100. With the cookie
 * gate, only addresses that answered a cookie get that far, so this no longer
 * has to hold off spoofed floods; it bounds what a reconnection storm (every
 * device at once after a restart) may have in flight, and the memory a peer
 * that does answer cookies could tie up (a GnuTLS session each, about 17 KiB
 * measured). A tenth of coap.max_sessions, at least 100 (or max_sessions when
 * smaller), at most 1000.
 */
static void coap_limits(coap_context_t *ctx, const gw_config_t *cfg)
{
    unsigned sessions = (unsigned)cfg->coap.max_sessions, handshakes = sessions / 10;
    if (handshakes < 100)
        handshakes = sessions < 100 ? sessions : 100;
    if (handshakes > 1000)
        handshakes = 1000;
    coap_context_set_max_idle_sessions(ctx, sessions);
    coap_context_set_max_handshake_sessions(ctx, handshakes);
    coap_context_set_session_timeout(ctx, (unsigned)cfg->coap.session_idle_timeout);
}

static int add_fd(int ep, int fd, int tag)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)tag};
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* systemd: readiness, reloads, stop and the watchdog (no-ops without it). */
static void notify(const char *state)
{
#if HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

/* Milliseconds between watchdog pings (half of WatchdogSec=), 0 when off. */
static uint64_t watchdog_interval_ms(void)
{
#if HAVE_SYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0 && usec >= 2000)
        return usec / 2000;
#endif
    return 0;
}

static void publish_stats(bridge_t *b, const gw_config_t *cfg, uint64_t *next_ms)
{
    uint64_t now = gw_now_ms();
    if (cfg->mqtt.stats_interval <= 0 || !*cfg->mqtt.stats_topic || now < *next_ms)
        return;
    *next_ms = now + (uint64_t)cfg->mqtt.stats_interval * 1000;
    bridge_publish_stats(b);
}

/*
 * SIGHUP: the configuration, mappings, PSK file and certificates are read
 * again; the new set is used by new handshakes and requests. Anything
 * invalid keeps the running set.
 */
static void reload(coap_context_t *ctx, bridge_t *b, gw_config_t **cfg, dtls_psk_store_t **psk)
{
    gw_errs_t errs = {0};
    dtls_psk_store_t *npsk = NULL;
    const char *file = (*cfg)->file;

    gw_info(GATEWAY, "reloading %s", file);
    notify("RELOADING=1");
    gw_config_t *next = gw_load(file, &npsk, &errs);
    if (next) {
        gw_config_keep_fixed(next, *cfg);
        if ((npsk || *next->coap.dtls.cert || *(*cfg)->coap.dtls.cert || *psk) &&
            dtls_setup(ctx, next, npsk) < 0) {
            gw_config_free(next);
            dtls_psk_free(npsk);
            next = NULL;
        }
    } else {
        for (char *line = errs.text; line && *line;) {
            char *end = strchr(line, '\n');
            gw_err(CONFIG, "%.*s", (int)(end ? end - line : (long)strlen(line)), line);
            line = end ? end + 1 : NULL;
        }
    }
    gw_errs_clear(&errs);
    if (!next) {
        gw_err(GATEWAY, "reload refused: the running configuration stays");
        bridge_count_reload(b, false);
        notify("READY=1\nSTATUS=reload refused; running the previous configuration");
        return;
    }
    coap_limits(ctx, next);
    gw_log_set_level(next->gateway.log_level);
    bridge_reload(b, next);
    gw_config_free(*cfg);
    dtls_psk_free(*psk);
    *cfg = next;
    *psk = npsk;
    bridge_count_reload(b, true);
    gw_info(GATEWAY, "reloaded: %zu mappings%s", map_table_count(next->maps),
            npsk ? ", PSK identities" : "");
    notify("READY=1\nSTATUS=running");
}

int gw_run(gw_config_t **cfgp, dtls_psk_store_t **pskp)
{
    const gw_config_t *cfg = *cfgp;
    const dtls_psk_store_t *psk = *pskp;
    int status = GW_EXIT_RUNTIME, ep = -1, sfd = -1;
    coap_context_t *ctx = NULL;
    dtls_gate_t *gate = NULL;
    bridge_t *b = NULL;
    sigset_t mask;
    bool stopping = false;
    uint64_t stop_deadline = 0, next_stats = 0;

    /* Block the signals before any thread exists, so that all go to the signalfd. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    coap_startup();
    coap_set_log_handler(coap_log_to_gw);
    coap_set_log_level(gw_log_level() >= GW_LOG_DEBUG ? LOG_INFO : LOG_WARNING);
    coap_dtls_set_log_level(gw_log_level() >= GW_LOG_DEBUG ? LOG_INFO : LOG_WARNING);

    ctx = coap_new_context(NULL);
    if (!ctx) {
        gw_err(COAP, "cannot create the CoAP context");
        goto out;
    }
    coap_limits(ctx, cfg);
    bool dtls = psk || *cfg->coap.dtls.cert;
    if (dtls && dtls_setup(ctx, cfg, psk) < 0)
        goto out;

    coap_address_t addr;
    if (dtls) {
        make_address(cfg->coap.bind, cfg->coap.dtls.port, &addr);
        if (!coap_new_endpoint(ctx, &addr, COAP_PROTO_DTLS)) {
            gw_err(COAP, "cannot bind DTLS to [%s]:%d (%s)", cfg->coap.bind, cfg->coap.dtls.port,
                   strerror(errno));
            goto out;
        }
        gate = dtls_gate_attach(ctx, &addr);
        if (!gate)
            goto out;
        gw_info(COAP, "listening for CoAP over DTLS on [%s]:%d", cfg->coap.bind,
                cfg->coap.dtls.port);
    }
    if (cfg->coap.plain) {
        make_address(cfg->coap.bind, cfg->coap.port, &addr);
        if (!coap_new_endpoint(ctx, &addr, COAP_PROTO_UDP)) {
            gw_err(COAP, "cannot bind plain CoAP to [%s]:%d (%s)", cfg->coap.bind,
                   cfg->coap.port, strerror(errno));
            goto out;
        }
        gw_warn(COAP, "plain CoAP (unencrypted) on [%s]:%d", cfg->coap.bind, cfg->coap.port);
    }

    b = bridge_new(cfg, ctx);
    if (!b) {
        gw_err(BRIDGE, "cannot set up the bridge");
        goto out;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    int coap_fd = coap_context_get_coap_fd(ctx);
    if (ep < 0 || sfd < 0 || coap_fd < 0 || add_fd(ep, coap_fd, TAG_COAP) < 0 ||
        add_fd(ep, bridge_inbox_fd(b), TAG_INBOX) < 0 || add_fd(ep, sfd, TAG_SIGNAL) < 0 ||
        (gate && add_fd(ep, dtls_gate_fd(gate), TAG_DTLS) < 0)) {
        gw_err(GATEWAY, "cannot set up the event loop (%s)", strerror(errno));
        goto out;
    }
    if (gate)
        bridge_show_gate(b, dtls_gate_stats(gate));
    bridge_start(b);
    /* The listeners are bound: ready. */
    notify("READY=1\nSTATUS=running");
    uint64_t watchdog_ms = watchdog_interval_ms(), next_watchdog = 0;
    gw_info(GATEWAY, "%s ready (tandem %s)", cfg->gateway.id, TANDEM_VERSION);

    for (;;) {
        struct epoll_event evs[8];
        int timeout = bridge_timeout_ms(b);
        if (cfg->mqtt.stats_interval > 0 && (timeout < 0 || timeout > 1000))
            timeout = 1000;
        if (stopping)
            timeout = 50;
        if (watchdog_ms && (timeout < 0 || (uint64_t)timeout > watchdog_ms))
            timeout = (int)watchdog_ms;
        int n = epoll_wait(ep, evs, 8, timeout);
        if (n < 0 && errno != EINTR) {
            gw_err(GATEWAY, "epoll_wait failed (%s)", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            switch (evs[i].data.u32) {
            case TAG_COAP:
                /* Several datagrams per turn: bridge_commit() syncs them together. */
                for (int k = 0; k < COAP_BATCH; k++) {
                    coap_io_process(ctx, COAP_IO_NO_WAIT);
                    /* A handshake that just finished makes its resources before the next request. */
                    bridge_after_io(b);
                    if (!readable(coap_fd))
                        break;
                }
                break;
            case TAG_DTLS: {
                /*
                 * Hellos without a valid cookie stop at the gate; libcoap
                 * reads the rest, one datagram at a time so that a handshake
                 * that just finished makes its resources before the next
                 * request.
                 */
                int handed = 0;
                while (handed < COAP_BATCH && dtls_gate_run(gate, ctx, 1) > 0) {
                    handed++;
                    bridge_after_io(b);
                }
                if (handed) {
                    coap_io_process(ctx, COAP_IO_NO_WAIT);
                    bridge_after_io(b);
                }
                break;
            }
            case TAG_INBOX:
                bridge_process_inbox(b);
                /* Send the answers that acknowledgements have released. */
                coap_io_process(ctx, COAP_IO_NO_WAIT);
                bridge_after_io(b);
                break;
            case TAG_SIGNAL: {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                    if (si.ssi_signo == SIGHUP) {
                        if (!stopping) {
                            reload(ctx, b, cfgp, pskp);
                            cfg = *cfgp;
                        }
                    } else if (stopping) {
                        gw_warn(GATEWAY, "second stop signal: exiting now");
                        status = GW_EXIT_OK;
                        goto out;
                    } else {
                        gw_info(GATEWAY, "stopping (%s)", strsignal((int)si.ssi_signo));
                        notify("STOPPING=1");
                        stopping = true;
                        stop_deadline = gw_now_ms() + STOP_WAIT_MS;
                        bridge_drain(b);
                    }
                }
                break;
            }
            }
        }
        bridge_commit(b);
        bridge_tick(b);
        publish_stats(b, cfg, &next_stats);
        if (watchdog_ms && gw_now_ms() >= next_watchdog) {
            notify("WATCHDOG=1");
            next_watchdog = gw_now_ms() + watchdog_ms;
        }
        if (stopping && (bridge_inflight(b) == 0 || gw_now_ms() >= stop_deadline))
            break;
    }
    bridge_commit(b);
    /* Whatever is still waiting gets 5.03: the device will retry elsewhere or later. */
    bridge_abandon(b);
    coap_io_process(ctx, COAP_IO_NO_WAIT);
    bridge_shutdown(b, 1000);
    gw_info(GATEWAY, "stopped");
    status = GW_EXIT_OK;
out:
    if (sfd >= 0)
        close(sfd);
    if (ep >= 0)
        close(ep);
    bridge_free(b);
    if (gate) {
        const dtls_gate_stats_t *st = dtls_gate_stats(gate);
        gw_info(DTLS,
                "cookie gate: %llu ClientHellos answered with a cookie, %llu verified, "
                "%llu datagrams dropped, %llu verified addresses forgotten early",
                (unsigned long long)st->hellos_answered, (unsigned long long)st->peers_verified,
                (unsigned long long)st->dropped, (unsigned long long)st->peers_forgotten);
    }
    /* Before libcoap closes the socket: it gives it back to libcoap's epoll set. */
    dtls_gate_free(gate);
    coap_free_context(ctx);
    dtls_release();
    coap_cleanup();
    return status;
}
