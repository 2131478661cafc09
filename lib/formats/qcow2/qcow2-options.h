/* SPDX-License-Identifier: MIT */
/*
 * qcow2-options.h: the options of a new or amended QCOW2 image, as
 * qcow2-options.c reads them from a format-neutral option list.
 */
#ifndef VIMG_QCOW2_OPTIONS_H
#define VIMG_QCOW2_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct vimg_image;
struct vimg_opts;
struct vimg_option;

/* What a new image looks like (qemu-img create -o names in comments);
 * strings point into the option list they came from. */
struct qcow2_create_params {
    uint64_t size;               /* size */
    uint32_t cluster_size;       /* cluster_size; 0: 64 KiB */
    unsigned qcow2_version;      /* compat: 2 (0.10) or 3 (1.1); 0: 3 */
    bool lazy_refcounts;         /* lazy_refcounts */
    unsigned refcount_bits;      /* refcount_bits; 0: 16 */
    bool extended_l2;            /* extended_l2 */
    const char *data_file;       /* data_file, or NULL */
    bool data_file_raw;          /* data_file_raw */
    const char *compression_type; /* "zlib" (NULL) or "zstd" */
    const char *preallocation;   /* "off" (NULL), "metadata", "falloc",
                                    "full" */
    const char *backing_file;    /* backing_file, or NULL */
    const char *backing_format;  /* backing_fmt, or NULL */
    bool data_file_keep;         /* vimg only: an existing data file keeps
                                    its bytes */
};

/* Which options of an amend list are set (VIMG_AMEND_*), with values */
int qcow2_params_from_opts(const struct vimg_opts *o,
                           struct qcow2_create_params *out, unsigned *which);

/* The driver's option table and hooks (struct vimg_format) */
extern const struct vimg_option qcow2_options[];
int qcow2_check_option(const char *key, const char *value, unsigned purpose);
void qcow2_describe_options(const struct vimg_opts *o, FILE *out);
int qcow2_create_from_opts(const char *path, const struct vimg_opts *o);
int qcow2_amend_from_opts(struct vimg_image *img, const struct vimg_opts *o);

/* qcow2-measure.c: the driver's measure_bitmaps op */
int qcow2_measure_bitmaps(const struct vimg_opts *opts,
                          struct vimg_image *src, uint64_t *out);

/* qcow2-info.c: the driver's info and capabilities ops */
struct vimg_info;
int qcow2_info(struct vimg_image *img, struct vimg_info *info);
unsigned qcow2_capabilities(const struct vimg_image *img);

#endif
