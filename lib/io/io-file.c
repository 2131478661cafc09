/* SPDX-License-Identifier: MIT */
/*
 * io-file.c: the POSIX file backend.  pread/pwrite on one descriptor are
 * safe from many threads; holes are found with SEEK_DATA/SEEK_HOLE.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vimg-internal.h"

struct io_file {
    struct vimg_io io;
    int fd;
    char *path;
};

static int file_pread(struct vimg_io *io, void *buf, size_t count,
                      uint64_t off)
{
    struct io_file *f = (struct io_file *)io;
    uint8_t *p = buf;

    while (count > 0) {
        ssize_t n = pread(f->fd, p, count, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int err = -errno;
            return vimg_error(err, "%s: read of %zu bytes at 0x%llx failed: %s",
                              f->path, count, (unsigned long long)off,
                              strerror(-err));
        }
        if (n == 0) {
            memset(p, 0, count); /* past end of file reads as zeroes */
            return 0;
        }
        p += n;
        count -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int file_pwrite(struct vimg_io *io, const void *buf, size_t count,
                       uint64_t off)
{
    struct io_file *f = (struct io_file *)io;
    const uint8_t *p = buf;

    while (count > 0) {
        ssize_t n = pwrite(f->fd, p, count, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            int err = -errno;
            return vimg_error(err,
                              "%s: write of %zu bytes at 0x%llx failed: %s",
                              f->path, count, (unsigned long long)off,
                              strerror(-err));
        }
        p += n;
        count -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int file_flush(struct vimg_io *io)
{
    struct io_file *f = (struct io_file *)io;

    if (fdatasync(f->fd) < 0) {
        int err = -errno;
        return vimg_error(err, "%s: flush failed: %s", f->path,
                          strerror(-err));
    }
    return 0;
}

static int file_get_size(struct vimg_io *io, uint64_t *out)
{
    struct io_file *f = (struct io_file *)io;
    struct stat st;

    if (io->is_device) {
        uint64_t bytes = 0;
        if (ioctl(f->fd, BLKGETSIZE64, &bytes) < 0) {
            int err = -errno;
            return vimg_error(err, "%s: cannot get the device size: %s",
                              f->path, strerror(-err));
        }
        *out = bytes;
        return 0;
    }
    if (fstat(f->fd, &st) < 0) {
        int err = -errno;
        return vimg_error(err, "%s: stat failed: %s", f->path, strerror(-err));
    }
    *out = (uint64_t)st.st_size;
    return 0;
}

static int file_truncate(struct vimg_io *io, uint64_t size)
{
    struct io_file *f = (struct io_file *)io;

    if (io->is_device) {
        /* a device keeps its size: it only has to be large enough */
        uint64_t have = 0;
        int ret = file_get_size(io, &have);
        if (ret == 0 && size > have) {
            ret = vimg_error(-EINVAL, "%s: cannot grow a device of %llu "
                                      "bytes to %llu bytes",
                             f->path, (unsigned long long)have,
                             (unsigned long long)size);
        }
        return ret;
    }
    if (ftruncate(f->fd, (off_t)size) < 0) {
        int err = -errno;
        return vimg_error(err, "%s: cannot resize to %llu bytes: %s", f->path,
                          (unsigned long long)size, strerror(-err));
    }
    return 0;
}

static int file_data_status(struct vimg_io *io, uint64_t off, uint64_t len,
                            uint64_t *len_out)
{
    struct io_file *f = (struct io_file *)io;
    off_t data = lseek(f->fd, (off_t)off, SEEK_DATA);

    if (data < 0) {
        if (errno == ENXIO) {
            /* OFF is in a hole that runs to the end of the file */
            *len_out = len;
            return 0;
        }
        *len_out = len; /* no hole support: everything is data */
        return 1;
    }
    if ((uint64_t)data > off) {
        *len_out = VIMG_MIN(len, (uint64_t)data - off);
        return 0;
    }
    off_t hole = lseek(f->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        *len_out = len;
        return 1;
    }
    *len_out = VIMG_MIN(len, (uint64_t)hole - off);
    return 1;
}

static int file_allocated_size(struct vimg_io *io, uint64_t *out)
{
    struct io_file *f = (struct io_file *)io;
    struct stat st;

    if (fstat(f->fd, &st) < 0) {
        return -errno;
    }
    *out = (uint64_t)st.st_blocks * 512;
    return 0;
}

static int file_fallocate(struct vimg_io *io, uint64_t off, uint64_t len)
{
    struct io_file *f = (struct io_file *)io;
    if (io->is_device) {
        /* as qemu-img: a device is all there already */
        return vimg_error(-ENOTSUP, "%s: preallocation is not supported on "
                                    "a block device",
                          f->path);
    }
    int err = posix_fallocate(f->fd, (off_t)off, (off_t)len);

    if (err) {
        return vimg_error(-err, "%s: cannot preallocate %llu bytes at 0x%llx: "
                                "%s",
                          f->path, (unsigned long long)len,
                          (unsigned long long)off, strerror(err));
    }
    return 0;
}

static int file_punch_hole(struct vimg_io *io, uint64_t off, uint64_t len)
{
    struct io_file *f = (struct io_file *)io;

    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) == 0) {
        return 0;
    }
    if (errno == EOPNOTSUPP || errno == ENOSYS) {
        return -ENOTSUP; /* no message: the caller falls back */
    }
    return vimg_error(-errno, "%s: cannot punch a hole of %llu bytes at "
                              "0x%llx: %s",
                      f->path, (unsigned long long)len,
                      (unsigned long long)off, strerror(errno));
}

