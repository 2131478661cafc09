/* SPDX-License-Identifier: MIT */
/*
 * qcow2-l2-update.c: changes to the active L1 and L2 tables (qcow2.txt,
 * "Cluster mapping"): an L2 table made ready for a change (allocated, or
 * copied when it is shared with a snapshot), entries read and stored
 * through the L2 cache, clusters dropped from the tables, and the L1
 * table moved to a larger one.
 *
 * Changed L2 tables stay dirty in the cache; they reach the disk after
 * the data and refcounts they point at (qcow2-flush.c).  The caller holds
 * the driver lock.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

int qcow2_load_l2(struct vimg_image *img, uint64_t off, const uint8_t **out)
{
    struct qcow2_state *s = img->priv;

    return qcow2_cache_get(s->l2_cache, off, qcow2_load_table, img, out);
}

/*
 * The L2 table for guest L1 index L1_INDEX, ready to be changed: allocated
 * if missing, copied if shared with a snapshot.  Returns its offset.
 */
int qcow2_l2_for_write(struct vimg_image *img, uint64_t l1_index,
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
        ret = qcow2_load_l2(img, old, &t);
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
    ret = qcow2_cache_get(s->l2_cache, fresh, qcow2_zero_table, img, &t);
    if (ret == 0) {
        if (copy) {
            memcpy((uint8_t *)t, copy, (size_t)s->cluster_size);
        }
        qcow2_cache_mark_dirty(s->l2_cache, t);
        ret = qcow2_meta_add(img, fresh >> s->cluster_bits);
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
int qcow2_l2_entry(struct vimg_image *img, uint64_t l2_offset, size_t i,
                   uint64_t *entry, uint64_t *bitmap, bool is_store)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *t;
    int ret = qcow2_load_l2(img, l2_offset, &t);

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

/* Drop every cluster at or after FIRST_CLUSTER (guest) from the tables. */
int qcow2_drop_clusters_from(struct vimg_image *img, uint64_t first_cluster)
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
        ret = qcow2_l2_for_write(img, l1i, &l2_off);
        const uint64_t from = l1i == first_cluster / per_table
                                  ? first_cluster % per_table
                                  : 0;
        for (uint64_t i = from; i < per_table && ret == 0; i++) {
            uint64_t entry, bitmap;
            ret = qcow2_l2_entry(img, l2_off, (size_t)i, &entry, &bitmap,
                                 false);
            if (ret < 0 || (entry == 0 && bitmap == 0)) {
                continue;
            }
            uint64_t zero = 0, zero_bitmap = 0;
            ret = qcow2_l2_entry(img, l2_off, (size_t)i, &zero, &zero_bitmap,
                                 true);
            if (ret == 0 && !s->has_data_file) {
                ret = qcow2_release_entry(img, entry);
            }
        }
    }
    return ret;
}

/* Replace the L1 table by one of NEW_SIZE entries at a new place. */
int qcow2_grow_l1(struct vimg_image *img, uint64_t new_entries)
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
    ret = qcow2_flush_locked(img);
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
        ret = qcow2_write_meta(img, off, buf, (size_t)bytes);
    }
    if (ret == 0) {
        ret = qcow2_sync_refcounts(img);
    }
    bool is_switched = false;
    if (ret == 0) {
        uint8_t hdr[12];
        store_be32(hdr, (uint32_t)new_entries);
        store_be64(hdr + 4, off);
        ret = qcow2_write_meta(img, QCOW2_HDR_L1_SIZE, hdr, sizeof(hdr));
        is_switched = ret == 0;
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
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
