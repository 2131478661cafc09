/* SPDX-License-Identifier: MIT */
/*
 * qcow2-resize.c: changing the virtual size (qemu-img resize): shrinking
 * drops the clusters past the new end, growing moves the L1 table when it
 * is too small and may preallocate the new part (qcow2-prealloc.c); the
 * new size reaches the header only once everything else is durable.
 */
#include <stdio.h>
#include <stdlib.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* qemu-img's refusals, before anything changes. */
static int check_resize(struct vimg_image *img, uint64_t new_size,
                        enum qcow2_prealloc mode)
{
    struct qcow2_state *s = img->priv;
    const uint64_t old = s->h.size;

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
    return 0;
}

/* Shrinking: the part of the new last cluster past the end reads as
 * zeroes if the image grows again; the clusters after it are released. */
static int shrink_locked(struct vimg_image *img, uint64_t new_size)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t cut = VIMG_DIV_ROUND_UP(new_size, cs) * cs;
    int ret = 0;

    if (cut > new_size && cut <= s->h.size) {
        ret = qcow2_zero_in_cluster(img, (size_t)(cut - new_size), new_size,
                                    false, false);
    }
    return ret < 0 ? ret : qcow2_drop_clusters_from(img, cut / cs);
}

/* Growing: a larger L1 table if needed, stale bytes past the old end in
 * its last cluster zeroed, and the preallocation MODE asks for. */
static int grow_locked(struct vimg_image *img, uint64_t new_size,
                       enum qcow2_prealloc mode)
{
    struct qcow2_state *s = img->priv;
    const uint64_t old = s->h.size;
    const uint64_t cs = s->cluster_size;
    const uint64_t per_l1 = (1ull << s->l2_bits) * cs;
    const uint64_t need = VIMG_DIV_ROUND_UP(new_size, per_l1);
    int ret = 0;

    if (need > s->h.l1_size) {
        ret = qcow2_grow_l1(img, need);
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
        ret = qcow2_zero_in_cluster(img, (size_t)(tail_end - old), old,
                                    false, false);
    }
    if (ret == 0 && mode != QCOW2_PREALLOC_OFF) {
        ret = qcow2_prealloc_grow_locked(img, old, new_size, mode);
        if (ret < 0) {
            /* the size stays: what was mapped past the old end goes
             * back, so the image checks clean */
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", vimg_last_error());
            qcow2_drop_clusters_from(img, VIMG_DIV_ROUND_UP(old, cs));
            vimg_error(ret, "%s", msg);
        }
    }
    return ret;
}

/* Everything else durable, then the new size in the header; then the
 * bitmaps and the external data file follow it. */
static int commit_size_locked(struct vimg_image *img, uint64_t new_size)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_flush_locked(img);

    if (ret == 0) {
        uint8_t b[8];
        store_be64(b, new_size);
        ret = qcow2_write_meta(img, QCOW2_HDR_SIZE, b, sizeof(b));
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
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
    return ret;
}

int qcow2_resize(struct vimg_image *img, uint64_t new_size,
                 const char *preallocation, unsigned flags)
{
    struct qcow2_state *s = img->priv;
    const uint64_t old = s->h.size;
    enum qcow2_prealloc mode;
    int ret;

    if (new_size % 512) {
        return vimg_error(-EINVAL, "%s: the new size must be a multiple of "
                                   "512",
                          img->filename);
    }
    ret = qcow2_prealloc_parse(preallocation, &mode);
    if (ret == 0) {
        ret = check_resize(img, new_size, mode);
    }
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow2_begin_change(img);
    if (ret == 0) {
        /* bitmaps follow the new size (qemu: refused if inconsistent) */
        ret = qcow2_dirty_resize_begin_locked(img);
    }
    if (ret == 0 && new_size < old) {
        ret = shrink_locked(img, new_size);
    }
    if (ret == 0 && new_size > old) {
        ret = grow_locked(img, new_size, mode);
    }
    if (ret == 0) {
        ret = commit_size_locked(img, new_size);
    }
    pthread_mutex_unlock(&s->lock);
    (void)flags;
    return ret;
}
