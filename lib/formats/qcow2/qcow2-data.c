/* SPDX-License-Identifier: MIT */
/*
 * qcow2-data.c: the data path of writes: guest writes with copy-on-write
 * (from the backing file, zero clusters, compressed and shared clusters)
 * at subcluster granularity on extended L2 images, write-zeroes and
 * discard, and compressed clusters.
 *
 * Concurrency: a write into a cluster that is already allocated and ours
 * alone (COPIED) only looks up the mapping under the driver lock and
 * writes without it, so such writes run in parallel.  A write that needs
 * fresh clusters with nothing to copy into them (whole clusters, or a
 * cluster that reads as zeroes) allocates them under the lock, records
 * the guest range as in flight, writes the data without the lock, and
 * links the L2 entries under the lock again: allocating writes run in
 * parallel too.  Anything else that would change an in-flight range
 * (another write, zeroing, discard, a compressed write) waits for it, so
 * a cluster is never allocated twice; a crash before the link only leaks
 * the new clusters.  Every other write holds the lock for its whole
 * duration.  A flush waits for all data writes in flight, so their
 * clusters cannot be freed and reused under them.  Reads only hold the
 * lock for lookups.
 */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* One guest cluster being written: its L2 entry before the write, the
 * part of the cluster the write covers, and the host cluster it goes to. */
struct cluster_write {
    uint64_t cstart;         /* guest offset of the cluster */
    uint64_t in;             /* where the write starts in the cluster */
    size_t n;                /* bytes written */
    uint64_t l2_off;         /* the L2 table, ready to be changed */
    size_t index;            /* the entry in it */
    uint64_t entry, bitmap;  /* the entry before the write */
    bool is_compressed, has_host, is_copied, is_zero;
    uint64_t old_host;
    uint64_t w_start, w_end; /* the bytes of the cluster written */
    uint64_t host;           /* where the cluster's data goes */
};

/* Find (and make changeable) the L2 entry of the cluster at OFFSET. */
static int cw_lookup(struct vimg_image *img, uint64_t offset, size_t n,
                     struct cluster_write *w)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;

    w->cstart = offset & ~(s->cluster_size - 1);
    w->in = offset - w->cstart;
    w->n = n;
    w->index = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    if (l1_index >= s->h.l1_size) {
        return vimg_error(-EIO, "%s: write beyond the L1 table",
                          img->filename);
    }
    int ret = qcow2_l2_for_write(img, l1_index, &w->l2_off);
    if (ret == 0) {
        ret = qcow2_l2_entry(img, w->l2_off, w->index, &w->entry, &w->bitmap,
                             false);
    }
    if (ret < 0) {
        return ret;
    }
    struct qcow2_l2_desc d;
    qcow2_l2_decode(s, w->entry, &d);
    w->is_compressed = d.is_compressed;
    w->has_host = d.has_host;
    w->is_copied = d.is_copied;
    w->is_zero = d.is_zero;
    w->old_host = d.host;
    return 0;
}

/* What part of the cluster gets written: whole subclusters on extended
 * L2 images (the rest of a partial one is copied), the whole cluster
 * otherwise unless the host cluster is ours to change. */
static void cw_span(const struct qcow2_state *s, struct cluster_write *w)
{
    const uint64_t cs = s->cluster_size;

    if (s->has_subclusters && !w->is_compressed) {
        const uint64_t sc = cs / QCOW2_SUBCLUSTERS;
        w->w_start = w->in / sc * sc;
        w->w_end = VIMG_DIV_ROUND_UP(w->in + w->n, sc) * sc;
    } else if (w->has_host && w->is_copied && !w->is_zero) {
        w->w_start = w->in;
        w->w_end = w->in + w->n;
    } else if (s->has_data_file && w->has_host) {
        w->w_start = w->in;
        w->w_end = w->in + w->n;
    } else {
        w->w_start = 0;
        w->w_end = cs;
    }
    /* a ZERO_ALLOC host cluster we own: rewrite it whole (zeroes + data) */
    if (w->has_host && w->is_zero) {
        w->w_start = 0;
        w->w_end = cs;
    }
}

/* Where the data goes: the data file at the guest offset, the host
 * cluster we own, or a new cluster. */
