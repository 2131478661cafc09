/* SPDX-License-Identifier: MIT */
/*
 * vimg.h: the whole public API of libvimg, a library for virtual disk
 * images (raw, QCOW2; QCOW v1 and VHDX to come).
 *
 * Conventions
 * - Functions that can fail return 0 (or a non-negative count) on success
 *   and a negative errno on failure.  The reason is recorded as one line of
 *   text for vimg_last_error(), which is per thread: it stays valid until
 *   the same thread makes its next libvimg call.
 * - Handles are opaque.  Whoever opens, closes; close functions accept NULL.
 *
 * Thread safety
 * - One vimg_image may be used from many threads at once: vimg_pread,
 *   vimg_pwrite, vimg_flush and vimg_block_status may run concurrently on
 *   the same handle.  Reads of allocated data do not hold a lock while they
 *   do data I/O; metadata caches are guarded inside each format driver.
 * - vimg_close must not race with any other call on the same handle.
 *
 * Tuning comes in through options structs (vimg_open_ext(),
 * vimg_check_ext()); the library reads no environment variables.
 */
#ifndef VIMG_H
#define VIMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define VIMG_API __attribute__((visibility("default")))
#else
#define VIMG_API
#endif

#define VIMG_VERSION_MAJOR 0
#define VIMG_VERSION_MINOR 1
#define VIMG_VERSION_PATCH 0
#define VIMG_VERSION_NUMBER                                                    \
    (VIMG_VERSION_MAJOR * 10000 + VIMG_VERSION_MINOR * 100 + VIMG_VERSION_PATCH)
#define VIMG_VERSION_STRING "0.1.0"

/* The version of the library at run time, e.g. "0.1.0". */
VIMG_API const char *vimg_version(void);

/* This thread's last error message; never NULL ("" when none). */
VIMG_API const char *vimg_last_error(void);

typedef struct vimg_image vimg_image;

/* Flags for vimg_open(). */
#define VIMG_OPEN_RDWR 0x1u       /* open for writing (default: read-only) */
#define VIMG_OPEN_NO_BACKING 0x2u /* do not open the backing chain */
/* Open for inspection (info) only: an external data file is not opened
 * and guest data cannot be read. */
#define VIMG_OPEN_INFO_ONLY 0x4u
/* Never sync to stable storage (qemu's cache=unsafe): vimg_flush() still
 * writes every cache back to the files, but does not wait for the disk.
 * For outputs that are worthless after a crash anyway, such as a convert
 * target. */
#define VIMG_OPEN_CACHE_UNSAFE 0x10u
/*
 * Locking.  By default every file of an image (the image, its backing
 * files, an external data file) is locked as qemu locks it, with OFD locks
 * on the permission bytes qemu uses, so that qemu (qemu-nbd, qemu-io, a
 * VM, qemu-img) and other vimg processes are refused what would conflict,
 * and vimg_open() fails with -EAGAIN and qemu's message ("Failed to get
 * "write" lock") when they hold it.  VIMG_OPEN_NO_LOCK takes no locks (for
 * callers that hold their own); VIMG_OPEN_FORCE_SHARE (qemu-img -U) opens
 * read-only while letting others do anything, and is refused with
 * VIMG_OPEN_RDWR.
 */
#define VIMG_OPEN_NO_LOCK 0x100u
#define VIMG_OPEN_FORCE_SHARE 0x200u
/* Let nobody else write or resize any file of the image while it is open,
 * raw files included (qemu-img convert's sources). */
#define VIMG_OPEN_NO_OTHER_WRITERS 0x400u

/*
 * Open for vimg_check() only.  Damage that check reports (tables past the
 * end of the file, broken refcount structures, an unreadable snapshot
 * table or bitmap directory) does not make the open fail, the corrupt bit
 * does not refuse VIMG_OPEN_RDWR, and a dirty image is not repaired at
 * open.  Such a handle can be read but not written except by vimg_check()
 * with a repair flag (VIMG_OPEN_RDWR needed for that).
 */
#define VIMG_OPEN_CHECK 0x8u

/*
 * Open PATH.  FORMAT is "raw", "qcow2", or NULL to probe the contents.
 * Unless VIMG_OPEN_NO_BACKING is given, the whole backing chain is opened
 * too: a relative backing name resolves against the directory of the image
 * that names it, and a stored backing format is honoured (else probed).
 * On success store a new handle in *out; free it with vimg_close().
 */
VIMG_API int vimg_open(vimg_image **out, const char *path, const char *format,
                       unsigned flags);

#define VIMG_OPEN_OPTS_VERSION 1
/* How to open an image (vimg_open_ext()). */
struct vimg_open_opts {
    unsigned version; /* VIMG_OPEN_OPTS_VERSION */
    /* VIMG_OPEN_*: the mode (read-only, VIMG_OPEN_RDWR, _INFO_ONLY,
     * _CHECK), the lock policy (VIMG_OPEN_NO_LOCK, _FORCE_SHARE,
     * _NO_OTHER_WRITERS), the chain (VIMG_OPEN_NO_BACKING) and the cache
     * mode (VIMG_OPEN_CACHE_UNSAFE). */
    unsigned flags;
    /* Bytes of metadata each image of the chain may cache (qcow2: L2
     * tables, like qemu's l2-cache-size); 0: the format's default (qcow2:
     * 32 MiB).  Tiny values are rounded up to two tables. */
    uint64_t cache_size;
};
#define VIMG_OPEN_OPTS_INIT { VIMG_OPEN_OPTS_VERSION, 0, 0 }

