/* SPDX-License-Identifier: MIT */
/*
 * codec.c: decompression for qcow2 compressed clusters.  Deflate goes
 * through libdeflate (much faster than zlib's inflate) with zlib as the
 * fallback for streams libdeflate will not take whole (a stream that
 * overfills the cluster, which qemu accepts).  Decompressor contexts are
 * per thread, so concurrent readers never share one.
 */
#include <errno.h>
#include <libdeflate.h>
#include <pthread.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "codec/codec.h"
#include "vimg-internal.h"

static pthread_once_t keys_once = PTHREAD_ONCE_INIT;
static pthread_key_t deflate_key, zstd_key;

static void free_deflate(void *p)
{
    libdeflate_free_decompressor(p);
}

static void free_zstd(void *p)
{
    ZSTD_freeDCtx(p);
}

static void make_keys(void)
{
    pthread_key_create(&deflate_key, free_deflate);
    pthread_key_create(&zstd_key, free_zstd);
}

static int inflate_zlib(const uint8_t *in, size_t in_len, uint8_t *out,
                        size_t out_len)
{
    z_stream z;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        return vimg_error(-ENOMEM, "zlib: cannot initialise inflate");
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int ret = inflate(&z, Z_FINISH);
    const size_t produced = out_len - z.avail_out;
    inflateEnd(&z);
    /* A stream that fills the cluster exactly is fine even if it does not
     * end there (qemu accepts it). */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && produced == out_len) {
        return 0;
    }
    return vimg_error(-EIO,
                      "corrupt compressed cluster: deflate stream gives %zu "
                      "of %zu bytes",
                      produced, out_len);
}

int vimg_inflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len)
{
    pthread_once(&keys_once, make_keys);
    struct libdeflate_decompressor *d = pthread_getspecific(deflate_key);
    if (!d) {
        d = libdeflate_alloc_decompressor();
        if (!d) {
            return inflate_zlib(in, in_len, out, out_len);
        }
        pthread_setspecific(deflate_key, d);
    }
    size_t in_used = 0, produced = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(
        d, in, in_len, out, out_len, &in_used, &produced);
    if (r == LIBDEFLATE_SUCCESS && produced == out_len) {
        return 0;
    }
    return inflate_zlib(in, in_len, out, out_len);
}

int vimg_zstd_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
                         size_t out_len)
{
    pthread_once(&keys_once, make_keys);
    ZSTD_DCtx *d = pthread_getspecific(zstd_key);
    if (!d) {
        d = ZSTD_createDCtx();
        if (!d) {
            return vimg_error(-ENOMEM, "zstd: cannot create a context");
        }
        pthread_setspecific(zstd_key, d);
    }
    /* The stored length is rounded up to a sector: find the frame's end */
    size_t frame = ZSTD_findFrameCompressedSize(in, in_len);
    if (ZSTD_isError(frame)) {
        return vimg_error(-EIO, "corrupt compressed cluster: zstd: %s",
                          ZSTD_getErrorName(frame));
    }
    size_t n = ZSTD_decompressDCtx(d, out, out_len, in, frame);
    if (ZSTD_isError(n)) {
        return vimg_error(-EIO, "corrupt compressed cluster: zstd: %s",
                          ZSTD_getErrorName(n));
    }
    if (n != out_len) {
        return vimg_error(-EIO,
                          "corrupt compressed cluster: zstd frame gives %zu "
                          "of %zu bytes",
                          n, out_len);
    }
    return 0;
}

int vimg_deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_cap)
{
    z_stream z;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return vimg_error(-ENOMEM, "zlib: cannot initialise deflate");
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_cap;
    int ret = deflate(&z, Z_FINISH);
    const size_t produced = out_cap - z.avail_out;
    deflateEnd(&z);
    if (ret == Z_STREAM_END) {
        return (int)produced;
    }
    return ret == Z_OK || ret == Z_BUF_ERROR
               ? 0
               : vimg_error(-EIO, "zlib: deflate failed (%d)", ret);
}

static pthread_key_t zstd_cctx_key;
static pthread_once_t cctx_once = PTHREAD_ONCE_INIT;

static void free_cctx(void *p)
{
    ZSTD_freeCCtx(p);
}

static void make_cctx_key(void)
{
    pthread_key_create(&zstd_cctx_key, free_cctx);
}

int vimg_zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                       size_t out_cap)
{
    pthread_once(&cctx_once, make_cctx_key);
    ZSTD_CCtx *c = pthread_getspecific(zstd_cctx_key);
    if (!c) {
        c = ZSTD_createCCtx();
        if (!c) {
            return vimg_error(-ENOMEM, "zstd: cannot create a context");
        }
        pthread_setspecific(zstd_cctx_key, c);
    }
    size_t n = ZSTD_compressCCtx(c, out, out_cap, in, in_len,
                                 ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) {
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall
                   ? 0
                   : vimg_error(-EIO, "zstd: %s", ZSTD_getErrorName(n));
    }
    return (int)n;
}
