/*
 * The process's loop: a single thread owns libcoap and all bridge state. The
 * loop is a registry (common/ev.h); its entries here are libcoap's own epoll
 * fd (which carries libcoap's timers), the DTLS socket that the cookie gate
 * (dtls/gate.h) reads ahead of libcoap, the MQTT client's connection (its
 * own entries, mqtt/client.h) and a signalfd, and timers for the statistics, the systemd watchdog, the bridge's
 * deadlines and a graceful stop. Other modules (the control socket, /metrics)
 * register their own entries.
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "clock.h"
#include "control.h"
#include "ev.h"
#include "gate.h"
#include "gateway.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "report.h"
#include "stats.h"
#include "tandem_build.h"
#if HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* How long a graceful stop waits for broker acknowledgements, ms (tandem(8), SIGNALS). */
#define STOP_WAIT_MS 5000

/* Datagrams libcoap may take in one turn of the loop. */
#define COAP_BATCH 32

/* Whether fd (libcoap's epoll descriptor) has events waiting now. */
static bool readable(int fd)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
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
    /* Handshake failures are logged once each, with their cause (dtls_log_failure). */
    if (strcasestr(line, "tls") || strcasestr(line, "handshake") || strcasestr(line, "certificate"))
        gw_log_limited(GW_LOG_DEBUG, COAP, "%s", line);
    else if (level <= LOG_ERR)
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

/* Logs errs's lines ("FILE:LINE: setting: reason") one by one. */
static void log_errs(const gw_errs_t *errs)
{
    for (char *line = errs->text; line && *line;) {
        char *end = strchr(line, '\n');
        gw_err(CONFIG, "%.*s", (int)(end ? end - line : (long)strlen(line)), line);
        line = end ? end + 1 : NULL;
    }
}

/*
 * SIGHUP: the configuration, mappings, PSK file and certificates are read
 * again; the new set is used by new handshakes and requests. A reload is
 * taken whole or not at all: each module first makes its new state on the
 * side (the listener's and the DTLS credentials, the bridge's tables), and
 * only when every one of them could is it swapped in; otherwise all of it is
 * freed and the running set stays, untouched.
 */
static void reload(coap_context_t *ctx, bridge_t *b, listener_t *l, gw_report_t *report,
                   gw_config_t **cfg, dtls_psk_store_t **psk)
{
    gw_errs_t errs = { 0 };
    dtls_psk_store_t *npsk = NULL;
    dtls_creds_t *dcreds = NULL;
    listener_cred_t *lcred = NULL;
    bridge_next_t *bnext = NULL;
    const char *file = (*cfg)->file;

    gw_info(GATEWAY, "reloading %s", file);
    notify("RELOADING=1");
    gw_config_t *next = gw_load(file, *cfg, &npsk, &errs);
    if (next) {
        const char *dtls_setting = *next->coap.dtls.cert ? "coap.dtls.cert" : "coap.dtls.psk_file";
        if ((npsk || *next->coap.dtls.cert || *(*cfg)->coap.dtls.cert || *psk) &&
            dtls_prepare(next, npsk, &dcreds) < 0)
            gw_errs_add(&errs, next->file, gw_config_line(next, dtls_setting), dtls_setting,
                        "the DTLS credentials cannot be set up");
        if (l && listener_reload_prepare(next, &lcred) < 0)
            gw_errs_add(&errs, next->file, gw_config_line(next, "mqtt_listener.cert"),
                        "mqtt_listener.cert",
                        "the MQTT listener cannot load it, its key or mqtt_listener.ca");
        if (bridge_reload_prepare(b, next, &bnext) < 0)
            gw_errs_add(&errs, next->file, gw_config_line(next, "mappings"), "mappings",
                        "out of memory");
    }
    log_errs(&errs);
    if (!next || errs.count) {
        if (!errs.count)
            gw_err(CONFIG, "%s: cannot be loaded", file);
        gw_errs_clear(&errs);
        dtls_creds_free(dcreds);
        listener_cred_free(lcred);
        bridge_next_free(bnext);
        gw_config_free(next);
        dtls_psk_free(npsk);
        gw_err(GATEWAY, "reload refused: the running configuration stays");
        gw_report_reload(report, *cfg, false);
        notify("READY=1\nSTATUS=reload refused; running the previous configuration");
        return;
    }
    gw_errs_clear(&errs);
    /* Everything is in hand: from here on nothing fails. */
    if (dcreds)
        dtls_commit(ctx, dcreds);
    coap_limits(ctx, next);
    gw_log_set_level(next->gateway.log_level);
    gw_log_set_timestamps(next->gateway.log_timestamps);
    bridge_reload_commit(b, bnext);
    if (l)
        listener_reload_commit(l, next, lcred);
    gw_config_free(*cfg);
    dtls_psk_free(*psk);
    *cfg = next;
    *psk = npsk;
    gw_report_reload(report, next, true);
    gw_info(GATEWAY, "reloaded: %zu mappings%s", map_table_count(next->maps),
            npsk ? ", PSK identities" : "");
    notify("READY=1\nSTATUS=running");
}

