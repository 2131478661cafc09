/* SPDX-License-Identifier: MIT */
/*
 * qcow2.h: QCOW2 on-disk layout, driver state, and the prototypes of the
 * qcow2-*.c files.  Layout follows QEMU's docs/interop/qcow2.txt.
 */
#ifndef VIMG_QCOW2_H
#define VIMG_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/format.h"
#include "formats/qcow2/qcow2-options.h"

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* "Header": byte offsets of the fields (big-endian) */
enum {
    QCOW2_HDR_MAGIC = 0,
    QCOW2_HDR_VERSION = 4,
    QCOW2_HDR_BACKING_OFFSET = 8,
    QCOW2_HDR_BACKING_SIZE = 16,
    QCOW2_HDR_CLUSTER_BITS = 20,
    QCOW2_HDR_SIZE = 24,
    QCOW2_HDR_CRYPT_METHOD = 32,
    QCOW2_HDR_L1_SIZE = 36,
    QCOW2_HDR_L1_OFFSET = 40,
    QCOW2_HDR_REFTABLE_OFFSET = 48,
    QCOW2_HDR_REFTABLE_CLUSTERS = 56,
    QCOW2_HDR_NB_SNAPSHOTS = 60,
    QCOW2_HDR_SNAPSHOTS_OFFSET = 64,
    QCOW2_HDR_V2_LEN = 72,
    QCOW2_HDR_INCOMPAT = 72,
    QCOW2_HDR_COMPAT = 80,
    QCOW2_HDR_AUTOCLEAR = 88,
    QCOW2_HDR_REFCOUNT_ORDER = 96,
    QCOW2_HDR_HEADER_LENGTH = 100,
    QCOW2_HDR_V3_LEN = 104,
    QCOW2_HDR_COMPRESSION_TYPE = 104,
    QCOW2_HDR_V3_COMPRESSION_LEN = 112, /* 104 + 1, padded to 8 */
};

/* Feature bits */
#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* L1/L2/refcount table entries */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO (1ull << 0)
#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ull

/* Limits (QEMU's, so that whatever qemu-img makes we open, and bad sizes
 * from a file never reach malloc) */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIR_BYTES (64u * 1024 * 1024)
#define QCOW2_MAX_BITMAP_NAME 1023
#define QCOW2_MAX_VIRTUAL_SIZE (1ull << 61) /* keeps offset math in range */
#define QCOW2_SUBCLUSTERS 32

struct qcow2_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
};

/* One header extension we keep as bytes (unknown ones are preserved). */
struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

/* Everything the header extensions say. */
struct qcow2_extensions {
    char *backing_format;
    char *data_file;
    bool has_bitmaps;
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_size;
    uint64_t bitmap_dir_offset;
    bool has_crypto;
    uint64_t crypto_offset;
    uint64_t crypto_length;
    /* feature name table: (type, bit) -> name */
    size_t nb_features;
    struct qcow2_feature {
        uint8_t type; /* 0 incompatible, 1 compatible, 2 autoclear */
        uint8_t bit;
        char name[47];
    } *features;
    size_t nb_unknown;
    struct qcow2_ext *unknown;
};

struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size; /* the large one if present, else 32-bit */
    uint64_t disk_size;
    bool has_disk_size;
    uint64_t icount;
    bool has_icount;
    uint32_t extra_data_size;
    uint8_t *extra_data; /* all of it, including unknown fields */
    char *id;
    char *name;
};

struct qcow2_bitmap {
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    uint32_t extra_data_size;
    uint8_t *extra_data; /* kept as is (qcow2.txt: must be preserved) */
    char *name;
};
#define QCOW2_BITMAP_IN_USE (1u << 0)
#define QCOW2_BITMAP_AUTO (1u << 1)
#define QCOW2_BITMAP_EXTRA_COMPAT (1u << 2)
#define QCOW2_BITMAP_RESERVED_FLAGS (~7u)

