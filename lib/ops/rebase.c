/* SPDX-License-Identifier: MIT */
/*
 * rebase.c: give an image another backing file without changing its guest
 * content, as `qemu-img rebase` does.  Where the image itself does not
 * allocate, the old chain and the new backing file are read and compared
 * in 512-byte sectors; the sectors that differ get the old content written
 * into the image (as data, like qemu; as zeroes past the end of the old
 * backing file, like qemu too).  Then the header names the new
 * backing file (vimg_change_backing, after a flush).
 *
 * Chunks of 4 MiB, a multiple of every cluster size, go to worker
 * threads, so no two threads write into the same cluster.
 */
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "image-services.h"
#include "util/vimg-util.h"

#define REBASE_CHUNK_BYTES (4u * 1024 * 1024)
#define REBASE_PIECE_BYTES (1u * 1024 * 1024)
#define SECTOR 512u

struct rebase_job {
    vimg_image *img;
    vimg_image *new_backing; /* NULL: the image becomes standalone */
    uint64_t size;
    uint64_t old_size;       /* of the old backing file, 0 without */
};

/* What the new chain reads at [off, off+len): zeroes past its end. */
static int read_new(struct rebase_job *job, uint8_t *buf, uint64_t off,
                    size_t len)
{
    const uint64_t have = job->new_backing ? vimg_size(job->new_backing) : 0;
    size_t n = 0;

    if (off < have) {
        n = (size_t)VIMG_MIN((uint64_t)len, have - off);
        int ret = vimg_pread(job->new_backing, buf, n, off);
        if (ret < 0) {
            return ret;
        }
    }
    memset(buf + n, 0, len - n);
    return 0;
}

/* Write the old content of the differing sectors [off, off+len) back:
 * zeroes past the end of the old backing file as zeroes (qemu-img does
 * the same), the rest as data. */
static int keep_old(struct rebase_job *job, const uint8_t *old, uint64_t off,
                    size_t len, bool is_past_old_end)
{
    if (is_past_old_end) {
        return vimg_write_zeroes(job->img, off, len, 0);
    }
    return vimg_pwrite(job->img, old, len, off);
}

/* [off, off+len) is not allocated in the image: keep its old content
 * where the new chain differs. */
static int rebase_range(struct rebase_job *job, uint8_t *old, uint8_t *new,
                        uint64_t off, uint64_t len)
{
    while (len > 0) {
        /* pieces end where the old backing file ends */
        uint64_t max = VIMG_MIN(len, (uint64_t)REBASE_PIECE_BYTES);
        const bool is_past_old_end = off >= job->old_size;
        if (!is_past_old_end) {
            max = VIMG_MIN(max, job->old_size - off);
        }
        const size_t n = (size_t)max;
        int ret = vimg_pread(job->img, old, n, off);
        if (ret == 0) {
            ret = read_new(job, new, off, n);
        }
        for (size_t i = 0; ret == 0 && i < n;) {
            const size_t s = VIMG_MIN((size_t)SECTOR, n - i);
            if (memcmp(old + i, new + i, s) == 0) {
                i += s;
                continue;
            }
            size_t j = i + s;
            while (j < n) {
                const size_t t = VIMG_MIN((size_t)SECTOR, n - j);
                if (memcmp(old + j, new + j, t) == 0) {
                    break;
                }
                j += t;
            }
            ret = keep_old(job, old + i, off + i, j - i, is_past_old_end);
            i = j;
        }
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static int rebase_chunk(void *opaque, uint8_t *buf, uint64_t chunk)
{
    struct rebase_job *job = opaque;
    const uint64_t start = chunk * REBASE_CHUNK_BYTES;
    const uint64_t end = VIMG_MIN(job->size, start + REBASE_CHUNK_BYTES);
    uint8_t *old = buf, *new = buf + REBASE_PIECE_BYTES;

    for (uint64_t off = start; off < end;) {
        struct vimg_extent e;
        int ret = vimg_block_status(job->img, off, end - off, &e);
        if (ret < 0) {
            return ret;
        }
        const bool is_own = (e.flags & VIMG_EXTENT_PRESENT) && e.depth == 0;
        if (!is_own) {
            ret = rebase_range(job, old, new, off, e.length);
            if (ret < 0) {
                return ret;
            }
        }
        off += e.length;
    }
    return 0;
}

/* vimg_change_backing, with qemu-img's words around its errors */
static int change(vimg_image *img, const char *backing, const char *fmt)
{
    int ret = vimg_change_backing(img, backing, fmt);

    if (ret < 0) {
        vimg_error_prefix("Could not change the backing file to '%s'",
                          backing ? backing : "");
    }
    return ret;
}

int vimg_rebase(vimg_image *img, const char *backing,
                const char *backing_fmt, const struct vimg_rebase_opts *opts)
{
    const struct vimg_rebase_opts defaults = VIMG_REBASE_OPTS_INIT;
    if (!opts) {
        opts = &defaults;
    }
    if (!img || opts->version != VIMG_REBASE_OPTS_VERSION) {
        return vimg_error(-EINVAL, "vimg_rebase: bad argument");
    }
    if (backing && !*backing) {
        backing = NULL;
    }
    if (!(vimg_capabilities(img) & VIMG_CAN_WRITE)) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          vimg_filename(img));
    }
    if (!(vimg_capabilities(img) & VIMG_CAN_BACKING)) {
        return vimg_error(-ENOTSUP, "Could not change the backing file to "
                                    "'%s': Operation not supported",
                          backing ? backing : "");
    }
    if (opts->is_unsafe) {
        return change(img, backing, backing_fmt);
    }
    if (vimg_backing_name(img) && !vimg_backing(img)) {
        return vimg_error(-EINVAL, "%s: a safe rebase needs the old backing "
                                   "chain open",
                          vimg_filename(img));
    }

    struct rebase_job job = {
        .img = img,
        .size = vimg_size(img),
        .old_size = vimg_size(vimg_backing(img)),
    };
    int ret = 0;
    if (backing) {
        char *path = vimg_path_join_dir(vimg_filename(img), backing);
        if (!path) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = vimg_open(&job.new_backing, path, backing_fmt, 0);
        free(path);
        if (ret < 0) {
            vimg_error_prefix("Could not open new backing file '%s'",
                              backing);
            return ret;
        }
    }
    const struct vimg_chunk_run run = {
        .nb_chunks = VIMG_DIV_ROUND_UP(job.size, REBASE_CHUNK_BYTES),
        .chunk_bytes = REBASE_CHUNK_BYTES,
        .total_bytes = job.size,
        .buf_bytes = 2 * REBASE_PIECE_BYTES,
        .threads = opts->threads,
        .fn = rebase_chunk,
        .opaque = &job,
        .progress = opts->progress,
        .progress_opaque = opts->progress_opaque,
    };
    ret = vimg_run_chunks(&run);
    if (ret == 0) {
        ret = vimg_flush(img);
    }
    /* the header says the format when it was given, as qemu-img does;
     * else what the new backing file was opened as */
    if (ret == 0) {
        ret = change(img, backing,
                                  backing_fmt ? backing_fmt
                                  : job.new_backing
                                      ? vimg_format(job.new_backing)
                                      : NULL);
    }
    vimg_close(job.new_backing);
    return ret;
}
