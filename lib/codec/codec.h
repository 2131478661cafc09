/* SPDX-License-Identifier: MIT */
/*
 * codec.h: compression codecs for compressed clusters.
 */
#ifndef VIMG_CODEC_H
#define VIMG_CODEC_H

#include <stddef.h>
#include <stdint.h>

/*
 * Inflate a raw deflate stream (no zlib header, as qcow2 stores it) from
 * IN into exactly OUT_LEN bytes at OUT.  IN may carry trailing padding.
 * Returns 0, or -EIO when the stream is bad or does not fill OUT.
 */
int vimg_inflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len);

/* Decompress one zstd frame from IN (trailing padding allowed) into exactly
 * OUT_LEN bytes.  Returns 0 or -EIO. */
int vimg_zstd_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
                         size_t out_len);

/* Compress IN (a cluster) as a raw deflate stream with a 4 KiB window
 * (windowBits -12, which qcow2 readers require) into OUT.  Returns the
 * length, 0 if it does not fit in OUT_CAP, or a negative errno. */
int vimg_deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_cap);
/* One zstd frame (qemu's level) of IN into OUT; same returns. */
int vimg_zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                       size_t out_cap);

#endif