/* What the loop's entries share: the process's state. */
struct proc {
    ev_loop_t *loop;
    coap_context_t *ctx;
    dtls_gate_t *gate; /* NULL without DTLS */
    bridge_t *b;
    listener_t *listener;         /* NULL when mqtt_listener.enabled is false */
    listener_stats_t no_listener; /* the zeros shown then */
    stats_t *stats;               /* every module's statistics */
    gw_report_t *report;          /* the process's own */
    gw_control_t *control;        /* NULL when gateway.control_socket is "" */
    gw_metrics_t *metrics;        /* NULL when metrics.listen is "" */
    gw_config_t **cfgp;           /* the running configuration; a reload replaces it */
    dtls_psk_store_t **pskp;
    int coap_fd, sfd;
    bool stopping, at_once; /* a graceful stop was asked; a second signal: stop at once */
    bool coap_due;          /* libcoap's timers to update at the end of the turn (after_turn) */
    uint64_t stop_deadline, tick_timer;
    int status;
};

/* libcoap's fd: several datagrams per turn, which the bridge's commit syncs together. */
static void on_coap(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    struct proc *p = data;
    (void)loop, (void)mask;
    for (int k = 0; k < COAP_BATCH; k++) {
        coap_io_process(p->ctx, COAP_IO_NO_WAIT);
        /* A handshake that just finished makes its resources before the next request. */
        bridge_after_io(p->b);
        if (!readable(fd))
            break;
    }
}

/*
 * The DTLS socket: ClientHellos without a valid cookie stop at the gate;
 * libcoap reads the rest, in batches that end at each handshake record, so
 * that a handshake that just finished makes its resources before the next
 * request. The first datagram of a turn goes alone: looking behind it costs
 * three system calls, worth it only when datagrams queue up, as the second
 * one of a turn shows.
 */
static void on_dtls(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    struct proc *p = data;
    int handed = 0, n;
    (void)loop, (void)fd, (void)mask;
    while (handed < COAP_BATCH &&
           (n = dtls_gate_run(p->gate, p->ctx, handed ? COAP_BATCH - handed : 1)) > 0) {
        handed += n;
        bridge_after_io(p->b);
    }
    if (handed)
        p->coap_due = true;
}

/* A graceful stop ends when no publish awaits the broker, or at STOP_WAIT_MS. */
static int64_t on_stop_check(ev_loop_t *loop, uint64_t id, void *data)
{
    struct proc *p = data;
    (void)id;
    if (bridge_inflight(p->b) == 0 || gw_now_ms() >= p->stop_deadline) {
        ev_stop(loop);
        return EV_NOMORE;
    }
    return 50;
}

