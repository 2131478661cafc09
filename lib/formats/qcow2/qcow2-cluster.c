/* SPDX-License-Identifier: MIT */
/*
 * qcow2-cluster.c: guest-to-host mapping through the L1 and L2 tables
 * (qcow2.txt, "Cluster mapping" and "Extended L2 Entries"), and the read
 * path.  The driver lock is held only while looking at the L2 cache; data
 * is read and decompressed without it, so readers run in parallel.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

int qcow2_corrupt(struct vimg_image *img, const char *fmt, ...)
{
    char what[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return vimg_error(-EIO, "%s: corrupt qcow2 image: %s", img->filename,
                      what);
}

void qcow2_l2_decode(const struct qcow2_state *s, uint64_t entry,
                     struct qcow2_l2_desc *out)
{
    memset(out, 0, sizeof(*out));
    out->is_copied = (entry & QCOW2_OFLAG_COPIED) != 0;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        out->is_compressed = true;
        out->comp_offset = entry & s->csize_mask;
        out->comp_sectors = ((entry >> s->csize_shift) &
                             ((1ull << (s->cluster_bits - 8)) - 1)) +
                            1;
        return;
    }
    out->host = entry & QCOW2_L2E_OFFSET_MASK;
    out->is_zero = !s->has_subclusters && (entry & QCOW2_OFLAG_ZERO);
    /* With an external data file, offset 0 is a valid host cluster when
     * the COPIED bit marks the entry as allocated (qcow2.txt, L2 table
     * entry). */
    out->has_host = out->host != 0 || (s->has_data_file && out->is_copied);
}

void qcow2_l2_entry_clusters(const struct qcow2_state *s, uint64_t entry,
                             uint64_t *first, uint64_t *n)
{
    struct qcow2_l2_desc d;

    qcow2_l2_decode(s, entry, &d);
    *n = 0;
    if (d.is_compressed) {
        const uint64_t last =
            d.comp_offset + d.comp_sectors * 512 - (d.comp_offset & 511) - 1;
        *first = d.comp_offset >> s->cluster_bits;
        *n = (last >> s->cluster_bits) - *first + 1;
    } else if (d.host && !s->has_data_file) {
        *first = d.host >> s->cluster_bits;
        *n = 1;
    }
}

enum qcow2_subcluster_type qcow2_l2_entry_type(const struct qcow2_state *s,
                                               uint64_t entry,
                                               uint64_t bitmap, unsigned sc)
{
    struct qcow2_l2_desc d;

    qcow2_l2_decode(s, entry, &d);
    if (d.is_compressed) {
        return QCOW2_SC_COMPRESSED;
    }
    const bool has_host = d.has_host;
    if (!s->has_subclusters) {
        if (d.is_zero) {
            return has_host ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_ZERO_PLAIN;
        }
        return has_host ? QCOW2_SC_NORMAL : QCOW2_SC_UNALLOCATED;
    }
    /* The whole entry must be consistent, not just subcluster SC: no
     * subcluster both allocated and zero, none allocated without a host
     * cluster (qcow2.txt, Subcluster Allocation Bitmap). */
    const uint32_t alloc_bits = (uint32_t)bitmap;
    const uint32_t zero_bits = (uint32_t)(bitmap >> 32);
    if ((alloc_bits & zero_bits) || (!has_host && alloc_bits)) {
        return QCOW2_SC_INVALID;
    }
    const bool is_alloc = (alloc_bits >> sc) & 1;
    const bool is_zero = (zero_bits >> sc) & 1;
    if (!has_host) {
        return is_zero ? QCOW2_SC_ZERO_PLAIN : QCOW2_SC_UNALLOCATED;
    }
    if (is_alloc) {
        return QCOW2_SC_NORMAL;
    }
    return is_zero ? QCOW2_SC_ZERO_ALLOC : QCOW2_SC_UNALLOCATED_ALLOC;
}

static int load_l2(void *opaque, uint64_t file_offset, uint8_t *buf,
                   size_t len)
{
    struct vimg_image *img = opaque;

    return vimg_io_pread(img->io, buf, len, file_offset);
}

static bool type_has_host(enum qcow2_subcluster_type t)
{
    return t == QCOW2_SC_NORMAL || t == QCOW2_SC_ZERO_ALLOC ||
           t == QCOW2_SC_UNALLOCATED_ALLOC;
}

int qcow2_get_mapping(struct vimg_image *img, uint64_t offset, uint64_t bytes,
                      struct qcow2_mapping *out)
{
    struct qcow2_state *s = img->priv;

