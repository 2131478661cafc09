/* SPDX-License-Identifier: MIT */
/*
 * fuzz-probe.c: libFuzzer target for format probing (registry.c,
 * probe-foreign.c), which reads the first and last sectors of every file
 * opened without a format.  The input is the file; its first byte picks
 * the file name the probe sees (none, *.img or *.dmg).  Besides crashes
 * and sanitizer reports it aborts when probing breaks a promise: a name
 * that is neither a driver's nor a known foreign format, a result that
 * depends on bytes past the first 512 (other than the tail), an open from
 * memory that disagrees with the probe, or a refusal that does not name
 * the format.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what, const char *fmt)
{
    fprintf(stderr, "fuzz-probe: broken promise: %s (format %s, \"%s\")\n",
            what, fmt, vimg_last_error());
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {NULL, "disk.img", "disk.dmg"};
    const char *name = size ? names[data[0] % 3] : NULL;
    struct vimg_probe_data d = {
        .head = data,
        .head_len = VIMG_MIN(size, (size_t)VIMG_PROBE_HEAD_BYTES),
        .tail = size >= 512 ? data + size - 512 : NULL,
        .tail_len = size >= 512 ? 512 : 0,
        .name = name,
    };
    const struct vimg_format *drv = NULL;
    const char *fmt = vimg_format_probe_data(&d, &drv);
    if (!fmt || (drv && strcmp(drv->name, fmt) != 0) ||
        (!drv && !vimg_format_is_foreign(fmt))) {
        broken("probe result is not a known format", fmt ? fmt : "NULL");
    }
    /* the head alone (as the block-0 guard probes) must not crash */
    struct vimg_probe_data head_only = {.head = d.head,
                                        .head_len = d.head_len};
    const struct vimg_format *head_drv = NULL;
    (void)vimg_format_probe_data(&head_only, &head_drv);

    vimg_image *img = NULL;
    vimg_error_clear();
    const int ret = vimg_open_memory(&img, data, size, NULL,
                                     name ? name : "memory");
    if (!drv && !name) {
        /* "memory" is no *.dmg: the refusal names the format */
        if (ret != -ENOTSUP || !strstr(vimg_last_error(), fmt)) {
            broken("foreign format not refused by name", fmt);
        }
    } else if (ret == 0 && strcmp(vimg_format(img), fmt) != 0) {
        broken("open picked another format than the probe", fmt);
    }
    vimg_close(img);
    return 0;
}
