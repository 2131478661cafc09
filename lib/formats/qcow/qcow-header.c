/* SPDX-License-Identifier: MIT */
/*
 * qcow-header.c: the QCOW v1 header and L2 entries, decoded and encoded
 * on byte buffers with every field checked; no I/O (unit tests and
 * fuzz/fuzz-qcow1.c call these directly).
 */
#include <string.h>

#include "formats/qcow/qcow.h"
#include "vimg-endian.h"

int qcow_l1_size(uint64_t size, unsigned cluster_bits, unsigned l2_bits,
                 uint64_t *out)
{
    const unsigned shift = cluster_bits + l2_bits;
    const uint64_t per_l2 = 1ull << shift;

    if (size > UINT64_MAX - per_l2) {
        return vimg_error(-EFBIG, "Image too large");
    }
    const uint64_t n = (size + per_l2 - 1) >> shift;
    if (n > QCOW_MAX_L1_BYTES / 8) {
        return vimg_error(-EFBIG, "Image too large");
    }
    *out = n;
    return 0;
}

int qcow_header_decode(const uint8_t *buf, size_t len, struct qcow_header *h)
{
    if (len < QCOW_HDR_LEN || load_be32(buf + QCOW_HDR_MAGIC) != QCOW_MAGIC) {
        return vimg_error(-EINVAL, "Image not in qcow format");
    }
    memset(h, 0, sizeof(*h));
    h->version = load_be32(buf + QCOW_HDR_VERSION);
    if (h->version != QCOW_VERSION) {
        return vimg_error(-ENOTSUP, "Unsupported qcow version %u",
                          h->version);
    }
    h->backing_file_offset = load_be64(buf + QCOW_HDR_BACKING_OFFSET);
    h->backing_file_size = load_be32(buf + QCOW_HDR_BACKING_SIZE);
    h->mtime = load_be32(buf + QCOW_HDR_MTIME);
    h->size = load_be64(buf + QCOW_HDR_SIZE);
    h->cluster_bits = buf[QCOW_HDR_CLUSTER_BITS];
    h->l2_bits = buf[QCOW_HDR_L2_BITS];
    h->crypt_method = load_be32(buf + QCOW_HDR_CRYPT_METHOD);
    h->l1_table_offset = load_be64(buf + QCOW_HDR_L1_OFFSET);

    if (h->size <= 1) {
        return vimg_error(-EIO, "corrupt header: Image size is too small "
                                "(must be at least 2 bytes)");
    }
    if (h->cluster_bits < QCOW_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW_MAX_CLUSTER_BITS) {
        return vimg_error(-EIO, "corrupt header: Cluster size must be "
                                "between 512 and 64k (cluster_bits %u)",
                          h->cluster_bits);
    }
    if (h->l2_bits < QCOW_MIN_L2_BITS || h->l2_bits > QCOW_MAX_L2_BITS) {
        return vimg_error(-EIO, "corrupt header: L2 table size must be "
                                "between 512 and 64k (l2_bits %u)",
                          h->l2_bits);
    }
    if (h->crypt_method > QCOW_CRYPT_AES) {
        return vimg_error(-EIO, "corrupt header: invalid encryption method "
                                "in qcow header (%u)",
                          h->crypt_method);
    }
    int ret = qcow_l1_size(h->size, h->cluster_bits, h->l2_bits,
                           &h->l1_size);
    if (ret < 0) {
        return ret;
    }
    uint64_t end;
    if (h->l1_table_offset < QCOW_HDR_LEN ||
        vimg_add_overflows(h->l1_table_offset, h->l1_size * 8, &end) ||
        end > (1ull << 56)) {
        return vimg_error(-EIO, "corrupt header: L1 table offset 0x%llx",
                          (unsigned long long)h->l1_table_offset);
    }
    if (h->backing_file_offset) {
        if (h->backing_file_size > QCOW_MAX_BACKING_NAME) {
            return vimg_error(-EIO, "corrupt header: Backing file name too "
                                    "long (%u bytes)",
                              h->backing_file_size);
        }
        if (h->backing_file_offset < QCOW_HDR_LEN ||
            h->backing_file_offset > (1ull << 56)) {
            return vimg_error(-EIO, "corrupt header: backing file name "
                                    "offset 0x%llx",
                              (unsigned long long)h->backing_file_offset);
        }
    }
    return 0;
}

void qcow_header_encode(const struct qcow_header *h, uint8_t *buf)
{
    memset(buf, 0, QCOW_HDR_LEN);
    store_be32(buf + QCOW_HDR_MAGIC, QCOW_MAGIC);
    store_be32(buf + QCOW_HDR_VERSION, QCOW_VERSION);
    store_be64(buf + QCOW_HDR_BACKING_OFFSET, h->backing_file_offset);
    store_be32(buf + QCOW_HDR_BACKING_SIZE, h->backing_file_size);
    store_be32(buf + QCOW_HDR_MTIME, h->mtime);
    store_be64(buf + QCOW_HDR_SIZE, h->size);
    buf[QCOW_HDR_CLUSTER_BITS] = (uint8_t)h->cluster_bits;
    buf[QCOW_HDR_L2_BITS] = (uint8_t)h->l2_bits;
    store_be32(buf + QCOW_HDR_CRYPT_METHOD, h->crypt_method);
    store_be64(buf + QCOW_HDR_L1_OFFSET, h->l1_table_offset);
}

void qcow_l2_entry_decode(uint64_t e, unsigned cluster_bits,
                          struct qcow_mapping *out)
{
    const unsigned offset_bits = 63 - cluster_bits;

    out->csize = 0;
    if (e & QCOW_OFLAG_COMPRESSED) {
        out->kind = QCOW_CLUSTER_COMPRESSED;
        out->offset = e & ((1ull << offset_bits) - 1);
        out->csize = (uint32_t)((e >> offset_bits) &
                                ((1ull << cluster_bits) - 1));
    } else {
        out->kind = e ? QCOW_CLUSTER_NORMAL : QCOW_CLUSTER_UNALLOCATED;
        out->offset = e;
    }
}

uint64_t qcow_l2_entry_compressed(uint64_t offset, uint32_t csize,
                                  unsigned cluster_bits)
{
    return QCOW_OFLAG_COMPRESSED |
           ((uint64_t)csize << (63 - cluster_bits)) | offset;
}