static int cw_target(struct vimg_image *img, struct cluster_write *w)
{
    struct qcow2_state *s = img->priv;

    if (s->has_data_file) {
        w->host = w->cstart; /* guest offset = data file offset */
    } else if (w->has_host && w->is_copied) {
        w->host = w->old_host;
    } else {
        return qcow2_alloc_clusters(img, 1, &w->host);
    }
    return 0;
}

/* [w_start, w_end) as it must be written: the current guest content
 * (copy-on-write), then BUF (zeroes if NULL) over it.  Free *OUT. */
static int cw_build(struct vimg_image *img, const uint8_t *buf,
                    const struct cluster_write *w, uint8_t **out)
{
    const size_t len = (size_t)(w->w_end - w->w_start);
    const bool is_covered = w->w_start == w->in && w->w_end == w->in + w->n;
    uint8_t *cow = malloc(len);

    *out = NULL;
    if (!cow) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (!is_covered) {
        int ret = qcow2_read_range(img, cow, len, w->cstart + w->w_start,
                                   true);
        if (ret < 0) {
            free(cow);
            return ret;
        }
    }
    if (buf) {
        memcpy(cow + (w->in - w->w_start), buf, w->n);
    } else {
        memset(cow + (w->in - w->w_start), 0, w->n);
    }
    *out = cow;
    return 0;
}

/* Write COW to the host cluster.  A shared or compressed cluster moving
 * to a new host on an extended L2 image takes its other allocated
 * subclusters along. */
static int cw_write_data(struct vimg_image *img,
                         const struct cluster_write *w, const uint8_t *cow)
{
    struct qcow2_state *s = img->priv;
    const size_t len = (size_t)(w->w_end - w->w_start);
    int ret;

    if (s->has_subclusters && !w->is_compressed && w->has_host &&
        !w->is_copied && !s->has_data_file) {
        const size_t cs = (size_t)s->cluster_size;
        uint8_t *whole = malloc(cs);
        if (!whole) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = vimg_io_pread(img->io, whole, cs, w->old_host);
        if (ret == 0) {
            memcpy(whole + w->w_start, cow, len);
            ret = vimg_io_pwrite(s->data_io, whole, cs, w->host);
        }
        free(whole);
    } else {
        ret = vimg_io_pwrite(s->data_io, cow, len, w->host + w->w_start);
    }
    if (ret == 0) {
        s->is_unsynced = true;
    }
    return ret;
}

/* Point the L2 entry at the new data (subclusters written become
 * allocated), and drop the old shared or compressed copy. */
static int cw_update_entry(struct vimg_image *img,
                           const struct cluster_write *w)
{
    struct qcow2_state *s = img->priv;
    uint64_t new_entry = (s->has_data_file && w->host == 0 ? 0 : w->host) |
                         QCOW2_OFLAG_COPIED;
    uint64_t new_bitmap = 0;

    if (s->has_subclusters) {
        const uint64_t sc = s->cluster_size / QCOW2_SUBCLUSTERS;
        uint32_t touched = 0;
        for (uint64_t k = w->w_start / sc; k < w->w_end / sc; k++) {
            touched |= 1u << k;
        }
        if (w->is_compressed) {
            touched = 0xffffffffu; /* decompressed whole */
        }
        const uint32_t alloc =
            (w->is_compressed ? 0 : (uint32_t)w->bitmap) | touched;
        const uint32_t zero =
            (w->is_compressed ? 0 : (uint32_t)(w->bitmap >> 32)) & ~touched;
        new_bitmap = (uint64_t)zero << 32 | alloc;
    }
    if (new_entry == w->entry && new_bitmap == w->bitmap) {
        return 0;
    }
    int ret = qcow2_l2_entry(img, w->l2_off, w->index, &new_entry,
                             &new_bitmap, true);
    if (ret == 0 && !w->is_copied && !s->has_data_file) {
        ret = qcow2_release_entry(img, w->entry);
    }
    return ret;
}

/*
 * Write [OFFSET, OFFSET+N) inside one guest cluster.  BUF NULL writes
 * zeroes as data.  The caller holds the lock.  Order: data, then the L2
 * entry (written back after the data and refcounts are durable).
 */
static int write_in_cluster(struct vimg_image *img, const uint8_t *buf,
                            size_t n, uint64_t offset)
{
    struct cluster_write w;
    uint8_t *cow = NULL;
    int ret = cw_lookup(img, offset, n, &w);

    if (ret < 0) {
        return ret;
    }
    cw_span(img->priv, &w);
    ret = cw_target(img, &w);
    if (ret == 0) {
        ret = cw_build(img, buf, &w, &cow);
    }
    if (ret == 0) {
        ret = cw_write_data(img, &w, cow);
    }
    if (ret == 0) {
        ret = cw_update_entry(img, &w);
    }
    free(cow);
    return ret;
}

