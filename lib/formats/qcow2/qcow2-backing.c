/* SPDX-License-Identifier: MIT */
/*
 * qcow2-backing.c: what commit and rebase need from the QCOW2 driver:
 * emptying the active L1/L2 tables (qemu's make_empty) and rewriting the
 * backing file name and the backing format extension (qcow2 spec,
 * "Header" fields backing_file_offset/size, "Header extensions" type
 * 0xe2792aca).  The first-cluster rewrite is shared with amend.
 *
 * Both keep DESIGN.md's durability rule.  make_empty unlinks L2 tables
 * from the L1 table and drops refcounts only after the new L1 table is
 * durable (pending frees), so a crash leaks at worst.  change_backing
 * makes everything written before durable, then writes the new first
 * cluster (header, extensions, name) in one write and syncs: a crash
 * leaves either the old header or the new one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"
#include "vimg-internal.h"

int qcow2_make_empty(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const uint64_t entries = 1ull << s->l2_bits;

    pthread_mutex_lock(&s->lock);
    int ret = qcow2_begin_change(img);
    for (uint32_t i = 0; ret == 0 && i < s->h.l1_size; i++) {
        const uint64_t l1e = s->l1[i];
        const uint64_t l2 = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        /* A table of our own holds one reference on every cluster it
         * points to; a table shared with a snapshot holds them for the
         * snapshot too, so only the table's own reference goes. */
        for (uint64_t k = 0;
             ret == 0 && (l1e & QCOW2_OFLAG_COPIED) && k < entries; k++) {
            uint64_t entry, bitmap;
            ret = qcow2_l2_entry(img, l2, (size_t)k, &entry, &bitmap, false);
            if (ret == 0 && entry) {
                ret = qcow2_release_entry(img, entry);
            }
        }
        if (ret == 0) {
            s->l1[i] = 0;
            s->is_l1_dirty = true;
            ret = qcow2_free_clusters_later(img, l2, 1);
        }
    }
    /* L1 first, then the refcounts drop (flush applies pending frees) */
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void qcow2_first_cluster_free(struct qcow2_first_cluster *fc)
{
    qcow2_extensions_free(&fc->ext);
    free(fc->backing);
    free(fc->raw);
}

int qcow2_first_cluster_read(struct vimg_image *img,
                             struct qcow2_first_cluster *fc)
{
    struct qcow2_state *s = img->priv;
    const size_t cs = (size_t)s->cluster_size;
    uint8_t *buf = malloc(cs);
    int ret = 0;

    memset(fc, 0, sizeof(*fc));
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    ret = vimg_io_pread(img->io, buf, cs, 0);
    if (ret == 0) {
        ret = qcow2_header_decode(&fc->h, buf, cs, VIMG_MAX(s->file_size, cs));
    }
    size_t ext_end = cs;
    if (ret == 0 && fc->h.backing_file_offset) {
        ext_end = (size_t)VIMG_MIN((uint64_t)cs, fc->h.backing_file_offset);
    }
    if (ret == 0) {
        ret = qcow2_extensions_decode(&fc->ext, buf, fc->h.header_length,
                                      ext_end);
    }
    if (ret == 0) {
        fc->raw_len = fc->h.header_length;
        fc->raw = malloc(fc->raw_len);
        if (!fc->raw) {
            ret = vimg_error(-ENOMEM, "out of memory");
        } else {
            memcpy(fc->raw, buf, fc->raw_len);
        }
    }
    if (ret == 0 && fc->h.backing_file_size) {
        const uint64_t at = fc->h.backing_file_offset;
        const size_t n = fc->h.backing_file_size;
        if (at + n > cs) {
            ret = vimg_error(-EIO, "%s: the backing file name is not in the "
                                   "first cluster",
                             img->filename);
        } else {
            fc->backing = malloc(n + 1);
            if (!fc->backing) {
                ret = vimg_error(-ENOMEM, "out of memory");
            } else {
                memcpy(fc->backing, buf + at, n);
                fc->backing[n] = '\0';
            }
        }
    }
    free(buf);
    if (ret < 0) {
        qcow2_first_cluster_free(fc);
    }
    return ret;
}

int qcow2_first_cluster_encode(struct vimg_image *img,
                               struct qcow2_first_cluster *fc, uint8_t *buf)
{
    struct qcow2_state *s = img->priv;
    const size_t cs = (size_t)s->cluster_size;
    const size_t name_len = fc->backing ? strlen(fc->backing) : 0;

