/* SPDX-License-Identifier: MIT */
/*
 * qcow2-write.c: the QCOW2 write path: cluster allocation with refcounts
 * of every width (new refcount blocks describe themselves; the refcount
 * table grows by moving), L2 allocation and copy-on-write of shared L2
 * tables, copy-on-write of data (from the backing file, zero clusters,
 * compressed and shared clusters) at subcluster granularity on extended
 * L2 images, write-zeroes and discard, and an ordered flush.
 *
 * Durability (DESIGN.md): metadata is written back, not through.  Dirty
 * L2 tables reach the disk only after the data and refcounts they point
 * to are durable (the L2 cache's write-back callback syncs first); the L1
 * table only after the L2 tables it points to; references are dropped
 * from refcounts only after the L2/L1 changes that removed them are
 * durable (pending frees).  A crash therefore leaks clusters at worst.
 *
 * Concurrency: a write into a cluster that is already allocated and ours
 * alone (COPIED) only looks up the mapping under the driver lock and
 * writes without it, so such writes run in parallel.  Every other write
 * holds the lock for its whole duration, so allocating writes never race.
 * A flush waits for in-place writes in flight, so their clusters cannot
 * be freed and reused under them.  Reads only hold the lock for lookups.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

#define RB_CACHE_BYTES (4u * 1024 * 1024)

static uint64_t cluster_of(const struct qcow2_state *s, uint64_t off)
{
    return off >> s->cluster_bits;
}

/* ------------------------------------------------------------------ I/O */

static int write_meta(struct vimg_image *img, uint64_t off, const void *buf,
                      size_t len)
{
    struct qcow2_state *s = img->priv;
    int ret = vimg_io_pwrite(img->io, buf, len, off);

    if (ret == 0) {
        s->is_unsynced = true;
        if (off + len > s->file_size) {
            s->file_size = off + len;
        }
    }
    return ret;
}

static int sync_files(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    if (s->data_io && s->data_io != img->io) {
        ret = vimg_io_flush(s->data_io);
    }
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0) {
        s->is_unsynced = false;
    }
    return ret;
}

/* Write the refcount blocks and table, then sync: after this, everything
 * written so far (data included) is durable. */
