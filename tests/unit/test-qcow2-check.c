/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-check.c: the consistency check on a tiny qcow2 image built
 * by hand in memory (512-byte clusters), with single bytes poked in: the
 * counts qemu-img check gives for each kind of damage (a leak, a refcount
 * too low, a cluster used twice, an L2 entry past the end of the file, a
 * wrong COPIED flag, a refcount block on top of the L1 table), the repairs
 * of -r leaks and -r all (rebuilding a broken refcount table), crash
 * safety of the repairs (every write from the Nth on lost), counters past
 * 16 bits, the thread count not changing what is reported, and raw images
 * having no check.
 */
#include <stdlib.h>

#include "unit.h"

#include "vimg-endian.h"

#define CS 512u
#define NB 8u /* clusters in the file */
#define COPIED (1ull << 63)

/*
 * 0 header  1 refcount table  2 refcount block  3 L1  4 L2
 * 5 data A (guest 0)  6 data B (guest 512)  7 free
 */
static void build(uint8_t *b)
{
    memset(b, 0, NB * CS);
    store_be32(b + 0, 0x514649fb);
    store_be32(b + 4, 3);
    store_be32(b + 20, 9);           /* 512-byte clusters */
    store_be64(b + 24, 64 * CS);     /* one L2 table's worth */
    store_be32(b + 36, 1);           /* L1 entries */
    store_be64(b + 40, 3 * CS);
    store_be64(b + 48, 1 * CS);
    store_be32(b + 56, 1);
    store_be32(b + 96, 4);           /* 16-bit refcounts */
    store_be32(b + 100, 104);
    store_be64(b + 1 * CS, 2 * CS);  /* refcount table -> block */
    for (unsigned c = 0; c < 7; c++) {
        store_be16(b + 2 * CS + 2 * c, 1);
    }
    store_be64(b + 3 * CS, 4 * CS | COPIED);
    store_be64(b + 4 * CS, 5 * CS | COPIED);
    store_be64(b + 4 * CS + 8, 6 * CS | COPIED);
}

struct lines {
    unsigned n;
    uint64_t hash; /* FNV-1a of the lines, in order */
};

static void count_line(void *opaque, const char *msg)
{
    struct lines *l = opaque;

    assert_true(msg[0] != '\0');
    l->n++;
    if (l->n == 1) {
        l->hash = 0xcbf29ce484222325ull;
    }
    for (const char *c = msg;; c++) {
        l->hash = (l->hash ^ (uint8_t)*c) * 0x100000001b3ull;
        if (*c == '\0') {
            break;
        }
    }
}

static vimg_image *open_rw(const uint8_t *b, size_t len)
{
    struct vimg_io *io = NULL;
    vimg_image *img = NULL;

    assert_int_equal(vimg_io_mem_new(&io, b, len, "t"), 0);
    assert_int_equal(vimg_open_io(&img, io, "t", "qcow2",
                                  VIMG_OPEN_RDWR | VIMG_OPEN_CHECK |
                                      VIMG_OPEN_NO_BACKING |
                                      VIMG_OPEN_MEMORY),
                     0);
    return img;
}

/* Worker threads of check() (vimg_check_opts; 0: one per CPU) */
static unsigned check_threads;

static void check(vimg_image *img, unsigned flags, int want_ret,
                  uint64_t errors, uint64_t corruptions, uint64_t leaks,
                  struct vimg_check_result *r)
{
    struct lines l = {0};
    const struct vimg_check_opts o = {VIMG_CHECK_OPTS_VERSION, flags,
                                      check_threads, count_line, &l};

    assert_int_equal(vimg_check_ext(img, &o, r), want_ret);
    if (want_ret == 0) {
        assert_int_equal(r->check_errors, errors);
        assert_int_equal(r->corruptions, corruptions);
        assert_int_equal(r->leaks, leaks);
        /* one line per problem at least */
        assert_true(l.n >= corruptions + leaks + errors);
    }
}

