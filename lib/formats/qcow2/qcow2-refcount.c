/* SPDX-License-Identifier: MIT */
/*
 * qcow2-refcount.c: refcount block entries of every width (qcow2.txt,
 * "Host cluster management"), the size of a refcount structure that
 * counts itself, and the metadata-preallocation heuristic that block
 * status uses.
 */
#include <stdlib.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

uint64_t qcow2_refcount_get(const uint8_t *block, uint64_t index,
                            unsigned order)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        /* sub-byte widths: entry 0 is in the least significant bits */
        const unsigned bits = 1u << order;
        const unsigned per_byte = 8 / bits;
        const unsigned shift = (unsigned)(index % per_byte) * bits;
        return (block[index / per_byte] >> shift) & ((1u << bits) - 1);
    }
    case 3:
        return block[index];
    case 4:
        return load_be16(block + index * 2);
    case 5:
        return load_be32(block + index * 4);
    default:
        return load_be64(block + index * 8);
    }
}

void qcow2_refcount_set(uint8_t *block, uint64_t index, unsigned order,
                        uint64_t value)
{
    switch (order) {
    case 0:
    case 1:
    case 2: {
        const unsigned bits = 1u << order;
        const unsigned per_byte = 8 / bits;
        const unsigned shift = (unsigned)(index % per_byte) * bits;
        const uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        uint8_t *b = &block[index / per_byte];
        *b = (uint8_t)((*b & ~mask) | ((value << shift) & mask));
        break;
    }
    case 3:
        block[index] = (uint8_t)value;
        break;
    case 4:
        store_be16(block + index * 2, (uint16_t)value);
        break;
    case 5:
        store_be32(block + index * 4, (uint32_t)value);
        break;
    default:
        store_be64(block + index * 8, value);
        break;
    }
}

void qcow2_refcount_layout(uint64_t clusters, uint64_t cluster_size,
                           unsigned refcount_order, uint64_t *blocks_out,
                           uint64_t *table_out)
{
    const uint64_t per_block = cluster_size * 8 >> refcount_order;
    const uint64_t per_table_cluster = cluster_size / 8;
    uint64_t blocks = 0, table = 0;

    /*
     * Refcount blocks count every cluster, their own and the refcount
     * table's too, so adding them may call for more.  No closed formula
     * gives the same answer as qemu in every case: grow both from zero
     * until they cover clusters + blocks + table, the least fixed point,
     * reached in a few rounds (each adds a tiny fraction of the last).
     */
    for (;;) {
        const uint64_t b =
            VIMG_DIV_ROUND_UP(clusters + blocks + table, per_block);
        const uint64_t t = VIMG_DIV_ROUND_UP(b, per_table_cluster);
        if (b == blocks && t == table) {
            break;
        }
        blocks = b;
        table = t;
    }
    *blocks_out = blocks;
    *table_out = table;
}

/*
 * An image made with preallocation=metadata maps every cluster, but the
 * file is sparse: its clusters read as zeroes.  Like qemu, call an image
 * metadata-preallocated when clearly more clusters are referenced than the
 * file really occupies, so block status can look at the file's holes.
 */
int qcow2_detect_metadata_prealloc(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    uint64_t allocated;
    int ret = vimg_io_allocated_size(img->io, &allocated);

    if (ret < 0) {
        return ret;
    }
    const uint64_t real_clusters = allocated >> s->cluster_bits;
    const uint64_t threshold =
        VIMG_MAX(real_clusters * 10 / 9, real_clusters + 2);
    const uint64_t end_cluster =
        VIMG_DIV_ROUND_UP(s->file_size, s->cluster_size);
    const size_t reftable_bytes =
        (size_t)s->h.refcount_table_clusters << s->cluster_bits;
    const uint64_t per_block =
        (s->cluster_size * 8) >> s->h.refcount_order;

    uint8_t *reftable = malloc(reftable_bytes);
    uint8_t *block = malloc((size_t)s->cluster_size);
    if (!reftable || !block) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    ret = vimg_io_pread(img->io, reftable, reftable_bytes,
                        s->h.refcount_table_offset);
    if (ret < 0) {
        goto out;
    }
    uint64_t count = 0;
    for (size_t i = 0; i < reftable_bytes / 8 && count < threshold; i++) {
        const uint64_t first = (uint64_t)i * per_block;
        if (first >= end_cluster) {
            break;
        }
        const uint64_t rb = load_be64(reftable + i * 8) &
                            QCOW2_REFT_OFFSET_MASK;
        if (rb == 0 || (rb & (s->cluster_size - 1)) ||
            rb >= s->file_size) {
            continue; /* unallocated or broken: counts as no references */
        }
        ret = vimg_io_pread(img->io, block, (size_t)s->cluster_size, rb);
        if (ret < 0) {
            goto out;
        }
        for (uint64_t j = 0; j < per_block && first + j < end_cluster &&
                             count < threshold;
             j++) {
            count += qcow2_refcount_get(block, j, s->h.refcount_order) != 0;
        }
    }
    ret = count >= threshold;
out:
    free(reftable);
    free(block);
    return ret;
}
