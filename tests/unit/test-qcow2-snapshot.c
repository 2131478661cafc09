/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-snapshot.c: the snapshot table (qcow2.txt, "Snapshots"):
 * decode of hand-made entries, round trips with and without extra data,
 * the optional extra fields (large vm state size, disk size, icount),
 * unknown extra data kept byte for byte, truncation and bad sizes.
 */
#include <stdlib.h>

#include "unit.h"

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* Append one entry in the on-disk form; returns its padded length. */
static size_t put_entry(uint8_t *p, uint64_t l1_offset, uint32_t l1_size,
                        const char *id, const char *name, uint32_t vm_state,
                        const uint8_t *extra, uint32_t extra_size)
{
    const size_t id_size = strlen(id), name_size = strlen(name);
    const size_t len = 40 + extra_size + id_size + name_size;
    const size_t padded = (len + 7) & ~(size_t)7;

    memset(p, 0, padded);
    store_be64(p + 0, l1_offset);
    store_be32(p + 8, l1_size);
    store_be16(p + 12, (uint16_t)id_size);
    store_be16(p + 14, (uint16_t)name_size);
    store_be32(p + 16, 1700000000u);  /* date_sec */
    store_be32(p + 20, 123456789u);   /* date_nsec */
    store_be64(p + 24, 987654321ull); /* vm_clock_nsec */
    store_be32(p + 32, vm_state);
    store_be32(p + 36, extra_size);
    if (extra_size) {
        memcpy(p + 40, extra, extra_size);
    }
    memcpy(p + 40 + extra_size, id, id_size);
    memcpy(p + 40 + extra_size + id_size, name, name_size);
    return padded;
}

static void test_decode_hand_made(void **state)
{
    (void)state;
    uint8_t buf[1024];
    uint8_t extra[24];
    size_t off = 0, used = 0;
    struct qcow2_snapshot *sn = NULL;

    /* 1: no extra data; 2: 16 bytes; 3: 24 bytes with an icount */
    off += put_entry(buf + off, 0x30000, 16, "1", "clean", 0x1000, NULL, 0);
    store_be64(extra, 0x123456789ull); /* vm state size, above 4 GiB */
    store_be64(extra + 8, 1ull << 32); /* disk size */
    const size_t second = off;
    off += put_entry(buf + off, 0x40000, 32, "2", "big vm", 0, extra, 16);
    store_be64(extra, 0);
    store_be64(extra + 8, 1ull << 30);
    store_be64(extra + 16, 4242);      /* icount */
    off += put_entry(buf + off, 0x50000, 8, "id-three", "three", 7, extra,
                     24);

    assert_int_equal(qcow2_snapshots_decode(&sn, 3, buf, off, &used), 0);
    assert_int_equal(used, off);

    assert_true(sn[0].l1_table_offset == 0x30000);
    assert_int_equal(sn[0].l1_size, 16);
    assert_string_equal(sn[0].id, "1");
    assert_string_equal(sn[0].name, "clean");
    assert_int_equal(sn[0].date_sec, 1700000000u);
    assert_int_equal(sn[0].date_nsec, 123456789u);
    assert_true(sn[0].vm_clock_nsec == 987654321ull);
    assert_true(sn[0].vm_state_size == 0x1000);
    assert_int_equal(sn[0].extra_data_size, 0);
    assert_false(sn[0].has_disk_size);
    assert_false(sn[0].has_icount);

    /* the 64-bit vm state size in the extra data wins over the 32-bit one */
    assert_true(sn[1].vm_state_size == 0x123456789ull);
    assert_true(sn[1].has_disk_size);
    assert_true(sn[1].disk_size == 1ull << 32);
    assert_false(sn[1].has_icount);
    assert_int_equal(sn[1].extra_data_size, 16);
    assert_memory_equal(sn[1].extra_data, buf + second + 40, 16);

    assert_string_equal(sn[2].id, "id-three");
    assert_string_equal(sn[2].name, "three");
    assert_true(sn[2].vm_state_size == 0);
    assert_true(sn[2].disk_size == 1ull << 30);
    assert_true(sn[2].has_icount);
    assert_true(sn[2].icount == 4242);
    qcow2_snapshots_free(sn, 3);
}

