/* SPDX-License-Identifier: MIT */
/*
 * qcow2-dirty.c: persistent dirty bitmaps kept true while the image is
 * written (qcow2.txt, "Bitmaps", "Bitmap table", "Bitmap data", "Dirty
 * tracking bitmaps"; docs/interop/bitmaps.rst).
 *
 * On a read-write open every enabled bitmap (auto flag) that is
 * consistent (in_use clear), of type "dirty tracking" and whose extra
 * data we may ignore is loaded into memory.  Bitmaps in use on open are
 * inconsistent: they are left alone (neither loaded nor cleared), as
 * qemu leaves them.  Disabled bitmaps never change through writes, so
 * they stay on disk untouched (resize loads them too: it changes their
 * size).
 *
 * Before the first change of guest data (write, zero write, discard,
 * compressed write) the loaded bitmaps are marked in_use on disk, and
 * that is flushed before the data write.  qemu marks every bitmap in use
 * as soon as it opens an image read-write; marking only before the first
 * change means an image opened read-write but never written (or a
 * process killed before it wrote) keeps consistent bitmaps, and a
 * bitmap is never in use on disk while its copy there could be stale
 * without the flag saying so.
 *
 * Every change dirties the bits that cover it at each bitmap's
 * granularity.  A clean close writes the bitmaps into new clusters
 * (data, then table, then a new directory), makes that durable, then
 * switches the header extension to the new directory in one write of
 * the first cluster (in_use clear there), and only then frees the old
 * clusters.  A crash at any point leaves the old directory with in_use
 * set (the bitmap is inconsistent, as qemu leaves it) or the new one,
 * complete; never a clean-looking stale bitmap.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* qemu's limits: granularity 2^9 .. 2^31, bitmap data at most 64 MiB */
#define DIRTY_MIN_GRANULARITY_BITS 9
#define DIRTY_MAX_GRANULARITY_BITS 31
#define DIRTY_MAX_BYTES (64ull * 1024 * 1024)
#define DIRTY_MAX_TABLE_ENTRIES (1u << 20)
#define DIRTY_TYPE_TRACKING 1

/* One bitmap held in memory; INDEX is its place in s->bitmaps. */
struct qcow2_dirty {
    size_t index;
    bool is_enabled;
    uint8_t *bits;        /* LSB first: bit k is bits[k / 8] >> (k % 8) */
    uint64_t nb_bits;
    uint64_t *old_table;  /* the table on disk when loaded (to free) */
    uint32_t old_table_size;
};

/* ----------------------------------------------------- pure helpers */

uint64_t qcow2_dirty_nb_bits(uint64_t disk_size, unsigned granularity_bits)
{
    return (disk_size >> granularity_bits) +
           ((disk_size & ((1ull << granularity_bits) - 1)) != 0);
}

void qcow2_dirty_set_range(uint8_t *bits, uint64_t nb_bits,
                           unsigned granularity_bits, uint64_t offset,
                           uint64_t count)
{
    if (count == 0) {
        return;
    }
    const uint64_t first = offset >> granularity_bits;
    uint64_t last = (offset + count - 1) >> granularity_bits;
    if (first >= nb_bits) {
        return;
    }
    last = VIMG_MIN(last, nb_bits - 1);
    uint64_t k = first;
    for (; k <= last && (k & 7); k++) {
        bits[k >> 3] |= (uint8_t)(1u << (k & 7));
    }
    if (last - k + 1 >= 8 && k <= last) {
        const uint64_t whole = (last - k + 1) >> 3;
        memset(bits + (k >> 3), 0xff, (size_t)whole);
        k += whole << 3;
    }
    for (; k <= last; k++) {
        bits[k >> 3] |= (uint8_t)(1u << (k & 7));
    }
}

int qcow2_dirty_table_entry(uint64_t entry, uint64_t cluster_size,
                            uint64_t *offset_out, bool *is_ones_out)
{
    const uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;

    /* bits 1-8 and 56-63 are reserved; bit 0 only without an offset */
    if ((entry & 0xff000000000001feull) || (off && (entry & 1)) ||
        (off & (cluster_size - 1))) {
        return -EIO;
    }
    *offset_out = off;
    *is_ones_out = !off && (entry & 1);
    return 0;
}

