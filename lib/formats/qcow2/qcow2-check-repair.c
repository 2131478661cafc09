/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-repair.c: the repairs of check -r, in a crash-safe order:
 * refcounts that are too low are raised and made durable before leaked
 * ones are lowered; a rebuilt refcount structure goes to fresh clusters
 * past the end of the file and is made durable before the header points
 * at it (one 12-byte write); COPIED flags are fixed only after the
 * refcounts are right; the snapshot table is rewritten last.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-check.h"
#include "vimg-endian.h"

/* ---------------------------------------------------------- L2 entries */

/* Make the entry at [L2_OFF + J * entry size] read as zeroes
 * (qemu's fix for preallocated clusters that are not aligned). */
int qcow2_check_zero_l2_entry(struct check_state *ck, uint64_t l2_off,
                              uint64_t j, uint64_t bitmap)
{
    uint8_t b[16];
    size_t n = 8;

    if (ck->s->has_subclusters) {
        /* allocated subclusters become zero ones */
        bitmap |= bitmap << 32;
        bitmap &= 0xffffffff00000000ull;
        store_be64(b, 0);
        store_be64(b + 8, bitmap);
        n = 16;
    } else {
        store_be64(b, QCOW2_OFLAG_ZERO);
    }
    int ret = qcow2_check_write(ck, b, n, l2_off + j * ck->s->l2_entry_bytes);
    return ret == 0 ? qcow2_check_sync(ck) : ret;
}

/* ---------------------------------------------------------- refcounts */

int qcow2_check_write_raised_block(struct check_state *ck,
                                   struct check_part *p, const uint8_t *block,
                                   uint64_t off)
{
    int ret = qcow2_check_write(ck, block, (size_t)ck->cluster_size, off);

    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not write the refcount block at 0x%llx: "
                        "%s",
                        (unsigned long long)off, vimg_last_error());
    }
    return ret;
}

/* Lower the stored refcounts of refcount block IDX that are above the
 * counts, with BLOCK (one cluster) to work in. */
static int lower_block(struct check_state *ck, uint64_t idx, uint8_t *block)
{
    const unsigned order = ck->s->h.refcount_order;
    const uint64_t first = idx * ck->refblock_entries;
    const uint64_t last =
        VIMG_MIN(qcow2_check_compare_end(ck), first + ck->refblock_entries);
    const uint64_t off = refblock_offset(ck, idx);
    bool is_lowered = false;

    if (!off || (off & (ck->cluster_size - 1))) {
        return 0;
    }
    int ret = qcow2_check_read(ck, block, (size_t)ck->cluster_size, off);
    for (uint64_t c = first; ret == 0 && c < last; c++) {
        const uint64_t stored = qcow2_refcount_get(block, c - first, order);
        const uint64_t computed = count_get(ck, c);
        if (stored > computed) {
            qcow2_refcount_set(block, c - first, order, computed);
            is_lowered = true;
        }
    }
    if (ret == 0 && is_lowered) {
        ret = qcow2_check_write(ck, block, (size_t)ck->cluster_size, off);
    }
    return ret;
}

int qcow2_check_lower_leaked(struct check_state *ck, struct check_part *p,
                             unsigned fix, bool has_lowered, uint8_t *block)
{
    if (!has_lowered) {
        return fix ? qcow2_check_sync(ck) : 0;
    }
    /* Raised refcounts are durable before any is lowered: a crash in
     * between leaves leaks, never a cluster in use with too low a count. */
    const uint64_t end = qcow2_check_compare_end(ck);
    int ret = qcow2_check_sync(ck);
    for (uint64_t idx = 0; ret == 0 && idx * ck->refblock_entries < end;
         idx++) {
        ret = lower_block(ck, idx, block);
    }
    if (ret == 0) {
        ret = qcow2_check_sync(ck);
    }
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p, "ERROR: could not write refcount blocks: %s",
                        vimg_last_error());
    }
    return ret;
}

/* ------------------------------------------------------------- rebuild */

static int grow_counts(struct check_state *ck, uint64_t n)
{
    if (n <= ck->nb_counts) {
        return 0;
    }
    uint16_t *r = realloc(ck->counts, (size_t)n * sizeof(uint16_t));
    if (!r) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memset(r + ck->nb_counts, 0,
           (size_t)(n - ck->nb_counts) * sizeof(uint16_t));
    ck->counts = r;
    ck->nb_counts = n;
    return 0;
}

