/* SPDX-License-Identifier: MIT */
/*
 * pool.c: worker threads that wait for a job, take its items from a
 * counter, and go back to waiting.  One lock guards the job hand-over,
 * the ordered turns and the first error; items themselves run unlocked.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "util/pool.h"
#include "util/vimg-util.h"

#define POOL_PROGRESS_NS (100 * 1000 * 1000)

struct pool_thread {
    struct vimg_pool *pool;
    unsigned index;
    pthread_t thread;
};

struct vimg_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;  /* workers: a new job, or closing */
    pthread_cond_t idle;  /* the caller: the last worker left the job */
    pthread_cond_t turn;  /* ordered steps: next_turn moved, or failure */
    unsigned nb_threads;  /* started */
    struct pool_thread threads[VIMG_POOL_MAX_THREADS];
    bool is_closing;

    /* the current job; job and job_seq change under lock */
    const struct vimg_pool_job *job;
    uint64_t job_seq;
    unsigned nb_busy;     /* workers not yet done with it */
    uint8_t *bufs[VIMG_POOL_MAX_THREADS];
    uint64_t next_turn;   /* the item whose ordered step is next */
    atomic_uint_fast64_t next_item;
    atomic_uint_fast64_t items_done;
    atomic_int error;     /* first error, 0 if none */
    char error_msg[1024]; /* its message (the worker's is thread local) */
};

unsigned vimg_pool_default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (unsigned)n;
}

unsigned vimg_pool_threads_for(unsigned requested, uint64_t nb_items)
{
    unsigned n = requested ? requested : vimg_pool_default_threads();

    n = VIMG_MIN(n, (unsigned)VIMG_POOL_MAX_THREADS);
    if ((uint64_t)n > nb_items) {
        n = nb_items ? (unsigned)nb_items : 1;
    }
    return n;
}

static void pool_fail(struct vimg_pool *p, int err)
{
    pthread_mutex_lock(&p->lock);
    if (atomic_load(&p->error) == 0) {
        snprintf(p->error_msg, sizeof(p->error_msg), "%s", vimg_last_error());
        atomic_store(&p->error, err);
    }
    /* nobody waits for a turn that will not come */
    pthread_cond_broadcast(&p->turn);
    pthread_cond_broadcast(&p->idle);
    pthread_mutex_unlock(&p->lock);
}

bool vimg_pool_has_failed(struct vimg_pool *pool)
{
    return atomic_load(&pool->error) != 0;
}

