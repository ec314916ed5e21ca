/*
 * coap_load: a CoAP-over-DTLS load generator for Tandem's benchmarks.
 *
 * Opens S DTLS-PSK sessions (identities PREFIX0..PREFIX{S-1}, key "key-" +
 * identity) and has each send COUNT confirmable requests to
 * PATH_PREFIX/<identity>/PATH_SUFFIX (or to the fixed path of -U), one
 * outstanding per session. Without options it prints requests per second and
 * the latency distribution, as bench/throughput.py and bench/memory.py use it.
 *
 * Options (before the positional arguments):
 *   -m put|post   the method (POST by default)
 *   -U PATH       send every request to PATH ("a/b"), not to the per-device path
 *   -a CODES      the answers that count as success, e.g. "2.01,2.04" (default 2.04)
 *   -s SECONDS    steady mode: every session sends without end; once each has had
 *                 its first answer, prints "window start ..." and, SECONDS later,
 *                 "window end ..." with the requests, latencies and own CPU time
 *                 of that window (both lines flushed as they happen)
 *   -c            after the window, keep the load going until stdin closes or
 *                 SIGTERM/SIGINT; SIGUSR1 prints "mark t=... answered=N"
 *   -b            burst: report each session's start and time to first answer
 *                 (the sessions always start as fast as they can be made)
 *   -f N          with -b: start the sessions from N processes at one instant
 *   -r RATE       start RATE sessions a second instead of all at once
 *   -i            hold: once every session has its COUNT answers (or failed),
 *                 print "held ..." and keep the sessions open, idle, until
 *                 stdin closes or SIGTERM/SIGINT
 *   -t SECONDS    give up after SECONDS (default 120)
 *
 * Lines meant for scripts start with a keyword followed by key=value fields.
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESSIONS 8192
#define MAX_CODES 8
#define MAX_SEGMENTS 8

/* One device's figures; what a burst's child process sends to its parent. */
struct rec {
    double start_at;     /* ClientHello sent (session made) */
    double connected_at; /* handshake done, 0 if never */
    double first_at;     /* first answer, 0 if none */
    int ok, other, lost;
};

struct dev {
    coap_session_t *session;
    char identity[32], key[40];
    int sent, dead;
    double sent_at;
    struct rec r;
};

static struct dev *devs;
static int nsessions, count, first_answers, finished;
static long ok, other, lost;
static const char *path_prefix = "bikes", *path_suffix = "telemetry";
static const char *fixed[MAX_SEGMENTS];
static int nfixed;
static int method = COAP_REQUEST_CODE_POST;
static int codes[MAX_CODES] = { COAP_RESPONSE_CODE(204) }, ncodes = 1;
static int endless;   /* steady mode: sessions never stop sending */
static int stopping;  /* no new requests (steady window over) */
static int in_window; /* latencies are recorded */
static double *lat;   /* latencies of the window (or of the whole run) */
static size_t nlat, lat_cap;
static volatile sig_atomic_t got_stop, got_mark;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double cpu_children(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        got_mark = 1;
    else
        got_stop = 1;
}

static void add_latency(double v)
{
    if (nlat == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof(*lat));
        if (!lat) {
            fprintf(stderr, "coap_load: out of memory\n");
            exit(1);
        }
    }
    lat[nlat++] = v;
}

static void send_one(struct dev *d)
{
    coap_pdu_t *pdu =
        coap_pdu_init(COAP_MESSAGE_CON, (coap_pdu_code_t)method, coap_new_message_id(d->session),
                      coap_session_max_pdu_size(d->session));
    uint8_t token[8];
    size_t tlen;
    char body[96];
    if (!pdu)
        return;
    int n = snprintf(body, sizeof(body), "{\"seq\":%d,\"hr\":%d,\"cadence\":%d}", d->sent,
                     100 + d->sent % 80, 60 + d->sent % 40);
    coap_session_new_token(d->session, &tlen, token);
    coap_add_token(pdu, tlen, token);
    if (nfixed) {
        for (int i = 0; i < nfixed; i++)
            coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(fixed[i]), (const uint8_t *)fixed[i]);
    } else {
        coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path_prefix),
                        (const uint8_t *)path_prefix);
        coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(d->identity),
                        (const uint8_t *)d->identity);
        coap_add_option(pdu, COAP_OPTION_URI_PATH, strlen(path_suffix),
                        (const uint8_t *)path_suffix);
    }
    uint8_t cf[1] = { 50 };
    coap_add_option(pdu, COAP_OPTION_CONTENT_FORMAT, 1, cf);
    coap_add_data(pdu, (size_t)n, (const uint8_t *)body);
    d->sent_at = now();
    d->sent++;
    coap_send(d->session, pdu);
}

