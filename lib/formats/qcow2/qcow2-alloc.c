/* SPDX-License-Identifier: MIT */
/*
 * qcow2-alloc.c: host cluster allocation and refcount updates (qcow2.txt,
 * "Host cluster management"): refcounts of every width through the
 * refcount block cache, new refcount blocks that describe themselves, a
 * refcount table that grows by moving, first-fit allocation of cluster
 * runs and of bytes for compressed clusters, and frees deferred until the
 * L2/L1 changes that dropped the references are durable.
 *
 * Every allocation passes the overlap check (qcow2-overlap.c) first.  The
 * caller holds the driver lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

static uint64_t cluster_of(const struct qcow2_state *s, uint64_t off)
{
    return off >> s->cluster_bits;
}

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
    int ret = qcow2_cache_get(s->rb_cache, off, qcow2_load_table, img, &b);
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
int qcow2_set_refcount(struct vimg_image *img, uint64_t cluster,
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

int qcow2_reftable_copy(struct vimg_image *img, uint64_t entries,
                        uint64_t **out)
{
    struct qcow2_state *s = img->priv;

    *out = NULL;
    if (entries / (s->cluster_size / 8) * s->cluster_size >
        QCOW2_MAX_REFTABLE_BYTES) {
        return vimg_error(-EFBIG, "%s: the refcount table would exceed "
                                  "8 MiB",
                          img->filename);
    }
    uint64_t *table = calloc(entries, sizeof(uint64_t));
    if (!table) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(table, s->reftable,
           (size_t)VIMG_MIN(entries, s->reftable_entries) * 8);
    *out = table;
    return 0;
}

/*
 * Give every refcount block that [START, *END) needs an entry in TABLE
 * (ENTRIES long), placing new blocks at *END and moving it past them:
 * the new blocks must be counted too, so repeat until nothing is added.
 */
static int place_new_refblocks(struct vimg_image *img, uint64_t *table,
                               uint64_t entries, uint64_t start,
                               uint64_t *end)
{
    struct qcow2_state *s = img->priv;

    for (bool again = true; again;) {
        again = false;
        for (uint64_t c = start; c < *end; c++) {
            const uint64_t idx = c / s->rb_entries;
            if (idx >= entries) {
                return vimg_error(-EFBIG, "%s: refcount table too small",
                                  img->filename);
            }
            if (!table[idx]) {
                table[idx] = *end * s->cluster_size;
                (*end)++;
                again = true;
            }
        }
    }
    return 0;
}

int qcow2_write_reftable_pointer(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    uint8_t hdr[12];

    store_be64(hdr, s->h.refcount_table_offset);
    store_be32(hdr + 8, s->h.refcount_table_clusters);
    return qcow2_write_meta(img, QCOW2_HDR_REFTABLE_OFFSET, hdr,
                            sizeof(hdr));
}

/*
 * s->reftable and s->h name the new refcount table, whose blocks count
 * it: make them durable, then point the header at the table, then free
 * the old one (OLD_CLUSTERS at OLD_OFFSET).
 */
static int switch_reftable(struct vimg_image *img, uint64_t old_offset,
                           uint64_t old_clusters)
{
    int ret = qcow2_sync_refcounts(img);

    if (ret == 0) {
        ret = qcow2_write_reftable_pointer(img);
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret == 0) {
        ret = qcow2_free_clusters_later(img, old_offset, old_clusters);
    }
    return ret;
}

/*
 * The refcount table is full: write a larger one (and the refcount blocks
 * that describe it) past the end of everything, then switch the header to
 * it.
 */
