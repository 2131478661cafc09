/* SPDX-License-Identifier: MIT */
/*
 * qcow2-header.c: decode and encode the QCOW2 header and its header
 * extensions (qcow2.txt, "Header" and "Header extensions"), working on
 * the bytes of the first cluster; and the one place that changes the
 * feature bits of an open image (dirty, corrupt, autoclear), each change
 * with its flush order.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

static int corrupt(const char *what, unsigned long long v)
{
    return vimg_error(-EIO, "qcow2: corrupt header: %s (0x%llx)", what, v);
}

/* Is [offset, offset+bytes) inside a file of FILE_SIZE bytes? */
static bool in_file(uint64_t offset, uint64_t bytes, uint64_t file_size)
{
    uint64_t end;

    return !vimg_add_overflows(offset, bytes, &end) && end <= file_size;
}

/* Version 3 fields (version 2 has fixed values for them). */
static int decode_v3_fields(struct qcow2_header *h, const uint8_t *buf,
                            size_t len)
{
    const uint64_t cluster_size = 1ull << h->cluster_bits;

    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_HDR_V2_LEN;
    } else {
        if (len < QCOW2_HDR_V3_LEN) {
            return vimg_error(-EIO,
                              "qcow2: corrupt header: file is truncated "
                              "(%zu bytes, a v3 header needs %d)",
                              len, QCOW2_HDR_V3_LEN);
        }
        h->incompatible_features = load_be64(buf + QCOW2_HDR_INCOMPAT);
        h->compatible_features = load_be64(buf + QCOW2_HDR_COMPAT);
        h->autoclear_features = load_be64(buf + QCOW2_HDR_AUTOCLEAR);
        h->refcount_order = load_be32(buf + QCOW2_HDR_REFCOUNT_ORDER);
        h->header_length = load_be32(buf + QCOW2_HDR_HEADER_LENGTH);
        if (h->header_length < QCOW2_HDR_V3_LEN ||
            h->header_length > cluster_size || h->header_length > len) {
            return corrupt("header_length out of range", h->header_length);
        }
        if (h->header_length > QCOW2_HDR_COMPRESSION_TYPE) {
            h->compression_type = buf[QCOW2_HDR_COMPRESSION_TYPE];
        }
    }
    return 0;
}

/* Refcount width, compression type, encryption, size: values we know. */
static int check_features(const struct qcow2_header *h)
{
    if (h->refcount_order > 6) {
        return corrupt("refcount_order above 6", h->refcount_order);
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD) {
        return vimg_error(-ENOTSUP, "qcow2: unknown compression type %u",
                          h->compression_type);
    }
    if (h->compression_type != QCOW2_COMPRESSION_ZLIB &&
        !(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        return corrupt("compression type set without its incompatible bit",
                       h->compression_type);
    }
    if (h->compression_type == QCOW2_COMPRESSION_ZLIB &&
        (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        /* qemu refuses to open it too (qcow2.txt: the bit is set only
         * for a compression type other than zlib) */
        return vimg_error(-EINVAL, "qcow2: Compression type incompatible "
                                   "feature bit must not be set (the "
                                   "compression type is zlib)");
    }
    if (h->crypt_method > QCOW2_CRYPT_LUKS) {
        return corrupt("unknown encryption method", h->crypt_method);
    }
    if (h->size > QCOW2_MAX_VIRTUAL_SIZE) {
        return corrupt("virtual size too large", h->size);
    }
    return 0;
}

/* The tables the header points at: aligned, inside the file, within
 * limits. */
static int check_tables(const struct qcow2_header *h, uint64_t file_size)
{
    const uint64_t cluster_size = 1ull << h->cluster_bits;

    /* L1: large enough for the virtual size, small enough to load */
    const unsigned l2_entry_bytes =
        (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) ? 16 : 8;
    const uint64_t bytes_per_l1e = cluster_size / l2_entry_bytes * cluster_size;
    const uint64_t l1_needed = VIMG_DIV_ROUND_UP(h->size, bytes_per_l1e);
    if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        return corrupt("L1 table is too large", h->l1_size);
    }
    if (h->l1_size < l1_needed) {
        return corrupt("L1 table is too small for the virtual size",
                       h->l1_size);
    }
    if (h->l1_size > 0) {
        if (!vimg_is_aligned(h->l1_table_offset, cluster_size)) {
            return corrupt("L1 table offset is not cluster aligned",
                           h->l1_table_offset);
        }
        if (!in_file(h->l1_table_offset, (uint64_t)h->l1_size * 8,
                     file_size)) {
            return corrupt("L1 table is past the end of the file",
                           h->l1_table_offset);
        }
    }

    /* Refcount table */
    if (h->refcount_table_clusters == 0) {
        return corrupt("refcount table is empty", 0);
    }
    if ((uint64_t)h->refcount_table_clusters << h->cluster_bits >
        QCOW2_MAX_REFTABLE_BYTES) {
        return corrupt("refcount table is too large",
                       h->refcount_table_clusters);
    }
    if (!vimg_is_aligned(h->refcount_table_offset, cluster_size)) {
        return corrupt("refcount table offset is not cluster aligned",
                       h->refcount_table_offset);
    }
    if (!in_file(h->refcount_table_offset,
                 (uint64_t)h->refcount_table_clusters << h->cluster_bits,
                 file_size)) {
        return corrupt("refcount table is past the end of the file",
                       h->refcount_table_offset);
    }

    /* Snapshot table: at least the fixed part of each entry */
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        return corrupt("too many snapshots", h->nb_snapshots);
    }
    if (h->nb_snapshots > 0) {
        if (!vimg_is_aligned(h->snapshots_offset, cluster_size)) {
            return corrupt("snapshot table offset is not cluster aligned",
                           h->snapshots_offset);
        }
        if (!in_file(h->snapshots_offset, (uint64_t)h->nb_snapshots * 40,
                     file_size)) {
            return corrupt("snapshot table is past the end of the file",
                           h->snapshots_offset);
        }
    }
    return 0;
}

