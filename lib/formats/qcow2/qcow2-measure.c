/* SPDX-License-Identifier: MIT */
/*
 * qcow2-measure.c: how many bytes of metadata a new QCOW2 image needs when
 * every cluster of its virtual disk is allocated (qemu-img measure): the
 * header cluster, L2 tables for every guest cluster, the L1 table, and
 * the refcount table and blocks that count all of it, themselves included
 * (qcow2.txt, "Host cluster management" and "Cluster mapping").
 */
#include <stdio.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define L1_ENTRY_BYTES 8
/* Bitmap directory entry: fixed part (qcow2.txt, "Bitmap directory") */
#define BITMAP_DIR_ENTRY_BYTES 24
#define BITMAP_TABLE_ENTRY_BYTES 8

static uint64_t round_up(uint64_t n, uint64_t unit)
{
    return VIMG_DIV_ROUND_UP(n, unit) * unit;
}

uint64_t qcow2_refcount_metadata_bytes(uint64_t clusters,
                                       uint64_t cluster_size,
                                       unsigned refcount_order)
{
    uint64_t blocks, table;

    qcow2_refcount_layout(clusters, cluster_size, refcount_order, &blocks,
                          &table);
    return (blocks + table) * cluster_size;
}

uint64_t qcow2_prealloc_metadata_bytes(uint64_t virtual_size,
                                       uint64_t cluster_size,
                                       unsigned refcount_order,
                                       bool has_extended_l2)
{
    const uint64_t data_bytes = round_up(virtual_size, cluster_size);
    const uint64_t l2_entry_bytes = has_extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size; /* the header cluster */

    /* whole L2 tables for every guest cluster */
    const uint64_t l2_entries =
        round_up(data_bytes / cluster_size, cluster_size / l2_entry_bytes);
    meta += l2_entries * l2_entry_bytes;
    /* one L1 entry per L2 table, in whole clusters */
    const uint64_t l1_entries =
        round_up(l2_entries * l2_entry_bytes / cluster_size,
                 cluster_size / L1_ENTRY_BYTES);
    meta += l1_entries * L1_ENTRY_BYTES;
    /* refcounts for all of that and the data */
    meta += qcow2_refcount_metadata_bytes((meta + data_bytes) / cluster_size,
                                          cluster_size, refcount_order);
    return meta;
}

int qcow2_measure(const struct vimg_opts *opts, uint64_t virtual_size,
                  struct vimg_measure_plan *out)
{
    struct qcow2_create_params params;
    const struct qcow2_create_params *o = &params;
    unsigned which;
    int ret = qcow2_params_from_opts(opts, &params, &which);

    if (ret < 0) {
        return ret;
    }
    const uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
    const unsigned version = o->qcow2_version ? o->qcow2_version : 3;
    const unsigned rb = o->refcount_bits ? o->refcount_bits : 16;

    /* qemu-img's checks, in its order and words */
    if (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1))) {
        return vimg_error(-EINVAL, "Cluster size must be a power of two "
                                   "between 512 and 2048k");
    }
    if (o->extended_l2 && cs < 16384) {
        return vimg_error(-EINVAL, "Extended L2 entries are only supported "
                                   "with cluster sizes of at least 16384 "
                                   "bytes");
    }
    if (version != 2 && version != 3) {
        return vimg_error(-EINVAL, "Invalid compatibility level: '%u'",
                          version);
    }
    if (rb > 64 || (rb & (rb - 1))) {
        return vimg_error(-EINVAL, "Refcount width must be a power of two "
                                   "and may not exceed 64 bits");
    }
    if (version == 2 && rb != 16) {
        return vimg_error(-EINVAL, "Different refcount widths than 16 bits "
                                   "require compatibility level 1.1 or above "
                                   "(use compat=1.1 or greater)");
    }
    enum vimg_prealloc mode;
    if (vimg_prealloc_parse(o->preallocation, &mode) < 0) {
        return vimg_error(-EINVAL, "invalid parameter value: %s",
                          o->preallocation);
    }
    const bool is_full =
        mode == VIMG_PREALLOC_FULL || mode == VIMG_PREALLOC_FALLOC;
    /* The L1 table must stay within qemu's limit for the size asked for
     * (not for a source image's size, which qemu does not check). */
    const uint64_t l2_entry_bytes = o->extended_l2 ? 16 : 8;
    const uint64_t asked = round_up(VIMG_MIN(o->size, UINT64_MAX - cs), cs);
    const uint64_t l2_tables =
        VIMG_DIV_ROUND_UP(asked / cs, cs / l2_entry_bytes);
    if (l2_tables > QCOW2_MAX_L1_BYTES / L1_ENTRY_BYTES) {
        return vimg_error(-EFBIG, "The image size is too large (try using a "
                                  "larger cluster size)");
    }
    if (virtual_size > INT64_MAX) {
        /* keeps the arithmetic below from overflowing */
        return vimg_error(-EFBIG, "The image size is too large");
    }

    out->virtual_size = round_up(virtual_size, cs);
    out->metadata_bytes = qcow2_prealloc_metadata_bytes(
        out->virtual_size, cs, (unsigned)__builtin_ctz(rb), o->extended_l2);
    out->data_unit_bytes = cs;
    out->is_preallocated = is_full;
    out->can_store_bitmaps = version >= 3;
    return 0;
}

/* Room for SRC's persistent bitmaps, each fully allocated: its data
 * clusters, its bitmap table, and its entry in the bitmap directory. */
int qcow2_measure_bitmaps(const struct vimg_opts *opts, vimg_image *src,
                          uint64_t *out)
{
    const uint64_t unit = vimg_opts_number(opts, "cluster_size", 65536);
    struct vimg_info *info = NULL;
    int ret = vimg_get_info(src, &info);

    if (ret < 0) {
        return ret;
    }
    uint64_t bytes = 0, dir_bytes = 0;
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        const struct vimg_bitmap_info *b = &info->bitmaps[i];
        const uint64_t granularity = b->granularity ? b->granularity : 1;
        const uint64_t bits = VIMG_DIV_ROUND_UP(vimg_size(src), granularity);
        const uint64_t clusters =
            VIMG_DIV_ROUND_UP(VIMG_DIV_ROUND_UP(bits, 8), unit);
        bytes += clusters * unit +
                 round_up(clusters * BITMAP_TABLE_ENTRY_BYTES, unit);
        dir_bytes += round_up(BITMAP_DIR_ENTRY_BYTES + strlen(b->name), 8);
    }
    *out = bytes + round_up(dir_bytes, unit);
    vimg_info_free(info);
    return 0;
}