/* Where a rebuilt refcount structure goes: its blocks, then its table,
 * in fresh clusters from START on, counting every cluster up to their
 * own end. */
struct refcount_layout {
    uint64_t start;
    uint64_t nb_blocks;
    uint64_t table_clusters;
};

static uint64_t layout_end(const struct refcount_layout *l)
{
    return l->start + l->nb_blocks + l->table_clusters;
}

/* Blocks and table that count everything below START and themselves. */
static void plan_layout(const struct check_state *ck,
                        struct refcount_layout *l)
{
    l->start = VIMG_MAX(qcow2_check_compare_end(ck),
                        VIMG_DIV_ROUND_UP(ck->s->file_size, ck->cluster_size));
    qcow2_refcount_layout(l->start, ck->cluster_size,
                          ck->s->h.refcount_order, &l->nb_blocks,
                          &l->table_clusters);
}

/* The refcount blocks of layout L, from the counts, contiguous: written
 * in batches of up to 1 MiB from BUF (BATCH clusters). */
static int write_refblocks(struct check_state *ck,
                           const struct refcount_layout *l, uint8_t *buf,
                           uint64_t batch)
{
    const uint64_t end = layout_end(l);

    for (uint64_t i = 0; i < l->nb_blocks; i += batch) {
        const uint64_t n = VIMG_MIN(batch, l->nb_blocks - i);
        memset(buf, 0, (size_t)(n << ck->cluster_bits));
        for (uint64_t k = 0; k < n; k++) {
            uint8_t *b = buf + (k << ck->cluster_bits);
            const uint64_t first = (i + k) * ck->refblock_entries;
            const uint64_t last = VIMG_MIN(end, first + ck->refblock_entries);
            for (uint64_t c = first; c < last; c++) {
                const uint64_t v = count_get(ck, c);
                if (v) {
                    qcow2_refcount_set(b, c - first, ck->s->h.refcount_order,
                                       v);
                }
            }
        }
        int ret = qcow2_check_write(ck, buf, (size_t)(n << ck->cluster_bits),
                                    (l->start + i) << ck->cluster_bits);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* The refcount table of layout L (TABLE, decoded, ENTRIES long), made
 * durable; then the header switched to it (offset and size are adjacent
 * fields: one write), made durable too. */
static int write_reftable(struct check_state *ck,
                          const struct refcount_layout *l,
                          const uint64_t *table, uint64_t entries,
                          uint8_t *buf)
{
    const uint64_t table_off = (l->start + l->nb_blocks) << ck->cluster_bits;

    for (uint64_t i = 0; i < entries; i++) {
        store_be64(buf + i * 8, table[i]);
    }
    int ret = qcow2_check_write(ck, buf, (size_t)entries * 8, table_off);
    if (ret == 0) {
        ret = qcow2_check_sync(ck);
    }
    if (ret < 0) {
        return ret;
    }
    uint8_t h[12];
    store_be64(h, table_off);
    store_be32(h + 8, (uint32_t)l->table_clusters);
    ret = qcow2_check_write(ck, h, sizeof(h), QCOW2_HDR_REFTABLE_OFFSET);
    return ret == 0 ? qcow2_check_sync(ck) : ret;
}

/* Work from here on with the new table TABLE (ENTRIES long) of layout L,
 * which the header now points at. */
static int adopt_reftable(struct check_state *ck,
                          const struct refcount_layout *l, uint64_t *table,
                          uint64_t entries)
{
    struct qcow2_state *s = ck->s;

    s->h.refcount_table_offset = (l->start + l->nb_blocks)
                                 << ck->cluster_bits;
    s->h.refcount_table_clusters = (uint32_t)l->table_clusters;
    free(ck->reftable);
    ck->reftable = table;
    ck->reftable_entries = entries;
    ck->has_broken_block = false;
    ck->file_size = s->file_size;
    ck->nb_clusters = VIMG_DIV_ROUND_UP(ck->file_size, ck->cluster_size);
    return grow_counts(ck, ck->nb_clusters + 2);
}

/*
 * Write a new refcount structure for the computed refcounts: refcount
 * blocks and table in fresh clusters past the end of everything, made
 * durable, then the header switched to them in one write.  The old
 * structure is leaked (the caller frees it).
 */
int qcow2_check_rebuild_refcount_structure(struct check_state *ck,
                                           struct check_part *p)
{
    struct refcount_layout l;
    uint8_t *buf = NULL;
    uint64_t *table = NULL;
    int ret;

    qcow2_check_say(ck, p, "Rebuilding refcount structure");
    plan_layout(ck, &l);
    if ((l.table_clusters << ck->cluster_bits) > QCOW2_MAX_REFTABLE_BYTES) {
        p->result.check_errors++;
        return vimg_error(-EFBIG, "%s: the new refcount table would exceed "
                                  "8 MiB",
                          ck->img->filename);
    }
    ret = grow_counts(ck, layout_end(&l));
    if (ret < 0) {
        p->result.check_errors++;
        return ret;
    }
    for (uint64_t c = l.start; c < layout_end(&l); c++) {
        qcow2_check_count_set(ck, c, 1);
    }
    const uint64_t batch = VIMG_MAX(1, (1u << 20) >> ck->cluster_bits);
    buf = malloc((size_t)(batch << ck->cluster_bits));
    if (!buf) {
        p->result.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    ret = write_refblocks(ck, &l, buf, batch);
    if (ret < 0) {
        goto fail;
    }
    free(buf);
    const uint64_t entries = l.table_clusters * (ck->cluster_size / 8);
    buf = calloc((size_t)entries, 8);
    table = calloc((size_t)entries, sizeof(uint64_t));
    if (!buf || !table) {
        p->result.check_errors++;
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < l.nb_blocks; i++) {
        table[i] = (l.start + i) << ck->cluster_bits;
    }
    ret = write_reftable(ck, &l, table, entries, buf);
    if (ret < 0) {
        goto fail;
    }
    ret = adopt_reftable(ck, &l, table, entries);
    table = NULL;
    if (ret < 0) {
        p->result.check_errors++;
    }
    goto out;
fail:
    p->result.check_errors++;
    qcow2_check_say(ck, p,
                    "ERROR: could not write the new refcount structure: %s",
                    vimg_last_error());
out:
    free(table);
    free(buf);
    return ret;
}

/* -------------------------------------------------------- COPIED flags */

/* Would writing a cluster at OFF overwrite fixed metadata? */
static bool overlaps_metadata(struct check_state *ck, uint64_t off)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t c = off >> ck->cluster_bits;
    const uint64_t c_last = (off + ck->cluster_size - 1) >> ck->cluster_bits;
    const struct {
        uint64_t off, bytes;
    } r[] = {
        {0, ck->cluster_size},
        {s->h.l1_table_offset, (uint64_t)s->h.l1_size * 8},
        {s->h.refcount_table_offset,
         (uint64_t)s->h.refcount_table_clusters << ck->cluster_bits},
        {s->h.snapshots_offset, s->nb_snapshots ? s->snapshots_size : 0},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        if (r[i].bytes == 0) {
            continue;
        }
        const uint64_t a = r[i].off >> ck->cluster_bits;
        const uint64_t b = (r[i].off + r[i].bytes - 1) >> ck->cluster_bits;
        if (c <= b && c_last >= a) {
            return true;
        }
    }
    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t rb = refblock_offset(ck, i) >> ck->cluster_bits;
        if (rb && rb >= c && rb <= c_last) {
            return true;
        }
    }
    return false;
}

/* Entry I of the active L1 table (T), whose L2 table has refcount
 * REFCOUNT: its COPIED flag must say whether that is 1. */
static int check_l1_copied(struct check_state *ck, struct check_part *p,
                           const struct check_table *t, uint64_t i,
                           uint64_t refcount, bool is_repair)
{
    struct qcow2_state *s = ck->s;
    const uint64_t entry = s->l1[i];
    const uint64_t guest0 = i * l2_span(ck);

    if ((refcount == 1) == ((entry & QCOW2_OFLAG_COPIED) != 0)) {
        return 0;
    }
    p->result.corruptions++;
    qcow2_check_say(ck, p,
                    "%s: %s: entry %llu (guest 0x%llx-0x%llx) has the COPIED "
                    "flag %s, but its L2 table at 0x%llx has refcount %llu",
                    is_repair ? "Repairing" : "ERROR", t->label,
                    (unsigned long long)i, (unsigned long long)guest0,
                    (unsigned long long)(guest0 + l2_span(ck) - 1),
                    (entry & QCOW2_OFLAG_COPIED) ? "set" : "clear",
                    (unsigned long long)(entry & QCOW2_L1E_OFFSET_MASK),
                    (unsigned long long)refcount);
    if (!is_repair) {
        return 0;
    }
    const uint64_t fixed = refcount == 1 ? entry | QCOW2_OFLAG_COPIED
                                         : entry & ~QCOW2_OFLAG_COPIED;
    uint8_t b[8];
    store_be64(b, fixed);
    int ret = qcow2_check_write(ck, b, 8, s->h.l1_table_offset + i * 8);
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p, "ERROR: could not write the L1 entry: %s",
                        vimg_last_error());
        return ret;
    }
    s->l1[i] = fixed;
    p->result.corruptions--;
    p->result.corruptions_fixed++;
    return 0;
}