/* Backing file name: inside the first cluster (LEN bytes of it read). */
static int check_backing_name(const struct qcow2_header *h, size_t len)
{
    const uint64_t cluster_size = 1ull << h->cluster_bits;

    /* Backing file name: inside the first cluster */
    if (h->backing_file_offset != 0 || h->backing_file_size != 0) {
        if (h->backing_file_size > QCOW2_MAX_BACKING_NAME) {
            return corrupt("backing file name too long",
                           h->backing_file_size);
        }
        if (h->backing_file_offset < h->header_length ||
            !in_file(h->backing_file_offset, h->backing_file_size,
                     VIMG_MIN(cluster_size, len))) {
            return corrupt("backing file name outside the first cluster",
                           h->backing_file_offset);
        }
    }
    return 0;
}

int qcow2_header_decode(struct qcow2_header *h, const uint8_t *buf,
                        size_t len, uint64_t file_size)
{
    memset(h, 0, sizeof(*h));
    if (len < QCOW2_HDR_V2_LEN) {
        return vimg_error(-EIO,
                          "qcow2: corrupt header: file is truncated (%zu "
                          "bytes, the header needs %d)",
                          len, QCOW2_HDR_V2_LEN);
    }
    if (load_be32(buf + QCOW2_HDR_MAGIC) != QCOW2_MAGIC) {
        return vimg_error(-EIO, "qcow2: bad magic: not a qcow2 image");
    }
    h->version = load_be32(buf + QCOW2_HDR_VERSION);
    if (h->version < 2 || h->version > 3) {
        return vimg_error(-ENOTSUP, "unsupported qcow2 version %u",
                          h->version);
    }
    h->backing_file_offset = load_be64(buf + QCOW2_HDR_BACKING_OFFSET);
    h->backing_file_size = load_be32(buf + QCOW2_HDR_BACKING_SIZE);
    h->cluster_bits = load_be32(buf + QCOW2_HDR_CLUSTER_BITS);
    h->size = load_be64(buf + QCOW2_HDR_SIZE);
    h->crypt_method = load_be32(buf + QCOW2_HDR_CRYPT_METHOD);
    h->l1_size = load_be32(buf + QCOW2_HDR_L1_SIZE);
    h->l1_table_offset = load_be64(buf + QCOW2_HDR_L1_OFFSET);
    h->refcount_table_offset = load_be64(buf + QCOW2_HDR_REFTABLE_OFFSET);
    h->refcount_table_clusters = load_be32(buf + QCOW2_HDR_REFTABLE_CLUSTERS);
    h->nb_snapshots = load_be32(buf + QCOW2_HDR_NB_SNAPSHOTS);
    h->snapshots_offset = load_be64(buf + QCOW2_HDR_SNAPSHOTS_OFFSET);

    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        return corrupt("cluster_bits out of range 9..21", h->cluster_bits);
    }
    int ret = decode_v3_fields(h, buf, len);
    if (ret == 0) {
        ret = check_features(h);
    }
    if (ret == 0) {
        ret = check_tables(h, file_size);
    }
    return ret < 0 ? ret : check_backing_name(h, len);
}

