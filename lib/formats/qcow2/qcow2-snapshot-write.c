/* SPDX-License-Identifier: MIT */
/*
 * qcow2-snapshot-write.c: creating, applying and deleting internal
 * snapshots (qcow2.txt, "Snapshots").
 *
 * A snapshot is a copy of the active L1 table plus an entry in the
 * snapshot table.  Every cluster counts one reference per L1 table that
 * reaches it, so taking a snapshot raises the refcount of each L2 table and
 * each host cluster the active L1 reaches, and deleting one lowers them.
 * QCOW_OFLAG_COPIED (refcount exactly one) is then recomputed in the active
 * tables, since the write path trusts it to write in place.
 *
 * Crash safety: references are raised and made durable before anything
 * points at them, the snapshot table is rewritten to new clusters and
 * switched to by one header write, and references are dropped only after
 * nothing points at them any more.  A crash leaks clusters at worst.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"
#include "vimg-internal.h"

/* Bytes of extra data qemu writes in every snapshot entry: large VM state
 * size, disk size, icount */
#define SN_EXTRA_BYTES 24
#define SN_V3_EXTRA_BYTES 16 /* the least a version 3 entry has */

static uint64_t refcount_max(const struct qcow2_state *s)
{
    const unsigned bits = 1u << s->h.refcount_order;
    return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

/* Add one reference to CLUSTER (already allocated). */
static int ref_inc(struct vimg_image *img, uint64_t cluster)
{
    struct qcow2_state *s = img->priv;
    uint64_t rc;
    int ret = qcow2_get_refcount_locked(img, cluster, &rc);

    if (ret < 0) {
        return ret;
    }
    if (rc == 0) {
        return qcow2_corrupt(img, "cluster 0x%llx is in use but its refcount "
                                  "is 0",
                             (unsigned long long)(cluster << s->cluster_bits));
    }
    if (rc >= refcount_max(s)) {
        return vimg_error(-EINVAL, "%s: cluster 0x%llx already has "
                                   "refcount %llu, the most refcount_bits=%u "
                                   "can hold: one more snapshot cannot "
                                   "reference it",
                          img->filename,
                          (unsigned long long)(cluster << s->cluster_bits),
                          (unsigned long long)rc,
                          1u << s->h.refcount_order);
    }
    return qcow2_set_refcount(img, cluster, rc + 1);
}

/* What to do with each reference an L1 table holds */
struct ref_walk {
    int (*fn)(struct vimg_image *img, uint64_t cluster, struct ref_walk *w);
    uint64_t done;  /* references handled so far */
    uint64_t limit; /* stop after this many (UINT64_MAX: all) */
};

static int walk_inc(struct vimg_image *img, uint64_t cluster,
                    struct ref_walk *w)
{
    (void)w;
    return ref_inc(img, cluster);
}

/* Undo walk_inc at once (not at the next sync: nothing points at it) */
static int walk_undo(struct vimg_image *img, uint64_t cluster,
                     struct ref_walk *w)
{
    uint64_t rc;
    int ret = qcow2_get_refcount_locked(img, cluster, &rc);

    (void)w;
    return ret < 0 ? ret : qcow2_set_refcount(img, cluster, rc - 1);
}

static int walk_drop(struct vimg_image *img, uint64_t cluster,
                     struct ref_walk *w)
{
    struct qcow2_state *s = img->priv;

    (void)w;
    return qcow2_free_clusters_later(img, cluster << s->cluster_bits, 1);
}

static int walk_one(struct vimg_image *img, uint64_t cluster, uint64_t n,
                    struct ref_walk *w)
{
    for (uint64_t c = cluster; c < cluster + n; c++) {
        if (w->done == w->limit) {
            return 0;
        }
        int ret = w->fn(img, c, w);
        if (ret < 0) {
            return ret;
        }
        w->done++;
    }
    return 0;
}

static int check_table_offset(struct vimg_image *img, uint64_t off,
                              const char *what, uint64_t index)
{
    struct qcow2_state *s = img->priv;

    if ((off & (s->cluster_size - 1)) || off >= s->file_size) {
        return qcow2_corrupt(img, "%s entry %llu points at an invalid L2 "
                                  "table offset 0x%llx",
                             what, (unsigned long long)index,
                             (unsigned long long)off);
    }
    return 0;
}

/* Hand every reference L1 (N entries) holds to W: each L2 table, after
 * each host cluster its entries use, in a fixed order. */
static int walk_l1(struct vimg_image *img, const uint64_t *l1, uint64_t n,
                   struct ref_walk *w)
{
    struct qcow2_state *s = img->priv;
    const size_t per_table = (size_t)1 << s->l2_bits;
    uint64_t *entries = malloc(per_table * sizeof(uint64_t));
    int ret = 0;

    if (!entries) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < n && ret == 0 && w->done < w->limit; i++) {
        const uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        ret = check_table_offset(img, l2, "L1", i);
        const uint8_t *t;
        if (ret == 0) {
            ret = qcow2_load_l2(img, l2, &t);
        }
        if (ret < 0) {
            break;
        }
        /* copy out: refcount updates may use the cache's slot */
        for (size_t j = 0; j < per_table; j++) {
            entries[j] = load_be64(t + j * s->l2_entry_bytes);
        }
        for (size_t j = 0; j < per_table && ret == 0; j++) {
            uint64_t first, count;
            qcow2_l2_entry_clusters(s, entries[j], &first, &count);
            if (count) {
                ret = walk_one(img, first, count, w);
            }
        }
        if (ret == 0) {
            ret = walk_one(img, l2 >> s->cluster_bits, 1, w);
        }
    }
    free(entries);
    return ret;
}

