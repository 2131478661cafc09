/* SPDX-License-Identifier: MIT */
/*
 * io-fault.c: a wrapper that fails the Nth read, write or flush of the
 * backend below it with -EIO, as QEMU's blkdebug and SQLite's testvfs do.
 * Tests run a workload with N = 1, 2, ... until no fault fires.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "io/io.h"
#include "util/vimg-util.h"

struct io_fault {
    struct vimg_io io;
    struct vimg_io *inner;
    struct vimg_io_fault_plan plan;
    atomic_uint reads, writes, flushes, faults;
};

static bool should_fail(struct io_fault *f, atomic_uint *counter,
                        unsigned fail_n)
{
    unsigned n = atomic_fetch_add(counter, 1) + 1;

    if (fail_n == 0) {
        return false;
    }
    if (n == fail_n || (f->plan.sticky && n > fail_n)) {
        atomic_fetch_add(&f->faults, 1);
        return true;
    }
    return false;
}

static int fault_pread(struct vimg_io *io, void *buf, size_t count,
                       uint64_t off)
{
    struct io_fault *f = (struct io_fault *)io;

    if (should_fail(f, &f->reads, f->plan.fail_read_n)) {
        return vimg_error(-EIO, "%s: injected read fault at 0x%llx",
                          io->name, (unsigned long long)off);
    }
    return vimg_io_pread(f->inner, buf, count, off);
}

static int fault_pwrite(struct vimg_io *io, const void *buf, size_t count,
                        uint64_t off)
{
    struct io_fault *f = (struct io_fault *)io;

    if (should_fail(f, &f->writes, f->plan.fail_write_n)) {
        return vimg_error(-EIO, "%s: injected write fault at 0x%llx",
                          io->name, (unsigned long long)off);
    }
    return vimg_io_pwrite(f->inner, buf, count, off);
}

static int fault_flush(struct vimg_io *io)
{
    struct io_fault *f = (struct io_fault *)io;

    if (should_fail(f, &f->flushes, f->plan.fail_flush_n)) {
        return vimg_error(-EIO, "%s: injected flush fault", io->name);
    }
    return vimg_io_flush(f->inner);
}

static int fault_get_size(struct vimg_io *io, uint64_t *out)
{
    return vimg_io_get_size(((struct io_fault *)io)->inner, out);
}

static int fault_truncate(struct vimg_io *io, uint64_t size)
{
    struct io_fault *f = (struct io_fault *)io;

    if (should_fail(f, &f->writes, f->plan.fail_write_n)) {
        return vimg_error(-EIO, "%s: injected truncate fault", io->name);
    }
    return vimg_io_truncate(f->inner, size);
}

static int fault_data_status(struct vimg_io *io, uint64_t off, uint64_t len,
                             uint64_t *len_out)
{
    return vimg_io_data_status(((struct io_fault *)io)->inner, off, len,
                               len_out);
}

static void fault_close(struct vimg_io *io)
{
    struct io_fault *f = (struct io_fault *)io;

    if (f->plan.count_at_close) {
        *f->plan.count_at_close = atomic_load(&f->faults);
    }
    vimg_io_close(f->inner);
    free(f);
}

static int fault_lock(struct vimg_io *io, unsigned perm, unsigned shared)
{
    return vimg_io_lock(((struct io_fault *)io)->inner, perm, shared);
}

static const struct vimg_io_ops fault_ops = {
    .pread = fault_pread,
    .pwrite = fault_pwrite,
    .flush = fault_flush,
    .get_size = fault_get_size,
    .truncate = fault_truncate,
    .data_status = fault_data_status,
    .close = fault_close,
    .lock = fault_lock,
};

int vimg_io_fault_new(struct vimg_io **out, struct vimg_io *inner,
                      const struct vimg_io_fault_plan *plan)
{
    struct io_fault *f = calloc(1, sizeof(*f));
    if (!f) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    f->io.ops = &fault_ops;
    f->io.name = inner->name;
    f->io.lock_shared = VIMG_PERM_ALL;
    f->inner = inner;
    f->plan = *plan;
    *out = &f->io;
    return 0;
}

unsigned vimg_io_fault_count(struct vimg_io *io)
{
    return atomic_load(&((struct io_fault *)io)->faults);
}