static int sync_refcounts(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_cache_flush(s->rb_cache);

    if (ret == 0 && s->is_reftable_dirty) {
        const size_t bytes = (size_t)s->reftable_entries * 8;
        uint8_t *buf = malloc(bytes);
        if (!buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (uint64_t i = 0; i < s->reftable_entries; i++) {
            store_be64(buf + i * 8, s->reftable[i]);
        }
        ret = write_meta(img, s->h.refcount_table_offset, buf, bytes);
        free(buf);
        if (ret == 0) {
            s->is_reftable_dirty = false;
        }
    }
    if (ret == 0 && s->is_unsynced) {
        ret = sync_files(img);
    }
    return ret;
}

static int rb_writeback(void *opaque, uint64_t off, const uint8_t *buf,
                        size_t len)
{
    return write_meta(opaque, off, buf, len);
}

static int l2_writeback(void *opaque, uint64_t off, const uint8_t *buf,
                        size_t len)
{
    /* an L2 table may point at new clusters: their data and refcounts
     * must be durable first */
    int ret = sync_refcounts(opaque);

    return ret < 0 ? ret : write_meta(opaque, off, buf, len);
}

static int load_table(void *opaque, uint64_t off, uint8_t *buf, size_t len)
{
    struct vimg_image *img = opaque;

    return vimg_io_pread(img->io, buf, len, off);
}

static int zero_table(void *opaque, uint64_t off, uint8_t *buf, size_t len)
{
    memset(buf, 0, len);
    return 0;
}

/* ------------------------------------------------------- overlap check */

/*
 * Before a cluster is handed out, make sure it is not metadata (qemu's
 * "overlap check"): refcounts that are too low would otherwise let new
 * data overwrite a table.  Fixed structures are known from the header;
 * refcount blocks and L2 tables (active and of snapshots) are kept in a
 * sorted array, built at the first allocation.
 */
static bool in_range(uint64_t c, uint64_t off, uint64_t bytes,
                     unsigned cluster_bits)
{
    if (bytes == 0) {
        return false;
    }
    const uint64_t first = off >> cluster_bits;
    const uint64_t last = (off + bytes - 1) >> cluster_bits;
    return c >= first && c <= last;
}

static size_t meta_pos(const struct qcow2_state *s, uint64_t c)
{
    size_t lo = 0, hi = s->nb_meta;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (s->meta[mid] < c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static int meta_add(struct qcow2_state *s, uint64_t c)
{
    const size_t pos = meta_pos(s, c);
    if (pos < s->nb_meta && s->meta[pos] == c) {
        return 0;
    }
    if (s->nb_meta == s->cap_meta) {
        const size_t cap = s->cap_meta ? s->cap_meta * 2 : 256;
        uint64_t *m = realloc(s->meta, cap * sizeof(*m));
        if (!m) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        s->meta = m;
        s->cap_meta = cap;
    }
    memmove(s->meta + pos + 1, s->meta + pos,
            (s->nb_meta - pos) * sizeof(*s->meta));
    s->meta[pos] = c;
    s->nb_meta++;
    return 0;
}

static void meta_remove(struct qcow2_state *s, uint64_t c)
{
    const size_t pos = meta_pos(s, c);
    if (pos < s->nb_meta && s->meta[pos] == c) {
        memmove(s->meta + pos, s->meta + pos + 1,
                (s->nb_meta - pos - 1) * sizeof(*s->meta));
        s->nb_meta--;
    }
}

static int add_l1_tables(struct vimg_image *img, const uint64_t *l1,
                         uint64_t n)
{
    struct qcow2_state *s = img->priv;
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2) {
            int ret = meta_add(s, l2 >> s->cluster_bits);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Persistent bitmaps: each bitmap table and the clusters it points at
 * (the directory itself is a fixed range, see is_metadata()). */
static int add_bitmap_tables(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    for (size_t k = 0; k < s->nb_bitmaps && ret == 0; k++) {
        const struct qcow2_bitmap *bm = &s->bitmaps[k];
        const uint64_t bytes = (uint64_t)bm->table_size * 8;
        if (bm->table_offset == 0 || bytes == 0 ||
            bytes > QCOW2_MAX_L1_BYTES) {
            continue; /* open validated what it uses */
        }
        uint8_t *t = malloc((size_t)bytes);
        if (!t) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = vimg_io_pread(img->io, t, (size_t)bytes, bm->table_offset);
        const uint64_t first = bm->table_offset >> s->cluster_bits;
        const uint64_t last = (bm->table_offset + bytes - 1) >> s->cluster_bits;
        for (uint64_t c = first; ret == 0 && c <= last; c++) {
            ret = meta_add(s, c);
        }
        for (uint32_t i = 0; ret == 0 && i < bm->table_size; i++) {
            /* bits 9-55: a data cluster; 0 or 1 in bit 0 means none */
            const uint64_t off = load_be64(t + (size_t)i * 8) &
                                 QCOW2_L2E_OFFSET_MASK;
            if (off) {
                ret = meta_add(s, off >> s->cluster_bits);
            }
        }
        free(t);
    }
    return ret;
}

static int build_meta_index(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    s->has_meta_index = true;
    for (uint64_t i = 0; i < s->reftable_entries && ret == 0; i++) {
        const uint64_t rb = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb) {
            ret = meta_add(s, rb >> s->cluster_bits);
        }
    }
    if (ret == 0) {
        ret = add_l1_tables(img, s->l1, s->h.l1_size);
    }
    if (ret == 0) {
        ret = add_bitmap_tables(img);
    }
    for (size_t k = 0; k < s->nb_snapshots && ret == 0; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        if (sn->l1_size == 0 || (uint64_t)sn->l1_size * 8 >
                                    QCOW2_MAX_L1_BYTES) {
            continue;
        }
        uint64_t *l1 = malloc((size_t)sn->l1_size * 8);
        if (!l1) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = vimg_io_pread(img->io, l1, (size_t)sn->l1_size * 8,
                            sn->l1_table_offset);
        for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++) {
            l1[i] = load_be64((const uint8_t *)&l1[i]);
        }
        if (ret == 0) {
            ret = add_l1_tables(img, l1, sn->l1_size);
        }
        free(l1);
    }
    return ret;
}

/* Does cluster C hold metadata? */
static bool is_metadata(const struct qcow2_state *s, uint64_t c)
{
    const unsigned cb = s->cluster_bits;
    if (c == 0 ||
        in_range(c, s->h.l1_table_offset, (uint64_t)s->h.l1_size * 8, cb) ||
        in_range(c, s->h.refcount_table_offset,
                 (uint64_t)s->h.refcount_table_clusters << cb, cb)) {
        return true;
    }
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        if (in_range(c, s->snapshots[k].l1_table_offset,
                     (uint64_t)s->snapshots[k].l1_size * 8, cb)) {
            return true;
        }
    }
    if (s->nb_snapshots &&
        in_range(c, s->h.snapshots_offset, s->snapshots_size, cb)) {
        return true;
    }
    if ((s->ext.has_bitmaps &&
         in_range(c, s->ext.bitmap_dir_offset, s->ext.bitmap_dir_size, cb)) ||
        (s->ext.has_crypto &&
         in_range(c, s->ext.crypto_offset, s->ext.crypto_length, cb))) {
        return true;
    }
    const size_t pos = meta_pos(s, c);
    return pos < s->nb_meta && s->meta[pos] == c;
}

static int overlap_found(struct vimg_image *img, uint64_t c);

/* Fail (and mark the image corrupt) if cluster C holds metadata. */
static int check_free_cluster(struct vimg_image *img, uint64_t c)
{
    struct qcow2_state *s = img->priv;

    if (!s->has_meta_index) {
        int ret = build_meta_index(img);
        if (ret < 0) {
            return ret;
        }
    }
    return is_metadata(s, c) ? overlap_found(img, c) : 0;
}

/* An allocation would overwrite metadata: the refcounts lie.  Mark the
 * image corrupt (qemu's corrupt bit) and refuse every further write. */
static int overlap_found(struct vimg_image *img, uint64_t c)
{
    struct qcow2_state *s = img->priv;

    s->is_broken = true;
    s->h.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    if (s->h.version >= 3) {
        uint8_t b[8];
        store_be64(b, s->h.incompatible_features);
        if (vimg_io_pwrite(img->io, b, sizeof(b), QCOW2_HDR_INCOMPAT) == 0) {
            vimg_io_flush(img->io);
        }
    }
    return vimg_error(-EIO,
                      "%s: corrupt qcow2 image: cluster 0x%llx has refcount "
                      "0 but holds metadata; the image is marked corrupt "
                      "(repair it with 'vimg check -r all')",
                      img->filename,
                      (unsigned long long)(c << s->cluster_bits));
}

/* ------------------------------------------------------------ refcounts */

static int refblock(struct vimg_image *img, uint64_t rt_index,
                    uint8_t **out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t off = s->reftable[rt_index] & QCOW2_REFT_OFFSET_MASK;

    if (off & (s->cluster_size - 1)) {
        return qcow2_corrupt(img, "refcount block 0x%llx is not cluster "
                                  "aligned",
                             (unsigned long long)off);
    }
    const uint8_t *b;
    int ret = qcow2_cache_get(s->rb_cache, off, load_table, img, &b);
    *out = (uint8_t *)b;
    return ret;
}

int qcow2_get_refcount_locked(struct vimg_image *img, uint64_t cluster,
                              uint64_t *out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t idx = cluster / s->rb_entries;

    *out = 0;
    if (idx >= s->reftable_entries ||
        !(s->reftable[idx] & QCOW2_REFT_OFFSET_MASK)) {
        return 0;
    }
    uint8_t *b;
    int ret = refblock(img, idx, &b);
    if (ret == 0) {
        *out = qcow2_refcount_get(b, cluster % s->rb_entries,
                                  s->h.refcount_order);
    }
    return ret;
}

/* Set the refcount of CLUSTER, whose refcount block must exist. */
static int set_refcount(struct vimg_image *img, uint64_t cluster,
                        uint64_t value)
{
    struct qcow2_state *s = img->priv;
    uint8_t *b;
    int ret = refblock(img, cluster / s->rb_entries, &b);

    if (ret == 0) {
        qcow2_refcount_set(b, cluster % s->rb_entries, s->h.refcount_order,
                           value);
        qcow2_cache_mark_dirty(s->rb_cache, b);
    }
    return ret;
}

/*
 * The refcount table is full: write a larger one (and the refcount blocks
 * that describe it) past the end of everything, then switch the header to
 * it.  The new blocks are planned to a fixed point, as in create.
 */
static int grow_reftable(struct vimg_image *img, uint64_t need_entries)
{
    struct qcow2_state *s = img->priv;
    const uint64_t per_cluster = s->cluster_size / 8;
    uint64_t entries = VIMG_MAX(need_entries, s->reftable_entries * 2);
    entries = VIMG_DIV_ROUND_UP(entries, per_cluster) * per_cluster;
    const uint64_t table_clusters = entries / per_cluster;
    if (table_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        return vimg_error(-EFBIG, "%s: the refcount table would exceed "
                                  "8 MiB",
                          img->filename);
    }
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    if (!table) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(table, s->reftable, s->reftable_entries * sizeof(uint64_t));

    /* [start, end): the new table, then any new refcount blocks */
    const uint64_t start = s->end_cluster;
    uint64_t end = start + table_clusters;
    for (bool again = true; again;) {
        again = false;
        for (uint64_t c = start; c < end; c++) {
            const uint64_t idx = c / s->rb_entries;
            if (idx >= entries) {
                free(table);
                return vimg_error(-EFBIG, "%s: refcount table too small",
                                  img->filename);
            }
            if (!table[idx]) {
                table[idx] = end * s->cluster_size;
                end++;
                again = true;
            }
        }
    }
    /* new blocks start as zeroes in the cache */
    for (uint64_t c = start + table_clusters; c < end; c++) {
        const uint8_t *b;
        if (meta_add(s, c) < 0) {
            free(table);
            return vimg_error(-ENOMEM, "out of memory");
        }
        int ret = qcow2_cache_get(s->rb_cache, c * s->cluster_size,
                                  zero_table, img, &b);
        if (ret < 0) {
            free(table);
            return ret;
        }
        qcow2_cache_mark_dirty(s->rb_cache, b);
    }
    const uint64_t old_offset = s->h.refcount_table_offset;
    const uint64_t old_clusters = s->h.refcount_table_clusters;
    free(s->reftable);
    s->reftable = table;
    s->reftable_entries = entries;
    s->end_cluster = end;
    int ret = 0;
    for (uint64_t c = start; c < end && ret == 0; c++) {
        ret = set_refcount(img, c, 1);
    }
    /* blocks and table durable, then the header points at the table */
    s->h.refcount_table_offset = start * s->cluster_size;
    s->h.refcount_table_clusters = (uint32_t)table_clusters;
    s->is_reftable_dirty = true;
    if (ret == 0) {
        ret = sync_refcounts(img);
    }
    if (ret == 0) {
        uint8_t hdr[12];
        store_be64(hdr, s->h.refcount_table_offset);
        store_be32(hdr + 8, s->h.refcount_table_clusters);
        ret = write_meta(img, QCOW2_HDR_REFTABLE_OFFSET, hdr, sizeof(hdr));
    }
    if (ret == 0) {
        ret = sync_files(img);
    }
    if (ret == 0) {
        ret = qcow2_free_clusters_later(img, old_offset, old_clusters);
    }
    return ret;
}

/* Clusters taken but not counted yet, which a new refcount block must
 * not land on: the run being allocated and blocks placed on the way. */
struct taken {
    uint64_t start, count;
    const struct taken *next;
};

static bool is_taken(const struct taken *t, uint64_t c)
{
    for (; t; t = t->next) {
        if (c >= t->start && c < t->start + t->count) {
            return true;
        }
    }
    return false;
}

/* Make sure refcount block RT_INDEX exists.  A new one goes in the range
 * it describes (so it counts itself), else past the end of everything. */
static int ensure_refblock_taken(struct vimg_image *img, uint64_t rt_index,
                                 const struct taken *taken)
{
    struct qcow2_state *s = img->priv;

    if (rt_index >= s->reftable_entries) {
        int ret = grow_reftable(img, rt_index + 1);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->reftable[rt_index] & QCOW2_REFT_OFFSET_MASK) {
        return 0;
    }
    /* Without a block no cluster of the range is in use: take the first
     * one not taken by the allocation in progress. */
    uint64_t c = rt_index * s->rb_entries;
    while (c == 0 || is_taken(taken, c)) {
        c++;
    }
    const bool is_self = c < (rt_index + 1) * s->rb_entries;
    int ret = is_self && c < s->end_cluster ? check_free_cluster(img, c) : 0;
    if (ret < 0) {
        return ret;
    }
    if (!is_self) {
        /* the whole range is being allocated: the block goes past the end
         * of everything and is counted by the block of its own range */
        c = VIMG_MAX(s->end_cluster, (rt_index + 1) * s->rb_entries);
        s->end_cluster = c + 1;
        const struct taken me = {c, 1, taken};
        ret = ensure_refblock_taken(img, c / s->rb_entries, &me);
        if (ret < 0) {
            return ret;
        }
    }
    const uint8_t *b;
    ret = qcow2_cache_get(s->rb_cache, c * s->cluster_size, zero_table, img,
                          &b);
    if (ret < 0) {
        return ret;
    }
    if (is_self) {
        qcow2_refcount_set((uint8_t *)b, c % s->rb_entries,
                           s->h.refcount_order, 1);
    }
    qcow2_cache_mark_dirty(s->rb_cache, b);
    s->reftable[rt_index] = c * s->cluster_size;
    s->is_reftable_dirty = true;
    s->end_cluster = VIMG_MAX(s->end_cluster, c + 1);
    ret = meta_add(s, c);
    if (ret < 0) {
        return ret;
    }
    return is_self ? 0 : set_refcount(img, c, 1);
}

static int ensure_refblock(struct vimg_image *img, uint64_t rt_index,
                           uint64_t avoid, uint64_t n)
{
    const struct taken run = {avoid, n, NULL};

    return ensure_refblock_taken(img, rt_index, &run);
}

int qcow2_alloc_clusters(struct vimg_image *img, uint64_t n,
                         uint64_t *offset_out)
{
    struct qcow2_state *s = img->priv;
    uint64_t run_start = s->free_cluster_index, run = 0;
    uint64_t first_free = UINT64_MAX;

    /* first fit from the hint; everything past end_cluster is free */
    for (uint64_t c = s->free_cluster_index;; c++) {
        if (c >= s->end_cluster) {
            if (run == 0) {
                run_start = c;
            }
            break;
        }
        uint64_t rc;
        int ret = qcow2_get_refcount_locked(img, c, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc != 0 || c == 0) {
            run = 0;
            continue;
        }
        first_free = VIMG_MIN(first_free, c);
        if (run++ == 0) {
            run_start = c;
        }
        if (run == n) {
            break;
        }
    }
    const uint64_t max_cluster = QCOW2_L2E_OFFSET_MASK >> s->cluster_bits;
    if (run_start + n > max_cluster) {
        return vimg_error(-ENOSPC, "%s: image file would exceed the largest "
                                   "qcow2 offset",
                          img->filename);
    }
    for (uint64_t c = run_start; c < VIMG_MIN(run_start + n, s->end_cluster);
         c++) {
        int ret = check_free_cluster(img, c);
        if (ret < 0) {
            return ret;
        }
    }
    /* claim the run first, so a growing refcount table goes after it */
    s->end_cluster = VIMG_MAX(s->end_cluster, run_start + n);
    for (uint64_t c = run_start; c < run_start + n; c++) {
        int ret = ensure_refblock(img, c / s->rb_entries, run_start, n);
        if (ret == 0) {
            ret = set_refcount(img, c, 1);
        }
        if (ret < 0) {
            return ret;
        }
    }
    /* no free cluster before the first one seen: next search starts
     * there (or after this run) */
    s->free_cluster_index =
        first_free < run_start ? first_free : run_start + n;
    s->end_cluster = VIMG_MAX(s->end_cluster, run_start + n);
    const uint64_t end_bytes = s->end_cluster << s->cluster_bits;
    if (end_bytes > s->file_size) {
        s->file_size = end_bytes; /* reads of it are no longer "past EOF" */
    }
    *offset_out = run_start << s->cluster_bits;
    return 0;
}

int qcow2_free_clusters_later(struct vimg_image *img, uint64_t offset,
                              uint64_t n)
{
    struct qcow2_state *s = img->priv;

    if (s->nb_pending == s->cap_pending) {
        size_t cap = s->cap_pending ? s->cap_pending * 2 : 64;
        void *p = realloc(s->pending, cap * sizeof(*s->pending));
        if (!p) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        s->pending = p;
        s->cap_pending = cap;
    }
    s->pending[s->nb_pending].cluster = cluster_of(s, offset);
    s->pending[s->nb_pending].count = n;
    s->nb_pending++;
    return 0;
}

/* Drop one reference from every host cluster a compressed cluster uses. */
static int free_compressed_later(struct vimg_image *img, uint64_t entry)
{
    struct qcow2_state *s = img->priv;
    const uint64_t coff = entry & s->csize_mask;
    const uint64_t nb_sectors =
        ((entry >> s->csize_shift) & ((1ull << (s->cluster_bits - 8)) - 1)) +
        1;
    const uint64_t last = coff + nb_sectors * 512 - (coff & 511) - 1;

    return qcow2_free_clusters_later(
        img, coff & ~(s->cluster_size - 1),
        cluster_of(s, last) - cluster_of(s, coff) + 1);
}

static int apply_pending_frees(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    for (size_t i = 0; i < s->nb_pending && ret == 0; i++) {
        for (uint64_t c = s->pending[i].cluster;
             c < s->pending[i].cluster + s->pending[i].count && ret == 0;
             c++) {
            uint64_t rc;
            ret = qcow2_get_refcount_locked(img, c, &rc);
            if (ret == 0 && rc == 0) {
                ret = qcow2_corrupt(img, "freeing cluster 0x%llx whose "
                                         "refcount is already 0",
                                    (unsigned long long)(c << s->cluster_bits));
            }
            if (ret == 0) {
                ret = set_refcount(img, c, rc - 1);
            }
            if (ret == 0 && rc == 1) {
                /* it may have been an L2 table: forget any cached copy */
                qcow2_cache_drop(s->l2_cache, c << s->cluster_bits);
                meta_remove(s, c);
                if (c < s->free_cluster_index) {
                    s->free_cluster_index = c;
                }
            }
        }
    }
    s->nb_pending = 0;
    return ret;
}

/* --------------------------------------------------------------- L2 */

/*
 * The L2 table for guest L1 index L1_INDEX, ready to be changed: allocated
 * if missing, copied if shared with a snapshot.  Returns its offset.
 */
static int l2_for_write(struct vimg_image *img, uint64_t l1_index,
                        uint64_t *l2_offset_out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t l1e = s->l1[l1_index];
    const uint64_t old = l1e & QCOW2_L1E_OFFSET_MASK;

    if (old && (l1e & QCOW2_OFLAG_COPIED)) {
        *l2_offset_out = old;
        return 0;
    }
    uint8_t *copy = NULL;
    int ret = 0;
    if (old) {
        /* Shared with a snapshot.  Data clusters already count one
         * reference per L1 table that reaches them (snapshot creation
         * raised them), so copying the table changes only the table's
         * own refcount. */
        const uint8_t *t;
        ret = qcow2_cache_get(s->l2_cache, old, load_table, img, &t);
        if (ret < 0) {
            return ret;
        }
        copy = malloc((size_t)s->cluster_size);
        if (!copy) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        memcpy(copy, t, (size_t)s->cluster_size);
    }
    uint64_t fresh;
    ret = qcow2_alloc_clusters(img, 1, &fresh);
    if (ret < 0) {
        free(copy);
        return ret;
    }
    const uint8_t *t;
    ret = qcow2_cache_get(s->l2_cache, fresh, zero_table, img, &t);
    if (ret == 0) {
        if (copy) {
            memcpy((uint8_t *)t, copy, (size_t)s->cluster_size);
        }
        qcow2_cache_mark_dirty(s->l2_cache, t);
        ret = meta_add(s, cluster_of(s, fresh));
        s->l1[l1_index] = fresh | QCOW2_OFLAG_COPIED;
        s->is_l1_dirty = true;
        if (old) {
            ret = qcow2_free_clusters_later(img, old, 1);
        }
    }
    free(copy);
    *l2_offset_out = fresh;
    return ret;
}

/* Read or store the (extended) L2 entry I of the table at L2_OFFSET. */
static int l2_entry(struct vimg_image *img, uint64_t l2_offset, size_t i,
                    uint64_t *entry, uint64_t *bitmap, bool is_store)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *t;
    int ret = qcow2_cache_get(s->l2_cache, l2_offset, load_table, img, &t);

    if (ret < 0) {
        return ret;
    }
    uint8_t *e = (uint8_t *)t + i * s->l2_entry_bytes;
    if (is_store) {
        store_be64(e, *entry);
        if (s->has_subclusters) {
            store_be64(e + 8, *bitmap);
        }
        qcow2_cache_mark_dirty(s->l2_cache, t);
    } else {
        *entry = load_be64(e);
        *bitmap = s->has_subclusters ? load_be64(e + 8) : 0;
    }
    return 0;
}

