/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-bitmap.c: the bitmap directory (qcow2.txt, "Bitmaps
 * directory"): decode of hand-made entries, round trips keeping flags,
 * granularity and extra data, and every rejected entry.
 */
#include <stdlib.h>

#include "unit.h"

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* Append one directory entry in the on-disk form; returns its length. */
static size_t put_entry(uint8_t *p, uint64_t table_offset, uint32_t table_size,
                        uint32_t flags, uint8_t type, uint8_t granularity,
                        const char *name, const uint8_t *extra,
                        uint32_t extra_size)
{
    const size_t name_size = strlen(name);
    const size_t len = (24 + extra_size + name_size + 7) & ~(size_t)7;

    memset(p, 0, len);
    store_be64(p + 0, table_offset);
    store_be32(p + 8, table_size);
    store_be32(p + 12, flags);
    p[16] = type;
    p[17] = granularity;
    store_be16(p + 18, (uint16_t)name_size);
    store_be32(p + 20, extra_size);
    if (extra_size) {
        memcpy(p + 24, extra, extra_size);
    }
    memcpy(p + 24 + extra_size, name, name_size);
    return len;
}

static void test_decode_hand_made(void **state)
{
    (void)state;
    uint8_t buf[256];
    const uint8_t extra[5] = {9, 8, 7, 6, 5};
    size_t len = 0;
    struct qcow2_bitmap *bm = NULL;

    len += put_entry(buf + len, 0x70000, 3, QCOW2_BITMAP_AUTO, 1, 16,
                     "bitmap0", NULL, 0);
    len += put_entry(buf + len, 0x80000, 1,
                     QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_EXTRA_COMPAT, 1, 9,
                     "b1", extra, sizeof(extra));
    assert_int_equal(len, 32 + 32);

    assert_int_equal(qcow2_bitmaps_decode(&bm, 2, buf, len), 0);
    assert_true(bm[0].table_offset == 0x70000);
    assert_int_equal(bm[0].table_size, 3);
    assert_int_equal(bm[0].flags, QCOW2_BITMAP_AUTO);
    assert_int_equal(bm[0].type, 1);
    assert_int_equal(bm[0].granularity_bits, 16);
    assert_string_equal(bm[0].name, "bitmap0");
    assert_int_equal(bm[0].extra_data_size, 0);
    assert_true(bm[1].table_offset == 0x80000);
    assert_int_equal(bm[1].flags,
                     QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_EXTRA_COMPAT);
    assert_int_equal(bm[1].granularity_bits, 9);
    assert_string_equal(bm[1].name, "b1");
    assert_int_equal(bm[1].extra_data_size, 5);
    assert_memory_equal(bm[1].extra_data, extra, 5);
    qcow2_bitmaps_free(bm, 2);
}

static void test_round_trip(void **state)
{
    (void)state;
    uint8_t extra[12];
    for (unsigned i = 0; i < sizeof(extra); i++) {
        extra[i] = (uint8_t)(0xf0 ^ i);
    }
    char long_name[QCOW2_MAX_BITMAP_NAME + 1];
    memset(long_name, 'n', QCOW2_MAX_BITMAP_NAME);
    long_name[QCOW2_MAX_BITMAP_NAME] = '\0';
    const struct qcow2_bitmap in[3] = {
        {.table_offset = 0x10000, .table_size = 8,
         .flags = QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_AUTO, .type = 1,
         .granularity_bits = 16, .name = "first"},
        {.table_offset = 0x20000, .table_size = 1, .flags = 0, .type = 1,
         .granularity_bits = 63, .extra_data_size = sizeof(extra),
         .extra_data = extra, .name = "with extra data"},
        {.table_offset = 0x30000, .table_size = 2,
         .flags = QCOW2_BITMAP_EXTRA_COMPAT, .type = 1,
         .granularity_bits = 0, .name = long_name},
    };
    const size_t need = qcow2_bitmaps_encode(in, 3, NULL);
    assert_int_equal(need, 32 + ((24 + 12 + 15 + 7) & ~7u) +
                               ((24 + QCOW2_MAX_BITMAP_NAME + 7) & ~7u));
    uint8_t *buf = malloc(need);
    assert_non_null(buf);
    assert_int_equal(qcow2_bitmaps_encode(in, 3, buf), need);

    struct qcow2_bitmap *out = NULL;
    assert_int_equal(qcow2_bitmaps_decode(&out, 3, buf, need), 0);
    for (int i = 0; i < 3; i++) {
        assert_true(out[i].table_offset == in[i].table_offset);
        assert_int_equal(out[i].table_size, in[i].table_size);
        assert_int_equal(out[i].flags, in[i].flags);
        assert_int_equal(out[i].type, in[i].type);
        assert_int_equal(out[i].granularity_bits, in[i].granularity_bits);
        assert_int_equal(out[i].extra_data_size, in[i].extra_data_size);
        if (in[i].extra_data_size) {
            assert_memory_equal(out[i].extra_data, in[i].extra_data,
                                in[i].extra_data_size);
        }
        assert_string_equal(out[i].name, in[i].name);
    }
    uint8_t *again = malloc(need);
    assert_non_null(again);
    assert_int_equal(qcow2_bitmaps_encode(out, 3, again), need);
    assert_memory_equal(again, buf, need);
    free(again);
    free(buf);
    qcow2_bitmaps_free(out, 3);
}

static void expect_bad(const uint8_t *buf, uint32_t nb, size_t len,
                       const char *word)
{
    struct qcow2_bitmap *bm = NULL;

    vimg_error_clear();
    assert_error(qcow2_bitmaps_decode(&bm, nb, buf, len), -EIO, word);
}

static void test_bad_entries(void **state)
{
    (void)state;
    uint8_t buf[2048];
    size_t len;

    /* name_size 0 */
    len = put_entry(buf, 0x10000, 1, 0, 1, 16, "", NULL, 0);
    expect_bad(buf, 1, len, "name");
    /* name_size above 1023 */
    len = put_entry(buf, 0x10000, 1, 0, 1, 16, "x", NULL, 0);
    store_be16(buf + 18, QCOW2_MAX_BITMAP_NAME + 1);
    expect_bad(buf, 1, sizeof(buf), "name");
    /* reserved flags: every bit above the three known ones */
    for (unsigned bit = 3; bit < 32; bit++) {
        len = put_entry(buf, 0x10000, 1, 1u << bit, 1, 16, "x", NULL, 0);
        expect_bad(buf, 1, len, "reserved");
    }
    /* granularity_bits above 63 */
    len = put_entry(buf, 0x10000, 1, 0, 1, 64, "x", NULL, 0);
    expect_bad(buf, 1, len, "granularity");
    len = put_entry(buf, 0x10000, 1, 0, 1, 255, "x", NULL, 0);
    expect_bad(buf, 1, len, "granularity");
    /* extra data larger than the whole directory */
    len = put_entry(buf, 0x10000, 1, 0, 1, 16, "x", NULL, 0);
    store_be32(buf + 20, 0xffffffffu);
    expect_bad(buf, 1, len, "extra data");
    /* the second entry of a good first one is bad: all freed (ASan) */
    len = put_entry(buf, 0x10000, 1, 0, 1, 16, "good", NULL, 0);
    len += put_entry(buf + len, 0x10000, 1, 0, 1, 99, "bad", NULL, 0);
    expect_bad(buf, 2, len, "entry 1");
}

static void test_truncated(void **state)
{
    (void)state;
    uint8_t buf[256];
    const uint8_t extra[5] = {1, 2, 3, 4, 5};
    size_t total = 0;

    total += put_entry(buf + total, 0x10000, 1, 0, 1, 16, "a", extra, 5);
    total += put_entry(buf + total, 0x20000, 1, 0, 1, 16, "second", NULL, 0);
    for (size_t len = 0; len < total; len++) {
        expect_bad(buf, 2, len, "bitmap directory");
    }
    struct qcow2_bitmap *bm = NULL;
    assert_int_equal(qcow2_bitmaps_decode(&bm, 2, buf, total), 0);
    qcow2_bitmaps_free(bm, 2);
    /* more entries claimed than there are */
    expect_bad(buf, 3, total, "truncated");
}

/* The bits covering a guest range, LSB first, clipped at the end. */
static void test_set_range(void **state)
{
    (void)state;
    uint8_t bits[8];

    /* 16 MiB at 64 KiB: 256 bits */
    assert_true(qcow2_dirty_nb_bits(16u << 20, 16) == 256);
    assert_true(qcow2_dirty_nb_bits((16u << 20) + 1, 16) == 257);
    assert_true(qcow2_dirty_nb_bits(0, 16) == 0);

    memset(bits, 0, sizeof(bits));
    qcow2_dirty_set_range(bits, 64, 9, 511, 2); /* bytes 511, 512 */
    assert_int_equal(bits[0], 0x03);
    assert_int_equal(bits[1], 0);

    memset(bits, 0, sizeof(bits));
    qcow2_dirty_set_range(bits, 64, 9, 3 * 512, 20 * 512); /* bits 3..22 */
    assert_int_equal(bits[0], 0xf8);
    assert_int_equal(bits[1], 0xff);
    assert_int_equal(bits[2], 0x7f);
    assert_int_equal(bits[3], 0);

    memset(bits, 0, sizeof(bits));
    qcow2_dirty_set_range(bits, 61, 9, 60 * 512, 1000 * 512); /* clipped */
    assert_int_equal(bits[7], 0x10);
    assert_int_equal(bits[6], 0);
    qcow2_dirty_set_range(bits, 61, 9, 61 * 512, 512); /* past the end */
    qcow2_dirty_set_range(bits, 61, 9, 0, 0);          /* nothing */
    assert_int_equal(bits[7], 0x10);
    assert_int_equal(bits[0], 0);

    memset(bits, 0, sizeof(bits));
    qcow2_dirty_set_range(bits, 64, 16, 0, 1ull << 22); /* all 64 */
    for (int i = 0; i < 8; i++) {
        assert_int_equal(bits[i], 0xff);
    }
}

/* Bitmap table entries (qcow2.txt, "Bitmap table"). */
static void test_table_entry(void **state)
{
    (void)state;
    uint64_t off = 99;
    bool ones = true;

    assert_int_equal(qcow2_dirty_table_entry(0, 65536, &off, &ones), 0);
    assert_true(off == 0 && !ones);
    assert_int_equal(qcow2_dirty_table_entry(1, 65536, &off, &ones), 0);
    assert_true(off == 0 && ones);
    assert_int_equal(qcow2_dirty_table_entry(0x30000, 65536, &off, &ones), 0);
    assert_true(off == 0x30000 && !ones);
    /* unaligned, reserved bits 1-8 and 56-63, bit 0 with an offset */
    assert_int_equal(qcow2_dirty_table_entry(0x30200, 65536, &off, &ones),
                     -EIO);
    assert_int_equal(qcow2_dirty_table_entry(0x2, 65536, &off, &ones), -EIO);
    assert_int_equal(qcow2_dirty_table_entry(1ull << 56, 65536, &off, &ones),
                     -EIO);
    assert_int_equal(qcow2_dirty_table_entry(0x30001, 65536, &off, &ones),
                     -EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_hand_made),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_set_range),
        cmocka_unit_test(test_table_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
