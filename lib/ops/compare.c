/* SPDX-License-Identifier: MIT */
/*
 * compare.c: guest-content comparison of two images, with qemu-img
 * compare's rules (allocation-aware, 512-byte mismatch granularity).
 */
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"
#include "util/vimg-util.h"

#define COMPARE_BUF_BYTES (2u * 1024 * 1024)
#define SECTOR 512

bool vimg_buffer_is_zero(const uint8_t *buf, size_t len)
{
    if (len < 16) {
        for (size_t i = 0; i < len; i++) {
            if (buf[i]) {
                return false;
            }
        }
        return true;
    }
    /* the first 16 bytes are zero and every byte equals the one 16 after */
    static const uint8_t zero[16];
    return memcmp(buf, zero, 16) == 0 && memcmp(buf, buf + 16, len - 16) == 0;
}

/* Is the extent "allocated" the way qemu's compare means it: some layer
 * answers for it, or it lies past the end of a backing file. */
static bool is_allocated(vimg_image *img, const struct vimg_extent *e)
{
    if (e->flags & VIMG_EXTENT_PRESENT) {
        return true;
    }
    vimg_image *layer = img;
    for (unsigned d = 0; d < e->depth && layer; d++) {
        layer = vimg_backing(layer);
    }
    return layer && vimg_backing(layer) != NULL;
}

/* First sector in BUF that is not zero, or LEN. */
static size_t first_nonzero_sector(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i += SECTOR) {
        if (!vimg_buffer_is_zero(buf + i, VIMG_MIN((size_t)SECTOR, len - i))) {
            return i;
        }
    }
    return len;
}

static size_t first_different_sector(const uint8_t *a, const uint8_t *b,
                                     size_t len)
{
    for (size_t i = 0; i < len; i += SECTOR) {
        const size_t n = VIMG_MIN((size_t)SECTOR, len - i);
        if (memcmp(a + i, b + i, n) != 0) {
            return i;
        }
    }
    return len;
}

/* Check that IMG reads as zeroes in [off, off+len); sets *bad_out to the
 * first non-zero sector or UINT64_MAX. */
static int check_zero(vimg_image *img, uint8_t *buf, uint64_t off,
                      uint64_t len, uint64_t *bad_out)
{
    *bad_out = UINT64_MAX;
    while (len > 0) {
        const size_t n = (size_t)VIMG_MIN(len, (uint64_t)COMPARE_BUF_BYTES);
        int ret = vimg_pread(img, buf, n, off);
        if (ret < 0) {
            return ret;
        }
        const size_t idx = first_nonzero_sector(buf, n);
        if (idx < n) {
            *bad_out = off + idx;
            return 0;
        }
        off += n;
        len -= n;
    }
    return 0;
}

int vimg_compare(vimg_image *a, vimg_image *b,
                 const struct vimg_compare_opts *opts,
                 struct vimg_compare_result *out)
{
    const struct vimg_compare_opts defaults = VIMG_COMPARE_OPTS_INIT;
    if (!opts) {
        opts = &defaults;
    }
    if (!a || !b || !out || opts->version != VIMG_COMPARE_OPTS_VERSION) {
        return vimg_error(-EINVAL, "vimg_compare: bad argument");
    }
    memset(out, 0, sizeof(*out));
    const uint64_t size_a = vimg_size(a), size_b = vimg_size(b);
    const uint64_t common = VIMG_MIN(size_a, size_b);
    out->is_size_different = size_a != size_b;
    if (opts->is_strict && size_a != size_b) {
        out->verdict = VIMG_COMPARE_SIZE_MISMATCH;
        return 0;
    }

    uint8_t *buf_a = malloc(COMPARE_BUF_BYTES);
    uint8_t *buf_b = malloc(COMPARE_BUF_BYTES);
    int ret = 0;
    if (!buf_a || !buf_b) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    const uint64_t total = VIMG_MAX(size_a, size_b);
    for (uint64_t off = 0; off < common;) {
        struct vimg_extent ea, eb;
        ret = vimg_block_status(a, off, common - off, &ea);
        if (ret == 0) {
            ret = vimg_block_status(b, off, common - off, &eb);
        }
        if (ret < 0) {
            goto out;
        }
        uint64_t chunk = VIMG_MIN(ea.length, eb.length);
        const bool alloc_a = is_allocated(a, &ea);
        const bool alloc_b = is_allocated(b, &eb);
        const unsigned mask =
            VIMG_EXTENT_DATA | VIMG_EXTENT_ZERO | VIMG_EXTENT_OFFSET;
        /* qemu's strict mode compares whole status words, which also say
         * whether the extent reaches the end of the image */
        const bool is_eof_a = off + ea.length == size_a;
        const bool is_eof_b = off + eb.length == size_b;
        if (opts->is_strict &&
            ((ea.flags & mask) != (eb.flags & mask) || alloc_a != alloc_b ||
             is_eof_a != is_eof_b)) {
            out->verdict = VIMG_COMPARE_STATUS_MISMATCH;
            out->offset = off;
            goto out;
        }
        if ((ea.flags & VIMG_EXTENT_ZERO) && (eb.flags & VIMG_EXTENT_ZERO)) {
            /* both read as zeroes */
        } else if (alloc_a == alloc_b) {
            if (alloc_a) {
                chunk = VIMG_MIN(chunk, (uint64_t)COMPARE_BUF_BYTES);
                ret = vimg_pread(a, buf_a, (size_t)chunk, off);
                if (ret == 0) {
                    ret = vimg_pread(b, buf_b, (size_t)chunk, off);
                }
                if (ret < 0) {
                    goto out;
                }
                const size_t idx =
                    first_different_sector(buf_a, buf_b, (size_t)chunk);
                if (idx < chunk) {
                    out->verdict = VIMG_COMPARE_CONTENT_MISMATCH;
                    out->offset = off + idx;
                    goto out;
                }
            }
        } else {
            chunk = VIMG_MIN(chunk, (uint64_t)COMPARE_BUF_BYTES);
            uint64_t bad;
            ret = check_zero(alloc_a ? a : b, buf_a, off, chunk, &bad);
            if (ret < 0) {
                goto out;
            }
            if (bad != UINT64_MAX) {
                out->verdict = VIMG_COMPARE_CONTENT_MISMATCH;
                out->offset = bad;
                goto out;
            }
        }
        off += chunk;
        if (opts->progress) {
            opts->progress(opts->progress_opaque, off, total);
        }
    }

    /* The longer image's tail must read as zeroes */
    vimg_image *longer = size_a > size_b ? a : b;
    for (uint64_t off = common; off < total;) {
        struct vimg_extent e;
        ret = vimg_block_status(longer, off, total - off, &e);
        if (ret < 0) {
            goto out;
        }
        uint64_t chunk = e.length;
        if (is_allocated(longer, &e) && !(e.flags & VIMG_EXTENT_ZERO)) {
            uint64_t bad;
            chunk = VIMG_MIN(chunk, (uint64_t)COMPARE_BUF_BYTES);
            ret = check_zero(longer, buf_a, off, chunk, &bad);
            if (ret < 0) {
                goto out;
            }
            if (bad != UINT64_MAX) {
                out->verdict = VIMG_COMPARE_CONTENT_MISMATCH;
                out->offset = bad;
                goto out;
            }
        }
        off += chunk;
        if (opts->progress) {
            opts->progress(opts->progress_opaque, off, total);
        }
    }
out:
    free(buf_a);
    free(buf_b);
    return ret;
}