/* Drop the reference an L2 entry holds on its host cluster(s). */
static int release_entry(struct vimg_image *img, uint64_t entry)
{
    struct qcow2_state *s = img->priv;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        return free_compressed_later(img, entry);
    }
    if ((entry & QCOW2_L2E_OFFSET_MASK) && !s->has_data_file) {
        return qcow2_free_clusters_later(img, entry & QCOW2_L2E_OFFSET_MASK,
                                         1);
    }
    return 0;
}

/* Mark the image dirty before the first change (lazy refcounts). */
static int mark_dirty(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!s->is_lazy || (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    s->h.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    uint8_t b[8];
    store_be64(b, s->h.incompatible_features);
    int ret = write_meta(img, QCOW2_HDR_INCOMPAT, b, sizeof(b));
    return ret == 0 ? sync_files(img) : ret;
}

/* Refuse writes to an image found corrupt; before a metadata change
 * (IS_CHANGE) set the dirty bit of a lazy-refcount image. */
static int begin_change(struct vimg_image *img, bool is_change)
{
    struct qcow2_state *s = img->priv;

    if (s->is_broken) {
        return vimg_error(-EIO, "%s: image is marked corrupt; no more writes",
                          img->filename);
    }
    return is_change ? mark_dirty(img) : 0;
}

/* ------------------------------------------------------------- writes */

/*
 * Write [OFFSET, OFFSET+N) inside one guest cluster.  BUF NULL writes
 * zeroes as data.  The caller holds the lock.
 */
static int write_in_cluster(struct vimg_image *img, const uint8_t *buf,
                            size_t n, uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t cstart = offset & ~(cs - 1);
    const uint64_t in = offset - cstart;
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;
    const size_t i = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    uint8_t *cow = NULL;
    int ret;

    if (l1_index >= s->h.l1_size) {
        return vimg_error(-EIO, "%s: write beyond the L1 table",
                          img->filename);
    }
    uint64_t l2_off, entry, bitmap;
    ret = l2_for_write(img, l1_index, &l2_off);
    if (ret == 0) {
        ret = l2_entry(img, l2_off, i, &entry, &bitmap, false);
    }
    if (ret < 0) {
        return ret;
    }
    const bool is_compressed = entry & QCOW2_OFLAG_COMPRESSED;
    const bool has_host = !is_compressed &&
                          ((entry & QCOW2_L2E_OFFSET_MASK) ||
                           (s->has_data_file && (entry & QCOW2_OFLAG_COPIED)));
    const bool is_copied = (entry & QCOW2_OFLAG_COPIED) != 0;
    const uint64_t old_host = entry & QCOW2_L2E_OFFSET_MASK;

    /* What part of the cluster gets written: whole subclusters on
     * extended L2 images (the rest of a partial one is copied), the whole
     * cluster otherwise unless the host cluster is ours to change. */
    uint64_t w_start, w_end;
    if (s->has_subclusters && !is_compressed) {
        const uint64_t sc = cs / QCOW2_SUBCLUSTERS;
        w_start = in / sc * sc;
        w_end = VIMG_DIV_ROUND_UP(in + n, sc) * sc;
    } else if (has_host && is_copied &&
               !(entry & QCOW2_OFLAG_ZERO && !s->has_subclusters)) {
        w_start = in;
        w_end = in + n;
    } else if (s->has_data_file && has_host) {
        w_start = in;
        w_end = in + n;
    } else {
        w_start = 0;
        w_end = cs;
    }
    /* a ZERO_ALLOC host cluster we own: rewrite it whole (zeroes + data) */
    if (!s->has_subclusters && has_host && (entry & QCOW2_OFLAG_ZERO)) {
        w_start = 0;
        w_end = cs;
    }

    uint64_t host;
    if (s->has_data_file) {
        host = cstart; /* guest offset = data file offset */
    } else if (has_host && is_copied) {
        host = old_host;
    } else {
        ret = qcow2_alloc_clusters(img, 1, &host);
        if (ret < 0) {
            return ret;
        }
    }

    /* Build [w_start, w_end): the current guest content, then the data */
    const size_t len = (size_t)(w_end - w_start);
    const bool is_covered = w_start == in && w_end == in + n;
    cow = malloc(len);
    if (!cow) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (!is_covered) {
        ret = qcow2_read_range(img, cow, len, cstart + w_start, true);
        if (ret < 0) {
            goto out;
        }
    }
    if (buf) {
        memcpy(cow + (in - w_start), buf, n);
    } else {
        memset(cow + (in - w_start), 0, n);
    }
    /* a shared or compressed cluster moving to a new host: on extended
     * L2 images the other allocated subclusters come along */
    if (s->has_subclusters && !is_compressed && has_host && !is_copied &&
        !s->has_data_file) {
        uint8_t *whole = malloc((size_t)cs);
        if (!whole) {
            ret = vimg_error(-ENOMEM, "out of memory");
            goto out;
        }
        ret = vimg_io_pread(img->io, whole, (size_t)cs, old_host);
        if (ret == 0) {
            memcpy(whole + w_start, cow, len);
            ret = vimg_io_pwrite(s->data_io, whole, (size_t)cs, host);
        }
        free(whole);
    } else {
        ret = vimg_io_pwrite(s->data_io, cow, len, host + w_start);
    }
    if (ret < 0) {
        goto out;
    }
    s->is_unsynced = true;

    /* New L2 entry */
    uint64_t new_entry = (s->has_data_file && host == 0 ? 0 : host) |
                         QCOW2_OFLAG_COPIED;
    uint64_t new_bitmap = 0;
    if (s->has_subclusters) {
        const uint64_t sc = cs / QCOW2_SUBCLUSTERS;
        uint32_t touched = 0;
        for (uint64_t k = w_start / sc; k < w_end / sc; k++) {
            touched |= 1u << k;
        }
        if (is_compressed) {
            touched = 0xffffffffu; /* decompressed whole */
        }
        uint32_t alloc = (is_compressed ? 0 : (uint32_t)bitmap) | touched;
        uint32_t zero = (is_compressed ? 0 : (uint32_t)(bitmap >> 32)) &
                        ~touched;
        new_bitmap = (uint64_t)zero << 32 | alloc;
    }
    if (new_entry != entry || new_bitmap != bitmap) {
        ret = l2_entry(img, l2_off, i, &new_entry, &new_bitmap, true);
        if (ret == 0 && !is_copied && !s->has_data_file) {
            ret = release_entry(img, entry); /* old shared/compressed copy */
        }
    }
out:
    free(cow);
    return ret;
}

int qcow2_pwrite(struct vimg_image *img, const void *buf, size_t count,
                 uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *p = buf;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    ret = begin_change(img, false);
    if (ret == 0) {
        ret = qcow2_dirty_note_locked(img, offset, count);
    }
    while (ret == 0 && count > 0) {
        const uint64_t room = s->cluster_size - (offset & (s->cluster_size - 1));
        const size_t n = (size_t)VIMG_MIN((uint64_t)count, room);
        struct qcow2_mapping m;
        ret = s->nb_flush_waiters ? 1
                                  : qcow2_get_mapping_locked(img, offset, n, &m);
        if (ret == 0 && m.type == QCOW2_SC_NORMAL && m.is_copied &&
            m.length == n) {
            /* in place: no metadata changes, no lock during the I/O */
            s->nb_inflight++;
            pthread_mutex_unlock(&s->lock);
            ret = vimg_io_pwrite(s->data_io, p, n, m.host_offset);
            pthread_mutex_lock(&s->lock);
            s->is_unsynced = true;
            if (--s->nb_inflight == 0) {
                pthread_cond_broadcast(&s->inflight_done);
            }
        } else if (ret >= 0) {
            ret = mark_dirty(img);
            if (ret == 0) {
                ret = write_in_cluster(img, p, n, offset);
            }
        }
        p += n;
        offset += n;
        count -= n;
    }
    if (ret == -EIO && strstr(vimg_last_error(), "corrupt")) {
        s->is_broken = true;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Zero (or, IS_DISCARD, drop) whole cluster or whole subclusters of
 * [OFFSET, OFFSET+N) in one guest cluster, writing zero data where the
 * format cannot record zeroes. */
static int zero_in_cluster(struct vimg_image *img, size_t n, uint64_t offset,
                           bool is_unmap, bool is_discard)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t in = offset & (cs - 1);
    const bool has_backing = img->backing_name != NULL;
    const uint64_t unit = s->has_subclusters ? cs / QCOW2_SUBCLUSTERS : cs;

    /* partial units, raw data files and v2 images with a backing file
     * take zero data */
    if ((in % unit) || (n % unit) || s->is_data_file_raw ||
        (s->h.version < 3 && has_backing)) {
        return write_in_cluster(img, NULL, n, offset);
    }
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;
    const size_t i = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    /* nothing to do where it already reads as zeroes by itself */
    struct qcow2_mapping m;
    int ret = qcow2_get_mapping_locked(img, offset, n, &m);
    if (ret < 0) {
        return ret;
    }
    /* (an unallocated range without a backing file reads as zeroes too,
     * but writing zeroes records them, as qemu does: a backing file given
     * later, by rebase, must not show through) */
    if (m.length == n && (m.type == QCOW2_SC_ZERO_PLAIN ||
                          (m.type == QCOW2_SC_UNALLOCATED && !has_backing &&
                           is_discard))) {
        return 0;
    }
    uint64_t l2_off, entry, bitmap;
    ret = l2_for_write(img, l1_index, &l2_off);
    if (ret == 0) {
        ret = l2_entry(img, l2_off, i, &entry, &bitmap, false);
    }
    if (ret < 0) {
        return ret;
    }
    const bool is_compressed = entry & QCOW2_OFLAG_COMPRESSED;
    const bool is_copied = entry & QCOW2_OFLAG_COPIED;
    const bool has_host = !is_compressed &&
                          ((entry & QCOW2_L2E_OFFSET_MASK) ||
                           (s->has_data_file && is_copied));
    uint64_t new_entry, new_bitmap = 0;
    bool is_released = false;

    if (s->has_subclusters) {
        if (is_compressed && n != cs) {
            return write_in_cluster(img, NULL, n, offset);
        }
        uint32_t mask = 0;
        for (uint64_t k = in / unit; k < (in + n) / unit; k++) {
            mask |= 1u << k;
        }
        uint32_t alloc = is_compressed ? 0 : (uint32_t)bitmap & ~mask;
        uint32_t zero = is_compressed ? 0 : (uint32_t)(bitmap >> 32);
        if (is_discard && !has_backing) {
            zero &= ~mask; /* unallocated reads as zeroes */
        } else {
            zero |= mask;
        }
        new_entry = is_compressed ? 0 : entry;
        is_released = is_compressed;
        if (alloc == 0 && has_host && (is_unmap || is_discard) &&
            !s->has_data_file) {
            /* no allocated subcluster left: give the host cluster back */
            new_entry = 0;
            is_released = true;
        }
        new_bitmap = (uint64_t)zero << 32 | alloc;
    } else if (n != cs) {
        return write_in_cluster(img, NULL, n, offset);
    } else if (is_discard && !has_backing) {
        new_entry = 0;
        is_released = true;
    } else if (s->h.version < 3) {
        new_entry = 0; /* v2 without backing: unallocated reads zeroes */
        is_released = true;
    } else if (has_host && is_copied && !is_unmap) {
        new_entry = entry | QCOW2_OFLAG_ZERO; /* keep the preallocation */
    } else {
        new_entry = QCOW2_OFLAG_ZERO;
        is_released = true;
    }
    ret = l2_entry(img, l2_off, i, &new_entry, &new_bitmap, true);
    if (ret == 0 && is_released && !s->has_data_file) {
        ret = release_entry(img, entry);
    }
    return ret;
}

static int zero_range(struct vimg_image *img, uint64_t offset,
                      uint64_t count, bool is_unmap, bool is_discard)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    ret = begin_change(img, true);
    if (ret == 0) {
        ret = qcow2_dirty_note_locked(img, offset, count);
    }
    while (ret == 0 && count > 0) {
        const uint64_t room = s->cluster_size - (offset & (s->cluster_size - 1));
        const size_t n = (size_t)VIMG_MIN(count, room);
        ret = zero_in_cluster(img, n, offset, is_unmap, is_discard);
        offset += n;
        count -= n;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_write_zeroes(struct vimg_image *img, uint64_t offset,
                       uint64_t count, unsigned flags)
{
    return zero_range(img, offset, count, flags & VIMG_ZERO_MAY_UNMAP, false);
}

int qcow2_discard(struct vimg_image *img, uint64_t offset, uint64_t count)
{
    return zero_range(img, offset, count, true, true);
}

/* ------------------------------------------------------- flush, open */

static int flush_locked(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    /* in-place writes in flight finish first: they are part of what is
     * flushed, and their clusters must not be freed under them */
    s->nb_flush_waiters++;
    while (s->nb_inflight) {
        pthread_cond_wait(&s->inflight_done, &s->lock);
    }
    s->nb_flush_waiters--;

    /* data and refcounts, then L2 tables, then L1, then frees */
    int ret = sync_refcounts(img);
    if (ret == 0) {
        ret = qcow2_cache_flush(s->l2_cache);
    }
    if (ret == 0 && s->is_l1_dirty) {
        ret = sync_files(img);
        const size_t bytes = (size_t)s->h.l1_size * 8;
        uint8_t *buf = ret == 0 ? malloc(bytes ? bytes : 1) : NULL;
        if (ret == 0 && !buf) {
            ret = vimg_error(-ENOMEM, "out of memory");
        }
        if (ret == 0) {
            for (uint32_t k = 0; k < s->h.l1_size; k++) {
                store_be64(buf + k * 8, s->l1[k]);
            }
            ret = write_meta(img, s->h.l1_table_offset, buf, bytes);
        }
        free(buf);
        if (ret == 0) {
            s->is_l1_dirty = false;
        }
    }
    if (ret == 0 && s->is_unsynced) {
        ret = sync_files(img);
    }
    if (ret == 0 && s->nb_pending) {
        ret = apply_pending_frees(img);
        if (ret == 0) {
            ret = sync_refcounts(img);
        }
    }
    return ret;
}

int qcow2_flush(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    pthread_mutex_lock(&s->lock);
    int ret = flush_locked(img);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_open_write(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return vimg_error(-EIO,
                          "%s: image is dirty (lazy refcounts, not closed "
                          "cleanly); repair it with 'vimg check -r all' "
                          "before writing",
                          img->filename);
    }
    s->is_lazy = s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    s->rb_entries = (s->cluster_size * 8) >> s->h.refcount_order;
    s->reftable_entries =
        ((uint64_t)s->h.refcount_table_clusters << s->cluster_bits) / 8;
    s->reftable = calloc(s->reftable_entries, sizeof(uint64_t));
    if (!s->reftable) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, s->reftable,
                            (size_t)s->reftable_entries * 8,
                            s->h.refcount_table_offset);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        s->reftable[i] = load_be64((const uint8_t *)&s->reftable[i]);
        const uint64_t rb = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if ((rb & (s->cluster_size - 1)) || rb >= s->file_size) {
            return qcow2_corrupt(img, "refcount table entry %llu (0x%llx) "
                                      "is invalid",
                                 (unsigned long long)i,
                                 (unsigned long long)rb);
        }
    }
    size_t slots = RB_CACHE_BYTES >> s->cluster_bits;
    slots = VIMG_MAX(slots, (size_t)8);
    s->rb_cache = qcow2_cache_new((size_t)s->cluster_size, slots);
    if (!s->rb_cache) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    qcow2_cache_set_writeback(s->rb_cache, rb_writeback, img);
    qcow2_cache_set_writeback(s->l2_cache, l2_writeback, img);
    s->end_cluster = VIMG_DIV_ROUND_UP(s->file_size, s->cluster_size);
    s->free_cluster_index = 1;
    ret = qcow2_clear_unknown_autoclear(img);
    return ret < 0 ? ret : qcow2_dirty_open(img);
}

int qcow2_clear_unknown_autoclear(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const uint64_t known =
        QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    uint8_t b[8];

    if (s->h.version < 3 || !(s->h.autoclear_features & ~known)) {
        return 0;
    }
    store_be64(b, s->h.autoclear_features & known);
    int ret = vimg_io_pwrite(img->io, b, sizeof(b), QCOW2_HDR_AUTOCLEAR);
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret < 0) {
        return vimg_error(ret, "%s: cannot clear the unknown autoclear "
                               "feature bits: %s",
                          img->filename, vimg_last_error());
    }
    s->h.autoclear_features &= known;
    return 0;
}

