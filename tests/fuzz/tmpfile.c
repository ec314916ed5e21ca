/*
 * Input written to a file in a folder of its own: one folder per process
 * (creating and removing a folder per input costs milliseconds on ext4),
 * made on first use, emptied after each input, removed at exit. A crash
 * leaves at most the folder and the input in it.
 */
#include "fuzz.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

static char dir[PATH_MAX];

static void dir_remove(void)
{
    rmdir(dir);
}

static int dir_make(void)
{
    const char *tmp = getenv("TMPDIR");
    int n = snprintf(dir, sizeof(dir), "%s/tandem-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (n < 0 || (size_t)n >= sizeof(dir) || !mkdtemp(dir)) {
        dir[0] = '\0';
        return -1;
    }
    atexit(dir_remove);
    return 0;
}

int fuzz_file_new(const uint8_t *data, size_t size, const char *name, char *path, size_t len)
{
    if (!dir[0] && dir_make() < 0)
        return -1;
    int n = snprintf(path, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, data + done, size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(fd);
            unlink(path);
            return -1;
        }
        done += (size_t)w;
    }
    if (close(fd) < 0) {
        unlink(path);
        return -1;
    }
    return 0;
}

void fuzz_file_remove(const char *path)
{
    unlink(path);
}
