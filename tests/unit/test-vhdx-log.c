/* SPDX-License-Identifier: MIT */
/*
 * test-vhdx-log.c: the VHDX decoders that work on byte buffers: CRC-32C,
 * headers, region table, metadata, and the log (finding the active
 * sequence in a ring, wrapping, torn and stale entries, replay order).
 */
#include <stdlib.h>

#include "unit.h"

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

static void test_crc32c(void **state)
{
    (void)state;
    /* the check value of CRC-32C */
    assert_int_equal(vhdx_crc32c(0, "123456789", 9), 0xe3069283u);
    /* incremental equals one pass */
    assert_int_equal(vhdx_crc32c(vhdx_crc32c(0, "1234", 4), "56789", 5),
                     0xe3069283u);
}

static void test_header_round_trip(void **state)
{
    (void)state;
    uint8_t buf[VHDX_HEADER_SIZE];
    struct vhdx_header h = {.seq = 42, .version = 1, .log_length = VHDX_MiB,
                            .log_offset = VHDX_MiB};
    struct vhdx_header out;

    memset(h.log_guid, 0xab, 16);
    vhdx_header_encode(&h, buf);
    assert_int_equal(vhdx_header_decode(buf, &out, 1), 0);
    assert_int_equal(out.seq, 42);
    assert_memory_equal(out.log_guid, h.log_guid, 16);
    buf[100] ^= 1;
    vimg_error_clear();
    assert_error(vhdx_header_decode(buf, &out, 2), -EIO, "checksum");
    h.version = 2;
    vhdx_header_encode(&h, buf);
    vimg_error_clear();
    assert_error(vhdx_header_decode(buf, &out, 1), -ENOTSUP, "version");
    h.version = 1;
    h.log_offset = 4096;
    vhdx_header_encode(&h, buf);
    vimg_error_clear();
    assert_error(vhdx_header_decode(buf, &out, 1), -EIO, "log");
}

/* GUID text to the on-disk bytes */
static void guid(uint8_t *out, uint32_t d1, uint16_t d2, uint16_t d3,
                 uint64_t d4)
{
    store_le32(out, d1);
    out[4] = (uint8_t)d2;
    out[5] = (uint8_t)(d2 >> 8);
    out[6] = (uint8_t)d3;
    out[7] = (uint8_t)(d3 >> 8);
    store_be64(out + 8, d4);
}

static void region(uint8_t *t, int i, bool is_bat, uint64_t off, uint32_t len,
                   bool required)
{
    uint8_t *e = t + 16 + 32 * i;
    if (is_bat) {
        guid(e, 0x2dc27766, 0xf623, 0x4200, UINT64_C(0x9d64115e9bfd4a08));
    } else {
        guid(e, 0x8b7ca206, 0x4790, 0x4b9a, UINT64_C(0xb8fe575f050f886e));
    }
    store_le64(e + 16, off);
    store_le32(e + 24, len);
    store_le32(e + 28, required);
}

