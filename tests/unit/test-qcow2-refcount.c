/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-refcount.c: refcount block entries of every width (orders
 * 0..6): the exact bit layout qcow2.txt gives ("Host cluster management":
 * sub-byte entries start at the least significant bits, wider ones are
 * big-endian), and that setting one entry leaves its neighbours alone;
 * and qcow2_refcount_layout, the size of a refcount structure that counts
 * itself.
 */
#include "unit.h"

#include "formats/qcow2/qcow2.h"

#define BLOCK 512

static uint64_t width_mask(unsigned order)
{
    const unsigned bits = 1u << order;

    return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

static void test_layout(void **state)
{
    (void)state;
    uint8_t b[BLOCK];

    /* order 0: one bit per entry, entry 0 is bit 0 of byte 0 */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 0, 0, 1);
    assert_int_equal(b[0], 0x01);
    qcow2_refcount_set(b, 7, 0, 1);
    assert_int_equal(b[0], 0x81);
    qcow2_refcount_set(b, 9, 0, 1);
    assert_int_equal(b[1], 0x02);
    assert_int_equal(qcow2_refcount_get(b, 9, 0), 1);
    assert_int_equal(qcow2_refcount_get(b, 8, 0), 0);

    /* order 1: two bits */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 1, 1, 3);
    assert_int_equal(b[0], 0x0c);
    qcow2_refcount_set(b, 3, 1, 2);
    assert_int_equal(b[0], 0x8c);
    qcow2_refcount_set(b, 4, 1, 1);
    assert_int_equal(b[1], 0x01);
    assert_int_equal(qcow2_refcount_get(b, 3, 1), 2);

    /* order 2: nibbles, entry 0 is the low nibble */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 0, 2, 0x3);
    qcow2_refcount_set(b, 1, 2, 0xa);
    assert_int_equal(b[0], 0xa3);
    qcow2_refcount_set(b, 5, 2, 0xf);
    assert_int_equal(b[2], 0xf0);
    b[3] = 0x5c;
    assert_int_equal(qcow2_refcount_get(b, 6, 2), 0xc);
    assert_int_equal(qcow2_refcount_get(b, 7, 2), 0x5);

    /* order 3: bytes */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 3, 3, 0xab);
    assert_int_equal(b[3], 0xab);

    /* order 4: big-endian 16 bits */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 1, 4, 0x1234);
    assert_int_equal(b[2], 0x12);
    assert_int_equal(b[3], 0x34);
    b[4] = 0xfe;
    b[5] = 0xdc;
    assert_int_equal(qcow2_refcount_get(b, 2, 4), 0xfedc);

    /* order 5: big-endian 32 bits */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 2, 5, 0x89abcdefu);
    static const uint8_t be32[] = {0x89, 0xab, 0xcd, 0xef};
    assert_memory_equal(b + 8, be32, 4);

    /* order 6: big-endian 64 bits */
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 1, 6, 0x0102030405060708ull);
    static const uint8_t be64[] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_memory_equal(b + 8, be64, 8);
    assert_true(qcow2_refcount_get(b, 1, 6) == 0x0102030405060708ull);
    qcow2_refcount_set(b, 2, 6, UINT64_MAX);
    assert_true(qcow2_refcount_get(b, 2, 6) == UINT64_MAX);
}

/* For each order: on random bytes, set every entry in turn to several
 * values; each set must change exactly that entry. */
