/* SPDX-License-Identifier: MIT */
/*
 * qcow2-overlap.c: the overlap check.
 *
 * Before a cluster is handed out, make sure it is not metadata (qemu's
 * "overlap check"): refcounts that are too low would otherwise let new
 * data overwrite a table.  Fixed structures are known from the header;
 * refcount blocks and L2 tables (active and of snapshots) are kept in a
 * sorted array, built at the first allocation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

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

int qcow2_meta_add(struct vimg_image *img, uint64_t c)
{
    struct qcow2_state *s = img->priv;
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

void qcow2_meta_remove(struct vimg_image *img, uint64_t c)
{
    struct qcow2_state *s = img->priv;
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
            int ret = qcow2_meta_add(img, l2 >> s->cluster_bits);
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
            ret = qcow2_meta_add(img, c);
        }
        for (uint32_t i = 0; ret == 0 && i < bm->table_size; i++) {
            /* bits 9-55: a data cluster; 0 or 1 in bit 0 means none */
            const uint64_t off = load_be64(t + (size_t)i * 8) &
                                 QCOW2_L2E_OFFSET_MASK;
            if (off) {
                ret = qcow2_meta_add(img, off >> s->cluster_bits);
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
            ret = qcow2_meta_add(img, rb >> s->cluster_bits);
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

/* An allocation would overwrite metadata: the refcounts lie.  Mark the
 * image corrupt (qemu's corrupt bit) and refuse every further write. */
static int overlap_found(struct vimg_image *img, uint64_t c)
{
    struct qcow2_state *s = img->priv;

    qcow2_header_mark_corrupt(img);
    return vimg_error(-EIO,
                      "%s: corrupt qcow2 image: cluster 0x%llx has refcount "
                      "0 but holds metadata; the image is marked corrupt "
                      "(repair it with 'vimg check -r all')",
                      img->filename,
                      (unsigned long long)(c << s->cluster_bits));
}

/* Fail (and mark the image corrupt) if cluster C holds metadata. */
int qcow2_check_free_cluster(struct vimg_image *img, uint64_t c)
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
