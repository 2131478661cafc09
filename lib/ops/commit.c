/* SPDX-License-Identifier: MIT */
/*
 * commit.c: write what an overlay (and the images between it and the base)
 * allocate into a base image of its backing chain, as `qemu-img commit`
 * does, then empty the overlay.
 *
 * What is copied follows qemu's rules, so bases end up allocated alike:
 * - A range is "allocated above the base" when a layer above the base has
 *   data or zeroes for it, or when an image strictly between the overlay
 *   and the base is shorter than the range's offset (the zeroes read past
 *   its end count as allocated there; qemu's bdrv_is_allocated_above).
 * - The base is written in granules of its cluster size (4 KiB..64 KiB;
 *   64 KiB for raw bases), qemu's mirror granularity: a granule with any
 *   allocated byte is copied whole, through the overlay's chain.  Zeroes
 *   that cover whole granules and whole base clusters are written as
 *   zeroes (qcow2 zero clusters, holes in raw files); the rest as data.
 *
 * The base is reopened read-write in place (vimg_reopen_rw), so the chain
 * the overlay reads through and the base written are one handle.  Chunks
 * of 4 MiB, a multiple of every granule and base cluster, go to worker
 * threads, so no two threads ever touch the same base cluster.
 */
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "image-services.h"
#include "util/vimg-util.h"

#define COMMIT_CHUNK_BYTES (4u * 1024 * 1024)
#define COMMIT_MIN_GRANULE 4096u
#define COMMIT_MAX_GRANULE 65536u

struct commit_job {
    vimg_image *top;
    vimg_image *base;
    unsigned base_depth;    /* of base below top (>= 1) */
    uint64_t size;          /* of top */
    uint64_t granule;
    uint64_t base_cluster;
};

/* Is extent E (from vimg_block_status on top) allocated above the base? */
static bool is_allocated_above(const struct commit_job *job,
                               const struct vimg_extent *e)
{
    if (e->flags & VIMG_EXTENT_PRESENT) {
        return e->depth < job->base_depth;
    }
    /* zeroes past the end of the backing file of layer e->depth: that
     * backing file is an image in between, not the base itself */
    return e->depth + 1 < job->base_depth;
}

static bool is_base_aligned(const struct commit_job *job, uint64_t off)
{
    return off % job->base_cluster == 0 || off == job->size;
}

/* Copy [off, off+len) from the top's chain into the base as data. */
static int copy_data(struct commit_job *job, uint8_t *buf, uint64_t off,
                     uint64_t len)
{
    while (len > 0) {
        const size_t n = (size_t)VIMG_MIN(len, (uint64_t)COMMIT_CHUNK_BYTES);
        int ret = vimg_pread(job->top, buf, n, off);
        if (ret == 0) {
            ret = vimg_pwrite(job->base, buf, n, off);
        }
        if (ret < 0) {
            return ret;
        }
        off += n;
        len -= n;
    }
    return 0;
}

/* Write the dirty granules [start, end) into the base (qemu's mirror). */
static int commit_run(struct commit_job *job, uint8_t *buf, uint64_t start,
                      uint64_t end)
{
    const uint64_t g = job->granule;

    for (uint64_t off = start; off < end;) {
        struct vimg_extent e;
        int ret = vimg_block_status(job->top, off, end - off, &e);
        if (ret < 0) {
            return ret;
        }
        uint64_t n = e.length - e.length % g;
        if (off + e.length == end && end == job->size) {
            n = e.length; /* the short last granule of the disk */
        }
        if (n == 0) {
            /* less than a granule of one kind: copy a granule */
            ret = copy_data(job, buf, off, VIMG_MIN(g, end - off));
            n = VIMG_MIN(g, end - off);
        } else if ((e.flags & VIMG_EXTENT_ZERO) && is_base_aligned(job, off) &&
                   is_base_aligned(job, off + n)) {
            ret = vimg_write_zeroes(job->base, off, n, VIMG_ZERO_MAY_UNMAP);
        } else {
            ret = copy_data(job, buf, off, n);
        }
        if (ret < 0) {
            return ret;
        }
        off += n;
    }
    return 0;
}