/* ------------------------------------------------------------ load */

static uint64_t data_bytes(const struct qcow2_dirty *d)
{
    return (d->nb_bits + 7) / 8;
}

static void dirty_free_one(struct qcow2_dirty *d)
{
    free(d->bits);
    free(d->old_table);
}

void qcow2_dirty_free(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    for (size_t i = 0; i < s->nb_dirty; i++) {
        dirty_free_one(&s->dirty[i]);
    }
    free(s->dirty);
    s->dirty = NULL;
    s->nb_dirty = 0;
}

/* Can we keep bitmap B true?  0 yes; -ENOTSUP (with a message) if it is
 * one qemu would not load either. */
static int usable(struct vimg_image *img, const struct qcow2_bitmap *b)
{
    if (b->type != DIRTY_TYPE_TRACKING) {
        return vimg_error(-ENOTSUP, "%s: bitmap '%s' has unknown type %u",
                          img->filename, b->name, b->type);
    }
    if (b->extra_data_size && !(b->flags & QCOW2_BITMAP_EXTRA_COMPAT)) {
        return vimg_error(-ENOTSUP, "%s: bitmap '%s' has extra data this "
                                    "program does not know",
                          img->filename, b->name);
    }
    if (b->granularity_bits < DIRTY_MIN_GRANULARITY_BITS ||
        b->granularity_bits > DIRTY_MAX_GRANULARITY_BITS) {
        return vimg_error(-ENOTSUP, "%s: bitmap '%s': granularity 2^%u is "
                                    "not supported",
                          img->filename, b->name, b->granularity_bits);
    }
    return 0;
}

/* Read the table of bitmap B (validated) into *out. */
static int read_table(struct vimg_image *img, const struct qcow2_bitmap *b,
                      uint64_t **out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t bytes = (uint64_t)b->table_size * 8;

    if (b->table_size > DIRTY_MAX_TABLE_ENTRIES) {
        return vimg_error(-ENOTSUP, "%s: the table of bitmap '%s' has %u "
                                    "entries, more than supported",
                          img->filename, b->name, b->table_size);
    }
    if (b->table_size == 0 || b->table_offset == 0 ||
        (b->table_offset & (s->cluster_size - 1)) ||
        b->table_offset >= s->file_size ||
        s->file_size - b->table_offset < bytes) {
        return qcow2_corrupt(img, "bitmap '%s': table at 0x%llx (%u "
                                  "entries) is invalid",
                             b->name, (unsigned long long)b->table_offset,
                             b->table_size);
    }
    uint64_t *t = malloc((size_t)bytes);
    if (!t) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, t, (size_t)bytes, b->table_offset);
    for (uint32_t i = 0; ret == 0 && i < b->table_size; i++) {
        t[i] = load_be64((const uint8_t *)&t[i]);
        uint64_t off;
        bool is_ones;
        if (qcow2_dirty_table_entry(t[i], s->cluster_size, &off, &is_ones) ||
            (off && (off >= s->file_size ||
                     s->file_size - off < s->cluster_size))) {
            ret = qcow2_corrupt(img, "bitmap '%s': table entry %u "
                                     "(0x%016llx) is invalid",
                                b->name, i, (unsigned long long)t[i]);
        }
    }
    if (ret < 0) {
        free(t);
        return ret;
    }
    *out = t;
    return 0;
}

/* Load bitmap number INDEX into D for a disk of DISK_SIZE bytes. */
static int load_one(struct vimg_image *img, size_t index, uint64_t disk_size,
                    struct qcow2_dirty *d)
{
    struct qcow2_state *s = img->priv;
    const struct qcow2_bitmap *b = &s->bitmaps[index];
    const uint64_t cs = s->cluster_size;

