/* SPDX-License-Identifier: MIT */
/*
 * qcow2-amend.c: change an existing image's options in place (qemu-img
 * amend): compat both ways, refcount_bits, lazy_refcounts, the external
 * data file's name, the backing file name and format, and the size.
 *
 * Everything that can refuse is checked before the first write, so a
 * refused amend leaves the file as it was.  Then, for crash safety:
 * - a new refcount width is written as a whole new refcount structure
 *   past the end of the file and switched to by one header write;
 * - downgrading to compat 0.10 first turns zero clusters into what
 *   version 2 can say (unallocated, or allocated and zeroed), which a v3
 *   image reads the same, and only then rewrites the header;
 * - header changes are one write of the first cluster.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"
#include "vimg-internal.h"

/* -------------------------------------------------- refcount width */

/* Refuse a width that cannot hold some refcount (qemu's words). */
static int check_refcount_width(struct vimg_image *img, unsigned bits)
{
    struct qcow2_state *s = img->priv;
    const uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;

    for (uint64_t c = 0; c < s->end_cluster; c++) {
        uint64_t rc;
        int ret = qcow2_get_refcount_locked(img, c, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc > max) {
            return vimg_error(-EINVAL, "Cannot decrease refcount entry width "
                                       "to %u bits: Cluster at offset 0x%llx "
                                       "has a refcount of %llu",
                              bits,
                              (unsigned long long)(c << s->cluster_bits),
                              (unsigned long long)rc);
        }
    }
    return 0;
}

/* BLOCKS (refcount blocks of width 1 << ORDER for clusters 0 on): the
 * refcount of every cluster below START as it is now, except the old
 * refcount structure, which the switch frees; then the new structure of
 * NB_NEW clusters at START, which counts itself. */
static int fill_new_refcounts(struct vimg_image *img, uint8_t *blocks,
                              unsigned order, uint64_t start,
                              uint64_t nb_new)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t per_block = (cs * 8) >> order;
    int ret = 0;

    for (uint64_t c = 0; c < start && ret == 0; c++) {
        uint64_t rc;
        ret = qcow2_get_refcount_locked(img, c, &rc);
        if (ret == 0 && rc) {
            qcow2_refcount_set(blocks + (c / per_block) * cs, c % per_block,
                               order, rc);
        }
    }
    const uint64_t old_table = s->h.refcount_table_offset >> s->cluster_bits;
    for (uint64_t c = old_table;
         c < old_table + s->h.refcount_table_clusters && c < start; c++) {
        qcow2_refcount_set(blocks + (c / per_block) * cs, c % per_block,
                           order, 0);
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        const uint64_t c =
            (s->reftable[i] & QCOW2_REFT_OFFSET_MASK) >> s->cluster_bits;
        if (c && c < start) {
            qcow2_refcount_set(blocks + (c / per_block) * cs, c % per_block,
                               order, 0);
        }
    }
    for (uint64_t c = start; c < start + nb_new; c++) {
        qcow2_refcount_set(blocks + (c / per_block) * cs, c % per_block,
                           order, 1);
    }
    return ret;
}

/* Point the header at the new table (TABLE_CLUSTERS at TABLE_OFF) and
 * the new width in one write (bytes 48..99, one sector); the fields
 * between keep their values.  Then sync. */