static void test_clean(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;

    build(b);
    vimg_image *img = open_rw(b, sizeof(b));
    check(img, 0, 0, 0, 0, 0, &r);
    assert_int_equal(r.total_clusters, 64);
    assert_int_equal(r.allocated_clusters, 2);
    assert_int_equal(r.fragmented_clusters, 0);
    assert_int_equal(r.image_end_offset, 7 * CS);
    vimg_close(img);
}

static void test_leak(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;

    build(b);
    store_be16(b + 2 * CS + 2 * 7, 1); /* cluster 7: counted, unused */
    vimg_image *img = open_rw(b, sizeof(b));
    check(img, 0, 0, 0, 0, 1, &r);
    check(img, VIMG_CHECK_REPAIR_LEAKS, 0, 0, 0, 0, &r);
    assert_int_equal(r.leaks_fixed, 1);
    check(img, 0, 0, 0, 0, 0, &r);
    vimg_close(img);
}

static void test_too_low_and_copied(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;

    build(b);
    /* guest 512 also maps to A: A has 2 users, refcount 1; B leaks */
    store_be64(b + 4 * CS + 8, 5 * CS | COPIED);
    vimg_image *img = open_rw(b, sizeof(b));
    check(img, 0, 0, 0, 1, 1, &r);
    /* -r leaks leaves the refcount that is too low */
    check(img, VIMG_CHECK_REPAIR_LEAKS, 0, 0, 1, 0, &r);
    /* -r all raises it, then both COPIED flags must go: 1 + 2 fixed */
    check(img, VIMG_CHECK_REPAIR_ALL, 0, 0, 0, 0, &r);
    assert_int_equal(r.corruptions_fixed, 3);
    check(img, 0, 0, 0, 0, 0, &r);
    vimg_close(img);
}

static void test_past_eof_and_copied(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;

    build(b);
    store_be64(b + 4 * CS + 8, 0x7f0000 | COPIED); /* past the end */
    vimg_image *img = open_rw(b, sizeof(b));
    /* the reference, the COPIED flag of refcount 0, and B leaked */
    check(img, 0, 0, 0, 2, 1, &r);
    vimg_close(img);
}

static void test_rebuild(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;

    build(b);
    store_be64(b + 1 * CS, 0); /* refcount table entry lost */
    vimg_image *img = open_rw(b, sizeof(b));
    /* 6 clusters in use with refcount 0 (all but the block), 3 COPIED */
    check(img, 0, 0, 0, 9, 0, &r);
    /* needs a rebuild: -r leaks cannot complete */
    check(img, VIMG_CHECK_REPAIR_LEAKS, -EIO, 0, 0, 0, &r);
    check(img, VIMG_CHECK_REPAIR_ALL, 0, 0, 0, 0, &r);
    assert_int_equal(r.corruptions_fixed, 6);
    check(img, 0, 0, 0, 0, 0, &r);
    vimg_close(img);
}

static void test_block_on_metadata(void **state)
{
    (void)state;
    uint8_t b[NB * CS];
    struct vimg_check_result r;
    struct lines l = {0};

    build(b);
    store_be64(b + 1 * CS, 3 * CS); /* the "refcount block" is the L1 */
    vimg_image *img = open_rw(b, sizeof(b));
    assert_int_equal(vimg_check(img, 0, &r, count_line, &l), 0);
    assert_true(r.corruptions > 0);
    /* -r all rebuilds the structure in new clusters */
    check(img, VIMG_CHECK_REPAIR_ALL, 0, 0, 0, 0, &r);
    assert_true(r.corruptions_fixed > 0);
    check(img, 0, 0, 0, 0, 0, &r);
    vimg_close(img);
}

