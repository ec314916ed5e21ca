#include "reading.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int bike_reading(char *buf, size_t n, const char *identity, unsigned long seq)
{
    /* A rider warming up then holding a steady effort, with a little wobble. */
    unsigned warm = seq < 30 ? (unsigned)seq : 30;
    unsigned wobble = (unsigned)((seq * 7) % 11);
    unsigned heart_rate = 95 + warm * 2 + wobble / 2;
    unsigned cadence = 70 + warm / 2 + wobble;
    unsigned power = 120 + warm * 3 + wobble * 4;
    int len = snprintf(buf, n,
                       "{\"bike\":\"%s\",\"seq\":%lu,\"heart_rate\":%u,\"cadence\":%u,"
                       "\"power_w\":%u}",
                       identity, seq, heart_rate, cadence, power);
    if (len < 0 || (size_t)len >= n)
        return -ENOSPC;
    return len;
}

int bike_render(char *out, size_t n, const char *tmpl, const char *identity)
{
    static const char var[] = "{identity}";
    size_t used = 0;
    while (*tmpl) {
        const char *piece = tmpl;
        size_t len = 1;
        if (!strncmp(tmpl, var, sizeof var - 1)) {
            piece = identity;
            len = strlen(identity);
            tmpl += sizeof var - 1;
        } else {
            tmpl++;
        }
        if (used + len >= n)
            return -ENOSPC;
        memcpy(out + used, piece, len);
        used += len;
    }
    if (used >= n)
        return -ENOSPC;
    out[used] = '\0';
    return 0;
}

long long bike_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
