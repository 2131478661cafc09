/* SPDX-License-Identifier: MIT */
/*
 * raw.c: the raw format: the virtual disk is the file, byte for byte.
 */
#include <stdio.h>
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

/* Zeroes: a hole when unmapping is allowed and the file system can */
static int raw_write_zeroes(struct vimg_image *img, uint64_t offset,
                            uint64_t count, unsigned flags)
{
    return vimg_io_zero(img->io, offset, count, flags & VIMG_ZERO_MAY_UNMAP);
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

/* qemu-img measure -O raw: the file is the disk, holes or not; a raw
 * image takes no options that change that (preallocation is not even
 * checked, as qemu-img does not check it either). */
static int raw_measure(const struct vimg_opts *opts, uint64_t virtual_size,
                       struct vimg_measure_plan *out)
{
    (void)opts;
    if (virtual_size > UINT64_MAX - 511) {
        return vimg_error(-EFBIG, "image size too large");
    }
    out->virtual_size = (virtual_size + 511) & ~(uint64_t)511;
    out->metadata_bytes = 0;
    out->data_unit_bytes = 512;
    out->is_preallocated = true;
    out->can_store_bitmaps = false;
    return 0;
}

static int raw_resize(struct vimg_image *img, uint64_t new_size,
                      const char *preallocation, unsigned flags)
{
    enum vimg_prealloc mode = VIMG_PREALLOC_OFF;
    const uint64_t old = img->size;

    /* the image layer refused other words */
    vimg_prealloc_parse(preallocation, &mode);
    if (mode == VIMG_PREALLOC_METADATA) {
        return vimg_error(-EINVAL, "%s: Unsupported preallocation mode: "
                                   "metadata",
                          img->filename);
    }
    if (img->io->is_device) {
        return vimg_error(-ENOTSUP, "%s: Cannot resize device files",
                          img->filename);
    }
    uint64_t old_file = 0;
    int ret = vimg_io_get_size(img->io, &old_file);
    if (ret < 0) {
        return ret;
    }
    ret = vimg_io_truncate(img->io, new_size);
    if (ret == 0 && new_size > old && mode == VIMG_PREALLOC_FALLOC) {
        ret = vimg_io_fallocate(img->io, old, new_size - old);
    }
    if (ret == 0 && new_size > old && mode == VIMG_PREALLOC_FULL) {
        static const uint8_t zero[64 * 1024];
        for (uint64_t off = old; off < new_size && ret == 0;) {
            const size_t n = (size_t)VIMG_MIN(new_size - off, sizeof(zero));
            ret = vimg_io_pwrite(img->io, zero, n, off);
            off += n;
        }
    }
    if (ret == 0) {
        img->size = (new_size + 511) & ~(uint64_t)511;
    } else if (new_size > old_file) {
        /* all or nothing: a failed preallocation (a full file system)
         * leaves the old size, as qemu-img does; the error stays */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vimg_last_error());
        vimg_io_truncate(img->io, old_file);
        vimg_error(ret, "%s", msg);
    }
    return ret;
}

static int raw_create(const char *path, const struct vimg_opts *o)
{
    const char *prealloc = vimg_opts_get(o, "preallocation");
    enum vimg_prealloc mode;

    if (vimg_prealloc_parse(prealloc, &mode) < 0 ||
        mode == VIMG_PREALLOC_METADATA) {
        return vimg_error(-EINVAL, "%s: Unsupported preallocation mode: %s",
                          path, prealloc);
    }
    prealloc = prealloc ? prealloc : "off";
    const bool is_off = mode == VIMG_PREALLOC_OFF;
    const bool is_falloc = mode == VIMG_PREALLOC_FALLOC;
    const bool is_full = mode == VIMG_PREALLOC_FULL;
    const uint64_t size =
        (vimg_opts_number(o, "size", 0) + 511) & ~(uint64_t)511;
    struct vimg_io *io = NULL;
    int ret = vimg_io_file_open(&io, path, true, true);
    if (ret < 0) {
        return ret;
    }
    if (io->is_device && !is_off) {
        ret = vimg_error(-ENOTSUP, "%s: preallocation mode '%s' is not "
                                   "supported on a block device",
                         path, prealloc);
    } else {
        ret = vimg_io_truncate(io, size);
    }
    if (ret == 0 && is_falloc && size) {
        ret = vimg_io_fallocate(io, 0, size);
    }
    if (ret == 0 && (is_off || is_full)) {
        /* qemu allocates the first block of a new raw file (so O_DIRECT
         * users can probe alignment), on a device the first sector; full
         * writes zeroes everywhere */
        static const uint8_t zero[64 * 1024];
        const uint64_t first = io->is_device ? 512 : 4096;
        const uint64_t end = is_full ? size : VIMG_MIN(size, first);
        for (uint64_t off = 0; off < end && ret == 0;) {
            const size_t n = (size_t)VIMG_MIN(end - off, sizeof(zero));
            ret = vimg_io_pwrite(io, zero, n, off);
            off += n;
        }
    }
    if (ret == 0) {
        ret = vimg_io_flush(io);
    }
    vimg_io_close(io);
    return ret;
}

/* qemu-img create -f raw's options (the file's own, nocow and
 * extent_size_hint, are not taken) */
static const struct vimg_option raw_options[] = {
    {"size", VIMG_OPTION_SIZE, NULL, "Virtual disk size", 0},
    {"preallocation", VIMG_OPTION_STRING, "off", "off, falloc, full", 0},
    {NULL, 0, NULL, NULL, 0},
};

/* "preallocation=MODE size=N": the preallocation only when it was set */
static void raw_describe_options(const struct vimg_opts *o, FILE *out)
{
    const char *prealloc = vimg_opts_get(o, "preallocation");

    if (prealloc) {
        fprintf(out, "preallocation=%s ", prealloc);
    }
    fprintf(out, "size=%llu",
            (unsigned long long)vimg_opts_number(o, "size", 0));
}

const struct vimg_format vimg_format_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .flush = raw_flush,
    .write_zeroes = raw_write_zeroes,
    .block_status = raw_block_status,
    .create = raw_create,
    .resize = raw_resize,
    .measure = raw_measure,
    .options = raw_options,
    .describe_options = raw_describe_options,
};
