/*
 * Files written whole or not at all: to a temporary name beside the target
 * (mode 0600), then renamed over it, so a reader or a crash sees the old
 * content or the new one, never half of it.
 */
#ifndef TANDEM_FILE_H
#define TANDEM_FILE_H

#include <sys/uio.h>

enum {
    GW_FILE_SYNC = 1,     /* fsync the content before the rename */
    GW_FILE_SYNC_DIR = 2, /* and the folder after it: the rename itself is durable */
    GW_FILE_EXCL = 4,     /* never replace: -EEXIST when path exists (linked, not renamed) */
};

/*
 * Writes the n pieces of iov to path as described above. 0, or a negative
 * errno-style code; on failure the temporary file is removed and path is
 * untouched.
 */
int gw_file_write(const char *path, const struct iovec *iov, int n, unsigned flags);

/* As gw_file_write, with the file's mode (exactly, whatever the umask). */
int gw_file_write_mode(const char *path, const struct iovec *iov, int n, unsigned flags,
                       unsigned mode);

#endif
