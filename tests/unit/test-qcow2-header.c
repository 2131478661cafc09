/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-header.c: qcow2_header_decode/encode (every validation rule,
 * with its errno and message) and the header extensions: round trips,
 * unknown extensions kept byte for byte, malformed extensions, and the
 * feature name table.
 *
 * Byte offsets are written out as numbers from qcow2.txt, not taken from
 * qcow2.h, so that a wrong constant there cannot hide itself.
 */
#include <stdlib.h>

#include "unit.h"

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

#define BUF_LEN 4096
#define FILE_SIZE (1ull << 20) /* 16 clusters of 64 KiB */
#define CLUSTER (1ull << 16)

/* A valid v3 header: 64 KiB clusters, 1 GiB disk (needs 2 L1 entries),
 * refcount table in cluster 1, L1 in cluster 3. */
static void good_v3(struct qcow2_header *h)
{
    memset(h, 0, sizeof(*h));
    h->version = 3;
    h->cluster_bits = 16;
    h->size = 1ull << 30;
    h->l1_size = 2;
    h->l1_table_offset = 3 * CLUSTER;
    h->refcount_table_offset = CLUSTER;
    h->refcount_table_clusters = 1;
    h->refcount_order = 4;
    h->header_length = 112;
}

static void encode_ok(const struct qcow2_header *h, uint8_t *buf)
{
    memset(buf, 0, BUF_LEN);
    const int n = qcow2_header_encode(h, buf, BUF_LEN);
    assert_int_equal(n, h->version == 2 ? 72 : (int)h->header_length);
}

static void decode_ok(struct qcow2_header *h, const uint8_t *buf, size_t len)
{
    vimg_error_clear();
    const int ret = qcow2_header_decode(h, buf, len, FILE_SIZE);
    if (ret != 0) {
        fail_msg("decode failed: %d \"%s\"", ret, vimg_last_error());
    }
}

static void assert_header_equal(const struct qcow2_header *a,
                                const struct qcow2_header *b)
{
    assert_int_equal(a->version, b->version);
    assert_true(a->backing_file_offset == b->backing_file_offset);
    assert_int_equal(a->backing_file_size, b->backing_file_size);
    assert_int_equal(a->cluster_bits, b->cluster_bits);
    assert_true(a->size == b->size);
    assert_int_equal(a->crypt_method, b->crypt_method);
    assert_int_equal(a->l1_size, b->l1_size);
    assert_true(a->l1_table_offset == b->l1_table_offset);
    assert_true(a->refcount_table_offset == b->refcount_table_offset);
    assert_int_equal(a->refcount_table_clusters, b->refcount_table_clusters);
    assert_int_equal(a->nb_snapshots, b->nb_snapshots);
    assert_true(a->snapshots_offset == b->snapshots_offset);
    assert_true(a->incompatible_features == b->incompatible_features);
    assert_true(a->compatible_features == b->compatible_features);
    assert_true(a->autoclear_features == b->autoclear_features);
    assert_int_equal(a->refcount_order, b->refcount_order);
    assert_int_equal(a->header_length, b->header_length);
    assert_int_equal(a->compression_type, b->compression_type);
}

/* Decoding BUF must fail with ERR and a message mentioning WORD. */
static void expect_bad_len(const uint8_t *buf, size_t len, int err,
                           const char *word)
{
    struct qcow2_header h;

    vimg_error_clear();
    assert_error(qcow2_header_decode(&h, buf, len, FILE_SIZE), err, word);
}

static void expect_bad(const uint8_t *buf, int err, const char *word)
{
    expect_bad_len(buf, BUF_LEN, err, word);
}

/* Encode H with FIELD changed, and expect the decode to fail. */
#define EXPECT_BAD_FIELD(field, value, err, word)                              \
    do {                                                                       \
        struct qcow2_header bad_;                                              \
        uint8_t buf_[BUF_LEN];                                                 \
        good_v3(&bad_);                                                        \
        bad_.field = (value);                                                  \
        encode_ok(&bad_, buf_);                                                \
        expect_bad(buf_, (err), (word));                                       \
    } while (0)