static int switch_refcounts(struct vimg_image *img, uint64_t table_off,
                            uint64_t table_clusters, unsigned order)
{
    struct qcow2_state *s = img->priv;
    uint8_t hdr[QCOW2_HDR_REFCOUNT_ORDER + 4 - QCOW2_HDR_REFTABLE_OFFSET];
    uint8_t *b = hdr - QCOW2_HDR_REFTABLE_OFFSET;

    store_be64(b + QCOW2_HDR_REFTABLE_OFFSET, table_off);
    store_be32(b + QCOW2_HDR_REFTABLE_CLUSTERS, (uint32_t)table_clusters);
    store_be32(b + QCOW2_HDR_NB_SNAPSHOTS, s->h.nb_snapshots);
    store_be64(b + QCOW2_HDR_SNAPSHOTS_OFFSET, s->h.snapshots_offset);
    store_be64(b + QCOW2_HDR_INCOMPAT, s->h.incompatible_features);
    store_be64(b + QCOW2_HDR_COMPAT, s->h.compatible_features);
    store_be64(b + QCOW2_HDR_AUTOCLEAR, s->h.autoclear_features);
    store_be32(b + QCOW2_HDR_REFCOUNT_ORDER, order);
    int ret =
        qcow2_write_meta(img, QCOW2_HDR_REFTABLE_OFFSET, hdr, sizeof(hdr));
    return ret < 0 ? ret : qcow2_sync_files(img);
}

/*
 * Write a refcount structure of width 1 << ORDER bits for every cluster in
 * use, past the end of the file, and switch the header to it.  The old
 * table and blocks are free in the new structure.
 */
static int rewrite_refcounts(struct vimg_image *img, unsigned order)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t start = s->end_cluster;
    uint64_t nb_blocks, table_clusters;
    int ret = 0;

    /* blocks and table at START..: enough to describe themselves too */
    qcow2_refcount_layout(start, cs, order, &nb_blocks, &table_clusters);
    if (table_clusters * cs > QCOW2_MAX_REFTABLE_BYTES ||
        nb_blocks > SIZE_MAX / cs) {
        return vimg_error(-EFBIG, "%s: the new refcount table would be too "
                                  "large",
                          img->filename);
    }
    uint8_t *blocks = calloc((size_t)nb_blocks, (size_t)cs);
    uint8_t *table = calloc((size_t)table_clusters, (size_t)cs);
    if (!blocks || !table) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    ret = fill_new_refcounts(img, blocks, order, start,
                             nb_blocks + table_clusters);
    for (uint64_t i = 0; i < nb_blocks; i++) {
        store_be64(table + i * 8, (start + i) * cs);
    }
    /* blocks and table durable, then the header switched to them */
    const uint64_t table_off = (start + nb_blocks) * cs;
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret == 0) {
        ret = qcow2_write_meta(img, start * cs, blocks,
                               (size_t)(nb_blocks * cs));
    }
    if (ret == 0) {
        ret = qcow2_write_meta(img, table_off, table,
                               (size_t)(table_clusters * cs));
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret == 0) {
        ret = switch_refcounts(img, table_off, table_clusters, order);
    }
    if (ret == 0) {
        s->h.refcount_table_offset = table_off;
        s->h.refcount_table_clusters = (uint32_t)table_clusters;
        s->h.refcount_order = order;
        s->end_cluster = start + nb_blocks + table_clusters;
        ret = qcow2_reload_refcounts(img);
    }
out:
    free(blocks);
    free(table);
    return ret;
}

/* ------------------------------------------- downgrade to compat 0.10 */

/*
 * The host cluster that zero entry E of a table reached from TABLE_RC L1
 * tables becomes in version 2: an allocated cluster the caller fills
 * with zeroes.  A preallocated cluster is reused only if nothing else
 * references it; one that a snapshot also reaches (refcount above
 * TABLE_RC) keeps its data there, and this entry gets a cluster of its
 * own (zeroing it in place would change the snapshot).  An unaligned
 * offset is a corrupt entry: refused, and the image marked corrupt.
 */
