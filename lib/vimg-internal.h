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
    int compression_level;   /* vimg_set_compression_level(); 0: default */

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

/* info.c: building a format-specific information tree.  *ERR is sticky:
 * after a failure (-ENOMEM) every call does nothing and returns NULL. */
/* A new entry, the last child of PARENT (NULL: a new root). */
struct vimg_info_entry *vimg_info_add(int *err,
                                      struct vimg_info_entry *parent,
                                      const char *key,
                                      enum vimg_info_type type);
void vimg_info_add_string(int *err, struct vimg_info_entry *parent,
                          const char *key, const char *value);
void vimg_info_add_bool(int *err, struct vimg_info_entry *parent,
                        const char *key, bool value);
void vimg_info_add_int(int *err, struct vimg_info_entry *parent,
                       const char *key, int64_t value);
/* Free E, its children and the entries after it. */
void vimg_info_entry_free(struct vimg_info_entry *e);

/* Preallocation modes (qemu's preallocation=) */
enum vimg_prealloc {
    VIMG_PREALLOC_OFF,
    VIMG_PREALLOC_METADATA,
    VIMG_PREALLOC_FALLOC,
    VIMG_PREALLOC_FULL,
};
/* options.c: MODE (NULL: "off") as an enum in *OUT; -EINVAL (no message:
 * each caller has qemu's words for it) for another word. */
int vimg_prealloc_parse(const char *mode, enum vimg_prealloc *out);

/* options.c: what drivers and ops read from an option list (O's values
 * were checked against their types when set). */
/* The value of a SIZE, NUMBER or BOOL option KEY, DEF when unset. */
uint64_t vimg_opts_number(const struct vimg_opts *o, const char *key,
                          uint64_t def);
bool vimg_opts_bool(const struct vimg_opts *o, const char *key, bool def);
/* Is some key starting with PREFIX set? */
bool vimg_opts_has_prefix(const struct vimg_opts *o, const char *prefix);
const struct vimg_format *vimg_opts_driver(const struct vimg_opts *o);
unsigned vimg_opts_purpose(const struct vimg_opts *o);
/* Copy caller OPTS (version 1 or 2) into OUT, a current-version struct
 * (fields a version 1 caller lacks are zero); -EINVAL for other versions. */
int vimg_create_opts_copy(const struct vimg_create_opts *opts,
                          struct vimg_create_opts *out);


#endif