static void test_icount_all_ones(void **state)
{
    (void)state;
    uint8_t buf[256], extra[24];
    struct qcow2_snapshot *sn = NULL;

    store_be64(extra, 0);
    store_be64(extra + 8, 1 << 20);
    store_be64(extra + 16, UINT64_MAX); /* "no icount" */
    const size_t len = put_entry(buf, 0x10000, 1, "1", "n", 0, extra, 24);
    assert_int_equal(qcow2_snapshots_decode(&sn, 1, buf, len, NULL), 0);
    assert_true(sn[0].has_disk_size);
    assert_false(sn[0].has_icount);

    /* and encoding "no icount" writes all ones again */
    uint8_t out[256];
    assert_int_equal(qcow2_snapshots_encode(sn, 1, out), len);
    assert_memory_equal(out, buf, len);
    qcow2_snapshots_free(sn, 1);
}

static void assert_snapshot_equal(const struct qcow2_snapshot *a,
                                  const struct qcow2_snapshot *b)
{
    assert_true(a->l1_table_offset == b->l1_table_offset);
    assert_int_equal(a->l1_size, b->l1_size);
    assert_int_equal(a->date_sec, b->date_sec);
    assert_int_equal(a->date_nsec, b->date_nsec);
    assert_true(a->vm_clock_nsec == b->vm_clock_nsec);
    assert_true(a->vm_state_size == b->vm_state_size);
    assert_int_equal(a->has_disk_size, b->has_disk_size);
    if (a->has_disk_size) {
        assert_true(a->disk_size == b->disk_size);
    }
    assert_int_equal(a->has_icount, b->has_icount);
    if (a->has_icount) {
        assert_true(a->icount == b->icount);
    }
    assert_int_equal(a->extra_data_size, b->extra_data_size);
    if (a->extra_data_size) {
        assert_memory_equal(a->extra_data, b->extra_data, a->extra_data_size);
    }
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->name, b->name);
}

static void test_round_trip(void **state)
{
    (void)state;
    /* extra data: none; 8 bytes; 16; 24 with icount; 40 with 16 unknown
     * bytes after the known fields */
    uint8_t e8[8] = {0}, e16[16] = {0}, e24[24] = {0}, e40[40];
    for (unsigned i = 0; i < sizeof(e40); i++) {
        e40[i] = (uint8_t)(0xa0 + i);
    }
    store_be64(e8, 1ull << 33);
    store_be64(e16, 77);
    store_be64(e16 + 8, 1ull << 40);
    store_be64(e24 + 8, 1ull << 20);
    store_be64(e24 + 16, 99);
    store_be64(e40, 5);
    store_be64(e40 + 8, 1ull << 21);
    store_be64(e40 + 16, 1000);
    struct qcow2_snapshot in[5] = {
        {.l1_table_offset = 0x10000, .l1_size = 1, .date_sec = 1,
         .date_nsec = 2, .vm_clock_nsec = 3, .vm_state_size = 0xffffffffu,
         .id = "1", .name = "plain"},
        {.l1_table_offset = 0x20000, .l1_size = 2, .vm_state_size = 1ull << 33,
         .extra_data_size = 8, .extra_data = e8, .id = "2", .name = "eight"},
        {.l1_table_offset = 0x30000, .vm_state_size = 77,
         .disk_size = 1ull << 40, .has_disk_size = true,
         .extra_data_size = 16, .extra_data = e16, .id = "33",
         .name = "sixteen bytes"},
        {.l1_table_offset = 0x40000, .disk_size = 1ull << 20,
         .has_disk_size = true, .icount = 99, .has_icount = true,
         .extra_data_size = 24, .extra_data = e24, .id = "444", .name = ""},
        {.l1_table_offset = 0x50000, .vm_state_size = 5,
         .disk_size = 1ull << 21, .has_disk_size = true, .icount = 1000,
         .has_icount = true, .extra_data_size = 40, .extra_data = e40,
         .id = "5", .name = "with unknown extra data"},
    };
    const size_t need = qcow2_snapshots_encode(in, 5, NULL);
    assert_int_equal(need % 8, 0);
    uint8_t *buf = malloc(need + 8);
    assert_non_null(buf);
    memset(buf, 0xcc, need + 8);
    assert_int_equal(qcow2_snapshots_encode(in, 5, buf), need);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(buf[need + i], 0xcc); /* stays within NEED */
    }
    /* a vm state size above 4 GiB does not fit the 32-bit field: 0 there */
    const size_t second = (40 + 1 + 5 + 7) & ~(size_t)7;
    assert_int_equal(load_be32(buf + second + 32), 0);
    assert_true(load_be64(buf + second + 40) == 1ull << 33);

    struct qcow2_snapshot *out = NULL;
    size_t used = 0;
    assert_int_equal(qcow2_snapshots_decode(&out, 5, buf, need, &used), 0);
    assert_int_equal(used, need);
    for (int i = 0; i < 5; i++) {
        assert_snapshot_equal(&out[i], &in[i]);
    }
    /* the unknown bytes 24..39 of the last entry came through */
    assert_memory_equal(out[4].extra_data + 24, e40 + 24, 16);

    /* and encoding the decoded table gives the same bytes */
    uint8_t *again = malloc(need);
    assert_non_null(again);
    assert_int_equal(qcow2_snapshots_encode(out, 5, again), need);
    assert_memory_equal(again, buf, need);
    free(again);
    free(buf);
    qcow2_snapshots_free(out, 5);
}