/*
 * vimg_open() with options: OPTS NULL is the same as VIMG_OPEN_OPTS_INIT.
 * The backing chain is opened with the same options (read-only).
 */
VIMG_API int vimg_open_ext(vimg_image **out, const char *path,
                           const char *format,
                           const struct vimg_open_opts *opts);

/*
 * Open an image held in memory (LEN bytes at DATA, copied), read-only and
 * without a backing chain.  NAME is used in messages.  Used by tests and
 * fuzzers.
 */
VIMG_API int vimg_open_memory(vimg_image **out, const void *data, size_t len,
                              const char *format, const char *name);

/* Close IMG and its backing chain.  NULL is a no-op. */
VIMG_API void vimg_close(vimg_image *img);

/*
 * Read COUNT bytes at virtual offset OFFSET into BUF.  The whole range must
 * lie inside the virtual disk.  Unallocated areas read from the backing
 * chain, or as zeroes.  Returns 0 or a negative errno.
 */
VIMG_API int vimg_pread(vimg_image *img, void *buf, size_t count,
                        uint64_t offset);

/*
 * Write COUNT bytes at virtual offset OFFSET.  Needs VIMG_OPEN_RDWR
 * (-EROFS otherwise).  Returns 0 or a negative errno; -ENOTSUP for formats
 * whose write path is not there yet.
 */
VIMG_API int vimg_pwrite(vimg_image *img, const void *buf, size_t count,
                         uint64_t offset);

/* Flags for vimg_write_zeroes(). */
#define VIMG_ZERO_MAY_UNMAP 0x1u /* storage may be released */

/*
 * Make COUNT bytes at OFFSET read as zeroes, without writing zero data
 * where the format can record zeroes instead (qcow2 zero clusters).  With
 * VIMG_ZERO_MAY_UNMAP the storage may be released.
 */
VIMG_API int vimg_write_zeroes(vimg_image *img, uint64_t offset,
                               uint64_t count, unsigned flags);

/*
 * Tell the image COUNT bytes at OFFSET are no longer needed.  Afterwards
 * they read as zeroes (never as stale backing-file data).  Ranges smaller
 * than the format's allocation unit may be zeroed instead of released.
 */
VIMG_API int vimg_discard(vimg_image *img, uint64_t offset, uint64_t count);

/* Make everything written so far durable. */
VIMG_API int vimg_flush(vimg_image *img);

#define VIMG_RESIZE_SHRINK 0x1u /* allow a smaller size (data is lost) */

/*
 * Change the virtual size of IMG to NEW_SIZE.  Shrinking needs
 * VIMG_RESIZE_SHRINK and releases what lies beyond the new end.  New space
 * reads as zeroes; PREALLOCATION ("off" or NULL, "falloc", "full"; raw
 * only for now) reserves it.
 */
VIMG_API int vimg_resize(vimg_image *img, uint64_t new_size,
                         const char *preallocation, unsigned flags);

/* The allocation unit of IMG (qcow2 cluster size), or 512 for raw. */
VIMG_API uint32_t vimg_cluster_size(const vimg_image *img);

/*
 * Internal snapshots (qcow2; -ENOTSUP for other formats).  IMG must be
 * open read-write, and other threads must not use it meanwhile.
 * create: record the current disk content as snapshot NAME (names need
 *   not be unique; the ID is one more than the largest).
 * apply: make the disk content (and size) that of the snapshot whose ID,
 *   or else name, is ID_OR_NAME; the snapshot stays.
 * delete: remove the first snapshot named NAME and free what only it
 *   used.
 * A crash in the middle leaves an image whose only fault is leaked
 * clusters.  The snapshots are listed by vimg_get_info().
 */
VIMG_API int vimg_snapshot_create(vimg_image *img, const char *name);
VIMG_API int vimg_snapshot_apply(vimg_image *img, const char *id_or_name);
VIMG_API int vimg_snapshot_delete(vimg_image *img, const char *name);

/*
 * Compress one cluster of data (LEN bytes, at most the cluster size; a
 * short last cluster is padded with zeroes) with IMG's compression type,
 * into OUT (OUT_CAP bytes, at least the cluster size).  Returns the
 * compressed length, 0 when the data does not get smaller (write it
 * uncompressed), or a negative errno; -ENOTSUP for formats without
 * compression.  Needs no lock: call it from many threads.
 */
VIMG_API int vimg_compress_cluster(vimg_image *img, const void *data,
                                   size_t len, void *out, size_t out_cap);

/*
 * Store LEN bytes made by vimg_compress_cluster() as the compressed
 * cluster at virtual OFFSET (cluster aligned), replacing what was there.
 */
