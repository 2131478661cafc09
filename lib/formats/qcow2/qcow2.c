/* SPDX-License-Identifier: MIT */
/*
 * qcow2.c: the QCOW2 driver: open (header, extensions, L1, snapshot table,
 * bitmap directory, external data file), close, block status, info.  The
 * ops table at the end is the driver's table of contents.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* Memory for the L2 cache: as much as qemu's default maximum. */
#define QCOW2_L2_CACHE_BYTES (32u * 1024 * 1024)
#define QCOW2_L2_CACHE_MIN_SLOTS 16
#define QCOW2_MAX_SNAPSHOT_TABLE (64u * 1024 * 1024)

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    /* The magic alone decides, so that an unsupported version is reported
     * as such instead of the file being taken for raw; version 1 is QCOW
     * (probe-foreign.c). */
    if (len >= 8 && load_be32(buf + 4) == 1) {
        return 0;
    }
    return len >= 4 && load_be32(buf) == QCOW2_MAGIC ? 100 : 0;
}

static void qcow2_close(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!s) {
        return;
    }
    qcow2_close_write(img);
    if (s->data_io && s->data_io != img->io) {
        vimg_io_close(s->data_io);
    }
    free(s->data_path);
    free(s->l1);
    qcow2_cache_free(s->l2_cache);
    qcow2_extensions_free(&s->ext);
    qcow2_snapshots_free(s->snapshots, s->nb_snapshots);
    qcow2_bitmaps_free(s->bitmaps, s->nb_bitmaps);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->inflight_done);
    free(s);
    img->priv = NULL;
}

/* Refuse incompatible features we do not know, naming them as the image's
 * feature name table does. */
static int check_incompatible(struct vimg_image *img, struct qcow2_state *s)
{
    const uint64_t unknown =
        s->h.incompatible_features & ~QCOW2_INCOMPAT_KNOWN;
    char list[512] = "";
    size_t used = 0;

    if (!unknown) {
        return 0;
    }
    for (unsigned bit = 0; bit < 64; bit++) {
        if (!(unknown & (1ull << bit))) {
            continue;
        }
        const char *name = qcow2_feature_name(&s->ext, 0, bit);
        int n = name ? snprintf(list + used, sizeof(list) - used, "%s%s",
                                used ? ", " : "", name)
                     : snprintf(list + used, sizeof(list) - used,
                                "%sunknown incompatible feature bit %u",
                                used ? ", " : "", bit);
        if (n < 0 || (size_t)n >= sizeof(list) - used) {
            break;
        }
        used += (size_t)n;
    }
    return vimg_error(-ENOTSUP, "%s: unsupported qcow2 feature(s): %s",
                      img->filename, list);
}