/* At most this many clusters in one allocating write */
#define FRESH_RUN_MAX 64

/* Does a change to [OFFSET, OFFSET+COUNT) touch a cluster whose
 * allocating write is in flight?  The caller holds the lock. */
static bool alloc_inflight_overlaps(const struct qcow2_state *s,
                                    uint64_t offset, uint64_t count)
{
    for (unsigned i = 0; i < s->nb_alloc_inflight; i++) {
        if (offset < s->alloc_inflight[i].end &&
            s->alloc_inflight[i].start < offset + count) {
            return true;
        }
    }
    return false;
}

/* Wait (the lock held) until no allocating write in flight touches
 * [OFFSET, OFFSET+COUNT). */
static void wait_alloc_inflight(struct qcow2_state *s, uint64_t offset,
                                uint64_t count)
{
    while (alloc_inflight_overlaps(s, offset, count)) {
        pthread_cond_wait(&s->inflight_done, &s->lock);
    }
}

/* Before the write, the cluster reads as zeroes and has no host cluster:
 * a zero cluster, or unallocated with no backing file. */
static bool cw_reads_zero(const struct vimg_image *img,
                          const struct cluster_write *w)
{
    return !w->has_host && !w->is_compressed &&
           (w->is_zero || img->backing_name == NULL);
}

/* Find the run of fresh clusters from OFFSET: whole clusters without a
 * host cluster (up to COUNT bytes, within one L2 table, none in flight),
 * or one partial cluster that reads as zeroes.  Returns the number of
 * clusters (0: none qualifies) and the bytes of BUF they take in *BYTES. */
static int fresh_run(struct vimg_image *img, size_t count, uint64_t offset,
                     struct cluster_write *w, size_t *bytes)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t in = offset & (cs - 1);
    const uint64_t l2_mask = (1ull << s->l2_bits) - 1;
    size_t k = 0;
    int ret;

    *bytes = 0;
    if (in != 0 || count < cs) {
        const size_t n = (size_t)VIMG_MIN((uint64_t)count, cs - in);
        ret = cw_lookup(img, offset, n, &w[0]);
        if (ret < 0) {
            return ret;
        }
        if (!cw_reads_zero(img, &w[0])) {
            return 0;
        }
        *bytes = n;
        return 1;
    }
    while (k < FRESH_RUN_MAX && (k + 1) * cs <= count) {
        const uint64_t at = offset + k * cs;
        if (k > 0 && (((at >> s->cluster_bits) & l2_mask) == 0 ||
                      alloc_inflight_overlaps(s, at, cs))) {
            break; /* the next L2 table, or someone else's cluster */
        }
        ret = cw_lookup(img, at, (size_t)cs, &w[k]);
        if (ret < 0) {
            return ret;
        }
        if (w[k].has_host || w[k].is_compressed) {
            break;
        }
        k++;
    }
    *bytes = (size_t)(k * cs);
    return (int)k;
}

/* Write the data of a fresh run to HOST: BUF for whole clusters, else one
 * cluster of zeroes with BUF at its place. */
static int fresh_write_data(struct qcow2_state *s, const uint8_t *buf,
                            size_t bytes, uint64_t offset, size_t k,
                            uint64_t host)
{
    const size_t cs = (size_t)s->cluster_size;
    const size_t in = (size_t)(offset & (cs - 1));

    if (in == 0 && bytes == k * cs) {
        return vimg_io_pwrite(s->data_io, buf, bytes, host);
    }
    uint8_t *whole = calloc(1, cs);
    if (!whole) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(whole + in, buf, bytes);
    int ret = vimg_io_pwrite(s->data_io, whole, cs, host);
    free(whole);
    return ret;
}

/*
 * Write fresh clusters from OFFSET (fresh_run()) with one allocation and
 * one write; plain L2 entries in the image file only.  The data is
 * written without the lock unless a flush is waiting or too many such
 * writes are in flight; the L2 entries are linked afterwards, looked up
 * again since the tables may have moved meanwhile.  *DONE gets the bytes
 * written: 0 when the first cluster does not qualify.  The caller holds
 * the lock.
 */