/* One more reference to everything L1 (N entries) reaches; all or none. */
static int raise_l1_refs(struct vimg_image *img, const uint64_t *l1,
                         uint64_t n)
{
    struct ref_walk inc = {walk_inc, 0, UINT64_MAX};
    int ret = walk_l1(img, l1, n, &inc);

    if (ret < 0) {
        struct ref_walk undo = {walk_undo, 0, inc.done};
        walk_l1(img, l1, n, &undo);
    }
    return ret;
}

/* One reference less to everything L1 (N entries) reaches, at the next
 * sync. */
static int drop_l1_refs(struct vimg_image *img, const uint64_t *l1,
                        uint64_t n)
{
    struct ref_walk drop = {walk_drop, 0, UINT64_MAX};

    return walk_l1(img, l1, n, &drop);
}

/* Set QCOW_OFLAG_COPIED in the active L1 and L2 tables exactly where the
 * refcount is one. */
static int fix_copied(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    const size_t per_table = (size_t)1 << s->l2_bits;
    int ret = 0;

    for (uint32_t i = 0; i < s->h.l1_size && ret == 0; i++) {
        const uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        uint64_t rc;
        ret = qcow2_get_refcount_locked(img, l2 >> s->cluster_bits, &rc);
        if (ret < 0) {
            break;
        }
        const uint64_t want = rc == 1 ? l2 | QCOW2_OFLAG_COPIED : l2;
        if (s->l1[i] != want) {
            s->l1[i] = want;
            s->is_l1_dirty = true;
        }
        for (size_t j = 0; j < per_table && ret == 0; j++) {
            const uint8_t *t;
            ret = qcow2_load_l2(img, l2, &t);
            if (ret < 0) {
                break;
            }
            const uint64_t e = load_be64(t + j * s->l2_entry_bytes);
            const uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            uint64_t next = e & ~QCOW2_OFLAG_COPIED;
            if (!(e & QCOW2_OFLAG_COMPRESSED) && off) {
                if (s->has_data_file) {
                    next |= QCOW2_OFLAG_COPIED; /* no refcounts there */
                } else {
                    ret = qcow2_get_refcount_locked(
                        img, off >> s->cluster_bits, &rc);
                    if (ret == 0 && rc == 1) {
                        next |= QCOW2_OFLAG_COPIED;
                    }
                }
            }
            if (ret == 0 && next != e) {
                /* the refcount lookup may not evict an L2 table, but
                 * fetch the table again rather than rely on it */
                ret = qcow2_load_l2(img, l2, &t);
                if (ret == 0) {
                    store_be64((uint8_t *)t + j * s->l2_entry_bytes, next);
                    qcow2_cache_mark_dirty(s->l2_cache, t);
                }
            }
        }
    }
    return ret;
}

