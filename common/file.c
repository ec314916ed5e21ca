#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* fsync of the folder that holds path. */
static int sync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else if ((size_t)(slash - path) < sizeof(dir))
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    else
        return -ENAMETOOLONG;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

int gw_file_write(const char *path, const struct iovec *iov, int n, unsigned flags)
{
    return gw_file_write_mode(path, iov, n, flags, 0600);
}

int gw_file_write_mode(const char *path, const struct iovec *iov, int n, unsigned flags,
                       unsigned mode)
{
    char tmp[PATH_MAX];
    size_t total = 0;
    int rc = 0;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    ssize_t w = fchmod(fd, mode) < 0 ? -1 : writev(fd, iov, n);
    if (w < 0)
        rc = -errno;
    else if ((size_t)w != total)
        rc = -EIO; /* a short write to a regular file: the disk is full */
    else if ((flags & GW_FILE_SYNC) && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && (flags & GW_FILE_EXCL)) {
        /* link() refuses an existing target, where rename() would replace it */
        if (link(tmp, path) < 0)
            rc = -errno;
        unlink(tmp);
        if (rc < 0)
            return rc;
    } else if (rc == 0 && rename(tmp, path) < 0) {
        rc = -errno;
    }
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    return (flags & GW_FILE_SYNC_DIR) ? sync_parent(path) : 0;
}
