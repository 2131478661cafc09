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

#endif