/* Read the L1 table of snapshot SN, decoded. */
int qcow2_read_snapshot_l1(struct vimg_image *img,
                           const struct qcow2_snapshot *sn, uint64_t **out)
{
    struct qcow2_state *s = img->priv;
    const uint64_t bytes = (uint64_t)sn->l1_size * 8;

    *out = NULL;
    if (bytes > QCOW2_MAX_L1_BYTES ||
        (sn->l1_size && ((sn->l1_table_offset & (s->cluster_size - 1)) ||
                         sn->l1_table_offset + bytes > s->file_size))) {
        return qcow2_corrupt(img, "snapshot %s has an invalid L1 table "
                                  "(0x%llx, %u entries)",
                             sn->id, (unsigned long long)sn->l1_table_offset,
                             sn->l1_size);
    }
    uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof(uint64_t));
    if (!l1) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = sn->l1_size ? vimg_io_pread(img->io, l1, (size_t)bytes,
                                          sn->l1_table_offset)
                          : 0;
    for (uint32_t i = 0; ret == 0 && i < sn->l1_size; i++) {
        l1[i] = load_be64((const uint8_t *)&l1[i]);
    }
    if (ret < 0) {
        free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/* Write the L1 table L1 (N entries) to new clusters; *off_out gets where. */
static int write_l1_copy(struct vimg_image *img, const uint64_t *l1,
                         uint64_t n, uint64_t *off_out)
{
    struct qcow2_state *s = img->priv;
    const size_t bytes = (size_t)n * 8;
    uint8_t *buf = malloc(bytes ? bytes : 1);
    int ret = 0;

    *off_out = 0;
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (n) {
        ret = qcow2_alloc_clusters(img,
                                   VIMG_DIV_ROUND_UP(bytes, s->cluster_size),
                                   off_out);
    }
    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        store_be64(buf + i * 8, l1[i]);
    }
    if (ret == 0 && n) {
        ret = qcow2_write_meta(img, *off_out, buf, bytes);
    }
    free(buf);
    return ret;
}

/*
 * Write the snapshot table SN (NB entries) to new clusters and switch the
 * header to it; the old table is freed after the next sync.  On success
 * the state owns SN.
 */
static int switch_snapshot_table(struct vimg_image *img,
                                 struct qcow2_snapshot *sn, size_t nb)
{
    struct qcow2_state *s = img->priv;
    const size_t bytes = qcow2_snapshots_encode(sn, nb, NULL);
    uint8_t *buf = malloc(bytes ? bytes : 1);
    uint64_t off = 0;
    int ret = 0;

    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    qcow2_snapshots_encode(sn, nb, buf);
    if (nb) {
        ret = qcow2_alloc_clusters(img,
                                   VIMG_DIV_ROUND_UP(bytes, s->cluster_size),
                                   &off);
        if (ret == 0) {
            ret = qcow2_write_meta(img, off, buf, bytes);
        }
    }
    free(buf);
    /* the table and what it references are durable before the header
     * points at it */
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret == 0) {
        uint8_t h[12];
        store_be32(h, (uint32_t)nb);
        store_be64(h + 4, off);
        ret = qcow2_write_meta(img, QCOW2_HDR_NB_SNAPSHOTS, h, sizeof(h));
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    if (ret < 0) {
        return ret;
    }
    if (s->nb_snapshots && s->snapshots_size) {
        ret = qcow2_free_clusters_later(
            img, s->h.snapshots_offset,
            VIMG_DIV_ROUND_UP(s->snapshots_size, s->cluster_size));
    }
    s->h.nb_snapshots = (uint32_t)nb;
    s->h.snapshots_offset = off;
    s->snapshots = sn;
    s->nb_snapshots = nb;
    s->snapshots_size = nb ? bytes : 0;
    return ret;
}

/*
 * Raising or dropping a reference and fixing QCOW_OFLAG_COPIED are writes
 * to different clusters, so a crash between them leaves flags that do not
 * match the refcounts.  On version 3 images the dirty bit covers that
 * window: set before the first change, cleared after the last, and an
 * image left dirty gets its refcounts and flags rebuilt on the next
 * read-write open.  (A lazy-refcount image keeps it until it is closed.)
 */
static int set_dirty(struct vimg_image *img, bool is_dirty)
{
    struct qcow2_state *s = img->priv;
    const bool was_dirty = s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY;

    if (s->h.version < 3 || s->is_lazy || was_dirty == is_dirty) {
        return 0;
    }
    if (!is_dirty) {
        return qcow2_header_clear_dirty(img);
    }
    /* everything before the change is durable first */
    int ret = qcow2_flush_locked(img);
    return ret < 0 ? ret : qcow2_header_mark_dirty(img);
}

static int check_snapshots_allowed(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;

    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (s->has_data_file) {
        return vimg_error(-ENOTSUP, "%s: internal snapshots are not "
                                    "supported with an external data file",
                          img->filename);
    }
    return qcow2_begin_change(img);
}