/* The session has had its answer (or lost its request): next one, or done. */
static void next(struct dev *d)
{
    if (!d->dead && !stopping && (endless || d->sent < count)) {
        send_one(d);
        return;
    }
    finished++;
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid)
{
    struct dev *d = coap_session_get_app_data(session);
    (void)sent;
    (void)mid;
    if (!d || coap_pdu_get_code(received) == 0)
        return COAP_RESPONSE_OK;
    double t = now();
    int good = 0;
    for (int i = 0; i < ncodes; i++)
        good |= (int)coap_pdu_get_code(received) == codes[i];
    if (good) {
        ok++;
        d->r.ok++;
    } else {
        other++;
        d->r.other++;
    }
    if (in_window)
        add_latency(t - d->sent_at);
    if (d->r.first_at == 0) {
        d->r.first_at = t;
        first_answers++;
    }
    if (d->r.connected_at == 0 || d->r.connected_at > t)
        d->r.connected_at = t; /* seen late: an answer comes after the handshake */
    next(d);
    return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent,
                    const coap_nack_reason_t reason, const coap_mid_t mid)
{
    struct dev *d = coap_session_get_app_data(session);
    (void)sent;
    (void)mid;
    if (!d || d->dead)
        return;
    lost++;
    d->r.lost++;
    if (reason == COAP_NACK_TLS_FAILED || reason == COAP_NACK_NOT_DELIVERABLE)
        d->dead = 1;
    if (d->r.first_at == 0 && d->dead)
        first_answers++; /* this session will not answer: do not wait for it */
    next(d);
}

/*
 * Notes when each session's handshake has completed. libcoap 4.3 gives a
 * client no event for it, so the sessions' states are looked at, every 5 ms
 * while some are still in their handshake.
 */
static int note_connected(int lo, int hi)
{
    static double last;
    static int all_lo = -1;
    double t = now();
    if (all_lo == lo || t - last < 0.005)
        return all_lo != lo;
    last = t;
    int pending = 0;
    for (int i = lo; i < hi; i++) {
        struct dev *d = &devs[i];
        if (!d->session || d->r.connected_at || d->dead) {
            pending += !d->session;
            continue;
        }
        if (coap_session_get_state(d->session) == COAP_SESSION_STATE_ESTABLISHED)
            d->r.connected_at = t;
        else
            pending++;
    }
    if (!pending)
        all_lo = lo;
    return pending > 0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, int p)
{
    if (!n)
        return 0;
    size_t i = n * (size_t)p / 100;
    return v[i < n ? i : n - 1];
}

static int parse_codes(char *s)
{
    ncodes = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
        int c, dd;
        if (ncodes == MAX_CODES || sscanf(tok, "%d.%d", &c, &dd) != 2)
            return -1;
        codes[ncodes++] = COAP_RESPONSE_CODE(c * 100 + dd);
    }
    return ncodes ? 0 : -1;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static coap_context_t *new_context(void)
{
    coap_context_t *ctx = coap_new_context(NULL);
    if (!ctx)
        return NULL;
    coap_register_response_handler(ctx, on_response);
    coap_register_nack_handler(ctx, on_nack);
    return ctx;
}

static int open_session(coap_context_t *ctx, const coap_address_t *dst, struct dev *d)
{
    coap_dtls_cpsk_t psk;
    memset(&psk, 0, sizeof(psk));
    psk.version = COAP_DTLS_CPSK_SETUP_VERSION;
    psk.psk_info.identity.s = (const uint8_t *)d->identity;
    psk.psk_info.identity.length = strlen(d->identity);
    psk.psk_info.key.s = (const uint8_t *)d->key;
    psk.psk_info.key.length = strlen(d->key);
    d->session = coap_new_client_session_psk2(ctx, NULL, dst, COAP_PROTO_DTLS, &psk);
    if (!d->session)
        return -1;
    d->r.start_at = now();
    coap_session_set_app_data(d->session, d);
    send_one(d);
    return 0;
}

/* Whether stdin has closed (or a stop signal came); checks at most every 50 ms. */
static int told_to_stop(void)
{
    static double last;
    if (got_stop)
        return 1;
    double t = now();
    if (t - last < 0.05)
        return 0;
    last = t;
    struct pollfd p = { .fd = 0, .events = POLLIN };
    if (poll(&p, 1, 0) > 0) {
        char buf[256];
        ssize_t n = read(0, buf, sizeof(buf));
        if (n <= 0)
            return 1;
    }
    return 0;
}

