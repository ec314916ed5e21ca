/*
 * Log lines: what a peer sent cannot drive a terminal, break a line or
 * disguise it (control characters, broken UTF-8, invisible format characters).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* What one gw_log() call writes to stderr, NUL-terminated (static). */
static const char *logged(const char *fmt, const char *arg)
{
    static char buf[2048];
    char path[] = "/tmp/tandem-log-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    unlink(path);
    int saved = dup(STDERR_FILENO);
    cr_assert_geq(saved, 0);
    cr_assert_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    gw_log(GW_LOG_ERROR, GW_GRP_MQTT, fmt, arg);
    cr_assert_eq(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    cr_assert_geq(n, 0);
    buf[n] = '\0';
    return buf;
}

Test(log, control_characters_and_broken_utf8)
{
    cr_assert_str_eq(logged("topic %s", "a\x1b[2Jb\nc\td\x7f"), "error mqtt: topic a?[2Jb c d?\n");
    cr_assert_str_eq(logged("topic %s", "x\xc3(y\xc2\x85z"), "error mqtt: topic x?(y??z\n");
    /* Printable text beyond ASCII stays as it is. */
    cr_assert_str_eq(logged("%s", "v\xc3\xa9lo \xe2\x82\xac \xf0\x9f\x9a\xb2"),
                     "error mqtt: v\xc3\xa9lo \xe2\x82\xac \xf0\x9f\x9a\xb2\n");
}

Test(log, bidirectional_and_invisible_characters)
{
    /* Every bidirectional control: U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069. */
    static const char *const bidi[] = {
        "\xd8\x9c",     "\xe2\x80\x8e", "\xe2\x80\x8f", "\xe2\x80\xaa",
        "\xe2\x80\xab", "\xe2\x80\xac", "\xe2\x80\xad", "\xe2\x80\xae",
        "\xe2\x81\xa6", "\xe2\x81\xa7", "\xe2\x81\xa8", "\xe2\x81\xa9",
    };
    for (size_t i = 0; i < sizeof(bidi) / sizeof(bidi[0]); i++) {
        char text[32];
        snprintf(text, sizeof(text), "bike-1%sgpj.exe", bidi[i]);
        cr_assert_str_eq(logged("device %s", text), "error mqtt: device bike-1?gpj.exe\n",
                         "bidirectional control %zu", i);
    }
    /* Other format characters: zero width space and joiner, word joiner, BOM, soft
     * hyphen, line separator, tags. */
    cr_assert_str_eq(logged("%s", "a\xe2\x80\x8b"
                                  "b\xe2\x80\x8d"
                                  "c\xe2\x81\xa0"
                                  "d\xef\xbb\xbf"
                                  "e\xc2\xad"
                                  "f\xe2\x80\xa8"
                                  "g\xf3\xa0\x80\x81h"),
                     "error mqtt: a?b?c?d?e?f?g?h\n");
    /* Next to them, ordinary characters are kept. */
    cr_assert_str_eq(logged("%s", "\xe2\x80\xae\xe2\x80\x94\xe2\x80\xae"),
                     "error mqtt: ?\xe2\x80\x94?\n");
}
