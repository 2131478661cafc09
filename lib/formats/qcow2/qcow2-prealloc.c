/* SPDX-License-Identifier: MIT */
/*
 * qcow2-prealloc.c: preallocation of the area a resize adds, as
 * `qemu-img resize --preallocation=metadata|falloc|full` lays it out.
 *
 * metadata: every new guest cluster gets a host cluster from the normal
 *   allocator, L2 table first and then the run of data clusters it maps,
 *   table by table; the data is not written (the file grows sparse).
 * falloc, full: the refcount structures for the whole new area are made
 *   first, after the last cluster in use (a new refcount table, written
 *   behind any new refcount blocks; the old table is freed), the data
 *   clusters follow them as one contiguous run, the file is extended over
 *   it with fallocate or with zeroes, and only then are the L2 tables
 *   allocated and filled.  The guest cluster holding the old end is
 *   moved into the run too (its head is copied).
 * With an external data file the host offset is the guest offset and the
 *   data file is extended (sparse, fallocated or zeroed).
 *
 * Durability (DESIGN.md): data and refcounts are synced before any L2
 * table that points at them is written; new L2 tables are written whole,
 * straight to the file, in batches with one sync per batch, so a large
 * resize costs a few syncs per batch instead of one per table.  The L1
 * table is written by the flush at the end.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* New L2 tables planned before one sync, then written. */
#define BATCH_TABLES 512

int qcow2_prealloc_parse(const char *name, enum qcow2_prealloc *out)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};

    if (!name) {
        *out = QCOW2_PREALLOC_OFF;
        return 0;
    }
    for (unsigned i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum qcow2_prealloc)i;
            return 0;
        }
    }
    return vimg_error(-EINVAL, "Invalid preallocation mode '%s'", name);
}

int qcow2_prealloc_is_zero_locked(struct vimg_image *img, uint64_t offset,
                                  uint64_t len)
{
    assert(len <= ((struct qcow2_state *)img->priv)->cluster_size);
    uint8_t *buf = malloc((size_t)len);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = qcow2_read_range(img, buf, (size_t)len, offset, true);
    if (ret == 0) {
        ret = 1;
        for (uint64_t i = 0; i < len && ret == 1; i++) {
            ret = buf[i] == 0;
        }
    }
    free(buf);
    return ret;
}

/* One run of guest clusters mapped to consecutive host clusters, all in
 * the L2 table of L1 entry L1_INDEX. */
struct run {
    uint64_t l1_index;
    uint64_t l2_offset;   /* 0: a new table, at new_l2 */
    uint64_t new_l2;
    uint64_t first_index; /* first L2 entry */
    uint64_t count;
    uint64_t host;        /* host offset of the first cluster */
};

struct plan {
    struct vimg_image *img;
    enum qcow2_prealloc mode;
    uint64_t old_size, new_size;
    uint64_t unit;          /* cluster, or subcluster with extended L2 */
    bool is_zero_flagged;   /* new clusters read as zeroes over a backing */
    uint64_t data_base;     /* falloc/full: host of the first new cluster */
    uint64_t first_cluster; /* guest cluster of the first new mapping */
    struct run *runs;
    size_t nb_runs, cap_runs;
    size_t nb_linked;       /* runs of this batch already mapped */
    uint8_t *table;         /* one L2 table being built */
};

static int add_run(struct plan *p, const struct run *r)
{
    if (p->nb_runs == p->cap_runs) {
        const size_t cap = p->cap_runs ? p->cap_runs * 2 : 64;
        struct run *n = realloc(p->runs, cap * sizeof(*n));
        if (!n) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        p->runs = n;
        p->cap_runs = cap;
    }
    p->runs[p->nb_runs++] = *r;
    return 0;
}

/* Does the guest cluster at ENTRY keep its host cluster?  Only a plain
 * data cluster that is ours alone (qemu's "copied" case). */
static bool is_kept(const struct qcow2_state *s, uint64_t entry)
{
    struct qcow2_l2_desc d;

    qcow2_l2_decode(s, entry, &d);
    return d.has_host && d.is_copied && !d.is_zero;
}

/* qcow2_alloc_clusters(), then the next search starts after the run, as
 * in qemu, which does not go back to a hole too small for an earlier
 * request: the clusters land where qemu-img puts them. */
