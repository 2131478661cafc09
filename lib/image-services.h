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
/* The level vimg_compress_cluster() uses on IMG (a format's
 * "compression_level" create option, checked there; 0: the default). */
void vimg_set_compression_level(vimg_image *img, int level);
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

/*
 * What a new image of some format needs, as the format's measure op sees
 * it: fully allocated, the file holds metadata_bytes plus every byte of
 * virtual_size; data is allocated in units of data_unit_bytes.
 */
struct vimg_measure_plan {
    uint64_t virtual_size;    /* as the format rounds it */
    uint64_t metadata_bytes;  /* headers and tables, fully allocated */
    uint64_t data_unit_bytes; /* cluster size (allocation granularity) */
    bool is_preallocated;     /* every data byte is stored, allocated or not
                                 (raw, preallocation=falloc/full) */
    bool can_store_bitmaps;   /* persistent dirty bitmaps (qcow2 v3) */
};

/* Plan a new image made with OPTS (its format's measure op) of
 * VIRTUAL_SIZE bytes: -ENOTSUP for a format that cannot be measured. */
int vimg_image_plan(const struct vimg_opts *opts, uint64_t virtual_size,
                    struct vimg_measure_plan *out);
/* Bytes a new image made with OPTS (its plan can_store_bitmaps) needs for
 * the persistent bitmaps of SRC, all fully allocated (the format's
 * measure_bitmaps op). */
int vimg_image_plan_bitmaps(const struct vimg_opts *opts, vimg_image *src,
                            uint64_t *out);

/* options.c */
/* The list for PURPOSE that the deprecated fixed options C stand for:
 * for amend, the options WHICH (VIMG_AMEND_*) names; else every field
 * that is not a default. */
int vimg_opts_from_create_opts(const struct vimg_create_opts *c,
                               unsigned purpose, unsigned which,
                               vimg_opts **out);

#endif