void qcow2_close_write(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!s->rb_cache) {
        free(s->reftable); /* open_write may have failed half-way */
        s->reftable = NULL;
        qcow2_dirty_free(img);
        return;
    }
    pthread_mutex_lock(&s->lock);
    /* bitmaps that cannot be stored stay in use (inconsistent) */
    int ret = s->is_broken ? -EIO : qcow2_dirty_store_locked(img);
    if (ret == 0) {
        ret = flush_locked(img);
    }
    if (ret == 0 && s->is_lazy &&
        (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        /* clean close: the refcounts are right again */
        s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
        uint8_t b[8];
        store_be64(b, s->h.incompatible_features);
        ret = write_meta(img, QCOW2_HDR_INCOMPAT, b, sizeof(b));
        if (ret == 0) {
            sync_files(img);
        }
    }
    pthread_mutex_unlock(&s->lock);
    qcow2_cache_free(s->rb_cache);
    s->rb_cache = NULL;
    free(s->reftable);
    free(s->pending);
    free(s->meta);
    qcow2_dirty_free(img);
}

/* ------------------------------------------------- compressed clusters */

uint32_t qcow2_cluster_size(struct vimg_image *img)
{
    return (uint32_t)((struct qcow2_state *)img->priv)->cluster_size;
}

int qcow2_compress_cluster(struct vimg_image *img, const void *data,
                           size_t len, void *out, size_t out_cap)
{
    struct qcow2_state *s = img->priv;
    const size_t cs = (size_t)s->cluster_size;
    const uint8_t *in = data;
    uint8_t *padded = NULL;

    if (len < cs) {
        /* the last cluster of an odd-sized disk: zero padding */
        padded = calloc(1, cs);
        if (!padded) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        memcpy(padded, data, len);
        in = padded;
    }
    /* worth it only if it saves at least a byte of the cluster */
    const size_t cap = VIMG_MIN(out_cap, cs - 1);
    int ret = s->h.compression_type == QCOW2_COMPRESSION_ZSTD
                  ? vimg_zstd_compress(in, cs, out, cap)
                  : vimg_deflate_raw(in, cs, out, cap);
    free(padded);
    return ret;
}