static int alloc_like_qemu(struct vimg_image *img, uint64_t count,
                           uint64_t *host_out)
{
    struct qcow2_state *s = img->priv;
    int ret = qcow2_alloc_clusters(img, count, host_out);

    if (ret == 0) {
        s->free_cluster_index = (*host_out >> s->cluster_bits) + count;
    }
    return ret;
}

/*
 * Zero the part of host range [HOST, HOST + LEN) of IO that lies inside
 * the file: clusters freed earlier (by a shrink, a discard, a snapshot
 * delete) keep their old bytes there, and a preallocated cluster must
 * read as zeroes, not as stale data (qemu-img 7.2 leaves the stale data).
 * IS_UNMAP keeps metadata preallocation sparse.
 */
static int zero_reused(struct vimg_io *io, uint64_t host, uint64_t len,
                       bool is_unmap)
{
    uint64_t cur;
    int ret = vimg_io_get_size(io, &cur);

    if (ret < 0 || host >= cur) {
        return ret;
    }
    return vimg_io_zero(io, host, VIMG_MIN(len, cur - host), is_unmap);
}

/* Host offset for COUNT new clusters from guest cluster GUEST. */
static int alloc_data(struct plan *p, uint64_t guest, uint64_t count,
                      uint64_t *host_out)
{
    struct qcow2_state *s = p->img->priv;

    if (s->has_data_file) {
        *host_out = guest << s->cluster_bits;
        return 0;
    }
    if (p->mode != QCOW2_PREALLOC_METADATA) {
        *host_out = p->data_base +
                    ((guest - p->first_cluster) << s->cluster_bits);
        return 0;
    }
    int ret = alloc_like_qemu(p->img, count, host_out);
    if (ret == 0) {
        ret = zero_reused(p->img->io, *host_out, count << s->cluster_bits,
                          true);
    }
    return ret;
}

/*
 * Plan the clusters of one L2 table: guest clusters [FIRST, LAST] of L1
 * entry L1_INDEX.  An existing table is changed through the cache; a new
 * one is allocated here (before its data, the order qemu uses).
 */
static int plan_table(struct plan *p, uint64_t l1_index, uint64_t first,
                      uint64_t last)
{
    struct vimg_image *img = p->img;
    struct qcow2_state *s = img->priv;
    const uint64_t per_table = 1ull << s->l2_bits;
    const uint64_t base = l1_index * per_table;
    struct run r = {.l1_index = l1_index};
    int ret = 0;

    if (s->l1[l1_index] & QCOW2_L1E_OFFSET_MASK) {
        ret = qcow2_l2_for_write(img, l1_index, &r.l2_offset);
    } else {
        ret = alloc_like_qemu(img, 1, &r.new_l2);
        if (ret == 0) {
            ret = qcow2_meta_add(img, r.new_l2 >> s->cluster_bits);
        }
    }
    if (ret < 0) {
        return ret;
    }
    /* runs of entries that need a host cluster */
    for (uint64_t c = first; c <= last && ret == 0;) {
        bool needs = true;
        if (r.l2_offset && (p->mode == QCOW2_PREALLOC_METADATA ||
                            s->has_data_file || c != p->first_cluster)) {
            uint64_t entry, bitmap;
            ret = qcow2_l2_entry(img, r.l2_offset, (size_t)(c - base),
                                 &entry, &bitmap, false);
            needs = ret == 0 && !is_kept(s, entry);
        }
        if (!needs) {
            c++;
            continue;
        }
        uint64_t end = c + 1;
        while (end <= last && ret == 0) {
            bool next = true;
            if (r.l2_offset) {
                uint64_t entry, bitmap;
                ret = qcow2_l2_entry(img, r.l2_offset, (size_t)(end - base),
                                     &entry, &bitmap, false);
                next = !is_kept(s, entry);
            }
            if (!next) {
                break;
            }
            end++;
        }
        if (ret == 0) {
            r.first_index = c - base;
            r.count = end - c;
            ret = alloc_data(p, c, r.count, &r.host);
        }
        if (ret == 0) {
            ret = add_run(p, &r);
        }
        c = end;
    }
    return ret;
}