#define EXPECT_GOOD_FIELD(field, value)                                        \
    do {                                                                       \
        struct qcow2_header good_, got_;                                       \
        uint8_t buf_[BUF_LEN];                                                 \
        good_v3(&good_);                                                       \
        good_.field = (value);                                                 \
        encode_ok(&good_, buf_);                                               \
        decode_ok(&got_, buf_, BUF_LEN);                                       \
        assert_header_equal(&got_, &good_);                                    \
    } while (0)

/* ---- decode of hand-made bytes, and round trips ---- */

static void test_decode_spec_offsets(void **state)
{
    (void)state;
    uint8_t buf[BUF_LEN] = {0};
    struct qcow2_header h;

    store_be32(buf + 0, 0x514649fb);
    store_be32(buf + 4, 3);
    store_be64(buf + 8, 0x200);          /* backing_file_offset */
    store_be32(buf + 16, 5);             /* backing_file_size */
    memcpy(buf + 0x200, "base!", 5);
    store_be32(buf + 20, 16);            /* cluster_bits */
    store_be64(buf + 24, 1ull << 30);    /* size */
    store_be32(buf + 32, 0);             /* crypt_method */
    store_be32(buf + 36, 2);             /* l1_size */
    store_be64(buf + 40, 3 * CLUSTER);   /* l1_table_offset */
    store_be64(buf + 48, CLUSTER);       /* refcount_table_offset */
    store_be32(buf + 56, 1);             /* refcount_table_clusters */
    store_be32(buf + 60, 1);             /* nb_snapshots */
    store_be64(buf + 64, 5 * CLUSTER);   /* snapshots_offset */
    store_be64(buf + 72, 1ull << 3);     /* incompatible: compression */
    store_be64(buf + 80, 1);             /* compatible: lazy refcounts */
    store_be64(buf + 88, 2);             /* autoclear: data file raw */
    store_be32(buf + 96, 5);             /* refcount_order */
    store_be32(buf + 100, 112);          /* header_length */
    buf[104] = 1;                        /* compression_type: zstd */

    decode_ok(&h, buf, BUF_LEN);
    assert_int_equal(h.version, 3);
    assert_true(h.backing_file_offset == 0x200);
    assert_int_equal(h.backing_file_size, 5);
    assert_int_equal(h.cluster_bits, 16);
    assert_true(h.size == 1ull << 30);
    assert_int_equal(h.crypt_method, 0);
    assert_int_equal(h.l1_size, 2);
    assert_true(h.l1_table_offset == 3 * CLUSTER);
    assert_true(h.refcount_table_offset == CLUSTER);
    assert_int_equal(h.refcount_table_clusters, 1);
    assert_int_equal(h.nb_snapshots, 1);
    assert_true(h.snapshots_offset == 5 * CLUSTER);
    assert_true(h.incompatible_features == 8);
    assert_true(h.compatible_features == 1);
    assert_true(h.autoclear_features == 2);
    assert_int_equal(h.refcount_order, 5);
    assert_int_equal(h.header_length, 112);
    assert_int_equal(h.compression_type, 1);

    /* and encode gives back exactly those bytes */
    uint8_t again[BUF_LEN] = {0};
    assert_int_equal(qcow2_header_encode(&h, again, sizeof(again)), 112);
    assert_memory_equal(again, buf, 112);
}

static void test_round_trip_v3(void **state)
{
    (void)state;
    struct qcow2_header h, got;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    h.backing_file_offset = 0x400;
    h.backing_file_size = 100;
    h.nb_snapshots = 3;
    h.snapshots_offset = 7 * CLUSTER;
    h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION |
                              QCOW2_INCOMPAT_DIRTY;
    h.compatible_features = QCOW2_COMPAT_LAZY_REFCOUNTS;
    h.autoclear_features = QCOW2_AUTOCLEAR_BITMAPS;
    h.refcount_order = 6;
    h.compression_type = QCOW2_COMPRESSION_ZSTD;
    h.crypt_method = QCOW2_CRYPT_LUKS;
    encode_ok(&h, buf);
    assert_int_equal(buf[104], 1); /* compression type byte */
    assert_int_equal(load_be32(buf + 100), 112);
    decode_ok(&got, buf, BUF_LEN);
    assert_header_equal(&got, &h);

    /* a 104-byte v3 header has no compression type byte */
    good_v3(&h);
    h.header_length = 104;
    encode_ok(&h, buf);
    buf[104] = 1; /* outside the header: must be ignored */
    decode_ok(&got, buf, BUF_LEN);
    assert_int_equal(got.header_length, 104);
    assert_int_equal(got.compression_type, 0);
    assert_header_equal(&got, &h);
}