/*
 * Room for LEN compressed bytes: packed after the previous compressed
 * cluster when they fit in its host cluster (or the clusters right after
 * it are free), else in new clusters.  Every host cluster the bytes touch
 * gains one reference.
 */
static int alloc_bytes(struct vimg_image *img, size_t len,
                       uint64_t *offset_out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    uint64_t off = s->free_byte_offset;
    int ret;

    if (off && (off & (cs - 1))) {
        const uint64_t first = cluster_of(s, off);
        const uint64_t last = cluster_of(s, off + len - 1);
        bool is_free = true;
        for (uint64_t c = first + 1; c <= last && is_free; c++) {
            uint64_t rc;
            ret = qcow2_get_refcount_locked(img, c, &rc);
            if (ret < 0) {
                return ret;
            }
            is_free = rc == 0;
        }
        if (is_free) {
            uint64_t rc;
            ret = qcow2_get_refcount_locked(img, first, &rc);
            if (ret == 0) {
                ret = set_refcount(img, first, rc + 1);
            }
            for (uint64_t c = first + 1; c <= last && ret == 0; c++) {
                ret = ensure_refblock(img, c / s->rb_entries, c, 1);
                if (ret == 0) {
                    ret = set_refcount(img, c, 1);
                }
            }
            if (ret < 0) {
                return ret;
            }
            s->end_cluster = VIMG_MAX(s->end_cluster, last + 1);
            if (s->free_cluster_index <= last) {
                s->free_cluster_index = last + 1;
            }
            *offset_out = off;
            s->free_byte_offset = off + len;
            return 0;
        }
    }
    ret = qcow2_alloc_clusters(img, VIMG_DIV_ROUND_UP(len, cs), &off);
    if (ret < 0) {
        return ret;
    }
    *offset_out = off;
    s->free_byte_offset = off + len;
    return 0;
}