static void test_region_table(void **state)
{
    (void)state;
    uint8_t *t = calloc(1, VHDX_REGION_TABLE_SIZE);
    struct vhdx_regions r;

    memcpy(t, "regi", 4);
    store_le32(t + 8, 2);
    region(t, 0, true, 2 * VHDX_MiB, VHDX_MiB, true);
    region(t, 1, false, 3 * VHDX_MiB, VHDX_MiB, true);
    store_le32(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
    assert_int_equal(vhdx_region_table_decode(t, &r), 0);
    assert_int_equal(r.bat_offset, 2 * VHDX_MiB);
    assert_int_equal(r.meta_offset, 3 * VHDX_MiB);

    /* overlapping regions */
    region(t, 1, false, 2 * VHDX_MiB, VHDX_MiB, true);
    store_le32(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
    vimg_error_clear();
    assert_error(vhdx_region_table_decode(t, &r), -EIO, "overlap");

    /* an unknown required region is refused, an optional one ignored */
    region(t, 1, false, 3 * VHDX_MiB, VHDX_MiB, true);
    store_le32(t + 8, 3);
    guid(t + 16 + 64, 0x12345678, 1, 2, 3);
    store_le64(t + 16 + 64 + 16, 5 * VHDX_MiB);
    store_le32(t + 16 + 64 + 24, VHDX_MiB);
    store_le32(t + 16 + 64 + 28, 1);
    store_le32(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
    vimg_error_clear();
    assert_error(vhdx_region_table_decode(t, &r), -ENOTSUP, "required");
    store_le32(t + 16 + 64 + 28, 0);
    store_le32(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
    assert_int_equal(vhdx_region_table_decode(t, &r), 0);
    free(t);
}

/* A log ring of LEN bytes and a writer of entries into it */
#define LOG_LEN (64 * 1024u)
static const uint8_t log_guid[16] = {1, 2, 3, 4, 5, 6, 7, 8,
                                     9, 10, 11, 12, 13, 14, 15, 16};

/* One entry at POS: a data descriptor writing FILL bytes at FILE_OFF;
 * returns the position after it. */
static uint32_t put_entry(uint8_t *log, uint32_t pos, uint64_t seq,
                          uint32_t tail, uint64_t file_off, uint8_t fill)
{
    uint8_t e[2 * VHDX_LOG_SECTOR] = {0};
    memcpy(e, "loge", 4);
    store_le32(e + 8, sizeof(e));
    store_le32(e + 12, tail);
    store_le64(e + 16, seq);
    store_le32(e + 24, 1);
    memcpy(e + 32, log_guid, 16);
    uint8_t *d = e + 64;
    memcpy(d, "desc", 4);
    memset(d + 4, fill, 4);  /* trailing bytes */
    memset(d + 8, fill, 8);  /* leading bytes */
    store_le64(d + 16, file_off);
    store_le64(d + 24, seq);
    uint8_t *s = e + VHDX_LOG_SECTOR;
    memcpy(s, "data", 4);
    store_le32(s + 4, (uint32_t)(seq >> 32));
    memset(s + 8, fill, 4084);
    store_le32(s + 4092, (uint32_t)seq);
    store_le32(e + 4, vhdx_checksum(e, sizeof(e), 4));
    for (uint32_t i = 0; i < sizeof(e); i += VHDX_LOG_SECTOR) {
        memcpy(log + (pos + i) % LOG_LEN, e + i, VHDX_LOG_SECTOR);
    }
    return (pos + (uint32_t)sizeof(e)) % LOG_LEN;
}

struct writes {
    int n;
    uint64_t off[8];
    uint8_t first[8];
};

static int record(void *opaque, uint64_t offset, uint64_t length,
                  const uint8_t *data)
{
    struct writes *w = opaque;
    assert_int_equal(length, VHDX_LOG_SECTOR);
    assert_true(w->n < 8);
    /* leading, data and trailing bytes all carry the fill */
    assert_int_equal(data[0], data[4095]);
    assert_int_equal(data[0], data[2000]);
    w->off[w->n] = offset;
    w->first[w->n++] = data[0];
    return 0;
}

static void test_log_sequence(void **state)
{
    (void)state;
    uint8_t *log = calloc(1, LOG_LEN);
    struct vhdx_log_seq seq;
    struct writes w = {0};

    /* an empty log */
    assert_int_equal(vhdx_log_find(log, LOG_LEN, log_guid, &seq), 0);
    assert_false(seq.found);

    /* three entries from the tail at 56 KiB, the second wrapping the
     * ring's end, then a stale older entry elsewhere */
    const uint32_t tail = LOG_LEN - 8192;
    uint32_t pos = put_entry(log, tail, 10, tail, 0x300000, 0xa1);
    pos = put_entry(log, pos, 11, tail, 0x301000, 0xa2);
    pos = put_entry(log, pos, 12, tail, 0x300000, 0xa3);
    put_entry(log, 32768, 3, 32768, 0x400000, 0xee);
    assert_int_equal(vhdx_log_find(log, LOG_LEN, log_guid, &seq), 0);
    assert_true(seq.found);
    assert_int_equal(seq.tail, tail);
    assert_int_equal(seq.nb_entries, 3);
    assert_int_equal(seq.head_seq, 12);
    assert_int_equal(vhdx_log_replay(log, LOG_LEN, &seq, record, &w), 0);
    assert_int_equal(w.n, 3);
    assert_int_equal(w.off[0], 0x300000);
    assert_int_equal(w.first[0], 0xa1);
    assert_int_equal(w.first[2], 0xa3);

    /* a torn fourth entry is ignored */
    uint8_t keep[VHDX_LOG_SECTOR];
    const uint32_t torn = pos;
    put_entry(log, pos, 13, tail, 0x302000, 0xa4);
    memcpy(keep, log + (torn + 4096) % LOG_LEN, sizeof(keep));
    log[(torn + 4096 + 100) % LOG_LEN] ^= 1;
    assert_int_equal(vhdx_log_find(log, LOG_LEN, log_guid, &seq), 0);
    assert_int_equal(seq.head_seq, 12);

    /* a head whose tail points at a missing entry is no sequence: the
     * previous complete one stays active */
    memcpy(log + (torn + 4096) % LOG_LEN, keep, sizeof(keep));
    put_entry(log, torn, 13, 4096, 0x302000, 0xa4);
    assert_int_equal(vhdx_log_find(log, LOG_LEN, log_guid, &seq), 0);
    assert_int_equal(seq.head_seq, 12);

    /* another log GUID sees nothing */
    static const uint8_t other[16] = {9};
    assert_int_equal(vhdx_log_find(log, LOG_LEN, other, &seq), 0);
    assert_false(seq.found);
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_header_round_trip),
        cmocka_unit_test(test_region_table),
        cmocka_unit_test(test_log_sequence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
