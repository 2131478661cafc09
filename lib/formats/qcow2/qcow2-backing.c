/* SPDX-License-Identifier: MIT */
/*
 * qcow2-backing.c: what commit and rebase need from the QCOW2 driver:
 * emptying the active L1/L2 tables (qemu's make_empty) and rewriting the
 * backing file name and the backing format extension (qcow2 spec,
 * "Header" fields backing_file_offset/size, "Header extensions" type
 * 0xe2792aca).
 *
 * Both keep DESIGN.md's durability rule.  make_empty unlinks L2 tables
 * from the L1 table and drops refcounts only after the new L1 table is
 * durable (pending frees), so a crash leaks at worst.  change_backing
 * makes everything written before durable, then writes the new first
 * cluster (header, extensions, name) in one write and syncs: a crash
 * leaves either the old header or the new one.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

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

int qcow2_change_backing(struct vimg_image *img, const char *name,
                         const char *fmt)
{
    struct qcow2_state *s = img->priv;
    const size_t cs = (size_t)s->cluster_size;
    const size_t name_len = name ? strlen(name) : 0;
    struct qcow2_extensions ext = {0};
    uint8_t *old = NULL, *buf = NULL;
    int ret;

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
    ret = s->is_broken ? vimg_error(-EIO, "%s: image is marked corrupt; no "
                                          "more writes",
                                    img->filename)
                       : 0;
    if (ret == 0) {
        /* what the new header points at must be durable first */
        ret = qcow2_flush_locked(img);
    }
    old = malloc(cs);
    buf = calloc(1, cs);
    if (ret == 0 && (!old || !buf)) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    /* Start from the bytes on disk: header fields this code does not
     * know (a longer v3 header) and unknown extensions are kept. */
    if (ret == 0) {
        ret = vimg_io_pread(img->io, old, cs, 0);
    }
    struct qcow2_header h;
    if (ret == 0) {
        ret = qcow2_header_decode(&h, old, cs, VIMG_MAX(s->file_size, cs));
    }
    if (ret == 0) {
        size_t ext_end = cs;
        if (h.backing_file_offset) {
            ext_end = (size_t)VIMG_MIN((uint64_t)cs, h.backing_file_offset);
        }
        ret = qcow2_extensions_decode(&ext, old, h.header_length, ext_end);
    }
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
        goto out;
    }
    free(ext.backing_format);
    ext.backing_format = fmt ? strdup(fmt) : NULL;
    if (fmt && !ext.backing_format) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    memcpy(buf, old, h.header_length);
    ret = qcow2_extensions_encode(&ext, buf + h.header_length,
                                  cs - h.header_length);
    const size_t name_off = ret < 0 ? 0 : h.header_length + (size_t)ret;
    if (ret == -ENOSPC || (ret >= 0 && name_len > cs - name_off)) {
        ret = vimg_error(-ENOSPC, "No space left in the file header");
    }
    if (ret < 0) {
        goto out;
    }
    if (name_len) {
        memcpy(buf + name_off, name, name_len);
    }
    store_be64(buf + QCOW2_HDR_BACKING_OFFSET, name_len ? name_off : 0);
    store_be32(buf + QCOW2_HDR_BACKING_SIZE, (uint32_t)name_len);
    uint64_t autoclear = h.autoclear_features;
    if (h.version >= 3) {
        /* qcow2.txt: a writer clears the autoclear bits it does not know */
        autoclear &= QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        store_be64(buf + QCOW2_HDR_AUTOCLEAR, autoclear);
    }
    ret = vimg_io_pwrite(img->io, buf, cs, 0);
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret < 0) {
        goto out;
    }
    s->h.backing_file_offset = name_len ? name_off : 0;
    s->h.backing_file_size = (uint32_t)name_len;
    s->h.autoclear_features = autoclear;
    if (s->file_size < cs) {
        s->file_size = cs;
    }
    char *keep = ext.backing_format;
    ext.backing_format = s->ext.backing_format;
    s->ext.backing_format = keep;
out:
    pthread_mutex_unlock(&s->lock);
    qcow2_extensions_free(&ext);
    free(old);
    free(buf);
    return ret;
}
