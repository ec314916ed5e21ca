#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_int current = GW_LOG_INFO;
static atomic_bool stamps;
static const char *const names[] = { "error", "warning", "info", "debug" };
static const char *const groups[GW_GRP_COUNT] = {
    [GW_GRP_GATEWAY] = "gateway", [GW_GRP_CONFIG] = "config", [GW_GRP_COAP] = "coap",
    [GW_GRP_DTLS] = "dtls",       [GW_GRP_MQTT] = "mqtt",     [GW_GRP_BRIDGE] = "bridge",
    [GW_GRP_DOWN] = "down",       [GW_GRP_STORE] = "store",   [GW_GRP_CONTROL] = "control",
    [GW_GRP_METRICS] = "metrics", [GW_GRP_TLS] = "tls",
};

const char *gw_log_group_name(gw_log_group_t group)
{
    return (unsigned)group < GW_GRP_COUNT ? groups[group] : "?";
}

void gw_log_set_level(int level)
{
    atomic_store(&current, level);
}

/* Whether stderr is the journal: systemd names its stream in JOURNAL_STREAM ("dev:ino"). */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void gw_log_set_timestamps(int mode)
{
    atomic_store(&stamps, mode == 1 || (mode == 0 && !stderr_is_journal()));
}

int gw_log_level(void)
{
    return atomic_load(&current);
}

/* Length of the well-formed UTF-8 sequence at p (2 to 4 bytes) with its code point, or 0. */
static size_t utf8_seq(const unsigned char *p, uint32_t *out)
{
    size_t need = (p[0] & 0xe0) == 0xc0   ? 1
                  : (p[0] & 0xf0) == 0xe0 ? 2
                  : (p[0] & 0xf8) == 0xf0 ? 3
                                          : 0;
    uint32_t cp = p[0] & (need == 1 ? 0x1f : need == 2 ? 0x0f : 0x07);
    static const uint32_t min[] = { 0, 0x80, 0x800, 0x10000 };
    if (!need)
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((p[k] & 0xc0) != 0x80) /* the NUL at the end stops this too */
            return 0;
        cp = cp << 6 | (p[k] & 0x3f);
    }
    if (cp < min[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
        (cp >= 0x80 && cp <= 0x9f))
        return 0;
    *out = cp;
    return need + 1;
}

/*
 * Characters that are not seen but change how the text around them is shown:
 * Unicode's format characters (category Cf), among them the bidirectional
 * controls (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069) that
 * can make a line read in another order than it was written, and the line and
 * paragraph separators.
 */
static bool invisible(uint32_t cp)
{
    static const uint32_t ranges[][2] = {
        { 0x00ad, 0x00ad },   { 0x0600, 0x0605 },   { 0x061c, 0x061c },   { 0x06dd, 0x06dd },
        { 0x070f, 0x070f },   { 0x0890, 0x0891 },   { 0x08e2, 0x08e2 },   { 0x180e, 0x180e },
        { 0x200b, 0x200f },   { 0x2028, 0x202e },   { 0x2060, 0x2064 },   { 0x2066, 0x206f },
        { 0xfeff, 0xfeff },   { 0xfff9, 0xfffb },   { 0x110bd, 0x110bd }, { 0x110cd, 0x110cd },
        { 0x13430, 0x1343f }, { 0x1bca0, 0x1bca3 }, { 0x1d173, 0x1d17a }, { 0xe0001, 0xe0001 },
        { 0xe0020, 0xe007f },
    };
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if (cp >= ranges[i][0] && cp <= ranges[i][1])
            return true;
    return false;
}

/*
 * One line per event, and nothing a device or a broker sent may drive a
 * terminal, break a log reader or disguise a line: control characters become
 * '?' (line breaks and tabs a space), and so do every byte that is not part
 * of well-formed UTF-8 and every invisible format character (one '?' each).
 */
static void sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s, *w = p;
    while (*p) {
        if (*p < 0x80) {
            if (*p < 0x20 || *p == 0x7f)
                *w++ = *p == '\n' || *p == '\r' || *p == '\t' ? ' ' : '?';
            else
                *w++ = *p;
            p++;
            continue;
        }
        uint32_t cp = 0;
        size_t n = utf8_seq(p, &cp);
        if (!n) {
            *w++ = '?';
            p++;
        } else if (invisible(cp)) {
            *w++ = '?';
            p += n;
        } else {
            memmove(w, p, n);
            w += n;
            p += n;
        }
    }
    *w = '\0';
}

