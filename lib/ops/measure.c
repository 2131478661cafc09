/* SPDX-License-Identifier: MIT */
/*
 * measure.c: how large a new image would be (qemu-img measure).  The
 * target format plans the image (its metadata when fully allocated, its
 * allocation unit, the room for a source's persistent bitmaps); what a
 * copy of a source needs is found by walking the source's block status,
 * as converting it would.
 */
#include <string.h>

#include "image-services.h"
#include "util/vimg-util.h"

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

int vimg_measure_ext(vimg_image *src, const vimg_opts *target,
                     struct vimg_measure_result *out)
{
    uint64_t size = 0;

    if (!target || !out) {
        return vimg_error(-EINVAL, "vimg_measure: bad argument");
    }
    vimg_error_clear();
    memset(out, 0, sizeof(*out));
    if (src) {
        size = vimg_size(src);
    } else if (vimg_opts_get(target, "size")) {
        vimg_parse_size(vimg_opts_get(target, "size"), &size);
    }

    struct vimg_measure_plan plan;
    int ret = vimg_image_plan(target, size, &plan);
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
    /* the room for SRC's persistent bitmaps, when both can have some */
    if (src && plan.can_store_bitmaps &&
        (vimg_capabilities(src) & VIMG_CAN_BITMAPS)) {
        out->has_bitmaps = true;
        ret = vimg_image_plan_bitmaps(target, src, &out->bitmaps);
    }
    return ret;
}

int vimg_measure(vimg_image *src, const struct vimg_create_opts *caller,
                 struct vimg_measure_result *out)
{
    vimg_opts *target = NULL;

    if (!out) {
        return vimg_error(-EINVAL, "vimg_measure: bad argument");
    }
    int ret = vimg_opts_from_create_opts(caller, VIMG_OPTS_CREATE, 0,
                                         &target);
    if (ret == 0) {
        ret = vimg_measure_ext(src, target, out);
    }
    vimg_opts_free(target);
    return ret;
}