int qcow2_header_encode(const struct qcow2_header *h, uint8_t *buf,
                        size_t len)
{
    const size_t need = h->version >= 3 ? h->header_length : QCOW2_HDR_V2_LEN;

    if (len < need || (h->version >= 3 && need < QCOW2_HDR_V3_LEN)) {
        return vimg_error(-EINVAL, "qcow2: header buffer too small");
    }
    memset(buf, 0, need);
    store_be32(buf + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
    store_be32(buf + QCOW2_HDR_VERSION, h->version);
    store_be64(buf + QCOW2_HDR_BACKING_OFFSET, h->backing_file_offset);
    store_be32(buf + QCOW2_HDR_BACKING_SIZE, h->backing_file_size);
    store_be32(buf + QCOW2_HDR_CLUSTER_BITS, h->cluster_bits);
    store_be64(buf + QCOW2_HDR_SIZE, h->size);
    store_be32(buf + QCOW2_HDR_CRYPT_METHOD, h->crypt_method);
    store_be32(buf + QCOW2_HDR_L1_SIZE, h->l1_size);
    store_be64(buf + QCOW2_HDR_L1_OFFSET, h->l1_table_offset);
    store_be64(buf + QCOW2_HDR_REFTABLE_OFFSET, h->refcount_table_offset);
    store_be32(buf + QCOW2_HDR_REFTABLE_CLUSTERS, h->refcount_table_clusters);
    store_be32(buf + QCOW2_HDR_NB_SNAPSHOTS, h->nb_snapshots);
    store_be64(buf + QCOW2_HDR_SNAPSHOTS_OFFSET, h->snapshots_offset);
    if (h->version >= 3) {
        store_be64(buf + QCOW2_HDR_INCOMPAT, h->incompatible_features);
        store_be64(buf + QCOW2_HDR_COMPAT, h->compatible_features);
        store_be64(buf + QCOW2_HDR_AUTOCLEAR, h->autoclear_features);
        store_be32(buf + QCOW2_HDR_REFCOUNT_ORDER, h->refcount_order);
        store_be32(buf + QCOW2_HDR_HEADER_LENGTH, h->header_length);
        if (need > QCOW2_HDR_COMPRESSION_TYPE) {
            buf[QCOW2_HDR_COMPRESSION_TYPE] = h->compression_type;
        }
    }
    return (int)need;
}

static char *dup_string(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

static int ext_corrupt(const char *what, uint32_t type, size_t offset)
{
    return vimg_error(-EIO,
                      "qcow2: corrupt header extension 0x%08x at 0x%zx: %s",
                      type, offset, what);
}

static int no_memory(void)
{
    return vimg_error(-ENOMEM, "out of memory");
}

/* The feature name table: (type, bit, name) entries of 48 bytes. */
static int decode_feature_table(struct qcow2_extensions *ext,
                                const uint8_t *data, uint32_t len)
{
    const size_t n = len / 48;

    free(ext->features);
    ext->features = calloc(n ? n : 1, sizeof(*ext->features));
    if (!ext->features) {
        return no_memory();
    }
    ext->nb_features = n;
    for (size_t i = 0; i < n; i++) {
        ext->features[i].type = data[i * 48];
        ext->features[i].bit = data[i * 48 + 1];
        memcpy(ext->features[i].name, data + i * 48 + 2, 46);
        ext->features[i].name[46] = '\0';
    }
    return 0;
}

/* An unknown extension: keep the bytes so a rewrite preserves them. */
static int keep_unknown(struct qcow2_extensions *ext, uint32_t type,
                        const uint8_t *data, uint32_t len)
{
    struct qcow2_ext *u =
        realloc(ext->unknown, (ext->nb_unknown + 1) * sizeof(*ext->unknown));
    if (!u) {
        return no_memory();
    }
    ext->unknown = u;
    u[ext->nb_unknown].type = type;
    u[ext->nb_unknown].len = len;
    u[ext->nb_unknown].data = malloc(len ? len : 1);
    if (!u[ext->nb_unknown].data) {
        return no_memory();
    }
    memcpy(u[ext->nb_unknown].data, data, len);
    ext->nb_unknown++;
    return 0;
}

/* One extension of TYPE, LEN bytes of DATA, whose header is at AT. */
static int decode_extension(struct qcow2_extensions *ext, uint32_t type,
                            const uint8_t *data, uint32_t len, size_t at)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
        if (len == 0 || len >= 16 || memchr(data, 0, len)) {
            return ext_corrupt("bad backing format name", type, at);
        }
        free(ext->backing_format);
        ext->backing_format = dup_string(data, len);
        return ext->backing_format ? 0 : no_memory();
    case QCOW2_EXT_DATA_FILE:
        if (len == 0 || memchr(data, 0, len)) {
            return ext_corrupt("bad data file name", type, at);
        }
        free(ext->data_file);
        ext->data_file = dup_string(data, len);
        return ext->data_file ? 0 : no_memory();
    case QCOW2_EXT_FEATURE_TABLE:
        return decode_feature_table(ext, data, len);
    case QCOW2_EXT_BITMAPS:
        if (len != 24) {
            return ext_corrupt("bitmaps extension length is not 24", type,
                               at);
        }
        ext->has_bitmaps = true;
        ext->nb_bitmaps = load_be32(data);
        if (load_be32(data + 4) != 0) {
            return ext_corrupt("bitmaps extension reserved field is set",
                               type, at);
        }
        ext->bitmap_dir_size = load_be64(data + 8);
        ext->bitmap_dir_offset = load_be64(data + 16);
        return 0;
    case QCOW2_EXT_CRYPTO:
        if (len != 16) {
            return ext_corrupt("crypto extension length is not 16", type,
                               at);
        }
        ext->has_crypto = true;
        ext->crypto_offset = load_be64(data);
        ext->crypto_length = load_be64(data + 8);
        return 0;
    default:
        return keep_unknown(ext, type, data, len);
    }
}

