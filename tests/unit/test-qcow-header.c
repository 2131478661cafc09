/* SPDX-License-Identifier: MIT */
/*
 * test-qcow-header.c: the QCOW v1 header and L2 entries
 * (qcow_header_decode/encode, qcow_l1_size, qcow_l2_entry_*): the bytes
 * qemu-img 7.2 writes, each validation rule with its errno and message,
 * and compressed entries.  Offsets are written out as numbers, not taken
 * from qcow.h.
 */
#include "unit.h"

#include "formats/qcow/qcow.h"
#include "vimg-endian.h"

/* `qemu-img create -f qcow -b base.raw -F raw b.qcow 7M`, first 56 bytes */
static const uint8_t qemu_backed[56] = {
    0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1,    0, 0, 0, 0, 0, 0, 0, 0x30,
    0,    0,    0,    8,    0, 0, 0, 0,    0, 0, 0, 0, 0, 0x70, 0, 0,
    9,    12,   0,    0,    0, 0, 0, 0,    0, 0, 0, 0, 0, 0, 0, 0x38,
    'b',  'a',  's',  'e',  '.', 'r', 'a', 'w'};

static void test_decode_qemu(void **state)
{
    struct qcow_header h;
    uint8_t again[48];

    (void)state;
    assert_int_equal(qcow_header_decode(qemu_backed, 56, &h), 0);
    assert_int_equal(h.version, 1);
    assert_int_equal(h.backing_file_offset, 48);
    assert_int_equal(h.backing_file_size, 8);
    assert_int_equal(h.size, 7u << 20);
    assert_int_equal(h.cluster_bits, 9);
    assert_int_equal(h.l2_bits, 12);
    assert_int_equal(h.crypt_method, 0);
    assert_int_equal(h.l1_table_offset, 56);
    /* 2 MiB per L2 table: 4 entries for 7 MiB */
    assert_int_equal(h.l1_size, 4);
    qcow_header_encode(&h, again);
    assert_memory_equal(again, qemu_backed, 48);
}

/* Set byte(s) at OFF of a copy of the qemu header, decode it */
static int decode_with(size_t off, const void *bytes, size_t n)
{
    uint8_t buf[56];
    struct qcow_header h;

    memcpy(buf, qemu_backed, sizeof(buf));
    memcpy(buf + off, bytes, n);
    vimg_error_clear();
    return qcow_header_decode(buf, sizeof(buf), &h);
}

static void test_decode_refusals(void **state)
{
    uint8_t be[8];
    struct qcow_header h;

    (void)state;
    vimg_error_clear();
    assert_error(qcow_header_decode(qemu_backed, 40, &h), -EINVAL, "qcow");
    store_be32(be, 2);
    assert_error(decode_with(4, be, 4), -ENOTSUP, "version 2");
    store_be64(be, 1);
    assert_error(decode_with(24, be, 8), -EIO, "too small");
    assert_error(decode_with(32, "\x08", 1), -EIO, "between 512 and 64k");
    assert_error(decode_with(32, "\x11", 1), -EIO, "between 512 and 64k");
    assert_error(decode_with(33, "\x05", 1), -EIO, "L2 table size");
    assert_error(decode_with(33, "\x0e", 1), -EIO, "L2 table size");
    store_be32(be, 2);
    assert_error(decode_with(36, be, 4), -EIO, "encryption method");
    store_be32(be, 1);
    assert_int_equal(decode_with(36, be, 4), 0); /* AES: decodes */
    store_be64(be, 1ull << 62);
    assert_error(decode_with(24, be, 8), -EFBIG, "too large");
    store_be64(be, 8);
    assert_error(decode_with(40, be, 8), -EIO, "L1 table offset");
    store_be32(be, 1024);
    assert_error(decode_with(16, be, 4), -EIO, "too long");
    /* the largest disks: 8 TiB with 2 MiB per L2 table */
    uint64_t n;
    assert_int_equal(qcow_l1_size(8ull << 40, 12, 9, &n), 0);
    assert_int_equal(n, 4u << 20);
    assert_error(qcow_l1_size((8ull << 40) + 1, 12, 9, &n), -EFBIG,
                 "too large");
}

static void test_l2_entries(void **state)
{
    struct qcow_mapping m;

    (void)state;
    qcow_l2_entry_decode(0, 12, &m);
    assert_int_equal(m.kind, QCOW_CLUSTER_UNALLOCATED);
    qcow_l2_entry_decode(0x3000, 12, &m);
    assert_int_equal(m.kind, QCOW_CLUSTER_NORMAL);
    assert_int_equal(m.offset, 0x3000);
    /* 4 KiB clusters: the size in bits 51..62, the offset below */
    const uint64_t e = qcow_l2_entry_compressed(0x12345, 4095, 12);
    assert_true(e == (1ull << 63 | 4095ull << 51 | 0x12345));
    qcow_l2_entry_decode(e, 12, &m);
    assert_int_equal(m.kind, QCOW_CLUSTER_COMPRESSED);
    assert_int_equal(m.offset, 0x12345);
    assert_int_equal(m.csize, 4095);
    qcow_l2_entry_decode(qcow_l2_entry_compressed(1ull << 46, 300, 16), 16,
                         &m);
    assert_int_equal(m.offset, 1ull << 46);
    assert_int_equal(m.csize, 300);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_qemu),
        cmocka_unit_test(test_decode_refusals),
        cmocka_unit_test(test_l2_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
