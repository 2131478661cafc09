/* SPDX-License-Identifier: MIT */
/*
 * image-services.h: what the whole-image operations (lib/ops) need of the
 * image layer beyond include/vimg.h; nothing else of lib/ is theirs to
 * see.  Handles stay opaque: these functions are the only way in.
 */
#ifndef VIMG_IMAGE_SERVICES_H
#define VIMG_IMAGE_SERVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vimg.h"

/* registry.c */
/*
 * The block-0 guard of a guessed raw image: 0 when writing COUNT bytes of
 * BUF (NULL: zeroes) at OFFSET into IMG leaves a first sector that still
 * probes as raw (or IMG is no guessed raw image), else -EPERM.
 */
int vimg_format_guard_head(vimg_image *img, const void *buf, size_t count,
                           uint64_t offset);

/* image.c */
/*
 * Reopen IMG, a read-only layer of an open chain, read-write in place
 * (commit writes into its base this way).  Not thread-safe: nothing else
 * may use the chain meanwhile.  On failure IMG stays read-only, or, if
 * even that cannot be restored, fails every access with -EIO.
 */
int vimg_reopen_rw(vimg_image *img);
/* Make every cluster of IMG unallocated (driver make_empty); -ENOTSUP for
 * formats without it. */
int vimg_make_empty(vimg_image *img);
/* Directory part of PATH joined with NAME (absolute NAME is kept). */
char *vimg_path_join_dir(const char *path, const char *name);

/* image-services.c */
/* The backing file name IMG stores, or NULL; whether or not the chain was
 * opened (vimg_backing()).  Valid until vimg_close(). */
const char *vimg_backing_name(const vimg_image *img);
/* Is IMG's own file a block device (fixed size, old bytes kept when
 * "created")? */
bool vimg_file_is_device(const vimg_image *img);
/* The size of IMG's own file in bytes, exactly (vimg_size() is the
 * format's virtual size). */
int vimg_file_size(vimg_image *img, uint64_t *out);

#endif