int qcow2_extensions_decode(struct qcow2_extensions *ext, const uint8_t *buf,
                            size_t start, size_t end)
{
    size_t off = start;
    int ret = 0;

    memset(ext, 0, sizeof(*ext));
    while (end >= 8 && off <= end - 8) {
        const uint32_t type = load_be32(buf + off);
        const uint32_t len = load_be32(buf + off + 4);
        const size_t at = off;
        off += 8;
        if (len > end - off) {
            ret = ext_corrupt("extends past the end of the header area", type,
                              at);
            break;
        }
        if (type == QCOW2_EXT_END) {
            break; /* (any length it claims was checked above, as qemu) */
        }
        ret = decode_extension(ext, type, buf + off, len, at);
        if (ret < 0) {
            break;
        }
        /* data is padded to a multiple of 8 */
        const size_t padded = ((size_t)len + 7) & ~(size_t)7;
        off += VIMG_MIN(padded, end - off);
    }
    if (ret < 0) {
        qcow2_extensions_free(ext);
    }
    return ret;
}

static int put_ext(uint8_t *buf, size_t len, size_t *off, uint32_t type,
                   const void *data, uint32_t data_len)
{
    const size_t padded = ((size_t)data_len + 7) & ~(size_t)7;

    if (len - *off < 8 + padded) {
        return vimg_error(-ENOSPC, "qcow2: header extensions do not fit in "
                                   "the first cluster");
    }
    store_be32(buf + *off, type);
    store_be32(buf + *off + 4, data_len);
    memset(buf + *off + 8, 0, padded);
    if (data_len) {
        memcpy(buf + *off + 8, data, data_len);
    }
    *off += 8 + padded;
    return 0;
}

