/* SPDX-License-Identifier: MIT */
/*
 * registry.c: the list of format drivers, in probe order, and probing.
 * Probing also knows the formats vimg has no driver for
 * (probe-foreign.c), so that they are refused by name, never taken for
 * raw.
 */
#include <string.h>

#include "formats/format.h"

/*
 * The drivers, in probe order: the highest probe() score wins, a tie goes
 * to the earlier line.  Adding a format is one line here, naming the
 * driver's `const struct vimg_format vimg_format_NAME`, and one line in
 * lib/meson.build for its folder (docs/HACKING.md).
 */
#define VIMG_FORMATS(X)                                                    \
    X(qcow2)                                                               \
    X(qcow)                                                                \
    X(vhdx)                                                                \
    VIMG_TEST_FORMATS(X)                                                   \
    X(raw) /* last: accepts anything with the lowest score */

/* Test builds of the library (tests/formats/meson.build) add their
 * drivers here: -D'VIMG_TEST_FORMATS(X)=X(testfmt)'. */
#ifndef VIMG_TEST_FORMATS
#define VIMG_TEST_FORMATS(X)
#endif

#define DECLARE_FORMAT(name) extern const struct vimg_format vimg_format_##name;
VIMG_FORMATS(DECLARE_FORMAT)

#define FORMAT_ENTRY(name) &vimg_format_##name,
static const struct vimg_format *const formats[] = {VIMG_FORMATS(FORMAT_ENTRY)};

const struct vimg_format *vimg_format_at(size_t index)
{
    return index < sizeof(formats) / sizeof(formats[0]) ? formats[index]
                                                         : NULL;
}

const struct vimg_format *vimg_format_find(const char *name)
{
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        if (strcmp(formats[i]->name, name) == 0) {
            return formats[i];
        }
    }
    return NULL;
}

bool vimg_format_is_foreign(const char *name)
{
    for (const struct vimg_foreign_format *f = vimg_foreign_formats;
         f->name; f++) {
        if (strcmp(f->name, name) == 0) {
            return !vimg_format_find(name);
        }
    }
    return false;
}

const char *vimg_format_probe_data(const struct vimg_probe_data *d,
                                   const struct vimg_format **out)
{
    const struct vimg_format *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        int score = formats[i]->probe ? formats[i]->probe(d->head,
                                                          d->head_len)
                                      : 0;
        if (score > best_score) {
            best = formats[i];
            best_score = score;
        }
    }
    /* a driver wins ties; a foreign format must be surer */
    const char *foreign = NULL;
    for (const struct vimg_foreign_format *f = vimg_foreign_formats;
         f->name; f++) {
        const int score = f->probe(d);
        if (score > best_score && !vimg_format_find(f->name)) {
            foreign = f->name;
            best_score = score;
        }
    }
    *out = foreign ? NULL : best;
    return foreign ? foreign : best->name;
}

int vimg_format_probe(struct vimg_io *io, const struct vimg_format **out)
{
    uint8_t head[VIMG_PROBE_HEAD_BYTES];
    uint8_t tail[512];
    uint64_t size;
    int ret = vimg_io_get_size(io, &size);

    if (ret < 0) {
        return ret;
    }
    struct vimg_probe_data d = {
        .head = head,
        .head_len = (size_t)VIMG_MIN(size, sizeof(head)),
        .name = io->name,
    };
    ret = vimg_io_pread(io, head, d.head_len, 0);
    if (ret == 0 && size >= sizeof(tail)) {
        d.tail = tail;
        d.tail_len = sizeof(tail);
        ret = vimg_io_pread(io, tail, sizeof(tail), size - sizeof(tail));
    }
    if (ret < 0) {
        return ret;
    }
    const char *name = vimg_format_probe_data(&d, out);
    if (!*out) {
        return vimg_error(-ENOTSUP,
                          "%s: image is in %s format, which vimg does not "
                          "support yet",
                          io->name, name);
    }
    return 0;
}

int vimg_format_guard_head(struct vimg_image *img, const void *buf,
                           size_t count, uint64_t offset)
{
    uint8_t head[VIMG_PROBE_HEAD_BYTES];

    if (!img->is_probed || img->drv != &vimg_format_raw ||
        offset >= sizeof(head) || count == 0) {
        return 0;
    }
    /* the first sector as it would be after the write (the image layer
     * checked the range, and a raw disk is whole sectors) */
    const size_t len = (size_t)VIMG_MIN(img->size, sizeof(head));
    int ret = img->drv->pread(img, head, len, 0);
    if (ret < 0) {
        return ret;
    }
    const size_t n = (size_t)VIMG_MIN((uint64_t)count, len - offset);
    if (buf) {
        memcpy(head + offset, buf, n);
    } else {
        memset(head + offset, 0, n);
    }
    /* the head alone, as the next probe of the file starts */
    const struct vimg_probe_data d = {.head = head, .head_len = len};
    const struct vimg_format *drv = NULL;
    const char *name = vimg_format_probe_data(&d, &drv);
    if (drv == &vimg_format_raw) {
        return 0;
    }
    return vimg_error(-EPERM,
                      "%s: Operation not permitted: the format was guessed "
                      "as raw, and this write would make the image probe as "
                      "%s (give the format raw to allow it)",
                      img->filename, name);
}
