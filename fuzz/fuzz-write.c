/* SPDX-License-Identifier: MIT */
/*
 * fuzz-write.c: libFuzzer target for the qcow2 write paths on arbitrary
 * images.  The input bytes become a read-write memory file; if it opens,
 * it is written to, zeroed, discarded, snapshotted (create, apply,
 * delete), amended (refcount width, compat both ways, size) and resized.
 * Each call may fail, but only with a negative errno and a one-line
 * message; besides crashes, sanitizer reports and leaks, the target
 * aborts when that promise of vimg.h is broken.
 *
 * Work is bounded as in fuzz-check.c: inputs whose L1 tables could make
 * a snapshot operation walk more than WORK_BUDGET L2 entries are skipped.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WORK_BUDGET (UINT64_C(1) << 22)

static void check_error(int ret, const char *call)
{
    if (ret >= 0) {
        return;
    }
    if (ret < -4095 || vimg_last_error()[0] == '\0' ||
        strchr(vimg_last_error(), '\n') != NULL) {
        fprintf(stderr, "fuzz-write: broken promise: %s (ret %d, \"%s\")\n",
                call, ret, vimg_last_error());
        abort();
    }
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

static uint64_t work_estimate(const uint8_t *data, size_t size)
{
    if (size < 72) {
        return 0;
    }
    const uint32_t cluster_bits = be32(data + 20);
    if (cluster_bits < 9 || cluster_bits > 21) {
        return 0;
    }
    const uint64_t in_file = size / 8;
    const uint64_t l1_size = be32(data + 36);
    const uint64_t l1 = l1_size < in_file ? l1_size : in_file;
    const uint64_t per_l2 = ((uint64_t)1 << cluster_bits) / 8;
    const uint64_t l2 = per_l2 < in_file ? per_l2 : in_file;
    return (be32(data + 60) + (uint64_t)2) * l1 * l2;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (work_estimate(data, size) > WORK_BUDGET) {
        return 0;
    }
    struct vimg_io *io = NULL;
    int ret = vimg_io_mem_new(&io, data, size, "fuzz-input");
    check_error(ret, "vimg_io_mem_new");
    if (ret < 0) {
        return 0;
    }
    vimg_image *img = NULL;
    ret = vimg_open_io(&img, io, "fuzz-input", "qcow2",
                       VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING |
                           VIMG_OPEN_MEMORY);
    check_error(ret, "vimg_open_io");
    if (ret < 0) {
        return 0;
    }
    const uint64_t disk = vimg_size(img);
    static uint8_t buf[65536];
    memset(buf, 0x5a, sizeof(buf));
    if (disk >= sizeof(buf)) {
        check_error(vimg_pwrite(img, buf, sizeof(buf), 0), "pwrite");
        check_error(vimg_write_zeroes(img, disk / 2 & ~UINT64_C(511),
                                      VIMG_MIN(disk / 4, UINT64_C(1) << 20)
                                          & ~UINT64_C(511),
                                      VIMG_ZERO_MAY_UNMAP),
                    "write_zeroes");
    }
    check_error(vimg_snapshot_create(img, "fuzz"), "snapshot_create");
    if (disk >= 4096) {
        check_error(vimg_pwrite(img, buf, 4096, disk - 4096), "pwrite end");
        check_error(vimg_discard(img, 0, 4096), "discard");
    }
    check_error(vimg_snapshot_apply(img, "fuzz"), "snapshot_apply");
    check_error(vimg_snapshot_delete(img, "fuzz"), "snapshot_delete");

    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
    o.refcount_bits = 64;
    check_error(vimg_amend(img, &o, VIMG_AMEND_REFCOUNT_BITS),
                "amend refcount_bits");
    o.qcow2_version = 2;
    o.refcount_bits = 16;
    check_error(vimg_amend(img, &o,
                           VIMG_AMEND_REFCOUNT_BITS | VIMG_AMEND_COMPAT),
                "amend compat=0.10");
    o.qcow2_version = 3;
    o.lazy_refcounts = true;
    check_error(vimg_amend(img, &o,
                           VIMG_AMEND_COMPAT | VIMG_AMEND_LAZY_REFCOUNTS),
                "amend compat=1.1");
    if (disk <= (UINT64_C(1) << 40)) {
        check_error(vimg_resize(img, (disk + 65536) & ~UINT64_C(511), NULL,
                                0),
                    "resize");
    }
    check_error(vimg_flush(img), "flush");
    vimg_close(img);
    return 0;
}