    memset(d, 0, sizeof(*d));
    d->index = index;
    d->is_enabled = b->flags & QCOW2_BITMAP_AUTO;
    d->nb_bits = qcow2_dirty_nb_bits(disk_size, b->granularity_bits);
    const uint64_t bytes = data_bytes(d);
    if (bytes > DIRTY_MAX_BYTES) {
        return vimg_error(-ENOTSUP, "%s: bitmap '%s' would need %llu bytes, "
                                    "more than supported",
                          img->filename, b->name, (unsigned long long)bytes);
    }
    /* qemu refuses a table that cannot cover the whole disk */
    if ((uint64_t)b->table_size * cs < bytes) {
        return qcow2_corrupt(img, "bitmap '%s': its table of %u entries "
                                  "does not cover the disk",
                             b->name, b->table_size);
    }
    int ret = read_table(img, b, &d->old_table);
    if (ret < 0) {
        return ret;
    }
    d->old_table_size = b->table_size;
    d->bits = calloc(1, (size_t)bytes + 1);
    if (!d->bits) {
        dirty_free_one(d);
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; ret == 0 && i * cs < bytes; i++) {
        const size_t n = (size_t)VIMG_MIN(cs, bytes - i * cs);
        uint64_t off = 0;
        bool is_ones = false;
        /* read_table validated every entry */
        (void)qcow2_dirty_table_entry(d->old_table[i], cs, &off, &is_ones);
        if (off) {
            ret = vimg_io_pread(img->io, d->bits + i * cs, n, off);
        } else if (is_ones) {
            memset(d->bits + i * cs, 0xff, n);
        }
    }
    if (ret == 0 && (d->nb_bits & 7)) {
        d->bits[bytes - 1] &= (uint8_t)((1u << (d->nb_bits & 7)) - 1);
    }
    if (ret < 0) {
        dirty_free_one(d);
    }
    return ret;
}

static int add_loaded(struct vimg_image *img, size_t index)
{
    struct qcow2_state *s = img->priv;
    struct qcow2_dirty *p = realloc(s->dirty, (s->nb_dirty + 1) * sizeof(*p));

    if (!p) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    s->dirty = p;
    int ret = load_one(img, index, s->h.size, &s->dirty[s->nb_dirty]);
    if (ret == 0) {
        s->nb_dirty++;
    }
    return ret;
}

static bool is_loaded(const struct qcow2_state *s, size_t index)
{
    for (size_t i = 0; i < s->nb_dirty; i++) {
        if (s->dirty[i].index == index) {
            return true;
        }
    }
    return false;
}

int qcow2_dirty_open(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    for (size_t k = 0; k < s->nb_bitmaps && ret == 0; k++) {
        const struct qcow2_bitmap *b = &s->bitmaps[k];
        if ((b->flags & QCOW2_BITMAP_IN_USE) ||
            !(b->flags & QCOW2_BITMAP_AUTO)) {
            continue; /* inconsistent, or disabled: left as it is */
        }
        ret = usable(img, b);
        if (ret == 0) {
            ret = add_loaded(img, k);
        }
    }
    if (ret < 0) {
        qcow2_dirty_free(img);
    }
    return ret;
}

/* ------------------------------------------------- in use, dirtying */

/* Byte offset of directory entry INDEX. */
static uint64_t entry_offset(const struct qcow2_state *s, size_t index)
{
    return qcow2_bitmaps_encode(s->bitmaps, index, NULL);
}

/* Set in_use on disk for every loaded bitmap, durably. */
static int mark_in_use(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    for (size_t i = 0; i < s->nb_dirty && ret == 0; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[s->dirty[i].index];
        if (b->flags & QCOW2_BITMAP_IN_USE) {
            continue;
        }
        b->flags |= QCOW2_BITMAP_IN_USE;
        uint8_t f[4];
        store_be32(f, b->flags);
        /* only the last byte of the flags changes: the write is atomic */
        ret = qcow2_write_meta(img, s->ext.bitmap_dir_offset +
                                        entry_offset(s, s->dirty[i].index) +
                                        12,
                               f, sizeof(f));
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret == 0) {
        s->is_dirty_marked = true;
    }
    return ret;
}

int qcow2_dirty_note_locked(struct vimg_image *img, uint64_t offset,
                            uint64_t count)
{
    struct qcow2_state *s = img->priv;

    if (s->nb_dirty == 0 || count == 0) {
        return 0;
    }
    if (!s->is_dirty_marked) {
        int ret = mark_in_use(img);
        if (ret < 0) {
            return ret;
        }
    }
    for (size_t i = 0; i < s->nb_dirty; i++) {
        struct qcow2_dirty *d = &s->dirty[i];
        if (d->is_enabled) {
            qcow2_dirty_set_range(d->bits, d->nb_bits,
                                  s->bitmaps[d->index].granularity_bits,
                                  offset, count);
        }
    }
    return 0;
}