static int write_fresh_clusters(struct vimg_image *img, const uint8_t *buf,
                                size_t count, uint64_t offset, size_t *done)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t cstart = offset & ~(cs - 1);
    struct cluster_write w[FRESH_RUN_MAX];
    size_t bytes;
    uint64_t host;

    *done = 0;
    if (s->has_subclusters || s->has_data_file) {
        return 0;
    }
    int k = fresh_run(img, count, offset, w, &bytes);
    if (k <= 0) {
        return k;
    }
    int ret = qcow2_alloc_clusters(img, (uint64_t)k, &host);
    if (ret < 0) {
        return ret;
    }
    const bool is_unlocked = s->nb_flush_waiters == 0 &&
                             s->nb_alloc_inflight < QCOW2_MAX_ALLOC_INFLIGHT;
    if (is_unlocked) {
        s->alloc_inflight[s->nb_alloc_inflight++] =
            (struct qcow2_alloc_inflight){cstart, cstart + (uint64_t)k * cs};
        s->nb_inflight++;
        pthread_mutex_unlock(&s->lock);
    }
    ret = fresh_write_data(s, buf, bytes, offset, (size_t)k, host);
    if (is_unlocked) {
        pthread_mutex_lock(&s->lock);
    }
    s->is_unsynced = true;
    for (int i = 0; i < k && ret == 0; i++) {
        struct cluster_write now;
        ret = cw_lookup(img, cstart + (uint64_t)i * cs, (size_t)cs, &now);
        if (ret == 0) {
            now.host = host + (uint64_t)i * cs;
            now.w_start = 0;
            now.w_end = cs;
            ret = cw_update_entry(img, &now);
        }
    }
    if (is_unlocked) {
        for (unsigned i = 0; i < s->nb_alloc_inflight; i++) {
            if (s->alloc_inflight[i].start == cstart) {
                s->alloc_inflight[i] =
                    s->alloc_inflight[--s->nb_alloc_inflight];
                break;
            }
        }
        s->nb_inflight--;
        pthread_cond_broadcast(&s->inflight_done);
    }
    *done = bytes;
    return ret;
}