VIMG_API int vimg_pwrite_compressed(vimg_image *img, const void *data,
                                    size_t len, uint64_t offset);

/* What a handle can do (vimg_capabilities()), for front ends that
 * advertise features (an NBD server's can_write, can_zero, ...). */
#define VIMG_CAN_WRITE 0x1u     /* vimg_pwrite (the handle is read-write) */
#define VIMG_CAN_ZERO 0x2u      /* vimg_write_zeroes without writing data */
#define VIMG_CAN_DISCARD 0x4u   /* vimg_discard releases storage */
#define VIMG_CAN_EXTENTS 0x8u   /* vimg_block_status tells holes from data */
#define VIMG_CAN_SNAPSHOT 0x10u /* internal snapshots (create/apply/delete) */
#define VIMG_CAN_RESIZE 0x20u   /* vimg_resize */
#define VIMG_CAN_FLUSH 0x40u    /* vimg_flush has work to do */
#define VIMG_CAN_COMPRESS 0x80u /* vimg_pwrite_compressed */
#define VIMG_CAN_BACKING 0x100u /* the format stores a backing file */
#define VIMG_CAN_AMEND 0x200u   /* vimg_amend */
#define VIMG_CAN_CHECK 0x400u   /* vimg_check */
#define VIMG_CAN_CREATE 0x800u  /* vimg_create_ext (the format's) */
#define VIMG_CAN_BITMAPS 0x1000u /* persistent dirty bitmaps (qcow2 v3) */

/*
 * The VIMG_CAN_* bits IMG supports, from its format driver and the way
 * it was opened (the write bits need a read-write handle); 0 for NULL.
 */
VIMG_API unsigned vimg_capabilities(const vimg_image *img);

/* The VIMG_CAN_* bits of FORMAT's images opened read-write (0 for a
 * format vimg has no driver for), for front ends that create images. */
VIMG_API unsigned vimg_format_capabilities(const char *format);

/* The virtual disk size in bytes. */
VIMG_API uint64_t vimg_size(const vimg_image *img);

/* The format name ("raw", "qcow2"); valid until vimg_close(). */
VIMG_API const char *vimg_format(const vimg_image *img);

/* The file name IMG was opened with; valid until vimg_close(). */
VIMG_API const char *vimg_filename(const vimg_image *img);

/*
 * Was IMG's format guessed (opened with format NULL, or a backing file
 * with no stored format)?  As in qemu, a guessed raw image refuses
 * (-EPERM) writes, zero writes and discards that would make its first
 * 512 bytes probe as another format; open it with format "raw" to lift
 * that.  Front ends should warn when they open a guessed raw image for
 * writing (qemu-img does).
 */
VIMG_API bool vimg_is_format_probed(const vimg_image *img);

/*
 * The backing image of IMG, or NULL when it has none or the chain was not
 * opened.  Borrowed: valid until vimg_close(IMG).
 */
VIMG_API vimg_image *vimg_backing(const vimg_image *img);

/* Extent flags, as qemu-img map reports them. */
#define VIMG_EXTENT_DATA 0x1u      /* reads come from stored data */
#define VIMG_EXTENT_ZERO 0x2u      /* reads return zeroes */
#define VIMG_EXTENT_PRESENT 0x4u   /* allocated in the layer at `depth` */
#define VIMG_EXTENT_OFFSET 0x8u    /* file_offset/file_name are valid */
#define VIMG_EXTENT_COMPRESSED 0x10u /* data stored compressed */

struct vimg_extent {
    uint64_t length;      /* bytes from the queried offset, > 0 */
    unsigned flags;       /* VIMG_EXTENT_* */
    unsigned depth;       /* 0 = IMG itself, 1 = its backing, ... */
    uint64_t file_offset; /* where the bytes live, if VIMG_EXTENT_OFFSET */
    const char *file_name; /* which file, valid until vimg_close() */
};

/*
 * Describe the virtual range starting at OFFSET (at most COUNT bytes) as
 * the whole chain supplies it: walk down from IMG until a layer has data or
 * zeroes for OFFSET.  The answer covers out->length bytes (1..COUNT) that
 * all have the same status.  Returns 0 or a negative errno.
 */
VIMG_API int vimg_block_status(vimg_image *img, uint64_t offset,
                               uint64_t count, struct vimg_extent *out);

/* One internal snapshot, as `info` lists it. */
struct vimg_snapshot_info {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint64_t disk_size;   /* virtual size at the snapshot, if has_disk_size */
    bool has_disk_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;      /* valid if has_icount */
    bool has_icount;
};

/* One persistent dirty bitmap. */
struct vimg_bitmap_info {
    char *name;
    uint32_t granularity;
    bool in_use;
    bool auto_;
};

/* One LUKS key slot (qemu-img info "slots"). */
struct vimg_luks_slot {
    bool active;
    uint32_t iters;          /* valid if active */
    uint64_t key_offset;     /* bytes from the start of the LUKS header */
    uint32_t stripes;        /* valid if active */
};

