/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-cache.c: the L2 table cache: hit and miss counts, exact LRU
 * eviction order (checked against a model), load errors that leave the
 * cache usable, and many offsets through a small cache with every table's
 * content checked.
 */
#include <stdlib.h>

#include "unit.h"

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

#define TABLE_BYTES 64

struct loader {
    unsigned calls;
    uint64_t last_offset;
    uint64_t fail_offset; /* fail loads of this offset (UINT64_MAX: none) */
    int fail_ret;
};

/* Fill a table with a pattern that only OFFSET produces. */
static void pattern(uint64_t offset, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i += 8) {
        store_be64(buf + i, offset * 0x9e3779b97f4a7c15ull + i);
    }
}

static int load(void *opaque, uint64_t file_offset, uint8_t *buf, size_t len)
{
    struct loader *l = opaque;

    assert_int_equal(len, TABLE_BYTES);
    l->calls++;
    l->last_offset = file_offset;
    if (file_offset == l->fail_offset) {
        memset(buf, 0xee, len); /* a half-done read scribbles */
        return vimg_error(l->fail_ret, "test: injected load failure");
    }
    pattern(file_offset, buf, len);
    return 0;
}

/* Get OFFSET; check the content; return whether the loader ran. */
static bool get(struct qcow2_cache *c, struct loader *l, uint64_t offset)
{
    const unsigned before = l->calls;
    const uint8_t *t = NULL;
    uint8_t want[TABLE_BYTES];

    const int ret = qcow2_cache_get(c, offset, load, l, &t);
    if (ret != 0) {
        fail_msg("get 0x%llx: %d", (unsigned long long)offset, ret);
    }
    assert_non_null(t);
    pattern(offset, want, sizeof(want));
    assert_memory_equal(t, want, sizeof(want));
    return l->calls != before;
}

static void assert_stats(const struct qcow2_cache *c, uint64_t hits,
                         uint64_t misses)
{
    uint64_t h, m;

    qcow2_cache_stats(c, &h, &m);
    assert_int_equal(h, hits);
    assert_int_equal(m, misses);
}

static void test_new_rejects_zero(void **state)
{
    (void)state;
    assert_null(qcow2_cache_new(0, 4));
    assert_null(qcow2_cache_new(TABLE_BYTES, 0));
    qcow2_cache_free(NULL);
}

static void test_hits_and_misses(void **state)
{
    (void)state;
    struct loader l = {.fail_offset = UINT64_MAX};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, 4);

    assert_non_null(c);
    assert_stats(c, 0, 0);
    assert_true(get(c, &l, 0x10000));
    assert_stats(c, 0, 1);
    assert_false(get(c, &l, 0x10000));
    assert_false(get(c, &l, 0x10000));
    assert_stats(c, 2, 1);
    assert_true(get(c, &l, 0x20000));
    /* offset 0 is a key like any other */
    assert_true(get(c, &l, 0));
    assert_false(get(c, &l, 0));
    assert_false(get(c, &l, 0x20000));
    assert_stats(c, 4, 3);
    assert_int_equal(l.calls, 3);
    qcow2_cache_free(c);
}

static void test_lru_order(void **state)
{
    (void)state;
    struct loader l = {.fail_offset = UINT64_MAX};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, 4);
    const uint64_t a = 0x1000, b = 0x2000, cc = 0x3000, d = 0x4000,
                   e = 0x5000, f = 0x6000;

    assert_non_null(c);
    /* fill: use order (oldest first) a b c d */
    assert_true(get(c, &l, a));
    assert_true(get(c, &l, b));
    assert_true(get(c, &l, cc));
    assert_true(get(c, &l, d));
    /* touch a and b: order c d a b */
    assert_false(get(c, &l, a));
    assert_false(get(c, &l, b));
    /* e evicts c, the least recently used: order d a b e */
    assert_true(get(c, &l, e));
    assert_false(get(c, &l, d));  /* order a b e d */
    assert_false(get(c, &l, a));  /* order b e d a */
    assert_true(get(c, &l, cc));  /* c was evicted; evicts b: e d a c */
    assert_false(get(c, &l, e));  /* d a c e */
    assert_true(get(c, &l, f));   /* evicts d: a c e f */
    assert_true(get(c, &l, b));   /* b was evicted; evicts a: c e f b */
    assert_false(get(c, &l, cc));
    assert_false(get(c, &l, e));
    assert_false(get(c, &l, f));
    assert_false(get(c, &l, b));
    assert_true(get(c, &l, d));   /* evicts c */
    assert_true(get(c, &l, a));   /* evicts e */
    assert_false(get(c, &l, f));
    assert_false(get(c, &l, b));
    assert_int_equal(l.calls, 10);
    assert_stats(c, 11, 10);
    qcow2_cache_free(c);
}

static void test_single_slot(void **state)
{
    (void)state;
    struct loader l = {.fail_offset = UINT64_MAX};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, 1);

    assert_non_null(c);
    assert_true(get(c, &l, 0x200));
    assert_false(get(c, &l, 0x200));
    assert_true(get(c, &l, 0x400));
    assert_true(get(c, &l, 0x200));
    assert_false(get(c, &l, 0x200));
    assert_stats(c, 2, 3);
    qcow2_cache_free(c);
}