/* The entries of BUF, the L2 table at L2_OFF (entry I of T): each COPIED
 * flag must say whether its cluster's refcount is 1.  Fixed in BUF when
 * IS_REPAIR; returns how many were. */
static uint64_t check_l2_copied(struct check_state *ck, struct check_part *p,
                                const struct check_table *t, uint64_t i,
                                uint64_t l2_off, bool is_repair, uint8_t *buf)
{
    const unsigned entry_bytes = ck->s->l2_entry_bytes;
    const uint64_t guest0 = i * l2_span(ck);
    uint64_t nb_fixed = 0;

    for (uint64_t j = 0; j < ck->cluster_size / entry_bytes; j++) {
        const uint64_t entry = load_be64(buf + j * entry_bytes);
        const enum check_entry_type type = qcow2_check_entry_type(ck, entry);
        if (type != ENTRY_NORMAL && type != ENTRY_ZERO_ALLOC) {
            continue;
        }
        const uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;
        uint64_t refcount = 1;
        if (!ck->s->has_data_file &&
            qcow2_check_stored_refcount(ck, off >> ck->cluster_bits,
                                        &refcount) < 0) {
            continue;
        }
        if ((refcount == 1) == ((entry & QCOW2_OFLAG_COPIED) != 0)) {
            continue;
        }
        p->result.corruptions++;
        qcow2_check_say(ck, p,
                        "%s: L2 table at 0x%llx (%s entry %llu): entry %llu "
                        "(guest 0x%llx) has the COPIED flag %s, but its "
                        "cluster at 0x%llx has refcount %llu",
                        is_repair ? "Repairing" : "ERROR",
                        (unsigned long long)l2_off, t->label,
                        (unsigned long long)i, (unsigned long long)j,
                        (unsigned long long)(guest0 + j * ck->cluster_size),
                        (entry & QCOW2_OFLAG_COPIED) ? "set" : "clear",
                        (unsigned long long)off, (unsigned long long)refcount);
        if (is_repair) {
            store_be64(buf + j * entry_bytes,
                       refcount == 1 ? entry | QCOW2_OFLAG_COPIED
                                     : entry & ~QCOW2_OFLAG_COPIED);
            nb_fixed++;
        }
    }
    return nb_fixed;
}