/* The next free numeric snapshot ID, as qemu picks it: one more than the
 * largest. */
static char *new_snapshot_id(const struct qcow2_state *s)
{
    unsigned long long max = 0;
    char buf[32];

    for (size_t i = 0; i < s->nb_snapshots; i++) {
        const unsigned long long id = strtoull(s->snapshots[i].id, NULL, 10);
        max = id > max ? id : max;
    }
    snprintf(buf, sizeof(buf), "%llu", max + 1);
    return strdup(buf);
}

static int snapshot_create_locked(struct vimg_image *img, const char *name,
                                  bool *changed)
{
    struct qcow2_state *s = img->priv;
    uint64_t *l1 = NULL;
    int ret = 0;

    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        ret = vimg_error(-EFBIG, "%s: too many snapshots (at most %d)",
                         img->filename, QCOW2_MAX_SNAPSHOTS);
    }
    if (ret == 0 && strlen(name) > UINT16_MAX) {
        ret = vimg_error(-EINVAL, "snapshot name too long");
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret < 0) {
        return ret;
    }
    /* 1. the copy of the active L1 and one more reference to everything it
     * reaches, durable */
    l1 = calloc(s->h.l1_size ? s->h.l1_size : 1, sizeof(uint64_t));
    if (!l1) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < s->h.l1_size; i++) {
        l1[i] = s->l1[i] & ~QCOW2_OFLAG_COPIED;
    }
    uint64_t l1_off = 0;
    ret = raise_l1_refs(img, l1, s->h.l1_size);
    *changed = ret == 0;
    if (ret == 0) {
        ret = write_l1_copy(img, l1, s->h.l1_size, &l1_off);
    }
    free(l1);
    /* 2. nothing is "copied" (refcount one) any more: in-place writes
     * stop before the snapshot exists */
    if (ret == 0) {
        ret = fix_copied(img);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret < 0) {
        return ret;
    }
    /* 3. the new table, then the header */
    struct qcow2_snapshot *sn = calloc(s->nb_snapshots + 1, sizeof(*sn));
    if (!sn) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (s->nb_snapshots) {
        memcpy(sn, s->snapshots, s->nb_snapshots * sizeof(*sn));
    }
    struct qcow2_snapshot *n = &sn[s->nb_snapshots];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    n->l1_table_offset = l1_off;
    n->l1_size = s->h.l1_size;
    n->date_sec = (uint32_t)now.tv_sec;
    n->date_nsec = (uint32_t)now.tv_nsec;
    n->disk_size = s->h.size;
    n->has_disk_size = true;
    n->has_icount = true; /* qemu-img records icount 0 */
    n->extra_data_size = SN_EXTRA_BYTES;
    n->extra_data = calloc(1, SN_EXTRA_BYTES);
    n->id = new_snapshot_id(s);
    n->name = strdup(name);
    if (!n->extra_data || !n->id || !n->name) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    struct qcow2_snapshot *old = s->snapshots;
    if (ret == 0) {
        ret = switch_snapshot_table(img, sn, s->nb_snapshots + 1);
    }
    if (ret < 0) {
        free(n->extra_data);
        free(n->id);
        free(n->name);
        free(sn);
        return ret;
    }
    free(old); /* the entries' strings moved to the new array */
    return qcow2_flush_locked(img);
}

static int find_snapshot(const struct qcow2_state *s, const char *id,
                         const char *name)
{
    for (size_t i = 0; i < s->nb_snapshots; i++) {
        if ((!id || strcmp(s->snapshots[i].id, id) == 0) &&
            (!name || strcmp(s->snapshots[i].name, name) == 0)) {
            return (int)i;
        }
    }
    return -1;
}

