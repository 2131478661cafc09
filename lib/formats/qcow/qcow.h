/* SPDX-License-Identifier: MIT */
/*
 * qcow.h: QCOW version 1 on-disk layout, driver state, and the
 * prototypes of the qcow-*.c files.  Layout: docs/formats/qcow.md (the
 * header as QEMU's qcow driver and VirtualBox's QCOW backend use it).
 */
#ifndef VIMG_QCOW_H
#define VIMG_QCOW_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/format.h"

#define QCOW_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW_VERSION 1

/* The header: byte offsets of the fields (big-endian), 48 bytes */
enum {
    QCOW_HDR_MAGIC = 0,
    QCOW_HDR_VERSION = 4,
    QCOW_HDR_BACKING_OFFSET = 8,
    QCOW_HDR_BACKING_SIZE = 16,
    QCOW_HDR_MTIME = 20,
    QCOW_HDR_SIZE = 24,
    QCOW_HDR_CLUSTER_BITS = 32,
    QCOW_HDR_L2_BITS = 33,
    QCOW_HDR_PADDING = 34,
    QCOW_HDR_CRYPT_METHOD = 36,
    QCOW_HDR_L1_OFFSET = 40,
    QCOW_HDR_LEN = 48,
};

#define QCOW_CRYPT_NONE 0
#define QCOW_CRYPT_AES 1

/* L2 entry: bit 63 marks a compressed cluster, whose compressed size in
 * bytes sits in the CLUSTER_BITS bits below it, and its byte offset in
 * the 63 - CLUSTER_BITS bits below those. */
#define QCOW_OFLAG_COMPRESSED (1ull << 63)

/* Limits: QEMU's (cluster 512 B..64 KiB, L2 table 512 B..64 KiB, a
 * backing name below 1 KiB), and ours for the L1 table, which is read
 * whole (32 MiB: 4 Mi L2 tables, far beyond any disk qemu-img makes). */
#define QCOW_MIN_CLUSTER_BITS 9
#define QCOW_MAX_CLUSTER_BITS 16
#define QCOW_MIN_L2_BITS 6
#define QCOW_MAX_L2_BITS 13
#define QCOW_MAX_BACKING_NAME 1023
#define QCOW_MAX_L1_BYTES (32u << 20)

struct qcow_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t mtime;
    uint64_t size;          /* virtual size in bytes as stored */
    unsigned cluster_bits;
    unsigned l2_bits;
    uint32_t crypt_method;
    uint64_t l1_table_offset;
    /* derived */
    uint64_t l1_size;       /* entries */
};

/* A decoded L2 entry */
enum qcow_cluster_kind {
    QCOW_CLUSTER_UNALLOCATED,
    QCOW_CLUSTER_NORMAL,
    QCOW_CLUSTER_COMPRESSED,
};

struct qcow_mapping {
    enum qcow_cluster_kind kind;
    uint64_t offset; /* host byte offset of the cluster (or its stream) */
    uint32_t csize;  /* compressed: bytes of the stream */
};

/* Cached L2 tables: a few, clean (every change is written through) */
#define QCOW_L2_CACHE_SLOTS 16

struct qcow_l2_slot {
    uint64_t offset; /* 0: empty */
    uint64_t *entries;
    uint64_t last_use;
};

struct qcow_state {
    struct qcow_header h;
    uint32_t cluster_size;
    uint32_t l2_entries;
    uint64_t l1_bytes;       /* l1_size * 8 */
    uint64_t meta_end;       /* end of the header, backing name, L1 */
    uint64_t *l1;            /* host byte order */
    uint64_t file_end;       /* where the next allocation goes */
    /* guards l1, l2 cache, file_end and every allocation */
    pthread_mutex_t lock;
    struct qcow_l2_slot l2_cache[QCOW_L2_CACHE_SLOTS];
    uint64_t use_clock;
};

/* qcow-header.c: decode/encode, no I/O */
/* Decode the first LEN bytes of a file into *H, checking every field as
 * qemu does (its messages); -EINVAL when it is not QCOW v1 at all. */
int qcow_header_decode(const uint8_t *buf, size_t len, struct qcow_header *h);
/* Encode H into the QCOW_HDR_LEN bytes at BUF. */
void qcow_header_encode(const struct qcow_header *h, uint8_t *buf);
/* L1 entries a disk of SIZE bytes needs with these bits (*OUT), or
 * -EFBIG when its L1 table would pass QCOW_MAX_L1_BYTES. */
int qcow_l1_size(uint64_t size, unsigned cluster_bits, unsigned l2_bits,
                 uint64_t *out);
/* Decode L2 entry E of an image with CLUSTER_BITS. */
void qcow_l2_entry_decode(uint64_t e, unsigned cluster_bits,
                          struct qcow_mapping *out);
/* The L2 entry of a compressed stream of CSIZE bytes at OFFSET. */
uint64_t qcow_l2_entry_compressed(uint64_t offset, uint32_t csize,
                                  unsigned cluster_bits);

/* qcow-create.c: options, create, info */
extern const struct vimg_option qcow_options[];
int qcow_check_option(const char *key, const char *value, unsigned purpose);
void qcow_describe_options(const struct vimg_opts *o, FILE *out);
int qcow_create(const char *path, const struct vimg_opts *o);
int qcow_info(struct vimg_image *img, struct vimg_info *info);

/* qcow.c: the mapping of guest cluster INDEX, with S->lock held */
int qcow_get_mapping_locked(struct vimg_image *img, uint64_t index,
                            struct qcow_mapping *out);
/* Read the L2 table at OFFSET (validated by the caller) into ENTRIES
 * (host byte order). */
int qcow_read_l2(struct vimg_image *img, uint64_t offset, uint64_t *entries);

/* qcow-check.c */
int qcow_check(struct vimg_image *img, unsigned flags, unsigned threads,
               struct vimg_check_result *res, vimg_check_report_fn report,
               void *opaque);

#endif