static int load_snapshots(struct vimg_image *img, struct qcow2_state *s)
{
    if (s->h.nb_snapshots == 0) {
        return 0;
    }
    /* Entries have variable length: read a window and grow it until the
     * whole table decodes, bounded by the file and a sanity limit.  For a
     * check or info, bytes past the end of the file read as zeroes (as qemu reads
     * them), so that check can report such a table instead of failing. */
    const uint64_t avail =
        s->is_past_eof_zero ? QCOW2_MAX_SNAPSHOT_TABLE
        : s->h.snapshots_offset < s->file_size
            ? s->file_size - s->h.snapshots_offset
            : 0;
    size_t want = 64 * 1024;
    for (;;) {
        const size_t n = (size_t)VIMG_MIN((uint64_t)want, avail);
        uint8_t *buf = malloc(n ? n : 1);
        size_t used = 0;
        if (!buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        int ret = vimg_io_pread(img->io, buf, n, s->h.snapshots_offset);
        if (ret == 0) {
            ret = qcow2_snapshots_decode(&s->snapshots, s->h.nb_snapshots,
                                         buf, n, &used);
        }
        free(buf);
        if (ret == 0) {
            s->nb_snapshots = s->h.nb_snapshots;
            s->snapshots_size = used;
            return 0;
        }
        if (ret != -ENODATA) {
            return ret;
        }
        if (n == avail || want >= QCOW2_MAX_SNAPSHOT_TABLE) {
            return vimg_error(-EIO,
                              "qcow2: corrupt snapshot table at 0x%llx: it "
                              "runs past the end of the file",
                              (unsigned long long)s->h.snapshots_offset);
        }
        want *= 4;
    }
}

static int load_bitmaps(struct vimg_image *img, struct qcow2_state *s)
{
    /* Without the autoclear bit, a program that does not know bitmaps
     * wrote the image: the extension is stale and ignored (qcow2.txt). */
    if (!s->ext.has_bitmaps ||
        !(s->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    const struct qcow2_extensions *e = &s->ext;
    if (e->nb_bitmaps == 0 || e->nb_bitmaps > QCOW2_MAX_BITMAPS) {
        return vimg_error(-EIO, "qcow2: corrupt bitmaps extension: %u bitmaps",
                          e->nb_bitmaps);
    }
    if (e->bitmap_dir_size == 0 ||
        e->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR_BYTES ||
        (e->bitmap_dir_offset & (s->cluster_size - 1)) ||
        e->bitmap_dir_offset >= s->file_size ||
        s->file_size - e->bitmap_dir_offset < e->bitmap_dir_size) {
        return vimg_error(-EIO,
                          "qcow2: corrupt bitmaps extension: directory at "
                          "0x%llx (%llu bytes) is invalid",
                          (unsigned long long)e->bitmap_dir_offset,
                          (unsigned long long)e->bitmap_dir_size);
    }
    uint8_t *buf = malloc((size_t)e->bitmap_dir_size);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, buf, (size_t)e->bitmap_dir_size,
                            e->bitmap_dir_offset);
    if (ret == 0) {
        ret = qcow2_bitmaps_decode(&s->bitmaps, e->nb_bitmaps, buf,
                                   (size_t)e->bitmap_dir_size);
        if (ret == 0) {
            s->nb_bitmaps = e->nb_bitmaps;
        }
    }
    free(buf);
    return ret;
}

/*
 * qemu loads every bitmap that is not in use when it opens an image, and
 * refuses the image when a bitmap table entry is invalid (reserved bits,
 * an unaligned offset, or "all ones" with an offset).  A check opens what
 * qemu-img check opens, so it refuses those too.
 */
static int validate_bitmap_tables(struct vimg_image *img,
                                  struct qcow2_state *s)
{
    enum { CHUNK = 8192 };
    uint8_t *buf = malloc(CHUNK * 8);

    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = 0;
    for (size_t k = 0; k < s->nb_bitmaps && ret == 0; k++) {
        const struct qcow2_bitmap *b = &s->bitmaps[k];
        if (b->flags & QCOW2_BITMAP_IN_USE) {
            continue;
        }
        for (uint64_t i = 0; i < b->table_size && ret == 0; i += CHUNK) {
            const uint64_t off = b->table_offset + i * 8;
            if (off >= s->file_size) {
                break; /* zeroes from here on: all valid */
            }
            const size_t n = (size_t)VIMG_MIN(CHUNK, b->table_size - i);
            ret = vimg_io_pread(img->io, buf, n * 8, off);
            for (size_t j = 0; ret == 0 && j < n; j++) {
                const uint64_t e = load_be64(buf + j * 8);
                const uint64_t eo = e & 0x00fffffffffffe00ull;
                if ((e & 0xff000000000001feull) ||
                    (eo && ((e & 1) || (eo & (s->cluster_size - 1))))) {
                    ret = vimg_error(-EINVAL,
                                     "%s: could not read the table of "
                                     "bitmap '%s': entry %llu (0x%016llx) "
                                     "is invalid",
                                     img->filename, b->name,
                                     (unsigned long long)(i + j),
                                     (unsigned long long)e);
                }
            }
        }
    }
    free(buf);
    return ret;
}

static int open_data_file(struct vimg_image *img, struct qcow2_state *s,
                          unsigned flags)
{
    if (!s->ext.data_file) {
        return vimg_error(-EIO,
                          "%s: the image needs an external data file but "
                          "names none",
                          img->filename);
    }
    if (flags & VIMG_OPEN_MEMORY) {
        return vimg_error(-ENOTSUP,
                          "%s: external data file '%s' cannot be opened for "
                          "an in-memory image",
                          img->filename, s->ext.data_file);
    }
    if (flags & VIMG_OPEN_INFO_ONLY) {
        return 0; /* inspection only: the data file is not needed */
    }
    /* qemu opens the data file by its stored name as is, relative to the
     * working directory, not to the image; do the same so every image
     * qemu opens, vimg opens. */
    s->data_path = strdup(s->ext.data_file);
    if (!s->data_path) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_file_open(&s->data_io, s->data_path,
                                flags & VIMG_OPEN_RDWR, false);
    if (ret < 0) {
        vimg_error_prefix("%s: could not open external data file",
                          img->filename);
        return ret;
    }
    s->data_io->is_unsafe = img->io->is_unsafe;
    ret = vimg_lock_data_file(s->data_io, flags);
    if (ret < 0) {
        return ret;
    }
    return vimg_io_get_size(s->data_io, &s->data_size);
}

/* A new driver state in img->priv (qcow2_close frees it, also after a
 * failed open). */
static int state_new(struct vimg_image *img, struct qcow2_state **out)
{
    struct qcow2_state *s = calloc(1, sizeof(*s));

    if (!s) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->inflight_done, NULL);
    s->metadata_prealloc = -1;
    img->priv = s;
    *out = s;
    return 0;
}

/* The header and its extensions live in the first cluster (at most
 * 2 MiB): read as much of it as the file has into *OUT (free() it). */
static int read_first_cluster(struct vimg_image *img, struct qcow2_state *s,
                              uint8_t **out, size_t *out_len)
{
    int ret = vimg_io_get_size(img->io, &s->file_size);

    if (ret < 0) {
        return ret;
    }
    const size_t len =
        (size_t)VIMG_MIN(s->file_size, 1ull << QCOW2_MAX_CLUSTER_BITS);
    *out = malloc(len ? len : 1);
    if (!*out) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    *out_len = len;
    return vimg_io_pread(img->io, *out, len, 0);
}

/* Decode the header and its extensions from FIRST, and derive the
 * geometry the rest of the driver uses. */
static int decode_header(struct vimg_image *img, struct qcow2_state *s,
                         unsigned flags, const uint8_t *first,
                         size_t first_len)
{
    /* A check reads tables past the end of the file as zeroes (as qemu
     * does) and reports them, so only their alignment and size matter. */
    s->is_check = flags & VIMG_OPEN_CHECK;
    /* So does info (qemu-img info describes a truncated image) */
    s->is_past_eof_zero =
        s->is_check || ((flags & VIMG_OPEN_INFO_ONLY) &&
                        !(flags & VIMG_OPEN_RDWR));
    int ret = qcow2_header_decode(&s->h, first, first_len,
                                  s->is_past_eof_zero ? UINT64_MAX
                                                      : s->file_size);
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
        return ret;
    }
    s->cluster_bits = s->h.cluster_bits;
    s->cluster_size = 1ull << s->cluster_bits;
    s->has_subclusters = s->h.incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->l2_entry_bytes = s->has_subclusters ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->has_subclusters ? 4 : 3);
    s->subcluster_bits = s->cluster_bits - 5;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << s->csize_shift) - 1;

    size_t ext_end = (size_t)VIMG_MIN(s->cluster_size, first_len);
    if (s->h.backing_file_offset) {
        ext_end = (size_t)VIMG_MIN(ext_end, s->h.backing_file_offset);
    }
    ret = qcow2_extensions_decode(&s->ext, first, s->h.header_length,
                                  ext_end);
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
    }
    return ret;
}

