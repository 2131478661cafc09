/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-measure.c: the metadata arithmetic of a fully allocated qcow2
 * image against numbers qemu-img measure 7.2 prints, the refcount fixed
 * point (enough refcounts for everything, themselves included), and
 * vimg_measure / vimg_snapshot_view argument handling.
 */
#include "unit.h"

#include "formats/qcow2/qcow2.h"

struct known {
    uint64_t size;
    uint32_t cluster_size;
    unsigned refcount_bits;
    bool extended_l2;
    uint64_t fully_allocated; /* from qemu-img measure -O qcow2 --size */
};

static const struct known known[] = {
    {0, 65536, 16, false, 196608},
    {1ull << 30, 65536, 16, false, 1074135040},
    {1ull << 40, 2u << 20, 16, true, 1099528404992},
    {123456789, 512, 1, false, 125448192},
    {100ull << 30, 4096, 64, false, 107795263488},
    {5ull << 40, 65536, 64, false, 5498900840448},
};

static void test_like_qemu(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        const struct known *k = &known[i];
        struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
        o.size = k->size;
        o.cluster_size = k->cluster_size;
        o.refcount_bits = k->refcount_bits;
        o.extended_l2 = k->extended_l2;
        struct vimg_measure_result r;
        assert_int_equal(vimg_measure(NULL, &o, &r), 0);
        assert_int_equal(r.fully_allocated, k->fully_allocated);
        /* nothing allocated: everything but the data */
        const uint64_t data = (k->size + k->cluster_size - 1) /
                              k->cluster_size * k->cluster_size;
        assert_int_equal(r.required, k->fully_allocated - data);
        assert_false(r.has_bitmaps);
    }
}

/* The refcount blocks and table found cover all clusters, their own
 * included, and one block fewer would not. */
static void test_refcount_fixed_point(void **state)
{
    (void)state;
    static const uint64_t clusters[] = {0, 1, 255, 256, 4093, 4094, 4095,
                                        1000000, 1ull << 33};
    for (unsigned order = 0; order <= 6; order++) {
        for (size_t i = 0; i < sizeof(clusters) / sizeof(clusters[0]); i++) {
            const uint64_t cs = 512;
            const uint64_t per_block = cs * 8 >> order;
            const uint64_t bytes =
                qcow2_refcount_metadata_bytes(clusters[i], cs, order);
            const uint64_t n = bytes / cs;
            assert_int_equal(bytes % cs, 0);
            const uint64_t blocks =
                (clusters[i] + n + per_block - 1) / per_block;
            const uint64_t table = (blocks + cs / 8 - 1) / (cs / 8);
            assert_true(blocks + table <= n);
        }
    }
}

static void test_raw(void **state)
{
    (void)state;
    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
    struct vimg_measure_result r;

    o.format = "raw";
    o.size = 1000;
    assert_int_equal(vimg_measure(NULL, &o, &r), 0);
    assert_int_equal(r.required, 1024);
    assert_int_equal(r.fully_allocated, 1024);
    assert_false(r.has_bitmaps);
}

static void test_refusals(void **state)
{
    (void)state;
    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
    struct vimg_measure_result r;

    o.size = 1ull << 20;
    o.cluster_size = 1000;
    vimg_error_clear();
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "power of two");
    o.cluster_size = 4096;
    o.extended_l2 = true;
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "16384");
    o.extended_l2 = false;
    o.qcow2_version = 2;
    o.refcount_bits = 8;
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "compatibility level");
    o.qcow2_version = 3;
    o.refcount_bits = 24;
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "refcount width");
    o.refcount_bits = 16;
    o.preallocation = "bogus";
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "bogus");
    o.preallocation = NULL;
    o.cluster_size = 512;
    o.size = 1ull << 40;
    assert_error(vimg_measure(NULL, &o, &r), -EFBIG, "too large");
    o.format = "vmdk";
    assert_error(vimg_measure(NULL, &o, &r), -EINVAL, "vmdk");
    assert_error(vimg_measure(NULL, NULL, &r), -EINVAL, "bad argument");
}

static void test_snapshot_view_refusals(void **state)
{
    (void)state;
    static const uint8_t disk[4096];
    vimg_image *img = NULL;

    assert_int_equal(vimg_open_memory(&img, disk, sizeof(disk), "raw", "m"),
                     0);
    vimg_error_clear();
    assert_error(vimg_snapshot_view(img, "1", NULL), -ENOTSUP, "raw");
    assert_error(vimg_snapshot_view(img, NULL, NULL), -EINVAL, "argument");
    vimg_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_like_qemu),
        cmocka_unit_test(test_refcount_fixed_point),
        cmocka_unit_test(test_raw),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_snapshot_view_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
