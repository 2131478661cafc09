/* SPDX-License-Identifier: MIT */
/*
 * convert.c: copy the guest content of one or more images (concatenated)
 * into a new image.  The output space is cut into chunks that worker
 * threads take in turn; each chunk is read through block status so holes
 * and zero ranges are never read nor written.  Chunks are read (and
 * compressed) in parallel and written in order, one at a time: a file
 * takes one writer at a time anyway, and waiting writers burn CPU.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image-services.h"
#include "ops/ops.h"
#include "util/pool.h"
#include "util/vimg-util.h"

#define CONVERT_CHUNK_BYTES (4u * 1024 * 1024)
#define CONVERT_PIECE_BYTES (2u * 1024 * 1024)

struct convert_job {
    vimg_image *const *srcs;
    size_t nb_srcs;
    uint64_t *src_start;     /* output offset of each source */
    uint64_t *chunk_start;   /* first chunk number of each source */
    uint64_t nb_chunks;
    vimg_image *out_img;
    bool is_raw;             /* raw output: sparse as qemu-img -S makes it */
    uint64_t total;
    const struct vimg_convert_opts *opts;
    bool has_target_backing; /* copy only what the sources' tops hold */
    bool is_zero_init;       /* the target reads as zeroes before we write */

    /* image outputs write chunks in order (the pool's ordered step), so
     * the file is the same whatever the number of threads */
    struct vimg_pool *pool;
    struct chunk_buf *bufs;  /* one per worker of the pool */
    atomic_uint_fast64_t bytes_done;
};

/*
 * Sparse detection, as qemu-img convert -S does it, so outputs have holes in
 * the same places: look at 512-byte sectors; a run of zero sectors becomes
 * a hole only if it is at least `min` sectors long; run ends are aligned to
 * `align` sectors (data rounded out, zeroes rounded in), and a zero run
 * shorter than its misalignment counts as data.
 */
#define SECTOR 512u

struct sparse_rule {
    uint64_t min;   /* sectors */
    uint64_t align; /* sectors, a power of two */
};

static bool sector_is_zero(const uint8_t *buf, size_t len, uint64_t sector)
{
    const size_t at = (size_t)sector * SECTOR;
    return vimg_buffer_is_zero(buf + at, VIMG_MIN((size_t)SECTOR, len - at));
}

/* The run of sectors starting at FIRST (of N in BUF, output sector
 * OUT_SECTOR + FIRST) that share the first one's zero-ness, adjusted to the
 * alignment.  Returns its length; *is_data_out says what it is. */
static uint64_t sector_run(const uint8_t *buf, size_t len, uint64_t first,
                           uint64_t n, uint64_t out_sector, uint64_t align,
                           bool *is_data_out)
{
    bool is_zero = sector_is_zero(buf, len, first);
    uint64_t i = 1;

    while (i < n && sector_is_zero(buf, len, first + i) == is_zero) {
        i++;
    }
    if (i < n) {
        const uint64_t tail = (out_sector + first + i) & (align - 1);
        if (tail) {
            if (is_zero && i <= tail) {
                is_zero = false; /* a tiny zero run is not worth a hole */
            }
            if (is_zero) {
                i -= tail;
            } else {
                i = VIMG_MIN(i + align - tail, n);
            }
        }
    }
    *is_data_out = !is_zero;
    return i;
}

/* How many sectors from FIRST to write (*is_data_out) or skip: data runs
 * absorb zero runs shorter than the minimum. */
static uint64_t sparse_run(const uint8_t *buf, size_t len, uint64_t first,
                           uint64_t n, uint64_t out_sector,
                           const struct sparse_rule *rule, bool *is_data_out)
{
    const uint64_t min = VIMG_MIN(rule->min, n);
    bool is_data;
    uint64_t p = sector_run(buf, len, first, n, out_sector, rule->align,
                            &is_data);

    *is_data_out = is_data;
    if (!is_data) {
        return p;
    }
    uint64_t used = p, checked = p;
    while (checked < n) {
        p = sector_run(buf, len, first + checked, n - checked, out_sector,
                       rule->align, &is_data);
        checked += p;
        if (is_data) {
            used = checked;
        } else if (p >= min) {
            break;
        }
    }
    return used;
}

/* Zero [off, off+len) of an existing raw target (-n) or of one that must
 * be fully allocated (-S 0). */