/* Refuse what this open cannot do with the image: unknown incompatible
 * features, encrypted data, writing a corrupt image. */
static int check_open_allowed(struct vimg_image *img, struct qcow2_state *s,
                              unsigned flags)
{
    int ret = check_incompatible(img, s);

    if (ret < 0) {
        return ret;
    }
    /* info needs no key: an encrypted image opens for info only */
    if (s->h.crypt_method != QCOW2_CRYPT_NONE &&
        ((flags & VIMG_OPEN_RDWR) || !(flags & VIMG_OPEN_INFO_ONLY))) {
        return vimg_error(-ENOTSUP,
                          "%s: encrypted qcow2 images (%s) are not supported "
                          "yet",
                          img->filename,
                          s->h.crypt_method == QCOW2_CRYPT_AES ? "aes"
                                                               : "luks");
    }
    if ((s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) &&
        (flags & VIMG_OPEN_RDWR) && !s->is_check) {
        return vimg_error(-EIO,
                          "%s: image is marked corrupt; it can only be "
                          "opened read-only (repair it with 'vimg check -r "
                          "all')",
                          img->filename);
    }
    return 0;
}

/* The backing file name (in FIRST) and format, for the image layer. */
static int read_backing_name(struct vimg_image *img, struct qcow2_state *s,
                             const uint8_t *first)
{
    if (!s->h.backing_file_offset || !s->h.backing_file_size) {
        return 0;
    }
    img->backing_name = malloc(s->h.backing_file_size + 1);
    if (!img->backing_name) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(img->backing_name, first + s->h.backing_file_offset,
           s->h.backing_file_size);
    img->backing_name[s->h.backing_file_size] = '\0';
    if (strlen(img->backing_name) == 0) {
        free(img->backing_name);
        img->backing_name = NULL;
    } else if (s->ext.backing_format) {
        img->backing_fmt = strdup(s->ext.backing_format);
        if (!img->backing_fmt) {
            return vimg_error(-ENOMEM, "out of memory");
        }
    }
    return 0;
}