static void print_mark(void)
{
    got_mark = 0;
    printf("mark t=%.6f answered=%ld lost=%ld\n", now(), ok + other, lost);
    fflush(stdout);
}

/*
 * Opens sessions lo..hi-1 (starting at t0, rate a second or all at once) and
 * drives them until every one is finished (steady: until the window is over)
 * or the deadline. Returns 0, or -1 when a session could not be made.
 */
static int run(coap_context_t *ctx, const coap_address_t *dst, int lo, int hi, double t0,
               double rate, double deadline, double window, int keep_going)
{
    int started = lo, n = hi - lo;
    double win_start = 0, win_cpu = 0;
    long win_answers = 0;
    while (now() < deadline && !got_stop) {
        double t = now();
        while (started < hi && (rate <= 0 || t >= t0 + (started - lo) / rate)) {
            if (open_session(ctx, dst, &devs[started]) < 0) {
                fprintf(stderr, "coap_load: cannot open session %d\n", started);
                return -1;
            }
            started++;
        }
        if (got_mark)
            print_mark();
        int handshaking = note_connected(lo, hi);
        if (window > 0 && !win_start && first_answers >= n) {
            nlat = 0;
            in_window = 1;
            win_start = now();
            win_answers = ok + other;
            win_cpu = cpu_self();
            printf("window start t=%.6f\n", win_start);
            fflush(stdout);
            deadline = win_start + window + 3600;
        }
        if (win_start && !stopping && now() >= win_start + window) {
            double el = now() - win_start, cpu = cpu_self() - win_cpu;
            long answered = ok + other - win_answers;
            in_window = 0;
            qsort(lat, nlat, sizeof(*lat), cmp);
            printf("window end t=%.6f seconds=%.3f answered=%ld requests_per_s=%.1f "
                   "p50_ms=%.3f p99_ms=%.3f max_ms=%.3f cpu_s=%.3f cpu_us_per_request=%.1f "
                   "other=%ld lost=%ld\n",
                   win_start + el, el, answered, (double)answered / el, pct(lat, nlat, 50) * 1000,
                   pct(lat, nlat, 99) * 1000, nlat ? lat[nlat - 1] * 1000 : 0, cpu,
                   answered ? cpu * 1e6 / (double)answered : 0, other, lost);
            fflush(stdout);
            if (!keep_going) {
                stopping = 1;
                deadline = now() + 10; /* what is in flight is answered or lost */
            }
        }
        if (win_start && !stopping && keep_going && told_to_stop()) {
            stopping = 1;
            deadline = now() + 10;
        }
        if (stopping && finished >= started - lo)
            break;
        if (!endless && started == hi && finished >= n)
            break;
        uint32_t wait = handshaking ? 5 : 100;
        if (started < hi && rate > 0) {
            double next_at = t0 + (started - lo) / rate - now();
            wait = next_at <= 0 ? COAP_IO_NO_WAIT : (uint32_t)(next_at * 1000) + 1;
        }
        coap_io_process(ctx, wait);
    }
    return 0;
}

static void hold(coap_context_t *ctx)
{
    printf("held sessions=%d answered=%d ok=%ld other=%ld lost=%ld\n", nsessions, first_answers, ok,
           other, lost);
    fflush(stdout);
    while (!told_to_stop())
        coap_io_process(ctx, 50);
}

