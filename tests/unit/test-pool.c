/* SPDX-License-Identifier: MIT */
/*
 * test-pool.c: the worker pool: every item runs once, ordered steps run
 * in item order, the first error stops the job and keeps its message,
 * one thread and many give the same result, zero items, a pool reused
 * for several jobs, per-worker buffers, progress.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "unit.h"

#include "util/pool.h"

#define NB_ITEMS 1000u
#define BUF_BYTES 64u

struct state {
    atomic_uint runs[NB_ITEMS];
    uint64_t order[NB_ITEMS]; /* ordered steps, as they came */
    atomic_uint nb_ordered;
    uint64_t fail_at;         /* item that fails, or UINT64_MAX */
    unsigned nb_workers;
    atomic_uint bad_worker;   /* worker number out of range, bad buffer */
    uint8_t *seen_buf[16];
    uint64_t progress_calls, progress_last;
    uint64_t sum;             /* of the ordered items' values, in order */
};

static void init_state(struct state *s, unsigned nb_workers)
{
    memset(s, 0, sizeof(*s));
    s->fail_at = UINT64_MAX;
    s->nb_workers = nb_workers;
}

static int item_fn(void *opaque, uint8_t *buf, unsigned worker, uint64_t item)
{
    struct state *s = opaque;

    if (worker >= s->nb_workers || !buf) {
        atomic_fetch_add(&s->bad_worker, 1);
        return 0;
    }
    /* the buffer is the worker's: fill it, a concurrent user would
     * scribble over it */
    memset(buf, (int)(item & 0xff), BUF_BYTES);
    if (item % 7 == 0) {
        sched_yield();
    }
    for (unsigned i = 0; i < BUF_BYTES; i++) {
        if (buf[i] != (uint8_t)(item & 0xff)) {
            atomic_fetch_add(&s->bad_worker, 1);
        }
    }
    atomic_fetch_add(&s->runs[item], 1);
    if (item == s->fail_at) {
        return vimg_error(-EIO, "item %llu failed", (unsigned long long)item);
    }
    return 0;
}

static int ordered_fn(void *opaque, uint8_t *buf, unsigned worker,
                      uint64_t item)
{
    struct state *s = opaque;
    const unsigned n = atomic_fetch_add(&s->nb_ordered, 1);

    /* the buffer still holds what fn left for this item */
    if (buf[0] != (uint8_t)(item & 0xff) || worker >= s->nb_workers) {
        atomic_fetch_add(&s->bad_worker, 1);
    }
    s->order[n] = item;
    s->sum = s->sum * 31 + item;
    return 0;
}

static void progress_fn(void *opaque, uint64_t done)
{
    struct state *s = opaque;

    s->progress_calls++;
    s->progress_last = done;
}

static struct vimg_pool_job make_job(struct state *s, uint64_t nb_items,
                                     bool is_ordered)
{
    return (struct vimg_pool_job){
        .nb_items = nb_items,
        .buf_bytes = BUF_BYTES,
        .fn = item_fn,
        .ordered_fn = is_ordered ? ordered_fn : NULL,
        .opaque = s,
        .progress = progress_fn,
        .progress_opaque = s,
    };
}

static void test_every_item_once(void **state)
{
    (void)state;
    static const unsigned counts[] = {1, 2, 4, 16};

    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
        struct vimg_pool *pool = NULL;
        static struct state s;
        assert_int_equal(vimg_pool_create(&pool, counts[c]), 0);
        init_state(&s, vimg_pool_workers(pool));
        assert_true(s.nb_workers >= 1 && s.nb_workers <= counts[c]);
        const struct vimg_pool_job job = make_job(&s, NB_ITEMS, false);
        assert_int_equal(vimg_pool_run(pool, &job), 0);
        for (unsigned i = 0; i < NB_ITEMS; i++) {
            assert_int_equal(s.runs[i], 1);
        }
        assert_int_equal(s.bad_worker, 0);
        assert_int_equal(s.progress_last, NB_ITEMS);
        assert_true(s.progress_calls >= 1);
        vimg_pool_destroy(pool);
    }
}