static void test_round_trip_v2(void **state)
{
    (void)state;
    struct qcow2_header h, got;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    h.version = 2;
    h.refcount_order = 4;    /* implied by v2 */
    h.header_length = 72;    /* implied by v2 */
    h.backing_file_offset = 72;
    h.backing_file_size = 8;
    encode_ok(&h, buf);
    /* v2 stops at byte 72: the v3 fields are not written */
    memset(buf + 72, 0xff, 40);
    memcpy(buf + 72, "backing!", 8);
    decode_ok(&got, buf, 80);
    assert_header_equal(&got, &h);
    assert_true(got.incompatible_features == 0);

    /* a v2 header in exactly 72 bytes */
    h.backing_file_offset = 0;
    h.backing_file_size = 0;
    encode_ok(&h, buf);
    decode_ok(&got, buf, 72);
    assert_header_equal(&got, &h);
}

static void test_encode_errors(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    vimg_error_clear();
    assert_error(qcow2_header_encode(&h, buf, 111), -EINVAL, "small");
    h.header_length = 100; /* below the v3 minimum */
    vimg_error_clear();
    assert_error(qcow2_header_encode(&h, buf, BUF_LEN), -EINVAL, "small");
    h.version = 2;
    vimg_error_clear();
    assert_error(qcow2_header_encode(&h, buf, 71), -EINVAL, "small");
    assert_int_equal(qcow2_header_encode(&h, buf, 72), 72);
}

static void test_valid_variants(void **state)
{
    (void)state;
    EXPECT_GOOD_FIELD(refcount_order, 0);
    EXPECT_GOOD_FIELD(refcount_order, 6);
    EXPECT_GOOD_FIELD(crypt_method, QCOW2_CRYPT_AES);
    EXPECT_GOOD_FIELD(size, 0);
    /* an empty disk needs no L1 table, wherever it says it is */
    {
        struct qcow2_header h, got;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.size = 0;
        h.l1_size = 0;
        h.l1_table_offset = 12345;
        encode_ok(&h, buf);
        decode_ok(&got, buf, BUF_LEN);
        assert_header_equal(&got, &h);
    }
    /* the largest snapshot table that still fits the file */
    {
        struct qcow2_header h, got;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.snapshots_offset = FILE_SIZE - CLUSTER;
        h.nb_snapshots = (uint32_t)(CLUSTER / 40);
        encode_ok(&h, buf);
        decode_ok(&got, buf, BUF_LEN);
        assert_header_equal(&got, &h);
    }
    /* the largest virtual size */
    {
        struct qcow2_header h, got;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.cluster_bits = 21;
        h.size = QCOW2_MAX_VIRTUAL_SIZE;
        /* 2^61 / (2^18 entries * 2^21 bytes) = 2^22 L1 entries = 32 MiB */
        h.l1_size = 1u << 22;
        h.l1_table_offset = 1ull << 21;
        h.refcount_table_offset = 0;
        h.refcount_table_clusters = 1;
        encode_ok(&h, buf);
        vimg_error_clear();
        const int ret = qcow2_header_decode(&got, buf, BUF_LEN, 1ull << 40);
        if (ret != 0) {
            fail_msg("decode failed: %d \"%s\"", ret, vimg_last_error());
        }
        assert_header_equal(&got, &h);
    }
}

/* ---- every validation error ---- */

static void test_short_buffer(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    encode_ok(&h, buf);
    expect_bad_len(buf, 0, -EIO, "truncated");
    expect_bad_len(buf, 71, -EIO, "truncated");
    /* 72 bytes are enough for v2 but not for a v3 header */
    expect_bad_len(buf, 72, -EIO, "truncated");
    expect_bad_len(buf, 103, -EIO, "truncated");
}