#define VIMG_LUKS_SLOTS 8
/* A LUKS1 header as qemu-img info describes it (no key needed). */
struct vimg_luks_info {
    char cipher_alg[32];     /* "aes-256" */
    char cipher_mode[32];    /* "xts" */
    char ivgen_alg[32];      /* "plain64" */
    char ivgen_hash_alg[32]; /* "sha256" for essiv, else "" */
    char hash_alg[32];       /* "sha256" */
    char uuid[40];
    uint64_t payload_offset; /* bytes */
    uint32_t master_key_iters;
    struct vimg_luks_slot slots[VIMG_LUKS_SLOTS];
};

/*
 * Format-specific information (qemu-img info's "Format specific
 * information", JSON "format-specific"): a tree the driver fills, in the
 * order qemu-img prints it.  An OBJECT's or a LIST's entries are its
 * children (list items have no key).
 */
enum vimg_info_type {
    VIMG_INFO_STRING,
    VIMG_INFO_BOOL,
    VIMG_INFO_INT,
    VIMG_INFO_OBJECT,
    VIMG_INFO_LIST,
};

struct vimg_info_entry {
    const char *key;       /* "compat"; NULL for a list item */
    enum vimg_info_type type;
    const char *string;    /* STRING */
    bool boolean;          /* BOOL */
    int64_t integer;       /* INT */
    struct vimg_info_entry *children; /* OBJECT, LIST: the first entry */
    struct vimg_info_entry *next;     /* the parent's next entry */
};

/* What `vimg info` shows.  Free with vimg_info_free(). */
struct vimg_info {
    const char *format;      /* "raw", "qcow2" */
    uint64_t virtual_size;
    uint32_t cluster_size;   /* 0 when the format has none */
    char *backing_file;      /* as stored in the image, or NULL */
    char *full_backing_file; /* resolved against the image's directory */
    char *backing_format;    /* as stored, or NULL */
    bool dirty;              /* not closed cleanly (qemu's dirty-flag) */
    bool encrypted;
    /* The format-specific information: an OBJECT whose key is its type
     * ("qcow2") and whose children are the data; NULL when none. */
    struct vimg_info_entry *format_specific;

    size_t nb_snapshots;
    struct vimg_snapshot_info *snapshots;
    size_t nb_bitmaps;
    struct vimg_bitmap_info *bitmaps;

    /* Encryption: "aes" or "luks" (encrypted is then true), else NULL;
     * for "luks", the header (NULL if it could not be read).  Data of
     * encrypted images cannot be read or written yet.  The format's
     * "encrypt" information says the same. */
    const char *encrypt_format;
    struct vimg_luks_info *luks;
};

VIMG_API int vimg_get_info(vimg_image *img, struct vimg_info **out);
VIMG_API void vimg_info_free(struct vimg_info *info);

/*
 * From now on, IMG reads as its internal snapshot whose id is ID and whose
 * name is NAME (a NULL one is not compared; at least one must be given),
 * like qemu-img's -l: the content of the snapshot over the image's current
 * virtual size, with the same backing chain.  IMG must be read-only.  Must
 * not race with other calls on IMG.  Returns 0, -ENOENT when no snapshot
 * matches ("Can't find snapshot"), -ENOTSUP for formats without internal
 * snapshots, -EROFS for a writable handle.
 */
VIMG_API int vimg_snapshot_view(vimg_image *img, const char *id,
                                const char *name);

/*
 * Format options
 *
 * Each format declares the options a new image takes (qemu-img create -o)
 * and which of them vimg_amend_ext() can change, in a table that
 * vimg_format_options() returns.  A vimg_opts list holds the values for
 * one format, checked against that table as they are set; vimg_create_ext(),
 * vimg_amend_ext(), vimg_measure_ext() and vimg_convert() take it.
 */
enum vimg_option_type {
    VIMG_OPTION_STRING,
    VIMG_OPTION_BOOL,   /* on/off, yes/no, true/false */
    VIMG_OPTION_SIZE,   /* qemu's size syntax (vimg_parse_size()) */
    VIMG_OPTION_NUMBER, /* a decimal number */
};

#define VIMG_OPTION_AMENDABLE 0x1u /* vimg_amend_ext() can change it */
#define VIMG_OPTION_PREFIX 0x2u    /* name ends with '.': any key under it */

struct vimg_option {
    const char *name;           /* "cluster_size" */
    enum vimg_option_type type;
    const char *default_value;  /* as text, or NULL (none) */
    /* One or more lines for `-o help`, or NULL for an option that is
     * known but not listed (refused, or kept for compatibility). */
    const char *help;
    unsigned flags;             /* VIMG_OPTION_* */
};

/* The name of the format driver at INDEX (0, 1, ... in probe order), or
 * NULL past the last one: the formats vimg opens. */
VIMG_API const char *vimg_format_name(size_t index);

/* FORMAT's option table, ended by an entry with a NULL name; NULL for an
 * unknown format.  Static: never freed. */
VIMG_API const struct vimg_option *vimg_format_options(const char *format);