/* The burst's or the rate's report, from every session's record. */
static void report_starts(struct rec *recs, int n, double cpu)
{
    double t0 = 0, last_start = 0, last_answer = 0;
    int answered = 0, connected = 0, w5 = 0, w60 = 0, nok = 0, nother = 0, nlost = 0;
    double *ttfa = calloc((size_t)n, sizeof(double)), *hs = calloc((size_t)n, sizeof(double));
    size_t nt = 0, nh = 0;
    for (int i = 0; i < n; i++) {
        if (recs[i].start_at && (!t0 || recs[i].start_at < t0))
            t0 = recs[i].start_at;
        if (recs[i].start_at > last_start)
            last_start = recs[i].start_at;
    }
    for (int i = 0; i < n; i++) {
        struct rec *r = &recs[i];
        nok += r->ok;
        nother += r->other;
        nlost += r->lost;
        if (r->connected_at) {
            connected++;
            hs[nh++] = r->connected_at - r->start_at;
        }
        if (!r->first_at)
            continue;
        answered++;
        ttfa[nt++] = r->first_at - r->start_at;
        w5 += r->first_at - t0 <= 5;
        w60 += r->first_at - t0 <= 60;
        if (r->first_at > last_answer)
            last_answer = r->first_at;
    }
    qsort(ttfa, nt, sizeof(double), cmp);
    qsort(hs, nh, sizeof(double), cmp);
    printf("starts sessions=%d spread_ms=%.1f connected=%d answered=%d within_5s=%d "
           "within_60s=%d last_s=%.3f ok=%d other=%d lost=%d handshake_p50_ms=%.1f "
           "handshake_p99_ms=%.1f first_answer_p50_ms=%.1f first_answer_p99_ms=%.1f "
           "cpu_s=%.3f\n",
           n, (last_start - t0) * 1000, connected, answered, w5, w60,
           answered ? last_answer - t0 : 0, nok, nother, nlost, pct(hs, nh, 50) * 1000,
           pct(hs, nh, 99) * 1000, pct(ttfa, nt, 50) * 1000, pct(ttfa, nt, 99) * 1000, cpu);
    fflush(stdout);
    free(ttfa);
    free(hs);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static size_t read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

/*
 * The burst from nforks processes: each makes its share of the sessions at
 * the same instant t0 (CLOCK_MONOTONIC is shared), drives them, and sends its
 * records back through a pipe.
 */
static int burst_forked(const coap_address_t *dst, int nforks, double timeout)
{
    pid_t pids[64];
    int fds[64];
    double t0 = now() + 0.3 + 0.002 * nsessions / nforks;
    fflush(stdout);
    for (int k = 0; k < nforks; k++) {
        int p[2];
        if (pipe(p) < 0)
            return -1;
        pids[k] = fork();
        if (pids[k] < 0)
            return -1;
        if (pids[k] == 0) {
            close(p[0]);
            int lo = nsessions * k / nforks, hi = nsessions * (k + 1) / nforks;
            coap_context_t *ctx = new_context();
            if (!ctx)
                _exit(1);
            struct timespec ts = { (time_t)t0, (long)((t0 - (double)(time_t)t0) * 1e9) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            int rc = run(ctx, dst, lo, hi, t0, 0, t0 + timeout, 0, 0);
            for (int i = lo; i < hi; i++)
                if (write_all(p[1], &devs[i].r, sizeof(devs[i].r)) < 0)
                    rc = -1;
            close(p[1]);
            _exit(rc == 0 ? 0 : 1);
        }
        close(p[1]);
        fds[k] = p[0];
    }
    struct rec *recs = calloc((size_t)nsessions, sizeof(*recs));
    int rc = 0;
    for (int k = 0; k < nforks; k++) {
        int lo = nsessions * k / nforks, hi = nsessions * (k + 1) / nforks;
        size_t want = (size_t)(hi - lo) * sizeof(*recs);
        if (read_all(fds[k], recs + lo, want) != want)
            rc = -1;
        close(fds[k]);
        int status;
        waitpid(pids[k], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            rc = -1;
    }
    int answered = 0, nok = 0, nother = 0, nlost = 0;
    for (int i = 0; i < nsessions; i++) {
        answered += recs[i].ok + recs[i].other;
        nok += recs[i].ok;
        nother += recs[i].other;
        nlost += recs[i].lost;
    }
    printf("processes count=%d\n", nforks);
    report_starts(recs, nsessions, cpu_self() + cpu_children());
    printf("done sessions=%d answered=%d ok=%d other=%d lost=%d cpu_s=%.3f\n", nsessions, answered,
           nok, nother, nlost, cpu_self() + cpu_children());
    for (int i = 0; i < nsessions; i++)
        if (recs[i].other)
            rc = -1;
    free(recs);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: coap_load [-m put|post] [-U PATH] [-a CODES] [-s SECONDS [-c]] "
                    "[-b [-f N]] [-r RATE] [-i] [-t SECONDS]\n"
                    "                 HOST PORT SESSIONS COUNT [PREFIX [PATH_PREFIX "
                    "PATH_SUFFIX]]\n");
}

int main(int argc, char **argv)
{
    double window = 0, rate = 0, timeout = 120;
    int keep_going = 0, burst = 0, nforks = 1, idle = 0, opt;
    static char fixed_buf[256];
    while ((opt = getopt(argc, argv, "m:U:a:s:cbf:r:it:")) != -1) {
        switch (opt) {
        case 'm':
            if (!strcasecmp(optarg, "put"))
                method = COAP_REQUEST_CODE_PUT;
            else if (!strcasecmp(optarg, "post"))
                method = COAP_REQUEST_CODE_POST;
            else
                return usage(), 2;
            break;
        case 'U':
            snprintf(fixed_buf, sizeof(fixed_buf), "%s", optarg);
            for (char *s = strtok(fixed_buf, "/"); s && nfixed < MAX_SEGMENTS;
                 s = strtok(NULL, "/"))
                fixed[nfixed++] = s;
            break;
        case 'a':
            if (parse_codes(optarg) < 0)
                return usage(), 2;
            break;
        case 's':
            window = atof(optarg);
            endless = 1;
            break;
        case 'c':
            keep_going = 1;
            break;
        case 'b':
            burst = 1;
            break;
        case 'f':
            nforks = atoi(optarg);
            break;
        case 'r':
            rate = atof(optarg);
            break;
        case 'i':
            idle = 1;
            break;
        case 't':
            timeout = atof(optarg);
            break;
        default:
            return usage(), 2;
        }
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < 5)
        return usage(), 2;
    const char *host = argv[1], *prefix = argc > 5 ? argv[5] : "bike-";
    int port = atoi(argv[2]);
    nsessions = atoi(argv[3]);
    count = atoi(argv[4]);
    if (argc > 7) {
        path_prefix = argv[6];
        path_suffix = argv[7];
    }
    if (nsessions < 1 || nsessions > MAX_SESSIONS || count < 1 || nforks < 1 || nforks > 64 ||
        (nforks > 1 && (!burst || window > 0 || idle)))
        return usage(), 2;
    raise_nofile();
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: the wait in libcoap returns */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    devs = calloc((size_t)nsessions, sizeof(*devs));
    for (int i = 0; i < nsessions; i++) {
        snprintf(devs[i].identity, sizeof(devs[i].identity), "%s%d", prefix, i);
        snprintf(devs[i].key, sizeof(devs[i].key), "key-%s", devs[i].identity);
    }
    coap_startup();
    coap_set_log_level(LOG_EMERG);
    coap_address_t dst;
    coap_address_init(&dst);
    dst.addr.sin.sin_family = AF_INET;
    dst.addr.sin.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &dst.addr.sin.sin_addr);
    dst.size = sizeof(dst.addr.sin);

    if (nforks > 1) {
        int rc = burst_forked(&dst, nforks, timeout);
        free(devs);
        coap_cleanup();
        return rc == 0 ? 0 : 1;
    }
    coap_context_t *ctx = new_context();
    if (!ctx)
        return 1;
    if (!window)
        lat_cap = 0, in_window = 1; /* the whole run's latencies */
    double t0 = now(), cpu0 = cpu_self();
    int rc = run(ctx, &dst, 0, nsessions, t0, rate, t0 + timeout, window, keep_going);
    double elapsed = now() - t0;
    int answered_all = first_answers >= nsessions;

    if (burst || rate > 0) {
        struct rec *recs = calloc((size_t)nsessions, sizeof(*recs));
        for (int i = 0; i < nsessions; i++)
            recs[i] = devs[i].r;
        printf("processes count=1\n");
        report_starts(recs, nsessions, cpu_self() - cpu0);
        free(recs);
    } else if (!window) {
        qsort(lat, nlat, sizeof(*lat), cmp);
        printf("sessions %d, requests %d, 2.04 %ld, other %ld, in %.2f s\n", nsessions,
               nsessions * count, ok, other, elapsed);
        printf("throughput %.0f requests/s (handshakes included)\n",
               (double)(ok + other) / elapsed);
        if (nlat)
            printf("latency ms: p50 %.2f, p99 %.2f, max %.2f\n", lat[nlat / 2] * 1000,
                   lat[nlat * 99 / 100] * 1000, lat[nlat - 1] * 1000);
    }
    if (idle && rc == 0)
        hold(ctx);
    printf("done sessions=%d answered=%ld ok=%ld other=%ld lost=%ld seconds=%.3f cpu_s=%.3f\n",
           nsessions, ok + other, ok, other, lost, elapsed, cpu_self() - cpu0);
    fflush(stdout);
    for (int i = 0; i < nsessions; i++)
        if (devs[i].session)
            coap_session_release(devs[i].session);
    coap_free_context(ctx);
    coap_cleanup();
    free(lat);
    free(devs);
    if (rc < 0 || other)
        return 1;
    if (window)
        return answered_all ? 0 : 1;
    return (burst || rate > 0 || (finished == nsessions && lost == 0)) ? 0 : 1;
}