/*
 * Data the new clusters need before they are mapped: the guest content
 * before the old end in its cluster (qemu's copy-on-write head) and, for
 * metadata preallocation or a data file, zeroes after the new end in its
 * unit (qemu's copy-on-write tail, which also sets where the file ends:
 * a data file already that long is not fallocated further, as in qemu).
 */
static int write_edges(struct plan *p, const struct run *r)
{
    struct vimg_image *img = p->img;
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t per_table = 1ull << s->l2_bits;
    const uint64_t guest0 = (r->l1_index * per_table + r->first_index) * cs;
    const uint64_t guest_end = guest0 + r->count * cs;
    int ret = 0;

    if (p->old_size > guest0 && p->old_size < guest0 + cs) {
        const size_t len = (size_t)(p->old_size - guest0);
        uint8_t *buf = malloc(len);
        if (!buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = qcow2_read_range(img, buf, len, guest0, true);
        if (ret == 0) {
            ret = vimg_io_pwrite(s->data_io, buf, len, r->host);
        }
        free(buf);
    }
    const uint64_t tail_end = VIMG_DIV_ROUND_UP(p->new_size, p->unit) *
                              p->unit;
    const bool has_tail =
        p->mode == QCOW2_PREALLOC_METADATA || s->has_data_file;
    if (ret == 0 && has_tail && tail_end > p->new_size &&
        p->new_size > guest0 && p->new_size < guest_end) {
        const size_t len = (size_t)(tail_end - p->new_size);
        uint8_t *zero = calloc(1, len);
        if (!zero) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ret = vimg_io_pwrite(s->data_io, zero, len,
                             r->host + (p->new_size - guest0));
        free(zero);
    }
    return ret;
}

/* The L2 entry (and bitmap) for guest cluster GUEST (an offset) on its new
 * host cluster HOST, replacing OLD. */
static void new_entry(const struct plan *p, uint64_t guest, uint64_t host,
                      uint64_t old, uint64_t old_bitmap, uint64_t *entry,
                      uint64_t *bitmap)
{
    const struct qcow2_state *s = p->img->priv;
    const bool has_head = guest < p->old_size;

    *entry = host | QCOW2_OFLAG_COPIED;
    *bitmap = 0;
    if (!s->has_subclusters) {
        if (p->is_zero_flagged && !has_head) {
            *entry |= QCOW2_OFLAG_ZERO;
        }
        return;
    }
    /* qemu leaves the bitmap alone: subclusters before the old end stay
     * as they were (their data was copied), new ones unallocated */
    const uint64_t sc = p->unit;
    const unsigned head_sc =
        has_head ? (unsigned)VIMG_DIV_ROUND_UP(p->old_size - guest, sc) : 0;
    const uint32_t head_mask =
        head_sc >= 32 ? 0xffffffffu : (uint32_t)((1ull << head_sc) - 1);
    if (old & QCOW2_OFLAG_COMPRESSED) {
        *bitmap = head_mask; /* decompressed into the new cluster */
    } else {
        *bitmap = old_bitmap & ((uint64_t)head_mask << 32 | head_mask);
    }
    if (p->is_zero_flagged) {
        *bitmap |= (uint64_t)~head_mask << 32;
    } else if (p->mode != QCOW2_PREALLOC_METADATA && p->img->backing) {
        *bitmap |= ~head_mask; /* reserved zeroes, not backing data */
    }
}

/* Map the runs planned (their data and refcounts are durable). */
static int link_runs(struct plan *p)
{
    struct vimg_image *img = p->img;
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const size_t eb = s->l2_entry_bytes;
    const uint64_t per_table = 1ull << s->l2_bits;
    int ret = 0;

    for (size_t k = 0; k < p->nb_runs && ret == 0; k++) {
        const struct run *r = &p->runs[k];
        if (r->l2_offset) {
            /* from here on a failure may have mapped some of it */
            p->nb_linked = k + 1;
            for (uint64_t i = 0; i < r->count && ret == 0; i++) {
                const size_t idx = (size_t)(r->first_index + i);
                uint64_t old, old_bitmap, e, b;
                ret = qcow2_l2_entry(img, r->l2_offset, idx, &old,
                                     &old_bitmap, false);
                if (ret < 0) {
                    break;
                }
                const uint64_t host = r->host + i * cs;
                const uint64_t guest =
                    (r->l1_index * per_table + idx) * cs;
                new_entry(p, guest, s->has_data_file && host == 0 ? 0 : host,
                          old, old_bitmap, &e, &b);
                ret = qcow2_l2_entry(img, r->l2_offset, idx, &e, &b, true);
                if (ret == 0 && !s->has_data_file) {
                    ret = qcow2_release_entry(img, old);
                }
            }
            continue;
        }
        /* a new table: its runs are consecutive in the plan */
        memset(p->table, 0, (size_t)cs);
        size_t j = k;
        for (; j < p->nb_runs && p->runs[j].l2_offset == 0 &&
               p->runs[j].new_l2 == r->new_l2;
             j++) {
            const struct run *q = &p->runs[j];
            for (uint64_t i = 0; i < q->count; i++) {
                const uint64_t host = q->host + i * cs;
                uint64_t e, b;
                const uint64_t guest =
                    (q->l1_index * per_table + q->first_index + i) * cs;
                new_entry(p, guest, s->has_data_file && host == 0 ? 0 : host,
                          0, 0, &e, &b);
                uint8_t *at = p->table + (q->first_index + i) * eb;
                store_be64(at, e);
                if (s->has_subclusters) {
                    store_be64(at + 8, b);
                }
            }
        }
        ret = qcow2_write_meta(img, r->new_l2, p->table, (size_t)cs);
        if (ret < 0) {
            break;
        }
        s->l1[r->l1_index] = r->new_l2 | QCOW2_OFLAG_COPIED;
        s->is_l1_dirty = true;
        k = j - 1;
        p->nb_linked = j;
    }
    if (ret == 0) {
        p->nb_runs = 0;
        p->nb_linked = 0;
    }
    return ret;
}

/*
 * After a failure: the clusters planned for runs not mapped yet (their
 * data and their new L2 tables) are given back, so nothing leaks.  A run
 * in an existing table counts as mapped once its update has begun (a
 * leak at worst, never a cluster in use with a refcount of zero).
 */
static void unplan(struct plan *p)
{
    struct qcow2_state *s = p->img->priv;

    for (size_t k = p->nb_linked; k < p->nb_runs; k++) {
        const struct run *r = &p->runs[k];
        if (!s->has_data_file) {
            for (uint64_t i = 0; i < r->count; i++) {
                qcow2_set_refcount(p->img, (r->host >> s->cluster_bits) + i,
                                   0);
            }
        }
        if (!r->l2_offset &&
            (s->l1[r->l1_index] & QCOW2_L1E_OFFSET_MASK) != r->new_l2) {
            qcow2_set_refcount(p->img, r->new_l2 >> s->cluster_bits, 0);
        }
    }
    p->nb_runs = 0;
    p->nb_linked = 0;
}

/*
 * falloc/full: refcount blocks and a new refcount table for everything up
 * to START_CLUSTER + ADD, placed at START_CLUSTER (qemu's
 * qcow2_refcount_area() layout: new blocks, then the table).  Returns in
 * *end_out the first cluster after them.
 */
static int refcount_area(struct vimg_image *img, uint64_t start,
                         uint64_t add, uint64_t *end_out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t per_tc = cs / 8;
    const uint64_t rb = s->rb_entries;

    /* blocks and table counted in what they describe */
    uint64_t blocks, table;
    qcow2_refcount_layout(start + add, cs, s->h.refcount_order, &blocks,
                          &table);

    uint64_t entries = VIMG_DIV_ROUND_UP(blocks, per_tc) * per_tc;
    /* never drop a block still referenced (qemu assumes none) */
    uint64_t used = s->reftable_entries;
    while (used && !(s->reftable[used - 1] & QCOW2_REFT_OFFSET_MASK)) {
        used--;
    }
    if (used > entries) {
        entries = VIMG_DIV_ROUND_UP(used, per_tc) * per_tc;
    }
    const uint64_t table_clusters = entries / per_tc;
    uint64_t *t;
    int ret = qcow2_reftable_copy(img, entries, &t);
    if (ret < 0) {
        return ret;
    }
    uint64_t next = start;
    for (uint64_t i = start / rb; i < blocks; i++) {
        if (!(t[i] & QCOW2_REFT_OFFSET_MASK)) {
            t[i] = next++ * cs;
        }
    }
    const uint64_t table_start = next;
    const uint64_t end = table_start + table_clusters;
    const uint64_t old_offset = s->h.refcount_table_offset;
    const uint64_t old_clusters = s->h.refcount_table_clusters;
    const uint64_t old_entries = s->reftable_entries;
    const uint64_t old_end = s->end_cluster;
    uint64_t *old_table = s->reftable;

    s->reftable = t;
    s->reftable_entries = entries;
    s->is_reftable_dirty = true;
    s->end_cluster = VIMG_MAX(s->end_cluster, end);
    for (uint64_t c = start; c < table_start && ret == 0; c++) {
        ret = qcow2_new_refblock(img, c);
    }
    for (uint64_t c = start; c < end && ret == 0; c++) {
        ret = qcow2_set_refcount(img, c, 1);
    }
    s->h.refcount_table_offset = table_start * cs;
    s->h.refcount_table_clusters = (uint32_t)table_clusters;
    /* blocks and table durable, then the header points at the table */
    if (ret == 0) {
        ret = qcow2_sync_refcounts(img);
    }
    bool is_switched = false;
    if (ret == 0) {
        ret = qcow2_write_reftable_pointer(img);
        is_switched = ret == 0;
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (is_switched) {
        free(old_table);
        const int err = qcow2_free_clusters_later(img, old_offset,
                                                  old_clusters);
        ret = ret < 0 ? ret : err;
    } else {
        /* the header still names the old table: go back to it, with the
         * refcounts of the area at zero again, so nothing leaks */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vimg_last_error());
        for (uint64_t c = start; c < end; c++) {
            uint64_t rc;
            if (c / rb < old_entries &&
                (old_table[c / rb] & QCOW2_REFT_OFFSET_MASK) &&
                qcow2_get_refcount_locked(img, c, &rc) == 0 && rc) {
                qcow2_set_refcount(img, c, 0);
            }
        }
        free(s->reftable);
        s->reftable = old_table;
        s->reftable_entries = old_entries;
        s->h.refcount_table_offset = old_offset;
        s->h.refcount_table_clusters = (uint32_t)old_clusters;
        s->is_reftable_dirty = false;
        s->end_cluster = old_end;
        vimg_error(ret, "%s", msg);
    }
    *end_out = end;
    return ret;
}

/* Make IO at least END bytes long the way MODE asks. */
static int extend_file(struct vimg_io *io, enum qcow2_prealloc mode,
                       uint64_t end)
{
    uint64_t cur;
    int ret = vimg_io_get_size(io, &cur);

    if (ret < 0 || cur >= end) {
        return ret;
    }
    switch (mode) {
    case QCOW2_PREALLOC_FULL:
        return vimg_io_zero(io, cur, end - cur, false);
    case QCOW2_PREALLOC_FALLOC:
        return vimg_io_fallocate(io, cur, end - cur);
    default:
        return vimg_io_truncate(io, end);
    }
}

/* falloc/full in the image file: refcounts, then the data run. */
static int reserve_data(struct plan *p, uint64_t nb_data)
{
    struct vimg_image *img = p->img;
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;

    /* the last cluster in use; the area starts after it */
    uint64_t last = s->end_cluster;
    while (last > 0) {
        uint64_t rc;
        int ret = qcow2_get_refcount_locked(img, last - 1, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc) {
            break;
        }
        last--;
    }
    const uint64_t per_table = cs / s->l2_entry_bytes;
    const uint64_t nb_l2 = VIMG_DIV_ROUND_UP(nb_data, per_table) + 1;
    uint64_t data = 0, file_before = 0;
    int ret = refcount_area(img, last, nb_data + nb_l2, &data);
    if (ret == 0) {
        ret = vimg_io_get_size(img->io, &file_before);
    }
    if (ret < 0) {
        return ret;
    }
    const uint64_t end_cluster = s->end_cluster, file_size = s->file_size;
    uint64_t done = data;
    for (; done < data + nb_data && ret == 0; done++) {
        ret = qcow2_set_refcount(img, done, 1);
    }
    s->end_cluster = VIMG_MAX(s->end_cluster, data + nb_data);
    s->file_size = VIMG_MAX(s->file_size, (data + nb_data) * cs);
    p->data_base = data * cs;
    if (ret == 0) {
        ret = zero_reused(img->io, p->data_base, nb_data * cs, false);
    }
    if (ret == 0) {
        ret = extend_file(img->io, p->mode, (data + nb_data) * cs);
    }
    if (ret < 0) {
        /* all or nothing: no room for the data (a full file system) gives
         * the clusters and the space back; the image keeps its old size
         * and checks clean */
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vimg_last_error());
        vimg_io_truncate(img->io, VIMG_MAX(file_before, data * cs));
        for (uint64_t c = data; c < done; c++) {
            qcow2_set_refcount(img, c, 0);
        }
        s->end_cluster = end_cluster;
        s->file_size = file_size;
        if (s->free_cluster_index > data) {
            s->free_cluster_index = data;
        }
        return vimg_error(ret, "%s", msg);
    }
    /* refcounts and data durable; the old table's clusters are free for
     * the L2 tables (qemu frees it at once) */
    return ret == 0 ? qcow2_flush_locked(img) : ret;
}