/*
 * Print FORMAT's options as `qemu-img create -o help` lists them
 * ("Supported options:", then one "  name=<type> help" entry per listed
 * option); with VIMG_OPTS_AMEND only the amendable ones.  Returns 0 or
 * -EINVAL for an unknown format.
 */
VIMG_API int vimg_format_print_options(const char *format, unsigned purpose,
                                       FILE *out);

/*
 * Parse a size as qemu does: "512", "64k", "1.5M", "0x1000", "2G" (an
 * integer, decimal or hex after 0x; an optional decimal fraction; an
 * optional suffix b, k, M, G, T, P, E in binary units, either case; a
 * fraction needs one of k..E and is rounded to the nearest byte).
 * Returns 0, -EINVAL (not a size) or -ERANGE (above 2^64 - 1).
 */
VIMG_API int vimg_parse_size(const char *s, uint64_t *out);

typedef struct vimg_opts vimg_opts;

/* What an option list is for: a new image, vimg_amend_ext(), or
 * vimg_measure_ext() (a new image's options and those of the file it would
 * be created on, nocow and extent_size_hint, with qemu-img measure's
 * words for bad values). */
#define VIMG_OPTS_CREATE 0u
#define VIMG_OPTS_AMEND 1u
#define VIMG_OPTS_MEASURE 2u

/*
 * A new, empty option list for FORMAT ("raw", "qcow2", ...) and PURPOSE.
 * Free it with vimg_opts_free().  -EINVAL ("Unknown file format") for a
 * format vimg has no driver for.
 */
VIMG_API int vimg_opts_new(vimg_opts **out, const char *format,
                           unsigned purpose);
VIMG_API void vimg_opts_free(vimg_opts *opts); /* NULL is a no-op */
/* A new list with the format, purpose and values of SRC. */
VIMG_API int vimg_opts_copy(vimg_opts **out, const vimg_opts *src);

/*
 * Set KEY to VALUE, checked as qemu-img checks -o options, with its
 * words: an unknown key gives -ENOENT ("Invalid parameter 'KEY'"); for
 * amend, a creation-only key -EINVAL ("... only supported for image
 * creation"); a bad value -EINVAL naming the key; an option the format
 * knows but vimg cannot do -ENOTSUP.  A later value replaces an earlier
 * one.  VALUE NULL (a key without "=") is refused.
 */
VIMG_API int vimg_opts_set(vimg_opts *opts, const char *key,
                           const char *value);

/*
 * Set each "key=value" of LIST, separated by commas (",," is a comma
 * inside a key or value, as in qemu), in order, stopping at the first
 * error (see vimg_opts_set()).
 */
VIMG_API int vimg_opts_parse(vimg_opts *opts, const char *list);

/* The value KEY was set to (as given), or NULL if unset.  Valid until the
 * next change of OPTS. */
VIMG_API const char *vimg_opts_get(const vimg_opts *opts, const char *key);

/* The format OPTS was made for; valid until vimg_opts_free(). */
VIMG_API const char *vimg_opts_format(const vimg_opts *opts);

/*
 * The options of the image OPTS describes, as `qemu-img create` prints
 * them after "Formatting 'FILE', fmt=FORMAT " (set values and the
 * format's defaults, in the format's order).  Free with free(); NULL when
 * out of memory.
 */
VIMG_API char *vimg_opts_describe(const vimg_opts *opts);

/*
 * Create a new image at PATH with the format and options of OPTS ("size"
 * must be set; an existing file is replaced).  Options the format cannot
 * combine are refused with -EINVAL and the reason, before anything is
 * written.  The backing file is only named, not opened.
 */
VIMG_API int vimg_create_ext(const char *path, const vimg_opts *opts);

/*
 * Change the options set in OPTS (made with VIMG_OPTS_AMEND for IMG's
 * format) of IMG, open read-write, in place (qemu-img amend).  Whatever
 * would be refused is refused before anything is written.  The guest
 * content never changes.
 */
VIMG_API int vimg_amend_ext(vimg_image *img, const vimg_opts *opts);

/*
 * Deprecated: the fixed qcow2-shaped options of vimg 0.1.  vimg_create(),
 * vimg_amend() and vimg_measure() turn them into a vimg_opts list and call
 * the _ext functions; new code uses those.
 */