static int write_zeroes(struct convert_job *job, uint64_t len, uint64_t off)
{
    return vimg_write_zeroes(job->out_img, off, len,
                             job->opts->sparse_size ? VIMG_ZERO_MAY_UNMAP : 0);
}

/* Write BUF (LEN bytes at output offset OFF, a sector boundary), leaving
 * long enough runs of zeroes as holes. */
static int write_sparse(struct convert_job *job, const uint8_t *buf,
                        size_t len, uint64_t off)
{
    const uint64_t sparse = job->opts->sparse_size;
    if (sparse == 0) {
        return vimg_pwrite(job->out_img, buf, len, off);
    }
    struct sparse_rule rule = {.min = sparse / SECTOR, .align = 1};
    while (rule.align * 2 <= rule.min) {
        rule.align *= 2; /* the largest power of two <= min */
    }
    const uint64_t n = VIMG_DIV_ROUND_UP((uint64_t)len, SECTOR);
    const uint64_t out_sector = off / SECTOR;
    uint64_t pos = 0;
    while (pos < n) {
        bool is_data;
        const uint64_t run =
            sparse_run(buf, len, pos, n - pos, out_sector, &rule, &is_data);
        if (is_data) {
            const size_t at = (size_t)(pos * SECTOR);
            const size_t bytes =
                (size_t)VIMG_MIN(run * SECTOR, (uint64_t)len - at);
            int ret = vimg_pwrite(job->out_img, buf + at, bytes, off + at);
            if (ret < 0) {
                return ret;
            }
        } else if (!job->is_zero_init) {
            /* the target's old data must go */
            const size_t at = (size_t)(pos * SECTOR);
            const size_t bytes =
                (size_t)VIMG_MIN(run * SECTOR, (uint64_t)len - at);
            int ret = write_zeroes(job, bytes, off + at);
            if (ret < 0) {
                return ret;
            }
        }
        pos += run;
    }
    return 0;
}

/* What a range of the output is, seen from the sources */
enum seg_kind {
    SEG_DATA,    /* bytes to copy (may still be zeroes) */
    SEG_ZERO,    /* reads as zeroes */
    SEG_BACKING, /* not allocated in a source's top layer, and the target
                    has a backing file that supplies it (-B) */
};

struct seg {
    uint64_t off; /* in the output (raw outputs: in the chunk's source) */
    uint64_t len;
    enum seg_kind kind;
};

/* A worker's buffers for one chunk of an image output */
struct chunk_buf {
    uint8_t *data;
    uint8_t *zdata;   /* compressed clusters */
    int *zlen;        /* per cluster: one of the CL_* or a compressed length */
    size_t len;       /* bytes of the chunk in data */
    struct seg *segs;
    size_t nb_segs, cap_segs;
};

/* Note [off, off+len) of KIND in CB, merged into the last segment of the
 * same kind if IS_MERGED. */
static int add_seg(struct chunk_buf *cb, uint64_t off, uint64_t len,
                   enum seg_kind kind, bool is_merged)
{
    if (is_merged && cb->nb_segs && cb->segs[cb->nb_segs - 1].kind == kind) {
        cb->segs[cb->nb_segs - 1].len += len;
        return 0;
    }
    if (cb->nb_segs == cb->cap_segs) {
        const size_t cap = cb->cap_segs ? cb->cap_segs * 2 : 64;
        struct seg *n = realloc(cb->segs, cap * sizeof(*n));
        if (!n) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        cb->segs = n;
        cb->cap_segs = cap;
    }
    cb->segs[cb->nb_segs++] = (struct seg){off, len, kind};
    return 0;
}

/* The source and its first output offset of raw chunk CHUNK */
static size_t raw_chunk_source(const struct convert_job *job, uint64_t chunk,
                               uint64_t *src_off)
{
    size_t s = 0;

    while (s + 1 < job->nb_srcs && job->chunk_start[s + 1] <= chunk) {
        s++;
    }
    *src_off = (chunk - job->chunk_start[s]) * CONVERT_CHUNK_BYTES;
    return s;
}

/* One chunk of a source into a raw output, first step (in parallel): read
 * its data into BUF and note its extents in the worker's segments, one per
 * block status extent (not merged: data is looked at in pieces from the
 * start of each extent, as qemu-img does). */
