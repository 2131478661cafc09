/* SPDX-License-Identifier: MIT */
/*
 * test-image.c: the public API on tiny qcow2 images built by hand in
 * memory (512-byte clusters): reads of every kind of cluster, block status
 * flags, lengths and depth, range checks, writes to a read-only image, and
 * corrupt tables that must fail with -EIO rather than be followed.
 */
#include <stdlib.h>
#include <zlib.h>

#include "unit.h"

#include "vimg-endian.h"

#define CS 512u                /* cluster size */
#define NB_CLUSTERS 10
#define IMG_LEN (NB_CLUSTERS * CS)
#define VSIZE 65536u           /* 2 L1 entries of 64 L2 entries */
#define COPIED (1ull << 63)
#define COMPRESSED (1ull << 62)

/*
 * Cluster map of the image:
 *   0 header   1 refcount table   2 refcount block   3 L1   4 L2
 *   5 data A   6 data B   7 data C (right after B)   8 junk (zero-alloc)
 *   9 compressed data D
 * Guest clusters (L2 entries):
 *   0 -> A   1 zero (no host)   2 unallocated   3 -> B   4 -> C
 *   5 zero, host cluster 8 kept   6 compressed D   7.. unallocated
 * L1[1] is 0: the second 32 KiB are unallocated.
 */
static uint8_t pattern_byte(char which, size_t i)
{
    return (uint8_t)(which * 31 + i * 7 + (i >> 5));
}

struct image {
    uint8_t buf[IMG_LEN];
    uint8_t expect[VSIZE]; /* what the guest sees */
};

static void fill(uint8_t *p, char which)
{
    for (size_t i = 0; i < CS; i++) {
        p[i] = pattern_byte(which, i);
    }
}

static size_t deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                          size_t out_cap)
{
    z_stream z;

    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -12, 9,
                                  Z_DEFAULT_STRATEGY),
                     Z_OK);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    const size_t n = out_cap - z.avail_out;
    deflateEnd(&z);
    return n;
}

static uint8_t *cluster(struct image *im, unsigned n)
{
    return im->buf + (size_t)n * CS;
}

static void build(struct image *im)
{
    memset(im, 0, sizeof(*im));

    /* header, v3, 104 bytes, no extensions (zeroes are the end marker) */
    uint8_t *h = cluster(im, 0);
    store_be32(h + 0, 0x514649fb);
    store_be32(h + 4, 3);
    store_be32(h + 20, 9);                 /* cluster_bits */
    store_be64(h + 24, VSIZE);             /* size */
    store_be32(h + 36, 2);                 /* l1_size */
    store_be64(h + 40, 3 * CS);            /* l1_table_offset */
    store_be64(h + 48, 1 * CS);            /* refcount_table_offset */
    store_be32(h + 56, 1);                 /* refcount_table_clusters */
    store_be32(h + 96, 4);                 /* refcount_order: 16 bits */
    store_be32(h + 100, 104);              /* header_length */

    /* refcounts: every cluster used once */
    store_be64(cluster(im, 1), 2 * CS);
    for (unsigned i = 0; i < NB_CLUSTERS; i++) {
        store_be16(cluster(im, 2) + 2 * i, 1);
    }

    store_be64(cluster(im, 3), 4 * CS | COPIED); /* L1[0] */
    uint8_t *l2 = cluster(im, 4);
    store_be64(l2 + 0 * 8, 5 * CS | COPIED);
    store_be64(l2 + 1 * 8, 1);                       /* zero, plain */
    store_be64(l2 + 3 * 8, 6 * CS | COPIED);
    store_be64(l2 + 4 * 8, 7 * CS | COPIED);
    store_be64(l2 + 5 * 8, 8 * CS | COPIED | 1);     /* zero, allocated */
    /* compressed: offset in bits 0..60, (sectors - 1) in bit 61 */
    store_be64(l2 + 6 * 8, 9 * CS | COMPRESSED);

    fill(cluster(im, 5), 'A');
    fill(cluster(im, 6), 'B');
    fill(cluster(im, 7), 'C');
    memset(cluster(im, 8), 0xff, CS); /* must never be read */
    uint8_t d[CS];
    for (size_t i = 0; i < CS; i++) {
        d[i] = (uint8_t)("compressed cluster "[i % 19]);
    }
    const size_t n = deflate_raw(d, CS, cluster(im, 9), CS);
    assert_true(n <= CS);

    memcpy(im->expect + 0 * CS, cluster(im, 5), CS);
    memcpy(im->expect + 3 * CS, cluster(im, 6), CS);
    memcpy(im->expect + 4 * CS, cluster(im, 7), CS);
    memcpy(im->expect + 6 * CS, d, CS);
}