static void on_signal(ev_loop_t *loop, int fd, unsigned mask, void *data)
{
    struct proc *p = data;
    struct signalfd_siginfo si;
    (void)mask;
    while (read(fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            if (!p->stopping)
                reload(p->ctx, p->b, p->listener, p->report, p->cfgp, p->pskp);
        } else if (p->stopping) {
            gw_warn(GATEWAY, "second stop signal: exiting now");
            p->at_once = true;
            ev_stop(loop);
            return;
        } else {
            gw_info(GATEWAY, "stopping (%s)", strsignal((int)si.ssi_signo));
            notify("STOPPING=1");
            p->stopping = true;
            p->stop_deadline = gw_now_ms() + STOP_WAIT_MS;
            listener_shutdown(p->listener);
            bridge_drain(p->b);
            if (!ev_add_timer(loop, 0, on_stop_check, p))
                ev_stop(loop);
        }
    }
}

/* Wakes the loop when the bridge has a deadline; the work is done by after_turn(). */
static int64_t on_tick(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id, (void)data;
    return 1000;
}

/*
 * After every turn (Redis's beforeSleep): the readings buffered in this turn
 * are made durable together and answered, deadlines are checked, and the
 * tick timer follows the bridge's next deadline.
 */
static void after_turn(ev_loop_t *loop, void *data)
{
    struct proc *p = data;
    /*
     * libcoap's own work (its timers: retransmissions, handshakes, idle
     * sessions) once a turn, not once per entry: each pass walks every
     * session. What libcoap sends in answer to a datagram it sends at once.
     * Answers the broker's acknowledgements released need it too.
     */
    if (bridge_take_answered(p->b))
        p->coap_due = true;
    if (p->coap_due) {
        p->coap_due = false;
        coap_io_process(p->ctx, COAP_IO_NO_WAIT);
        bridge_after_io(p->b);
    }
    bridge_commit(p->b);
    bridge_tick(p->b);
    int ms = bridge_timeout_ms(p->b);
    ev_set_timer(loop, p->tick_timer, ms < 0 ? 1000 : (uint64_t)ms);
}

/*
 * glibc keeps what is freed for the allocations to come: after a storm of
 * sessions has ended (each held about 13 KiB, and its handshake more), the
 * megabytes stay with the process. Every TRIM_MS, when the heaps hold more
 * than TRIM_FREE bytes unused, they go back to the system (malloc_trim()
 * also releases the whole free pages inside a heap, not only its top).
 */
#define TRIM_MS 30000
#define TRIM_FREE (1024 * 1024)

static int64_t on_trim(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id, (void)data;
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks > TRIM_FREE && malloc_trim(0))
        gw_debug(GATEWAY, "memory: %zu KiB unused in the heaps, their free pages given back",
                 mi.fordblks / 1024);
    return TRIM_MS;
}

/* The statistics on mqtt.stats_topic, every stats_interval seconds (which a reload may change). */
static int64_t on_stats(ev_loop_t *loop, uint64_t id, void *data)
{
    struct proc *p = data;
    const gw_mqtt_config_t *m = &(*p->cfgp)->mqtt;
    (void)loop, (void)id;
    if (m->stats_interval <= 0 || !*m->stats_topic)
        return 1000; /* look again: a reload may turn it on */
    size_t len;
    char *json = stats_json(p->stats, &len);
    if (json)
        bridge_publish_stats(p->b, json, len);
    free(json);
    return (int64_t)m->stats_interval * 1000;
}

static int64_t on_watchdog(ev_loop_t *loop, uint64_t id, void *data)
{
    (void)loop, (void)id;
    notify("WATCHDOG=1");
    return (int64_t)(uintptr_t)data;
}

/* The MQTT listener's per-mapping counts go to the bridge's "mappings" section. */
static void count_mqtt(void *arg, size_t map, enum listener_count what)
{
    bridge_count_mqtt(arg, map,
                      what == LISTENER_UP     ? BRIDGE_MQTT_UP
                      : what == LISTENER_DOWN ? BRIDGE_MQTT_DOWN
                                              : BRIDGE_MQTT_REFUSED);
}

