/* SPDX-License-Identifier: MIT */
/*
 * image-options.c: the public entry points that take format options:
 * create, amend and the measure plans (checked here, then dispatched to
 * the driver of the option list's format, as image.c does for the rest),
 * the deprecated fixed-struct wrappers of create and amend, and the
 * capability query.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/format.h"

int vimg_amend_ext(vimg_image *img, const vimg_opts *opts)
{
    if (!img || !opts || vimg_opts_purpose(opts) != VIMG_OPTS_AMEND) {
        return vimg_error(-EINVAL, "vimg_amend: bad argument");
    }
    if (vimg_opts_driver(opts) != img->drv) {
        return vimg_error(-EINVAL, "%s: the options are for format '%s', "
                                   "the image is '%s'",
                          img->filename, vimg_opts_format(opts),
                          img->drv->name);
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (vimg_opts_number(opts, "size", 0) % 512) {
        return vimg_error(-EINVAL, "%s: the new size must be a multiple of "
                                   "512",
                          img->filename);
    }
    return img->drv->amend(img, opts);
}

int vimg_amend(vimg_image *img, const struct vimg_create_opts *caller_opts,
               unsigned which)
{
    struct vimg_create_opts c;

    if (!img || vimg_create_opts_copy(caller_opts, &c) < 0) {
        return vimg_error(-EINVAL, "vimg_amend: bad argument");
    }
    if (((which & VIMG_AMEND_DATA_FILE) && !c.data_file) ||
        ((which & VIMG_AMEND_BACKING_FILE) && !c.backing_file) ||
        ((which & VIMG_AMEND_BACKING_FMT) && !c.backing_format)) {
        return vimg_error(-EINVAL, "vimg_amend: a named option has no value");
    }
    c.format = img->drv->name;
    vimg_opts *opts = NULL;
    int ret = vimg_opts_from_create_opts(&c, VIMG_OPTS_AMEND, which, &opts);
    if (ret == 0) {
        ret = vimg_amend_ext(img, opts);
    }
    vimg_opts_free(opts);
    return ret;
}

/* The VIMG_CAN_* bits of driver D; the write bits only with IS_WRITABLE */
static unsigned driver_capabilities(const struct vimg_format *d,
                                    bool is_writable)
{
    const bool w = is_writable;
    const struct {
        bool has;
        unsigned bit;
    } caps[] = {
        {w && d->pwrite, VIMG_CAN_WRITE},
        {w && d->pwrite && d->write_zeroes, VIMG_CAN_ZERO},
        {w && d->discard, VIMG_CAN_DISCARD},
        {d->block_status != NULL, VIMG_CAN_EXTENTS},
        {d->snapshot_create && d->snapshot_apply && d->snapshot_delete,
         VIMG_CAN_SNAPSHOT},
        {w && d->resize, VIMG_CAN_RESIZE},
        {w && d->flush, VIMG_CAN_FLUSH},
        {w && d->pwrite_compressed, VIMG_CAN_COMPRESS},
        {d->change_backing != NULL, VIMG_CAN_BACKING},
        {d->amend != NULL, VIMG_CAN_AMEND},
        {d->check != NULL, VIMG_CAN_CHECK},
        {d->create && d->options, VIMG_CAN_CREATE},
    };
    unsigned mask = 0;

    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        mask |= caps[i].has ? caps[i].bit : 0;
    }
    return mask;
}

unsigned vimg_capabilities(const vimg_image *img)
{
    if (!img) {
        return 0;
    }
    const unsigned mask = driver_capabilities(img->drv, img->is_writable);
    return mask | (img->drv->capabilities ? img->drv->capabilities(img) : 0);
}

unsigned vimg_format_capabilities(const char *format)
{
    const struct vimg_format *d = format ? vimg_format_find(format) : NULL;

    return d ? driver_capabilities(d, true) : 0;
}

int vimg_create_ext(const char *path, const vimg_opts *opts)
{
    if (!path || !opts || vimg_opts_purpose(opts) == VIMG_OPTS_AMEND) {
        return vimg_error(-EINVAL, "vimg_create: bad argument");
    }
    vimg_error_clear();
    const struct vimg_format *drv = vimg_opts_driver(opts);
    /* All or nothing: a create that fails removes the file it made (never
     * one that was there before, nor a device). */
    struct stat st;
    const bool existed = lstat(path, &st) == 0;
    int ret = drv->create(path, opts);
    if (ret < 0 && !existed && lstat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        unlink(path);
    }
    return ret;
}

int vimg_create(const char *path, const struct vimg_create_opts *caller_opts)
{
    vimg_opts *opts = NULL;

    if (!path) {
        return vimg_error(-EINVAL, "vimg_create: bad argument");
    }
    int ret = vimg_opts_from_create_opts(caller_opts, VIMG_OPTS_CREATE, 0,
                                         &opts);
    if (ret == 0) {
        ret = vimg_create_ext(path, opts);
    }
    vimg_opts_free(opts);
    return ret;
}

int vimg_image_plan(const struct vimg_opts *opts, uint64_t virtual_size,
                    struct vimg_measure_plan *out)
{
    const struct vimg_format *drv = vimg_opts_driver(opts);

    if (vimg_opts_purpose(opts) == VIMG_OPTS_AMEND) {
        return vimg_error(-EINVAL, "vimg_measure: bad argument");
    }
    if (!drv->measure) {
        return vimg_error(-ENOTSUP,
                          "Block driver '%s' does not support size "
                          "measurement",
                          drv->name);
    }
    memset(out, 0, sizeof(*out));
    return drv->measure(opts, virtual_size, out);
}

int vimg_image_plan_bitmaps(const struct vimg_opts *opts, vimg_image *src,
                            uint64_t *out)
{
    const struct vimg_format *drv = vimg_opts_driver(opts);

    *out = 0;
    return drv->measure_bitmaps ? drv->measure_bitmaps(opts, src, out) : 0;
}