static int zero_entry_target(struct vimg_image *img, uint64_t l2, size_t j,
                             uint64_t e, uint64_t table_rc, uint64_t *out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    uint64_t rc = 0, fresh;
    int ret;

    if (host & (s->cluster_size - 1)) {
        qcow2_header_mark_corrupt(img);
        return qcow2_corrupt(img, "Cluster allocation offset 0x%llx "
                                  "unaligned (L2 offset: 0x%llx, L2 index: "
                                  "0x%zx); the image is marked corrupt "
                                  "(repair it with 'vimg check -r all')",
                             (unsigned long long)host,
                             (unsigned long long)l2, j);
    }
    if (host) {
        ret = qcow2_get_refcount_locked(img, host >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc <= table_rc) {
            *out = host | (rc == 1 ? QCOW2_OFLAG_COPIED : 0);
            return 0;
        }
    }
    ret = qcow2_alloc_clusters(img, 1, &fresh);
    if (ret == 0 && table_rc > 1) {
        /* one reference per L1 table that reaches this one */
        ret = qcow2_set_refcount(img, fresh >> s->cluster_bits, table_rc);
    }
    for (uint64_t k = 0; host && k < table_rc && ret == 0; k++) {
        ret = qcow2_free_clusters_later(img, host, 1);
    }
    *out = fresh | (table_rc == 1 ? QCOW2_OFLAG_COPIED : 0);
    return ret;
}

/* Version 2 has no zero clusters: a zero cluster becomes unallocated
 * (nothing below shows through) or an allocated cluster of zeroes. */
static int expand_zero_table(struct vimg_image *img, uint64_t l2)
{
    struct qcow2_state *s = img->priv;
    const size_t per_table = (size_t)1 << s->l2_bits;
    const bool has_backing = img->backing_name != NULL;
    uint64_t table_rc;
    int ret = qcow2_get_refcount_locked(img, l2 >> s->cluster_bits,
                                        &table_rc);
    uint8_t *zero = NULL;

    for (size_t j = 0; j < per_table && ret == 0; j++) {
        const uint8_t *t;
        ret = qcow2_load_l2(img, l2, &t);
        if (ret < 0) {
            break;
        }
        const uint64_t e = load_be64(t + j * s->l2_entry_bytes);
        if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
            continue;
        }
        uint64_t next = 0;
        if ((e & QCOW2_L2E_OFFSET_MASK) || has_backing) {
            if (!zero) {
                zero = calloc(1, (size_t)s->cluster_size);
                if (!zero) {
                    ret = vimg_error(-ENOMEM, "out of memory");
                    break;
                }
            }
            ret = zero_entry_target(img, l2, j, e, table_rc, &next);
            if (ret == 0) {
                ret = vimg_io_pwrite(img->io, zero, (size_t)s->cluster_size,
                                     next & QCOW2_L2E_OFFSET_MASK);
            }
            s->is_unsynced = true; /* synced before the L2 table */
            if (ret == 0) {
                ret = qcow2_load_l2(img, l2, &t);
            }
        }
        if (ret == 0) {
            store_be64((uint8_t *)t + j * s->l2_entry_bytes, next);
            qcow2_cache_mark_dirty(s->l2_cache, t);
        }
    }
    free(zero);
    return ret;
}

static int expand_zero_l1(struct vimg_image *img, const uint64_t *l1,
                          uint64_t n)
{
    int ret = 0;

    for (uint64_t i = 0; i < n && ret == 0; i++) {
        const uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (l2) {
            ret = expand_zero_table(img, l2); /* shared ones: a no-op */
        }
    }
    return ret;
}

static int expand_zero_clusters(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = expand_zero_l1(img, s->l1, s->h.l1_size);

    for (size_t k = 0; k < s->nb_snapshots && ret == 0; k++) {
        uint64_t *l1 = NULL;
        ret = qcow2_read_snapshot_l1(img, &s->snapshots[k], &l1);
        if (ret == 0) {
            ret = expand_zero_l1(img, l1, s->snapshots[k].l1_size);
        }
        free(l1);
    }
    return ret == 0 ? qcow2_flush_locked(img) : ret;
}

