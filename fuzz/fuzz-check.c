/* SPDX-License-Identifier: MIT */
/*
 * fuzz-check.c: libFuzzer target for vimg_check.  The input bytes become
 * a read-write memory file opened as qcow2 for checking; it is checked,
 * repaired with VIMG_CHECK_REPAIR_ALL, and checked again.  Besides crashes,
 * sanitizer reports and leaks, it aborts when the library breaks a promise
 * of vimg.h: an error that is not a negative errno or has no message, a
 * report line that is empty or has a newline, a repair that fixes things
 * while the check said nothing was wrong.
 *
 * Work is bounded the way the format bounds it: the refcount array is two
 * bytes per 512-byte cluster of the input, and inputs whose L1 tables
 * (active and snapshots) could make the check read more than WORK_BUDGET
 * L2 entries are skipped, so a header claiming 65536 snapshots of a huge
 * L1 table does not time the fuzzer out.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WORK_BUDGET (UINT64_C(1) << 24)

static void broken(const char *what, int ret)
{
    fprintf(stderr, "fuzz-check: broken promise: %s (ret %d, error \"%s\")\n",
            what, ret, vimg_last_error());
    abort();
}

static void check_error(int ret, const char *call)
{
    if (ret >= 0) {
        return;
    }
    if (ret < -4095 || vimg_last_error()[0] == '\0') {
        broken(call, ret);
    }
    if (strchr(vimg_last_error(), '\n') != NULL) {
        broken("error message is not one line", ret);
    }
}

static void report(void *opaque, const char *msg)
{
    size_t *nb = opaque;

    if (msg[0] == '\0' || strchr(msg, '\n') != NULL) {
        broken("report line empty or with a newline", 0);
    }
    (*nb)++;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

/* An upper bound of the L2 entries a check of DATA would look at. */
static uint64_t work_estimate(const uint8_t *data, size_t size)
{
    if (size < 72) {
        return 0;
    }
    const uint32_t cluster_bits = be32(data + 20);
    const uint64_t l1_size = be32(data + 36);
    const uint64_t nb_snapshots = be32(data + 60);
    if (cluster_bits < 9 || cluster_bits > 21) {
        return 0;
    }
    /* only entries inside the file can be non-zero */
    const uint64_t in_file = size / 8;
    const uint64_t l1 = l1_size < in_file ? l1_size : in_file;
    const uint64_t l2 = ((uint64_t)1 << cluster_bits) / 8 < in_file
                            ? ((uint64_t)1 << cluster_bits) / 8
                            : in_file;
    const uint64_t tables = (nb_snapshots + 1) * l1;
    return tables * l2;
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
                       VIMG_OPEN_RDWR | VIMG_OPEN_CHECK |
                           VIMG_OPEN_NO_BACKING | VIMG_OPEN_MEMORY);
    check_error(ret, "vimg_open_io");
    if (ret < 0) {
        return 0;
    }
    struct vimg_check_result r;
    size_t nb = 0;
    ret = vimg_check(img, 0, &r, report, &nb);
    check_error(ret, "vimg_check");
    if (ret == 0 && (r.corruptions_fixed || r.leaks_fixed)) {
        broken("a check without repair fixed something", ret);
    }
    const bool was_clean = ret == 0 && r.corruptions == 0 && r.leaks == 0 &&
                           r.check_errors == 0;
    ret = vimg_check(img, VIMG_CHECK_REPAIR_ALL, &r, report, &nb);
    check_error(ret, "vimg_check -r all");
    if (ret == 0 && was_clean && (r.corruptions_fixed || r.leaks_fixed)) {
        broken("a repair fixed an image the check found clean", ret);
    }
    ret = vimg_check(img, 0, &r, report, &nb);
    check_error(ret, "vimg_check after repair");
    vimg_close(img);
    return 0;
}