/* Version 2 added data_file_keep; version 1 structs are still accepted. */
#define VIMG_CREATE_OPTS_VERSION 2
/* What a new image looks like (qemu-img create -o names in comments). */
struct vimg_create_opts {
    unsigned version;            /* VIMG_CREATE_OPTS_VERSION */
    const char *format;          /* "raw" or "qcow2" */
    uint64_t size;               /* virtual size in bytes */
    uint32_t cluster_size;       /* cluster_size; 0: 64 KiB */
    unsigned qcow2_version;      /* compat: 2 (0.10) or 3 (1.1); 0: 3 */
    bool lazy_refcounts;         /* lazy_refcounts */
    unsigned refcount_bits;      /* refcount_bits; 0: 16 */
    bool extended_l2;            /* extended_l2 */
    const char *data_file;       /* data_file, or NULL */
    bool data_file_raw;          /* data_file_raw */
    const char *compression_type; /* "zlib" (NULL) or "zstd" */
    const char *preallocation;   /* "off" (NULL), "metadata", "falloc", "full" */
    const char *backing_file;    /* backing_file, or NULL */
    const char *backing_format;  /* backing_fmt, or NULL */
    /* vimg only (version 2): an existing data_file keeps its bytes (it
     * is only grown to the size); otherwise it is emptied first, as
     * qemu-img does.  Useful with data_file_raw to wrap a raw disk. */
    bool data_file_keep;         /* data_file_keep */
};
#define VIMG_CREATE_OPTS_INIT { VIMG_CREATE_OPTS_VERSION, "qcow2", 0, 0, 0, \
    false, 0, false, NULL, false, NULL, NULL, NULL, NULL, false }

/* Deprecated: vimg_create_ext() with the options of OPTS. */
VIMG_API int vimg_create(const char *path, const struct vimg_create_opts *opts);

/* Which fields of a vimg_create_opts vimg_amend() changes */
#define VIMG_AMEND_SIZE 0x1u
#define VIMG_AMEND_COMPAT 0x2u          /* qcow2_version */
#define VIMG_AMEND_LAZY_REFCOUNTS 0x4u
#define VIMG_AMEND_REFCOUNT_BITS 0x8u
#define VIMG_AMEND_DATA_FILE 0x10u      /* rename the external data file */
#define VIMG_AMEND_DATA_FILE_RAW 0x20u  /* always refused, as by qemu */
#define VIMG_AMEND_BACKING_FILE 0x40u   /* "" removes it (no data copied) */
#define VIMG_AMEND_BACKING_FMT 0x80u

/*
 * Deprecated: vimg_amend_ext() with the options WHICH names, valued as in
 * OPTS.  For qcow2, whatever would be refused is refused before anything
 * is written: a downgrade to compat 0.10 of what it cannot hold (extended
 * L2, a data file, zstd, persistent bitmaps, lazy refcounts), a refcount
 * width too small for a refcount, a shrink over data.  A downgrade expands
 * zero clusters; a new refcount width rewrites the refcount structure.
 */
VIMG_API int vimg_amend(vimg_image *img, const struct vimg_create_opts *opts,
                        unsigned which);

/* What `qemu-img measure` reports for a new image. */
struct vimg_measure_result {
    uint64_t required;        /* file size a copy of the source needs */
    uint64_t fully_allocated; /* file size with every cluster allocated */
    bool has_bitmaps;         /* the target can hold the source's bitmaps */
    uint64_t bitmaps;         /* bytes they need, if has_bitmaps */
};

/*
 * Deprecated (see vimg_measure_ext()): how large a new image made with
 * TARGET (format "raw" or "qcow2", and the options of vimg_create) would
 * be, as `qemu-img measure` computes it.
 * With SRC, the image is a copy of SRC's guest content (its whole backing
 * chain, as vimg_convert copies it): only target clusters holding data
 * that is not known to be zeroes count as required, and a qcow2 v3 target
 * reports the room for SRC's persistent bitmaps (has_bitmaps is set when
 * both SRC and the target can store them).  Without SRC (NULL), the image
 * is an empty one of TARGET->size bytes; with SRC, TARGET->size is still
 * checked against the format's limits, as qemu-img checks -o size.
 * Options the target format refuses give -EINVAL (qemu-img's reasons); a
 * size beyond the format's limits -EFBIG.
 */
VIMG_API int vimg_measure(vimg_image *src,
                          const struct vimg_create_opts *target,
                          struct vimg_measure_result *out);

/*
 * vimg_measure() for a target of the format and options in TARGET (made
 * with VIMG_OPTS_CREATE or VIMG_OPTS_MEASURE); its "size" is the virtual
 * size of an empty image (without SRC), and is checked against the
 * format's limits.
 */
VIMG_API int vimg_measure_ext(vimg_image *src, const vimg_opts *target,
                              struct vimg_measure_result *out);

/* Progress of a long operation: DONE of TOTAL units (bytes). */
typedef void (*vimg_progress_fn)(void *opaque, uint64_t done, uint64_t total);

