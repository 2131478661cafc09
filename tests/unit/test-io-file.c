/* SPDX-License-Identifier: MIT */
/*
 * test-io-file.c: the POSIX file backend on temporary files: reads past
 * the end of file give zeroes, writes, size, truncate, open errors, and
 * holes of a sparse file reported by data_status, and image locks (two
 * opens of one file are two open file descriptions, so they lock each
 * other out as two processes would).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "unit.h"

struct tmp {
    char path[256];
};

static int setup(void **state)
{
    struct tmp *t = calloc(1, sizeof(*t));
    const char *dir = getenv("TMPDIR");

    if (!t) {
        return -1;
    }
    snprintf(t->path, sizeof(t->path), "%s/vimg-test-io-file-XXXXXX",
             dir && *dir ? dir : "/tmp");
    const int fd = mkstemp(t->path);
    if (fd < 0) {
        free(t);
        return -1;
    }
    close(fd);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct tmp *t = *state;

    unlink(t->path);
    free(t);
    return 0;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void test_read_past_eof(void **state)
{
    struct tmp *t = *state;
    struct vimg_io *io = NULL;
    uint8_t buf[64];
    uint64_t size = 0;

    write_file(t->path, "abcdefghij", 10);
    assert_int_equal(vimg_io_file_open(&io, t->path, false, false), 0);
    assert_string_equal(io->name, t->path);
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 10);

    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 10, 0), 0);
    assert_memory_equal(buf, "abcdefghij", 10);
    assert_int_equal(buf[10], 0xee);

    /* straddling the end */
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 32, 6), 0);
    assert_memory_equal(buf, "ghij", 4);
    for (int i = 4; i < 32; i++) {
        assert_int_equal(buf[i], 0);
    }
    assert_int_equal(buf[32], 0xee);

    /* wholly past the end */
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 64, 1 << 20), 0);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(buf[i], 0);
    }

    /* read-only: writing fails with the system's errno and a message */
    vimg_error_clear();
    assert_error(vimg_io_pwrite(io, "x", 1, 0), -EBADF, t->path);
    vimg_io_close(io);
}

static void test_write_truncate(void **state)
{
    struct tmp *t = *state;
    struct vimg_io *io = NULL;
    uint8_t buf[16];
    uint64_t size = 0;

    /* create truncates an existing file */
    write_file(t->path, "old contents", 12);
    assert_int_equal(vimg_io_file_open(&io, t->path, true, true), 0);
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 0);

    assert_int_equal(vimg_io_pwrite(io, "hello", 5, 100), 0);
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 105);
    assert_int_equal(vimg_io_flush(io), 0);
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 8, 98), 0);
    assert_memory_equal(buf, "\0\0hello\0", 8);

    assert_int_equal(vimg_io_truncate(io, 102), 0);
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 102);
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 8, 98), 0);
    assert_memory_equal(buf, "\0\0he\0\0\0\0", 8);
    uint64_t allocated = 0;
    assert_int_equal(vimg_io_allocated_size(io, &allocated), 0);
    vimg_io_close(io);

    /* what was written is in the file */
    struct stat st;
    assert_int_equal(stat(t->path, &st), 0);
    assert_int_equal(st.st_size, 102);
}

static void test_open_errors(void **state)
{
    struct tmp *t = *state;
    struct vimg_io *io = NULL;
    char missing[300];

    snprintf(missing, sizeof(missing), "%s.missing", t->path);
    vimg_error_clear();
    assert_error(vimg_io_file_open(&io, missing, false, false), -ENOENT,
                 "no such file");
    /* the message names the file */
    assert_non_null(strstr(vimg_last_error(), missing));
    assert_null(io);

    /* a directory is not an image */
    char dir[300];
    snprintf(dir, sizeof(dir), "%s", t->path);
    char *slash = strrchr(dir, '/');
    assert_non_null(slash);
    *slash = '\0';
    vimg_error_clear();
    assert_error(vimg_io_file_open(&io, dir, false, false), -EISDIR,
                 "directory");
    assert_null(io);
}

/* Does the file system under PATH report holes? */
static bool has_holes(const char *path, off_t data_at)
{
    const int fd = open(path, O_RDONLY);

    if (fd < 0) {
        return false;
    }
    const off_t data = lseek(fd, 0, SEEK_DATA);
    close(fd);
    return data == data_at;
}

