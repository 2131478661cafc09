/* SPDX-License-Identifier: MIT */
/*
 * test-codec.c: decompression of qcow2 compressed clusters: raw deflate
 * (as qemu writes it: deflateInit2 with windowBits -12) and zstd frames;
 * trailing padding up to the sector, corrupt and short streams.
 */
#include <stdlib.h>
#include <zlib.h>
#include <zstd.h>

#include "unit.h"

#include "codec/codec.h"

#define CLUSTER 65536

/* Cluster contents that compress, but not to nothing. */
static void make_cluster(uint8_t *p, size_t len, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;

    for (size_t i = 0; i < len; i++) {
        if (i % 512 < 200) {
            x = x * 1103515245u + 12345u;
            p[i] = (uint8_t)(x >> 16);
        } else {
            p[i] = (uint8_t)(i / 512 + seed);
        }
    }
}

/* Raw deflate of IN, as qemu's qcow2_compress does.  Returns the length. */
static size_t deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                          size_t out_cap)
{
    z_stream z;

    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12,
                                  9, Z_DEFAULT_STRATEGY),
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

struct bufs {
    uint8_t *plain, *comp, *out;
    size_t comp_cap;
};

static int setup(void **state)
{
    struct bufs *b = calloc(1, sizeof(*b));

    if (!b) {
        return -1;
    }
    b->comp_cap = 2 * CLUSTER + 1024;
    b->plain = malloc(2 * CLUSTER);
    b->comp = malloc(b->comp_cap);
    b->out = malloc(2 * CLUSTER);
    if (!b->plain || !b->comp || !b->out) {
        return -1;
    }
    make_cluster(b->plain, 2 * CLUSTER, 7);
    *state = b;
    return 0;
}

static int teardown(void **state)
{
    struct bufs *b = *state;

    free(b->plain);
    free(b->comp);
    free(b->out);
    free(b);
    return 0;
}

