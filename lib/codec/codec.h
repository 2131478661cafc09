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

/* Compression levels: 0 is the default, which writes what qemu writes
 * (zlib level 6, memLevel 9; zstd level 3).  Deflate: 1 and 2 are isa-l
 * levels 1 and 3 alone (fastest, 7-10% larger than qemu's on real data),
 * 3 isa-l with zlib retries where it did poorly (about 3-7% larger), 4..9
 * zlib at that level with qemu's memLevel (without isa-l, zlib at every
 * level).  zstd: its own levels 1..19. */
#define VIMG_DEFLATE_LEVEL_DEFAULT 6
#define VIMG_DEFLATE_LEVEL_MAX 9
#define VIMG_ZSTD_LEVEL_MAX 19

/* Compress IN (a cluster) as a raw deflate stream with a 4 KiB window
 * (windowBits -12, which qcow2 readers require) into OUT at LEVEL (see
 * above).  Returns the length, 0 if it does not fit in OUT_CAP, or a
 * negative errno. */
int vimg_deflate_raw(const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_cap, int level);
/* One zstd frame of IN into OUT at LEVEL (0: qemu's); same returns. */
int vimg_zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                       size_t out_cap, int level);

#endif
