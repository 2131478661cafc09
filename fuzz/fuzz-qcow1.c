/* SPDX-License-Identifier: MIT */
/*
 * fuzz-qcow1.c: libFuzzer target for the QCOW version 1 driver.  The
 * input is decoded as a header (decode, encode and decode again must
 * agree), then opened read-write from memory as "qcow" and put through
 * what readers and writers do: info, check, block status over the disk,
 * bounded reads, a write at the start and at the end, write-zeroes, a
 * compressed cluster, a flush, and check again.  Besides crashes and
 * sanitizer reports it aborts on an error without a one-line message, on
 * a header that does not survive encoding, and when writes that all
 * succeeded leave corruptions in an image the first check found clean.
 * docs/formats/qcow.md describes corpus/fuzz-qcow1/.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow/qcow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { STATUS_STEPS = 2048, READ_CHUNK = 64 * 1024 + 7 };

static void broken(const char *what, int ret)
{
    fprintf(stderr, "fuzz-qcow1: broken promise: %s (ret %d, error \"%s\")\n",
            what, ret, vimg_last_error());
    abort();
}

/* A failed call returns a negative errno and leaves one line; true if it
 * succeeded. */
static bool ok(int ret, const char *call)
{
    if (ret >= 0) {
        return true;
    }
    if (ret < -4095 || vimg_last_error()[0] == '\0' ||
        strchr(vimg_last_error(), '\n')) {
        broken(call, ret);
    }
    return false;
}

static void header_round_trip(const uint8_t *data, size_t size)
{
    struct qcow_header h, again;
    uint8_t buf[QCOW_HDR_LEN];

    if (qcow_header_decode(data, size, &h) < 0) {
        return;
    }
    qcow_header_encode(&h, buf);
    if (qcow_header_decode(buf, sizeof(buf), &again) < 0 ||
        memcmp(&h, &again, sizeof(h)) != 0) {
        broken("header does not survive encoding", 0);
    }
}

static void report(void *opaque, const char *msg)
{
    (void)opaque;
    if (msg[0] == '\0' || strchr(msg, '\n')) {
        broken("check report line empty or not one line", 0);
    }
}

static uint64_t corruptions(vimg_image *img, bool *done)
{
    struct vimg_check_result r;
    *done = ok(vimg_check(img, 0, &r, report, NULL), "check");
    return *done ? r.corruptions + r.check_errors : 0;
}

static void read_around(vimg_image *img, uint64_t disk)
{
    static uint8_t buf[READ_CHUNK];
    uint64_t off = 0;

    for (unsigned i = 0; i < STATUS_STEPS && off < disk; i++) {
        struct vimg_extent e;
        if (!ok(vimg_block_status(img, off, disk - off, &e),
                "block_status")) {
            break;
        }
        if (e.length == 0 || e.length > disk - off) {
            broken("extent of a wrong length", 0);
        }
        off += e.length;
    }
    const uint64_t starts[] = {0, disk / 2, disk > READ_CHUNK ?
                                            disk - READ_CHUNK : 0};
    for (size_t i = 0; i < 3; i++) {
        const size_t n = (size_t)VIMG_MIN(disk - starts[i],
                                          (uint64_t)READ_CHUNK);
        if (n) {
            ok(vimg_pread(img, buf, n, starts[i]), "pread");
        }
    }
}

static bool write_some(vimg_image *img, uint64_t disk)
{
    static uint8_t buf[65536], z[65536];
    const uint32_t cs = vimg_cluster_size(img);
    bool all = true;

    for (size_t i = 0; i < sizeof(buf); i++) {
        buf[i] = (uint8_t)(i * 7 + (i >> 9));
    }
    const size_t n = (size_t)VIMG_MIN(disk, (uint64_t)sizeof(buf));
    all &= ok(vimg_pwrite(img, buf, n - n / 3, n / 3), "pwrite");
    all &= ok(vimg_pwrite(img, buf, n / 2, disk - n / 2), "pwrite end");
    all &= ok(vimg_write_zeroes(img, 0, n / 4, 0), "write_zeroes");
    if (disk >= 2ull * cs) {
        int len = vimg_compress_cluster(img, buf, cs, z, sizeof(z));
        all &= ok(len, "compress_cluster");
        if (len > 0) {
            all &= ok(vimg_pwrite_compressed(img, z, (size_t)len, cs),
                      "pwrite_compressed");
        }
    }
    all &= ok(vimg_flush(img), "flush");
    return all;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vimg_io *io = NULL;
    vimg_image *img = NULL;

    header_round_trip(data, size);
    if (!ok(vimg_io_mem_new(&io, data, size, "fuzz-input"), "mem_new") ||
        !ok(vimg_open_io(&img, io, "fuzz-input", "qcow",
                         VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING |
                             VIMG_OPEN_MEMORY),
            "open")) {
        return 0;
    }
    struct vimg_info *info = NULL;
    if (ok(vimg_get_info(img, &info), "info")) {
        vimg_info_free(info);
    }
    bool checked;
    const uint64_t before = corruptions(img, &checked);
    const uint64_t disk = vimg_size(img);
    read_around(img, disk);
    if (disk > 0 && write_some(img, disk) && checked && before == 0 &&
        corruptions(img, &checked) != 0) {
        broken("writes corrupted an image that checked clean", 0);
    }
    vimg_close(img);
    return 0;
}