static int read_chunk_raw(void *opaque, uint8_t *buf, unsigned worker,
                          uint64_t chunk)
{
    struct convert_job *job = opaque;
    struct chunk_buf *cb = &job->bufs[worker];
    uint64_t src_off;
    vimg_image *src = job->srcs[raw_chunk_source(job, chunk, &src_off)];
    const uint64_t end =
        VIMG_MIN(vimg_size(src), src_off + CONVERT_CHUNK_BYTES);

    cb->nb_segs = 0;
    for (uint64_t off = src_off; off < end;) {
        struct vimg_extent e;
        int ret = vimg_block_status(src, off, end - off, &e);
        if (ret < 0) {
            return ret;
        }
        const enum seg_kind kind =
            e.flags & VIMG_EXTENT_ZERO ? SEG_ZERO : SEG_DATA;
        if (kind == SEG_DATA) {
            ret = vimg_pread(src, buf + (off - src_off), (size_t)e.length,
                             off);
        }
        if (ret == 0) {
            ret = add_seg(cb, off, e.length, kind, false);
        }
        if (ret < 0) {
            return ret;
        }
        off += e.length;
    }
    return 0;
}

/* Second step, in chunk order, so one thread at a time writes the file
 * (the kernel serialises writers of a file; a waiting one only spins):
 * write what read_chunk_raw() read, leaving holes as -S says. */
static int write_chunk_raw(void *opaque, uint8_t *buf, unsigned worker,
                           uint64_t chunk)
{
    struct convert_job *job = opaque;
    const struct chunk_buf *cb = &job->bufs[worker];
    uint64_t src_off;
    const uint64_t out_base = job->src_start[raw_chunk_source(job, chunk,
                                                              &src_off)];
    /* A fresh target reads as zeroes; an existing one (-n), a device or
     * a fully allocated one (-S 0) gets its zeroes written. */
    const bool must_write_zeroes =
        !job->is_zero_init || job->opts->sparse_size == 0;
    int ret = 0;

    for (size_t i = 0; i < cb->nb_segs && ret == 0; i++) {
        const struct seg *g = &cb->segs[i];
        if (g->kind == SEG_ZERO) {
            if (must_write_zeroes) {
                ret = write_zeroes(job, g->len, out_base + g->off);
            }
        } else {
            /* data is looked at in pieces of at most 2 MiB from the start
             * of the extent, where qemu-img looks at it too */
            for (uint64_t done = 0; done < g->len && ret == 0;) {
                const size_t piece = (size_t)VIMG_MIN(
                    g->len - done, (uint64_t)CONVERT_PIECE_BYTES);
                ret = write_sparse(job, buf + (g->off + done - src_off),
                                   piece, out_base + g->off + done);
                done += piece;
            }
        }
        if (ret == 0) {
            atomic_fetch_add(&job->bytes_done, g->len);
        }
    }
    return ret;
}

/*
 * With a target backing file, is extent E of SRC (at output offset OUT_OFF)
 * left to it?  Yes where the source's top layer does not allocate it and
 * its backing chain supplies it.  Past the end of the source's backing
 * file the top reads zeroes: left alone too if the target already reads
 * zeroes there.  (qemu-img leaves such a range alone or writes zeroes
 * depending on where its block status extents start, even where the
 * target has data, which changes the guest content.)
 */
static int is_left_to_backing(const struct convert_job *job,
                              vimg_image *src, const struct vimg_extent *e,
                              uint64_t out_off)
{
    if (e->depth > 0) {
        return 1;
    }
    if (e->flags & VIMG_EXTENT_PRESENT || !vimg_backing(src)) {
        return 0;
    }
    for (uint64_t done = 0; done < e->length;) {
        struct vimg_extent t;
        int ret = vimg_block_status(job->out_img, out_off + done,
                                    e->length - done, &t);
        if (ret < 0) {
            return ret;
        }
        if (!(t.flags & VIMG_EXTENT_ZERO)) {
            return 0;
        }
        done += t.length;
    }
    return 1;
}

/*
 * Read output bytes [off, off+len) from the concatenated sources into
 * cb->data and describe them in cb->segs.  Zero ranges are not read.  With
 * a target backing file, only each source's top layer counts: what it
 * leaves to its backing chain is left to the target's.
 */