static void test_bad_magic(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    encode_ok(&h, buf);
    buf[3] ^= 1;
    expect_bad(buf, -EIO, "magic");
    memcpy(buf, "QFI\xfa", 4);
    expect_bad(buf, -EIO, "magic");
}

static void test_bad_version(void **state)
{
    (void)state;
    static const uint32_t bad[] = {0, 1, 4, 0xffffffffu};
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    encode_ok(&h, buf);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        store_be32(buf + 4, bad[i]);
        expect_bad(buf, -ENOTSUP, "version");
    }
}

static void test_bad_cluster_bits(void **state)
{
    (void)state;
    EXPECT_BAD_FIELD(cluster_bits, 8, -EIO, "cluster_bits");
    EXPECT_BAD_FIELD(cluster_bits, 22, -EIO, "cluster_bits");
    EXPECT_BAD_FIELD(cluster_bits, 0, -EIO, "cluster_bits");
    EXPECT_BAD_FIELD(cluster_bits, 64, -EIO, "cluster_bits");
}

static void test_bad_header_length(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    /* below 104 */
    good_v3(&h);
    encode_ok(&h, buf);
    store_be32(buf + 100, 103);
    expect_bad(buf, -EIO, "header_length");
    store_be32(buf + 100, 0);
    expect_bad(buf, -EIO, "header_length");

    /* above the cluster size (512-byte clusters; the buffer holds more) */
    good_v3(&h);
    h.cluster_bits = 9;
    h.size = 1ull << 20;     /* 32 KiB per L1 entry: 32 entries */
    h.l1_size = 32;
    h.l1_table_offset = 3 * 512;
    h.refcount_table_offset = 512;
    encode_ok(&h, buf);
    store_be32(buf + 100, 520);
    expect_bad(buf, -EIO, "header_length");
    store_be32(buf + 100, 512);
    struct qcow2_header got;
    decode_ok(&got, buf, BUF_LEN);
    assert_int_equal(got.header_length, 512);

    /* above the bytes we have */
    good_v3(&h);
    encode_ok(&h, buf);
    store_be32(buf + 100, 200);
    expect_bad_len(buf, 199, -EIO, "header_length");
    decode_ok(&got, buf, 200);
    assert_int_equal(got.header_length, 200);
}

static void test_bad_refcount_order(void **state)
{
    (void)state;
    EXPECT_BAD_FIELD(refcount_order, 7, -EIO, "refcount_order");
    EXPECT_BAD_FIELD(refcount_order, 0x80000000u, -EIO, "refcount_order");
}

static void test_bad_compression(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    /* unknown type, even with the incompatible bit: not supported */
    good_v3(&h);
    h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
    h.compression_type = 2;
    encode_ok(&h, buf);
    expect_bad(buf, -ENOTSUP, "compression");
    h.compression_type = 0xff;
    encode_ok(&h, buf);
    expect_bad(buf, -ENOTSUP, "compression");

    /* zstd without its incompatible bit: corrupt */
    good_v3(&h);
    h.compression_type = QCOW2_COMPRESSION_ZSTD;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "compression");

    /* zlib with the bit: refused, as qemu refuses it (iotest 287) */
    good_v3(&h);
    h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
    h.compression_type = QCOW2_COMPRESSION_ZLIB;
    encode_ok(&h, buf);
    expect_bad(buf, -EINVAL, "Compression type incompatible feature bit");

    /* zstd with the bit is fine */
    good_v3(&h);
    h.incompatible_features = QCOW2_INCOMPAT_COMPRESSION;
    h.compression_type = QCOW2_COMPRESSION_ZSTD;
    encode_ok(&h, buf);
    struct qcow2_header got;
    decode_ok(&got, buf, BUF_LEN);
    assert_int_equal(got.compression_type, QCOW2_COMPRESSION_ZSTD);
}

static void test_bad_crypt_method(void **state)
{
    (void)state;
    EXPECT_BAD_FIELD(crypt_method, 3, -EIO, "encryption");
    EXPECT_BAD_FIELD(crypt_method, 0xffffffffu, -EIO, "encryption");
}

static void test_bad_size(void **state)
{
    (void)state;
    EXPECT_BAD_FIELD(size, QCOW2_MAX_VIRTUAL_SIZE + 1, -EIO, "size");
    EXPECT_BAD_FIELD(size, UINT64_MAX, -EIO, "size");
}