/* The active L1 table, in host byte order; entries past the end of the
 * file (check, info) stay zero. */
static int load_active_l1(struct vimg_image *img, struct qcow2_state *s)
{
    s->l1 = calloc(s->h.l1_size ? s->h.l1_size : 1, sizeof(uint64_t));
    if (!s->l1) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (!s->h.l1_size || s->h.l1_table_offset >= s->file_size) {
        return 0;
    }
    const uint64_t n =
        VIMG_MIN((uint64_t)s->h.l1_size,
                 VIMG_DIV_ROUND_UP(s->file_size - s->h.l1_table_offset, 8));
    int ret = vimg_io_pread(img->io, s->l1, (size_t)n * 8,
                            s->h.l1_table_offset);
    if (ret < 0) {
        return ret;
    }
    load_be64_array(s->l1, n);
    return 0;
}

/* The L2 cache: the open option cache_size (bytes, like qemu's
 * l2-cache-size; tests use a tiny one to force evictions) or the
 * default, never more tables than the image has. */
static int new_l2_cache(struct vimg_image *img, struct qcow2_state *s)
{
    size_t slots = QCOW2_L2_CACHE_BYTES >> s->cluster_bits;
    size_t min_slots = QCOW2_L2_CACHE_MIN_SLOTS;

    if (img->cache_size) {
        slots = (size_t)VIMG_MIN(img->cache_size >> s->cluster_bits,
                                 1ull << 20);
        min_slots = 2;
    }
    slots = VIMG_MAX(slots, min_slots);
    slots = VIMG_MIN(slots, (size_t)s->h.l1_size + 1);
    s->l2_cache = qcow2_cache_new((size_t)s->cluster_size, slots);
    if (!s->l2_cache) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    return 0;
}

/* The snapshot table and the bitmap directory.  A check handle opens
 * without them when they are unreadable: check reports that. */
static int load_snapshots_and_bitmaps(struct vimg_image *img,
                                      struct qcow2_state *s)
{
    int ret = load_snapshots(img, s);

    if (ret == 0) {
        ret = load_bitmaps(img, s);
    }
    if (ret < 0 && s->is_check && ret != -ENOMEM) {
        /* check reports it (and cannot complete) */
        s->check_load_error = ret;
        snprintf(s->check_load_msg, sizeof(s->check_load_msg), "%s",
                 vimg_last_error());
        ret = 0;
    }
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
        return ret;
    }
    if (s->is_check && s->check_load_error == 0) {
        ret = validate_bitmap_tables(img, s);
    }
    return ret;
}

/* Where guest data lives: the external data file, or the image itself. */
static int open_data(struct vimg_image *img, struct qcow2_state *s,
                     unsigned flags)
{
    s->has_data_file = s->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
    if (!s->has_data_file) {
        s->data_io = img->io;
        return 0;
    }
    s->is_data_file_raw =
        s->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    return open_data_file(img, s, flags);
}

/* Not closed cleanly with lazy refcounts: the refcounts may be wrong.
 * Repair them before writing anything, as qemu does. */
static int repair_dirty(struct vimg_image *img, struct qcow2_state *s)
{
    struct vimg_check_result res;

    memset(&res, 0, sizeof(res));
    int ret = qcow2_check(img, VIMG_CHECK_REPAIR_ALL, 0, &res, NULL, NULL);
    if (ret == 0 &&
        (res.check_errors ||
         (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY))) {
        ret = vimg_error(-EIO, "%s: could not repair dirty image",
                         img->filename);
    } else if (ret < 0) {
        vimg_error_prefix("%s: could not repair dirty image", img->filename);
    }
    return ret;
}