/* Formats and writes one line; suffix (may be NULL) is appended. */
static void emit(int level, gw_log_group_t group, const char *suffix, const char *fmt, va_list ap)
{
    char line[1024];
    int n;

    n = 0;
    if (atomic_load(&stamps)) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ ", ts.tv_nsec / 1000000);
    }
    n += snprintf(line + n, sizeof(line) - (size_t)n, "%s %s: ", names[level],
                  gw_log_group_name(group));
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (suffix) {
        size_t len = strlen(line);
        snprintf(line + len, sizeof(line) - len - 1, "%s", suffix);
    }
    sanitize(line + n);
    size_t len = strlen(line);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void gw_log(int level, gw_log_group_t group, const char *fmt, ...)
{
    va_list ap;

    if (level > atomic_load(&current))
        return;
    va_start(ap, fmt);
    emit(level, group, NULL, fmt, ap);
    va_end(ap);
}

static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t limit_second; /* the second all_lines counts */
static unsigned all_lines;    /* limited lines of every kind written in it */
static uint64_t all_suppressed;

static uint64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

/* With limit_lock held: decides whether a limited line is written, given its own window's count
 * (lines, at most limit in the window) and the whole log's per-second budget. A line written
 * carries in suffix how many were held back since the last one; a line held back is counted. */
static bool admit_locked(unsigned *lines, unsigned limit, uint64_t *suppressed, uint64_t now,
                         char *suffix, size_t size)
{
    if (limit_second != now) {
        limit_second = now;
        all_lines = 0;
    }
    if (*lines >= limit || all_lines >= GW_LOG_LIMITED_PER_S) {
        (*suppressed)++;
        all_suppressed++;
        return false;
    }
    (*lines)++;
    all_lines++;
    if (*suppressed)
        snprintf(suffix, size, " (%llu similar lines suppressed)", (unsigned long long)*suppressed);
    *suppressed = 0;
    return true;
}

void gw_log_rl(gw_log_kind_t *kind, int level, gw_log_group_t group, const char *fmt, ...)
{
    char suffix[64] = "";
    va_list ap;

    if (level > atomic_load(&current))
        return;
    uint64_t now = now_s();
    pthread_mutex_lock(&limit_lock);
    if (kind->second != now) {
        kind->second = now;
        kind->lines = 0;
    }
    unsigned per_s = kind->per_s ? kind->per_s : GW_LOG_KIND_PER_S;
    bool write_it =
        admit_locked(&kind->lines, per_s, &kind->suppressed, now, suffix, sizeof(suffix));
    pthread_mutex_unlock(&limit_lock);
    if (!write_it)
        return;
    va_start(ap, fmt);
    emit(level, group, *suffix ? suffix : NULL, fmt, ap);
    va_end(ap);
}

#define PEER_SLOTS 256

static struct peer_slot {
    uint8_t addr[16];
    uint64_t minute;     /* the minute lines counts */
    unsigned lines;      /* lines written in that minute */
    uint64_t suppressed; /* held back since the last line written */
} peer_slots[PEER_SLOTS];

void gw_log_peer(const struct sockaddr *peer, int level, gw_log_group_t group, const char *fmt, ...)
{
    char suffix[64] = "";
    uint8_t addr[16] = { 0 };
    va_list ap;

    if (level > atomic_load(&current))
        return;
    if (peer && peer->sa_family == AF_INET6)
        memcpy(addr, &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr, 16);
    else if (peer && peer->sa_family == AF_INET)
        memcpy(addr, &((const struct sockaddr_in *)(const void *)peer)->sin_addr, 4);
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < sizeof(addr); i++)
        h = (h ^ addr[i]) * 16777619u;
    struct peer_slot *slot = &peer_slots[h % PEER_SLOTS];
    uint64_t now = now_s();
    pthread_mutex_lock(&limit_lock);
    if (memcmp(slot->addr, addr, sizeof(addr)) || slot->minute != now / 60) {
        if (memcmp(slot->addr, addr, sizeof(addr)))
            slot->suppressed = 0;
        memcpy(slot->addr, addr, sizeof(addr));
        slot->minute = now / 60;
        slot->lines = 0;
    }
    bool write_it = admit_locked(&slot->lines, GW_LOG_PEER_PER_MIN, &slot->suppressed, now, suffix,
                                 sizeof(suffix));
    pthread_mutex_unlock(&limit_lock);
    if (!write_it)
        return;
    va_start(ap, fmt);
    emit(level, group, *suffix ? suffix : NULL, fmt, ap);
    va_end(ap);
}

uint64_t gw_log_suppressed(void)
{
    pthread_mutex_lock(&limit_lock);
    uint64_t n = all_suppressed;
    pthread_mutex_unlock(&limit_lock);
    return n;
}