static void test_bad_l1(void **state)
{
    (void)state;
    /* larger than 32 MiB */
    EXPECT_BAD_FIELD(l1_size, QCOW2_MAX_L1_BYTES / 8 + 1, -EIO, "L1");
    EXPECT_BAD_FIELD(l1_size, 0xffffffffu, -EIO, "too large");
    /* too small for 1 GiB of 64 KiB clusters (2 entries needed) */
    EXPECT_BAD_FIELD(l1_size, 1, -EIO, "too small");
    EXPECT_BAD_FIELD(l1_size, 0, -EIO, "L1");
    EXPECT_BAD_FIELD(size, (1ull << 30) + 1, -EIO, "too small");
    /* not cluster aligned */
    EXPECT_BAD_FIELD(l1_table_offset, 3 * CLUSTER + 512, -EIO, "aligned");
    EXPECT_BAD_FIELD(l1_table_offset, 8, -EIO, "L1");
    /* past the end of the file, also when offset + size overflows */
    EXPECT_BAD_FIELD(l1_table_offset, FILE_SIZE, -EIO, "past the end");
    EXPECT_BAD_FIELD(l1_table_offset, 0xffffffffffff0000ull, -EIO,
                     "past the end");
    {
        /* the table itself crosses the end: 2 entries, 8 bytes short */
        struct qcow2_header h;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.l1_size = 8192; /* a whole 64 KiB cluster of entries */
        h.l1_table_offset = FILE_SIZE - CLUSTER;
        encode_ok(&h, buf);
        struct qcow2_header got;
        decode_ok(&got, buf, BUF_LEN);
        h.l1_size = 8193;
        encode_ok(&h, buf);
        expect_bad(buf, -EIO, "past the end");
    }
    /* extended L2 entries are 16 bytes: 1 GiB needs 4 L1 entries */
    {
        struct qcow2_header h, got;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.incompatible_features = QCOW2_INCOMPAT_EXTL2;
        encode_ok(&h, buf);
        expect_bad(buf, -EIO, "too small");
        h.l1_size = 4;
        encode_ok(&h, buf);
        decode_ok(&got, buf, BUF_LEN);
        assert_header_equal(&got, &h);
    }
}

static void test_bad_refcount_table(void **state)
{
    (void)state;
    EXPECT_BAD_FIELD(refcount_table_clusters, 0, -EIO, "refcount table");
    EXPECT_BAD_FIELD(refcount_table_clusters,
                     (uint32_t)(QCOW2_MAX_REFTABLE_BYTES / CLUSTER) + 1, -EIO,
                     "too large");
    EXPECT_BAD_FIELD(refcount_table_clusters, 0xffffffffu, -EIO,
                     "refcount table");
    EXPECT_BAD_FIELD(refcount_table_offset, CLUSTER + 8, -EIO, "aligned");
    EXPECT_BAD_FIELD(refcount_table_offset, FILE_SIZE, -EIO, "past the end");
    EXPECT_BAD_FIELD(refcount_table_offset, 0xffffffffffff0000ull, -EIO,
                     "past the end");
    {
        struct qcow2_header h;
        uint8_t buf[BUF_LEN];
        good_v3(&h);
        h.refcount_table_offset = FILE_SIZE - CLUSTER;
        h.refcount_table_clusters = 2;
        encode_ok(&h, buf);
        expect_bad(buf, -EIO, "refcount table is past the end");
    }
}

static void test_bad_snapshot_table(void **state)
{
    (void)state;
    struct qcow2_header h;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    h.snapshots_offset = 4 * CLUSTER;
    h.nb_snapshots = QCOW2_MAX_SNAPSHOTS + 1;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "snapshots");

    h.nb_snapshots = 1;
    h.snapshots_offset = 4 * CLUSTER + 8;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "snapshot table offset is not cluster aligned");

    h.snapshots_offset = FILE_SIZE;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "snapshot table is past the end");

    /* one 40-byte entry more than the last cluster holds */
    h.snapshots_offset = FILE_SIZE - CLUSTER;
    h.nb_snapshots = (uint32_t)(CLUSTER / 40) + 1;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "snapshot table is past the end");

    /* no snapshots: the offset does not matter */
    h.nb_snapshots = 0;
    h.snapshots_offset = 7;
    encode_ok(&h, buf);
    struct qcow2_header got;
    decode_ok(&got, buf, BUF_LEN);
}

