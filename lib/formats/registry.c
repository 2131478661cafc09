/* SPDX-License-Identifier: MIT */
/*
 * registry.c: the list of format drivers, in probe order, and probing.
 */
#include <string.h>

#include "formats/format.h"

static const struct vimg_format *const formats[] = {
    &vimg_format_qcow2,
    &vimg_format_raw, /* last: accepts anything with the lowest score */
};

const struct vimg_format *vimg_format_find(const char *name)
{
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        if (strcmp(formats[i]->name, name) == 0) {
            return formats[i];
        }
    }
    return NULL;
}

int vimg_format_probe(struct vimg_io *io, const struct vimg_format **out)
{
    uint8_t buf[4096];
    uint64_t size;
    int ret = vimg_io_get_size(io, &size);

    if (ret < 0) {
        return ret;
    }
    size_t len = (size_t)VIMG_MIN(size, sizeof(buf));
    ret = vimg_io_pread(io, buf, len, 0);
    if (ret < 0) {
        return ret;
    }
    const struct vimg_format *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        int score = formats[i]->probe ? formats[i]->probe(buf, len) : 0;
        if (score > best_score) {
            best = formats[i];
            best_score = score;
        }
    }
    *out = best;
    return 0;
}