static int qcow2_open(struct vimg_image *img, unsigned flags)
{
    const bool is_write = (flags & VIMG_OPEN_RDWR) &&
                          !(flags & VIMG_OPEN_CHECK);
    struct qcow2_state *s = NULL;
    uint8_t *first = NULL;
    size_t first_len = 0;
    int ret = state_new(img, &s);

    if (ret == 0) {
        ret = read_first_cluster(img, s, &first, &first_len);
    }
    if (ret == 0) {
        ret = decode_header(img, s, flags, first, first_len);
    }
    if (ret == 0) {
        ret = check_open_allowed(img, s, flags);
    }
    if (ret == 0) {
        ret = read_backing_name(img, s, first);
    }
    free(first);
    if (ret == 0) {
        ret = load_active_l1(img, s);
    }
    if (ret == 0) {
        ret = new_l2_cache(img, s);
    }
    if (ret == 0) {
        ret = load_snapshots_and_bitmaps(img, s);
    }
    if (ret == 0) {
        ret = open_data(img, s, flags);
    }
    if (ret < 0) {
        return ret;
    }
    img->size = s->h.size;
    if (is_write && (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        ret = repair_dirty(img, s);
    }
    if (ret == 0 && is_write) {
        ret = qcow2_open_write(img);
    }
    return ret;
}

static int qcow2_block_status(struct vimg_image *img, uint64_t offset,
                              uint64_t count, struct vimg_layer_status *out)
{
    struct qcow2_state *s = img->priv;
    struct qcow2_mapping m;
    int ret = qcow2_get_mapping(img, offset, count, &m);

    if (ret < 0) {
        return ret;
    }
    out->length = m.length;
    out->file_name = s->data_path ? s->data_path : img->filename;
    switch (m.type) {
    case QCOW2_SC_NORMAL:
        out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET;
        out->file_offset = m.host_offset;
        break;
    case QCOW2_SC_ZERO_ALLOC:
        out->flags = VIMG_EXTENT_ZERO | VIMG_EXTENT_OFFSET;
        out->file_offset = m.host_offset;
        return 0;
    case QCOW2_SC_ZERO_PLAIN:
        out->flags = VIMG_EXTENT_ZERO;
        return 0;
    case QCOW2_SC_COMPRESSED:
        out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_COMPRESSED;
        return 0;
    case QCOW2_SC_UNALLOCATED_ALLOC:
        /* not allocated here, but the host cluster is known */
        out->flags = VIMG_EXTENT_OFFSET;
        out->file_offset = m.host_offset;
        return 0;
    default:
        out->flags = 0;
        return 0;
    }

    /* Data: on a metadata-preallocated image the host cluster may be a
     * hole in the file, which reads as zeroes (qemu reports it so). */
    pthread_mutex_lock(&s->lock);
    if (s->metadata_prealloc < 0) {
        ret = qcow2_detect_metadata_prealloc(img);
        s->metadata_prealloc = ret > 0;
    }
    const bool is_prealloc = s->metadata_prealloc > 0;
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    if (is_prealloc && s->data_io) {
        uint64_t n;
        ret = vimg_io_data_status(s->data_io, m.host_offset, m.length, &n);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0) {
            out->flags |= VIMG_EXTENT_ZERO;
        }
        out->length = n;
    }
    return 0;
}

const struct vimg_format vimg_format_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .flush = qcow2_flush,
    .write_zeroes = qcow2_write_zeroes,
    .discard = qcow2_discard,
    .cluster_size = qcow2_cluster_size,
    .resize = qcow2_resize,
    .compress_cluster = qcow2_compress_cluster,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .block_status = qcow2_block_status,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .amend = qcow2_amend_from_opts,
    .info = qcow2_info,
    .check = qcow2_check,
    .create = qcow2_create_from_opts,
    .measure = qcow2_measure,
    .measure_bitmaps = qcow2_measure_bitmaps,
    .capabilities = qcow2_capabilities,
    .options = qcow2_options,
    .check_option = qcow2_check_option,
    .describe_options = qcow2_describe_options,
    .snapshot_view = qcow2_snapshot_view,
    .make_empty = qcow2_make_empty,
    .change_backing = qcow2_change_backing,
};