    pthread_mutex_lock(&s->lock);
    int ret = qcow2_get_mapping_locked(img, offset, bytes, out);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* The L2 table that maps L1_INDEX, in *OUT (0: none); -EIO if the L1
 * entry points at something that cannot be an L2 table. */
static int l2_table_of(struct vimg_image *img, uint64_t l1_index,
                       uint64_t *out)
{
    struct qcow2_state *s = img->priv;

    *out = 0;
    if (l1_index >= s->h.l1_size) {
        return 0;
    }
    const uint64_t l2_offset = s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (l2_offset == 0) {
        return 0;
    }
    if (l2_offset & (s->cluster_size - 1)) {
        return qcow2_corrupt(img,
                          "L2 table offset 0x%llx "
                          "(L1 index %llu) is not cluster aligned",
                          (unsigned long long)l2_offset,
                          (unsigned long long)l1_index);
    }
    if (l2_offset >= s->file_size ||
        s->file_size - l2_offset < s->cluster_size) {
        return qcow2_corrupt(img,
                          "L2 table at 0x%llx (L1 "
                          "index %llu) is past the end of the file (0x%llx)",
                          (unsigned long long)l2_offset,
                          (unsigned long long)l1_index,
                          (unsigned long long)s->file_size);
    }
    *out = l2_offset;
    return 0;
}

/* A host cluster (entry I of the table at L2_OFFSET, type T, for guest
 * POS) that cannot be one: -EIO. */
static int check_host_cluster(struct vimg_image *img,
                              enum qcow2_subcluster_type t,
                              uint64_t cluster_host, uint64_t pos,
                              uint64_t l2_offset, size_t i)
{
    struct qcow2_state *s = img->priv;

    if (cluster_host & (s->cluster_size - 1)) {
        return qcow2_corrupt(img,
                             "cluster offset 0x%llx (L2 table 0x%llx "
                             "entry %zu) is not cluster aligned",
                             (unsigned long long)cluster_host,
                             (unsigned long long)l2_offset, i);
    }
    if (t == QCOW2_SC_NORMAL && s->data_io == img->io &&
        cluster_host >= s->file_size) {
        return qcow2_corrupt(img,
                             "data cluster at 0x%llx (guest offset "
                             "0x%llx) is past the end of the file "
                             "(0x%llx)",
                             (unsigned long long)cluster_host,
                             (unsigned long long)pos,
                             (unsigned long long)s->file_size);
    }
    return 0;
}

/* A compressed cluster (ENTRY, for the query at OFFSET) into OUT. */
static int map_compressed(struct vimg_image *img, uint64_t entry,
                          uint64_t offset, struct qcow2_mapping *out)
{
    struct qcow2_state *s = img->priv;
    struct qcow2_l2_desc d;

    qcow2_l2_decode(s, entry, &d);
    if (d.comp_offset >= s->file_size) {
        return qcow2_corrupt(img,
                             "compressed cluster at 0x%llx (guest "
                             "offset 0x%llx) is past the end of the "
                             "file",
                             (unsigned long long)d.comp_offset,
                             (unsigned long long)offset);
    }
    out->type = QCOW2_SC_COMPRESSED;
    out->comp_offset = d.comp_offset;
    out->comp_bytes = d.comp_sectors * 512 - (d.comp_offset & 511);
    return 0;
}

int qcow2_get_mapping_locked(struct vimg_image *img, uint64_t offset,
                             uint64_t bytes, struct qcow2_mapping *out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cluster_mask = s->cluster_size - 1;
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;
    const uint64_t l2_cover_end = (l1_index + 1)
                                  << (s->l2_bits + s->cluster_bits);
    uint64_t l2_offset;

    memset(out, 0, sizeof(*out));
    bytes = VIMG_MIN(bytes, l2_cover_end - offset);
    int ret = l2_table_of(img, l1_index, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (l2_offset == 0) {
        out->type = QCOW2_SC_UNALLOCATED;
        out->length = bytes;
        return 0;
    }
    const uint8_t *table;
    ret = qcow2_cache_get(s->l2_cache, l2_offset, load_l2, img, &table);
    if (ret < 0) {
        return ret;
    }

    /* one extent: entries of the same type, contiguous host offsets and
     * the same COPIED flag */
    const unsigned sc_bits =
        s->has_subclusters ? s->subcluster_bits : s->cluster_bits;
    const uint64_t end = offset + bytes;
    uint64_t pos = offset;
    uint64_t expect_host = 0;
    size_t i = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    enum qcow2_subcluster_type first = QCOW2_SC_INVALID;
    bool is_copied = false;
    while (pos < end) {
        const uint8_t *e = table + i * s->l2_entry_bytes;
        const uint64_t entry = load_be64(e);
        const uint64_t bitmap = s->has_subclusters ? load_be64(e + 8) : 0;
        const unsigned sc = (unsigned)((pos & cluster_mask) >> sc_bits);
        const enum qcow2_subcluster_type t =
            qcow2_l2_entry_type(s, entry, bitmap, sc);
        const uint64_t cluster_host = entry & QCOW2_L2E_OFFSET_MASK;
        const uint64_t host =
            type_has_host(t) ? cluster_host + (pos & cluster_mask) : 0;

        /* Stop where the extent stops before judging the next entry, so a
         * corrupt neighbour does not fail a query for a good range. */
        if (pos != offset && (t != first || t == QCOW2_SC_COMPRESSED ||
                              (type_has_host(t) && host != expect_host))) {
            break;
        }
        if (t == QCOW2_SC_INVALID) {
            return qcow2_corrupt(img,
                                 "invalid subcluster bitmap 0x%016llx in L2 "
                                 "table 0x%llx entry %zu",
                                 (unsigned long long)bitmap,
                                 (unsigned long long)l2_offset, i);
        }
        if (t == QCOW2_SC_COMPRESSED) {
            ret = map_compressed(img, entry, offset, out);
            if (ret < 0) {
                return ret;
            }
            pos = VIMG_MIN(end, (pos | cluster_mask) + 1);
            break; /* a compressed cluster is always its own extent */
        }
        if (type_has_host(t)) {
            ret = check_host_cluster(img, t, cluster_host, pos, l2_offset, i);
            if (ret < 0) {
                return ret;
            }
        }
        if (pos == offset) {
            first = t;
            out->type = t;
            out->host_offset = host;
            is_copied = (entry & QCOW2_OFLAG_COPIED) != 0;
        } else if (((entry & QCOW2_OFLAG_COPIED) != 0) != is_copied) {
            break;
        }
        /* advance to the next subcluster (or cluster) */
        const uint64_t next = VIMG_MIN(end, ((pos >> sc_bits) + 1) << sc_bits);
        expect_host = host + (next - pos);
        pos = next;
        if ((pos & cluster_mask) == 0) {
            i++;
        }
    }
    out->length = pos - offset;
    out->is_copied = is_copied;
    return 0;
}

int qcow2_decompress_cluster(struct vimg_image *img, uint64_t comp_offset,
                             uint64_t comp_bytes, uint8_t *out)
{
    struct qcow2_state *s = img->priv;
    /* A compressed cluster never needs more than a cluster plus the
     * sector it starts in; anything longer is corrupt. */
    if (comp_bytes > s->cluster_size + 512) {
        comp_bytes = s->cluster_size + 512;
    }
    uint8_t *in = malloc((size_t)comp_bytes);
    if (!in) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, in, (size_t)comp_bytes, comp_offset);
    if (ret == 0) {
        if (s->h.compression_type == QCOW2_COMPRESSION_ZSTD) {
            ret = vimg_zstd_decompress(in, (size_t)comp_bytes, out,
                                       (size_t)s->cluster_size);
        } else {
            ret = vimg_inflate_raw(in, (size_t)comp_bytes, out,
                                   (size_t)s->cluster_size);
        }
        if (ret < 0) {
            vimg_error_prefix("%s: compressed cluster at 0x%llx",
                              img->filename, (unsigned long long)comp_offset);
        }
    }
    free(in);
    return ret;
}

int qcow2_pread(struct vimg_image *img, void *buf, size_t count,
                uint64_t offset)
{
    struct qcow2_state *s = img->priv;

    if (s->h.crypt_method != QCOW2_CRYPT_NONE) {
        /* opened for info only; reading needs the key and a cipher */
        return vimg_error(-ENOTSUP, "%s: reading encrypted qcow2 images is "
                                    "not supported yet",
                          img->filename);
    }
    return qcow2_read_range(img, buf, count, offset, false);
}

int qcow2_read_range(struct vimg_image *img, void *buf, size_t count,
                     uint64_t offset, bool is_locked)
{
    struct qcow2_state *s = img->priv;
    uint8_t *p = buf;
    uint8_t *cluster_buf = NULL;
    int ret = 0;

    while (count > 0) {
        struct qcow2_mapping m;
        ret = is_locked ? qcow2_get_mapping_locked(img, offset, count, &m)
                        : qcow2_get_mapping(img, offset, count, &m);
        if (ret < 0) {
            break;
        }
        const size_t n = (size_t)m.length;
        switch (m.type) {
        case QCOW2_SC_UNALLOCATED:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            ret = vimg_read_backing(img, p, n, offset);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            memset(p, 0, n);
            break;
        case QCOW2_SC_NORMAL:
            if (!s->data_io) {
                ret = vimg_error(-EIO, "%s: external data file is not open",
                                 img->filename);
                break;
            }
            ret = vimg_io_pread(s->data_io, p, n, m.host_offset);
            break;
        case QCOW2_SC_COMPRESSED: {
            const uint64_t in_cluster = offset & (s->cluster_size - 1);
            if (in_cluster == 0 && n == s->cluster_size) {
                ret = qcow2_decompress_cluster(img, m.comp_offset,
                                               m.comp_bytes, p);
                break;
            }
            if (!cluster_buf) {
                cluster_buf = malloc((size_t)s->cluster_size);
                if (!cluster_buf) {
                    ret = vimg_error(-ENOMEM, "out of memory");
                    break;
                }
            }
            ret = qcow2_decompress_cluster(img, m.comp_offset, m.comp_bytes,
                                           cluster_buf);
            if (ret == 0) {
                memcpy(p, cluster_buf + in_cluster, n);
            }
            break;
        }
        default:
            ret = qcow2_corrupt(img, "bad cluster type at 0x%llx",
                             (unsigned long long)offset);
            break;
        }
        if (ret < 0) {
            break;
        }
        p += n;
        offset += n;
        count -= n;
    }
    free(cluster_buf);
    return ret;
}
