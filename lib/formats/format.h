/* SPDX-License-Identifier: MIT */
/*
 * format.h: the format driver interface.  One small ops table per format;
 * NULL means unsupported and the image layer answers -ENOTSUP.
 */
#ifndef VIMG_FORMAT_H
#define VIMG_FORMAT_H

#include <stdio.h>

#include "vimg-internal.h"

/*
 * A driver's block status describes only its own layer.  flags is a mix of
 * VIMG_EXTENT_DATA, _ZERO, _OFFSET and _COMPRESSED; neither DATA nor ZERO
 * means "not allocated here, ask the backing file" (OFFSET may still be
 * set: a qcow2 subcluster whose host cluster exists).
 */
struct vimg_layer_status {
    uint64_t length;
    unsigned flags;
    uint64_t file_offset;
    const char *file_name;
};

struct vimg_format {
    const char *name;
    /* 0..100: how sure the driver is that BUF (the file's first LEN bytes,
     * LEN may be short) is its format. */
    int (*probe)(const uint8_t *buf, size_t len);
    /* Parse img->io; set img->size, img->priv, and backing_name/_fmt. */
    int (*open)(struct vimg_image *img, unsigned flags);
    void (*close)(struct vimg_image *img);
    int (*pread)(struct vimg_image *img, void *buf, size_t count,
                 uint64_t offset);
    int (*pwrite)(struct vimg_image *img, const void *buf, size_t count,
                  uint64_t offset);
    int (*flush)(struct vimg_image *img);
    /* Optional; the image layer falls back to writing zero data. */
    int (*write_zeroes)(struct vimg_image *img, uint64_t offset,
                        uint64_t count, unsigned flags);
    int (*discard)(struct vimg_image *img, uint64_t offset, uint64_t count);
    uint32_t (*cluster_size)(struct vimg_image *img);
    int (*resize)(struct vimg_image *img, uint64_t new_size,
                  const char *preallocation, unsigned flags);
    int (*compress_cluster)(struct vimg_image *img, const void *data,
                            size_t len, void *out, size_t out_cap);
    int (*pwrite_compressed)(struct vimg_image *img, const void *data,
                             size_t len, uint64_t offset);
    /* OFFSET < img->size, 0 < COUNT <= img->size - OFFSET. */
    int (*block_status)(struct vimg_image *img, uint64_t offset,
                        uint64_t count, struct vimg_layer_status *out);
    /* Optional: internal snapshots (qcow2) */
    int (*snapshot_create)(struct vimg_image *img, const char *name);
    int (*snapshot_apply)(struct vimg_image *img, const char *id_or_name);
    int (*snapshot_delete)(struct vimg_image *img, const char *name);
    /* Optional: change the options set in O (an amend list for this
     * format) in place (vimg_amend_ext) */
    int (*amend)(struct vimg_image *img, const struct vimg_opts *o);
    /* Fill the format-specific part of INFO. */
    int (*info)(struct vimg_image *img, struct vimg_info *info);
    /* Check (and with VIMG_CHECK_REPAIR_*, repair) the image with THREADS
     * workers (0: one per CPU); *res is zeroed by the caller. */
    int (*check)(struct vimg_image *img, unsigned flags, unsigned threads,
                 struct vimg_check_result *res, vimg_check_report_fn report,
                 void *opaque);
    /* Make a new image at PATH with the options of O (a create list for
     * this format, each value checked against its type). */
    int (*create)(const char *path, const struct vimg_opts *o);
    /* Plan a new image made with O, of VIRTUAL_SIZE bytes; O's "size" is
     * only checked against the format's limits, as qemu-img measure
     * checks the size it was given. */
    int (*measure)(const struct vimg_opts *o, uint64_t virtual_size,
                   struct vimg_measure_plan *out);
    /* Optional: the bytes a new image made with O needs for the
     * persistent bitmaps of SRC, all fully allocated (qemu-img measure's
     * "bitmaps size"); called when the measure plan can_store_bitmaps. */
    int (*measure_bitmaps)(const struct vimg_opts *o, vimg_image *src,
                           uint64_t *out);
    /* Optional: VIMG_CAN_* bits of IMG beyond those its ops table shows
     * (VIMG_CAN_BITMAPS). */
    unsigned (*capabilities)(const struct vimg_image *img);
    /* The create/amend options (vimg_format_options()), ended by a NULL
     * name; needed for create. */
    const struct vimg_option *options;
    /* Optional: check VALUE of the known option KEY beyond its type, as a
     * list for PURPOSE (VIMG_OPTS_*) gets it (qemu-img's words); called
     * before the type is checked. */
    int (*check_option)(const char *key, const char *value,
                        unsigned purpose);
    /* Optional: print O's options as qemu-img create's "Formatting" line
     * shows them (default: the values set, in table order). */
    void (*describe_options)(const struct vimg_opts *o, FILE *out);
    /* Read-only IMG reads as the internal snapshot with ID and/or NAME
     * (NULL: not compared) from now on. */
    int (*snapshot_view)(struct vimg_image *img, const char *id,
                         const char *name);
    /* Optional (formats with a backing file): make every cluster
     * unallocated again, so the whole disk reads from the backing file
     * (qemu's bdrv_make_empty, used by commit).  Durable on return. */
    int (*make_empty)(struct vimg_image *img);
    /* Optional: store NAME (NULL: none) and FMT (NULL: none) as the
     * backing file, crash-safely, after everything written so far is
     * durable.  The image layer updates backing_name/_fmt afterwards. */
    int (*change_backing)(struct vimg_image *img, const char *name,
                          const char *fmt);
};

/* Probing looks at the first VIMG_PROBE_HEAD_BYTES of a file (as qemu
 * does), its last 512 bytes and its name. */
#define VIMG_PROBE_HEAD_BYTES 512

struct vimg_probe_data {
    const uint8_t *head; /* the file's first bytes */
    size_t head_len;     /* <= VIMG_PROBE_HEAD_BYTES, short for a small file */
    const uint8_t *tail; /* the file's last 512 bytes, or NULL */
    size_t tail_len;     /* 512, or 0 when there is no tail */
    const char *name;    /* the file name, or NULL */
};

/* A format qemu-img probes that vimg has no driver for: it is recognised
 * (score 0..100 as for drivers) so that it is refused by name. */
struct vimg_foreign_format {
    const char *name;
    int (*probe)(const struct vimg_probe_data *d);
};

/* probe-foreign.c: the table, ended by a NULL name. */
extern const struct vimg_foreign_format vimg_foreign_formats[];

/* registry.c */
const struct vimg_format *vimg_format_find(const char *name);
/* The driver at INDEX in probe order, NULL past the last one. */
const struct vimg_format *vimg_format_at(size_t index);
/* Is NAME a format vimg knows of but cannot open (vhdx, vmdk, ...)? */
bool vimg_format_is_foreign(const char *name);
/* The name of the format D looks like ("raw" if nothing else); when a
 * driver has it, store the driver in *OUT (NULL otherwise). */
const char *vimg_format_probe_data(const struct vimg_probe_data *d,
                                   const struct vimg_format **out);
/* The best-scoring driver for IO; -ENOTSUP naming the format when the
 * file is in a format vimg cannot open. */
int vimg_format_probe(struct vimg_io *io, const struct vimg_format **out);

extern const struct vimg_format vimg_format_raw;
extern const struct vimg_format vimg_format_qcow2;

#endif