/* What a guest range maps to, in the active L1/L2 tables. */
enum qcow2_subcluster_type {
    QCOW2_SC_UNALLOCATED,       /* read from backing */
    QCOW2_SC_UNALLOCATED_ALLOC, /* host cluster exists, subcluster not */
    QCOW2_SC_ZERO_PLAIN,        /* zero, no host cluster */
    QCOW2_SC_ZERO_ALLOC,        /* zero, host cluster kept */
    QCOW2_SC_NORMAL,            /* data at host offset */
    QCOW2_SC_COMPRESSED,        /* compressed cluster */
    QCOW2_SC_INVALID,
};

struct qcow2_mapping {
    enum qcow2_subcluster_type type;
    uint64_t length;       /* bytes from the queried offset */
    uint64_t host_offset;  /* byte in the data file (NORMAL, *_ALLOC) */
    uint64_t comp_offset;  /* COMPRESSED: start of compressed bytes */
    uint64_t comp_bytes;   /* COMPRESSED: how many bytes to read */
    bool is_copied;        /* the L2 entry has QCOW_OFLAG_COPIED */
};

struct qcow2_cache;

/* Allocating writes that may write their data at once without the lock */
#define QCOW2_MAX_ALLOC_INFLIGHT 64

struct qcow2_state {
    struct qcow2_header h;
    struct qcow2_extensions ext;
    uint64_t snapshots_size;  /* bytes of the snapshot table */
    unsigned cluster_bits;
    uint64_t cluster_size;
    unsigned l2_bits;         /* log2(entries per L2 table) */
    unsigned l2_entry_bytes;  /* 8, or 16 with extended L2 */
    bool has_subclusters;
    unsigned subcluster_bits;
    unsigned csize_shift;     /* compressed descriptor: offset bits */
    uint64_t csize_mask;
    uint64_t file_size;       /* of the image file, at open */
    uint64_t *l1;             /* decoded active L1 */
    bool has_data_file;       /* incompatible bit "external data file" */
    bool is_data_file_raw;
    struct vimg_io *data_io;  /* == img->io unless external data file */
    char *data_path;
    uint64_t data_size;

    size_t nb_snapshots;
    struct qcow2_snapshot *snapshots;
    bool is_check;            /* opened with VIMG_OPEN_CHECK */
    /* check or info: tables past the end of the file read as zeroes, as
     * qemu reads them, so a truncated image can still be described */
    bool is_past_eof_zero;
    int check_load_error;     /* check mode: snapshots/bitmaps unreadable */
    char check_load_msg[256];
    size_t nb_bitmaps;
    struct qcow2_bitmap *bitmaps;

    pthread_mutex_t lock;     /* guards everything below */
    struct qcow2_cache *l2_cache;
    int metadata_prealloc;    /* -1 unknown, 0, 1 */

    /* writing (qcow2-flush.c, qcow2-alloc.c), only on read-write opens */
    uint64_t *reftable;       /* decoded refcount table */
    uint64_t reftable_entries;
    bool is_reftable_dirty;
    struct qcow2_cache *rb_cache;
    uint64_t rb_entries;      /* refcounts per refcount block */
    bool is_l1_dirty;
    bool is_unsynced;         /* written since the last sync */
    bool is_lazy;             /* lazy refcounts */
    bool is_broken;           /* corruption found: no more writes */
    uint64_t free_cluster_index; /* allocation search starts here */
    uint64_t end_cluster;     /* first cluster past everything in use */
    uint64_t free_byte_offset; /* where the next compressed cluster goes */
    struct qcow2_pending_free {
        uint64_t cluster;
        uint64_t count;
    } *pending;               /* dropped after the next metadata sync */
    size_t nb_pending, cap_pending;
    uint64_t *meta;           /* sorted: refcount blocks and L2 tables */
    size_t nb_meta, cap_meta;
    bool has_meta_index;
    unsigned nb_inflight;     /* data writes running without the lock */
    unsigned nb_flush_waiters;
    pthread_cond_t inflight_done;
    /* Guest ranges (whole clusters) whose new host clusters are allocated
     * and being written without the lock, not yet linked into L2: other
     * changes to them wait (qcow2-data.c). */
    struct qcow2_alloc_inflight {
        uint64_t start, end;
    } alloc_inflight[QCOW2_MAX_ALLOC_INFLIGHT];
    unsigned nb_alloc_inflight;

