/* SPDX-License-Identifier: MIT */
/*
 * measure.c: how large a new image would be (qemu-img measure).  The
 * target format plans the image (its metadata when fully allocated, its
 * allocation unit); what a copy of a source needs is found by walking the
 * source's block status, as converting it would.
 */
#include <string.h>

#include "vimg-internal.h"

/* Bitmap directory entry: fixed part (qcow2.txt, "Bitmap directory") */
#define BITMAP_DIR_ENTRY_BYTES 24
#define BITMAP_TABLE_ENTRY_BYTES 8

static uint64_t round_up(uint64_t n, uint64_t unit)
{
    return VIMG_DIV_ROUND_UP(n, unit) * unit;
}

/*
 * Bytes of the target's UNIT-sized clusters that hold data of SRC (its
 * whole chain): ranges that read as zeroes (zero clusters, holes,
 * unallocated everywhere) need none; any other byte needs its whole
 * cluster.
 */
static int count_data(vimg_image *src, uint64_t unit, uint64_t *out)
{
    const uint64_t size = vimg_size(src);
    uint64_t clusters = 0;

    for (uint64_t off = 0; off < size;) {
        struct vimg_extent e;
        int ret = vimg_block_status(src, off, size - off, &e);
        if (ret < 0) {
            return ret;
        }
        uint64_t end = off + e.length;
        if ((e.flags & VIMG_EXTENT_DATA) && !(e.flags & VIMG_EXTENT_ZERO)) {
            /* the cluster is counted whole: skip the rest of it */
            clusters += VIMG_DIV_ROUND_UP(end, unit) - off / unit;
            end = VIMG_MIN(round_up(end, unit), size);
        }
        off = end;
    }
    *out = clusters * unit;
    return 0;
}

/*
 * Room for SRC's persistent bitmaps in a target with UNIT-byte clusters,
 * assuming every bitmap is fully allocated: its data clusters, its bitmap
 * table, and its entry in the bitmap directory.  *has_out is false when SRC
 * cannot hold persistent bitmaps (qemu then leaves the field out).
 */
static int bitmaps_bytes(vimg_image *src, uint64_t unit, bool *has_out,
                         uint64_t *out)
{
    struct vimg_info *info = NULL;
    int ret = vimg_get_info(src, &info);

    if (ret < 0) {
        return ret;
    }
    *has_out = strcmp(info->format, "qcow2") == 0 && info->qcow2_version >= 3;
    uint64_t bytes = 0, dir_bytes = 0;
    for (size_t i = 0; *has_out && i < info->nb_bitmaps; i++) {
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

int vimg_measure(vimg_image *src, const struct vimg_create_opts *caller,
                 struct vimg_measure_result *out)
{
    struct vimg_create_opts copy;
    const struct vimg_create_opts *target = &copy;

    if (vimg_create_opts_copy(caller, &copy) < 0 || !target->format ||
        !out) {
        return vimg_error(-EINVAL, "vimg_measure: bad argument");
    }
    vimg_error_clear();
    memset(out, 0, sizeof(*out));

    struct vimg_measure_plan plan;
    int ret = vimg_image_plan(target, src ? vimg_size(src) : target->size,
                              &plan);
    if (ret < 0) {
        return ret;
    }
    uint64_t data = 0;
    if (plan.is_preallocated) {
        data = plan.virtual_size;
    } else if (src) {
        ret = count_data(src, plan.data_unit_bytes, &data);
        if (ret < 0) {
            return ret;
        }
    }
    /* Metadata is counted for a fully allocated image even when little
     * data is needed: an overestimate, as qemu-img makes it. */
    out->fully_allocated = plan.metadata_bytes + plan.virtual_size;
    out->required = plan.metadata_bytes + data;
    if (src && plan.can_store_bitmaps) {
        ret = bitmaps_bytes(src, plan.data_unit_bytes, &out->has_bitmaps,
                            &out->bitmaps);
    }
    return ret;
}