static vimg_image *open_image(const struct image *im)
{
    vimg_image *img = NULL;

    vimg_error_clear();
    const int ret =
        vimg_open_memory(&img, im->buf, IMG_LEN, NULL, "mem.qcow2");
    if (ret != 0) {
        fail_msg("open: %d \"%s\"", ret, vimg_last_error());
    }
    assert_non_null(img);
    return img;
}

static int setup(void **state)
{
    struct image *im = malloc(sizeof(*im));

    if (!im) {
        return -1;
    }
    build(im);
    *state = im;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

static void test_open(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);

    assert_string_equal(vimg_format(img), "qcow2");
    assert_true(vimg_size(img) == VSIZE);
    assert_string_equal(vimg_filename(img), "mem.qcow2");
    assert_null(vimg_backing(img));
    vimg_close(img);

    /* asking for the format by name works too; an unknown one does not */
    assert_int_equal(vimg_open_memory(&img, im->buf, IMG_LEN, "qcow2", NULL),
                     0);
    vimg_close(img);
    img = NULL;
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, im->buf, IMG_LEN, "nosuch", "x"),
                 -EINVAL, "nosuch");
    assert_null(img);
}

static void test_read_all(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    uint8_t *buf = malloc(VSIZE);

    assert_non_null(buf);
    memset(buf, 0xee, VSIZE);
    assert_int_equal(vimg_pread(img, buf, VSIZE, 0), 0);
    for (size_t c = 0; c < VSIZE / CS; c++) {
        if (memcmp(buf + c * CS, im->expect + c * CS, CS) != 0) {
            fail_msg("guest cluster %zu reads wrong", c);
        }
    }
    free(buf);
    vimg_close(img);
}

static void test_read_unaligned(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    static const struct {
        uint64_t offset;
        size_t count;
    } reqs[] = {
        {0, 1},        {1, 510},     {500, 30},     {500, 1100},
        {1530, 1100},  {2047, 2},    {2600, 200},   {3072, 512},
        {3100, 100},   {3000, 700},  {3583, 1},     {32760, 16},
        {65535, 1},    {0, 3584},    {17, 40000},   {65536 - 700, 700},
    };

    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        uint8_t buf[40000];
        memset(buf, 0xee, reqs[i].count);
        const int ret = vimg_pread(img, buf, reqs[i].count, reqs[i].offset);
        if (ret != 0) {
            fail_msg("read %zu at %llu: %d \"%s\"", reqs[i].count,
                     (unsigned long long)reqs[i].offset, ret,
                     vimg_last_error());
        }
        if (memcmp(buf, im->expect + reqs[i].offset, reqs[i].count) != 0) {
            fail_msg("read %zu at %llu: wrong bytes", reqs[i].count,
                     (unsigned long long)reqs[i].offset);
        }
    }
    /* an empty read at the very end is fine */
    assert_int_equal(vimg_pread(img, NULL, 0, VSIZE), 0);
    vimg_close(img);
}

static void check_extent(vimg_image *img, uint64_t offset, uint64_t count,
                         uint64_t length, unsigned flags, uint64_t file_offset)
{
    struct vimg_extent e;

    memset(&e, 0xab, sizeof(e));
    vimg_error_clear();
    const int ret = vimg_block_status(img, offset, count, &e);
    if (ret != 0) {
        fail_msg("block status at %llu: %d \"%s\"",
                 (unsigned long long)offset, ret, vimg_last_error());
    }
    if (e.length != length || e.flags != flags || e.depth != 0) {
        fail_msg("block status at %llu: length %llu flags 0x%x depth %u, "
                 "expected length %llu flags 0x%x depth 0",
                 (unsigned long long)offset, (unsigned long long)e.length,
                 e.flags, e.depth, (unsigned long long)length, flags);
    }
    if (flags & VIMG_EXTENT_OFFSET) {
        assert_true(e.file_offset == file_offset);
        assert_non_null(e.file_name);
        assert_string_equal(e.file_name, "mem.qcow2");
    }
}

