/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap.c: the bitmap directory (qcow2.txt, "Bitmaps" and
 * docs/interop/bitmaps.rst): decode and encode, with every field checked.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

enum {
    BM_TABLE_OFFSET = 0,
    BM_TABLE_SIZE = 8,
    BM_FLAGS = 12,
    BM_TYPE = 16,
    BM_GRANULARITY_BITS = 17,
    BM_NAME_SIZE = 18,
    BM_EXTRA_SIZE = 20,
    BM_FIXED_LEN = 24,
};

void qcow2_bitmaps_free(struct qcow2_bitmap *bm, size_t nb)
{
    if (!bm) {
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        free(bm[i].name);
        free(bm[i].extra_data);
    }
    free(bm);
}

static int bad_entry(uint32_t i, const char *what)
{
    return vimg_error(-EIO, "qcow2: corrupt bitmap directory: entry %u: %s",
                      i, what);
}

int qcow2_bitmaps_decode(struct qcow2_bitmap **out, uint32_t nb,
                         const uint8_t *buf, size_t len)
{
    struct qcow2_bitmap *bm = calloc(nb ? nb : 1, sizeof(*bm));
    size_t off = 0;
    int ret = 0;

    if (!bm) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < nb; i++) {
        struct qcow2_bitmap *b = &bm[i];
        if (len - off < BM_FIXED_LEN) {
            ret = bad_entry(i, "directory is truncated");
            goto fail;
        }
        const uint8_t *e = buf + off;
        b->table_offset = load_be64(e + BM_TABLE_OFFSET);
        b->table_size = load_be32(e + BM_TABLE_SIZE);
        b->flags = load_be32(e + BM_FLAGS);
        b->type = e[BM_TYPE];
        b->granularity_bits = e[BM_GRANULARITY_BITS];
        const size_t name_size = load_be16(e + BM_NAME_SIZE);
        b->extra_data_size = load_be32(e + BM_EXTRA_SIZE);
        if (name_size == 0 || name_size > QCOW2_MAX_BITMAP_NAME) {
            ret = bad_entry(i, "bad name size");
            goto fail;
        }
        if (b->extra_data_size > len) {
            ret = bad_entry(i, "extra data is larger than the directory");
            goto fail;
        }
        const size_t entry_len = (BM_FIXED_LEN + (size_t)b->extra_data_size +
                                  name_size + 7) & ~(size_t)7;
        if (len - off < entry_len) {
            ret = bad_entry(i, "directory is truncated");
            goto fail;
        }
        if (b->granularity_bits > 63) {
            ret = bad_entry(i, "granularity_bits above 63");
            goto fail;
        }
        if (b->flags & QCOW2_BITMAP_RESERVED_FLAGS) {
            ret = bad_entry(i, "reserved flags are set");
            goto fail;
        }
        b->name = malloc(name_size + 1);
        b->extra_data = malloc(b->extra_data_size ? b->extra_data_size : 1);
        if (!b->name || !b->extra_data) {
            ret = vimg_error(-ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(b->name, e + BM_FIXED_LEN + b->extra_data_size, name_size);
        b->name[name_size] = '\0';
        memcpy(b->extra_data, e + BM_FIXED_LEN, b->extra_data_size);
        off += entry_len;
    }
    *out = bm;
    return 0;
fail:
    qcow2_bitmaps_free(bm, nb);
    return ret;
}

size_t qcow2_bitmaps_encode(const struct qcow2_bitmap *bm, size_t nb,
                            uint8_t *buf)
{
    size_t off = 0;

    for (size_t i = 0; i < nb; i++) {
        const struct qcow2_bitmap *b = &bm[i];
        const size_t name_size = strlen(b->name);
        const size_t entry_len = (BM_FIXED_LEN + b->extra_data_size +
                                  name_size + 7) & ~(size_t)7;
        if (buf) {
            uint8_t *e = buf + off;
            memset(e, 0, entry_len);
            store_be64(e + BM_TABLE_OFFSET, b->table_offset);
            store_be32(e + BM_TABLE_SIZE, b->table_size);
            store_be32(e + BM_FLAGS, b->flags);
            e[BM_TYPE] = b->type;
            e[BM_GRANULARITY_BITS] = b->granularity_bits;
            store_be16(e + BM_NAME_SIZE, (uint16_t)name_size);
            store_be32(e + BM_EXTRA_SIZE, b->extra_data_size);
            if (b->extra_data_size) {
                memcpy(e + BM_FIXED_LEN, b->extra_data, b->extra_data_size);
            }
            memcpy(e + BM_FIXED_LEN + b->extra_data_size, b->name, name_size);
        }
        off += entry_len;
    }
    return off;
}