/* Version 2 added target_options; version 1 structs are still accepted. */
#define VIMG_CONVERT_OPTS_VERSION 2
struct vimg_convert_opts {
    unsigned version;        /* VIMG_CONVERT_OPTS_VERSION */
    const char *out_format;  /* "raw" */
    /* Runs of zeroes at least this long, aligned to it, are left as holes
     * (qemu-img convert -S); 0 writes every byte, zeroes included. */
    uint64_t sparse_size;
    unsigned threads;        /* worker threads; 0: one per CPU (max 8) */
    bool is_existing_target; /* write into an existing file (-n) */
    vimg_progress_fn progress;
    void *progress_opaque;
    /* Sync the output to the disk before returning.  Off by default, as
     * qemu-img convert (cache=unsafe) does not either; an image target's
     * metadata is written to the file in any case. */
    bool do_flush;
    /* qcow2 output: how to create it (format and size are filled in),
     * NULL for defaults; and whether to write compressed clusters.  With
     * create->backing_file set (qemu-img convert -B), only what each
     * source's top layer allocates is copied: the rest is left to the
     * target's backing file, which should hold the sources' backing
     * content.  That also holds with is_existing_target. */
    const struct vimg_create_opts *create; /* deprecated: target_options */
    bool is_compressed;
    /* Version 2: how to create the target (its "size" is filled in): a
     * list for out_format made with VIMG_OPTS_CREATE, or NULL (then
     * `create` is used).  A "backing_file" in it works as create's did. */
    const vimg_opts *target_options;
};
#define VIMG_CONVERT_OPTS_INIT                                                 \
    { VIMG_CONVERT_OPTS_VERSION, "raw", 4096, 0, false, NULL, NULL, false,    \
      NULL, false, NULL }

/*
 * Copy the guest content of NB_SRCS images, one after the other, into a
 * new image at OUT_PATH.  Zero and unallocated ranges are not written.
 * Reads and writes run in parallel worker threads.
 */
VIMG_API int vimg_convert(vimg_image *const *srcs, size_t nb_srcs,
                          const char *out_path,
                          const struct vimg_convert_opts *opts);

enum vimg_compare_verdict {
    VIMG_COMPARE_IDENTICAL = 0,
    VIMG_COMPARE_CONTENT_MISMATCH, /* at `offset` (512-byte aligned) */
    VIMG_COMPARE_SIZE_MISMATCH,    /* strict mode only */
    VIMG_COMPARE_STATUS_MISMATCH,  /* strict mode: allocation differs */
};

#define VIMG_COMPARE_OPTS_VERSION 1
struct vimg_compare_opts {
    unsigned version; /* VIMG_COMPARE_OPTS_VERSION */
    bool is_strict;   /* sizes and allocation must match too */
    vimg_progress_fn progress;
    void *progress_opaque;
};
#define VIMG_COMPARE_OPTS_INIT { VIMG_COMPARE_OPTS_VERSION, false, NULL, NULL }

struct vimg_compare_result {
    enum vimg_compare_verdict verdict;
    uint64_t offset;     /* first difference */
    bool is_size_different; /* sizes differ (non-strict: tail was zero) */
};

/*
 * Compare the guest content of A and B as `qemu-img compare` does: ranges
 * that are zero in one and absent in the other are equal; without strict
 * mode the longer image's tail must read as zeroes.  Returns 0 with the
 * verdict in *out, or a negative errno when reading fails.
 */
VIMG_API int vimg_compare(vimg_image *a, vimg_image *b,
                          const struct vimg_compare_opts *opts,
                          struct vimg_compare_result *out);

/*
 * Store NAME (NULL or "": none, the image becomes standalone) and its
 * format FMT (NULL: none; ignored without NAME) as IMG's backing file, as
 * `qemu-img rebase -u` does: the guest content is not looked at (see
 * vimg_rebase() for the safe way).  Everything written before is made
 * durable first, and the header is replaced in one write, so a crash
 * leaves the old name or the new one.  IMG must be open read-write;
 * -ENOTSUP for formats without a backing file (raw), -EINVAL for a name
 * longer than the format allows, -ENOSPC if it does not fit in the
 * header.  Unless IMG was opened with VIMG_OPEN_NO_BACKING, the old chain
 * is closed and the new one opened (resolved against IMG's directory);
 * if that fails the header is changed all the same, IMG has no backing
 * image and stays read-only until reopened, and the error is returned.
 */
VIMG_API int vimg_change_backing(vimg_image *img, const char *name,
                                 const char *fmt);

#define VIMG_COMMIT_OPTS_VERSION 1
struct vimg_commit_opts {
    unsigned version;   /* VIMG_COMMIT_OPTS_VERSION */
    /* The image to commit into: a layer of TOP's backing chain, or NULL
     * for the immediate backing file. */
    vimg_image *base;
    /* Leave TOP as it is (qemu-img commit -d).  Implied when BASE is not
     * the immediate backing file: the images in between are no longer a
     * valid chain then, and TOP keeps the guest content only with its
     * own data. */
    bool is_keep_top;
    unsigned threads;   /* worker threads; 0: one per CPU (max 8) */
    vimg_progress_fn progress;
    void *progress_opaque;
};
#define VIMG_COMMIT_OPTS_INIT { VIMG_COMMIT_OPTS_VERSION, NULL, false, 0, \
    NULL, NULL }

/*
 * Commit TOP into BASE as `qemu-img commit` does: everything allocated
 * above BASE (TOP's data and zeroes, and those of the images in between)
 * is written into BASE, which is reopened read-write in place and first
 * grown to TOP's size if it is smaller.  Zeroes are written as zeroes, so
 * they mask BASE's data.  Then, unless is_keep_top, every cluster of TOP
 * is made unallocated again, so TOP reads through to BASE.  TOP must be
 * open read-write for that.  Reads and writes run in worker threads; no
 * other call may use TOP's chain meanwhile.
 */