static void test_block_status(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    const unsigned data = VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET |
                          VIMG_EXTENT_PRESENT;

    check_extent(img, 0, VSIZE, CS, data, 5 * CS);
    check_extent(img, 100, VSIZE, CS - 100, data, 5 * CS + 100);
    check_extent(img, 0, 10, 10, data, 5 * CS);
    /* zero without a host cluster */
    check_extent(img, CS, VSIZE, CS, VIMG_EXTENT_ZERO | VIMG_EXTENT_PRESENT,
                 0);
    /* unallocated, no backing file: zeroes, but not present */
    check_extent(img, 2 * CS, VSIZE, CS, VIMG_EXTENT_ZERO, 0);
    /* B and C are next to each other in the file: one extent */
    check_extent(img, 3 * CS, VSIZE, 2 * CS, data, 6 * CS);
    check_extent(img, 3 * CS + 100, 50, 50, data, 6 * CS + 100);
    check_extent(img, 4 * CS, VSIZE, CS, data, 7 * CS);
    /* zero, with its host cluster kept */
    check_extent(img, 5 * CS, VSIZE, CS,
                 VIMG_EXTENT_ZERO | VIMG_EXTENT_OFFSET | VIMG_EXTENT_PRESENT,
                 8 * CS);
    /* compressed: data, but no plain offset in the file */
    check_extent(img, 6 * CS, VSIZE, CS,
                 VIMG_EXTENT_DATA | VIMG_EXTENT_COMPRESSED |
                     VIMG_EXTENT_PRESENT,
                 0);
    /* the rest of the first L2 table, then the unallocated L1 entry */
    check_extent(img, 7 * CS, VSIZE, 32768 - 7 * CS, VIMG_EXTENT_ZERO, 0);
    check_extent(img, 32768, VSIZE, 32768, VIMG_EXTENT_ZERO, 0);
    check_extent(img, 32768, 1000, 1000, VIMG_EXTENT_ZERO, 0);
    check_extent(img, VSIZE - 1, 100, 1, VIMG_EXTENT_ZERO, 0);

    /* out of range */
    struct vimg_extent e;
    vimg_error_clear();
    assert_error(vimg_block_status(img, VSIZE, 1, &e), -EINVAL, "beyond");
    vimg_error_clear();
    assert_error(vimg_block_status(img, 0, 0, &e), -EINVAL, "mem.qcow2");
    assert_int_equal(vimg_block_status(NULL, 0, 1, &e), -EINVAL);
    assert_int_equal(vimg_block_status(img, 0, 1, NULL), -EINVAL);
    vimg_close(img);
}

/* Walking the disk by block status tiles it, and every extent that says
 * zero reads as zeroes. */
static void test_block_status_walk(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    uint64_t offset = 0;
    unsigned extents = 0;

    while (offset < VSIZE) {
        struct vimg_extent e;
        assert_int_equal(vimg_block_status(img, offset, VSIZE - offset, &e),
                         0);
        assert_true(e.length > 0 && e.length <= VSIZE - offset);
        if (e.flags & VIMG_EXTENT_ZERO) {
            for (uint64_t i = offset; i < offset + e.length; i++) {
                assert_int_equal(im->expect[i], 0);
            }
        } else {
            assert_true(e.flags & VIMG_EXTENT_DATA);
        }
        offset += e.length;
        extents++;
    }
    assert_true(offset == VSIZE);
    assert_int_equal(extents, 8);
    vimg_close(img);
}

static void test_range_checks(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    uint8_t buf[16];

    vimg_error_clear();
    assert_error(vimg_pread(img, buf, 2, VSIZE - 1), -EINVAL,
                 "beyond the end");
    vimg_error_clear();
    assert_error(vimg_pread(img, buf, 1, VSIZE), -EINVAL, "beyond the end");
    /* offset + count wraps around */
    vimg_error_clear();
    assert_error(vimg_pread(img, buf, 16, UINT64_MAX - 4), -EINVAL,
                 "beyond the end");
    vimg_error_clear();
    assert_error(vimg_pread(img, NULL, 1, 0), -EINVAL, "NULL");
    assert_int_equal(vimg_pread(NULL, buf, 1, 0), -EINVAL);
    /* the last byte is fine */
    assert_int_equal(vimg_pread(img, buf, 1, VSIZE - 1), 0);
    vimg_close(img);
}