    /* persistent dirty bitmaps held in memory (qcow2-dirty.c) */
    struct qcow2_dirty *dirty;
    size_t nb_dirty;
    bool is_dirty_marked;     /* their in_use flags are set on disk */
};

/* qcow2-header.c */
/*
 * Decode and validate the header in BUF (LEN bytes, at least the first
 * cluster or the whole file if shorter).  FILE_SIZE bounds the tables.
 * Returns 0, -EIO for a corrupt header, -ENOTSUP for features we refuse.
 */
int qcow2_header_decode(struct qcow2_header *h, const uint8_t *buf,
                        size_t len, uint64_t file_size);
/* Encode H into BUF (at least header_length bytes, 72 for v2). */
int qcow2_header_encode(const struct qcow2_header *h, uint8_t *buf,
                        size_t len);
/*
 * Parse the header extensions in BUF[start..end).  Fills EXT (free with
 * qcow2_extensions_free); -EIO when an extension is malformed.
 */
int qcow2_extensions_decode(struct qcow2_extensions *ext, const uint8_t *buf,
                            size_t start, size_t end);
/* Encode EXT as header extensions into BUF (LEN bytes); returns the number
 * of bytes used including the end marker, or -ENOSPC. */
int qcow2_extensions_encode(const struct qcow2_extensions *ext, uint8_t *buf,
                            size_t len);
void qcow2_extensions_free(struct qcow2_extensions *ext);
/* Name of a feature bit from the table, or NULL. */
const char *qcow2_feature_name(const struct qcow2_extensions *ext,
                               uint8_t type, unsigned bit);
/*
 * The feature bits of an open image: the only writers of the
 * incompatible and autoclear fields outside whole-header rewrites.  Each
 * change is one 8-byte write of its field; the lock is held.
 */
/* Set the dirty bit (a no-op if set): write it, then sync the files, and
 * only then say so in s->h.  A caller that wants earlier changes durable
 * before the window opens flushes first. */
int qcow2_header_mark_dirty(struct vimg_image *img);
/* Clear the dirty bit (a no-op if clear): flush everything
 * (qcow2_flush_locked, no I/O when nothing is pending), write the bit,
 * sync the files. */
int qcow2_header_clear_dirty(struct vimg_image *img);
/* Corruption found: refuse further writes, and set the corrupt bit on a
 * version 3 image (write, then flush the image file; best effort: the
 * error the caller reports is the corruption). */
void qcow2_header_mark_corrupt(struct vimg_image *img);
/* A repair is done: clear the dirty and corrupt bits of a version 3 image
 * (sync the files so the repair is durable, write, sync). */
int qcow2_header_mark_clean(struct vimg_image *img);
/* qcow2.txt: a writer clears the autoclear bits it does not know (they
 * say that extra data it does not maintain is still valid): write, then
 * flush the image file. */
int qcow2_header_clear_unknown_autoclear(struct vimg_image *img);

/* qcow2-cache.c: a bounded cache of tables (L2), keyed by file offset.
 * Not locked: the caller holds the driver lock. */
typedef int (*qcow2_cache_load_fn)(void *opaque, uint64_t file_offset,
                                   uint8_t *buf, size_t len);
struct qcow2_cache *qcow2_cache_new(size_t table_bytes, size_t nb_slots);
void qcow2_cache_free(struct qcow2_cache *c);
/* The table at FILE_OFFSET, loading it with LOAD on a miss.  The pointer is
 * valid until the next call on C. */
