/* SPDX-License-Identifier: MIT */
/*
 * test-endian.c: the load/store helpers of vimg-endian.h: exact byte
 * layout in both byte orders, round trips, and no access outside the
 * bytes of the integer.
 */
#include "unit.h"

#include "vimg-endian.h"

/* A buffer with guard bytes around the 8 bytes under test. */
struct guarded {
    uint8_t before[4];
    uint8_t p[8];
    uint8_t after[4];
};

static void fill_guards(struct guarded *g)
{
    memset(g, 0xa5, sizeof(*g));
}

static void check_guards(const struct guarded *g, size_t used)
{
    for (size_t i = 0; i < sizeof(g->before); i++) {
        assert_int_equal(g->before[i], 0xa5);
        assert_int_equal(g->after[i], 0xa5);
    }
    for (size_t i = used; i < sizeof(g->p); i++) {
        assert_int_equal(g->p[i], 0xa5);
    }
}

static void test_be_layout(void **state)
{
    (void)state;
    struct guarded g;
    static const uint8_t be16[] = {0x12, 0x34};
    static const uint8_t be32[] = {0x12, 0x34, 0x56, 0x78};
    static const uint8_t be64[] = {0x01, 0x23, 0x45, 0x67,
                                   0x89, 0xab, 0xcd, 0xef};

    fill_guards(&g);
    store_be16(g.p, 0x1234);
    assert_memory_equal(g.p, be16, 2);
    check_guards(&g, 2);
    assert_int_equal(load_be16(be16), 0x1234);

    fill_guards(&g);
    store_be32(g.p, 0x12345678u);
    assert_memory_equal(g.p, be32, 4);
    check_guards(&g, 4);
    assert_int_equal(load_be32(be32), 0x12345678u);

    fill_guards(&g);
    store_be64(g.p, 0x0123456789abcdefull);
    assert_memory_equal(g.p, be64, 8);
    check_guards(&g, 8);
    assert_true(load_be64(be64) == 0x0123456789abcdefull);
}

static void test_le_layout(void **state)
{
    (void)state;
    struct guarded g;
    static const uint8_t le16[] = {0x34, 0x12};
    static const uint8_t le32[] = {0x78, 0x56, 0x34, 0x12};
    static const uint8_t le64[] = {0xef, 0xcd, 0xab, 0x89,
                                   0x67, 0x45, 0x23, 0x01};

    /* vimg-endian.h has no store_le16 (nothing writes one yet): load only */
    assert_int_equal(load_le16(le16), 0x1234);

    fill_guards(&g);
    store_le32(g.p, 0x12345678u);
    assert_memory_equal(g.p, le32, 4);
    check_guards(&g, 4);
    assert_int_equal(load_le32(le32), 0x12345678u);

    fill_guards(&g);
    store_le64(g.p, 0x0123456789abcdefull);
    assert_memory_equal(g.p, le64, 8);
    check_guards(&g, 8);
    assert_true(load_le64(le64) == 0x0123456789abcdefull);
}

/* High bits set: no sign extension through int promotion. */
static void test_high_bits(void **state)
{
    (void)state;
    static const uint8_t ff[8] = {0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff};
    static const uint8_t top[8] = {0x80, 0, 0, 0, 0, 0, 0, 0x80};

    assert_int_equal(load_be16(ff), 0xffff);
    assert_int_equal(load_le16(ff), 0xffff);
    assert_true(load_be32(ff) == 0xffffffffu);
    assert_true(load_le32(ff) == 0xffffffffu);
    assert_true(load_be64(ff) == UINT64_MAX);
    assert_true(load_le64(ff) == UINT64_MAX);
    assert_int_equal(load_be16(top), 0x8000);
    assert_int_equal(load_le16(top + 6), 0x8000);
    assert_true(load_be32(top) == 0x80000000u);
    assert_true(load_le32(top + 4) == 0x80000000u);
    assert_true(load_be64(top) == 0x8000000000000080ull);
    assert_true(load_le64(top) == 0x8000000000000080ull);
}

/* Round trips over many values, bit patterns walking through each byte. */
static void test_round_trip(void **state)
{
    (void)state;
    uint8_t p[8];
    uint64_t x = 0x9e3779b97f4a7c15ull;

    for (int i = 0; i < 4096; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const uint64_t v = i < 64 ? 1ull << i : x;

        store_be16(p, (uint16_t)v);
        assert_int_equal(load_be16(p), (uint16_t)v);
        store_be32(p, (uint32_t)v);
        assert_true(load_be32(p) == (uint32_t)v);
        store_be64(p, v);
        assert_true(load_be64(p) == v);
        /* the two orders are byte reversals of each other */
        uint8_t q[8];
        store_le64(q, v);
        for (int j = 0; j < 8; j++) {
            assert_int_equal(p[j], q[7 - j]);
        }
        assert_true(load_le64(q) == v);
        assert_int_equal(load_le16(q), (uint16_t)v);
        store_le32(q, (uint32_t)v);
        assert_true(load_le32(q) == (uint32_t)v);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_be_layout),
        cmocka_unit_test(test_le_layout),
        cmocka_unit_test(test_high_bits),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