static int snapshot_apply_locked(struct vimg_image *img,
                                 const char *id_or_name, bool *changed)
{
    struct qcow2_state *s = img->priv;
    int ret;
    int k = find_snapshot(s, id_or_name, NULL);
    if (k < 0) {
        k = find_snapshot(s, NULL, id_or_name);
    }
    if (k < 0) {
        return vimg_error(-ENOENT, "%s: no snapshot with ID or name '%s'",
                          img->filename, id_or_name);
    }
    const struct qcow2_snapshot *sn = &s->snapshots[k];
    const uint64_t new_size = sn->has_disk_size ? sn->disk_size : s->h.size;
    if (new_size > QCOW2_MAX_VIRTUAL_SIZE) {
        return qcow2_corrupt(img, "snapshot %s has an invalid disk size",
                             sn->id);
    }
    uint64_t *snap_l1 = NULL;
    ret = qcow2_flush_locked(img);
    if (ret == 0) {
        ret = qcow2_read_snapshot_l1(img, sn, &snap_l1);
    }
    /* 1. one more reference to everything the snapshot reaches */
    if (ret == 0) {
        ret = raise_l1_refs(img, snap_l1, sn->l1_size);
        *changed = ret == 0;
    }
    /* 2. a new active L1 with the snapshot's entries (none "copied" yet),
     * switched to by one header write */
    const uint64_t n = VIMG_MAX((uint64_t)sn->l1_size, (uint64_t)s->h.l1_size);
    uint64_t *l1 = ret == 0 ? calloc(n ? n : 1, sizeof(uint64_t)) : NULL;
    if (ret == 0 && !l1) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    uint64_t l1_off = 0;
    if (ret == 0) {
        for (uint32_t i = 0; i < sn->l1_size; i++) {
            l1[i] = snap_l1[i] & ~QCOW2_OFLAG_COPIED;
        }
        ret = write_l1_copy(img, l1, n, &l1_off);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    if (ret == 0) {
        uint8_t h[12];
        store_be32(h, (uint32_t)n);
        store_be64(h + 4, l1_off);
        ret = qcow2_write_meta(img, QCOW2_HDR_L1_SIZE, h, sizeof(h));
    }
    if (ret == 0 && new_size != s->h.size) {
        uint8_t b[8];
        store_be64(b, new_size);
        ret = qcow2_write_meta(img, QCOW2_HDR_SIZE, b, sizeof(b));
    }
    if (ret == 0) {
        ret = qcow2_sync_files(img);
    }
    free(snap_l1);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    /* 3. the old active L1 and what only it reached go */
    uint64_t *old = s->l1;
    const uint64_t old_n = s->h.l1_size;
    const uint64_t old_off = s->h.l1_table_offset;
    s->l1 = l1;
    s->h.l1_size = (uint32_t)n;
    s->h.l1_table_offset = l1_off;
    s->h.size = new_size;
    img->size = new_size;
    ret = drop_l1_refs(img, old, old_n);
    if (ret == 0 && old_n) {
        ret = qcow2_free_clusters_later(
            img, old_off, VIMG_DIV_ROUND_UP(old_n * 8, s->cluster_size));
    }
    free(old);
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    /* 4. what is referenced once may be written in place again */
    if (ret == 0) {
        ret = fix_copied(img);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    return ret;
}

static int snapshot_delete_locked(struct vimg_image *img, const char *name,
                                  bool *changed)
{
    struct qcow2_state *s = img->priv;
    int ret;
    const int k = find_snapshot(s, NULL, name);
    if (k < 0) {
        return vimg_error(-ENOENT, "%s: snapshot '%s' not found",
                          img->filename, name);
    }
    uint64_t *snap_l1 = NULL;
    ret = qcow2_flush_locked(img);
    if (ret == 0) {
        ret = qcow2_read_snapshot_l1(img, &s->snapshots[k], &snap_l1);
    }
    if (ret < 0) {
        return ret;
    }
    *changed = true;
    /* 1. the table without it */
    struct qcow2_snapshot gone = s->snapshots[k];
    struct qcow2_snapshot *sn =
        calloc(s->nb_snapshots ? s->nb_snapshots : 1, sizeof(*sn));
    if (!sn) {
        free(snap_l1);
        return vimg_error(-ENOMEM, "out of memory");
    }
    size_t nb = 0;
    for (size_t i = 0; i < s->nb_snapshots; i++) {
        if (i != (size_t)k) {
            sn[nb++] = s->snapshots[i];
        }
    }
    struct qcow2_snapshot *old = s->snapshots;
    ret = switch_snapshot_table(img, sn, nb);
    if (ret < 0) {
        free(sn);
        free(snap_l1);
        return ret;
    }
    free(old);
    /* 2. its references and its L1 table go */
    ret = drop_l1_refs(img, snap_l1, gone.l1_size);
    if (ret == 0 && gone.l1_size) {
        ret = qcow2_free_clusters_later(
            img, gone.l1_table_offset,
            VIMG_DIV_ROUND_UP((uint64_t)gone.l1_size * 8, s->cluster_size));
    }
    free(gone.extra_data);
    free(gone.id);
    free(gone.name);
    free(snap_l1);
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    /* 3. what is referenced once may be written in place again */
    if (ret == 0) {
        ret = fix_copied(img);
    }
    if (ret == 0) {
        ret = qcow2_flush_locked(img);
    }
    return ret;
}

enum sn_op { SN_CREATE, SN_APPLY, SN_DELETE };

/* Run one snapshot operation under the lock and the dirty bit.  An
 * operation that fails after its first change leaves the image dirty: its
 * flags may not match. */
static int snapshot_op(struct vimg_image *img, enum sn_op op,
                       const char *name)
{
    struct qcow2_state *s = img->priv;

    bool changed = false;
    pthread_mutex_lock(&s->lock);
    int ret = check_snapshots_allowed(img);
    if (ret == 0) {
        ret = set_dirty(img, true);
    }
    if (ret == 0) {
        ret = op == SN_CREATE  ? snapshot_create_locked(img, name, &changed)
              : op == SN_APPLY ? snapshot_apply_locked(img, name, &changed)
                               : snapshot_delete_locked(img, name, &changed);
        if (ret == 0 || !changed) {
            /* done, or refused before any change */
            const int r = set_dirty(img, false);
            ret = ret < 0 ? ret : r;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_snapshot_create(struct vimg_image *img, const char *name)
{
    return snapshot_op(img, SN_CREATE, name);
}

int qcow2_snapshot_apply(struct vimg_image *img, const char *id_or_name)
{
    const struct qcow2_state *s = img->priv;

    /* Reverting changes the whole disk behind every bitmap's back; an
     * "auto" bitmap must reflect snapshot switching (qcow2.txt).  qemu-img
     * refuses while the image has any bitmap, in these words. */
    if (s->nb_bitmaps) {
        return vimg_error(-EBUSY, "Device has active dirty bitmaps");
    }
    return snapshot_op(img, SN_APPLY, id_or_name);
}

int qcow2_snapshot_delete(struct vimg_image *img, const char *name)
{
    return snapshot_op(img, SN_DELETE, name);
}

/*
 * Version 3 snapshot table entries carry at least 16 bytes of extra data
 * (the 64-bit VM state size and the disk size; qcow2.txt, "Snapshots").
 * Entries written by older version 2 writers may have none: give them
 * those 16 bytes (the disk size is the image's, which a version 2 image
 * cannot have changed under a snapshot) in a new table.  The caller holds
 * the driver lock.
 */
int qcow2_snapshots_complete_extra(struct vimg_image *img)
{
    struct qcow2_state *s = img->priv;
    size_t nb_short = 0;

    for (size_t k = 0; k < s->nb_snapshots; k++) {
        nb_short += s->snapshots[k].extra_data_size < SN_V3_EXTRA_BYTES;
    }
    if (!nb_short) {
        return 0;
    }
    struct qcow2_snapshot *sn = calloc(s->nb_snapshots, sizeof(*sn));
    uint8_t **extra = calloc(s->nb_snapshots, sizeof(*extra));
    int ret = sn && extra ? 0 : vimg_error(-ENOMEM, "out of memory");
    for (size_t k = 0; k < s->nb_snapshots && ret == 0; k++) {
        sn[k] = s->snapshots[k];
        if (sn[k].extra_data_size >= SN_V3_EXTRA_BYTES) {
            continue;
        }
        extra[k] = calloc(1, SN_V3_EXTRA_BYTES);
        if (!extra[k]) {
            ret = vimg_error(-ENOMEM, "out of memory");
            break;
        }
        if (sn[k].extra_data_size) {
            memcpy(extra[k], sn[k].extra_data, sn[k].extra_data_size);
        }
        sn[k].extra_data = extra[k];
        sn[k].extra_data_size = SN_V3_EXTRA_BYTES;
        if (!sn[k].has_disk_size) {
            sn[k].disk_size = s->h.size;
            sn[k].has_disk_size = true;
        }
    }
    struct qcow2_snapshot *old = s->snapshots;
    if (ret == 0) {
        ret = switch_snapshot_table(img, sn, s->nb_snapshots);
    }
    if (ret < 0) {
        for (size_t k = 0; extra && k < s->nb_snapshots; k++) {
            free(extra[k]);
        }
        free(extra);
        free(sn);
        return ret;
    }
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        if (extra[k]) {
            free(old[k].extra_data); /* replaced by the longer copy */
        }
    }
    free(extra);
    free(old); /* the entries' strings moved to the new array */
    return qcow2_flush_locked(img);
}
