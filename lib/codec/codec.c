/* SPDX-License-Identifier: MIT */
/*
 * codec.c: compression and decompression for qcow2 compressed clusters.
 * Inflate goes through libdeflate (much faster than zlib's inflate) with
 * zlib as the fallback for streams libdeflate will not take whole (a
 * stream that overfills the cluster, which qemu accepts).  Deflate goes
 * through isa-l and zlib (see vimg_deflate_raw()).  Contexts are per
 * thread, so concurrent callers never share one.
 */
#include <assert.h>
#include <errno.h>
#include <libdeflate.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#ifdef VIMG_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include "codec/codec.h"
#include "util/vimg-util.h"

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

/*
 * Deflate for qcow2 clusters.  Every reader inflates with a 4 KiB window
 * (windowBits -12), so no match may reach back more than 4096 bytes;
 * libdeflate cannot be told that, zlib and isa-l can.
 *
 * qemu compresses with zlib level 6, memLevel 9.  zlib spends most of that
 * time walking hash chains, and its 32K-symbol blocks share one Huffman
 * code between unlike data (text next to random bytes).  Measured on the
 * bench content (bench/gen.c, 64 KiB clusters; output size relative to
 * qemu's, speed on one core):
 *
 *   zlib 6, memLevel 9 (qemu)           1.000    14 MB/s
 *   zlib 6, memLevel 8                  0.994    17 MB/s
 *   zlib 4, memLevel 6                  0.988    25 MB/s
 *   isa-l level 3, 4K-token buffer      1.003   150 MB/s
 *   isa-l, then zlib 4/6 where isa-l    0.998    53 MB/s
 *     gave < 3/8 of the cluster
 *
 * (the last row: 512 MiB of it, 2026-11-22; with 13/32 instead of 3/8 it
 * was 0.996 at 30 MB/s, the retries costing more than they saved)
 *
 * isa-l parses greedily: it loses ~2.4% to zlib's lazy matching on
 * text-like clusters and wins on mixed ones, where its smaller blocks
 * adapt.  The more compressible the data, the more a deeper search pays:
 * on text of a few dozen distinct words (to ~0.2) isa-l is 12-34% larger
 * than qemu's zlib, zlib 4/6 3-11%, zlib 6/8 never larger.  So isa-l
 * compresses every cluster and zlib tries again where isa-l got below
 * 3/8 of the input: level 4 with small blocks (memLevel 6), or level 6,
 * memLevel 8 below 1/4.  The smaller stream is kept.  Without isa-l zlib
 * 6/8 does it all.  That is level 3 now (see codec.h).
 *
 * On real data it is 3-7% larger than qemu's (64 MiB each of /usr/bin and
 * /usr/lib, man pages and docs, an ext4 image of /usr/share; 2026-12-06):
 *
 *                       binaries         text             ext4 image
 *   zlib 6/9 (qemu)     0.436  24 MB/s   0.239  50 MB/s   0.289  30 MB/s
 *   level 1 (isa-l 1)   0.477 185 MB/s   0.264 231 MB/s   0.307 173 MB/s
 *   level 2 (isa-l 3)   0.469 155 MB/s   0.252 175 MB/s   0.301 141 MB/s
 *   level 3             0.466  92 MB/s   0.242  36 MB/s   0.296  42 MB/s
 *   level 5 (zlib 5/9)  0.438            0.240            0.290
 *
 * and keeping isa-l's stream where it beat zlib 6/9 saved 0.005-0.05% for
 * 60% more time.  So the default is qemu's zlib setting itself, the same
 * bytes qemu writes with the same zlib; isa-l is there for speed when
 * asked (compression_level 1..3).  The result depends only on the input,
 * the level (and the library builds), never on threads or timing.
 */
enum {
    DEFLATE_WINDOW_BITS = 12, /* qcow2: 4 KiB window */
};

/* The zlib settings: the two retries of level 3 (see above), and the
 * levels 1..9 with qemu's memLevel 9 (level 6 is qemu's setting) */
enum zlib_setting {
    ZLIB_SMALL_BLOCKS,
    ZLIB_DEEP,
    ZLIB_LEVEL0, /* + level */
    ZLIB_SETTINGS = ZLIB_LEVEL0 + 10,
};

static void zlib_setting(enum zlib_setting which, int *level, int *mem_level)
{
    if (which == ZLIB_SMALL_BLOCKS) {
        *level = 4, *mem_level = 6;
    } else if (which == ZLIB_DEEP) {
        *level = 6, *mem_level = 8;
    } else {
        *level = (int)which - ZLIB_LEVEL0, *mem_level = 9;
    }
}

