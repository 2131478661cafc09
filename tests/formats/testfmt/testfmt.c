/* SPDX-License-Identifier: MIT */
/*
 * testfmt.c: a tiny read-only format that exists only in the test build
 * (vimg-testfmt, tests/formats/meson.build), to show what adding a format
 * takes: this file, one line in lib/formats/registry.c and one meson line.
 * tests/cli/test_new_format.py drives it through the CLI.
 *
 * Layout, little-endian:
 *   0   8  magic "VIMGTEST"
 *   8   8  virtual disk size in bytes
 *   16     zero up to TESTFMT_HEADER_BYTES
 *   512    the disk's bytes, in order (a short file reads as zeroes)
 */
#include <string.h>

#include "formats/format.h"
#include "vimg-endian.h"

#define TESTFMT_MAGIC "VIMGTEST"
#define TESTFMT_MAGIC_LEN 8
#define TESTFMT_HEADER_BYTES 512
#define TESTFMT_MAX_SIZE (UINT64_C(1) << 50)

static int testfmt_probe(const uint8_t *buf, size_t len)
{
    return len >= TESTFMT_MAGIC_LEN &&
                   memcmp(buf, TESTFMT_MAGIC, TESTFMT_MAGIC_LEN) == 0
               ? 100
               : 0;
}

static int testfmt_open(struct vimg_image *img, unsigned flags)
{
    uint8_t header[16];

    if (flags & VIMG_OPEN_RDWR) {
        return vimg_error(-EROFS, "%s: testfmt images are read-only",
                          img->filename);
    }
    int ret = vimg_io_pread(img->io, header, sizeof(header), 0);
    if (ret < 0) {
        return ret;
    }
    if (memcmp(header, TESTFMT_MAGIC, TESTFMT_MAGIC_LEN) != 0) {
        return vimg_error(-EINVAL, "%s: not a testfmt image", img->filename);
    }
    const uint64_t size = load_le64(header + 8);
    if (size > TESTFMT_MAX_SIZE) {
        return vimg_error(-EIO, "testfmt: corrupt header: size 0x%llx",
                          (unsigned long long)size);
    }
    img->size = size;
    return 0;
}

static void testfmt_close(struct vimg_image *img)
{
    (void)img;
}

static int testfmt_pread(struct vimg_image *img, void *buf, size_t count,
                         uint64_t offset)
{
    return vimg_io_pread(img->io, buf, count, TESTFMT_HEADER_BYTES + offset);
}

/* Every byte is stored data, at a fixed distance from the disk's. */
static int testfmt_block_status(struct vimg_image *img, uint64_t offset,
                                uint64_t count, struct vimg_layer_status *out)
{
    out->length = count;
    out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET;
    out->file_offset = TESTFMT_HEADER_BYTES + offset;
    out->file_name = img->filename;
    return 0;
}

const struct vimg_format vimg_format_testfmt = {
    .name = "testfmt",
    .probe = testfmt_probe,
    .open = testfmt_open,
    .close = testfmt_close,
    .pread = testfmt_pread,
    .block_status = testfmt_block_status,
};