    memset(buf, 0, cs);
    if (fc->h.version >= 3) {
        /* qcow2.txt: a writer clears the autoclear bits it does not know */
        fc->h.autoclear_features &=
            QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    int ret = qcow2_header_encode(&fc->h, buf, cs);
    const size_t hlen = ret < 0 ? 0 : (size_t)ret;
    if (ret >= 0 && fc->raw_len > QCOW2_HDR_V3_COMPRESSION_LEN &&
        hlen == fc->raw_len) {
        /* header fields newer than this code: kept as they were */
        memcpy(buf + QCOW2_HDR_V3_COMPRESSION_LEN,
               fc->raw + QCOW2_HDR_V3_COMPRESSION_LEN,
               hlen - QCOW2_HDR_V3_COMPRESSION_LEN);
    }
    if (ret >= 0) {
        ret = qcow2_extensions_encode(&fc->ext, buf + hlen, cs - hlen);
    }
    const size_t name_off = ret < 0 ? 0 : hlen + (size_t)ret;
    if (ret == -ENOSPC || (ret >= 0 && name_len > cs - name_off)) {
        return vimg_error(-ENOSPC, "%s: No space left in the file header",
                          img->filename);
    }
    if (ret < 0) {
        return ret;
    }
    fc->h.backing_file_offset = name_len ? name_off : 0;
    fc->h.backing_file_size = (uint32_t)name_len;
    store_be64(buf + QCOW2_HDR_BACKING_OFFSET, fc->h.backing_file_offset);
    store_be32(buf + QCOW2_HDR_BACKING_SIZE, fc->h.backing_file_size);
    memcpy(buf + name_off, fc->backing ? fc->backing : "", name_len);
    return 0;
}

int qcow2_first_cluster_write(struct vimg_image *img,
                              struct qcow2_first_cluster *fc,
                              const uint8_t *buf)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_flush_locked(img);

    if (ret == 0) {
        ret = qcow2_write_meta(img, 0, buf, (size_t)s->cluster_size);
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret < 0) {
        return ret;
    }
    s->h = fc->h;
    /* the state keeps what it parsed; swap in the new extensions */
    struct qcow2_extensions old = s->ext;
    s->ext = fc->ext;
    fc->ext = old;
    s->is_lazy = s->h.version >= 3 &&
                 (s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
    return 0;
}

int qcow2_change_backing(struct vimg_image *img, const char *name,
                         const char *fmt)
{
    struct qcow2_state *s = img->priv;
    const size_t name_len = name ? strlen(name) : 0;
    struct qcow2_first_cluster fc;

    if (name_len > QCOW2_MAX_BACKING_NAME) {
        return vimg_error(-EINVAL, "%s: backing file name is longer than %d "
                                   "bytes",
                          img->filename, QCOW2_MAX_BACKING_NAME);
    }
    if (!name) {
        fmt = NULL; /* a format without a file means nothing */
    }
    if (fmt && (strlen(fmt) == 0 || strlen(fmt) >= 16)) {
        return vimg_error(-EINVAL, "%s: invalid backing format name '%s'",
                          img->filename, fmt);
    }
    pthread_mutex_lock(&s->lock);
    int ret = s->is_broken ? vimg_error(-EIO, "%s: image is marked corrupt; "
                                              "no more writes",
                                        img->filename)
                           : qcow2_first_cluster_read(img, &fc);
    if (ret < 0) {
        pthread_mutex_unlock(&s->lock);
        return ret;
    }
    uint8_t *buf = malloc((size_t)s->cluster_size);
    free(fc.backing);
    free(fc.ext.backing_format);
    fc.backing = name_len ? strdup(name) : NULL;
    fc.ext.backing_format = fmt ? strdup(fmt) : NULL;
    if (!buf || (name_len && !fc.backing) || (fmt && !fc.ext.backing_format)) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    if (ret == 0) {
        ret = qcow2_first_cluster_encode(img, &fc, buf);
    }
    if (ret == 0) {
        ret = qcow2_first_cluster_write(img, &fc, buf);
    }
    pthread_mutex_unlock(&s->lock);
    qcow2_first_cluster_free(&fc);
    free(buf);
    return ret;
}
