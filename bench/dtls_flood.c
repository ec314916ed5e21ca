/*
 * dtls_flood: a ClientHello flood as a spoofing attacker sends it, for
 * Tandem's benchmark and tests.
 *
 *   dtls_flood HOST PORT RATE SECONDS [POOL]
 *
 * Sends RATE DTLS 1.2 ClientHellos a second (0: as fast as one core can) for
 * SECONDS, round-robin from POOL UDP sockets bound to ephemeral ports (1024 by
 * default), so that hellos come from POOL different source ports. A spoofing
 * attacker never sees the answers, so none is ever answered: each socket's
 * answers are only counted (read and dropped) before the socket's next hello.
 * Every hello has a fresh client random and no cookie. SIGTERM or SIGINT
 * ends the flood early. Prints one line of figures:
 *
 *   hellos=N bytes=B seconds=T rate=R answers=M answer_bytes=A not_sent=F
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A ClientHello like a constrained device's (PSK and ECDHE-ECDSA, CCM). */
static size_t client_hello(uint8_t *p, uint64_t *rng)
{
    static const uint8_t suites[] = { 0xc0, 0xa8, 0xc0, 0xae, 0xc0, 0xac, 0x00, 0xa8,
                                      0xc0, 0x2b, 0xc0, 0x23, 0x00, 0x8c, 0x00, 0xae };
    static const uint8_t ext[] = {
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x1d, /* supported groups */
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00,                         /* point formats */
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x05, 0x03, 0x08, 0x04, /* sig algs */
        0x00, 0x16, 0x00, 0x00, /* encrypt-then-MAC */
        0x00, 0x17, 0x00, 0x00
    }; /* extended master secret */
    size_t n = 25;
    p[n++] = 0xfe;
    p[n++] = 0xfd;
    for (int i = 0; i < 32; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        p[n++] = (uint8_t)*rng;
    }
    p[n++] = 0; /* session id */
    p[n++] = 0; /* cookie */
    p[n++] = 0;
    p[n++] = sizeof(suites);
    memcpy(p + n, suites, sizeof(suites));
    n += sizeof(suites);
    p[n++] = 1; /* compression: null */
    p[n++] = 0;
    p[n++] = 0;
    p[n++] = sizeof(ext);
    memcpy(p + n, ext, sizeof(ext));
    n += sizeof(ext);

    size_t body = n - 25, rec = n - 13;
    /* Record header: handshake, DTLS 1.0 (as clients do in the first hello), epoch 0. */
    const uint8_t head[13] = { 22,          0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, (uint8_t)(rec >> 8),
                               (uint8_t)rec };
    memcpy(p, head, sizeof(head));
    /* Handshake header: client_hello, length, message_seq 0, one fragment. */
    const uint8_t hs[12] = { 1, 0, (uint8_t)(body >> 8), (uint8_t)body, 0, 0, 0, 0,
                             0, 0, (uint8_t)(body >> 8), (uint8_t)body };
    memcpy(p + 13, hs, sizeof(hs));
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: dtls_flood HOST PORT RATE SECONDS [POOL]\n");
        return 2;
    }
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int pool = argc > 5 ? atoi(argv[5]) : 1024;
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1 || rate < 0 || seconds <= 0 || pool < 1) {
        fprintf(stderr, "dtls_flood: bad arguments\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)pool + 16) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)pool + 16 ? rl.rlim_max : (rlim_t)pool + 16;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int *fds = calloc((size_t)pool, sizeof(*fds));
    if (!fds)
        return 1;
    for (int i = 0; i < pool; i++) {
        struct sockaddr_in src = { .sin_family = AF_INET };
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&src, sizeof(src)) < 0) {
            fprintf(stderr, "dtls_flood: socket %d: %s\n", i, strerror(errno));
            return 1;
        }
    }

    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    uint8_t hello[256], in[2048];
    uint64_t rng = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL | 1, tried = 0, sent = 0, bytes = 0,
             answers = 0, answer_bytes = 0, refused = 0;
    double t0 = now(), end = t0 + seconds, t;
    int next = 0;
    while (!stop && (t = now()) < end) {
        uint64_t due = rate > 0 ? (uint64_t)((t - t0) * rate) + 1 : tried + 64;
        if (tried >= due) {
            struct timespec pause = { 0, 200000 };
            nanosleep(&pause, NULL);
            continue;
        }
        while (tried < due) {
            int fd = fds[next];
            next = (next + 1) % pool;
            ssize_t r;
            while ((r = recv(fd, in, sizeof(in), MSG_DONTWAIT)) >= 0) {
                answers++;
                answer_bytes += (uint64_t)r;
            }
            size_t n = client_hello(hello, &rng);
            if (sendto(fd, hello, n, 0, (struct sockaddr *)&dst, sizeof(dst)) == (ssize_t)n) {
                sent++;
                bytes += n;
            } else {
                refused++; /* a full buffer, or an ICMP error reported */
            }
            tried++;
        }
    }
    double elapsed = now() - t0;
    /* Answers still on their way. */
    struct timespec settle = { 0, 100000000 };
    nanosleep(&settle, NULL);
    for (int i = 0; i < pool; i++) {
        ssize_t r;
        while ((r = recv(fds[i], in, sizeof(in), MSG_DONTWAIT)) >= 0) {
            answers++;
            answer_bytes += (uint64_t)r;
        }
        close(fds[i]);
    }
    free(fds);
    printf("hellos=%llu bytes=%llu seconds=%.2f rate=%.0f answers=%llu answer_bytes=%llu "
           "not_sent=%llu\n",
           (unsigned long long)sent, (unsigned long long)bytes, elapsed, (double)sent / elapsed,
           (unsigned long long)answers, (unsigned long long)answer_bytes,
           (unsigned long long)refused);
    return 0;
}
