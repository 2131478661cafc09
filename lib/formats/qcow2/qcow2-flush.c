/* SPDX-License-Identifier: MIT */
/*
 * qcow2-flush.c: the state of a read-write open, metadata writes, and
 * the ordered flush.
 *
 * Durability (DESIGN.md): metadata is written back, not through.  Dirty
 * L2 tables reach the disk only after the data and refcounts they point
 * to are durable (the L2 cache's write-back callback syncs first); the L1
 * table only after the L2 tables it points to; references are dropped
 * from refcounts only after the L2/L1 changes that removed them are
 * durable (pending frees).  A crash therefore leaks clusters at worst.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

#define RB_CACHE_BYTES (4u * 1024 * 1024)

int qcow2_write_meta(struct vimg_image *img, uint64_t off, const void *buf,
                     size_t len)
{
    struct qcow2_state *s = img->priv;
    int ret = vimg_io_pwrite(img->io, buf, len, off);

    if (ret == 0) {
        s->is_unsynced = true;
        if (off + len > s->file_size) {
            s->file_size = off + len;
        }
    }
    return ret;
}

int qcow2_sync_files(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    if (s->data_io && s->data_io != img->io) {
        ret = vimg_io_flush(s->data_io);
    }
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0) {
        s->is_unsynced = false;
    }
    return ret;
}

/* Write table T of N entries (big-endian) at OFF. */
static int write_table(struct vimg_image *img, uint64_t off,
                       const uint64_t *t, uint64_t n)
{
    const size_t bytes = (size_t)n * 8;
    uint8_t *buf = malloc(bytes ? bytes : 1);

    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < n; i++) {
        store_be64(buf + i * 8, t[i]);
    }
    int ret = qcow2_write_meta(img, off, buf, bytes);
    free(buf);
    return ret;
}

/* Write the refcount blocks and table, then sync: after this, everything
 * written so far (data included) is durable. */
int qcow2_sync_refcounts(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_cache_flush(s->rb_cache);

    if (ret == 0 && s->is_reftable_dirty) {
        ret = write_table(img, s->h.refcount_table_offset, s->reftable,
                          s->reftable_entries);
        if (ret == 0) {
            s->is_reftable_dirty = false;
        }
    }
    if (ret == 0 && s->is_unsynced) {
        ret = qcow2_sync_files(img);
    }
    return ret;
}

static int rb_writeback(void *opaque, uint64_t off, const uint8_t *buf,
                        size_t len)
{
    return qcow2_write_meta(opaque, off, buf, len);
}

static int l2_writeback(void *opaque, uint64_t off, const uint8_t *buf,
                        size_t len)
{
    /* an L2 table may point at new clusters: their data and refcounts
     * must be durable first */
    int ret = qcow2_sync_refcounts(opaque);

    return ret < 0 ? ret : qcow2_write_meta(opaque, off, buf, len);
}

int qcow2_load_table(void *opaque, uint64_t off, uint8_t *buf, size_t len)
{
    struct vimg_image *img = opaque;

    return vimg_io_pread(img->io, buf, len, off);
}

int qcow2_zero_table(void *opaque, uint64_t off, uint8_t *buf, size_t len)
{
    memset(buf, 0, len);
    return 0;
}

/* Set the dirty bit before the first change of a lazy-refcount image. */
int qcow2_lazy_mark_dirty(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    return s->is_lazy ? qcow2_header_mark_dirty(img) : 0;
}

/* Refuse writes to an image found corrupt. */
int qcow2_check_writable(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (s->is_broken) {
        return vimg_error(-EIO, "%s: image is marked corrupt; no more writes",
                          img->filename);
    }
    return 0;
}

int qcow2_begin_change(struct vimg_image *img)
{
    int ret = qcow2_check_writable(img);

    return ret < 0 ? ret : qcow2_lazy_mark_dirty(img);
}

int qcow2_flush_locked(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    /* in-place writes in flight finish first: they are part of what is
     * flushed, and their clusters must not be freed under them */
    s->nb_flush_waiters++;
    while (s->nb_inflight) {
        pthread_cond_wait(&s->inflight_done, &s->lock);
    }
    s->nb_flush_waiters--;

    /* data and refcounts, then L2 tables, then L1, then frees */
    int ret = qcow2_sync_refcounts(img);
    if (ret == 0) {
        ret = qcow2_cache_flush(s->l2_cache);
    }
    if (ret == 0 && s->is_l1_dirty) {
        ret = qcow2_sync_files(img);
        if (ret == 0) {
            ret = write_table(img, s->h.l1_table_offset, s->l1,
                              s->h.l1_size);
        }
        if (ret == 0) {
            s->is_l1_dirty = false;
        }
    }
    if (ret == 0 && s->is_unsynced) {
        ret = qcow2_sync_files(img);
    }
    if (ret == 0 && s->nb_pending) {
        ret = qcow2_apply_pending_frees(img);
        if (ret == 0) {
            ret = qcow2_sync_refcounts(img);
        }
    }
    return ret;
}

int qcow2_flush(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    pthread_mutex_lock(&s->lock);
    int ret = qcow2_flush_locked(img);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_open_write(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return vimg_error(-EIO,
                          "%s: image is dirty (lazy refcounts, not closed "
                          "cleanly); repair it with 'vimg check -r all' "
                          "before writing",
                          img->filename);
    }
    s->is_lazy = s->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    s->rb_entries = (s->cluster_size * 8) >> s->h.refcount_order;
    s->reftable_entries =
        ((uint64_t)s->h.refcount_table_clusters << s->cluster_bits) / 8;
    s->reftable = calloc(s->reftable_entries, sizeof(uint64_t));
    if (!s->reftable) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, s->reftable,
                            (size_t)s->reftable_entries * 8,
                            s->h.refcount_table_offset);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        s->reftable[i] = load_be64((const uint8_t *)&s->reftable[i]);
        const uint64_t rb = s->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if ((rb & (s->cluster_size - 1)) || rb >= s->file_size) {
            return qcow2_corrupt(img, "refcount table entry %llu (0x%llx) "
                                      "is invalid",
                                 (unsigned long long)i,
                                 (unsigned long long)rb);
        }
    }
    size_t slots = RB_CACHE_BYTES >> s->cluster_bits;
    slots = VIMG_MAX(slots, (size_t)8);
    s->rb_cache = qcow2_cache_new((size_t)s->cluster_size, slots);
    if (!s->rb_cache) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    qcow2_cache_set_writeback(s->rb_cache, rb_writeback, img);
    qcow2_cache_set_writeback(s->l2_cache, l2_writeback, img);
    s->end_cluster = VIMG_DIV_ROUND_UP(s->file_size, s->cluster_size);
    s->free_cluster_index = 1;
    ret = qcow2_header_clear_unknown_autoclear(img);
    return ret < 0 ? ret : qcow2_dirty_open(img);
}

void qcow2_close_write(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!s->rb_cache) {
        free(s->reftable); /* open_write may have failed half-way */
        s->reftable = NULL;
        qcow2_dirty_free(img);
        return;
    }
    pthread_mutex_lock(&s->lock);
    /* bitmaps that cannot be stored stay in use (inconsistent) */
    int ret = s->is_broken ? -EIO : qcow2_dirty_store_locked(img);
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret == 0 && s->is_lazy) {
        /* clean close: the refcounts are right again */
        qcow2_header_clear_dirty(img);
    }
    pthread_mutex_unlock(&s->lock);
    qcow2_cache_free(s->rb_cache);
    s->rb_cache = NULL;
    free(s->reftable);
    free(s->pending);
    free(s->meta);
    qcow2_dirty_free(img);
}
