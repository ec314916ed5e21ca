/*
 * What the fuzz targets share: libFuzzer's entry point, and input written to
 * a file for the parsers that read files.
 */
#ifndef TANDEM_FUZZ_H
#define TANDEM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* libFuzzer calls this once per input; replay.c does the same outside libFuzzer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * An invariant of Tandem's code: when it does not hold, the input is a
 * reproducer. abort() makes libFuzzer keep it and fails the replay.
 */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/*
 * Writes size bytes at data to a file called name in a folder of the
 * process's own under $TMPDIR (or /tmp), where nothing else is, so that
 * relative paths in the input lead nowhere. path receives the file's path.
 * Returns 0, or -1 with errno set.
 */
int fuzz_file_new(const uint8_t *data, size_t size, const char *name, char *path, size_t len);

/* Removes the file made by fuzz_file_new(); the folder is removed at exit. */
void fuzz_file_remove(const char *path);

#endif