static int read_output_range(struct convert_job *job, struct chunk_buf *cb,
                             uint64_t off, uint64_t len)
{
    uint8_t *buf = cb->data;
    size_t s = 0;

    cb->nb_segs = 0;
    while (s + 1 < job->nb_srcs && job->src_start[s + 1] <= off) {
        s++;
    }
    while (len > 0) {
        vimg_image *src = job->srcs[s];
        const uint64_t src_off = off - job->src_start[s];
        const uint64_t n = VIMG_MIN(len, vimg_size(src) - src_off);
        for (uint64_t pos = 0; pos < n;) {
            struct vimg_extent e;
            int ret = vimg_block_status(src, src_off + pos, n - pos, &e);
            if (ret < 0) {
                return ret;
            }
            enum seg_kind kind = e.flags & VIMG_EXTENT_ZERO ? SEG_ZERO
                                                            : SEG_DATA;
            if (job->has_target_backing) {
                ret = is_left_to_backing(job, src, &e, off + pos);
                if (ret < 0) {
                    return ret;
                }
                kind = ret ? SEG_BACKING : kind;
                ret = 0;
            }
            if (kind == SEG_DATA) {
                ret = vimg_pread(src, buf + pos, (size_t)e.length,
                                 src_off + pos);
            } else {
                memset(buf + pos, 0, (size_t)e.length);
            }
            if (ret == 0) {
                ret = add_seg(cb, off + pos, e.length, kind, true);
            }
            if (ret < 0) {
                return ret;
            }
            pos += e.length;
        }
        buf += n;
        off += n;
        len -= n;
        s++;
    }
    return 0;
}

/* What to do with one cluster of a chunk (cb->zlen), besides a positive
 * compressed length */
enum {
    CL_PLAIN = 0,    /* write it */
    CL_SKIP = -1,    /* leave it: the target already reads it right */
    CL_ZERO = -2,    /* write zeroes */
    CL_MIXED = -3,   /* partly from the backing file: write the other
                        parts one by one */
};

/*
 * Is the cluster at C (N bytes) zero for -S?  qemu-img looks for zeroes in
 * aligned pieces of the -S size (4k by default) or of the cluster size,
 * whichever is larger: a small cluster is skipped only if its whole piece
 * is zero.  Compressed clusters are looked at one by one.
 */
static bool is_zero_granule(const struct convert_job *job,
                            const struct chunk_buf *cb, const uint8_t *c,
                            size_t n)
{
    uint64_t g = 1;
    while (!job->opts->is_compressed && g * 2 <= job->opts->sparse_size &&
           g * 2 <= CONVERT_CHUNK_BYTES) {
        g *= 2;
    }
    if (g <= n) {
        return vimg_buffer_is_zero(c, n);
    }
    const size_t at = (size_t)(c - cb->data);
    const size_t start = at - at % (size_t)g;
    const size_t end = VIMG_MIN(start + (size_t)g, cb->len);
    return vimg_buffer_is_zero(cb->data + start, end - start);
}

/* Classify the cluster [at, at+n) whose bytes are at C; *seg is the first
 * segment that may overlap it and is advanced. */
static int classify_cluster(struct convert_job *job, struct chunk_buf *cb,
                            size_t *seg, const uint8_t *c, uint64_t at,
                            size_t n)
{
    bool has_backing = false, has_other = false, has_data = false;

    while (cb->segs[*seg].off + cb->segs[*seg].len <= at) {
        (*seg)++;
    }
    for (size_t i = *seg; i < cb->nb_segs && cb->segs[i].off < at + n; i++) {
        if (cb->segs[i].kind == SEG_BACKING) {
            has_backing = true;
        } else {
            has_other = true;
            has_data |= cb->segs[i].kind == SEG_DATA;
        }
    }
    if (!has_other) {
        return CL_SKIP;
    }
    if (has_backing) {
        return CL_MIXED;
    }
    if (job->opts->sparse_size == 0) {
        return CL_PLAIN; /* -S 0: everything is allocated */
    }
    if (!has_data || is_zero_granule(job, cb, c, n)) {
        return job->is_zero_init ? CL_SKIP : CL_ZERO;
    }
    return CL_PLAIN;
}

/* Write the parts of cluster [at, at+n) that do not come from the backing
 * file (CL_MIXED). */