static void test_read_only(void **state)
{
    struct image *im = *state;
    vimg_image *img = open_image(im);
    uint8_t buf[CS] = {1};

    vimg_error_clear();
    assert_error(vimg_pwrite(img, buf, CS, 0), -EROFS, "read-only");
    /* nothing changed */
    assert_int_equal(vimg_pread(img, buf, CS, 0), 0);
    assert_memory_equal(buf, im->expect, CS);
    assert_int_equal(vimg_flush(img), 0);
    vimg_close(img);
    vimg_close(NULL);
}

/* Damage one field, open, read the whole disk: expect ERR and WORD. */
static void expect_read_error(struct image *im, const char *word)
{
    vimg_image *img = open_image(im);
    uint8_t *buf = malloc(VSIZE);

    assert_non_null(buf);
    vimg_error_clear();
    assert_error(vimg_pread(img, buf, VSIZE, 0), -EIO, word);
    struct vimg_extent e;
    vimg_error_clear();
    int ret = 0;
    for (uint64_t off = 0; off < VSIZE && ret == 0; off += e.length) {
        ret = vimg_block_status(img, off, VSIZE - off, &e);
    }
    assert_error(ret, -EIO, word);
    free(buf);
    vimg_close(img);
}

static void test_corrupt_tables(void **state)
{
    struct image *im = *state;
    uint8_t *l2 = cluster(im, 4);

    /* data cluster past the end of the file */
    store_be64(l2 + 3 * 8, (uint64_t)IMG_LEN | COPIED);
    expect_read_error(im, "past the end");
    build(im);
    /* L2 table past the end (with 512-byte clusters the offset masks
     * leave no room for a misaligned offset) */
    store_be64(cluster(im, 3), (uint64_t)(IMG_LEN + CS) | COPIED);
    expect_read_error(im, "past the end");
    build(im);
    /* compressed data past the end of the file */
    store_be64(l2 + 6 * 8, (uint64_t)(IMG_LEN + 16) | COMPRESSED);
    expect_read_error(im, "past the end");
    build(im);
    /* compressed data that is not a deflate stream */
    memset(cluster(im, 9), 0xff, CS);
    vimg_image *img = open_image(im);
    uint8_t buf[CS];
    vimg_error_clear();
    assert_error(vimg_pread(img, buf, CS, 6 * CS), -EIO, "compressed");
    vimg_close(img);
    build(im);
}

/*
 * A corrupt L2 entry is reported when the range asked about reaches it,
 * not before: block status of the good cluster in front of it describes
 * that cluster (vimg.h: the answer covers out->length bytes that all have
 * the same status).  qemu-img map lists the good extent too.
 */
static void test_corrupt_neighbour(void **state)
{
    struct image *im = *state;
    struct vimg_extent e;
    uint8_t buf[CS];

    /* guest cluster 3 points past the end of the file; 2 is unallocated */
    store_be64(cluster(im, 4) + 3 * 8, (uint64_t)IMG_LEN | COPIED);
    vimg_image *img = open_image(im);
    /* reads that stay in front of it work; the bad cluster fails */
    assert_int_equal(vimg_pread(img, buf, CS, 2 * CS), 0);
    vimg_error_clear();
    assert_error(vimg_block_status(img, 3 * CS, CS, &e), -EIO,
                 "past the end");
    vimg_error_clear();
    assert_error(vimg_pread(img, buf, CS, 3 * CS), -EIO, "past the end");

    vimg_error_clear();
    memset(&e, 0, sizeof(e));
    const int ret = vimg_block_status(img, 2 * CS, VSIZE - 2 * CS, &e);
    vimg_close(img); /* before any failure, so that nothing leaks */
    if (ret != 0) {
        fail_msg("block status of the good cluster at 0x%x failed because "
                 "of the next one: %d \"%s\"",
                 2 * CS, ret, vimg_last_error());
    }
    assert_int_equal(e.length, CS);
    assert_int_equal(e.flags, VIMG_EXTENT_ZERO);
}