static void test_bad_backing_name(void **state)
{
    (void)state;
    struct qcow2_header h, got;
    uint8_t buf[BUF_LEN];

    good_v3(&h);
    h.backing_file_offset = 0x200;
    h.backing_file_size = QCOW2_MAX_BACKING_NAME + 1;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "backing file name too long");

    /* right up to the end of the bytes we have: fine; one more: not */
    h.backing_file_offset = BUF_LEN - 100;
    h.backing_file_size = 100;
    encode_ok(&h, buf);
    decode_ok(&got, buf, BUF_LEN);
    assert_header_equal(&got, &h);
    expect_bad_len(buf, BUF_LEN - 1, -EIO, "backing");

    /* outside the first cluster (512-byte clusters) */
    good_v3(&h);
    h.cluster_bits = 9;
    h.size = 1ull << 20;
    h.l1_size = 32;
    h.l1_table_offset = 3 * 512;
    h.refcount_table_offset = 512;
    h.backing_file_offset = 500;
    h.backing_file_size = 13;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "outside the first cluster");
    h.backing_file_size = 12;
    encode_ok(&h, buf);
    decode_ok(&got, buf, BUF_LEN);

    /* overlapping the header itself */
    good_v3(&h);
    h.backing_file_offset = 100;
    h.backing_file_size = 4;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "backing");

    /* offset + size overflows */
    h.backing_file_offset = UINT64_MAX - 2;
    h.backing_file_size = 8;
    encode_ok(&h, buf);
    expect_bad(buf, -EIO, "backing");
}

/* ---- header extensions ---- */

/* Append one extension in the on-disk form (padded to 8) at *off. */
static void put_ext(uint8_t *buf, size_t *off, uint32_t type,
                    const void *data, uint32_t len)
{
    store_be32(buf + *off, type);
    store_be32(buf + *off + 4, len);
    memset(buf + *off + 8, 0, (len + 7u) & ~7u);
    if (len) {
        memcpy(buf + *off + 8, data, len);
    }
    *off += 8 + ((len + 7u) & ~7u);
}

static void feature_entry(uint8_t *p, uint8_t type, uint8_t bit,
                          const char *name)
{
    memset(p, 0, 48);
    p[0] = type;
    p[1] = bit;
    memcpy(p + 2, name, strnlen(name, 46));
}

/* Extensions in the order the encoder writes them, so that decode then
 * encode must give the same bytes back.  Returns the length. */