/* ------------------------------------------------------------ resize */

int qcow2_dirty_resize_begin_locked(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    for (size_t k = 0; k < s->nb_bitmaps && ret == 0; k++) {
        const struct qcow2_bitmap *b = &s->bitmaps[k];
        if (is_loaded(s, k)) {
            continue;
        }
        if (b->flags & QCOW2_BITMAP_IN_USE) {
            /* qemu's words, so scripts see the same refusal */
            return vimg_error(-ENOTSUP, "Bitmap '%s' is inconsistent and "
                                        "cannot be used",
                              b->name);
        }
        ret = usable(img, b);
        if (ret < 0) {
            return vimg_error(ret, "%s: cannot resize an image with "
                                   "persistent bitmap '%s' that was not "
                                   "loaded",
                              img->filename, b->name);
        }
        ret = add_loaded(img, k);
    }
    if (ret == 0 && s->nb_dirty && !s->is_dirty_marked) {
        ret = mark_in_use(img);
    }
    return ret;
}

int qcow2_dirty_resize_end_locked(struct vimg_image *img, uint64_t new_size)
{
    struct qcow2_state *s = img->priv;

    for (size_t i = 0; i < s->nb_dirty; i++) {
        struct qcow2_dirty *d = &s->dirty[i];
        const uint64_t old_bytes = data_bytes(d);
        d->nb_bits = qcow2_dirty_nb_bits(
            new_size, s->bitmaps[d->index].granularity_bits);
        const uint64_t bytes = data_bytes(d);
        if (bytes > DIRTY_MAX_BYTES) {
            return vimg_error(-ENOTSUP, "%s: bitmap '%s' would need %llu "
                                        "bytes, more than supported",
                              img->filename, s->bitmaps[d->index].name,
                              (unsigned long long)bytes);
        }
        uint8_t *p = realloc(d->bits, (size_t)bytes + 1);
        if (!p) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        d->bits = p;
        if (bytes > old_bytes) {
            /* a grown disk starts clean there, as qemu's does */
            memset(d->bits + old_bytes, 0, (size_t)(bytes - old_bytes));
        }
        if (d->nb_bits & 7) {
            d->bits[bytes - 1] &= (uint8_t)((1u << (d->nb_bits & 7)) - 1);
        }
    }
    return 0;
}

/* ------------------------------------------------------------- store */

static bool is_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i]) {
            return false;
        }
    }
    return true;
}

/* Write D's data and table into new clusters; B gets the new table. */
static int store_one(struct vimg_image *img, const struct qcow2_dirty *d,
                     struct qcow2_bitmap *b, uint8_t *cluster)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t bytes = data_bytes(d);
    const uint64_t entries = VIMG_MAX(VIMG_DIV_ROUND_UP(bytes, cs), 1);
    const uint64_t table_clusters = VIMG_DIV_ROUND_UP(entries * 8, cs);
    uint8_t *table = calloc(1, (size_t)(table_clusters * cs));
    int ret = 0;

    if (!table) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < entries && ret == 0; i++) {
        const size_t n = (size_t)VIMG_MIN(cs, bytes - VIMG_MIN(bytes, i * cs));
        if (n == 0 || is_zero(d->bits + i * cs, n)) {
            continue; /* entry 0: reads as zeroes */
        }
        memset(cluster, 0, (size_t)cs);
        memcpy(cluster, d->bits + i * cs, n);
        uint64_t off;
        ret = qcow2_alloc_clusters(img, 1, &off);
        if (ret == 0) {
            ret = qcow2_meta_add(img, off >> s->cluster_bits);
        }
        if (ret == 0) {
            ret = qcow2_write_meta(img, off, cluster, (size_t)cs);
        }
        store_be64(table + i * 8, off);
    }
    uint64_t table_off = 0;
    if (ret == 0) {
        ret = qcow2_alloc_clusters(img, table_clusters, &table_off);
    }
    for (uint64_t c = 0; ret == 0 && c < table_clusters; c++) {
        ret = qcow2_meta_add(img, (table_off >> s->cluster_bits) + c);
    }
    if (ret == 0) {
        ret = qcow2_write_meta(img, table_off, table,
                               (size_t)(table_clusters * cs));
    }
    free(table);
    if (ret == 0) {
        b->table_offset = table_off;
        b->table_size = (uint32_t)entries;
        b->flags &= ~QCOW2_BITMAP_IN_USE;
    }
    return ret;
}

