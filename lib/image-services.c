/* SPDX-License-Identifier: MIT */
/*
 * image-services.c: the image-layer services of image-services.h that
 * read an image handle for lib/ops.
 */
#include "vimg-internal.h"

const char *vimg_backing_name(const vimg_image *img)
{
    return img->backing_name;
}

bool vimg_file_is_device(const vimg_image *img)
{
    return img->io->is_device;
}

int vimg_file_size(vimg_image *img, uint64_t *out)
{
    return vimg_io_get_size(img->io, out);
}
