/* SPDX-License-Identifier: MIT */
/*
 * io-file.c: the POSIX file backend.  pread/pwrite on one descriptor are
 * safe from many threads; holes are found with SEEK_DATA/SEEK_HOLE.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "util/vimg-util.h"

struct io_file {
    struct vimg_io io;
    int fd;
    char *path;
    /* lock bytes held: bit N for byte 100 + N, and for byte 200 + N */
    unsigned held_perm;
    unsigned held_unshared;
    bool has_no_ofd_locks; /* the file system refused them: never lock */
    /*
     * The last data region SEEK_HOLE found, [data_lo, data_hi) (empty if
     * equal): SEEK_HOLE looks for the next hole wherever it is, past the
     * range asked, so a dense file read chunk by chunk would be scanned
     * to its end for every chunk.  Only data is remembered, as qemu's
     * block-status cache does: data that became a hole meanwhile still
     * reads right.  Our own hole punching and truncation forget it.
     */
    pthread_mutex_t data_lock;
    uint64_t data_lo, data_hi;
};

static void forget_data_region(struct io_file *f)
{
    pthread_mutex_lock(&f->data_lock);
    f->data_lo = f->data_hi = 0;
    pthread_mutex_unlock(&f->data_lock);
}

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
    forget_data_region(f);
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

    pthread_mutex_lock(&f->data_lock);
    const uint64_t lo = f->data_lo, hi = f->data_hi;
    pthread_mutex_unlock(&f->data_lock);
    if (off >= lo && off < hi) {
        *len_out = VIMG_MIN(len, hi - off);
        return 1;
    }
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
    pthread_mutex_lock(&f->data_lock);
    f->data_lo = off;
    f->data_hi = (uint64_t)hole;
    pthread_mutex_unlock(&f->data_lock);
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

    forget_data_region(f);
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
    pthread_mutex_destroy(&f->data_lock);
    free(f->path);
    free(f);
}

/*
 * Image locks (see io.h): the byte offsets and names QEMU uses, so that
 * qemu, qemu-img and vimg see each other's locks.
 */
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[] = {"consistent read", "write",
                                         "write unchanged", "resize"};

static int set_lock_byte(int fd, short type, int byte)
{
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 if another open file description holds a lock on BYTE, else 0. */
static int lock_byte_is_taken(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

/* Make the bytes F holds exactly PERM (100 + N) and UNSHARED (200 + N);
 * on failure F->held_* say what is held. */
static int set_lock_bytes(struct io_file *f, unsigned perm, unsigned unshared)
{
    for (int n = 0; n < 4; n++) {
        const unsigned bit = 1u << n;
        unsigned *held[2] = {&f->held_perm, &f->held_unshared};
        const unsigned want[2] = {perm, unshared};
        const int base[2] = {LOCK_PERM_BASE, LOCK_SHARED_BASE};
        for (int i = 0; i < 2; i++) {
            if (!!(want[i] & bit) == !!(*held[i] & bit)) {
                continue;
            }
            const short type = (want[i] & bit) ? F_RDLCK : F_UNLCK;
            int ret = set_lock_byte(f->fd, type, base[i] + n);
            if (ret < 0) {
                return ret;
            }
            *held[i] ^= bit;
        }
    }
    return 0;
}

/* Is a lock of another process in the way of PERM and UNSHARED?  0, or
 * -EAGAIN with qemu's message. */
static int check_lock_conflicts(struct io_file *f, unsigned perm,
                                unsigned unshared)
{
    for (int pass = 0; pass < 2; pass++) {
        const unsigned bits = pass == 0 ? perm : unshared;
        const int base = pass == 0 ? LOCK_SHARED_BASE : LOCK_PERM_BASE;
        for (int n = 0; n < 4; n++) {
            if (!(bits & (1u << n))) {
                continue;
            }
            int ret = lock_byte_is_taken(f->fd, base + n);
            if (ret < 0) {
                return vimg_error(ret, "%s: cannot test lock byte %d: %s",
                                  f->path, base + n, strerror(-ret));
            }
            if (ret) {
                return vimg_error(-EAGAIN,
                                  "%s: Failed to get %s\"%s\" lock\nIs "
                                  "another process using the image [%s]?",
                                  f->path, pass == 0 ? "" : "shared ",
                                  perm_names[n], f->path);
            }
        }
    }
    return 0;
}

static int file_lock(struct vimg_io *io, unsigned perm, unsigned shared)
{
    struct io_file *f = (struct io_file *)io;
    const unsigned unshared = ~shared & VIMG_PERM_ALL;
    const unsigned old_perm = f->held_perm;
    const unsigned old_unshared = f->held_unshared;

    if (f->has_no_ofd_locks) {
        return 0;
    }
    /* take the new bytes first, so no moment holds less than either */
    int ret = set_lock_bytes(f, old_perm | perm, old_unshared | unshared);
    if (ret == -EINVAL || ret == -ENOLCK || ret == -EOPNOTSUPP) {
        /* no OFD locks here (like qemu's locking=auto): go on unlocked */
        f->has_no_ofd_locks = true;
        set_lock_bytes(f, 0, 0);
        return 0;
    }
    if (ret == -EAGAIN || ret == -EACCES) {
        ret = vimg_error(-EAGAIN, "%s: Failed to lock byte %d\nIs another "
                                  "process using the image [%s]?",
                         f->path, LOCK_PERM_BASE, f->path);
    } else if (ret < 0) {
        ret = vimg_error(ret, "%s: cannot lock: %s", f->path, strerror(-ret));
    }
    if (ret == 0) {
        ret = check_lock_conflicts(f, perm, unshared);
    }
    if (ret < 0) {
        set_lock_bytes(f, old_perm, old_unshared);
        return ret;
    }
    return set_lock_bytes(f, perm, unshared);
}

int vimg_io_lock(struct vimg_io *io, unsigned perm, unsigned shared)
{
    if (!io->ops->lock) {
        return 0;
    }
    int ret = io->ops->lock(io, perm & VIMG_PERM_ALL, shared & VIMG_PERM_ALL);
    if (ret == 0) {
        io->lock_perm = perm & VIMG_PERM_ALL;
        io->lock_shared = shared & VIMG_PERM_ALL;
    }
    return ret;
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
    .lock = file_lock,
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
        /* truncated below, once we hold the write lock */
        oflags |= O_RDWR | O_CREAT;
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
    pthread_mutex_init(&f->data_lock, NULL);
    f->io.lock_shared = VIMG_PERM_ALL;
    if (create) {
        /* as qemu-img create: write and resize, nobody else resizing */
        ret = vimg_io_lock(&f->io, VIMG_PERM_WRITE | VIMG_PERM_RESIZE,
                           VIMG_PERM_ALL & ~VIMG_PERM_RESIZE);
        if (ret == 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
            ftruncate(fd, 0) < 0) {
            ret = vimg_error(-errno, "%s: cannot truncate: %s", path,
                             strerror(errno));
        }
        if (ret < 0) {
            file_close(&f->io);
            return ret;
        }
    }
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
