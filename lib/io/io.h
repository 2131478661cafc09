/* SPDX-License-Identifier: MIT */
/*
 * io.h: bytes in a file.  Each backend (file, memory, fault injection)
 * fills a struct vimg_io_ops; formats only ever see struct vimg_io.
 *
 * pread reads everything or fails; bytes past the end of the file read as
 * zeroes (a short read is never silently passed up).
 */
#ifndef VIMG_IO_H
#define VIMG_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vimg_io;

struct vimg_io_ops {
    int (*pread)(struct vimg_io *io, void *buf, size_t count, uint64_t off);
    int (*pwrite)(struct vimg_io *io, const void *buf, size_t count,
                  uint64_t off);
    int (*flush)(struct vimg_io *io);
    int (*get_size)(struct vimg_io *io, uint64_t *out);
    int (*truncate)(struct vimg_io *io, uint64_t size);
    /*
     * Optional: is OFF in stored data (1) or in a hole (0)?  *len_out gets
     * how many bytes from OFF share the answer.  NULL means all data.
     */
    int (*data_status)(struct vimg_io *io, uint64_t off, uint64_t len,
                       uint64_t *len_out);
    /* Optional: reserve [off, off+len) on disk (posix_fallocate). */
    int (*fallocate)(struct vimg_io *io, uint64_t off, uint64_t len);
    /* Optional: deallocate [off, off+len), which then reads as zeroes;
     * the size stays.  -ENOTSUP where the file system cannot. */
    int (*punch_hole)(struct vimg_io *io, uint64_t off, uint64_t len);
    /* Optional: make [off, off+len) read as zeroes, keeping it allocated
     * (a device's write-zeroes command); -ENOTSUP where it cannot. */
    int (*zero_range)(struct vimg_io *io, uint64_t off, uint64_t len);
    /* Optional: bytes the file really occupies (st_blocks * 512). */
    int (*allocated_size)(struct vimg_io *io, uint64_t *out);
    void (*close)(struct vimg_io *io);
    /* Optional: see vimg_io_lock().  NULL: the backend takes no locks. */
    int (*lock)(struct vimg_io *io, unsigned perm, unsigned shared);
};

struct vimg_io {
    const struct vimg_io_ops *ops;
    const char *name; /* for messages */
    bool is_unsafe;   /* flush writes nothing to stable storage */
    /* A block device: its size is fixed (truncate only checks it) and
     * it does not read as zeroes when "created". */
    bool is_device;
    /* what vimg_io_lock() holds now: VIMG_PERM_* bits */
    unsigned lock_perm;
    unsigned lock_shared;
};

/*
 * Image locking, compatible with QEMU's: a permission is one of the bits
 * below (QEMU's BLK_PERM_*).  A holder of permission N keeps a shared
 * open-file-description lock on byte 100 + N of the file; one that lets
 * nobody else have permission N keeps one on byte 200 + N.
 */
#define VIMG_PERM_CONSISTENT_READ 0x1u
#define VIMG_PERM_WRITE 0x2u
#define VIMG_PERM_WRITE_UNCHANGED 0x4u
#define VIMG_PERM_RESIZE 0x8u
#define VIMG_PERM_ALL 0xfu

/*
 * Hold exactly the permissions PERM and share only SHARED with others
 * (locks no longer needed are dropped).  Fails with -EAGAIN and qemu's
 * message ("Failed to get "write" lock" / "Failed to get shared "write"
 * lock", then "Is another process using the image [NAME]?") when another
 * process holds a permission we do not share or does not share one we
 * want; the locks held before stay as they were.  A backend without
 * locks, or a file system without OFD locks, succeeds without locking.
 */
int vimg_io_lock(struct vimg_io *io, unsigned perm, unsigned shared);

static inline int vimg_io_pread(struct vimg_io *io, void *buf, size_t count,
                                uint64_t off)
{
    return io->ops->pread(io, buf, count, off);
}

static inline int vimg_io_pwrite(struct vimg_io *io, const void *buf,
                                 size_t count, uint64_t off)
{
    return io->ops->pwrite(io, buf, count, off);
}

static inline int vimg_io_flush(struct vimg_io *io)
{
    if (io->is_unsafe) {
        return 0;
    }
    return io->ops->flush(io);
}

static inline int vimg_io_get_size(struct vimg_io *io, uint64_t *out)
{
    return io->ops->get_size(io, out);
}

static inline int vimg_io_truncate(struct vimg_io *io, uint64_t size)
{
    return io->ops->truncate(io, size);
}

/*
 * Make [off, off+len) read as zeroes: punch a hole when IS_UNMAP and the
 * file can, else use the backend's zero_range (a device's own command),
 * else write zeroes.
 */
int vimg_io_zero(struct vimg_io *io, uint64_t off, uint64_t len,
                 bool is_unmap);

static inline void vimg_io_close(struct vimg_io *io)
{
    if (io) {
        io->ops->close(io);
    }
}

/* Is [off, off+len) data (1) or hole (0); *len_out bytes share it. */
int vimg_io_data_status(struct vimg_io *io, uint64_t off, uint64_t len,
                        uint64_t *len_out);
int vimg_io_allocated_size(struct vimg_io *io, uint64_t *out);
/* Reserve space; -ENOTSUP where the backend cannot. */
int vimg_io_fallocate(struct vimg_io *io, uint64_t off, uint64_t len);

/* io-file.c: open PATH; WRITABLE opens read-write.  CREATE creates or
 * truncates it (implies WRITABLE). */
int vimg_io_file_open(struct vimg_io **out, const char *path, bool writable,
                      bool create);

/* io-mem.c: a growable in-memory file, starting as a copy of DATA. */
int vimg_io_mem_new(struct vimg_io **out, const void *data, size_t len,
                    const char *name);
/* The current contents of a memory file (borrowed). */
const uint8_t *vimg_io_mem_data(struct vimg_io *io, size_t *len_out);

/* io-fault.c: wraps INNER (taking ownership); the Nth call (1-based) of the
 * chosen kind fails with -EIO; 0 disables.  Counters keep running. */
struct vimg_io_fault_plan {
    unsigned fail_read_n;
    unsigned fail_write_n;
    unsigned fail_flush_n;
    bool sticky; /* keep failing after the first fault */
    unsigned *count_at_close; /* if set, gets the fault count at close */
};
int vimg_io_fault_new(struct vimg_io **out, struct vimg_io *inner,
                      const struct vimg_io_fault_plan *plan);
/* How many faults were injected so far. */
unsigned vimg_io_fault_count(struct vimg_io *io);

#endif