int qcow2_pwrite_compressed(struct vimg_image *img, const void *data,
                            size_t len, uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    if (s->has_data_file) {
        return vimg_error(-ENOTSUP, "%s: compressed clusters cannot live in "
                                    "an external data file",
                          img->filename);
    }
    pthread_mutex_lock(&s->lock);
    ret = begin_change(img, true);
    if (ret == 0) {
        /* LEN is the compressed size: the whole guest cluster changes */
        ret = qcow2_dirty_note_locked(img, offset, s->cluster_size);
    }
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;
    const size_t i = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    uint64_t l2_off, entry, bitmap, host = 0;
    if (ret == 0) {
        ret = l2_for_write(img, l1_index, &l2_off);
    }
    if (ret == 0) {
        ret = l2_entry(img, l2_off, i, &entry, &bitmap, false);
    }
    if (ret == 0) {
        ret = alloc_bytes(img, len, &host);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(img->io, data, len, host);
        s->is_unsynced = true;
    }
    if (ret == 0) {
        /* descriptor: offset, then the number of extra 512-byte sectors */
        const uint64_t sectors = (host + len - 1) / 512 - host / 512;
        uint64_t new_entry = QCOW2_OFLAG_COMPRESSED | host |
                             (sectors << s->csize_shift);
        uint64_t new_bitmap = 0;
        ret = l2_entry(img, l2_off, i, &new_entry, &new_bitmap, true);
        if (ret == 0) {
            ret = release_entry(img, entry); /* whatever was there */
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ------------------------------------------------------------- resize */

/* Drop every cluster at or after FIRST_CLUSTER (guest) from the tables. */
static int drop_clusters_from(struct vimg_image *img, uint64_t first_cluster)
{
    struct qcow2_state *s = img->priv;
    const uint64_t per_table = 1ull << s->l2_bits;
    int ret = 0;

    for (uint64_t l1i = first_cluster / per_table;
         l1i < s->h.l1_size && ret == 0; l1i++) {
        if (!(s->l1[l1i] & QCOW2_L1E_OFFSET_MASK)) {
            continue;
        }
        uint64_t l2_off;
        ret = l2_for_write(img, l1i, &l2_off);
        const uint64_t from = l1i == first_cluster / per_table
                                  ? first_cluster % per_table
                                  : 0;
        for (uint64_t i = from; i < per_table && ret == 0; i++) {
            uint64_t entry, bitmap;
            ret = l2_entry(img, l2_off, (size_t)i, &entry, &bitmap, false);
            if (ret < 0 || (entry == 0 && bitmap == 0)) {
                continue;
            }
            uint64_t zero = 0, zero_bitmap = 0;
            ret = l2_entry(img, l2_off, (size_t)i, &zero, &zero_bitmap, true);
            if (ret == 0 && !s->has_data_file) {
                ret = release_entry(img, entry);
            }
        }
    }
    return ret;
}

/* Replace the L1 table by one of NEW_SIZE entries at a new place. */
static int grow_l1(struct vimg_image *img, uint64_t new_entries)
{
    struct qcow2_state *s = img->priv;
    const uint64_t bytes = new_entries * 8;

    if (bytes > QCOW2_MAX_L1_BYTES) {
        return vimg_error(-EFBIG, "%s: the L1 table would exceed 32 MiB",
                          img->filename);
    }
    uint64_t *l1 = calloc(new_entries, sizeof(uint64_t));
    uint8_t *buf = calloc(1, (size_t)bytes);
    int ret = 0;
    if (!l1 || !buf) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    memcpy(l1, s->l1, (size_t)s->h.l1_size * 8);
    /* everything the new table points at is durable first */
    ret = flush_locked(img);
    uint64_t off = 0;
    if (ret == 0) {
        ret = qcow2_alloc_clusters(img,
                                   VIMG_DIV_ROUND_UP(bytes, s->cluster_size),
                                   &off);
    }
    if (ret == 0) {
        for (uint64_t i = 0; i < new_entries; i++) {
            store_be64(buf + i * 8, l1[i]);
        }
        ret = write_meta(img, off, buf, (size_t)bytes);
    }
    if (ret == 0) {
        ret = sync_refcounts(img);
    }
    bool is_switched = false;
    if (ret == 0) {
        uint8_t hdr[12];
        store_be32(hdr, (uint32_t)new_entries);
        store_be64(hdr + 4, off);
        ret = write_meta(img, QCOW2_HDR_L1_SIZE, hdr, sizeof(hdr));
        is_switched = ret == 0;
    }
    if (ret == 0) {
        ret = sync_files(img);
    }
    if (ret < 0 && !is_switched && off) {
        /* the header still names the old table: the new one's clusters
         * go back, so a failed resize leaks nothing */
        for (uint64_t c = off / s->cluster_size;
             c < VIMG_DIV_ROUND_UP(off + bytes, s->cluster_size); c++) {
            qcow2_set_refcount(img, c, 0);
        }
        if (s->free_cluster_index > off / s->cluster_size) {
            s->free_cluster_index = off / s->cluster_size;
        }
    }
    if (is_switched) {
        const uint64_t old_off = s->h.l1_table_offset;
        const uint64_t old_clusters =
            VIMG_DIV_ROUND_UP((uint64_t)s->h.l1_size * 8, s->cluster_size);
        free(s->l1);
        s->l1 = l1;
        l1 = NULL;
        s->h.l1_size = (uint32_t)new_entries;
        s->h.l1_table_offset = off;
        if (old_off && old_clusters) {
            const int err =
                qcow2_free_clusters_later(img, old_off, old_clusters);
            ret = ret < 0 ? ret : err;
        }
    }
out:
    free(l1);
    free(buf);
    return ret;
}

int qcow2_resize(struct vimg_image *img, uint64_t new_size,
                 const char *preallocation, unsigned flags)
{
    struct qcow2_state *s = img->priv;
    const uint64_t old = s->h.size;
    const uint64_t cs = s->cluster_size;
    int ret = 0;

    if (new_size % 512) {
        return vimg_error(-EINVAL, "%s: the new size must be a multiple of "
                                   "512",
                          img->filename);
    }
    enum qcow2_prealloc mode;
    ret = qcow2_prealloc_parse(preallocation, &mode);
    if (ret < 0) {
        return ret;
    }
    if (mode != QCOW2_PREALLOC_OFF && new_size <= old) {
        return vimg_error(-EINVAL, "Preallocation can only be used for "
                                   "growing images");
    }
    if (mode == QCOW2_PREALLOC_METADATA && s->h.version < 3 &&
        img->backing && img->backing->size > old) {
        /* qemu cannot zero the new clusters over the backing file */
        return vimg_error(-ENOTSUP, "Failed to zero out new clusters: "
                                    "Operation not supported");
    }
    if (s->h.version < 3 && s->nb_snapshots) {
        return vimg_error(-ENOTSUP, "%s: Can't resize a v2 image which has "
                                    "snapshots",
                          img->filename);
    }
    if (new_size > QCOW2_MAX_VIRTUAL_SIZE) {
        return vimg_error(-EFBIG, "%s: size too large", img->filename);
    }
    pthread_mutex_lock(&s->lock);
    ret = begin_change(img, true);
    if (ret == 0) {
        /* bitmaps follow the new size (qemu: refused if inconsistent) */
        ret = qcow2_dirty_resize_begin_locked(img);
    }
    if (ret == 0 && new_size < old) {
        /* the part of the new last cluster past the end reads as zeroes
         * if the image grows again; the clusters after it are released */
        const uint64_t cut = VIMG_DIV_ROUND_UP(new_size, cs) * cs;
        if (cut > new_size && cut <= old) {
            ret = zero_in_cluster(img, (size_t)(cut - new_size), new_size,
                                  false, false);
        }
        if (ret == 0) {
            ret = drop_clusters_from(img, cut / cs);
        }
    }
    if (ret == 0 && new_size > old) {
        const uint64_t per_l1 = (1ull << s->l2_bits) * cs;
        const uint64_t need = VIMG_DIV_ROUND_UP(new_size, per_l1);
        if (need > s->h.l1_size) {
            ret = grow_l1(img, need);
        }
        /* stale bytes past the old end in its last cluster must not show */
        const uint64_t tail_end = VIMG_MIN(new_size,
                                           VIMG_DIV_ROUND_UP(old, cs) * cs);
        bool must_zero = tail_end > old;
        if (ret == 0 && must_zero && mode != QCOW2_PREALLOC_OFF) {
            /* qemu leaves that part alone when preallocating: do not
             * write it if it already reads as zeroes */
            const int is_zero =
                qcow2_prealloc_is_zero_locked(img, old, tail_end - old);
            ret = is_zero < 0 ? is_zero : 0;
            must_zero = is_zero == 0;
        }
        if (ret == 0 && must_zero) {
            ret = zero_in_cluster(img, (size_t)(tail_end - old), old, false,
                                  false);
        }
        if (ret == 0 && mode != QCOW2_PREALLOC_OFF) {
            ret = qcow2_prealloc_grow_locked(img, old, new_size, mode);
            if (ret < 0) {
                /* the size stays: what was mapped past the old end goes
                 * back, so the image checks clean */
                char msg[512];
                snprintf(msg, sizeof(msg), "%s", vimg_last_error());
                drop_clusters_from(img, VIMG_DIV_ROUND_UP(old, cs));
                vimg_error(ret, "%s", msg);
            }
        }
    }
    if (ret == 0) {
        ret = flush_locked(img);
    }
    if (ret == 0) {
        uint8_t b[8];
        store_be64(b, new_size);
        ret = write_meta(img, QCOW2_HDR_SIZE, b, sizeof(b));
    }
    if (ret == 0) {
        ret = sync_files(img);
    }
    if (ret == 0) {
        s->h.size = new_size;
        img->size = new_size;
        ret = qcow2_dirty_resize_end_locked(img, new_size);
        if (ret == 0 && s->has_data_file && s->data_io &&
            s->data_size < new_size) {
            ret = vimg_io_truncate(s->data_io, new_size);
            s->data_size = new_size;
        }
    }
    pthread_mutex_unlock(&s->lock);
    (void)flags;
    return ret;
}

/* ------------------------------------- helpers for qcow2-prealloc.c */

int qcow2_flush_locked(struct vimg_image *img)
{
    return flush_locked(img);
}

int qcow2_sync_refcounts(struct vimg_image *img)
{
    return sync_refcounts(img);
}

int qcow2_write_meta(struct vimg_image *img, uint64_t file_offset,
                     const void *buf, size_t len)
{
    return write_meta(img, file_offset, buf, len);
}

int qcow2_sync_files(struct vimg_image *img)
{
    return sync_files(img);
}

int qcow2_set_refcount(struct vimg_image *img, uint64_t cluster,
                       uint64_t value)
{
    return set_refcount(img, cluster, value);
}

int qcow2_new_refblock(struct vimg_image *img, uint64_t cluster)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *b;
    int ret = meta_add(s, cluster);

    if (ret == 0) {
        ret = qcow2_cache_get(s->rb_cache, cluster << s->cluster_bits,
                              zero_table, img, &b);
    }
    if (ret == 0) {
        qcow2_cache_mark_dirty(s->rb_cache, b);
    }
    return ret;
}

int qcow2_add_l2_table(struct vimg_image *img, uint64_t cluster)
{
    return meta_add(img->priv, cluster);
}

int qcow2_l2_for_write(struct vimg_image *img, uint64_t l1_index,
                       uint64_t *l2_offset_out)
{
    return l2_for_write(img, l1_index, l2_offset_out);
}

int qcow2_l2_entry(struct vimg_image *img, uint64_t l2_offset, size_t i,
                   uint64_t *entry, uint64_t *bitmap, bool is_store)
{
    return l2_entry(img, l2_offset, i, entry, bitmap, is_store);
}

int qcow2_release_entry(struct vimg_image *img, uint64_t entry)
{
    return release_entry(img, entry);
}

int qcow2_begin_change(struct vimg_image *img)
{
    return begin_change(img, true);
}

int qcow2_load_l2(struct vimg_image *img, uint64_t off, const uint8_t **out)
{
    struct qcow2_state *s = img->priv;

    return qcow2_cache_get(s->l2_cache, off, load_table, img, out);
}

int qcow2_grow_l1(struct vimg_image *img, uint64_t new_entries)
{
    return grow_l1(img, new_entries);
}

/*
 * The refcount structure was replaced on disk (amend refcount_bits): drop
 * everything cached about the old one and load the new one as open does.
 * Nothing may be dirty (flush first); the caller holds the lock and has
 * set s->h to the new header.
 */
int qcow2_reload_refcounts(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    qcow2_cache_free(s->rb_cache);
    s->rb_cache = NULL;
    free(s->reftable);
    s->reftable = NULL;
    free(s->meta);
    s->meta = NULL;
    s->nb_meta = s->cap_meta = 0;
    s->has_meta_index = false;
    s->nb_pending = 0;
    s->free_byte_offset = 0;
    if (s->file_size < s->end_cluster << s->cluster_bits) {
        s->file_size = s->end_cluster << s->cluster_bits;
    }
    /* a lazy image we made dirty ourselves is fine */
    const uint64_t dirty = s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY;
    s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    int ret = qcow2_open_write(img);
    s->h.incompatible_features |= dirty;
    return ret;
}