/* Write BUF, the L2 table at L2_OFF with NB_FIXED COPIED flags fixed,
 * unless it lies on other metadata. */
static int write_fixed_l2(struct check_state *ck, struct check_part *p,
                          uint64_t l2_off, const uint8_t *buf,
                          uint64_t nb_fixed)
{
    if (overlaps_metadata(ck, l2_off)) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not write the L2 table at 0x%llx: it "
                        "overlaps other metadata",
                        (unsigned long long)l2_off);
        return vimg_error(-EIO, "%s: L2 table at 0x%llx overlaps other "
                                "metadata",
                          ck->img->filename, (unsigned long long)l2_off);
    }
    int ret = qcow2_check_write(ck, buf, (size_t)ck->cluster_size, l2_off);
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not write the L2 table at 0x%llx: %s",
                        (unsigned long long)l2_off, vimg_last_error());
        return ret;
    }
    p->result.corruptions -= nb_fixed;
    p->result.corruptions_fixed += nb_fixed;
    return 0;
}

/* The COPIED flags of entries [FIRST, END) of the active L1 table and of
 * their L2 tables (qemu's check_oflag_copied). */
int qcow2_check_copied_range(struct check_state *ck, struct check_part *p,
                             const struct check_table *t, uint64_t first,
                             uint64_t end, bool is_repair, uint8_t *buf)
{
    for (uint64_t i = first; i < end; i++) {
        const uint64_t l2_off = ck->s->l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint64_t refcount;
        if (!l2_off || qcow2_check_stored_refcount(
                           ck, l2_off >> ck->cluster_bits, &refcount) < 0) {
            continue;
        }
        int ret = check_l1_copied(ck, p, t, i, refcount, is_repair);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_check_read(ck, buf, (size_t)ck->cluster_size, l2_off);
        if (ret < 0) {
            p->result.check_errors++;
            qcow2_check_say(ck, p,
                            "ERROR: could not read the L2 table at 0x%llx: %s",
                            (unsigned long long)l2_off, vimg_last_error());
            return ret;
        }
        const uint64_t nb_fixed =
            check_l2_copied(ck, p, t, i, l2_off, is_repair, buf);
        if (nb_fixed) {
            ret = write_fixed_l2(ck, p, l2_off, buf, nb_fixed);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

int qcow2_check_copied_flags(struct check_state *ck, struct check_part *p)
{
    bool is_repair;

    if (ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS) {
        is_repair = true;
    } else if (ck->repair_flags & VIMG_CHECK_REPAIR_LEAKS) {
        /* only when the refcounts are known to be right */
        is_repair = !p->result.check_errors && !p->result.corruptions &&
                    !p->result.leaks;
    } else {
        is_repair = false;
    }
    struct check_table t;
    ck->compared_end = qcow2_check_compare_end(ck);
    qcow2_check_active_table(ck, &t);
    int ret = qcow2_check_run_pass(
        ck, p, &t, is_repair ? PASS_COPIED_REPAIR : PASS_COPIED);
    if (ret == 0 && is_repair) {
        ret = qcow2_check_sync(ck);
    }
    return ret;
}

/* ------------------------------------------------------ snapshot table */

/* Set the stored refcount of cluster C (its refcount block must exist). */
static int write_stored_refcount(struct check_state *ck, uint64_t c, uint64_t v,
                                 uint8_t *block)
{
    const uint64_t off = refblock_offset(ck, c / ck->refblock_entries);
    int ret = qcow2_check_read(ck, block, (size_t)ck->cluster_size, off);

    if (ret == 0) {
        qcow2_refcount_set(block, c % ck->refblock_entries,
                           ck->s->h.refcount_order, v);
        ret = qcow2_check_write(ck, block, (size_t)ck->cluster_size, off);
    }
    return ret;
}

/* Can cluster C get a refcount (its refcount block exists and is sane)? */
static bool has_refblock(const struct check_state *ck, uint64_t c)
{
    const uint64_t off = refblock_offset(ck, c / ck->refblock_entries);

    return off && !(off & (ck->cluster_size - 1)) && off < ck->file_size;
}

/* Give the incomplete entries their 16 bytes of extra data, with the
 * current disk size (as qemu does). */
static int complete_snapshot_entries(struct qcow2_state *s)
{
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        struct qcow2_snapshot *sn = &s->snapshots[k];
        if (sn->has_disk_size) {
            continue;
        }
        uint8_t *extra = calloc(1, 16);
        if (!extra) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        free(sn->extra_data);
        sn->extra_data = extra;
        sn->extra_data_size = 16;
        sn->disk_size = s->h.size;
        sn->has_disk_size = true;
    }
    return 0;
}

/* N free clusters in a row with a refcount block to count them: the
 * first into *START. */
static bool find_free_clusters(const struct check_state *ck, uint64_t n,
                               uint64_t *start)
{
    const uint64_t limit = ck->reftable_entries * ck->refblock_entries;
    uint64_t run = 0;

    *start = 0;
    for (uint64_t c = 1; c < limit && run < n; c++) {
        if (count_get(ck, c) == 0 && has_refblock(ck, c)) {
            *start = run ? *start : c;
            run++;
        } else {
            run = 0;
        }
    }
    return run >= n;
}

/* TABLE (N clusters) to the clusters from START: their refcounts first,
 * then the table, then the header (entry count and offset, adjacent
 * fields: one write), each made durable before the next. */
static int write_snapshot_table(struct check_state *ck, const uint8_t *table,
                                uint64_t n, uint64_t start, uint8_t *block)
{
    int ret = 0;

    for (uint64_t c = start; c < start + n && ret == 0; c++) {
        ret = write_stored_refcount(ck, c, 1, block);
    }
    if (ret == 0) {
        ret = qcow2_check_sync(ck);
    }
    if (ret == 0) {
        ret = qcow2_check_write(ck, table, (size_t)(n << ck->cluster_bits),
                                start << ck->cluster_bits);
    }
    if (ret == 0) {
        ret = qcow2_check_sync(ck);
    }
    if (ret < 0) {
        return ret;
    }
    uint8_t h[12];
    store_be32(h, (uint32_t)ck->s->nb_snapshots);
    store_be64(h + 4, start << ck->cluster_bits);
    ret = qcow2_check_write(ck, h, sizeof(h), QCOW2_HDR_NB_SNAPSHOTS);
    return ret == 0 ? qcow2_check_sync(ck) : ret;
}

/* The clusters of the old table (OLD_SIZE bytes at OLD_OFF) lose the
 * table's reference. */
static int release_old_table(struct check_state *ck, uint64_t old_off,
                             uint64_t old_size, uint8_t *block)
{
    int ret = 0;

    if (!old_size || old_off >= ck->file_size) {
        return 0;
    }
    const uint64_t first = old_off >> ck->cluster_bits;
    const uint64_t last = (old_off + old_size - 1) >> ck->cluster_bits;
    for (uint64_t c = first; c <= last && c < ck->compared_end && ret == 0;
         c++) {
        const uint64_t v = count_get(ck, c);
        if (v && has_refblock(ck, c)) {
            qcow2_check_count_set(ck, c, v - 1);
            ret = write_stored_refcount(ck, c, v - 1, block);
        }
    }
    return ret == 0 ? qcow2_check_sync(ck) : ret;
}

/*
 * Give the incomplete version 3 snapshot table entries their 16 bytes of
 * extra data (disk size: the current one, as qemu does) and write the
 * table anew: refcounts of the new clusters first, then the table, then
 * the header, then the old table's clusters are released.
 */
int qcow2_check_fix_snapshot_table(struct check_state *ck, struct check_part *p)
{
    struct qcow2_state *s = ck->s;
    uint8_t *table = NULL, *block = NULL;
    uint64_t start;
    int ret = complete_snapshot_entries(s);

    if (ret < 0) {
        return ret;
    }
    const size_t len = qcow2_snapshots_encode(s->snapshots, s->nb_snapshots,
                                              NULL);
    const uint64_t n = VIMG_DIV_ROUND_UP(len, ck->cluster_size);
    table = calloc(1, (size_t)(n << ck->cluster_bits));
    block = malloc((size_t)ck->cluster_size);
    if (!table || !block) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    qcow2_snapshots_encode(s->snapshots, s->nb_snapshots, table);
    if (!find_free_clusters(ck, n, &start)) {
        ret = vimg_error(-ENOSPC, "%s: no room for a new snapshot table "
                                  "under the existing refcount blocks",
                         ck->img->filename);
        goto out;
    }
    ret = write_snapshot_table(ck, table, n, start, block);
    if (ret < 0) {
        goto out;
    }
    const uint64_t old_off = s->h.snapshots_offset;
    const uint64_t old_size = s->snapshots_size;
    s->h.snapshots_offset = start << ck->cluster_bits;
    s->snapshots_size = len;
    for (uint64_t c = start; c < start + n; c++) {
        if (c < ck->nb_counts) {
            qcow2_check_count_set(ck, c, 1);
        }
    }
    ret = release_old_table(ck, old_off, old_size, block);
out:
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not rewrite the snapshot table: %s",
                        vimg_last_error());
    }
    free(table);
    free(block);
    return ret;
}