static void test_neighbours(void **state)
{
    (void)state;
    uint64_t x = 0x123456789abcdefull;

    for (unsigned order = 0; order <= 6; order++) {
        uint8_t b[BLOCK], before[BLOCK];
        const uint64_t entries = (uint64_t)BLOCK * 8 >> order;
        const uint64_t mask = width_mask(order);

        for (size_t i = 0; i < BLOCK; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b[i] = (uint8_t)x;
        }
        for (uint64_t idx = 0; idx < entries; idx++) {
            const uint64_t values[] = {0, 1, mask, mask >> 1, x & mask};
            for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
                memcpy(before, b, sizeof(b));
                qcow2_refcount_set(b, idx, order, values[v]);
                assert_true(qcow2_refcount_get(b, idx, order) == values[v]);
                /* only the bits of entry IDX may differ */
                const uint64_t first_bit = idx << order;
                const uint64_t last_bit = first_bit + (1u << order) - 1;
                const size_t lo = (size_t)(first_bit / 8);
                const size_t hi = (size_t)(last_bit / 8);
                if (memcmp(b, before, lo) != 0 ||
                    memcmp(b + hi + 1, before + hi + 1, BLOCK - hi - 1)) {
                    fail_msg("order %u: set of entry %llu changed other "
                             "bytes",
                             order, (unsigned long long)idx);
                }
                if (order < 3) {
                    const unsigned m = (unsigned)mask << (first_bit % 8);
                    assert_int_equal((b[lo] ^ before[lo]) & ~m & 0xff, 0);
                }
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
}

/* For sub-byte widths the entry's bits are exactly [idx<<order, ...) in
 * little-endian bit order; for wider ones they are the big-endian bytes.
 * Check get against an independent bit-by-bit reading. */
static void test_get_matches_bits(void **state)
{
    (void)state;
    uint8_t b[BLOCK];

    for (size_t i = 0; i < BLOCK; i++) {
        b[i] = (uint8_t)(i * 37 + 11);
    }
    for (unsigned order = 0; order <= 6; order++) {
        const unsigned bits = 1u << order;
        for (uint64_t idx = 0; idx < (uint64_t)BLOCK * 8 >> order; idx++) {
            uint64_t want = 0;
            if (bits < 8) {
                for (unsigned k = 0; k < bits; k++) {
                    const uint64_t bit = (idx << order) + k;
                    want |= (uint64_t)((b[bit / 8] >> (bit % 8)) & 1) << k;
                }
            } else {
                for (unsigned k = 0; k < bits / 8; k++) {
                    want = want << 8 | b[idx * (bits / 8) + k];
                }
            }
            assert_true(qcow2_refcount_get(b, idx, order) == want);
        }
    }
}

/* A value wider than the entry does not spill into the neighbours. */
static void test_oversized_value(void **state)
{
    (void)state;
    uint8_t b[4];

    for (unsigned order = 0; order <= 2; order++) {
        memset(b, 0, sizeof(b));
        qcow2_refcount_set(b, 1, order, UINT64_MAX);
        assert_true(qcow2_refcount_get(b, 1, order) == width_mask(order));
        assert_int_equal(qcow2_refcount_get(b, 0, order), 0);
        assert_int_equal(qcow2_refcount_get(b, 2, order), 0);
    }
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 1, 3, 0x1ff);
    assert_int_equal(b[0], 0);
    assert_int_equal(b[1], 0xff);
    assert_int_equal(b[2], 0);
    memset(b, 0, sizeof(b));
    qcow2_refcount_set(b, 0, 4, 0x12345);
    assert_int_equal(b[0], 0x23);
    assert_int_equal(b[1], 0x45);
    assert_int_equal(b[2], 0);
}

/* Do BLOCKS refcount blocks and TABLE table clusters count CLUSTERS
 * clusters and themselves? */
static bool covers(uint64_t clusters, uint64_t cs, unsigned order,
                   uint64_t blocks, uint64_t table)
{
    const uint64_t per_block = cs * 8 >> order;

    return blocks * per_block >= clusters + blocks + table &&
           table * (cs / 8) >= blocks;
}

static void test_refcount_layout_known(void **state)
{
    (void)state;
    uint64_t b, t;

    qcow2_refcount_layout(0, 65536, 4, &b, &t);
    assert_int_equal(b, 0);
    assert_int_equal(t, 0);
    /* one cluster: one block and one table cluster count it and
     * themselves */
    qcow2_refcount_layout(1, 65536, 4, &b, &t);
    assert_int_equal(b, 1);
    assert_int_equal(t, 1);
    /* 32768 16-bit refcounts per block: 32766 + 1 + 1 fit, 32767 not */
    qcow2_refcount_layout(32766, 65536, 4, &b, &t);
    assert_int_equal(b, 1);
    assert_int_equal(t, 1);
    qcow2_refcount_layout(32767, 65536, 4, &b, &t);
    assert_int_equal(b, 2);
    assert_int_equal(t, 1);
    /* 512-byte clusters, 64-bit refcounts: 64 per block, 64 blocks per
     * table cluster */
    qcow2_refcount_layout(62, 512, 6, &b, &t);
    assert_int_equal(b, 1);
    assert_int_equal(t, 1);
    qcow2_refcount_layout(4096, 512, 6, &b, &t);
    assert_int_equal(b, 66);
    assert_int_equal(t, 2);
}

/* Every answer counts itself, and one block fewer (with the table it
 * needs) would not: the smallest structure. */
static void test_refcount_layout_least(void **state)
{
    (void)state;
    static const uint64_t clusters[] = {1,    2,     63,       64,
                                        255,  256,   4093,     4094,
                                        4095, 65536, 1000000, 1ull << 33};
    static const uint64_t sizes[] = {512, 4096, 65536, 2u << 20};

    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        for (unsigned order = 0; order <= 6; order++) {
            for (size_t i = 0; i < sizeof(clusters) / sizeof(clusters[0]);
                 i++) {
                const uint64_t cs = sizes[k];
                uint64_t b, t;
                qcow2_refcount_layout(clusters[i], cs, order, &b, &t);
                assert_true(covers(clusters[i], cs, order, b, t));
                assert_true(b >= 1 && t >= 1);
                const uint64_t fewer = b - 1;
                const uint64_t fewer_table = (fewer + cs / 8 - 1) / (cs / 8);
                assert_false(
                    covers(clusters[i], cs, order, fewer, fewer_table));
                assert_int_equal(t, (b + cs / 8 - 1) / (cs / 8));
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_neighbours),
        cmocka_unit_test(test_get_matches_bits),
        cmocka_unit_test(test_oversized_value),
        cmocka_unit_test(test_refcount_layout_known),
        cmocka_unit_test(test_refcount_layout_least),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