struct deflate_ctx {
    z_stream z[ZLIB_SETTINGS];
    bool has_z[ZLIB_SETTINGS];
#ifdef VIMG_HAVE_ISAL
    struct isal_zstream isal;
    uint8_t *isal_level_buf;
    uint8_t *scratch; /* isa-l's stream, while zlib tries */
    size_t scratch_cap;
#endif
};

static pthread_key_t deflate_ctx_key;
static pthread_once_t deflate_ctx_once = PTHREAD_ONCE_INIT;

static void free_deflate_ctx(void *p)
{
    struct deflate_ctx *c = p;

    for (int i = 0; i < ZLIB_SETTINGS; i++) {
        if (c->has_z[i]) {
            deflateEnd(&c->z[i]);
        }
    }
#ifdef VIMG_HAVE_ISAL
    free(c->isal_level_buf);
    free(c->scratch);
#endif
    free(c);
}

static void make_deflate_ctx_key(void)
{
    pthread_key_create(&deflate_ctx_key, free_deflate_ctx);
}

static struct deflate_ctx *get_deflate_ctx(void)
{
    pthread_once(&deflate_ctx_once, make_deflate_ctx_key);
    struct deflate_ctx *c = pthread_getspecific(deflate_ctx_key);
    if (c) {
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    if (pthread_setspecific(deflate_ctx_key, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

/* zlib with setting WHICH into OUT; same returns as vimg_deflate_raw(). */
static int deflate_zlib(struct deflate_ctx *c, enum zlib_setting which,
                        const uint8_t *in, size_t in_len, uint8_t *out,
                        size_t out_cap)
{
    z_stream *z = &c->z[which];

    if (!c->has_z[which]) {
        int level, mem_level;
        zlib_setting(which, &level, &mem_level);
        if (deflateInit2(z, level, Z_DEFLATED, -DEFLATE_WINDOW_BITS, mem_level,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            return vimg_error(-ENOMEM, "zlib: cannot initialise deflate");
        }
        c->has_z[which] = true;
    } else if (deflateReset(z) != Z_OK) {
        return vimg_error(-EIO, "zlib: deflateReset failed");
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)in_len;
    z->next_out = out;
    z->avail_out = (uInt)out_cap;
    const int ret = deflate(z, Z_FINISH);
    if (ret == Z_STREAM_END) {
        return (int)(out_cap - z->avail_out);
    }
    return ret == Z_OK || ret == Z_BUF_ERROR
               ? 0
               : vimg_error(-EIO, "zlib: deflate failed (%d)", ret);
}

#ifdef VIMG_HAVE_ISAL
/* A level 3 token buffer of 4K tokens: isa-l ends a deflate block (with a
 * Huffman code of its own) when it fills, so this sets the block size.
 * 4K compressed best on the bench content (2K: +0.4%, 8K: +0.5%,
 * isa-l's default 64K: +2.2%). */
#define ISAL_LEVEL_BUF_BYTES                                                   \
    (ISAL_DEF_LVL3_REQ + ISAL_DEF_LVL3_TOKEN_SIZE * 4 * IGZIP_K)
_Static_assert(ISAL_DEF_LVL1_REQ + ISAL_DEF_LVL1_TOKEN_SIZE * 4 * IGZIP_K <=
                   ISAL_LEVEL_BUF_BYTES,
               "level 1 fits level 3's buffer");

/* isa-l into OUT; same returns as vimg_deflate_raw().  isa-l may want a
 * few bytes more room than its stream takes: then it returns 0 too. */
static int deflate_isal(struct deflate_ctx *c, int level, const uint8_t *in,
                        size_t in_len, uint8_t *out, size_t out_cap)
{
    struct isal_zstream *s = &c->isal;

    if (!c->isal_level_buf) {
        c->isal_level_buf = malloc(ISAL_LEVEL_BUF_BYTES);
        if (!c->isal_level_buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
    }
    isal_deflate_init(s);
    s->level = (uint32_t)level;
    s->level_buf = c->isal_level_buf;
    /* the same 4K tokens at level 1, whose hash table is smaller */
    s->level_buf_size = level == 1 ? ISAL_DEF_LVL1_REQ +
                                         ISAL_DEF_LVL1_TOKEN_SIZE * 4 * IGZIP_K
                                   : ISAL_LEVEL_BUF_BYTES;
    s->hist_bits = DEFLATE_WINDOW_BITS;
    s->next_in = (uint8_t *)in;
    s->avail_in = (uint32_t)in_len;
    s->next_out = out;
    s->avail_out = (uint32_t)out_cap;
    s->end_of_stream = 1;
    s->flush = NO_FLUSH;
    const int ret = isal_deflate(s);
    if (ret != COMP_OK) {
        return vimg_error(-EIO, "isa-l: deflate failed (%d)", ret);
    }
    /* Not at the end: OUT filled up first */
    return s->internal_state.state == ZSTATE_END ? (int)s->total_out : 0;
}
#endif

#ifdef VIMG_HAVE_ISAL
/* How many bytes of IN are in 4 KiB blocks that look random (order-0
 * entropy above 7 bits a byte): they cost about their size in any
 * stream. */
static float c_log_c[4097]; /* c * log2(4096 / c) */
static pthread_once_t c_log_c_once = PTHREAD_ONCE_INIT;

static void make_c_log_c(void)
{
    for (int c = 1; c <= 4096; c++) {
        c_log_c[c] = (float)(c * (12.0 - log2((double)c)));
    }
}

static size_t random_bytes(const uint8_t *in, size_t in_len)
{
    size_t total = 0;

    pthread_once(&c_log_c_once, make_c_log_c);
    for (size_t off = 0; off + 4096 <= in_len; off += 4096) {
        /* four tables, so that runs of one value do not stall */
        uint16_t count[4][256] = {{0}};
        for (size_t i = 0; i < 4096; i += 4) {
            count[0][in[off + i]]++;
            count[1][in[off + i + 1]]++;
            count[2][in[off + i + 2]]++;
            count[3][in[off + i + 3]]++;
        }
        /* 4096 * entropy = sum over values of c * log2(4096 / c) */
        float bits = 0;
        for (int v = 0; v < 256; v++) {
            bits += c_log_c[count[0][v] + count[1][v] + count[2][v] +
                            count[3][v]];
        }
        if (bits > 7.0f * 4096) {
            total += 4096;
        }
    }
    return total;
}

/* Which zlib setting to try after isa-l made N bytes of IN, or -1 for
 * none (see above). */
static int zlib_retry(const uint8_t *in, size_t in_len, size_t n)
{
    if (n * 4 < in_len) {
        return ZLIB_DEEP;
    }
    if (n * 8 < in_len * 3) {
        return ZLIB_SMALL_BLOCKS;
    }
    /* Random blocks can hide very compressible data (text of a few words,
     * sparse records) on which isa-l does worst: judge the rest alone. */
    const size_t r = random_bytes(in, in_len);
    if (r < in_len && n > r && (in_len - r) * 8 >= in_len &&
        (n - r) * 4 < in_len - r) {
        return ZLIB_DEEP;
    }
    return -1;
}

/* isa-l's stream of IN at LEVEL in C's scratch buffer, made with room to
 * spare (isa-l may want a few bytes more than its stream takes): its
 * length, 0 when it does not get smaller than IN, or a negative errno. */
static int deflate_isal_scratch(struct deflate_ctx *c, int level,
                                const uint8_t *in, size_t in_len)
{
    const size_t room = in_len + in_len / 16 + 1024;
    if (c->scratch_cap < room) {
        free(c->scratch);
        c->scratch_cap = 0;
        c->scratch = malloc(room);
        if (!c->scratch) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        c->scratch_cap = room;
    }
    const int n = deflate_isal(c, level, in, in_len, c->scratch, room);
    return n > 0 && (size_t)n < in_len ? n : VIMG_MIN(n, 0);
}
#endif

int vimg_deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_cap, int level)
{
    struct deflate_ctx *c = get_deflate_ctx();

    assert(in_len <= UINT32_MAX && out_cap <= UINT32_MAX);
    assert(level >= 0 && level <= VIMG_DEFLATE_LEVEL_MAX);
    if (!c) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (level == 0) {
        level = VIMG_DEFLATE_LEVEL_DEFAULT;
    }
#ifdef VIMG_HAVE_ISAL
    if (level <= 3) {
        const int n = deflate_isal_scratch(c, level == 1 ? 1 : 3, in, in_len);
        if (n < 0) {
            return n;
        }
        const int which =
            level == 3 && n > 0 ? zlib_retry(in, in_len, (size_t)n) : -1;
        if (which >= 0) {
            /* zlib's stream is kept only if it is smaller */
            const int zn = deflate_zlib(c, (enum zlib_setting)which, in, in_len,
                                        out, VIMG_MIN(out_cap, (size_t)n - 1));
            if (zn != 0) {
                return zn;
            }
        }
        if (n == 0 || (size_t)n > out_cap) {
            return 0;
        }
        memcpy(out, c->scratch, (size_t)n);
        return n;
    }
#endif
    return deflate_zlib(c, ZLIB_LEVEL0 + level, in, in_len, out, out_cap);
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
                       size_t out_cap, int level)
{
    assert(level >= 0 && level <= VIMG_ZSTD_LEVEL_MAX);
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
                                 level ? level : ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) {
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall
                   ? 0
                   : vimg_error(-EIO, "zstd: %s", ZSTD_getErrorName(n));
    }
    return (int)n;
}