static void test_threads_same_output(void **state)
{
    (void)state;
    /* many L2 tables so that the scan is split: 256 L1 entries */
    const size_t nb = 8 + 256 + 256;
    uint8_t *b = calloc(nb, CS);
    struct vimg_check_result r1, r8;

    assert_non_null(b);
    build(b);
    store_be64(b + 24, 256ull * 64 * CS);
    store_be32(b + 36, 256);
    store_be64(b + 3 * CS, 0);
    /* L1 at clusters 3..6 (256 entries), L2 tables at 8.., data after */
    store_be64(b + 40, 8ull * CS);
    store_be64(b + 1 * CS, 2 * CS);
    memset(b + 2 * CS, 0, CS);
    memset(b + 3 * CS, 0, 4 * CS);
    for (unsigned c = 0; c < 3; c++) {
        store_be16(b + 2 * CS + 2 * c, 1);
    }
    /* refcount block covers 256 clusters only: leave the rest broken on
     * purpose, so that there are many messages to order */
    for (unsigned i = 0; i < 256; i++) {
        const uint64_t l2 = (9 + i) * (uint64_t)CS;
        const uint64_t data = (9 + 256 + i) * (uint64_t)CS;
        if (l2 + CS <= nb * CS) {
            store_be64(b + 8 * CS + i * 8, l2 | COPIED);
            store_be64(b + l2, data | COPIED);
        }
    }
    vimg_image *img = open_rw(b, nb * CS);
    struct lines l1 = {0}, l8 = {0};
    const struct vimg_check_opts o1 = {VIMG_CHECK_OPTS_VERSION, 0, 1,
                                       count_line, &l1};
    const struct vimg_check_opts o8 = {VIMG_CHECK_OPTS_VERSION, 0, 8,
                                       count_line, &l8};
    assert_int_equal(vimg_check_ext(img, &o1, &r1), 0);
    assert_int_equal(vimg_check_ext(img, &o8, &r8), 0);
    assert_memory_equal(&r1, &r8, sizeof(r1));
    /* the same lines in the same order, whatever the thread count */
    assert_int_equal(l1.n, l8.n);
    assert_true(l1.hash == l8.hash);
    for (unsigned threads = 2; threads <= 5; threads++) {
        struct lines ln = {0};
        struct vimg_check_result rn;
        const struct vimg_check_opts on = {VIMG_CHECK_OPTS_VERSION, 0,
                                           threads, count_line, &ln};
        assert_int_equal(vimg_check_ext(img, &on, &rn), 0);
        assert_memory_equal(&r1, &rn, sizeof(r1));
        assert_int_equal(l1.n, ln.n);
        assert_true(l1.hash == ln.hash);
    }
    assert_true(r1.corruptions > 0);
    vimg_close(img);
    free(b);
}

/*
 * Crash safety of repairs: let every write from the Nth on fail (what a
 * crash at that point leaves), for every N, and check the result again:
 * it must still open for checking and have no more clusters in use with
 * too low a refcount than the damaged image had (leaks may grow; COPIED
 * flags may be wrong in between, which is harmless once the refcounts are
 * high enough), and when the repair got to the end, nothing left.
 */
static void count_too_low(void *opaque, const char *msg)
{
    unsigned *n = opaque;

    *n += strncmp(msg, "ERROR: cluster ", 15) == 0;
}

static void crash_at_every_write(const uint8_t *b, size_t len)
{
    struct vimg_check_result before, r;
    vimg_image *img = open_rw(b, len);

    unsigned too_low_before = 0;
    assert_int_equal(vimg_check(img, 0, &before, count_too_low,
                                &too_low_before),
                     0);
    vimg_close(img);
    assert_true(before.corruptions > 0);
    for (unsigned n = 1; n < 200; n++) {
        struct vimg_io *mem = NULL, *io = NULL;
        struct vimg_io_fault_plan plan = {.fail_write_n = n, .sticky = true};
        assert_int_equal(vimg_io_mem_new(&mem, b, len, "t"), 0);
        assert_int_equal(vimg_io_fault_new(&io, mem, &plan), 0);
        img = NULL;
        assert_int_equal(vimg_open_io(&img, io, "t", "qcow2",
                                      VIMG_OPEN_RDWR | VIMG_OPEN_CHECK |
                                          VIMG_OPEN_NO_BACKING |
                                          VIMG_OPEN_MEMORY),
                         0);
        const int ret = vimg_check(img, VIMG_CHECK_REPAIR_ALL, &r, NULL,
                                   NULL);
        const unsigned faults = vimg_io_fault_count(io);
        size_t out_len;
        const uint8_t *out = vimg_io_mem_data(mem, &out_len);
        uint8_t *copy = malloc(out_len);
        assert_non_null(copy);
        memcpy(copy, out, out_len);
        vimg_close(img);

        vimg_image *again = open_rw(copy, out_len);
        unsigned too_low = 0;
        assert_int_equal(vimg_check(again, 0, &r, count_too_low, &too_low),
                         0);
        assert_true(too_low <= too_low_before);
        assert_int_equal(r.check_errors, 0);
        vimg_close(again);
        free(copy);
        if (faults == 0) {
            /* the repair ran to the end before write N */
            assert_int_equal(ret, 0);
            assert_int_equal(r.corruptions, 0);
            return;
        }
    }
    fail_msg("the repair never finished");
}

