/*
 * gw_file_write(): a file written whole or not at all, mode 0600, the
 * temporary file never left behind.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/tandem-file-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(file, .init = setup, .fini = teardown);

/* Entries of dir besides . and .. */
static int entries(const char *path)
{
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static size_t slurp(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    ssize_t n = read(fd, buf, size);
    close(fd);
    cr_assert_geq(n, 0);
    return (size_t)n;
}

Test(file, writes_the_pieces_with_mode_0600)
{
    char path[128], buf[64];
    snprintf(path, sizeof(path), "%s/state", dir);
    struct iovec iov[3] = { { "hello", 5 }, { ", ", 2 }, { "world", 5 } };
    umask(022);
    cr_assert_eq(gw_file_write(path, iov, 3, 0), 0);
    cr_assert_eq(slurp(path, buf, sizeof(buf)), 12);
    cr_assert_arr_eq(buf, "hello, world", 12);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq(entries(dir), 1, "no temporary file left");
}

Test(file, replaces_the_old_content_whole)
{
    char path[128], buf[64];
    snprintf(path, sizeof(path), "%s/state", dir);
    struct iovec a = { "a much longer old content", 25 }, b = { "new", 3 };
    cr_assert_eq(gw_file_write(path, &a, 1, GW_FILE_SYNC), 0);
    cr_assert_eq(gw_file_write(path, &b, 1, GW_FILE_SYNC | GW_FILE_SYNC_DIR), 0);
    cr_assert_eq(slurp(path, buf, sizeof(buf)), 3, "not the old tail");
    cr_assert_arr_eq(buf, "new", 3);
    cr_assert_eq(entries(dir), 1);
}

Test(file, an_empty_file)
{
    char path[128], buf[8];
    snprintf(path, sizeof(path), "%s/empty", dir);
    cr_assert_eq(gw_file_write(path, NULL, 0, GW_FILE_SYNC_DIR), 0);
    cr_assert_eq(slurp(path, buf, sizeof(buf)), 0);
}

Test(file, a_missing_folder_fails_and_leaves_nothing)
{
    char path[256], missing[128];
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    snprintf(path, sizeof(path), "%s/state", missing);
    struct iovec iov = { "x", 1 };
    cr_assert_eq(gw_file_write(path, &iov, 1, GW_FILE_SYNC), -ENOENT);
    cr_assert_eq(entries(dir), 0, "nothing made");
}

Test(file, a_failed_rename_removes_the_temporary_and_keeps_the_target)
{
    /* The target is a non-empty folder: the rename over it fails. */
    char path[128], inner[160];
    snprintf(path, sizeof(path), "%s/state", dir);
    cr_assert_eq(mkdir(path, 0700), 0);
    snprintf(inner, sizeof(inner), "%s/keep", path);
    struct iovec iov = { "x", 1 };
    cr_assert_eq(gw_file_write(inner, &iov, 1, 0), 0);
    int rc = gw_file_write(path, &iov, 1, 0);
    cr_assert_lt(rc, 0);
    cr_assert(rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST, "rc %d", rc);
    cr_assert_eq(entries(dir), 1, "the temporary file is removed");
    struct stat st;
    cr_assert_eq(stat(inner, &st), 0, "the target untouched");
}

Test(file, a_name_too_long)
{
    char path[5000];
    memset(path, 'a', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    struct iovec iov = { "x", 1 };
    cr_assert_eq(gw_file_write(path, &iov, 1, 0), -ENAMETOOLONG);
}

Test(file, a_given_mode_whatever_the_umask)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/cert.pem", dir);
    struct iovec iov = { "pem", 3 };
    umask(077);
    cr_assert_eq(gw_file_write_mode(path, &iov, 1, 0, 0644), 0);
    umask(022);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0644);
}

Test(file, exclusive_never_replaces)
{
    char path[128], buf[16];
    snprintf(path, sizeof(path), "%s/ca.key", dir);
    struct iovec a = { "first", 5 }, b = { "second", 6 };
    cr_assert_eq(gw_file_write_mode(path, &a, 1, GW_FILE_EXCL | GW_FILE_SYNC, 0600), 0);
    cr_assert_eq(gw_file_write_mode(path, &b, 1, GW_FILE_EXCL | GW_FILE_SYNC, 0600), -EEXIST);
    cr_assert_eq(slurp(path, buf, sizeof(buf)), 5, "the first content stays");
    cr_assert_arr_eq(buf, "first", 5);
    cr_assert_eq(entries(dir), 1, "no temporary file left");
}
