/* SPDX-License-Identifier: MIT */
/*
 * qcow2-create.c: make a new QCOW2 image.  The layout of a new image is
 * fixed, so it is computed up front: header cluster, refcount table,
 * refcount blocks, L1 table, then (with preallocation) L2 tables and data
 * clusters, every one with refcount 1.  The header is written last, so a
 * crash while creating never leaves a file that looks like an image.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

enum prealloc { PREALLOC_OFF, PREALLOC_METADATA, PREALLOC_FALLOC,
                PREALLOC_FULL };

/* The feature name table qemu writes into v3 images (clusters of 8 KiB
 * and up); create and amend write it. */
const struct qcow2_feature qcow2_feature_table[QCOW2_NB_FEATURES] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

static int refuse(const char *path, const char *why)
{
    return vimg_error(-EINVAL, "%s: %s", path, why);
}

/* Check the option combination as qemu-img does, with its reasons. */
static int check_opts(const char *path, const struct qcow2_create_params *o,
                      enum prealloc *prealloc_out)
{
    const unsigned version = o->qcow2_version ? o->qcow2_version : 3;
    const uint32_t cs = o->cluster_size ? o->cluster_size : 65536;
    const unsigned rb = o->refcount_bits ? o->refcount_bits : 16;
    const bool is_zstd =
        o->compression_type && strcmp(o->compression_type, "zstd") == 0;

    if (version != 2 && version != 3) {
        return refuse(path, "compat must be 0.10 or 1.1");
    }
    if (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1))) {
        return refuse(path, "Cluster size must be a power of two between "
                            "512 and 2048k");
    }
    if (rb > 64 || (rb & (rb - 1))) {
        return refuse(path, "Refcount width must be a power of two and may "
                            "not exceed 64 bits");
    }
    if (o->compression_type && !is_zstd &&
        strcmp(o->compression_type, "zlib") != 0) {
        return refuse(path, "compression_type must be zlib or zstd");
    }
    if (!o->preallocation || strcmp(o->preallocation, "off") == 0) {
        *prealloc_out = PREALLOC_OFF;
    } else if (strcmp(o->preallocation, "metadata") == 0) {
        *prealloc_out = PREALLOC_METADATA;
    } else if (strcmp(o->preallocation, "falloc") == 0) {
        *prealloc_out = PREALLOC_FALLOC;
    } else if (strcmp(o->preallocation, "full") == 0) {
        *prealloc_out = PREALLOC_FULL;
    } else {
        return refuse(path, "preallocation must be off, metadata, falloc or "
                            "full");
    }
    if (version == 2) {
        /* same checks, order and words as qemu-img */
        const char *what = o->extended_l2       ? "Extended L2 entries are"
                           : o->lazy_refcounts  ? "Lazy refcounts are"
                           : is_zstd            ? "Non-zlib compression type is"
                           : o->data_file       ? "External data files are"
                                                : NULL;
        if (what) {
            char why[192];
            snprintf(why, sizeof(why),
                     "%s only supported with compatibility level 1.1 and "
                     "above (use version=v3 or greater)",
                     what);
            return refuse(path, why);
        }
        if (rb != 16) {
            return refuse(path, "Different refcount widths than 16 bits "
                                "require compatibility level 1.1 or above "
                                "(use version=v3 or greater)");
        }
    }
    if (o->extended_l2 && cs < 16384) {
        return refuse(path, "Extended L2 entries are only supported with "
                            "cluster sizes of at least 16384 bytes");
    }
    if (o->data_file_keep && !o->data_file) {
        return refuse(path, "data_file_keep requires data_file");
    }
    if (o->data_file_raw && !o->data_file) {
        return refuse(path, "data-file-raw requires data-file");
    }
    if (o->backing_file && *prealloc_out != PREALLOC_OFF && !o->extended_l2) {
        return refuse(path, "Backing file and preallocation can only be used "
                            "at the same time if extended_l2 is on");
    }
    if (o->backing_file && o->data_file_raw) {
        return refuse(path, "Backing file and data-file-raw cannot be used "
                            "at the same time");
    }
    if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME) {
        return refuse(path, "backing file name too long");
    }
    if (o->backing_format && strlen(o->backing_format) >= 16) {
        return refuse(path, "backing format name too long");
    }
    if (o->size > QCOW2_MAX_VIRTUAL_SIZE) {
        return refuse(path, "image size too large");
    }
    return 0;
}