static void test_load_error(void **state)
{
    (void)state;
    struct loader l = {.fail_offset = 0x3000, .fail_ret = -EIO};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, 3);
    const uint8_t *t;

    assert_non_null(c);
    assert_true(get(c, &l, 0x1000));
    assert_true(get(c, &l, 0x2000));

    /* the error comes back unchanged, twice: a failed load is not cached */
    vimg_error_clear();
    assert_error(qcow2_cache_get(c, 0x3000, load, &l, &t), -EIO, "injected");
    assert_int_equal(l.calls, 3);
    l.fail_ret = -ENOMEM;
    assert_error(qcow2_cache_get(c, 0x3000, load, &l, &t), -ENOMEM,
                 "injected");
    assert_int_equal(l.calls, 4);

    /* the tables loaded before are intact */
    assert_false(get(c, &l, 0x1000));
    assert_false(get(c, &l, 0x2000));

    /* once the read works, the table loads and is then cached */
    l.fail_offset = UINT64_MAX;
    assert_true(get(c, &l, 0x3000));
    assert_false(get(c, &l, 0x3000));
    assert_false(get(c, &l, 0x1000));
    assert_false(get(c, &l, 0x2000));

    /* failing a load with a full cache costs at most the victim */
    l.fail_offset = 0x4000;
    assert_int_equal(qcow2_cache_get(c, 0x4000, load, &l, &t), -ENOMEM);
    const unsigned calls = l.calls;
    unsigned reloaded = 0;
    reloaded += get(c, &l, 0x1000);
    reloaded += get(c, &l, 0x2000);
    reloaded += get(c, &l, 0x3000);
    assert_in_range(reloaded, 0, 1);
    assert_int_equal(l.calls, calls + reloaded);
    qcow2_cache_free(c);
}

/* A model of the cache: offsets in use order, most recent last. */
struct model {
    uint64_t *lru;
    size_t n, cap;
};

/* Returns whether OFFSET was cached, and makes it the most recent. */
static bool model_get(struct model *m, uint64_t offset)
{
    for (size_t i = 0; i < m->n; i++) {
        if (m->lru[i] == offset) {
            memmove(m->lru + i, m->lru + i + 1,
                    (m->n - i - 1) * sizeof(*m->lru));
            m->lru[m->n - 1] = offset;
            return true;
        }
    }
    if (m->n == m->cap) {
        memmove(m->lru, m->lru + 1, (m->n - 1) * sizeof(*m->lru));
        m->n--;
    }
    m->lru[m->n++] = offset;
    return false;
}

static void run_against_model(size_t slots, size_t distinct, size_t steps,
                              uint64_t seed)
{
    struct loader l = {.fail_offset = UINT64_MAX};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, slots);
    struct model m = {calloc(slots, sizeof(uint64_t)), 0, slots};
    uint64_t x = seed, hits = 0;

    assert_non_null(c);
    assert_non_null(m.lru);
    for (size_t i = 0; i < steps; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* mostly a working set a little larger than the cache, sometimes
         * anywhere, so there are runs of hits and runs of evictions */
        const uint64_t range = (x >> 60) < 12 ? slots + slots / 4 : distinct;
        const uint64_t offset = ((x >> 8) % range) << 16;
        const bool want_hit = model_get(&m, offset);
        const bool loaded = get(c, &l, offset);
        if (loaded == want_hit) {
            fail_msg("step %zu, offset 0x%llx: cache %s, LRU model %s", i,
                     (unsigned long long)offset, loaded ? "missed" : "hit",
                     want_hit ? "hit" : "missed");
        }
        hits += want_hit;
    }
    assert_stats(c, hits, steps - hits);
    assert_int_equal(l.calls, steps - hits);
    free(m.lru);
    qcow2_cache_free(c);
}

static void test_against_model(void **state)
{
    (void)state;
    run_against_model(4, 9, 2000, 1);
    run_against_model(64, 10000, 60000, 2);
    run_against_model(5, 5000, 20000, 3);
}

/* 10000 distinct offsets through 64 slots, each seen several times. */
static void test_many_offsets(void **state)
{
    (void)state;
    struct loader l = {.fail_offset = UINT64_MAX};
    struct qcow2_cache *c = qcow2_cache_new(TABLE_BYTES, 64);

    assert_non_null(c);
    for (int round = 0; round < 3; round++) {
        for (uint64_t i = 0; i < 10000; i++) {
            /* offsets that collide in low bits, as cluster offsets do */
            const uint64_t offset = (i * 7919 % 10000) << 21;
            assert_true(get(c, &l, offset));
            assert_false(get(c, &l, offset));
        }
    }
    assert_stats(c, 30000, 30000);
    /* the last 64 are all still there */
    for (uint64_t i = 10000 - 64; i < 10000; i++) {
        assert_false(get(c, &l, (i * 7919 % 10000) << 21));
    }
    qcow2_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_zero),
        cmocka_unit_test(test_hits_and_misses),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_single_slot),
        cmocka_unit_test(test_load_error),
        cmocka_unit_test(test_against_model),
        cmocka_unit_test(test_many_offsets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
