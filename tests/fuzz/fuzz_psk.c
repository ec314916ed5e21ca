/*
 * Fuzz target: the PSK file parser, dtls_psk_load(). The input is the file.
 *
 * Checks: the file loads exactly when no error was reported; every error is
 * "PSKFILE:LINE: coap.dtls.psk_file: reason" with a line of the file; and each
 * identity loaded is one a device may have (map_identity_ok()), appears at
 * the start of a line of the file followed by ':', and appears once (the
 * store is sorted for its binary search).
 */
#include "fuzz.h"

#include <limits.h>
#include <string.h>

#include "config.h"
#include "dtls.h"
#include "mapping.h"

#define SETTING "coap.dtls.psk_file"

/* Lines as getline() sees them: a last line without '\n' counts. */
static size_t count_lines(const uint8_t *data, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < size; i++)
        n += data[i] == '\n';
    return n + (size && data[size - 1] != '\n');
}

/* True when some line of the file starts with identity and ':'. */
static bool starts_a_line(const uint8_t *data, size_t size, const char *id)
{
    size_t len = strlen(id);
    for (size_t i = 0; i + len < size; i++) {
        if ((i == 0 || data[i - 1] == '\n') && !memcmp(data + i, id, len) && data[i + len] == ':')
            return true;
    }
    return false;
}

static void check_errors(const gw_errs_t *errs, const char *path, size_t lines)
{
    size_t plen = strlen(path);
    FUZZ_CHECK(errs->text && errs->len == strlen(errs->text));
    unsigned count = 0;
    for (const char *l = errs->text; *l; count++) {
        const char *nl = strchr(l, '\n');
        FUZZ_CHECK(nl);
        FUZZ_CHECK(!strncmp(l, path, plen) && l[plen] == ':');
        char *end;
        unsigned long line = strtoul(l + plen + 1, &end, 10);
        FUZZ_CHECK(end > l + plen + 1 && line >= 1 && line <= lines);
        FUZZ_CHECK(!strncmp(end, ": " SETTING ": ", strlen(": " SETTING ": ")));
        l = nl + 1;
    }
    FUZZ_CHECK(count == errs->count);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[PATH_MAX];
    gw_errs_t errs = { 0 };

    if (fuzz_file_new(data, size, "psk.txt", path, sizeof(path)) < 0) {
        perror("fuzz_psk: temporary file");
        abort(); /* the machine, not Tandem: stop rather than report nothing */
    }
    dtls_psk_store_t *st = dtls_psk_load(path, SETTING, &errs);
    size_t lines = count_lines(data, size);
    if (!st) {
        FUZZ_CHECK(errs.count > 0);
        check_errors(&errs, path, lines);
    } else {
        FUZZ_CHECK(errs.count == 0);
        size_t n = dtls_psk_count(st);
        FUZZ_CHECK(n <= lines);
        FUZZ_CHECK(!dtls_psk_identity(st, n));
        const char *prev = NULL;
        for (size_t i = 0; i < n; i++) {
            const char *id = dtls_psk_identity(st, i);
            FUZZ_CHECK(id);
            size_t len = strlen(id);
            FUZZ_CHECK(map_identity_ok(id, len));
            FUZZ_CHECK(starts_a_line(data, size, id));
            if (prev) {
                size_t plen = strlen(prev), l = plen < len ? plen : len;
                int c = memcmp(prev, id, l);
                FUZZ_CHECK(c < 0 || (c == 0 && plen < len)); /* sorted, no duplicates */
            }
            prev = id;
        }
    }
    dtls_psk_free(st);
    gw_errs_clear(&errs);
    fuzz_file_remove(path);
    return 0;
}