static int write_mixed(struct convert_job *job, const struct chunk_buf *cb,
                       uint64_t chunk_off, uint64_t at, size_t n)
{
    const unsigned zflags =
        job->opts->is_existing_target ? VIMG_ZERO_MAY_UNMAP : 0;

    for (size_t i = 0; i < cb->nb_segs; i++) {
        const struct seg *g = &cb->segs[i];
        const uint64_t a = VIMG_MAX(g->off, at);
        const uint64_t b = VIMG_MIN(g->off + g->len, at + n);
        if (a >= b || g->kind == SEG_BACKING) {
            continue;
        }
        int ret = g->kind == SEG_ZERO
                      ? vimg_write_zeroes(job->out_img, a, b - a, zflags)
                      : vimg_pwrite(job->out_img, cb->data + (a - chunk_off),
                                    (size_t)(b - a), a);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* One chunk into an image output, first step (in parallel): read and
 * classify its clusters, compress them. */
static int read_chunk_image(void *opaque, uint8_t *buf, unsigned worker,
                            uint64_t chunk)
{
    struct convert_job *job = opaque;
    struct chunk_buf *cb = &job->bufs[worker];
    const uint64_t off = chunk * CONVERT_CHUNK_BYTES;
    const uint64_t len = VIMG_MIN((uint64_t)CONVERT_CHUNK_BYTES,
                                  job->total - off);
    const uint32_t cs = vimg_cluster_size(job->out_img);
    const size_t nb = (size_t)VIMG_DIV_ROUND_UP(len, cs);
    int *zlen = cb->zlen;
    size_t seg = 0;

    cb->data = buf;
    int ret = read_output_range(job, cb, off, len);
    cb->len = (size_t)len;
    for (size_t i = 0; i < nb && ret >= 0; i++) {
        const size_t n = (size_t)VIMG_MIN((uint64_t)cs, len - i * cs);
        const uint8_t *c = cb->data + i * cs;
        zlen[i] = classify_cluster(job, cb, &seg, c, off + i * cs, n);
        if (zlen[i] == CL_PLAIN && job->opts->is_compressed) {
            ret = vimg_compress_cluster(job->out_img, c, n,
                                        cb->zdata + i * cs, cs);
            zlen[i] = ret;
        }
    }
    return ret < 0 ? ret : 0;
}

/* Second step, in chunk order: write what read_chunk_image() found.
 * Clusters the new image already reads right are not written. */
static int write_chunk_image(void *opaque, uint8_t *buf, unsigned worker,
                             uint64_t chunk)
{
    struct convert_job *job = opaque;
    const struct chunk_buf *cb = &job->bufs[worker];
    const uint64_t off = chunk * CONVERT_CHUNK_BYTES;
    const uint64_t len = cb->len;
    const uint32_t cs = vimg_cluster_size(job->out_img);
    const size_t nb = (size_t)VIMG_DIV_ROUND_UP(len, cs);
    const unsigned zflags =
        job->opts->is_existing_target ? VIMG_ZERO_MAY_UNMAP : 0;
    const int *zlen = cb->zlen;
    int ret = 0;

    (void)buf;
    for (size_t i = 0;
         i < nb && ret >= 0 && !vimg_pool_has_failed(job->pool);) {
        const uint64_t at = off + (uint64_t)i * cs;
        const size_t n = (size_t)VIMG_MIN((uint64_t)cs, len - i * cs);
        if (zlen[i] > 0) {
            ret = vimg_pwrite_compressed(job->out_img, cb->zdata + i * cs,
                                         (size_t)zlen[i], at);
            i++;
        } else if (zlen[i] == CL_MIXED) {
            ret = write_mixed(job, cb, off, at, n);
            i++;
        } else if (zlen[i] == CL_PLAIN || zlen[i] == CL_ZERO) {
            /* clusters of one kind in a row: one request */
            const int kind = zlen[i];
            size_t j = i;
            while (j < nb && zlen[j] == kind) {
                j++;
            }
            const size_t bytes =
                (size_t)VIMG_MIN((uint64_t)(j - i) * cs, len - i * cs);
            ret = kind == CL_PLAIN
                      ? vimg_pwrite(job->out_img, cb->data + i * cs, bytes,
                                    at)
                      : vimg_write_zeroes(job->out_img, at, bytes, zflags);
            i = j;
        } else {
            i++;
        }
    }
    atomic_fetch_add(&job->bytes_done, len);
    return ret < 0 ? ret : 0;
}

static void report_progress(void *opaque, uint64_t chunks_done)
{
    struct convert_job *job = opaque;

    (void)chunks_done;
    job->opts->progress(job->opts->progress_opaque,
                        atomic_load(&job->bytes_done), job->total);
}

/* Copy every chunk on a pool of worker threads, reporting progress from
 * this one. */
static int run_chunks(struct convert_job *job)
{
    const struct vimg_convert_opts *opts = job->opts;
    int ret = vimg_pool_create(
        &job->pool, vimg_pool_threads_for(opts->threads, job->nb_chunks));
    if (ret < 0) {
        return ret;
    }
    const unsigned workers = vimg_pool_workers(job->pool);
    job->bufs = calloc(workers, sizeof(*job->bufs));
    if (!job->is_raw) {
        for (unsigned i = 0; job->bufs && i < workers; i++) {
            job->bufs[i].zdata = malloc(CONVERT_CHUNK_BYTES);
            job->bufs[i].zlen = calloc(CONVERT_CHUNK_BYTES / 512, sizeof(int));
            if (!job->bufs[i].zdata || !job->bufs[i].zlen) {
                ret = vimg_error(-ENOMEM, "out of memory");
            }
        }
    }
    if (!job->bufs) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    const struct vimg_pool_job pj = {
        .nb_items = job->nb_chunks,
        .buf_bytes = CONVERT_CHUNK_BYTES,
        .fn = job->is_raw ? read_chunk_raw : read_chunk_image,
        .ordered_fn = job->is_raw ? write_chunk_raw : write_chunk_image,
        .opaque = job,
        .progress = opts->progress ? report_progress : NULL,
        .progress_opaque = job,
    };
    if (ret == 0) {
        ret = vimg_pool_run(job->pool, &pj);
    }
    for (unsigned i = 0; job->bufs && i < workers; i++) {
        free(job->bufs[i].zdata);
        free(job->bufs[i].zlen);
        free(job->bufs[i].segs);
    }
    free(job->bufs);
    job->bufs = NULL;
    vimg_pool_destroy(job->pool);
    job->pool = NULL;
    return ret;
}

/* Is the existing target (-n) large enough? */
static int check_target_size(struct convert_job *job)
{
    uint64_t have = vimg_size(job->out_img);
    /* a raw file counts to its last byte, not to the sector */
    int ret = job->is_raw ? vimg_file_size(job->out_img, &have) : 0;

    if (ret == 0 && have < job->total) {
        ret = vimg_error(-EINVAL, "output file is smaller than input file");
    }
    return ret;
}

/* The options to create JOB's target of FORMAT with: the caller's list,
 * or the deprecated fixed `create` (raw takes none of those: they are not
 * looked at, as before). */
static int target_options(const struct convert_job *job, const char *format,
                          vimg_opts **out)
{
    const struct vimg_convert_opts *opts = job->opts;
    struct vimg_create_opts co = VIMG_CREATE_OPTS_INIT;

    if (opts->target_options) {
        return vimg_opts_copy(out, opts->target_options);
    }
    if (opts->create && !job->is_raw) {
        co = *opts->create;
    }
    co.format = format;
    return vimg_opts_from_create_opts(&co, VIMG_OPTS_CREATE, 0, out);
}

/* Create (or, with -n, open) the target of JOB; fills job->out_img and
 * what the target reads before anything is written. */
static int open_target(struct convert_job *job, const char *out_path)
{
    const struct vimg_convert_opts *opts = job->opts;
    const char *format = job->is_raw ? "raw" : opts->out_format;
    const unsigned unsafe = opts->do_flush ? 0 : VIMG_OPEN_CACHE_UNSAFE;
    int ret;

    vimg_opts *target = NULL;
    ret = target_options(job, format, &target);
    if (ret < 0) {
        return ret;
    }
    job->has_target_backing = vimg_opts_get(target, "backing_file") != NULL;
    /* checked by the format as the list was made */
    const char *level = vimg_opts_get(target, "compression_level");
    const int compression_level = level ? atoi(level) : 0;
    if (opts->is_existing_target) {
        vimg_opts_free(target);
        ret = vimg_open(&job->out_img, out_path, format,
                        VIMG_OPEN_RDWR | unsafe);
        if (ret == 0) {
            vimg_set_compression_level(job->out_img, compression_level);
        }
        return ret == 0 ? check_target_size(job) : ret;
    }
    char size[32];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)job->total);
    ret = vimg_opts_set(target, "size", size);
    if (ret == 0) {
        ret = vimg_create_ext(out_path, target);
    }
    vimg_opts_free(target);
    if (ret == 0) {
        /* with its backing file: partial clusters copy the rest from it */
        ret = vimg_open(&job->out_img, out_path, format,
                        VIMG_OPEN_RDWR | unsafe |
                            (job->has_target_backing ? 0
                                                     : VIMG_OPEN_NO_BACKING));
        struct stat st;
        if (ret < 0 && stat(out_path, &st) == 0 && S_ISREG(st.st_mode)) {
            unlink(out_path); /* ours, and useless; never a device */
        }
        if (ret == 0) {
            vimg_set_compression_level(job->out_img, compression_level);
        }
    }
    /* a device keeps its old bytes: "created" or not, a raw one gets its
     * zeroes written (through the device's own zeroing or discard) */
    job->is_zero_init =
        ret == 0 && !job->has_target_backing &&
        !(job->is_raw && vimg_file_is_device(job->out_img));
    return ret;
}