struct layout {
    uint64_t cs;
    unsigned cluster_bits;
    uint64_t l2_entries;
    uint64_t guest_clusters;
    uint64_t l1_size;
    uint64_t n_l2, n_data;
    uint64_t rt_clusters, rb_clusters, l1_clusters;
    uint64_t rt_off, rb_off, l1_off, l2_off, data_off, end;
    uint64_t total_clusters;
};

static int plan(struct layout *L, const char *path,
                const struct qcow2_create_params *o, enum prealloc prealloc,
                uint64_t size)
{
    const unsigned rb_bits = o->refcount_bits ? o->refcount_bits : 16;

    L->cs = o->cluster_size ? o->cluster_size : 65536;
    L->cluster_bits = (unsigned)__builtin_ctzll(L->cs);
    L->l2_entries = L->cs / (o->extended_l2 ? 16 : 8);
    L->guest_clusters = VIMG_DIV_ROUND_UP(size, L->cs);
    L->l1_size = VIMG_DIV_ROUND_UP(L->guest_clusters, L->l2_entries);
    if (L->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        return refuse(path, "image size too large for the cluster size "
                            "(L1 table above 32 MiB)");
    }
    const bool need_l2 = prealloc != PREALLOC_OFF || o->data_file_raw;
    L->n_l2 = need_l2 ? L->l1_size : 0;
    L->n_data = prealloc != PREALLOC_OFF && !o->data_file
                    ? L->guest_clusters
                    : 0;
    L->l1_clusters = VIMG_MAX(1, VIMG_DIV_ROUND_UP(L->l1_size * 8, L->cs));
    /* the header, the tables and the data, and the refcount blocks and
     * table that count them and themselves */
    const uint64_t counted = 1 + L->l1_clusters + L->n_l2 + L->n_data;
    qcow2_refcount_layout(counted, L->cs, (unsigned)__builtin_ctz(rb_bits),
                          &L->rb_clusters, &L->rt_clusters);
    L->total_clusters = counted + L->rt_clusters + L->rb_clusters;
    if (L->rt_clusters * L->cs > QCOW2_MAX_REFTABLE_BYTES) {
        return refuse(path, "image too large: its refcount table would "
                            "exceed 8 MiB");
    }
    L->rt_off = L->cs;
    L->rb_off = L->rt_off + L->rt_clusters * L->cs;
    L->l1_off = L->rb_off + L->rb_clusters * L->cs;
    L->l2_off = L->l1_off + L->l1_clusters * L->cs;
    L->data_off = L->l2_off + L->n_l2 * L->cs;
    L->end = need_l2 ? L->data_off + L->n_data * L->cs
                     : L->l1_off + L->l1_size * 8;
    return 0;
}

/* A block device as the image: large enough, no preallocation to do. */
static int check_device(struct vimg_io *io, const struct layout *L,
                        enum prealloc prealloc)
{
    if (prealloc == PREALLOC_FULL || prealloc == PREALLOC_FALLOC) {
        return vimg_error(-ENOTSUP, "%s: preallocation mode '%s' is not "
                                    "supported on a block device",
                          io->name,
                          prealloc == PREALLOC_FULL ? "full" : "falloc");
    }
    return vimg_io_truncate(io, L->end); /* checks the size */
}

static int preallocate(struct vimg_io *io, enum prealloc prealloc,
                       uint64_t off, uint64_t len)
{
    if (len == 0) {
        return 0;
    }
    if (io->is_device && prealloc == PREALLOC_METADATA) {
        /* the clusters are mapped as data: a device's old bytes must not
         * show through (qemu-img leaves them; discard or zero them) */
        return vimg_io_zero(io, off, len, true);
    }
    if (prealloc == PREALLOC_FULL) {
        return vimg_io_zero(io, off, len, false);
    }
    if (prealloc == PREALLOC_FALLOC) {
        return vimg_io_fallocate(io, off, len);
    }
    return 0;
}