int qcow2_pwrite(struct vimg_image *img, const void *buf, size_t count,
                 uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    const uint8_t *p = buf;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_check_writable(img);
    if (ret == 0) {
        ret = qcow2_dirty_note_locked(img, offset, count);
    }
    while (ret == 0 && count > 0) {
        const uint64_t room = s->cluster_size - (offset & (s->cluster_size - 1));
        size_t n = (size_t)VIMG_MIN((uint64_t)count, room);
        struct qcow2_mapping m;
        ret = s->nb_flush_waiters ? 1
                                  : qcow2_get_mapping_locked(img, offset, n, &m);
        if (ret == 0 && m.type == QCOW2_SC_NORMAL && m.is_copied &&
            m.length == n) {
            /* in place: no metadata changes, no lock during the I/O */
            s->nb_inflight++;
            pthread_mutex_unlock(&s->lock);
            ret = vimg_io_pwrite(s->data_io, p, n, m.host_offset);
            pthread_mutex_lock(&s->lock);
            s->is_unsynced = true;
            if (--s->nb_inflight == 0) {
                pthread_cond_broadcast(&s->inflight_done);
            }
        } else if (ret >= 0) {
            size_t done = 0;
            ret = qcow2_lazy_mark_dirty(img);
            if (ret == 0 && alloc_inflight_overlaps(s, offset, n)) {
                /* another write is filling this cluster: wait, look again */
                pthread_cond_wait(&s->inflight_done, &s->lock);
                continue;
            }
            if (ret == 0) {
                ret = write_fresh_clusters(img, p, count, offset, &done);
            }
            if (ret == 0 && done == 0) {
                ret = write_in_cluster(img, p, n, offset);
            }
            n = VIMG_MAX(n, done);
        }
        p += n;
        offset += n;
        count -= n;
    }
    if (ret == -EIO && strstr(vimg_last_error(), "corrupt")) {
        s->is_broken = true;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* How a range is zeroed: the caller's flags and whether a backing file
 * could show through an unallocated cluster. */
struct zero_req {
    bool is_unmap, is_discard, has_backing;
};

/* The new entry of an extended L2 cluster W whose subclusters [in, in+n)
 * become zero (or unallocated).  False: write zero data instead. */
static bool zero_subclusters(const struct qcow2_state *s,
                             const struct cluster_write *w,
                             const struct zero_req *z, uint64_t *new_entry,
                             uint64_t *new_bitmap, bool *is_released)
{
    const uint64_t unit = s->cluster_size / QCOW2_SUBCLUSTERS;

    if (w->is_compressed && w->n != s->cluster_size) {
        return false;
    }
    uint32_t mask = 0;
    for (uint64_t k = w->in / unit; k < (w->in + w->n) / unit; k++) {
        mask |= 1u << k;
    }
    const uint32_t alloc =
        w->is_compressed ? 0 : (uint32_t)w->bitmap & ~mask;
    uint32_t zero = w->is_compressed ? 0 : (uint32_t)(w->bitmap >> 32);
    if (z->is_discard && !z->has_backing) {
        zero &= ~mask; /* unallocated reads as zeroes */
    } else {
        zero |= mask;
    }
    *new_entry = w->is_compressed ? 0 : w->entry;
    *is_released = w->is_compressed;
    if (alloc == 0 && w->has_host && (z->is_unmap || z->is_discard) &&
        !s->has_data_file) {
        /* no allocated subcluster left: give the host cluster back */
        *new_entry = 0;
        *is_released = true;
    }
    *new_bitmap = (uint64_t)zero << 32 | alloc;
    return true;
}

/* The new entry of a plain L2 cluster W that becomes zero (or
 * unallocated) as a whole.  False: write zero data instead. */
static bool zero_cluster(const struct qcow2_state *s,
                         const struct cluster_write *w,
                         const struct zero_req *z, uint64_t *new_entry,
                         bool *is_released)
{
    *is_released = true;
    if (w->n != s->cluster_size) {
        return false;
    } else if (z->is_discard && !z->has_backing) {
        *new_entry = 0;
    } else if (s->h.version < 3) {
        *new_entry = 0; /* v2 without backing: unallocated reads zeroes */
    } else if (w->has_host && w->is_copied && !z->is_unmap) {
        *new_entry = w->entry | QCOW2_OFLAG_ZERO; /* keep preallocation */
        *is_released = false;
    } else {
        *new_entry = QCOW2_OFLAG_ZERO;
    }
    return true;
}

/* Zero (or, IS_DISCARD, drop) whole cluster or whole subclusters of
 * [OFFSET, OFFSET+N) in one guest cluster, writing zero data where the
 * format cannot record zeroes. */
int qcow2_zero_in_cluster(struct vimg_image *img, size_t n, uint64_t offset,
                          bool is_unmap, bool is_discard)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t in = offset & (cs - 1);
    const struct zero_req z = {is_unmap, is_discard,
                               img->backing_name != NULL};
    const uint64_t unit = s->has_subclusters ? cs / QCOW2_SUBCLUSTERS : cs;

    /* partial units, raw data files and v2 images with a backing file
     * take zero data */
    if ((in % unit) || (n % unit) || s->is_data_file_raw ||
        (s->h.version < 3 && z.has_backing)) {
        return write_in_cluster(img, NULL, n, offset);
    }
    /* nothing to do where it already reads as zeroes by itself */
    struct qcow2_mapping m;
    int ret = qcow2_get_mapping_locked(img, offset, n, &m);
    if (ret < 0) {
        return ret;
    }
    /* (an unallocated range without a backing file reads as zeroes too,
     * but writing zeroes records them, as qemu does: a backing file given
     * later, by rebase, must not show through) */
    if (m.length == n && (m.type == QCOW2_SC_ZERO_PLAIN ||
                          (m.type == QCOW2_SC_UNALLOCATED && !z.has_backing &&
                           is_discard))) {
        return 0;
    }
    struct cluster_write w;
    ret = cw_lookup(img, offset, n, &w);
    if (ret < 0) {
        return ret;
    }
    uint64_t new_entry = 0, new_bitmap = 0;
    bool is_released = false;
    const bool is_recorded =
        s->has_subclusters
            ? zero_subclusters(s, &w, &z, &new_entry, &new_bitmap,
                               &is_released)
            : zero_cluster(s, &w, &z, &new_entry, &is_released);
    if (!is_recorded) {
        return write_in_cluster(img, NULL, n, offset);
    }
    ret = qcow2_l2_entry(img, w.l2_off, w.index, &new_entry, &new_bitmap,
                         true);
    if (ret == 0 && is_released && !s->has_data_file) {
        ret = qcow2_release_entry(img, w.entry);
    }
    return ret;
}

static int zero_range(struct vimg_image *img, uint64_t offset,
                      uint64_t count, bool is_unmap, bool is_discard)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_begin_change(img);
    if (ret == 0) {
        ret = qcow2_dirty_note_locked(img, offset, count);
    }
    while (ret == 0 && count > 0) {
        const uint64_t room = s->cluster_size - (offset & (s->cluster_size - 1));
        const size_t n = (size_t)VIMG_MIN(count, room);
        wait_alloc_inflight(s, offset, n);
        ret = qcow2_zero_in_cluster(img, n, offset, is_unmap, is_discard);
        offset += n;
        count -= n;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_write_zeroes(struct vimg_image *img, uint64_t offset,
                       uint64_t count, unsigned flags)
{
    return zero_range(img, offset, count, flags & VIMG_ZERO_MAY_UNMAP, false);
}

int qcow2_discard(struct vimg_image *img, uint64_t offset, uint64_t count)
{
    return zero_range(img, offset, count, true, true);
}

uint32_t qcow2_cluster_size(struct vimg_image *img)
{
    return (uint32_t)((struct qcow2_state *)img->priv)->cluster_size;
}

int qcow2_compress_cluster(struct vimg_image *img, const void *data,
                           size_t len, void *out, size_t out_cap)
{
    struct qcow2_state *s = img->priv;
    const size_t cs = (size_t)s->cluster_size;
    const uint8_t *in = data;
    uint8_t *padded = NULL;

    if (len < cs) {
        /* the last cluster of an odd-sized disk: zero padding */
        padded = calloc(1, cs);
        if (!padded) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        memcpy(padded, data, len);
        in = padded;
    }
    /* worth it only if it saves at least a byte of the cluster */
    const size_t cap = VIMG_MIN(out_cap, cs - 1);
    const bool is_zstd = s->h.compression_type == QCOW2_COMPRESSION_ZSTD;
    const int level = img->compression_level;
    if (level < 0 ||
        level > (is_zstd ? VIMG_ZSTD_LEVEL_MAX : VIMG_DEFLATE_LEVEL_MAX)) {
        free(padded);
        return vimg_error(-EINVAL, "%s: compression level %d is out of range",
                          img->filename, level);
    }
    int ret = is_zstd ? vimg_zstd_compress(in, cs, out, cap, level)
                      : vimg_deflate_raw(in, cs, out, cap, level);
    free(padded);
    return ret;
}

int qcow2_pwrite_compressed(struct vimg_image *img, const void *data,
                            size_t len, uint64_t offset)
{
    struct qcow2_state *s = img->priv;
    int ret = 0;

    if (s->has_data_file) {
        return vimg_error(-ENOTSUP, "%s: compressed clusters cannot live in "
                                    "an external data file",
                          img->filename);
    }
    pthread_mutex_lock(&s->lock);
    ret = qcow2_begin_change(img);
    if (ret == 0) {
        /* LEN is the compressed size: the whole guest cluster changes */
        ret = qcow2_dirty_note_locked(img, offset, s->cluster_size);
    }
    wait_alloc_inflight(s, offset, s->cluster_size);
    const uint64_t cluster_index = offset >> s->cluster_bits;
    const uint64_t l1_index = cluster_index >> s->l2_bits;
    const size_t i = (size_t)(cluster_index & ((1ull << s->l2_bits) - 1));
    uint64_t l2_off, entry, bitmap, host = 0;
    if (ret == 0) {
        ret = qcow2_l2_for_write(img, l1_index, &l2_off);
    }
    if (ret == 0) {
        ret = qcow2_l2_entry(img, l2_off, i, &entry, &bitmap, false);
    }
    if (ret == 0) {
        ret = qcow2_alloc_bytes(img, len, &host);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(img->io, data, len, host);
        s->is_unsynced = true;
    }
    if (ret == 0) {
        /* descriptor: offset, then the number of extra 512-byte sectors */
        const uint64_t sectors = (host + len - 1) / 512 - host / 512;
        uint64_t new_entry = QCOW2_OFLAG_COMPRESSED | host |
                             (sectors << s->csize_shift);
        uint64_t new_bitmap = 0;
        ret = qcow2_l2_entry(img, l2_off, i, &new_entry, &new_bitmap, true);
        if (ret == 0) {
            ret = qcow2_release_entry(img, entry); /* whatever was there */
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}