static void test_truncated(void **state)
{
    (void)state;
    uint8_t buf[512];
    size_t total = 0;

    total += put_entry(buf + total, 0x10000, 1, "1", "a", 0, NULL, 0);
    total += put_entry(buf + total, 0x20000, 1, "22", "bbb", 0, NULL, 0);
    /* the last entry is 40 + 3 + 0 + 2 = 45 bytes, 3 of padding */
    const uint8_t extra[3] = {1, 2, 3};
    const size_t last = put_entry(buf + total, 0x30000, 1, "", "zz", 0,
                                  extra, 3);
    assert_int_equal(last, 48);
    total += last;

    for (size_t len = 0; len <= total; len++) {
        struct qcow2_snapshot *sn = NULL;
        size_t used = 0;
        const int ret = qcow2_snapshots_decode(&sn, 3, buf, len, &used);
        if (len < total - 3) {
            /* not all there: the caller reads more and retries */
            if (ret != -ENODATA) {
                fail_msg("len %zu: %d, expected -ENODATA", len, ret);
            }
        } else {
            /* the padding of the last entry may be missing */
            if (ret != 0) {
                fail_msg("len %zu: %d, expected 0", len, ret);
            }
            assert_int_equal(used, len);
            assert_string_equal(sn[2].name, "zz");
            assert_string_equal(sn[2].id, "");
            assert_memory_equal(sn[2].extra_data, extra, 3);
            qcow2_snapshots_free(sn, 3);
        }
    }
}

static void test_extra_data_limit(void **state)
{
    (void)state;
    uint8_t *buf = calloc(1, 2048);
    uint8_t *extra = calloc(1, 1025);
    struct qcow2_snapshot *sn = NULL;

    assert_non_null(buf);
    assert_non_null(extra);
    size_t len = put_entry(buf, 0x10000, 1, "1", "x", 0, extra, 1024);
    assert_int_equal(qcow2_snapshots_decode(&sn, 1, buf, len, NULL), 0);
    assert_int_equal(sn[0].extra_data_size, 1024);
    qcow2_snapshots_free(sn, 1);

    len = put_entry(buf, 0x10000, 1, "1", "x", 0, extra, 1025);
    vimg_error_clear();
    assert_error(qcow2_snapshots_decode(&sn, 1, buf, len, NULL), -EIO,
                 "extra data");
    /* also when the buffer is too short to hold that much */
    store_be32(buf + 36, 0xffffffffu);
    vimg_error_clear();
    assert_error(qcow2_snapshots_decode(&sn, 1, buf, 48, NULL), -EIO,
                 "extra data");
    free(extra);
    free(buf);
}

static void test_empty_table(void **state)
{
    (void)state;
    struct qcow2_snapshot *sn = NULL;
    size_t used = 99;

    assert_int_equal(qcow2_snapshots_decode(&sn, 0, NULL, 0, &used), 0);
    assert_int_equal(used, 0);
    qcow2_snapshots_free(sn, 0);
    assert_int_equal(qcow2_snapshots_encode(NULL, 0, NULL), 0);
    qcow2_snapshots_free(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_hand_made),
        cmocka_unit_test(test_icount_all_ones),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_extra_data_limit),
        cmocka_unit_test(test_empty_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