static size_t make_extensions(uint8_t *buf)
{
    size_t off = 0;
    uint8_t d[3 * 48];

    memset(buf, 0, BUF_LEN);
    put_ext(buf, &off, 0xe2792aca, "qcow2", 5);
    put_ext(buf, &off, 0x44415441, "data.img", 8);
    store_be64(d, 0x30000);
    store_be64(d + 8, 0x1234);
    put_ext(buf, &off, 0x0537be77, d, 16);
    store_be32(d, 2);
    store_be32(d + 4, 0);
    store_be64(d + 8, 96);
    store_be64(d + 16, 0x50000);
    put_ext(buf, &off, 0x23852875, d, 24);
    feature_entry(d, 0, 0, "dirty bit");
    feature_entry(d + 48, 1, 0, "lazy refcounts");
    /* a 46-character name uses the whole field, without a NUL */
    feature_entry(d + 96, 2, 9,
                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST");
    put_ext(buf, &off, 0x6803f857, d, 3 * 48);
    /* unknown extensions, one with an odd length, one empty */
    const uint8_t odd[13] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    put_ext(buf, &off, 0xdeadbeef, odd, sizeof(odd));
    put_ext(buf, &off, 0x12345678, NULL, 0);
    put_ext(buf, &off, 0, NULL, 0); /* end */
    return off;
}

static void test_extensions_decode(void **state)
{
    (void)state;
    uint8_t buf[BUF_LEN];
    struct qcow2_extensions ext;
    const size_t len = make_extensions(buf);

    /* garbage after the end marker is not looked at */
    memset(buf + len, 0xff, 64);
    vimg_error_clear();
    assert_int_equal(qcow2_extensions_decode(&ext, buf, 0, len + 64), 0);
    assert_string_equal(ext.backing_format, "qcow2");
    assert_string_equal(ext.data_file, "data.img");
    assert_true(ext.has_crypto);
    assert_true(ext.crypto_offset == 0x30000);
    assert_true(ext.crypto_length == 0x1234);
    assert_true(ext.has_bitmaps);
    assert_int_equal(ext.nb_bitmaps, 2);
    assert_true(ext.bitmap_dir_size == 96);
    assert_true(ext.bitmap_dir_offset == 0x50000);
    assert_int_equal(ext.nb_features, 3);
    assert_int_equal(ext.features[0].type, 0);
    assert_int_equal(ext.features[0].bit, 0);
    assert_string_equal(ext.features[0].name, "dirty bit");
    assert_string_equal(ext.features[1].name, "lazy refcounts");
    assert_int_equal(ext.features[2].type, 2);
    assert_int_equal(ext.features[2].bit, 9);
    assert_string_equal(ext.features[2].name,
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST");
    assert_int_equal(ext.nb_unknown, 2);
    assert_int_equal(ext.unknown[0].type, 0xdeadbeef);
    assert_int_equal(ext.unknown[0].len, 13);
    for (unsigned i = 0; i < 13; i++) {
        assert_int_equal(ext.unknown[0].data[i], i + 1);
    }
    assert_int_equal(ext.unknown[1].type, 0x12345678);
    assert_int_equal(ext.unknown[1].len, 0);

    /* feature names */
    assert_string_equal(qcow2_feature_name(&ext, 0, 0), "dirty bit");
    assert_string_equal(qcow2_feature_name(&ext, 1, 0), "lazy refcounts");
    assert_non_null(qcow2_feature_name(&ext, 2, 9));
    assert_null(qcow2_feature_name(&ext, 0, 1));
    assert_null(qcow2_feature_name(&ext, 2, 0));
    assert_null(qcow2_feature_name(&ext, 1, 9));
    qcow2_extensions_free(&ext);
    assert_null(qcow2_feature_name(&ext, 0, 0));
}

static void test_extensions_round_trip(void **state)
{
    (void)state;
    uint8_t buf[BUF_LEN], again[BUF_LEN];
    struct qcow2_extensions ext, ext2;
    const size_t len = make_extensions(buf);

    assert_int_equal(qcow2_extensions_decode(&ext, buf, 0, BUF_LEN), 0);
    memset(again, 0xee, sizeof(again));
    const int n = qcow2_extensions_encode(&ext, again, sizeof(again));
    assert_int_equal(n, (int)len);
    assert_memory_equal(again, buf, len);

    /* and decode of the encoding gives the same fields */
    assert_int_equal(qcow2_extensions_decode(&ext2, again, 0, (size_t)n), 0);
    assert_string_equal(ext2.backing_format, ext.backing_format);
    assert_string_equal(ext2.data_file, ext.data_file);
    assert_int_equal(ext2.nb_features, ext.nb_features);
    assert_int_equal(ext2.nb_unknown, 2);
    assert_memory_equal(ext2.unknown[0].data, ext.unknown[0].data, 13);
    assert_true(ext2.bitmap_dir_offset == ext.bitmap_dir_offset);
    assert_true(ext2.crypto_length == ext.crypto_length);

    /* too little room: -ENOSPC, whatever extension does not fit */
    for (size_t room = 0; room < len; room += 8) {
        vimg_error_clear();
        assert_error(qcow2_extensions_encode(&ext, again, room), -ENOSPC,
                     "fit");
    }
    qcow2_extensions_free(&ext);
    qcow2_extensions_free(&ext2);
}

static void test_extensions_empty(void **state)
{
    (void)state;
    uint8_t buf[BUF_LEN] = {0};
    struct qcow2_extensions ext;

    /* only an end marker; and an area too short for any extension */
    assert_int_equal(qcow2_extensions_decode(&ext, buf, 104, BUF_LEN), 0);
    assert_null(ext.backing_format);
    assert_null(ext.data_file);
    assert_false(ext.has_bitmaps);
    assert_false(ext.has_crypto);
    assert_int_equal(ext.nb_features, 0);
    assert_int_equal(ext.nb_unknown, 0);
    qcow2_extensions_free(&ext);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(qcow2_extensions_decode(&ext, buf, 100, 107), 0);
    assert_int_equal(ext.nb_unknown, 0);
    qcow2_extensions_free(&ext);

    /* encoding nothing gives just the end marker */
    memset(buf, 0xff, 16);
    assert_int_equal(qcow2_extensions_encode(&ext, buf, BUF_LEN), 8);
    static const uint8_t zero[8];
    assert_memory_equal(buf, zero, 8);
}

static void expect_bad_ext(const uint8_t *buf, size_t end, const char *word)
{
    struct qcow2_extensions ext;

    vimg_error_clear();
    assert_error(qcow2_extensions_decode(&ext, buf, 0, end), -EIO, word);
    /* nothing is left behind for the caller to free */
    assert_null(ext.backing_format);
    assert_null(ext.unknown);
    assert_null(ext.features);
}

static void test_extensions_malformed(void **state)
{
    (void)state;
    uint8_t buf[BUF_LEN];
    size_t off;
    uint8_t d[32] = {0};

    /* length past the end of the area; an earlier good one is freed */
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0xe2792aca, "raw", 3);
    put_ext(buf, &off, 0xdeadbeef, d, 8);
    store_be32(buf + off - 12, 9); /* the unknown one now claims 9 bytes */
    expect_bad_ext(buf, off, "past the end");
    store_be32(buf + off - 12, 0xffffffff);
    expect_bad_ext(buf, BUF_LEN, "past the end");

    /* bitmaps extension of the wrong length */
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0x23852875, d, 16);
    expect_bad_ext(buf, BUF_LEN, "24");
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0x23852875, d, 32);
    expect_bad_ext(buf, BUF_LEN, "24");

    /* bitmaps extension with its reserved field set */
    memset(buf, 0, sizeof(buf));
    off = 0;
    store_be32(d, 1);
    store_be32(d + 4, 1);
    put_ext(buf, &off, 0x23852875, d, 24);
    expect_bad_ext(buf, BUF_LEN, "reserved");

    /* backing format: too long (16 or more), empty, or with a NUL */
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0xe2792aca, "0123456789abcdef", 16);
    expect_bad_ext(buf, BUF_LEN, "backing format");
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0xe2792aca, "0123456789abcde", 15);
    struct qcow2_extensions ext;
    assert_int_equal(qcow2_extensions_decode(&ext, buf, 0, BUF_LEN), 0);
    assert_string_equal(ext.backing_format, "0123456789abcde");
    qcow2_extensions_free(&ext);
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0xe2792aca, "", 0);
    expect_bad_ext(buf, BUF_LEN, "backing format");
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0xe2792aca, "ra\0w", 4);
    expect_bad_ext(buf, BUF_LEN, "backing format");

    /* crypto header pointer of the wrong length */
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0x0537be77, d, 8);
    expect_bad_ext(buf, BUF_LEN, "16");

    /* empty data file name */
    memset(buf, 0, sizeof(buf));
    off = 0;
    put_ext(buf, &off, 0x44415441, "", 0);
    expect_bad_ext(buf, BUF_LEN, "data file");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_spec_offsets),
        cmocka_unit_test(test_round_trip_v3),
        cmocka_unit_test(test_round_trip_v2),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_valid_variants),
        cmocka_unit_test(test_short_buffer),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_bad_cluster_bits),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_bad_refcount_order),
        cmocka_unit_test(test_bad_compression),
        cmocka_unit_test(test_bad_crypt_method),
        cmocka_unit_test(test_bad_size),
        cmocka_unit_test(test_bad_l1),
        cmocka_unit_test(test_bad_refcount_table),
        cmocka_unit_test(test_bad_snapshot_table),
        cmocka_unit_test(test_bad_backing_name),
        cmocka_unit_test(test_extensions_decode),
        cmocka_unit_test(test_extensions_round_trip),
        cmocka_unit_test(test_extensions_empty),
        cmocka_unit_test(test_extensions_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