static int write_metadata(struct vimg_io *io, const struct layout *L,
                          const struct qcow2_create_params *o,
                          enum prealloc prealloc)
{
    const unsigned order =
        (unsigned)__builtin_ctz(o->refcount_bits ? o->refcount_bits : 16);
    const size_t cs = (size_t)L->cs;
    uint8_t *buf = NULL;
    int ret = 0;

    /* Refcount table */
    buf = calloc(L->rt_clusters, cs);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < L->rb_clusters; i++) {
        store_be64(buf + i * 8, L->rb_off + i * L->cs);
    }
    ret = vimg_io_pwrite(io, buf, L->rt_clusters * cs, L->rt_off);
    free(buf);
    if (ret < 0) {
        return ret;
    }

    /* Refcount blocks: every cluster of the layout has one reference */
    const uint64_t per_block = L->cs * 8 >> order;
    buf = malloc(cs);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t b = 0; b < L->rb_clusters && ret == 0; b++) {
        memset(buf, 0, cs);
        for (uint64_t j = 0; j < per_block; j++) {
            if (b * per_block + j >= L->total_clusters) {
                break;
            }
            qcow2_refcount_set(buf, j, order, 1);
        }
        ret = vimg_io_pwrite(io, buf, cs, L->rb_off + b * L->cs);
    }
    if (ret < 0) {
        goto out;
    }

    /* L2 tables (only when preallocating or for a raw data file) */
    const uint64_t copied = QCOW2_OFLAG_COPIED;
    const size_t entry_bytes = o->extended_l2 ? 16 : 8;
    for (uint64_t t = 0; t < L->n_l2 && ret == 0; t++) {
        memset(buf, 0, cs);
        for (uint64_t j = 0; j < L->l2_entries; j++) {
            const uint64_t g = t * L->l2_entries + j;
            if (g >= L->guest_clusters) {
                break;
            }
            /* external data files map guest = host; offset 0 is valid
             * there thanks to the COPIED bit */
            const uint64_t host =
                o->data_file ? g * L->cs : L->data_off + g * L->cs;
            store_be64(buf + j * entry_bytes, host | copied);
            if (o->extended_l2 && o->data_file_raw) {
                store_be64(buf + j * entry_bytes + 8, 0xffffffffull);
            }
        }
        ret = vimg_io_pwrite(io, buf, cs, L->l2_off + t * L->cs);
    }
    if (ret < 0) {
        goto out;
    }
    free(buf);
    buf = NULL;

    /* L1 table */
    if (L->l1_size) {
        buf = calloc(L->l1_size, 8);
        if (!buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (uint64_t i = 0; i < L->n_l2; i++) {
            store_be64(buf + i * 8, (L->l2_off + i * L->cs) | copied);
        }
        ret = vimg_io_pwrite(io, buf, L->l1_size * 8, L->l1_off);
        if (ret < 0) {
            goto out;
        }
    }
    ret = vimg_io_truncate(io, L->end);
    if (ret == 0 && !o->data_file) {
        ret = preallocate(io, prealloc, L->data_off, L->n_data * L->cs);
    }
out:
    free(buf);
    return ret;
}