static void test_inflate(void **state)
{
    struct bufs *b = *state;
    const size_t n = deflate_raw(b->plain, CLUSTER, b->comp, b->comp_cap);

    assert_true(n < CLUSTER);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_inflate_raw(b->comp, n, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);

    /* qcow2 stores whole sectors: zero padding after the stream, up to a
     * sector and more, is fine */
    const size_t padded = (n + 511) / 512 * 512 + 512;
    memset(b->comp + n, 0, padded - n);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_inflate_raw(b->comp, padded, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
    /* garbage padding too: the stream ends before it */
    memset(b->comp + n, 0xa5, padded - n);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_inflate_raw(b->comp, padded, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
}

static void test_inflate_small_clusters(void **state)
{
    struct bufs *b = *state;

    /* every cluster size qcow2 allows, with 512-byte (one sector) ones */
    for (unsigned bits = 9; bits <= 16; bits++) {
        const size_t size = (size_t)1 << bits;
        const size_t n = deflate_raw(b->plain, size, b->comp, b->comp_cap);
        memset(b->comp + n, 0, 512);
        memset(b->out, 0, size);
        assert_int_equal(vimg_inflate_raw(b->comp, n + 512, b->out, size), 0);
        assert_memory_equal(b->out, b->plain, size);
    }
}

static void test_inflate_corrupt(void **state)
{
    struct bufs *b = *state;

    /* BTYPE 11 (reserved) in the first block header */
    memset(b->comp, 0xff, 1024);
    vimg_error_clear();
    assert_error(vimg_inflate_raw(b->comp, 1024, b->out, CLUSTER), -EIO,
                 "corrupt");

    /* a good stream cut short */
    const size_t n = deflate_raw(b->plain, CLUSTER, b->comp, b->comp_cap);
    vimg_error_clear();
    assert_error(vimg_inflate_raw(b->comp, n / 2, b->out, CLUSTER), -EIO,
                 "corrupt");

    /* flipped bits in the middle */
    for (size_t i = 8; i < n; i += n / 7) {
        b->comp[i] ^= 0x55;
    }
    const int ret = vimg_inflate_raw(b->comp, n, b->out, CLUSTER);
    if (ret == 0) {
        /* a damaged stream can still decode; it must not be the original */
        assert_memory_not_equal(b->out, b->plain, CLUSTER);
    } else {
        assert_int_equal(ret, -EIO);
    }

    /* nothing at all */
    vimg_error_clear();
    assert_error(vimg_inflate_raw(b->comp, 0, b->out, CLUSTER), -EIO,
                 "corrupt");
}

static void test_inflate_short_and_long(void **state)
{
    struct bufs *b = *state;

    /* a stream of fewer bytes than the cluster: -EIO, it says how many */
    size_t n = deflate_raw(b->plain, 1000, b->comp, b->comp_cap);
    vimg_error_clear();
    assert_error(vimg_inflate_raw(b->comp, n, b->out, 2048), -EIO, "1000");

    /* a stream that overfills the cluster: the first cluster's worth of
     * bytes is taken (qemu accepts such streams) */
    n = deflate_raw(b->plain, 2 * CLUSTER, b->comp, b->comp_cap);
    memset(b->out, 0xee, 2 * CLUSTER);
    assert_int_equal(vimg_inflate_raw(b->comp, n, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
    for (size_t i = CLUSTER; i < 2 * CLUSTER; i++) {
        if (b->out[i] != 0xee) {
            fail_msg("inflate wrote past the end of the output (byte %zu)",
                     i);
        }
    }
}

static void test_zstd(void **state)
{
    struct bufs *b = *state;
    const size_t n = ZSTD_compress(b->comp, b->comp_cap, b->plain, CLUSTER, 3);

    assert_false(ZSTD_isError(n));
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_zstd_decompress(b->comp, n, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);

    /* padded to the sector and beyond, with zeroes or garbage */
    const size_t padded = (n + 511) / 512 * 512 + 512;
    memset(b->comp + n, 0, padded - n);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_zstd_decompress(b->comp, padded, b->out, CLUSTER),
                     0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
    memset(b->comp + n, 0x5a, padded - n);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(vimg_zstd_decompress(b->comp, padded, b->out, CLUSTER),
                     0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
}

/* qemu compresses with the streaming API: no content size in the frame. */
static void test_zstd_streamed(void **state)
{
    struct bufs *b = *state;
    ZSTD_CCtx *c = ZSTD_createCCtx();

    assert_non_null(c);
    ZSTD_outBuffer out = {b->comp, b->comp_cap, 0};
    ZSTD_inBuffer in = {b->plain, CLUSTER, 0};
    size_t left;
    do {
        left = ZSTD_compressStream2(c, &out, &in, ZSTD_e_end);
        assert_false(ZSTD_isError(left));
    } while (left != 0);
    ZSTD_freeCCtx(c);
    memset(b->comp + out.pos, 0, 512);
    memset(b->out, 0xee, CLUSTER);
    assert_int_equal(
        vimg_zstd_decompress(b->comp, out.pos + 512, b->out, CLUSTER), 0);
    assert_memory_equal(b->out, b->plain, CLUSTER);
}

static void test_zstd_corrupt(void **state)
{
    struct bufs *b = *state;

    /* not a frame at all */
    memset(b->comp, 0xff, 1024);
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, 1024, b->out, CLUSTER), -EIO,
                 "corrupt");
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, 0, b->out, CLUSTER), -EIO,
                 "corrupt");

    /* a good frame cut short */
    const size_t n = ZSTD_compress(b->comp, b->comp_cap, b->plain, CLUSTER, 3);
    assert_false(ZSTD_isError(n));
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, n / 2, b->out, CLUSTER), -EIO,
                 "corrupt");

    /* a damaged frame (zstd checks block structure; flip the magic) */
    b->comp[0] ^= 1;
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, n, b->out, CLUSTER), -EIO,
                 "corrupt");
}

static void test_zstd_short_and_long(void **state)
{
    struct bufs *b = *state;

    /* fewer bytes than the cluster */
    size_t n = ZSTD_compress(b->comp, b->comp_cap, b->plain, 1000, 3);
    assert_false(ZSTD_isError(n));
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, n, b->out, 2048), -EIO,
                 "1000");

    /* more bytes than the cluster: refused, and nothing written past it */
    n = ZSTD_compress(b->comp, b->comp_cap, b->plain, 2 * CLUSTER, 3);
    assert_false(ZSTD_isError(n));
    memset(b->out, 0xee, 2 * CLUSTER);
    vimg_error_clear();
    assert_error(vimg_zstd_decompress(b->comp, n, b->out, CLUSTER), -EIO,
                 "corrupt");
    for (size_t i = CLUSTER; i < 2 * CLUSTER; i++) {
        if (b->out[i] != 0xee) {
            fail_msg("zstd wrote past the end of the output (byte %zu)", i);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inflate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inflate_small_clusters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_inflate_corrupt, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_inflate_short_and_long, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_zstd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zstd_streamed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zstd_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zstd_short_and_long, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