static void test_crash_safe_raise(void **state)
{
    (void)state;
    uint8_t b[NB * CS];

    build(b);
    store_be64(b + 4 * CS + 8, 5 * CS | COPIED);
    crash_at_every_write(b, sizeof(b));
}

static void test_crash_safe_rebuild(void **state)
{
    (void)state;
    uint8_t b[NB * CS];

    build(b);
    store_be64(b + 1 * CS, 0);
    store_be16(b + 2 * CS + 2 * 7, 1); /* and a leak */
    crash_at_every_write(b, sizeof(b));
}

/*
 * Counters past 16 bits: 1100 L1 entries name one L2 table whose 64
 * entries name one data cluster (70400 references), with 32-bit
 * refcounts, scanned by 8 threads: the counts must be exact every time.
 */
static void test_wide_refcounts(void **state)
{
    (void)state;
    enum { L1N = 1100, L1C = (L1N * 8 + CS - 1) / CS };
    const size_t nb = 3 + L1C + 2;
    const uint64_t l2 = (3 + L1C) * (uint64_t)CS, data = l2 + CS;
    uint8_t *b = calloc(nb, CS);
    struct vimg_check_result r;

    assert_non_null(b);
    build(b);
    memset(b + CS, 0, 2 * CS);
    store_be64(b + 24, (uint64_t)L1N * 64 * CS);
    store_be32(b + 36, L1N);
    store_be32(b + 96, 5); /* 32-bit refcounts */
    store_be64(b + 1 * CS, 2 * CS);
    for (unsigned c = 0; c < nb; c++) {
        store_be32(b + 2 * CS + 4 * c, 1);
    }
    for (unsigned i = 0; i < L1N; i++) {
        store_be64(b + 3 * CS + 8 * i, l2);
    }
    memset(b + l2, 0, 2 * CS);
    for (unsigned j = 0; j < 64; j++) {
        store_be64(b + l2 + 8 * j, data);
    }
    check_threads = 8;
    for (int k = 0; k < 5; k++) {
        vimg_image *img = open_rw(b, nb * CS);
        /* 2 refcounts too low, and every COPIED flag is clear while
         * the stored refcounts say 1 */
        check(img, 0, 0, 0, 2 + L1N + L1N * 64, 0, &r);
        assert_int_equal(r.allocated_clusters, L1N * 64);
        check(img, VIMG_CHECK_REPAIR_ALL, 0, 0, 0, 0, &r);
        assert_int_equal(r.corruptions_fixed, 2);
        check(img, 0, 0, 0, 0, 0, &r);
        vimg_close(img);
    }
    check_threads = 0;
    free(b);
}

static void test_raw_has_no_check(void **state)
{
    (void)state;
    uint8_t b[4096] = {0};
    vimg_image *img = NULL;
    struct vimg_check_result r;

    assert_int_equal(vimg_open_memory(&img, b, sizeof(b), "raw", "r"), 0);
    vimg_error_clear();
    assert_error(vimg_check(img, 0, &r, NULL, NULL), -ENOTSUP, "support");
    vimg_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),
        cmocka_unit_test(test_leak),
        cmocka_unit_test(test_too_low_and_copied),
        cmocka_unit_test(test_past_eof_and_copied),
        cmocka_unit_test(test_rebuild),
        cmocka_unit_test(test_block_on_metadata),
        cmocka_unit_test(test_threads_same_output),
        cmocka_unit_test(test_crash_safe_raise),
        cmocka_unit_test(test_crash_safe_rebuild),
        cmocka_unit_test(test_wide_refcounts),
        cmocka_unit_test(test_raw_has_no_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
