/* SPDX-License-Identifier: MIT */
/*
 * pool.h: the one worker pool of lib/ (convert, commit, rebase, check,
 * compressed writes).  A job is NB_ITEMS numbered items; the workers take
 * them in turn (item 0 first), the first error stops the handing out of
 * items and is returned with its message, and the calling thread reports
 * progress meanwhile.  A job may add a second step that runs item by item
 * in order (ordered_fn): a parallel read and compress, then writes in
 * item order, so the output is the same whatever the thread count.
 */
#ifndef VIMG_POOL_H
#define VIMG_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VIMG_POOL_MAX_THREADS 16

struct vimg_pool;

/* Work on item ITEM as worker number WORKER (0 .. vimg_pool_workers() - 1:
 * index per-worker state with it) with BUF, that worker's buffer of the
 * job's buf_bytes.  Returns 0 or a negative errno with the message set. */
typedef int (*vimg_pool_fn)(void *opaque, uint8_t *buf, unsigned worker,
                            uint64_t item);

/* Progress, in the calling thread: ITEMS_DONE items are finished. */
typedef void (*vimg_pool_progress_fn)(void *opaque, uint64_t items_done);

struct vimg_pool_job {
    uint64_t nb_items;
    size_t buf_bytes;          /* each worker's buffer (0: none) */
    vimg_pool_fn fn;           /* in parallel */
    /* Optional: after fn, on the same worker and buffer, one item at a
     * time in item order (item K's starts after item K-1's returned).
     * Skipped when fn failed, or once any item failed. */
    vimg_pool_fn ordered_fn;
    void *opaque;
    /* Optional: called at once, then every 100 ms until every item is
     * done or one failed. */
    vimg_pool_progress_fn progress;
    void *progress_opaque;
};

/* One thread per CPU, at most 8: what "0 threads" means to the ops. */
unsigned vimg_pool_default_threads(void);

/* How many threads a job of NB_ITEMS items wants when the caller asked
 * for REQUESTED (0: the default): never more than items, at least 1, at
 * most VIMG_POOL_MAX_THREADS. */
unsigned vimg_pool_threads_for(unsigned requested, uint64_t nb_items);

/*
 * Start NB_THREADS (1..VIMG_POOL_MAX_THREADS) workers.  Threads the system
 * refuses are done without (with none at all, vimg_pool_run works in the
 * calling thread).  Returns 0 or -ENOMEM.
 */
int vimg_pool_create(struct vimg_pool **out, unsigned nb_threads);

/* The number of distinct worker numbers a job sees (at least 1). */
unsigned vimg_pool_workers(const struct vimg_pool *pool);

/*
 * Run JOB on POOL and wait for it (one job at a time per pool).  Returns
 * 0, or the first error with its message.  A job of 0 items returns 0 (its
 * progress is called once).
 */
int vimg_pool_run(struct vimg_pool *pool, const struct vimg_pool_job *job);

/* Has an item of the running job failed?  For long items that would
 * rather stop early; their result is not used anyway. */
bool vimg_pool_has_failed(struct vimg_pool *pool);

/* Stop the workers and free POOL.  NULL is a no-op. */
void vimg_pool_destroy(struct vimg_pool *pool);

/* vimg_pool_create(vimg_pool_threads_for(THREADS, JOB->nb_items)), run
 * JOB, destroy. */
int vimg_pool_run_job(unsigned threads, const struct vimg_pool_job *job);

#endif
