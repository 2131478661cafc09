/* SPDX-License-Identifier: MIT */
/*
 * chunks.c: a small worker pool for whole-image operations (commit,
 * rebase): threads take chunk numbers from a counter, the first error
 * stops everyone, the caller's thread reports progress.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "ops/ops.h"
#include "vimg-internal.h"

#define CHUNKS_MAX_THREADS 16

struct chunk_pool {
    const struct vimg_chunk_run *r;
    atomic_uint_fast64_t next_chunk;
    atomic_uint_fast64_t chunks_done;
    atomic_int error;
    pthread_mutex_t error_lock;
    char error_msg[1024];
};

static void pool_fail(struct chunk_pool *p, int err)
{
    int expected = 0;

    if (atomic_compare_exchange_strong(&p->error, &expected, err)) {
        pthread_mutex_lock(&p->error_lock);
        snprintf(p->error_msg, sizeof(p->error_msg), "%s", vimg_last_error());
        pthread_mutex_unlock(&p->error_lock);
    }
}

static void *pool_worker(void *opaque)
{
    struct chunk_pool *p = opaque;
    uint8_t *buf = malloc(p->r->buf_bytes ? p->r->buf_bytes : 1);

    if (!buf) {
        pool_fail(p, vimg_error(-ENOMEM, "out of memory"));
    }
    while (atomic_load(&p->error) == 0) {
        const uint64_t chunk = atomic_fetch_add(&p->next_chunk, 1);
        if (chunk >= p->r->nb_chunks) {
            break;
        }
        int ret = p->r->fn(p->r->opaque, buf, chunk);
        if (ret < 0) {
            pool_fail(p, ret);
        }
        atomic_fetch_add(&p->chunks_done, 1);
    }
    free(buf);
    return NULL;
}

static unsigned default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (unsigned)n;
}

static uint64_t done_bytes(const struct vimg_chunk_run *r, uint64_t chunks)
{
    const uint64_t b = chunks * r->chunk_bytes;
    return b > r->total_bytes ? r->total_bytes : b;
}

int vimg_run_chunks(const struct vimg_chunk_run *r)
{
    struct chunk_pool p = {.r = r};
    pthread_t threads[CHUNKS_MAX_THREADS];
    unsigned n = r->threads ? r->threads : default_threads();

    n = VIMG_MIN(n, (unsigned)CHUNKS_MAX_THREADS);
    if ((uint64_t)n > r->nb_chunks) {
        n = r->nb_chunks ? (unsigned)r->nb_chunks : 1;
    }
    pthread_mutex_init(&p.error_lock, NULL);
    unsigned started = 0;
    for (; started < n; started++) {
        if (pthread_create(&threads[started], NULL, pool_worker, &p)) {
            break;
        }
    }
    if (started == 0) {
        pool_worker(&p); /* no threads: do it here */
    }
    while (r->progress) {
        const uint64_t chunks = atomic_load(&p.chunks_done);
        r->progress(r->progress_opaque, done_bytes(r, chunks),
                    r->total_bytes);
        if (chunks >= r->nb_chunks || atomic_load(&p.error)) {
            break;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    int ret = atomic_load(&p.error);
    if (ret < 0) {
        vimg_error(ret, "%s", p.error_msg);
    }
    pthread_mutex_destroy(&p.error_lock);
    return ret;
}