VIMG_API int vimg_commit(vimg_image *top, const struct vimg_commit_opts *opts);

#define VIMG_REBASE_OPTS_VERSION 1
struct vimg_rebase_opts {
    unsigned version;   /* VIMG_REBASE_OPTS_VERSION */
    /* Only rewrite the backing file name and format (qemu-img rebase -u),
     * as vimg_change_backing() does. */
    bool is_unsafe;
    unsigned threads;   /* worker threads; 0: one per CPU (max 8) */
    vimg_progress_fn progress;
    void *progress_opaque;
};
#define VIMG_REBASE_OPTS_INIT { VIMG_REBASE_OPTS_VERSION, false, 0, NULL, \
    NULL }

/*
 * Give IMG the backing file BACKING (NULL or "": none) of format
 * BACKING_FMT (NULL: probe it) without changing its guest content, as
 * `qemu-img rebase` does: wherever IMG itself does not allocate and the
 * old chain (the one IMG was opened with) reads differently from the new
 * one, the old content is copied into IMG (in 512-byte sectors); then the
 * header names the new backing file (see vimg_change_backing()).  BACKING
 * is resolved against IMG's directory.  IMG must be open read-write with
 * its backing chain; -ENOTSUP for formats without a backing file.
 */
VIMG_API int vimg_rebase(vimg_image *img, const char *backing,
                         const char *backing_fmt,
                         const struct vimg_rebase_opts *opts);

/* Flags for vimg_check(). */
#define VIMG_CHECK_REPAIR_LEAKS 0x1u  /* free leaked clusters (-r leaks) */
#define VIMG_CHECK_REPAIR_ERRORS 0x2u /* fix refcounts that are too low,
                                       * COPIED flags, rebuild refcounts */
#define VIMG_CHECK_REPAIR_ALL                                                  \
    (VIMG_CHECK_REPAIR_LEAKS | VIMG_CHECK_REPAIR_ERRORS) /* -r all */

/* What vimg_check() found, as `qemu-img check` counts it. */
struct vimg_check_result {
    uint64_t check_errors;        /* problems that stopped part of the check */
    uint64_t corruptions;         /* errors left in the image */
    uint64_t leaks;               /* clusters with a refcount but no user */
    uint64_t corruptions_fixed;   /* repaired by this call */
    uint64_t leaks_fixed;
    uint64_t image_end_offset;    /* end of the last cluster in use */
    uint64_t total_clusters;      /* of the virtual disk */
    uint64_t allocated_clusters;  /* of those, mapped in the active image */
    uint64_t fragmented_clusters; /* not right after the previous one */
    uint64_t compressed_clusters;
};

/* Receives one line (no newline) per problem found or repaired. */
typedef void (*vimg_check_report_fn)(void *opaque, const char *msg);

/*
 * Check the consistency of IMG (not of its backing files): for qcow2,
 * rebuild every refcount from the metadata and compare it with the stored
 * refcounts, and check every table entry.  FLAGS is 0 or VIMG_CHECK_REPAIR_*
 * (repairs need a handle opened with VIMG_OPEN_RDWR; open it with
 * VIMG_OPEN_CHECK so that damaged images open at all).  Repairs are made in
 * a crash-safe order: refcounts are raised before others are lowered, and a
 * rebuilt refcount structure is written to fresh clusters and made durable
 * before the header points at it.  Clean repaired images get their dirty
 * and corrupt bits cleared.
 *
 * REPORT (may be NULL) gets each problem as a line of text, in a stable
 * order, from the calling thread.  *OUT is always filled.  Returns 0 when
 * the check ran to the end (look at the counts), -ENOTSUP when the format
 * has no checks, or another negative errno when the check could not
 * complete (I/O error, unreadable snapshot table, a refcount rebuild needed
 * but only leaks may be repaired).  The work is spread over one thread per
 * CPU (vimg_check_ext() chooses), and memory use is about two bytes per
 * cluster of the image file.
 */
VIMG_API int vimg_check(vimg_image *img, unsigned flags,
                        struct vimg_check_result *out,
                        vimg_check_report_fn report, void *opaque);

#define VIMG_CHECK_OPTS_VERSION 1
/* How to check an image (vimg_check_ext()). */
struct vimg_check_opts {
    unsigned version;            /* VIMG_CHECK_OPTS_VERSION */
    unsigned flags;              /* 0 or VIMG_CHECK_REPAIR_* */
    unsigned threads;            /* worker threads; 0: one per CPU */
    vimg_check_report_fn report; /* may be NULL */
    void *report_opaque;
};
#define VIMG_CHECK_OPTS_INIT { VIMG_CHECK_OPTS_VERSION, 0, 0, NULL, NULL }

/* vimg_check() with options (OPTS NULL: VIMG_CHECK_OPTS_INIT). */
VIMG_API int vimg_check_ext(vimg_image *img,
                            const struct vimg_check_opts *opts,
                            struct vimg_check_result *out);

#ifdef __cplusplus
}
#endif
#endif /* VIMG_H */
