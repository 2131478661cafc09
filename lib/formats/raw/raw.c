/* SPDX-License-Identifier: MIT */
/*
 * raw.c: the raw format: the virtual disk is the file, byte for byte.
 */
#include <string.h>

#include "formats/format.h"

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1; /* anything can be raw */
}

static int raw_open(struct vimg_image *img, unsigned flags)
{
    uint64_t size;
    int ret = vimg_io_get_size(img->io, &size);

    if (ret < 0) {
        return ret;
    }
    /* Disks are made of 512-byte sectors: like qemu, round the size up;
     * the tail past the end of the file reads as zeroes. */
    if (size > UINT64_MAX - 511) {
        return vimg_error(-EFBIG, "%s: file too large", img->filename);
    }
    img->size = (size + 511) & ~(uint64_t)511;
    return 0;
}

static void raw_close(struct vimg_image *img)
{
    (void)img;
}

static int raw_pread(struct vimg_image *img, void *buf, size_t count,
                     uint64_t offset)
{
    return vimg_io_pread(img->io, buf, count, offset);
}

static int raw_pwrite(struct vimg_image *img, const void *buf, size_t count,
                      uint64_t offset)
{
    return vimg_io_pwrite(img->io, buf, count, offset);
}

static int raw_flush(struct vimg_image *img)
{
    return vimg_io_flush(img->io);
}

static int raw_block_status(struct vimg_image *img, uint64_t offset,
                            uint64_t count, struct vimg_layer_status *out)
{
    int ret = vimg_io_data_status(img->io, offset, count, &out->length);

    if (ret < 0) {
        return ret;
    }
    out->flags = (ret ? VIMG_EXTENT_DATA : VIMG_EXTENT_ZERO) |
                 VIMG_EXTENT_OFFSET;
    out->file_offset = offset;
    out->file_name = img->filename;
    return 0;
}

const struct vimg_format vimg_format_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .flush = raw_flush,
    .block_status = raw_block_status,
};