static int grow_reftable(struct vimg_image *img, uint64_t need_entries)
{
    struct qcow2_state *s = img->priv;
    const uint64_t per_cluster = s->cluster_size / 8;
    uint64_t entries = VIMG_MAX(need_entries, s->reftable_entries * 2);
    entries = VIMG_DIV_ROUND_UP(entries, per_cluster) * per_cluster;
    const uint64_t table_clusters = entries / per_cluster;
    uint64_t *table;
    int ret = qcow2_reftable_copy(img, entries, &table);
    if (ret < 0) {
        return ret;
    }

    /* [start, end): the new table, then any new refcount blocks */
    const uint64_t start = s->end_cluster;
    uint64_t end = start + table_clusters;
    ret = place_new_refblocks(img, table, entries, start, &end);
    /* new blocks start as zeroes in the cache */
    for (uint64_t c = start + table_clusters; c < end && ret == 0; c++) {
        ret = qcow2_new_refblock(img, c);
    }
    if (ret < 0) {
        free(table);
        return ret;
    }
    const uint64_t old_offset = s->h.refcount_table_offset;
    const uint64_t old_clusters = s->h.refcount_table_clusters;
    free(s->reftable);
    s->reftable = table;
    s->reftable_entries = entries;
    s->end_cluster = end;
    for (uint64_t c = start; c < end && ret == 0; c++) {
        ret = qcow2_set_refcount(img, c, 1);
    }
    s->h.refcount_table_offset = start * s->cluster_size;
    s->h.refcount_table_clusters = (uint32_t)table_clusters;
    s->is_reftable_dirty = true;
    return ret == 0 ? switch_reftable(img, old_offset, old_clusters) : ret;
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
    int ret = is_self && c < s->end_cluster
                  ? qcow2_check_free_cluster(img, c)
                  : 0;
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
    ret = qcow2_cache_get(s->rb_cache, c * s->cluster_size, qcow2_zero_table,
                          img, &b);
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
    ret = qcow2_meta_add(img, c);
    if (ret < 0) {
        return ret;
    }
    return is_self ? 0 : qcow2_set_refcount(img, c, 1);
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
        int ret = qcow2_check_free_cluster(img, c);
        if (ret < 0) {
            return ret;
        }
    }
    /* claim the run first, so a growing refcount table goes after it */
    s->end_cluster = VIMG_MAX(s->end_cluster, run_start + n);
    for (uint64_t c = run_start; c < run_start + n; c++) {
        int ret = ensure_refblock(img, c / s->rb_entries, run_start, n);
        if (ret == 0) {
            ret = qcow2_set_refcount(img, c, 1);
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

int qcow2_apply_pending_frees(struct vimg_image *img)
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
                ret = qcow2_set_refcount(img, c, rc - 1);
            }
            if (ret == 0 && rc == 1) {
                /* it may have been an L2 table: forget any cached copy */
                qcow2_cache_drop(s->l2_cache, c << s->cluster_bits);
                qcow2_meta_remove(img, c);
                if (c < s->free_cluster_index) {
                    s->free_cluster_index = c;
                }
            }
        }
    }
    s->nb_pending = 0;
    return ret;
}

int qcow2_new_refblock(struct vimg_image *img, uint64_t cluster)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *b;
    int ret = qcow2_meta_add(img, cluster);

    if (ret == 0) {
        ret = qcow2_cache_get(s->rb_cache, cluster << s->cluster_bits,
                              qcow2_zero_table, img, &b);
    }
    if (ret == 0) {
        qcow2_cache_mark_dirty(s->rb_cache, b);
    }
    return ret;
}

/* Drop the reference an L2 entry holds on its host cluster(s). */
int qcow2_release_entry(struct vimg_image *img, uint64_t entry)
{
    struct qcow2_state *s = img->priv;
    uint64_t first, n;

    qcow2_l2_entry_clusters(s, entry, &first, &n);
    return n ? qcow2_free_clusters_later(img, first << s->cluster_bits, n)
             : 0;
}

/*
 * Room for LEN compressed bytes: packed after the previous compressed
 * cluster when they fit in its host cluster (or the clusters right after
 * it are free), else in new clusters.  Every host cluster the bytes touch
 * gains one reference.
 */
int qcow2_alloc_bytes(struct vimg_image *img, size_t len,
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
                ret = qcow2_set_refcount(img, first, rc + 1);
            }
            for (uint64_t c = first + 1; c <= last && ret == 0; c++) {
                ret = ensure_refblock(img, c / s->rb_entries, c, 1);
                if (ret == 0) {
                    ret = qcow2_set_refcount(img, c, 1);
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