int qcow2_cache_get(struct qcow2_cache *c, uint64_t file_offset,
                    qcow2_cache_load_fn load, void *opaque,
                    const uint8_t **out);
typedef int (*qcow2_cache_writeback_fn)(void *opaque, uint64_t file_offset,
                                        const uint8_t *buf, size_t len);
/* Who writes dirty tables back (needed once any table is marked dirty). */
void qcow2_cache_set_writeback(struct qcow2_cache *c,
                               qcow2_cache_writeback_fn fn, void *opaque);
/* TABLE (a pointer from qcow2_cache_get) was changed in memory. */
void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table);
bool qcow2_cache_has_dirty(const struct qcow2_cache *c);
/* Write back every dirty table. */
int qcow2_cache_flush(struct qcow2_cache *c);
/* Forget the table at FILE_OFFSET without writing it (it was freed). */
void qcow2_cache_drop(struct qcow2_cache *c, uint64_t file_offset);
/* Statistics for tests. */
void qcow2_cache_stats(const struct qcow2_cache *c, uint64_t *hits,
                       uint64_t *misses);

/* qcow2-cluster.c */
/* Record "FILE: corrupt qcow2 image: WHAT" and return -EIO. */
int qcow2_corrupt(struct vimg_image *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* What the first 64 bits of an L2 entry say, subclusters aside. */
struct qcow2_l2_desc {
    bool is_compressed;
    bool is_copied;       /* QCOW_OFLAG_COPIED */
    bool is_zero;         /* the zero flag (plain L2 only: extended L2
                           * images ignore bit 0) */
    bool has_host;        /* a host cluster: a non-zero offset, or offset
                           * 0 of an external data file marked COPIED */
    uint64_t host;        /* the offset field (0 if compressed) */
    uint64_t comp_offset; /* compressed: first byte of the data */
    uint64_t comp_sectors; /* compressed: 512-byte sectors it touches */
};
/* The one decoder of L2 entries: every reader of the tables (mapping,
 * writes, zeroing, preallocation, snapshots, check) classifies with it. */
void qcow2_l2_decode(const struct qcow2_state *s, uint64_t entry,
                     struct qcow2_l2_desc *out);
/* The host clusters ENTRY holds a reference to: *first and *n (*n is 0
 * if none; with an external data file only compressed clusters count). */
void qcow2_l2_entry_clusters(const struct qcow2_state *s, uint64_t entry,
                             uint64_t *first, uint64_t *n);
/* Classify one (extended) L2 entry for subcluster SC (0 for plain L2). */
enum qcow2_subcluster_type qcow2_l2_entry_type(const struct qcow2_state *s,
                                               uint64_t entry,
                                               uint64_t bitmap, unsigned sc);
/* Map [OFFSET, OFFSET+BYTES) of the guest disk; *out covers 1..BYTES. */
int qcow2_get_mapping(struct vimg_image *img, uint64_t offset, uint64_t bytes,
                      struct qcow2_mapping *out);
int qcow2_get_mapping_locked(struct vimg_image *img, uint64_t offset,
                             uint64_t bytes, struct qcow2_mapping *out);
int qcow2_pread(struct vimg_image *img, void *buf, size_t count,
                uint64_t offset);
/* Read guest data; IS_LOCKED says the caller holds the driver lock. */
int qcow2_read_range(struct vimg_image *img, void *buf, size_t count,
                     uint64_t offset, bool is_locked);
/* Decompress one cluster (COMP_BYTES at COMP_OFFSET) into OUT. */
int qcow2_decompress_cluster(struct vimg_image *img, uint64_t comp_offset,
                             uint64_t comp_bytes, uint8_t *out);

/* qcow2-check.c */
/*
 * Check the image (and repair it with VIMG_CHECK_REPAIR_*), as
 * vimg_check() describes.  Also used by open to repair a dirty image.
 */
int qcow2_check(struct vimg_image *img, unsigned flags, unsigned threads,
                struct vimg_check_result *res, vimg_check_report_fn report,
                void *opaque);

/* qcow2-create.c */
int qcow2_create(const char *path, const struct qcow2_create_params *opts);

/* qcow2-measure.c */
/* Bytes of refcount table and blocks that count CLUSTERS clusters and
 * themselves, with refcounts of 1 << REFCOUNT_ORDER bits. */
uint64_t qcow2_refcount_metadata_bytes(uint64_t clusters,
                                       uint64_t cluster_size,
                                       unsigned refcount_order);
/* Bytes of metadata (header, L1, L2, refcounts) of an image whose
 * VIRTUAL_SIZE bytes are all allocated. */
uint64_t qcow2_prealloc_metadata_bytes(uint64_t virtual_size,
                                       uint64_t cluster_size,
                                       unsigned refcount_order,
                                       bool has_extended_l2);
/* The format's measure op (qemu-img measure -O qcow2). */
int qcow2_measure(const struct vimg_opts *opts, uint64_t virtual_size,
                  struct vimg_measure_plan *out);

/* qcow2-flush.c: read-write state, metadata writes, the ordered flush.
 * The *_locked functions and the helpers below expect the driver lock. */
int qcow2_open_write(struct vimg_image *img);
void qcow2_close_write(struct vimg_image *img);
int qcow2_flush(struct vimg_image *img);
/* Write data and refcounts, then L2 tables, then L1, then apply the
 * pending frees (each stage durable before the next points at it). */
int qcow2_flush_locked(struct vimg_image *img);
/* Write the refcount blocks and table, then sync: after this, everything
 * written so far (data included) is durable. */
int qcow2_sync_refcounts(struct vimg_image *img);
/* Flush the data file and the image file. */
int qcow2_sync_files(struct vimg_image *img);
/* Write metadata at FILE_OFFSET (not synced). */
int qcow2_write_meta(struct vimg_image *img, uint64_t file_offset,
                     const void *buf, size_t len);
/* Cache loaders: a table read from the image file, or a new zeroed one. */
int qcow2_load_table(void *opaque, uint64_t file_offset, uint8_t *buf,
                     size_t len);
int qcow2_zero_table(void *opaque, uint64_t file_offset, uint8_t *buf,
                     size_t len);
/* Refuse writes to an image found corrupt. */
int qcow2_check_writable(struct vimg_image *img);
/* Set the dirty bit of a lazy-refcount image before its first metadata
 * change (no-op otherwise). */
int qcow2_lazy_mark_dirty(struct vimg_image *img);
/* Both of the above: call before a metadata change. */
int qcow2_begin_change(struct vimg_image *img);

/* qcow2-overlap.c: clusters that hold metadata (qemu's overlap check) */
/* CLUSTER now holds a refcount block, L2 table or bitmap table. */
int qcow2_meta_add(struct vimg_image *img, uint64_t cluster);
void qcow2_meta_remove(struct vimg_image *img, uint64_t cluster);
/* 0 if CLUSTER holds no metadata; else mark the image corrupt, -EIO. */
int qcow2_check_free_cluster(struct vimg_image *img, uint64_t cluster);

/* qcow2-alloc.c: allocation and refcounts (lock held) */
int qcow2_get_refcount_locked(struct vimg_image *img, uint64_t cluster,
                              uint64_t *out);
/* Set the refcount of CLUSTER, whose refcount block must exist. */
int qcow2_set_refcount(struct vimg_image *img, uint64_t cluster,
                       uint64_t value);
/* CLUSTER becomes a new, zeroed (dirty) refcount block. */
int qcow2_new_refblock(struct vimg_image *img, uint64_t cluster);
/* A new refcount table of ENTRIES entries (whole clusters, at most
 * 8 MiB) holding the current one's entries. */
int qcow2_reftable_copy(struct vimg_image *img, uint64_t entries,
                        uint64_t **out);
/* Point the header at the refcount table s->h names (one 12-byte write,
 * not synced); the table and its blocks must be durable first. */
int qcow2_write_reftable_pointer(struct vimg_image *img);
/* Allocate N contiguous clusters (refcount 1); *offset_out is the first. */
int qcow2_alloc_clusters(struct vimg_image *img, uint64_t n,
                         uint64_t *offset_out);
/* Room for LEN compressed bytes, packed after the previous ones. */
int qcow2_alloc_bytes(struct vimg_image *img, size_t len,
                      uint64_t *offset_out);
/* Drop one reference from N clusters at OFFSET once metadata is synced. */
int qcow2_free_clusters_later(struct vimg_image *img, uint64_t offset,
                              uint64_t n);
/* Drop (after the next sync) the reference an old L2 entry held. */
int qcow2_release_entry(struct vimg_image *img, uint64_t entry);
/* Apply the frees recorded by qcow2_free_clusters_later (flush only). */
int qcow2_apply_pending_frees(struct vimg_image *img);
/* Load a new refcount structure (s->h says where) after dropping all
 * state about the old one; nothing may be dirty. */
int qcow2_reload_refcounts(struct vimg_image *img);

/* qcow2-l2-update.c: L1/L2 table changes (lock held) */
/* The L2 table at OFF through the cache (valid until the next cache use);
 * mark it dirty with qcow2_cache_mark_dirty(s->l2_cache, table). */
int qcow2_load_l2(struct vimg_image *img, uint64_t off, const uint8_t **out);
/* The L2 table for L1_INDEX, ready to be changed: allocated if missing,
 * copied if shared with a snapshot. */
int qcow2_l2_for_write(struct vimg_image *img, uint64_t l1_index,
                       uint64_t *l2_offset_out);
/* Read (or, IS_STORE, store) entry I of the L2 table at L2_OFFSET. */
int qcow2_l2_entry(struct vimg_image *img, uint64_t l2_offset, size_t i,
                   uint64_t *entry, uint64_t *bitmap, bool is_store);
/* Drop every guest cluster from FIRST_CLUSTER on from the tables. */
int qcow2_drop_clusters_from(struct vimg_image *img, uint64_t first_cluster);
/* Move the active L1 table to a larger one of NEW_ENTRIES entries. */
int qcow2_grow_l1(struct vimg_image *img, uint64_t new_entries);

/* qcow2-data.c: guest writes */
int qcow2_pwrite(struct vimg_image *img, const void *buf, size_t count,
                 uint64_t offset);
int qcow2_write_zeroes(struct vimg_image *img, uint64_t offset,
                       uint64_t count, unsigned flags);
int qcow2_discard(struct vimg_image *img, uint64_t offset, uint64_t count);
/* Zero (or drop) [OFFSET, OFFSET+N) inside one guest cluster; lock held. */
int qcow2_zero_in_cluster(struct vimg_image *img, size_t n, uint64_t offset,
                          bool is_unmap, bool is_discard);
uint32_t qcow2_cluster_size(struct vimg_image *img);
int qcow2_compress_cluster(struct vimg_image *img, const void *data,
                           size_t len, void *out, size_t out_cap);
int qcow2_pwrite_compressed(struct vimg_image *img, const void *data,
                            size_t len, uint64_t offset);

/* qcow2-resize.c */
int qcow2_resize(struct vimg_image *img, uint64_t new_size,
                 const char *preallocation, unsigned flags);

/* qcow2-backing.c: what commit and rebase need from the driver */
/* Make every guest cluster unallocated (reads go to the backing file). */
int qcow2_make_empty(struct vimg_image *img);
/*
 * Rewrite the first cluster so that it names backing file NAME (NULL:
 * none) with format FMT (NULL: no backing format extension).  Everything
 * written before is made durable first; the new header goes out in one
 * write of cluster 0.  -EINVAL if NAME is longer than 1023 bytes, -ENOSPC
 * if the header, its extensions and NAME do not fit in the first cluster.
 */
/* The first cluster as it is on disk: header, extensions, backing name
 * (and the raw header bytes, for fields newer than this code). */
struct qcow2_first_cluster {
    struct qcow2_header h;
    struct qcow2_extensions ext;
    char *backing;
    uint8_t *raw;
    size_t raw_len;
};
int qcow2_first_cluster_read(struct vimg_image *img,
                             struct qcow2_first_cluster *fc);
/* Encode FC into BUF (one cluster); -ENOSPC ("No space left in the file
 * header") if it does not fit. */
int qcow2_first_cluster_encode(struct vimg_image *img,
                               struct qcow2_first_cluster *fc, uint8_t *buf);
/* Write BUF as the first cluster in one write, once everything it may
 * point at is durable; the state then follows FC.  Lock held. */
int qcow2_first_cluster_write(struct vimg_image *img,
                              struct qcow2_first_cluster *fc,
                              const uint8_t *buf);
void qcow2_first_cluster_free(struct qcow2_first_cluster *fc);
int qcow2_change_backing(struct vimg_image *img, const char *name,
                         const char *fmt);

/* qcow2-prealloc.c */
enum qcow2_prealloc {
    QCOW2_PREALLOC_OFF,
    QCOW2_PREALLOC_METADATA,
    QCOW2_PREALLOC_FALLOC,
    QCOW2_PREALLOC_FULL,
};
/* MODE from its name (NULL is off); -EINVAL for an unknown name. */
int qcow2_prealloc_parse(const char *name, enum qcow2_prealloc *out);
/* 1 if guest [OFFSET, OFFSET+LEN) reads as zeroes, 0 if not, or -errno. */
int qcow2_prealloc_is_zero_locked(struct vimg_image *img, uint64_t offset,
                                  uint64_t len);
/*
 * Growing from OLD_SIZE to NEW_SIZE (the L1 table already covers it):
 * map [OLD_SIZE, NEW_SIZE) to host clusters as qemu-img resize
 * --preallocation=MODE does, reserving (falloc) or zeroing (full) them.
 * The caller holds the lock and writes the new size afterwards.
 */
int qcow2_prealloc_grow_locked(struct vimg_image *img, uint64_t old_size,
                               uint64_t new_size, enum qcow2_prealloc mode);
/* qcow2-snapshot-write.c: internal snapshots (the lock is taken inside) */
int qcow2_snapshot_create(struct vimg_image *img, const char *name);
int qcow2_snapshot_apply(struct vimg_image *img, const char *id_or_name);
int qcow2_snapshot_delete(struct vimg_image *img, const char *name);
/* Give every snapshot entry the 16 bytes of extra data version 3 needs
 * (amend compat=1.1 of entries from old version 2 writers); lock held. */
int qcow2_snapshots_complete_extra(struct vimg_image *img);
/* The L1 table of snapshot SN, decoded (free it); -EIO if it is invalid. */
int qcow2_read_snapshot_l1(struct vimg_image *img,
                           const struct qcow2_snapshot *sn, uint64_t **out);

/* qcow2-amend.c */
int qcow2_amend(struct vimg_image *img, const struct qcow2_create_params *o,
                unsigned which);

/* qcow2-refcount.c */
/* Read refcount block entry INDEX of width 1 << ORDER bits from BLOCK. */
uint64_t qcow2_refcount_get(const uint8_t *block, uint64_t index,
                            unsigned order);
void qcow2_refcount_set(uint8_t *block, uint64_t index, unsigned order,
                        uint64_t value);
/* The refcount blocks and table clusters (*blocks_out, *table_out)
 * that count CLUSTERS clusters and themselves: the fewest that do, for
 * clusters of CLUSTER_SIZE bytes and refcounts of 1 << REFCOUNT_ORDER
 * bits.  Create, measure, preallocation, amend and check's rebuild all
 * lay out a new refcount structure with it. */
void qcow2_refcount_layout(uint64_t clusters, uint64_t cluster_size,
                           unsigned refcount_order, uint64_t *blocks_out,
                           uint64_t *table_out);
/* Was the image made with preallocation=metadata?  (QEMU's heuristic:
 * more clusters referenced than the file really occupies.) */
int qcow2_detect_metadata_prealloc(struct vimg_image *img);

/* qcow2-create.c: the feature name table qemu writes (create, amend) */
#define QCOW2_NB_FEATURES 8
extern const struct qcow2_feature qcow2_feature_table[QCOW2_NB_FEATURES];

/* qcow2-snapshot.c */
/* Decode NB snapshot entries from BUF (LEN bytes).  *used_out gets the
 * bytes consumed.  Free with qcow2_snapshots_free. */
int qcow2_snapshots_decode(struct qcow2_snapshot **out, uint32_t nb,
                           const uint8_t *buf, size_t len, size_t *used_out);
/* Encode into BUF (NULL to measure); returns bytes needed. */
size_t qcow2_snapshots_encode(const struct qcow2_snapshot *sn, size_t nb,
                              uint8_t *buf);
void qcow2_snapshots_free(struct qcow2_snapshot *sn, size_t nb);
/* The snapshot_view op: IMG (read-only) maps through the L1 table of the
 * snapshot with ID and/or NAME.  -ENOENT if there is none. */
int qcow2_snapshot_view(struct vimg_image *img, const char *id,
                        const char *name);

/* qcow2-bitmap.c */
int qcow2_bitmaps_decode(struct qcow2_bitmap **out, uint32_t nb,
                         const uint8_t *buf, size_t len);
size_t qcow2_bitmaps_encode(const struct qcow2_bitmap *bm, size_t nb,
                            uint8_t *buf);
void qcow2_bitmaps_free(struct qcow2_bitmap *bm, size_t nb);

/* qcow2-dirty.c: persistent dirty bitmaps kept true on writes.  The
 * *_locked functions expect the driver lock held. */
/* Bits of a bitmap of granularity 2^GRANULARITY_BITS over DISK_SIZE. */
uint64_t qcow2_dirty_nb_bits(uint64_t disk_size, unsigned granularity_bits);
/* Set the bits of BITS (NB_BITS long, LSB first) covering guest bytes
 * [OFFSET, OFFSET+COUNT); bits past NB_BITS are not touched. */
void qcow2_dirty_set_range(uint8_t *bits, uint64_t nb_bits,
                           unsigned granularity_bits, uint64_t offset,
                           uint64_t count);
/* Decode bitmap table ENTRY: its data cluster (0: none) and whether a
 * missing cluster reads as all ones.  -EIO if the entry is invalid. */
int qcow2_dirty_table_entry(uint64_t entry, uint64_t cluster_size,
                            uint64_t *offset_out, bool *is_ones_out);
/* Read-write open: load the enabled, consistent bitmaps. */
int qcow2_dirty_open(struct vimg_image *img);
/* Guest bytes [OFFSET, OFFSET+COUNT) are about to change: mark the loaded
 * bitmaps in use on disk (durably, the first time) and dirty them. */
int qcow2_dirty_note_locked(struct vimg_image *img, uint64_t offset,
                            uint64_t count);
/* Before a resize: refuse inconsistent bitmaps, load the others (disabled
 * ones too) and mark them in use.  After it succeeded: resize them. */
int qcow2_dirty_resize_begin_locked(struct vimg_image *img);
int qcow2_dirty_resize_end_locked(struct vimg_image *img, uint64_t new_size);
/* Clean close: store the bitmaps and clear in_use (crash-safe). */
int qcow2_dirty_store_locked(struct vimg_image *img);
void qcow2_dirty_free(struct vimg_image *img);

#endif
