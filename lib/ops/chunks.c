/* SPDX-License-Identifier: MIT */
/*
 * chunks.c: whole-image operations (commit, rebase) cut into chunks of
 * bytes and run on the worker pool, with progress in bytes.
 */
#include "ops/ops.h"
#include "util/pool.h"
#include "util/vimg-util.h"

static int run_chunk(void *opaque, uint8_t *buf, unsigned worker,
                     uint64_t chunk)
{
    const struct vimg_chunk_run *r = opaque;

    (void)worker;
    return r->fn(r->opaque, buf, chunk);
}

static void chunk_progress(void *opaque, uint64_t chunks)
{
    const struct vimg_chunk_run *r = opaque;
    const uint64_t b = chunks * r->chunk_bytes;

    r->progress(r->progress_opaque, VIMG_MIN(b, r->total_bytes),
                r->total_bytes);
}

int vimg_run_chunks(const struct vimg_chunk_run *r)
{
    const struct vimg_pool_job job = {
        .nb_items = r->nb_chunks,
        .buf_bytes = r->buf_bytes ? r->buf_bytes : 1,
        .fn = run_chunk,
        .opaque = (void *)r,
        .progress = r->progress ? chunk_progress : NULL,
        .progress_opaque = (void *)r,
    };

    return vimg_pool_run_job(r->threads, &job);
}