/* What version 2 cannot hold is refused by name rather than dropped. */
static int check_downgrade(struct vimg_image *img, bool want_lazy)
{
    struct qcow2_state *s = img->priv;
    const uint64_t incompat =
        s->h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;

    if (want_lazy) {
        return vimg_error(-EINVAL, "Lazy refcounts only supported with "
                                   "compatibility level 1.1 and above (use "
                                   "compat=1.1 or greater)");
    }
    if (s->has_data_file) {
        return vimg_error(-ENOTSUP, "Cannot downgrade an image with a data "
                                    "file");
    }
    if (incompat & QCOW2_INCOMPAT_EXTL2) {
        return vimg_error(-ENOTSUP, "Cannot downgrade an image with extended "
                                    "L2 entries (incompatible feature 0x10): "
                                    "compat=0.10 cannot hold them");
    }
    if (incompat & QCOW2_INCOMPAT_COMPRESSION) {
        return vimg_error(-ENOTSUP, "Cannot downgrade an image whose "
                                    "compression type is not zlib: compat="
                                    "0.10 cannot hold it");
    }
    if (incompat) {
        return vimg_error(-ENOTSUP, "Cannot downgrade an image with "
                                    "incompatible features 0x%llx set",
                          (unsigned long long)incompat);
    }
    if (s->ext.has_bitmaps &&
        (s->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return vimg_error(-ENOTSUP, "Cannot downgrade an image with "
                                    "persistent bitmaps: compat=0.10 cannot "
                                    "hold them (remove them first)");
    }
    if (s->h.refcount_order != 4) {
        return vimg_error(-ENOTSUP, "compat=0.10 requires refcount_bits=16");
    }
    /* version 2 readers do not know that a snapshot's size or a large VM
     * state lives in the extra data (qemu refuses the same) */
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        if (sn->vm_state_size > UINT32_MAX ||
            (sn->has_disk_size && sn->disk_size != img->size)) {
            return vimg_error(-ENOTSUP, "Internal snapshots prevent "
                                        "downgrade of image (snapshot '%s' "
                                        "has %s)",
                              sn->name,
                              sn->vm_state_size > UINT32_MAX
                                  ? "a VM state of 4 GiB or more"
                                  : "a disk size other than the image's");
        }
    }
    return 0;
}

/* -------------------------------------------------------------- size */

/* Shrinking must not drop data: refuse if anything is stored past NEW. */
static int check_shrink(struct vimg_image *img, uint64_t new_size)
{
    for (uint64_t off = new_size; off < img->size;) {
        struct vimg_layer_status st = {0};
        int ret = img->drv->block_status(img, off, img->size - off, &st);
        if (ret < 0) {
            return ret;
        }
        if (st.flags & VIMG_EXTENT_DATA) {
            return vimg_error(-EINVAL, "%s: cannot shrink to %llu bytes: "
                                       "there is data at 0x%llx, past the new "
                                       "end (discard it first, or use "
                                       "'resize --shrink')",
                              img->filename, (unsigned long long)new_size,
                              (unsigned long long)off);
        }
        off += st.length;
    }
    return 0;
}

/* ------------------------------------------------------------- amend */

/* What the amended image will be. */
struct amend_plan {
    unsigned version;
    unsigned order; /* refcount_order */
    bool want_lazy;
};

/* The refcount width asked for, as an order; refused as qemu-img does. */
static int plan_refcount_order(struct vimg_image *img, unsigned bits,
                               unsigned version, unsigned *order_out)
{
    struct qcow2_state *s = img->priv;
    unsigned order = 0;

    while ((1u << order) < bits) {
        order++;
    }
    if (bits == 0 || (1u << order) != bits || bits > 64) {
        return vimg_error(-EINVAL, "Refcount width must be a power of "
                                   "two and may not exceed 64 bits");
    }
    if (version < 3 && bits != 16) {
        return vimg_error(-EINVAL, "Different refcount widths than 16 "
                                   "bits require compatibility level 1.1 "
                                   "or above (use compat=1.1 or "
                                   "greater)");
    }
    *order_out = order;
    return order < s->h.refcount_order ? check_refcount_width(img, bits)
                                       : 0;
}

