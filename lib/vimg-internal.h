/* SPDX-License-Identifier: MIT */
/*
 * vimg-internal.h: the image handle and helpers shared inside lib/.
 */
#ifndef VIMG_INTERNAL_H
#define VIMG_INTERNAL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vimg.h"
#include "image-services.h"
#include "io/io.h"
#include "util/vimg-util.h"

struct vimg_format;

/* Internal open flag: the image lives in memory, no other files. */
#define VIMG_OPEN_MEMORY 0x80000000u

/* image.c: lock IO, the external data file of an image opened with
 * FLAGS, as qemu does (nobody else resizes it; writes when read-write). */
int vimg_lock_data_file(struct vimg_io *io, unsigned flags);

struct vimg_image {
    const struct vimg_format *drv;
    void *priv;              /* driver state */
    struct vimg_io *io;      /* the image file; owned */
    char *filename;          /* as given by the caller */
    unsigned flags;          /* VIMG_OPEN_* */
    uint64_t cache_size;     /* struct vimg_open_opts: 0 = the default */
    bool is_writable;
    bool is_probed;          /* format guessed: see vimg_is_format_probed */
    uint64_t size;           /* virtual size, set by the driver's open */

    /* Backing chain: the driver fills backing_name/backing_fmt on open,
     * the image layer opens the backing image. */
    char *backing_name;
    char *backing_fmt;
    char *backing_path;      /* backing_name resolved against our dir */
    struct vimg_image *backing;
};

/* image.c */
/*
 * Read from IMG's backing chain as seen by IMG: the range [OFFSET,
 * OFFSET+COUNT) of the backing file, zeroes past its end or when IMG has
 * no backing.  Used by drivers for unallocated clusters.
 */
int vimg_read_backing(struct vimg_image *img, void *buf, size_t count,
                      uint64_t offset);
/* Open an image on an already open IO (ownership taken, also on failure).
 * Used by tests to open through io-mem or io-fault. */
int vimg_open_io(vimg_image **out, struct vimg_io *io, const char *name,
                 const char *format, unsigned flags);

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
 * VIRTUAL_SIZE bytes: -EINVAL for an unknown format, -ENOTSUP for one that
 * cannot be measured. */
int vimg_image_plan(const struct vimg_create_opts *opts,
                    uint64_t virtual_size, struct vimg_measure_plan *out);

/* Copy caller OPTS (version 1 or 2) into OUT, a current-version struct
 * (fields a version 1 caller lacks are zero); -EINVAL for other versions. */
int vimg_create_opts_copy(const struct vimg_create_opts *opts,
                          struct vimg_create_opts *out);

#endif