int vimg_convert(vimg_image *const *srcs, size_t nb_srcs,
                 const char *out_path,
                 const struct vimg_convert_opts *caller_opts)
{
    struct vimg_convert_opts copy = VIMG_CONVERT_OPTS_INIT;
    const struct vimg_convert_opts *opts = &copy;
    if (caller_opts && caller_opts->version == 1) {
        /* version 1 ends before target_options */
        memcpy(&copy, caller_opts,
               offsetof(struct vimg_convert_opts, target_options));
    } else if (caller_opts) {
        copy = *caller_opts;
    }
    if (!srcs || nb_srcs == 0 || !out_path ||
        (opts->version != 1 && opts->version != VIMG_CONVERT_OPTS_VERSION)) {
        return vimg_error(-EINVAL, "vimg_convert: bad argument");
    }
    const bool is_raw = !opts->out_format ||
                        strcmp(opts->out_format, "raw") == 0;
    const unsigned caps =
        vimg_format_capabilities(is_raw ? "raw" : opts->out_format);
    if (!(caps & VIMG_CAN_CREATE) || !(caps & VIMG_CAN_WRITE)) {
        return vimg_error(-ENOTSUP, "converting to %s is not supported yet",
                          opts->out_format);
    }
    if (opts->is_compressed && !(caps & VIMG_CAN_COMPRESS)) {
        return vimg_error(-EINVAL, "%s images cannot be compressed",
                          is_raw ? "raw" : opts->out_format);
    }
    if (is_raw && ((opts->create && opts->create->backing_file) ||
                   vimg_opts_get(opts->target_options, "backing_file"))) {
        return vimg_error(-EINVAL, "Backing file not supported for file "
                                   "format 'raw'");
    }
    if (opts->sparse_size % 512 != 0) {
        return vimg_error(-EINVAL, "sparse size %llu is not a multiple of 512",
                          (unsigned long long)opts->sparse_size);
    }

    struct convert_job job = {
        .srcs = srcs,
        .nb_srcs = nb_srcs,
        .opts = opts,
    };
    job.src_start = calloc(nb_srcs, sizeof(uint64_t));
    job.chunk_start = calloc(nb_srcs, sizeof(uint64_t));
    int ret = 0;
    if (!job.src_start || !job.chunk_start) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < nb_srcs; i++) {
        job.src_start[i] = total;
        job.chunk_start[i] = job.nb_chunks;
        if (vimg_add_overflows(total, vimg_size(srcs[i]), &total)) {
            ret = vimg_error(-EFBIG, "total size of the inputs is too large");
            goto out;
        }
        job.nb_chunks +=
            VIMG_DIV_ROUND_UP(vimg_size(srcs[i]), CONVERT_CHUNK_BYTES);
    }

    job.total = total;
    job.is_raw = is_raw;
    ret = open_target(&job, out_path);
    if (ret < 0) {
        goto out;
    }
    if (!is_raw) {
        /* chunks in output space, a multiple of any cluster size */
        job.nb_chunks = VIMG_DIV_ROUND_UP(total, CONVERT_CHUNK_BYTES);
    }
    ret = run_chunks(&job);
    if (ret < 0) {
        goto out;
    }
    /* an image's metadata must reach the file in any case; it reaches the
     * disk too unless the target was opened unsafe (without do_flush) */
    ret = vimg_flush(job.out_img);
out:
    vimg_close(job.out_img);
    free(job.src_start);
    free(job.chunk_start);
    return ret;
}