static int commit_chunk(void *opaque, uint8_t *buf, uint64_t chunk)
{
    struct commit_job *job = opaque;
    const uint64_t start = chunk * COMMIT_CHUNK_BYTES;
    const uint64_t end = VIMG_MIN(job->size, start + COMMIT_CHUNK_BYTES);
    const uint64_t g = job->granule;
    bool dirty[COMMIT_CHUNK_BYTES / COMMIT_MIN_GRANULE] = {false};
    const size_t nb = (size_t)VIMG_DIV_ROUND_UP(end - start, g);

    for (uint64_t off = start; off < end;) {
        struct vimg_extent e;
        int ret = vimg_block_status(job->top, off, end - off, &e);
        if (ret < 0) {
            return ret;
        }
        if (is_allocated_above(job, &e)) {
            const size_t first = (size_t)((off - start) / g);
            const size_t last = (size_t)((off + e.length - 1 - start) / g);
            for (size_t i = first; i <= last; i++) {
                dirty[i] = true;
            }
        }
        off += e.length;
    }
    for (size_t i = 0; i < nb;) {
        if (!dirty[i]) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < nb && dirty[j]) {
            j++;
        }
        int ret = commit_run(job, buf, start + i * g,
                             VIMG_MIN(end, start + j * g));
        if (ret < 0) {
            return ret;
        }
        i = j;
    }
    return 0;
}

int vimg_commit(vimg_image *top, const struct vimg_commit_opts *opts)
{
    const struct vimg_commit_opts defaults = VIMG_COMMIT_OPTS_INIT;
    if (!opts) {
        opts = &defaults;
    }
    if (!top || opts->version != VIMG_COMMIT_OPTS_VERSION) {
        return vimg_error(-EINVAL, "vimg_commit: bad argument");
    }
    vimg_image *backing = vimg_backing(top);
    if (!backing) {
        return vimg_error(-EINVAL, "Image does not have a backing file");
    }
    struct commit_job job = {
        .top = top,
        .base = opts->base ? opts->base : backing,
        .size = vimg_size(top),
    };
    for (vimg_image *l = backing; l; l = vimg_backing(l)) {
        job.base_depth++;
        if (l == job.base) {
            break;
        }
    }
    vimg_image *l = top;
    for (unsigned d = 0; d < job.base_depth; d++) {
        l = vimg_backing(l);
    }
    if (l != job.base) {
        return vimg_error(-EINVAL, "'%s' is not in the backing chain of '%s'",
                          vimg_filename(job.base), vimg_filename(top));
    }
    /* qemu-img: only the immediate backing file leaves a valid overlay
     * when emptied */
    const bool is_emptying = !opts->is_keep_top && job.base_depth == 1;
    if (is_emptying && !(vimg_capabilities(top) & VIMG_CAN_WRITE)) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          vimg_filename(top));
    }

    /* A guessed raw base refuses a first sector that would make it probe
     * as another format (a guest's qcow2 header naming a host file): say
     * so before anything is written, not after some chunks were. */
    uint8_t head[512];
    const size_t head_len = (size_t)VIMG_MIN(job.size, sizeof(head));
    int ret = head_len ? vimg_pread(top, head, head_len, 0) : 0;
    if (ret == 0) {
        ret = vimg_format_guard_head(job.base, head, head_len, 0);
    }
    if (ret < 0) {
        return ret;
    }
    ret = vimg_reopen_rw(job.base);
    if (ret < 0) {
        return ret;
    }
    if (vimg_size(job.base) < job.size) {
        ret = vimg_resize(job.base, job.size, NULL, 0);
        if (ret < 0) {
            vimg_error_prefix("could not grow '%s' to %llu bytes",
                              vimg_filename(job.base),
                              (unsigned long long)job.size);
            return ret;
        }
    }
    job.base_cluster = vimg_cluster_size(job.base);
    job.granule = strcmp(vimg_format(job.base), "raw") == 0
                      ? COMMIT_MAX_GRANULE
                      : VIMG_MIN(VIMG_MAX(job.base_cluster,
                                          COMMIT_MIN_GRANULE),
                                 COMMIT_MAX_GRANULE);

    const struct vimg_chunk_run run = {
        .nb_chunks = VIMG_DIV_ROUND_UP(job.size, COMMIT_CHUNK_BYTES),
        .chunk_bytes = COMMIT_CHUNK_BYTES,
        .total_bytes = job.size,
        .buf_bytes = COMMIT_CHUNK_BYTES,
        .threads = opts->threads,
        .fn = commit_chunk,
        .opaque = &job,
        .progress = opts->progress,
        .progress_opaque = opts->progress_opaque,
    };
    ret = vimg_run_chunks(&run);
    /* the base holds everything before the overlay lets go of it */
    if (ret == 0) {
        ret = vimg_flush(job.base);
    }
    if (ret == 0 && is_emptying) {
        ret = vimg_make_empty(top);
    }
    return ret;
}