/* A device's own write-zeroes (BLKZEROOUT); sectors only. */
static int file_zero_range(struct vimg_io *io, uint64_t off, uint64_t len)
{
    struct io_file *f = (struct io_file *)io;
    uint64_t range[2] = {off, len};

    if (!io->is_device || off % 512 || len % 512) {
        return -ENOTSUP;
    }
    if (ioctl(f->fd, BLKZEROOUT, range) == 0) {
        return 0;
    }
    if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) {
        return -ENOTSUP; /* no message: the caller writes zeroes */
    }
    return vimg_error(-errno, "%s: cannot zero %llu bytes at 0x%llx: %s",
                      f->path, (unsigned long long)len,
                      (unsigned long long)off, strerror(errno));
}

/* Punch a hole where IS_UNMAP allows it, else zero through the backend's
 * own command, else write zeroes. */
int vimg_io_zero(struct vimg_io *io, uint64_t off, uint64_t len,
                 bool is_unmap)
{
    static const uint8_t zero[64 * 1024];

    if (is_unmap && io->ops->punch_hole) {
        int ret = io->ops->punch_hole(io, off, len);
        if (ret != -ENOTSUP) {
            return ret;
        }
    }
    if (io->ops->zero_range) {
        int ret = io->ops->zero_range(io, off, len);
        if (ret != -ENOTSUP) {
            return ret;
        }
    }
    while (len > 0) {
        const size_t n = (size_t)VIMG_MIN(len, (uint64_t)sizeof(zero));
        int ret = vimg_io_pwrite(io, zero, n, off);
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static void file_close(struct vimg_io *io)
{
    struct io_file *f = (struct io_file *)io;

    close(f->fd);
    free(f->path);
    free(f);
}

static const struct vimg_io_ops file_ops = {
    .pread = file_pread,
    .pwrite = file_pwrite,
    .flush = file_flush,
    .get_size = file_get_size,
    .truncate = file_truncate,
    .data_status = file_data_status,
    .allocated_size = file_allocated_size,
    .fallocate = file_fallocate,
    .punch_hole = file_punch_hole,
    .zero_range = file_zero_range,
    .close = file_close,
};

/*
 * Refuse what cannot hold an image: directories, and pipes, FIFOs and
 * sockets, which cannot seek (read as empty, they would make an empty
 * image).  Then turn the O_NONBLOCK of the open off again.
 */
static int check_file_type(int fd, const char *path)
{
    struct stat st;

    if (fstat(fd, &st) < 0) {
        int err = -errno;
        return vimg_error(err, "%s: stat failed: %s", path, strerror(-err));
    }
    if (S_ISDIR(st.st_mode)) {
        return vimg_error(-EISDIR, "%s: is a directory", path);
    }
    if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
        return vimg_error(-ESPIPE, "%s: is a %s; vimg needs a seekable file "
                                   "(a regular file or a block device)",
                          path, S_ISFIFO(st.st_mode) ? "pipe or FIFO"
                                                     : "socket");
    }
    const int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int err = -errno;
        return vimg_error(err, "%s: %s", path, strerror(-err));
    }
    return 0;
}

int vimg_io_file_open(struct vimg_io **out, const char *path, bool writable,
                      bool create)
{
    int oflags = O_CLOEXEC;

    if (create) {
        oflags |= O_RDWR | O_CREAT | O_TRUNC;
    } else {
        oflags |= writable ? O_RDWR : O_RDONLY;
    }
    /* O_NONBLOCK: opening a FIFO must not wait for its other end */
    int fd = open(path, oflags | O_NONBLOCK, 0644);
    if (fd < 0) {
        int err = -errno;
        return vimg_error(err, "%s: %s", path, strerror(-err));
    }
    int ret = check_file_type(fd, path);
    if (ret < 0) {
        close(fd);
        return ret;
    }
    struct io_file *f = calloc(1, sizeof(*f));
    char *copy = strdup(path);
    if (!f || !copy) {
        free(f);
        free(copy);
        close(fd);
        return vimg_error(-ENOMEM, "out of memory");
    }
    struct stat st;
    f->io.ops = &file_ops;
    f->io.name = copy;
    f->io.is_device = fstat(fd, &st) == 0 && S_ISBLK(st.st_mode);
    f->fd = fd;
    f->path = copy;
    *out = &f->io;
    return 0;
}

int vimg_io_data_status(struct vimg_io *io, uint64_t off, uint64_t len,
                        uint64_t *len_out)
{
    if (!io->ops->data_status) {
        *len_out = len;
        return 1;
    }
    return io->ops->data_status(io, off, len, len_out);
}

int vimg_io_fallocate(struct vimg_io *io, uint64_t off, uint64_t len)
{
    if (!io->ops->fallocate) {
        return vimg_error(-ENOTSUP, "%s: preallocation is not supported",
                          io->name);
    }
    return io->ops->fallocate(io, off, len);
}

int vimg_io_allocated_size(struct vimg_io *io, uint64_t *out)
{
    if (!io->ops->allocated_size) {
        return vimg_io_get_size(io, out);
    }
    return io->ops->allocated_size(io, out);
}