/* Binds the CoAP endpoints (DTLS with its cookie gate, plain when asked). */
static int listen_coap(struct proc *p, const gw_coap_config_t *c, bool dtls)
{
    coap_address_t addr;
    if (dtls) {
        make_address(c->bind, c->dtls.port, &addr);
        if (!coap_new_endpoint(p->ctx, &addr, COAP_PROTO_DTLS)) {
            gw_err(COAP, "cannot bind DTLS to [%s]:%d (%s)", c->bind, c->dtls.port,
                   strerror(errno));
            return -1;
        }
        p->gate = dtls_gate_attach(p->ctx, &addr);
        if (!p->gate)
            return -1;
        gw_info(COAP, "listening for CoAP over DTLS on [%s]:%d", c->bind, c->dtls.port);
    }
    if (c->plain) {
        make_address(c->bind, c->port, &addr);
        if (!coap_new_endpoint(p->ctx, &addr, COAP_PROTO_UDP)) {
            gw_err(COAP, "cannot bind plain CoAP to [%s]:%d (%s)", c->bind, c->port,
                   strerror(errno));
            return -1;
        }
        gw_warn(COAP, "plain CoAP (unencrypted) on [%s]:%d", c->bind, c->port);
    }
    return 0;
}

/* The loop's entries for libcoap, the cookie gate, signals and timers. */
static int register_entries(struct proc *p, const sigset_t *mask)
{
    p->sfd = signalfd(-1, mask, SFD_NONBLOCK | SFD_CLOEXEC);
    p->coap_fd = coap_context_get_coap_fd(p->ctx);
    if (p->sfd < 0 || p->coap_fd < 0)
        return -1;
    if (ev_add_file(p->loop, p->coap_fd, EV_READABLE, on_coap, p) < 0 ||
        ev_add_file(p->loop, p->sfd, EV_READABLE, on_signal, p) < 0 ||
        (p->gate && ev_add_file(p->loop, dtls_gate_fd(p->gate), EV_READABLE, on_dtls, p) < 0))
        return -1;
    p->tick_timer = ev_add_timer(p->loop, 0, on_tick, p);
    if (!p->tick_timer || ev_add_hook(p->loop, after_turn, p) < 0 ||
        !ev_add_timer(p->loop, 1000, on_stats, p) || !ev_add_timer(p->loop, TRIM_MS, on_trim, p))
        return -1;
    uint64_t watchdog_ms = watchdog_interval_ms();
    if (watchdog_ms && !ev_add_timer(p->loop, 0, on_watchdog, (void *)(uintptr_t)watchdog_ms))
        return -1;
    return 0;
}