int qcow2_extensions_encode(const struct qcow2_extensions *ext, uint8_t *buf,
                            size_t len)
{
    size_t off = 0;
    int ret = 0;

    if (ext->backing_format) {
        ret = put_ext(buf, len, &off, QCOW2_EXT_BACKING_FORMAT,
                      ext->backing_format,
                      (uint32_t)strlen(ext->backing_format));
    }
    if (ret == 0 && ext->data_file) {
        ret = put_ext(buf, len, &off, QCOW2_EXT_DATA_FILE, ext->data_file,
                      (uint32_t)strlen(ext->data_file));
    }
    if (ret == 0 && ext->has_crypto) {
        uint8_t d[16];
        store_be64(d, ext->crypto_offset);
        store_be64(d + 8, ext->crypto_length);
        ret = put_ext(buf, len, &off, QCOW2_EXT_CRYPTO, d, sizeof(d));
    }
    if (ret == 0 && ext->has_bitmaps) {
        uint8_t d[24];
        store_be32(d, ext->nb_bitmaps);
        store_be32(d + 4, 0);
        store_be64(d + 8, ext->bitmap_dir_size);
        store_be64(d + 16, ext->bitmap_dir_offset);
        ret = put_ext(buf, len, &off, QCOW2_EXT_BITMAPS, d, sizeof(d));
    }
    if (ret == 0 && ext->nb_features) {
        size_t n = ext->nb_features * 48;
        uint8_t *d = calloc(1, n);
        if (!d) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < ext->nb_features; i++) {
            d[i * 48] = ext->features[i].type;
            d[i * 48 + 1] = ext->features[i].bit;
            memcpy(d + i * 48 + 2, ext->features[i].name,
                   strnlen(ext->features[i].name, 46));
        }
        ret = put_ext(buf, len, &off, QCOW2_EXT_FEATURE_TABLE, d,
                      (uint32_t)n);
        free(d);
    }
    for (size_t i = 0; ret == 0 && i < ext->nb_unknown; i++) {
        ret = put_ext(buf, len, &off, ext->unknown[i].type,
                      ext->unknown[i].data, ext->unknown[i].len);
    }
    if (ret == 0) {
        ret = put_ext(buf, len, &off, QCOW2_EXT_END, NULL, 0);
    }
    return ret < 0 ? ret : (int)off;
}

void qcow2_extensions_free(struct qcow2_extensions *ext)
{
    free(ext->backing_format);
    free(ext->data_file);
    free(ext->features);
    for (size_t i = 0; i < ext->nb_unknown; i++) {
        free(ext->unknown[i].data);
    }
    free(ext->unknown);
    memset(ext, 0, sizeof(*ext));
}

const char *qcow2_feature_name(const struct qcow2_extensions *ext,
                               uint8_t type, unsigned bit)
{
    for (size_t i = 0; i < ext->nb_features; i++) {
        if (ext->features[i].type == type && ext->features[i].bit == bit) {
            return ext->features[i].name;
        }
    }
    return NULL;
}

/* ------------------------------------------------ feature bits on disk */

/* Write BITS as the incompatible features (one 8-byte write, then a sync
 * of the files); the state follows once they are durable. */
static int write_incompat(struct vimg_image *img, uint64_t bits)
{
    struct qcow2_state *s = img->priv;
    uint8_t b[8];

    store_be64(b, bits);
    int ret = qcow2_write_meta(img, QCOW2_HDR_INCOMPAT, b, sizeof(b));
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret == 0) {
        s->h.incompatible_features = bits;
    }
    return ret;
}

int qcow2_header_mark_dirty(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    return write_incompat(img, s->h.incompatible_features |
                                   QCOW2_INCOMPAT_DIRTY);
}

int qcow2_header_clear_dirty(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!(s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    int ret = qcow2_flush_locked(img);
    return ret < 0 ? ret
                   : write_incompat(img, s->h.incompatible_features &
                                             ~QCOW2_INCOMPAT_DIRTY);
}

void qcow2_header_mark_corrupt(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    s->is_broken = true;
    s->h.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    if (s->h.version >= 3) {
        uint8_t b[8];
        store_be64(b, s->h.incompatible_features);
        if (vimg_io_pwrite(img->io, b, sizeof(b), QCOW2_HDR_INCOMPAT) == 0) {
            vimg_io_flush(img->io);
        }
    }
}

int qcow2_header_mark_clean(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;

    if (s->h.version < 3 || !(s->h.incompatible_features & bits)) {
        return 0;
    }
    int ret = qcow2_sync_files(img);
    return ret < 0 ? ret
                   : write_incompat(img, s->h.incompatible_features & ~bits);
}

int qcow2_header_clear_unknown_autoclear(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const uint64_t known =
        QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    uint8_t b[8];

    if (s->h.version < 3 || !(s->h.autoclear_features & ~known)) {
        return 0;
    }
    store_be64(b, s->h.autoclear_features & known);
    int ret = vimg_io_pwrite(img->io, b, sizeof(b), QCOW2_HDR_AUTOCLEAR);
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret < 0) {
        return vimg_error(ret, "%s: cannot clear the unknown autoclear "
                               "feature bits: %s",
                          img->filename, vimg_last_error());
    }
    s->h.autoclear_features &= known;
    return 0;
}