/* Drop the clusters of the old table of D and the data it points at. */
static int free_old(struct vimg_image *img, const struct qcow2_dirty *d,
                    uint64_t old_table_offset)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    int ret = 0;

    for (uint32_t i = 0; i < d->old_table_size && ret == 0; i++) {
        const uint64_t off = d->old_table[i] & QCOW2_L2E_OFFSET_MASK;
        if (off) {
            ret = qcow2_free_clusters_later(img, off, 1);
        }
    }
    if (ret == 0) {
        ret = qcow2_free_clusters_later(
            img, old_table_offset,
            VIMG_DIV_ROUND_UP((uint64_t)d->old_table_size * 8, cs));
    }
    return ret;
}

/* Write the directory into new clusters and point the header at it. */
static int switch_directory(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const size_t dir_bytes = qcow2_bitmaps_encode(s->bitmaps, s->nb_bitmaps,
                                                  NULL);
    const uint64_t dir_clusters = VIMG_DIV_ROUND_UP(dir_bytes, cs);
    uint8_t *dir = calloc(1, (size_t)(dir_clusters * cs));
    uint8_t *first = malloc((size_t)cs);
    struct qcow2_first_cluster fc;
    bool has_fc = false;
    uint64_t dir_off = 0;
    int ret = 0;

    if (!dir || !first) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    qcow2_bitmaps_encode(s->bitmaps, s->nb_bitmaps, dir);
    ret = qcow2_alloc_clusters(img, dir_clusters, &dir_off);
    if (ret == 0) {
        ret = qcow2_write_meta(img, dir_off, dir, (size_t)(dir_clusters * cs));
    }
    if (ret == 0) {
        ret = qcow2_first_cluster_read(img, &fc);
        has_fc = ret == 0;
    }
    if (ret == 0) {
        const uint64_t old_off = s->ext.bitmap_dir_offset;
        const uint64_t old_size = s->ext.bitmap_dir_size;
        fc.ext.has_bitmaps = true;
        fc.ext.nb_bitmaps = (uint32_t)s->nb_bitmaps;
        fc.ext.bitmap_dir_offset = dir_off;
        fc.ext.bitmap_dir_size = dir_bytes;
        fc.h.autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
        ret = qcow2_first_cluster_encode(img, &fc, first);
        if (ret == 0) {
            /* flushes data, refcounts and tables first */
            ret = qcow2_first_cluster_write(img, &fc, first);
        }
        if (ret == 0) {
            ret = qcow2_free_clusters_later(img, old_off,
                                            VIMG_DIV_ROUND_UP(old_size, cs));
        }
    }
out:
    if (has_fc) {
        qcow2_first_cluster_free(&fc);
    }
    free(dir);
    free(first);
    return ret;
}

int qcow2_dirty_store_locked(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    if (!s->is_dirty_marked || s->nb_dirty == 0) {
        return 0;
    }
    uint8_t *cluster = malloc((size_t)s->cluster_size);
    uint64_t *old_offsets = calloc(s->nb_dirty, sizeof(uint64_t));
    if (!cluster || !old_offsets) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->nb_dirty && ret == 0; i++) {
        struct qcow2_bitmap *b = &s->bitmaps[s->dirty[i].index];
        old_offsets[i] = b->table_offset;
        ret = store_one(img, &s->dirty[i], b, cluster);
    }
    if (ret == 0) {
        ret = switch_directory(img);
    }
    for (size_t i = 0; i < s->nb_dirty && ret == 0; i++) {
        ret = free_old(img, &s->dirty[i], old_offsets[i]);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret == 0) {
        s->is_dirty_marked = false;
    }
    free(cluster);
    free(old_offsets);
    return ret;
}