int gw_run(gw_config_t **cfgp, dtls_psk_store_t **pskp)
{
    const gw_config_t *cfg = *cfgp;
    struct proc p = { .cfgp = cfgp, .pskp = pskp, .sfd = -1, .status = GW_EXIT_RUNTIME };
    sigset_t mask;

    /* Block the signals before any thread exists, so that all go to the signalfd. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    /*
     * The control socket first: a gateway already running there (with the
     * same configuration, most likely) stops this one before it binds a port
     * or reaches the broker with the same client id.
     */
    p.loop = ev_new();
    p.stats = stats_new();
    if (!p.loop || !p.stats) {
        gw_err(GATEWAY, "cannot set up the event loop (out of memory)");
        goto out;
    }
    if (*cfg->gateway.control_socket &&
        !(p.control = gw_control_new(p.loop, cfg->gateway.control_socket, p.stats)))
        goto out;
    if (*cfg->metrics.listen && !(p.metrics = gw_metrics_new(p.loop, cfg->metrics.listen, p.stats)))
        goto out;

    coap_startup();
    coap_set_log_handler(coap_log_to_gw);
    coap_set_log_level(gw_log_level() >= GW_LOG_DEBUG ? LOG_INFO : LOG_WARNING);
    coap_dtls_set_log_level(gw_log_level() >= GW_LOG_DEBUG ? LOG_INFO : LOG_WARNING);

    p.ctx = coap_new_context(NULL);
    if (!p.ctx) {
        gw_err(COAP, "cannot create the CoAP context");
        goto out;
    }
    coap_limits(p.ctx, cfg);
    bool dtls = *pskp || *cfg->coap.dtls.cert;
    if (dtls && dtls_setup(p.ctx, cfg, *pskp) < 0)
        goto out;
    if (listen_coap(&p, &cfg->coap, dtls) < 0)
        goto out;

    p.b = bridge_new(cfg, p.ctx, p.loop);
    if (!p.b) {
        gw_err(BRIDGE, "cannot set up the bridge");
        goto out;
    }
    if (cfg->mqtt_listener.enabled && !(p.listener = listener_new(p.loop, cfg, count_mqtt, p.b)))
        goto out;
    listener_set_presence(p.listener, bridge_presence(p.b));
    gw_control_set_presence(p.control, bridge_presence(p.b));
    if (register_entries(&p, &mask) < 0) {
        gw_err(GATEWAY, "cannot set up the event loop (%s)", strerror(errno));
        goto out;
    }
    p.report = gw_report_new(p.stats, cfg);
    if (!p.report || bridge_add_stats(p.b, p.stats) < 0 ||
        (p.gate && stats_add(p.stats, &dtls_gate_section, dtls_gate_stats(p.gate)) < 0) ||
        gw_report_add_tail(p.report, &listener_section,
                           p.listener ? (const void *)listener_stats(p.listener)
                                      : (const void *)&p.no_listener) < 0 ||
        stats_add(p.stats, &presence_section, presence_stats(bridge_presence(p.b))) < 0 ||
        (p.control && stats_add(p.stats, &gw_control_section, gw_control_stats(p.control)) < 0) ||
        (p.metrics && stats_add(p.stats, &gw_metrics_section, gw_metrics_stats(p.metrics)) < 0)) {
        gw_err(GATEWAY, "cannot set up the statistics (out of memory)");
        goto out;
    }
    bridge_start(p.b);
    /* The listeners are bound: ready. */
    notify("READY=1\nSTATUS=running");
    gw_info(GATEWAY, "%s ready (tandem %s)", cfg->gateway.id, TANDEM_VERSION);

    if (ev_run(p.loop) < 0) {
        gw_err(GATEWAY, "the event loop failed (%s)", strerror(errno));
        goto out;
    }
    p.status = GW_EXIT_OK;
    if (p.at_once)
        goto out;
    bridge_commit(p.b);
    /* Whatever is still waiting gets 5.03: the device will retry elsewhere or later. */
    bridge_abandon(p.b);
    coap_io_process(p.ctx, COAP_IO_NO_WAIT);
    /* Every device offline before the status topic's "offline". */
    bridge_stop_presence(p.b);
    bridge_shutdown(p.b, 1000);
    gw_info(GATEWAY, "stopped");
    p.status = GW_EXIT_OK;
out:
    /* The socket file goes with the control socket: no gateway answers there any more. */
    gw_metrics_free(p.metrics);
    gw_control_free(p.control);
    /* Before the loop it is registered with; the report's section over it goes unrendered. */
    listener_free(p.listener);
    if (p.sfd >= 0)
        close(p.sfd);
    gw_report_free(p.report);
    bridge_remove_stats(p.b, p.stats);
    stats_free(p.stats);
    bridge_free(p.b); /* and its MQTT client, before the loop it is registered with */
    ev_free(p.loop);
    if (p.gate) {
        const dtls_gate_stats_t *st = dtls_gate_stats(p.gate);
        gw_info(DTLS,
                "cookie gate: %llu ClientHellos answered with a cookie, %llu verified, "
                "%llu datagrams dropped, %llu verified addresses forgotten early",
                (unsigned long long)st->hellos_answered, (unsigned long long)st->peers_verified,
                (unsigned long long)st->dropped, (unsigned long long)st->peers_forgotten);
    }
    /* Before libcoap closes the socket: it gives it back to libcoap's epoll set. */
    dtls_gate_free(p.gate);
    coap_free_context(p.ctx);
    dtls_release();
    coap_cleanup();
    return p.status;
}