static void test_data_status(void **state)
{
    struct tmp *t = *state;
    const off_t mib = 1 << 20;
    uint8_t block[65536];
    uint64_t n = 0;

    /* 4 MiB: a hole, 64 KiB of data at 1 MiB, a hole to the end */
    const int fd = open(t->path, O_RDWR | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4 * mib), 0);
    memset(block, 0x42, sizeof(block));
    assert_int_equal(pwrite(fd, block, sizeof(block), mib),
                     (ssize_t)sizeof(block));
    assert_int_equal(fsync(fd), 0);
    close(fd);

    struct vimg_io *io = NULL;
    assert_int_equal(vimg_io_file_open(&io, t->path, false, false), 0);

    /* whatever the file system, reads are right */
    uint8_t buf[16];
    assert_int_equal(vimg_io_pread(io, buf, sizeof(buf), mib - 8), 0);
    assert_memory_equal(buf, "\0\0\0\0\0\0\0\0\x42\x42\x42\x42\x42\x42\x42\x42",
                        16);

    if (!has_holes(t->path, mib)) {
        /* no SEEK_DATA/SEEK_HOLE here: all data is the honest answer */
        assert_int_equal(vimg_io_data_status(io, 0, 4 * mib, &n), 1);
        vimg_io_close(io);
        skip();
    }
    /* the leading hole, up to the data */
    assert_int_equal(vimg_io_data_status(io, 0, 4 * mib, &n), 0);
    assert_int_equal(n, mib);
    /* asked for less than the hole */
    assert_int_equal(vimg_io_data_status(io, 4096, 8192, &n), 0);
    assert_int_equal(n, 8192);
    /* the data, up to the next hole */
    assert_int_equal(vimg_io_data_status(io, mib, 4 * mib, &n), 1);
    assert_int_equal(n, 65536);
    assert_int_equal(vimg_io_data_status(io, mib + 4096, 4 * mib, &n), 1);
    assert_int_equal(n, 65536 - 4096);
    assert_int_equal(vimg_io_data_status(io, mib, 512, &n), 1);
    assert_int_equal(n, 512);
    /* the hole that runs to the end of the file */
    assert_int_equal(vimg_io_data_status(io, 2 * mib, 2 * mib, &n), 0);
    assert_int_equal(n, 2 * mib);
    assert_int_equal(vimg_io_data_status(io, 2 * mib, 100, &n), 0);
    assert_int_equal(n, 100);
    /* the file is sparse */
    uint64_t allocated = 0;
    assert_int_equal(vimg_io_allocated_size(io, &allocated), 0);
    assert_true(allocated >= 65536 && allocated < (uint64_t)mib);
    vimg_io_close(io);
}

/* Which of bytes 100-103 (bits 0-3) and 200-203 (bits 4-7) someone else
 * than a fresh descriptor has locked. */
static unsigned locked_bytes(const char *path)
{
    const int fd = open(path, O_RDONLY);
    unsigned bits = 0;

    assert_true(fd >= 0);
    for (int i = 0; i < 8; i++) {
        struct flock fl = {.l_type = F_WRLCK,
                           .l_whence = SEEK_SET,
                           .l_start = (i < 4 ? 100 : 196) + i,
                           .l_len = 1};
        assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
        if (fl.l_type != F_UNLCK) {
            bits |= 1u << i;
        }
    }
    close(fd);
    return bits;
}

static void test_lock(void **state)
{
    struct tmp *t = *state;
    struct vimg_io *a = NULL, *b = NULL, *c = NULL;
    const unsigned rw = VIMG_PERM_CONSISTENT_READ | VIMG_PERM_WRITE |
                        VIMG_PERM_RESIZE;
    const unsigned no_writers =
        VIMG_PERM_ALL & ~(VIMG_PERM_WRITE | VIMG_PERM_RESIZE);

    assert_int_equal(vimg_io_file_open(&a, t->path, true, false), 0);
    assert_int_equal(vimg_io_file_open(&b, t->path, false, false), 0);
    assert_int_equal(vimg_io_file_open(&c, t->path, false, false), 0);
    assert_int_equal(locked_bytes(t->path), 0);

    /* a writer that lets nobody else write or resize: qemu's bytes */
    assert_int_equal(vimg_io_lock(a, rw, no_writers), 0);
    assert_int_equal(locked_bytes(t->path), 0x1 | 0x2 | 0x8 | 0x20 | 0x80);
    assert_int_equal(a->lock_perm, rw);
    assert_int_equal(a->lock_shared, no_writers);

    /* a reader sharing everything gets in */
    assert_int_equal(vimg_io_lock(b, VIMG_PERM_CONSISTENT_READ,
                                  VIMG_PERM_ALL),
                     0);
    /* a second writer does not, and keeps what it held */
    assert_int_equal(vimg_io_lock(b, rw, no_writers), -EAGAIN);
    assert_non_null(strstr(vimg_last_error(), "Failed to get \"write\" lock"));
    assert_non_null(strstr(vimg_last_error(), "Is another process using"));
    assert_int_equal(b->lock_perm, VIMG_PERM_CONSISTENT_READ);
    /* a reader that wants no writers is refused the sharing */
    assert_int_equal(vimg_io_lock(c, VIMG_PERM_CONSISTENT_READ, no_writers),
                     -EAGAIN);
    assert_non_null(strstr(vimg_last_error(),
                           "Failed to get shared \"write\" lock"));
    assert_int_equal(c->lock_perm, 0);

    /* creating over the held file fails and truncates nothing */
    assert_int_equal(vimg_io_pwrite(a, "data", 4, 0), 0);
    struct vimg_io *d = NULL;
    assert_int_equal(vimg_io_file_open(&d, t->path, true, true), -EAGAIN);
    assert_null(d);
    struct stat st;
    assert_int_equal(stat(t->path, &st), 0);
    assert_int_equal(st.st_size, 4);

    /* the writer downgrades to a plain reader: the others get in */
    assert_int_equal(vimg_io_lock(a, VIMG_PERM_CONSISTENT_READ,
                                  VIMG_PERM_ALL),
                     0);
    assert_int_equal(vimg_io_lock(b, rw, no_writers), 0);
    assert_int_equal(locked_bytes(t->path), 0x1 | 0x2 | 0x8 | 0x20 | 0x80);
    /* closing drops every lock */
    vimg_io_close(b);
    vimg_io_close(a);
    assert_int_equal(locked_bytes(t->path), 0);
    assert_int_equal(vimg_io_lock(c, rw, no_writers), 0);
    vimg_io_close(c);

    /* a create holds write and resize; nobody else resizes */
    assert_int_equal(vimg_io_file_open(&d, t->path, true, true), 0);
    assert_int_equal(locked_bytes(t->path), 0x2 | 0x8 | 0x80);
    assert_int_equal(stat(t->path, &st), 0);
    assert_int_equal(st.st_size, 0);
    vimg_io_close(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_past_eof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_truncate, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