static int write_header(struct vimg_io *io, const struct layout *L,
                        const struct qcow2_create_params *o, uint64_t size)
{
    const unsigned version = o->qcow2_version ? o->qcow2_version : 3;
    const bool is_zstd =
        o->compression_type && strcmp(o->compression_type, "zstd") == 0;
    struct qcow2_header h = {
        .version = version,
        .cluster_bits = L->cluster_bits,
        .size = size,
        .l1_size = (uint32_t)L->l1_size,
        .l1_table_offset = L->l1_off,
        .refcount_table_offset = L->rt_off,
        .refcount_table_clusters = (uint32_t)L->rt_clusters,
        .refcount_order = (uint32_t)__builtin_ctz(
            o->refcount_bits ? o->refcount_bits : 16),
        .header_length = version >= 3 ? QCOW2_HDR_V3_COMPRESSION_LEN
                                      : QCOW2_HDR_V2_LEN,
        .compression_type = is_zstd ? QCOW2_COMPRESSION_ZSTD
                                    : QCOW2_COMPRESSION_ZLIB,
    };
    if (version >= 3) {
        h.incompatible_features =
            (o->data_file ? QCOW2_INCOMPAT_DATA_FILE : 0) |
            (is_zstd ? QCOW2_INCOMPAT_COMPRESSION : 0) |
            (o->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
        h.compatible_features =
            o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
        h.autoclear_features =
            o->data_file_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0;
    }

    struct qcow2_extensions ext = {0};
    ext.backing_format = (char *)o->backing_format;
    if (version >= 3) {
        ext.data_file = (char *)o->data_file;
    }
    if (version >= 3 && L->cs >= 8192) {
        /* qemu-img leaves the feature name table out of smaller clusters,
         * where it would crowd out a backing file name */
        ext.features = (struct qcow2_feature *)qcow2_feature_table;
        ext.nb_features = QCOW2_NB_FEATURES;
    }
    uint8_t *buf = calloc(1, (size_t)L->cs);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    const size_t hlen = h.header_length;
    int n = qcow2_extensions_encode(&ext, buf + hlen, (size_t)L->cs - hlen);
    int ret = n;
    if (n >= 0) {
        size_t used = hlen + (size_t)n;
        if (o->backing_file) {
            const size_t blen = strlen(o->backing_file);
            if (used + blen > L->cs) {
                ret = vimg_error(-EINVAL, "backing file name does not fit "
                                          "in the first cluster");
                goto out;
            }
            h.backing_file_offset = used;
            h.backing_file_size = (uint32_t)blen;
            memcpy(buf + used, o->backing_file, blen);
            used += blen;
        }
        ret = qcow2_header_encode(&h, buf, hlen);
        if (ret >= 0) {
            ret = vimg_io_pwrite(io, buf, used, 0);
        }
    }
out:
    free(buf);
    return ret;
}

int qcow2_create(const char *path, const struct qcow2_create_params *o)
{
    enum prealloc prealloc = PREALLOC_OFF;
    struct layout L = {0};
    struct vimg_io *io = NULL, *data_io = NULL;

    int ret = check_opts(path, o, &prealloc);
    if (ret < 0) {
        return ret;
    }
    /* qcow2 disks are made of 512-byte sectors */
    const uint64_t size = (o->size + 511) & ~(uint64_t)511;
    ret = plan(&L, path, o, prealloc, size);
    if (ret < 0) {
        return ret;
    }
    if (o->data_file) {
        /* As qemu-img, the data file is emptied (then sized); with
         * data_file_keep an existing one keeps its contents (wrapping a
         * raw disk with data_file_raw) and only grows to the size. */
        ret = vimg_io_file_open(&data_io, o->data_file, true, false);
        if (ret == -ENOENT) {
            ret = vimg_io_file_open(&data_io, o->data_file, true, true);
        }
        if (ret < 0) {
            return ret;
        }
        /* as qemu-img: not while another process uses it (it is emptied) */
        ret = vimg_io_lock(data_io, VIMG_PERM_WRITE | VIMG_PERM_RESIZE,
                           VIMG_PERM_ALL & ~VIMG_PERM_RESIZE);
        if (ret < 0) {
            vimg_io_close(data_io);
            return ret;
        }
        uint64_t have;
        ret = vimg_io_get_size(data_io, &have);
        if (ret == 0 && !o->data_file_keep && have > 0 &&
            !data_io->is_device) {
            ret = vimg_io_truncate(data_io, 0);
            have = 0;
        }
        if (ret == 0 && have < size) {
            ret = vimg_io_truncate(data_io, size);
            if (ret == 0) {
                ret = preallocate(data_io, prealloc, have, size - have);
            }
        }
        if (ret == 0) {
            ret = vimg_io_flush(data_io);
        }
        vimg_io_close(data_io);
        if (ret < 0) {
            return ret;
        }
    }
    ret = vimg_io_file_open(&io, path, true, true);
    if (ret < 0) {
        return ret;
    }
    if (io->is_device) {
        /* refuse before writing anything: the device keeps its bytes */
        ret = check_device(io, &L, prealloc);
        if (ret < 0) {
            vimg_io_close(io);
            return ret;
        }
    }
    ret = write_metadata(io, &L, o, prealloc);
    if (ret == 0) {
        ret = vimg_io_flush(io); /* everything before the header */
    }
    if (ret == 0) {
        ret = write_header(io, &L, o, size);
    }
    if (ret == 0) {
        ret = vimg_io_flush(io);
    }
    vimg_io_close(io);
    return ret;
}