/* ITEM's ordered step, after its fn returned RET. */
static int run_in_order(struct vimg_pool *p, const struct vimg_pool_job *job,
                        unsigned w, uint64_t item, int ret)
{
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&p->lock);
    while (p->next_turn != item && atomic_load(&p->error) == 0) {
        pthread_cond_wait(&p->turn, &p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    if (atomic_load(&p->error) != 0) {
        return 0; /* the job failed already */
    }
    ret = job->ordered_fn(job->opaque, p->bufs[w], w, item);
    pthread_mutex_lock(&p->lock);
    p->next_turn = item + 1;
    pthread_cond_broadcast(&p->turn);
    pthread_mutex_unlock(&p->lock);
    return ret;
}

/* Worker W's part of the current job. */
static void work(struct vimg_pool *p, unsigned w)
{
    const struct vimg_pool_job *job = p->job;

    while (atomic_load(&p->error) == 0) {
        const uint64_t item = atomic_fetch_add(&p->next_item, 1);
        if (item >= job->nb_items) {
            break;
        }
        int ret = job->fn(job->opaque, p->bufs[w], w, item);
        if (job->ordered_fn) {
            ret = run_in_order(p, job, w, item, ret);
        }
        if (ret < 0) {
            pool_fail(p, ret);
        }
        atomic_fetch_add(&p->items_done, 1);
    }
}

static void *worker_main(void *opaque)
{
    struct pool_thread *t = opaque;
    struct vimg_pool *p = t->pool;
    uint64_t seen = 0;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->is_closing && p->job_seq == seen) {
            pthread_cond_wait(&p->wake, &p->lock);
        }
        if (p->is_closing) {
            break;
        }
        seen = p->job_seq;
        pthread_mutex_unlock(&p->lock);
        work(p, t->index);
        pthread_mutex_lock(&p->lock);
        if (--p->nb_busy == 0) {
            pthread_cond_broadcast(&p->idle);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int vimg_pool_create(struct vimg_pool **out, unsigned nb_threads)
{
    struct vimg_pool *p = calloc(1, sizeof(*p));
    pthread_condattr_t attr;

    *out = NULL;
    if (!p) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->turn, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&p->idle, &attr);
    pthread_condattr_destroy(&attr);
    nb_threads = VIMG_MIN(nb_threads, (unsigned)VIMG_POOL_MAX_THREADS);
    for (unsigned i = 0; i < nb_threads; i++) {
        struct pool_thread *t = &p->threads[p->nb_threads];
        t->pool = p;
        t->index = p->nb_threads;
        if (pthread_create(&t->thread, NULL, worker_main, t) != 0) {
            break; /* do with those there are */
        }
        p->nb_threads++;
    }
    *out = p;
    return 0;
}

unsigned vimg_pool_workers(const struct vimg_pool *pool)
{
    return pool->nb_threads ? pool->nb_threads : 1;
}

static void free_bufs(struct vimg_pool *p)
{
    for (unsigned i = 0; i < VIMG_POOL_MAX_THREADS; i++) {
        free(p->bufs[i]);
        p->bufs[i] = NULL;
    }
}

/* Report progress until every item is done or one failed. */
static void report_progress(struct vimg_pool *p,
                            const struct vimg_pool_job *job)
{
    for (;;) {
        const uint64_t done = atomic_load(&p->items_done);
        job->progress(job->progress_opaque, done);
        if (done >= job->nb_items || atomic_load(&p->error) != 0) {
            return;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += POOL_PROGRESS_NS;
        if (until.tv_nsec >= 1000 * 1000 * 1000) {
            until.tv_sec++;
            until.tv_nsec -= 1000 * 1000 * 1000;
        }
        pthread_mutex_lock(&p->lock);
        if (p->nb_busy > 0 && atomic_load(&p->error) == 0) {
            pthread_cond_timedwait(&p->idle, &p->lock, &until);
        }
        pthread_mutex_unlock(&p->lock);
    }
}

int vimg_pool_run(struct vimg_pool *p, const struct vimg_pool_job *job)
{
    const unsigned workers = vimg_pool_workers(p);

    for (unsigned i = 0; i < workers && job->buf_bytes; i++) {
        p->bufs[i] = malloc(job->buf_bytes);
        if (!p->bufs[i]) {
            free_bufs(p);
            return vimg_error(-ENOMEM, "out of memory");
        }
    }
    atomic_store(&p->next_item, 0);
    atomic_store(&p->items_done, 0);
    atomic_store(&p->error, 0);
    p->next_turn = 0;
    p->error_msg[0] = '\0';
    if (p->nb_threads == 0) {
        p->job = job;
        work(p, 0); /* no threads: do it here */
    } else {
        pthread_mutex_lock(&p->lock);
        p->job = job;
        p->nb_busy = p->nb_threads;
        p->job_seq++;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    if (job->progress) {
        report_progress(p, job);
    }
    pthread_mutex_lock(&p->lock);
    while (p->nb_busy > 0) {
        pthread_cond_wait(&p->idle, &p->lock);
    }
    p->job = NULL;
    pthread_mutex_unlock(&p->lock);
    free_bufs(p);
    const int ret = atomic_load(&p->error);
    if (ret < 0) {
        vimg_error(ret, "%s", p->error_msg);
    }
    return ret;
}

void vimg_pool_destroy(struct vimg_pool *pool)
{
    if (!pool) {
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->is_closing = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < pool->nb_threads; i++) {
        pthread_join(pool->threads[i].thread, NULL);
    }
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->idle);
    pthread_cond_destroy(&pool->turn);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

int vimg_pool_run_job(unsigned threads, const struct vimg_pool_job *job)
{
    struct vimg_pool *pool = NULL;
    int ret = vimg_pool_create(&pool,
                               vimg_pool_threads_for(threads, job->nb_items));

    if (ret == 0) {
        ret = vimg_pool_run(pool, job);
    }
    vimg_pool_destroy(pool);
    return ret;
}