/* An unknown incompatible feature is named from the feature name table. */
static void test_feature_name_table(void **state)
{
    struct image *im = *state;
    uint8_t *h = cluster(im, 0);
    vimg_image *img = NULL;

    store_be64(h + 72, (1ull << 40) | (1ull << 41));
    store_be32(h + 104, 0x6803f857); /* feature name table */
    store_be32(h + 108, 48);
    h[112] = 0;                      /* incompatible */
    h[113] = 40;
    memcpy(h + 114, "fancy feature", 13);
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, im->buf, IMG_LEN, NULL, "x"),
                 -ENOTSUP, "fancy feature");
    /* bit 41 has no name in the table */
    assert_non_null(strstr(vimg_last_error(), "bit 41"));
    assert_null(img);
}

static void test_corrupt_header(void **state)
{
    struct image *im = *state;
    vimg_image *img = NULL;

    /* a bad header fails the open with the image's name in the message */
    store_be32(cluster(im, 0) + 20, 30);
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, im->buf, IMG_LEN, "qcow2", "bad.qcow2"),
                 -EIO, "bad.qcow2");
    assert_true(strstr(vimg_last_error(), "cluster_bits") != NULL);
    assert_null(img);
    build(im);

    /* an unknown incompatible feature is refused */
    store_be64(cluster(im, 0) + 72, 1ull << 40);
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, im->buf, IMG_LEN, "qcow2", "x"),
                 -ENOTSUP, "40");
    assert_null(img);
    build(im);

    /* a truncated file */
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, im->buf, 50, "qcow2", "short"),
                 -EIO, "truncated");
    assert_null(img);
}

/*
 * Extended L2 entries (16 bytes: entry + subcluster bitmap).  With 512-byte
 * clusters a subcluster is 16 bytes and an L2 table has 32 entries.
 */
static void test_extended_l2(void **state)
{
    struct image *im = *state;
    uint8_t *h = cluster(im, 0);

    store_be64(h + 72, 1ull << 4);  /* incompatible: extended L2 */
    store_be32(h + 36, 4);          /* 64 KiB / 16 KiB per L1 entry */
    memset(cluster(im, 3), 0, CS);
    store_be64(cluster(im, 3), 4 * CS | COPIED);
    uint8_t *l2 = cluster(im, 4);
    memset(l2, 0, CS);
    /* cluster 0 -> A: subclusters 0-3 allocated, 4-7 zero, rest not */
    store_be64(l2, 5 * CS | COPIED);
    store_be64(l2 + 8, 0x000000f00000000full);
    /* cluster 1: no host cluster, all zero */
    store_be64(l2 + 24, 0xffffffff00000000ull);

    vimg_image *img = open_image(im);
    uint8_t buf[2 * CS], want[2 * CS] = {0};
    memcpy(want, cluster(im, 5), 64);
    assert_int_equal(vimg_pread(img, buf, sizeof(buf), 0), 0);
    assert_memory_equal(buf, want, sizeof(buf));

    check_extent(img, 0, VSIZE, 64,
                 VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET | VIMG_EXTENT_PRESENT,
                 5 * CS);
    check_extent(img, 20, VSIZE, 44,
                 VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET | VIMG_EXTENT_PRESENT,
                 5 * CS + 20);
    check_extent(img, 64, VSIZE, 64,
                 VIMG_EXTENT_ZERO | VIMG_EXTENT_OFFSET | VIMG_EXTENT_PRESENT,
                 5 * CS + 64);
    /* allocated cluster, unallocated subclusters, no backing file: zero,
     * not present, but the host offset is still reported (as qemu-img
     * map does) */
    check_extent(img, 128, VSIZE, CS - 128,
                 VIMG_EXTENT_ZERO | VIMG_EXTENT_OFFSET, 5 * CS + 128);
    check_extent(img, CS, VSIZE, CS, VIMG_EXTENT_ZERO | VIMG_EXTENT_PRESENT,
                 0);
    vimg_close(img);

    /* a subcluster both allocated and zero is corrupt */
    store_be64(l2 + 8, 0x0000000100000001ull);
    expect_read_error(im, "bitmap");
    build(im);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_open),
        T(test_read_all),
        T(test_read_unaligned),
        T(test_block_status),
        T(test_block_status_walk),
        T(test_range_checks),
        T(test_read_only),
        T(test_corrupt_tables),
        T(test_corrupt_neighbour),
        T(test_feature_name_table),
        T(test_corrupt_header),
        T(test_extended_l2),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