int qcow2_prealloc_grow_locked(struct vimg_image *img, uint64_t old_size,
                               uint64_t new_size, enum qcow2_prealloc mode)
{
    struct qcow2_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const uint64_t per_table = 1ull << s->l2_bits;
    struct plan p = {
        .img = img,
        .mode = mode,
        .old_size = old_size,
        .new_size = new_size,
        .unit = s->has_subclusters ? cs / QCOW2_SUBCLUSTERS : cs,
    };
    s->is_unsynced = true; /* data goes to the files below write_meta() */

    assert(mode != QCOW2_PREALLOC_OFF && new_size > old_size);
    /* over a backing file that reaches into the new area, qemu zeroes it
     * after metadata preallocation (falloc/full reserve zeroes) */
    p.is_zero_flagged = mode == QCOW2_PREALLOC_METADATA && img->backing &&
                        img->backing->size > old_size;
    p.first_cluster = old_size / cs;
    const uint64_t last_cluster = (new_size - 1) / cs;
    p.table = malloc((size_t)cs);
    if (!p.table) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    /* frees from the L1 growth first, as qemu frees at once */
    int ret = qcow2_flush_locked(img);
    if (ret == 0 && mode != QCOW2_PREALLOC_METADATA && !s->has_data_file) {
        ret = reserve_data(&p, last_cluster - p.first_cluster + 1);
    }
    uint64_t l1i = p.first_cluster / per_table;
    const uint64_t last_l1 = last_cluster / per_table;
    while (ret == 0 && l1i <= last_l1) {
        for (unsigned n = 0; n < BATCH_TABLES && l1i <= last_l1 && ret == 0;
             n++, l1i++) {
            const uint64_t first = VIMG_MAX(p.first_cluster, l1i * per_table);
            const uint64_t last = VIMG_MIN(last_cluster,
                                           (l1i + 1) * per_table - 1);
            ret = plan_table(&p, l1i, first, last);
        }
        for (size_t k = 0; k < p.nb_runs && ret == 0; k++) {
            ret = write_edges(&p, &p.runs[k]);
        }
        if (ret == 0) {
            ret = qcow2_sync_refcounts(img);
        }
        if (ret == 0) {
            ret = link_runs(&p);
        }
    }
    if (ret < 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", vimg_last_error());
        unplan(&p);
        vimg_error(ret, "%s", msg);
    }
    /* the file (or data file) reaches the end of the last new cluster's
     * unit, as qemu truncates it there */
    if (ret == 0 && (mode == QCOW2_PREALLOC_METADATA || s->has_data_file)) {
        struct qcow2_mapping m;
        ret = qcow2_get_mapping_locked(img, new_size - 1, 1, &m);
        if (ret == 0 && (m.type == QCOW2_SC_NORMAL ||
                         m.type == QCOW2_SC_UNALLOCATED_ALLOC ||
                         m.type == QCOW2_SC_ZERO_ALLOC)) {
            const uint64_t in_unit = (new_size - 1) % p.unit;
            const uint64_t end = m.host_offset - in_unit + p.unit;
            ret = extend_file(s->data_io, mode, end);
            if (ret == 0 && s->has_data_file) {
                s->data_size = VIMG_MAX(s->data_size, end);
            }
        }
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    free(p.runs);
    free(p.table);
    return ret;
}