static void test_ordered(void **state)
{
    (void)state;
    uint64_t sum_one = 0;

    for (unsigned threads = 1; threads <= 8; threads *= 2) {
        struct vimg_pool *pool = NULL;
        static struct state s;
        assert_int_equal(vimg_pool_create(&pool, threads), 0);
        init_state(&s, vimg_pool_workers(pool));
        const struct vimg_pool_job job = make_job(&s, NB_ITEMS, true);
        assert_int_equal(vimg_pool_run(pool, &job), 0);
        assert_int_equal(s.nb_ordered, NB_ITEMS);
        for (unsigned i = 0; i < NB_ITEMS; i++) {
            assert_int_equal(s.order[i], i);
        }
        assert_int_equal(s.bad_worker, 0);
        /* 1 and N threads: the same result */
        if (threads == 1) {
            sum_one = s.sum;
        }
        assert_true(s.sum == sum_one);
        vimg_pool_destroy(pool);
    }
}

static void test_first_error(void **state)
{
    (void)state;

    for (unsigned threads = 1; threads <= 4; threads *= 2) {
        for (int is_ordered = 0; is_ordered < 2; is_ordered++) {
            struct vimg_pool *pool = NULL;
            static struct state s;
            assert_int_equal(vimg_pool_create(&pool, threads), 0);
            init_state(&s, vimg_pool_workers(pool));
            s.fail_at = 100;
            const struct vimg_pool_job job =
                make_job(&s, NB_ITEMS, is_ordered);
            vimg_error_clear();
            assert_error(vimg_pool_run(pool, &job), -EIO, "item 100 failed");
            assert_true(vimg_pool_has_failed(pool));
            /* the items after it were not all started */
            unsigned ran = 0;
            for (unsigned i = 0; i < NB_ITEMS; i++) {
                ran += s.runs[i];
            }
            assert_true(ran < NB_ITEMS);
            /* an ordered step never ran for the failed item or past it */
            for (unsigned i = 0; i < s.nb_ordered; i++) {
                assert_true(s.order[i] < 100);
            }
            /* the pool works again after a failure */
            init_state(&s, vimg_pool_workers(pool));
            assert_int_equal(vimg_pool_run(pool, &job), 0);
            assert_false(vimg_pool_has_failed(pool));
            assert_int_equal(s.runs[NB_ITEMS - 1], 1);
            vimg_pool_destroy(pool);
        }
    }
}

static void test_zero_items(void **state)
{
    (void)state;
    static struct state s;

    for (unsigned threads = 1; threads <= 4; threads *= 4) {
        struct vimg_pool *pool = NULL;
        assert_int_equal(vimg_pool_create(&pool, threads), 0);
        init_state(&s, vimg_pool_workers(pool));
        const struct vimg_pool_job job = make_job(&s, 0, true);
        assert_int_equal(vimg_pool_run(pool, &job), 0);
        assert_int_equal(s.progress_calls, 1);
        assert_int_equal(s.progress_last, 0);
        assert_int_equal(s.nb_ordered, 0);
        vimg_pool_destroy(pool);
    }
    init_state(&s, 1);
    const struct vimg_pool_job job = make_job(&s, 0, false);
    assert_int_equal(vimg_pool_run_job(0, &job), 0);
    assert_int_equal(s.progress_calls, 1);
}

static void test_run_job(void **state)
{
    (void)state;
    static struct state s;

    /* as many workers as items at most: worker numbers stay below it */
    init_state(&s, 3);
    struct vimg_pool_job job = make_job(&s, 3, true);
    assert_int_equal(vimg_pool_run_job(16, &job), 0);
    assert_int_equal(s.nb_ordered, 3);
    assert_int_equal(s.bad_worker, 0);

    init_state(&s, 1);
    job = make_job(&s, NB_ITEMS, false);
    job.progress = NULL;
    assert_int_equal(vimg_pool_run_job(1, &job), 0);
    assert_int_equal(s.runs[NB_ITEMS - 1], 1);
    assert_int_equal(s.progress_calls, 0);
}

static void test_threads_for(void **state)
{
    (void)state;

    assert_int_equal(vimg_pool_threads_for(4, 100), 4);
    assert_int_equal(vimg_pool_threads_for(4, 2), 2);
    assert_int_equal(vimg_pool_threads_for(4, 0), 1);
    assert_int_equal(vimg_pool_threads_for(100, 1000), VIMG_POOL_MAX_THREADS);
    const unsigned d = vimg_pool_default_threads();
    assert_true(d >= 1 && d <= 8);
    assert_int_equal(vimg_pool_threads_for(0, 1000), d);
    vimg_pool_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_item_once),
        cmocka_unit_test(test_ordered),
        cmocka_unit_test(test_first_error),
        cmocka_unit_test(test_zero_items),
        cmocka_unit_test(test_run_job),
        cmocka_unit_test(test_threads_for),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