/* 1. Everything that can refuse, before any write. */
static int plan_amend(struct vimg_image *img,
                      const struct qcow2_create_params *o, unsigned which,
                      struct amend_plan *p)
{
    struct qcow2_state *s = img->priv;
    const bool is_lazy_now =
        s->h.version >= 3 &&
        (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
    int ret = 0;

    p->version = which & VIMG_AMEND_COMPAT ? o->qcow2_version : s->h.version;
    p->want_lazy = which & VIMG_AMEND_LAZY_REFCOUNTS ? o->lazy_refcounts
                   : p->version < 3                  ? false
                                                     : is_lazy_now;
    p->order = s->h.refcount_order;
    if (which & VIMG_AMEND_DATA_FILE_RAW) {
        return vimg_error(-EINVAL, "data-file-raw cannot be set on existing "
                                   "images");
    }
    if ((which & VIMG_AMEND_DATA_FILE) && !s->has_data_file) {
        return vimg_error(-EINVAL, "data-file can only be set for images "
                                   "that use an external data file");
    }
    if ((which & VIMG_AMEND_DATA_FILE) && !*o->data_file) {
        return vimg_error(-EINVAL, "data-file cannot be empty");
    }
    if (which & VIMG_AMEND_REFCOUNT_BITS) {
        ret = plan_refcount_order(img, o->refcount_bits, p->version,
                                  &p->order);
    }
    if (ret == 0 && p->version < 3 && s->h.version >= 3) {
        ret = check_downgrade(img, p->want_lazy);
    } else if (ret == 0 && p->version < 3 && p->want_lazy) {
        ret = check_downgrade(img, true);
    }
    if (ret == 0 && (which & VIMG_AMEND_SIZE) && s->h.version < 3 &&
        s->nb_snapshots && o->size != img->size) {
        ret = vimg_error(-ENOTSUP, "Can't resize a v2 image which has "
                                   "snapshots");
    }
    return ret;
}

/* The header fields and extensions of version P->version. */
static void plan_header(const struct qcow2_state *s,
                        const struct amend_plan *p,
                        struct qcow2_first_cluster *fc)
{
    fc->h.refcount_order = p->order;
    if (p->version >= 3) {
        fc->h.version = 3;
        if (fc->h.header_length < QCOW2_HDR_V3_LEN) {
            fc->h.header_length = QCOW2_HDR_V3_COMPRESSION_LEN;
        }
        fc->h.compatible_features =
            p->want_lazy
                ? fc->h.compatible_features | QCOW2_COMPAT_LAZY_REFCOUNTS
                : fc->h.compatible_features & ~QCOW2_COMPAT_LAZY_REFCOUNTS;
        if (!fc->ext.nb_features && s->cluster_size >= 8192) {
            fc->ext.features = malloc(sizeof(qcow2_feature_table));
            if (fc->ext.features) {
                memcpy(fc->ext.features, qcow2_feature_table,
                       sizeof(qcow2_feature_table));
                fc->ext.nb_features = QCOW2_NB_FEATURES;
            }
        }
    } else {
        fc->h.version = 2;
        fc->h.header_length = QCOW2_HDR_V2_LEN;
        fc->h.incompatible_features = 0;
        fc->h.compatible_features = 0;
        fc->h.autoclear_features = 0;
        fc->h.compression_type = 0;
        free(fc->ext.features);
        fc->ext.features = NULL;
        fc->ext.nb_features = 0;
        fc->ext.has_bitmaps = false;
    }
}

/* The new first cluster, encoded into *BUF_OUT (one cluster, free it):
 * it must fit before anything else changes. */
static int plan_first_cluster(struct vimg_image *img,
                              const struct qcow2_create_params *o,
                              unsigned which, const struct amend_plan *p,
                              struct qcow2_first_cluster *fc,
                              uint8_t **buf_out)
{
    struct qcow2_state *s = img->priv;

    if (which & VIMG_AMEND_DATA_FILE) {
        free(fc->ext.data_file);
        fc->ext.data_file = strdup(o->data_file);
    }
    if (which & VIMG_AMEND_BACKING_FILE) {
        free(fc->backing);
        fc->backing = *o->backing_file ? strdup(o->backing_file) : NULL;
        if (!fc->backing) {
            free(fc->ext.backing_format);
            fc->ext.backing_format = NULL;
        }
    }
    if (which & VIMG_AMEND_BACKING_FMT) {
        free(fc->ext.backing_format);
        fc->ext.backing_format =
            *o->backing_format ? strdup(o->backing_format) : NULL;
    }
    plan_header(s, p, fc);
    uint8_t *buf = malloc((size_t)s->cluster_size);
    *buf_out = buf;
    int ret = buf ? qcow2_first_cluster_encode(img, fc, buf)
                  : vimg_error(-ENOMEM, "out of memory");
    if ((which & VIMG_AMEND_DATA_FILE && !fc->ext.data_file) ||
        (which & VIMG_AMEND_BACKING_FILE && *o->backing_file &&
         !fc->backing)) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    return ret;
}

/* 2. The changes: refcount width, zero clusters (down to version 2),
 * snapshot extra data (up to version 3), then the first cluster, which
 * is re-encoded wherever a step moved something it names. */
static int apply_amend(struct vimg_image *img, const struct amend_plan *p,
                       struct qcow2_first_cluster *fc, uint8_t *buf)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_begin_change(img);

