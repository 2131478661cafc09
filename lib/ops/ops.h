/* SPDX-License-Identifier: MIT */
/*
 * ops.h: helpers shared by the whole-image algorithms in lib/ops.
 */
#ifndef VIMG_OPS_H
#define VIMG_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vimg.h"

/* Is every byte of BUF zero? */
bool vimg_buffer_is_zero(const uint8_t *buf, size_t len);

/* chunks.c */
/* Work on chunk number CHUNK with BUF, the calling worker's buffer.
 * Returns 0 or a negative errno with the message set. */
typedef int (*vimg_chunk_fn)(void *opaque, uint8_t *buf, uint64_t chunk);

struct vimg_chunk_run {
    uint64_t nb_chunks;
    uint64_t chunk_bytes;  /* for progress: chunk i covers i*chunk_bytes.. */
    uint64_t total_bytes;  /* ..up to total_bytes */
    size_t buf_bytes;      /* each worker's buffer */
    unsigned threads;      /* 0: one per CPU (max 8) */
    vimg_chunk_fn fn;
    void *opaque;
    vimg_progress_fn progress;
    void *progress_opaque;
};

/*
 * Run R->fn on every chunk from worker threads that take chunks in turn;
 * the calling thread reports progress meanwhile.  Stops at the first
 * error, which is returned with its message.
 */
int vimg_run_chunks(const struct vimg_chunk_run *r);

#endif