    if (ret == 0 && p->order != s->h.refcount_order) {
        ret = rewrite_refcounts(img, p->order);
        if (ret == 0) {
            /* the header on disk changed under FC */
            fc->h.refcount_table_offset = s->h.refcount_table_offset;
            fc->h.refcount_table_clusters = s->h.refcount_table_clusters;
            ret = qcow2_first_cluster_encode(img, fc, buf);
        }
    }
    if (ret == 0 && p->version < 3 && s->h.version >= 3) {
        ret = expand_zero_clusters(img);
    }
    if (ret == 0 && p->version >= 3 && s->h.version < 3) {
        ret = qcow2_snapshots_complete_extra(img);
        if (ret == 0) {
            /* the header on disk changed under FC */
            fc->h.snapshots_offset = s->h.snapshots_offset;
            ret = qcow2_first_cluster_encode(img, fc, buf);
        }
    }
    if (ret == 0) {
        /* leaving lazy refcounts: the refcounts are right once flushed,
         * and the dirty bit goes with the feature */
        if (s->h.version >= 3 && !p->want_lazy) {
            fc->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
            if (p->version >= 3) {
                ret = qcow2_first_cluster_encode(img, fc, buf);
            }
        }
        if (ret == 0) {
            ret = qcow2_first_cluster_write(img, fc, buf);
        }
    }
    return ret;
}

static int amend_locked(struct vimg_image *img,
                        const struct qcow2_create_params *o, unsigned which,
                        bool *resize_to)
{
    struct amend_plan p;
    struct qcow2_first_cluster fc;
    uint8_t *buf = NULL;
    int ret = plan_amend(img, o, which, &p);

    if (ret < 0) {
        return ret;
    }
    ret = qcow2_first_cluster_read(img, &fc);
    if (ret < 0) {
        return ret;
    }
    ret = plan_first_cluster(img, o, which, &p, &fc, &buf);
    if (ret == 0) {
        ret = apply_amend(img, &p, &fc, buf);
    }
    if (ret == 0) {
        *resize_to = (which & VIMG_AMEND_SIZE) && o->size != img->size;
    }
    qcow2_first_cluster_free(&fc);
    free(buf);
    return ret;
}

int qcow2_amend(struct vimg_image *img, const struct qcow2_create_params *o,
                unsigned which)
{
    struct qcow2_state *s = img->priv;
    bool is_resize = false;

    /* (block status takes the lock itself) */
    int ret = (which & VIMG_AMEND_SIZE) && o->size < img->size
                  ? check_shrink(img, o->size)
                  : 0;
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&s->lock);
    ret = amend_locked(img, o, which, &is_resize);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && is_resize) {
        ret = qcow2_resize(img, o->size, NULL, VIMG_RESIZE_SHRINK);
    }
    return ret;
}
