/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-scan.c: the check's first pass, counting every reference to
 * every host cluster into one counter per cluster (qcow2.txt, "Host cluster
 * management"): the header, active and snapshot L1/L2 tables ("Cluster
 * mapping"), data and compressed clusters ("Compressed Clusters
 * Descriptor"), the snapshot table ("Snapshots"), refcount table and
 * blocks, crypto header, bitmap directory and bitmap tables ("Bitmaps").
 * Entries that break the spec are reported on the way.
 *
 * L2 tables of an L1 table are scanned by worker threads, each over a
 * slice of the L1 entries, with atomic counters; each worker buffers its
 * messages so that they come out in table order whatever the thread count.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-check.h"
#include "util/pool.h"
#include "vimg-endian.h"

/* ------------------------------------------------------------ counting */

/*
 * Add a reference to cluster K; false if its refcount would overflow the
 * image's refcount width.  Safe from many threads: one atomic add, undone
 * when the counter was already at the image's maximum or in the side
 * table (at most CHECK_MAX_THREADS such overshoots are in flight at once).
 */
static inline bool count_inc(struct check_state *ck, uint64_t k)
{
    const uint16_t old =
        __atomic_fetch_add(&ck->counts[k], (uint16_t)1, __ATOMIC_RELAXED);

    if (old < COUNT_SATURATED && old < ck->refcount_max) {
        return true;
    }
    __atomic_fetch_sub(&ck->counts[k], (uint16_t)1, __ATOMIC_RELAXED);
    if (old < COUNT_SATURATED) {
        return false; /* narrow refcounts: at the maximum */
    }
    bool is_ok = true;
    pthread_mutex_lock(&ck->overflow_lock);
    const uint64_t extra = qcow2_check_overflow_get(ck, k);
    if (COUNT_SATURATED + extra >= ck->refcount_max) {
        is_ok = false;
    } else {
        /* counts[k] is at COUNT_SATURATED (plus other threads' overshoots,
         * which they undo): leave it alone, a store could lose those undos */
        qcow2_check_overflow_set(ck, k, extra + 1);
    }
    pthread_mutex_unlock(&ck->overflow_lock);
    return is_ok;
}

/*
 * Count one reference to every cluster [OFFSET, OFFSET+SIZE) touches.
 * Like qemu, the last cluster may reach less than one cluster past the end
 * of the file (it may be partly written); anything further is a corruption
 * the caller describes: returns false then (counted here).
 */
static bool count_range_as(struct check_state *ck, struct check_part *p,
                           uint64_t offset, uint64_t size, bool is_copied)
{
    uint64_t end;

    if (size == 0) {
        return true;
    }
    if (vimg_add_overflows(offset, size, &end) ||
        (end > ck->file_size && end - ck->file_size >= ck->cluster_size)) {
        p->result.corruptions++;
        return false;
    }
    const uint64_t first = offset >> ck->cluster_bits;
    const uint64_t last = (end - 1) >> ck->cluster_bits;
    if (last + 1 > p->used_end) {
        p->used_end = last + 1;
    }
    if (ck->is_fast) {
        qcow2_check_run_add(ck, p, first, last + 1, is_copied);
        return true;
    }
    for (uint64_t k = first; k <= last; k++) {
        assert(k < ck->nb_counts);
        if (!count_inc(ck, k)) {
            p->result.corruptions++;
            qcow2_check_say(ck, p,
                "ERROR: cluster 0x%llx is referenced more often than a "
                "%u-bit refcount can count; widen the refcounts with 'qemu-img "
                "amend -o refcount_bits=64' or copy the image with 'vimg "
                "convert'",
                (unsigned long long)(k << ck->cluster_bits),
                1u << ck->s->h.refcount_order);
        }
    }
    return true;
}

static bool count_range(struct check_state *ck, struct check_part *p,
                        uint64_t offset, uint64_t size)
{
    return count_range_as(ck, p, offset, size, false);
}

/*
 * The fast check counts a cluster an active table entry references
 * (ENTRY: an L1 or L2 entry; not compressed) and notes that its refcount
 * must be 1, which the COPIED flag says (else it gives up: the exact
 * check says what is wrong).  The exact check counts it only.
 */
static bool count_entry_cluster(struct check_state *ck, struct check_part *p,
                                const struct check_table *t, uint64_t entry,
                                uint64_t offset)
{
    const bool is_copied = entry & QCOW2_OFLAG_COPIED;

    if (ck->is_fast && t->is_active && !is_copied) {
        qcow2_check_fast_fail(ck);
    }
    return count_range_as(ck, p, offset, ck->cluster_size,
                          ck->is_fast && t->is_active);
}

/* ------------------------------------------------------ L1 and L2 scan */

enum check_entry_type qcow2_check_entry_type(const struct check_state *ck,
                                             uint64_t e)
{
    struct qcow2_l2_desc d;

    qcow2_l2_decode(ck->s, e, &d);
    if (d.is_compressed) {
        return ENTRY_COMPRESSED;
    }
    if (d.is_zero) {
        return d.host ? ENTRY_ZERO_ALLOC : ENTRY_ZERO_PLAIN;
    }
    return d.has_host ? ENTRY_NORMAL : ENTRY_UNALLOCATED;
}

/* Where an L2 entry is, and what the scan of its table has seen so far. */
struct l2_scan {
    const struct check_table *table;
    uint64_t l1_index;
    uint64_t l2_offset;
    uint64_t index;           /* of the entry in its L2 table */
    uint64_t guest_offset;    /* the guest cluster it maps */
    uint64_t next_contiguous; /* host offset that would not fragment */
};

static void say_entry(struct check_state *ck, struct check_part *p,
                      const struct l2_scan *at, const char *severity,
                      const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Report PREFIX followed by FMT formatted with AP. */
static void say_after(struct check_state *ck, struct check_part *p,
                      const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void say_after(struct check_state *ck, struct check_part *p,
                      const char *prefix, const char *fmt, va_list ap)
{
    char what[512];

    vsnprintf(what, sizeof(what), fmt, ap);
    qcow2_check_say(ck, p, "%s%s", prefix, what);
}

/* Report a problem of the entry AT: "SEVERITY: L2 table at 0x...
 * (LABEL entry I, guest 0x...-0x...): entry J (guest 0x...) " + FMT. */
static void say_entry(struct check_state *ck, struct check_part *p,
                      const struct l2_scan *at, const char *severity,
                      const char *fmt, ...)
{
    const uint64_t guest0 = at->l1_index * l2_span(ck);
    char prefix[512];
    va_list ap;

    snprintf(prefix, sizeof(prefix),
             "%s: L2 table at 0x%llx (%s entry %llu, guest 0x%llx-0x%llx): "
             "entry %llu (guest 0x%llx) ",
             severity, (unsigned long long)at->l2_offset, at->table->label,
             (unsigned long long)at->l1_index, (unsigned long long)guest0,
             (unsigned long long)(guest0 + l2_span(ck) - 1),
             (unsigned long long)at->index,
             (unsigned long long)at->guest_offset);
    va_start(ap, fmt);
    say_after(ck, p, prefix, fmt, ap);
    va_end(ap);
}

void qcow2_check_compressed_extent(const struct check_state *ck,
                                   uint64_t entry, uint64_t *offset,
                                   uint64_t *bytes)
{
    struct qcow2_l2_desc d;

    qcow2_l2_decode(ck->s, entry | QCOW2_OFLAG_COMPRESSED, &d);
    *offset = d.comp_offset;
    *bytes = d.comp_sectors * 512 - (*offset & 511);
}

static void check_compressed_entry(struct check_state *ck,
                                   struct check_part *p,
                                   const struct l2_scan *at, uint64_t entry,
                                   uint64_t bitmap)
{
    if (entry & QCOW2_OFLAG_COPIED) {
        p->result.corruptions++;
        say_entry(ck, p, at, "ERROR",
                  "is a compressed cluster with the COPIED flag set, which "
                  "compressed clusters never have");
        entry &= ~QCOW2_OFLAG_COPIED;
    }
    if (ck->s->has_data_file) {
        p->result.corruptions++;
        say_entry(ck, p, at, "ERROR",
                  "is a compressed cluster, but the image has an external "
                  "data file");
        return;
    }
    if (bitmap) {
        p->result.corruptions++;
        say_entry(ck, p, at, "ERROR",
                  "is a compressed cluster with a non-zero subcluster bitmap "
                  "0x%016llx",
                  (unsigned long long)bitmap);
        return;
    }
    uint64_t offset, bytes;
    qcow2_check_compressed_extent(ck, entry, &offset, &bytes);
    if (!count_range(ck, p, offset, bytes)) {
        say_entry(ck, p, at, "ERROR",
                  "points at compressed data at 0x%llx (%llu bytes), past "
                  "the end of the file",
                  (unsigned long long)offset, (unsigned long long)bytes);
    }
    if (at->table->is_active) {
        p->result.allocated_clusters++;
        p->result.compressed_clusters++;
        /* compressed clusters count as fragmented, as in qemu */
        p->result.fragmented_clusters++;
    }
}

/* An allocated cluster at an offset that is not cluster aligned: report
 * it, and make a preallocated zero cluster a plain one with -r all (as
 * qemu does).  True when the entry is fixed: it no longer points at any
 * cluster. */
static bool check_unaligned_entry(struct check_state *ck,
                                  struct check_part *p,
                                  const struct l2_scan *at, uint64_t entry,
                                  uint64_t bitmap)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t offset = entry & QCOW2_L2E_OFFSET_MASK;
    const bool has_data = s->has_subclusters
                              ? (bitmap & L2_BITMAP_ALL_ALLOC) != 0
                              : !(entry & QCOW2_OFLAG_ZERO);

    p->result.corruptions++;
    if (has_data) {
        say_entry(ck, p, at, "ERROR",
                  "points at data at 0x%llx, which is not cluster aligned",
                  (unsigned long long)offset);
        return false;
    }
    const bool is_fix = ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS;
    say_entry(ck, p, at, is_fix ? "Repairing" : "ERROR",
              "is a preallocated zero cluster at 0x%llx, which is not "
              "cluster aligned%s",
              (unsigned long long)offset,
              is_fix ? "; making it a plain zero cluster" : "");
    if (!is_fix) {
        return false;
    }
    if (qcow2_check_zero_l2_entry(ck, at->l2_offset, at->index, bitmap) ==
        0) {
        p->result.corruptions--;
        p->result.corruptions_fixed++;
        return true;
    }
    p->result.check_errors++;
    qcow2_check_say(ck, p, "ERROR: could not write the L2 entry: %s",
                    vimg_last_error());
    return false;
}

/* A normal cluster, or a zero cluster that keeps its host cluster. */
static void check_allocated_entry(struct check_state *ck,
                                  struct check_part *p, struct l2_scan *at,
                                  uint64_t entry, uint64_t bitmap)
{
    const uint64_t offset = entry & QCOW2_L2E_OFFSET_MASK;

    if ((bitmap >> 32) & bitmap) {
        p->result.corruptions++;
        say_entry(ck, p, at, "ERROR",
                  "has a subcluster bitmap 0x%016llx with subclusters both "
                  "allocated and zero",
                  (unsigned long long)bitmap);
    }
    if ((offset & (ck->cluster_size - 1)) &&
        check_unaligned_entry(ck, p, at, entry, bitmap)) {
        return;
    }
    if (at->table->is_active) {
        p->result.allocated_clusters++;
        if (at->next_contiguous && offset != at->next_contiguous) {
            p->result.fragmented_clusters++;
        }
        at->next_contiguous = offset + ck->cluster_size;
    }
    if (ck->s->has_data_file) {
        if (ck->is_fast && at->table->is_active &&
            !(entry & QCOW2_OFLAG_COPIED)) {
            qcow2_check_fast_fail(ck); /* refcount 1 wants COPIED */
        }
    } else if (!count_entry_cluster(ck, p, at->table, entry, offset)) {
        say_entry(ck, p, at, "ERROR",
                  "points at data at 0x%llx, past the end of the file",
                  (unsigned long long)offset);
    }
}

/* Check one L2 entry (and its subcluster BITMAP, 0 without extended L2)
 * and count the clusters it references. */
static void check_l2_entry(struct check_state *ck, struct check_part *p,
                           struct l2_scan *at, uint64_t entry,
                           uint64_t bitmap)
{
    const enum check_entry_type type = qcow2_check_entry_type(ck, entry);

    if (type != ENTRY_COMPRESSED && (entry & L2E_STD_RESERVED_MASK)) {
        p->result.corruptions++;
        say_entry(ck, p, at, "ERROR", "has reserved bits set: 0x%016llx",
                  (unsigned long long)entry);
    }
    switch (type) {
    case ENTRY_COMPRESSED:
        check_compressed_entry(ck, p, at, entry, bitmap);
        break;
    case ENTRY_ZERO_ALLOC:
    case ENTRY_NORMAL:
        check_allocated_entry(ck, p, at, entry, bitmap);
        break;
    case ENTRY_ZERO_PLAIN:
        break;
    case ENTRY_UNALLOCATED:
        if (bitmap & L2_BITMAP_ALL_ALLOC) {
            p->result.corruptions++;
            say_entry(ck, p, at, "ERROR",
                      "has no host cluster but its subcluster bitmap "
                      "0x%016llx says allocated",
                      (unsigned long long)bitmap);
        }
        break;
    }
}

/*
 * The fast check's loop over the common entries of an active table: data
 * clusters with the COPIED flag, each right after the one before (what a
 * preallocated image is made of).  Counts entries [J, ...) of the N in
 * BUF while they are such, in one run; returns the index of the first
 * entry that is not (the caller checks it entry by entry).
 */
static uint64_t count_contiguous(struct check_state *ck, struct check_part *p,
                                 struct l2_scan *at, const uint8_t *buf,
                                 uint64_t j, uint64_t n)
{
    const uint64_t start = at->next_contiguous;
    uint64_t next = start;
    uint64_t k = j;

    while (k < n && load_be64(buf + k * 8) == (QCOW2_OFLAG_COPIED | next)) {
        next += ck->cluster_size;
        k++;
    }
    /* past the end of the file: entry by entry, to say so */
    if (k == j || (next > ck->file_size &&
                   next - ck->file_size >= ck->cluster_size)) {
        return j;
    }
    count_range_as(ck, p, start, next - start, true);
    p->result.allocated_clusters += k - j;
    at->next_contiguous = next;
    return k;
}

/* Check the L2 table at L2_OFF, entry L1_INDEX of table T. */
static int check_l2(struct check_state *ck, struct check_part *p,
                    const struct check_table *t, uint64_t l1_index,
                    uint64_t l2_off, uint8_t *buf)
{
    const struct qcow2_state *s = ck->s;
    const unsigned entry_bytes = s->l2_entry_bytes;

    if (l2_off >= ck->file_size) {
        return 0; /* reads as zeroes: nothing allocated */
    }
    /* only the part inside the file can hold entries */
    const uint64_t in_file = VIMG_MIN(ck->cluster_size, ck->file_size - l2_off);
    const uint64_t n = VIMG_DIV_ROUND_UP(in_file, entry_bytes);
    int ret = qcow2_check_read(ck, buf, (size_t)(n * entry_bytes), l2_off);
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not read the L2 table at 0x%llx: %s",
                        (unsigned long long)l2_off, vimg_last_error());
        return ret;
    }
    struct l2_scan at = {
        .table = t,
        .l1_index = l1_index,
        .l2_offset = l2_off,
    };
    const bool is_fast = ck->is_fast && t->is_active && entry_bytes == 8 &&
                         !s->has_data_file;
    for (uint64_t j = 0; j < n; j++) {
        if (is_fast && at.next_contiguous) {
            j = count_contiguous(ck, p, &at, buf, j, n);
            if (j == n) {
                break;
            }
        }
        const uint8_t *e = buf + j * entry_bytes;
        const uint64_t entry = load_be64(e);
        const uint64_t bitmap = s->has_subclusters ? load_be64(e + 8) : 0;
        if (entry == 0 && bitmap == 0) {
            continue;
        }
        at.index = j;
        at.guest_offset = l1_index * l2_span(ck) + j * ck->cluster_size;
        check_l2_entry(ck, p, &at, entry, bitmap);
    }
    return 0;
}

static void say_l1_entry(struct check_state *ck, struct check_part *p,
                         const struct check_table *t, uint64_t i,
                         const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Report a problem of entry I of table T: "ERROR: LABEL: entry I (guest
 * 0x...-0x...) " + FMT. */
static void say_l1_entry(struct check_state *ck, struct check_part *p,
                         const struct check_table *t, uint64_t i,
                         const char *fmt, ...)
{
    const uint64_t guest0 = i * l2_span(ck);
    char prefix[512];
    va_list ap;

    snprintf(prefix, sizeof(prefix), "ERROR: %s: entry %llu (guest "
             "0x%llx-0x%llx) ",
             t->label, (unsigned long long)i, (unsigned long long)guest0,
             (unsigned long long)(guest0 + l2_span(ck) - 1));
    va_start(ap, fmt);
    say_after(ck, p, prefix, fmt, ap);
    va_end(ap);
}

/* Entries [FIRST, END) of an L1 table. */
static int check_l1_range(struct check_state *ck, struct check_part *p,
                          const struct check_table *t, uint64_t first,
                          uint64_t end, uint8_t *buf)
{
    for (uint64_t i = first; i < end; i++) {
        const uint64_t entry = t->entries[i];
        const uint64_t l2_off = entry & QCOW2_L1E_OFFSET_MASK;
        if (!l2_off) {
            continue;
        }
        if (entry & L1E_RESERVED_MASK) {
            p->result.corruptions++;
            say_l1_entry(ck, p, t, i, "has reserved bits set: 0x%016llx",
                         (unsigned long long)entry);
        }
        if (ck->is_fast && qcow2_check_fast_has_failed(ck)) {
            return 0; /* the exact check does it all again */
        }
        if (!count_entry_cluster(ck, p, t, entry, l2_off)) {
            say_l1_entry(ck, p, t, i,
                         "points at an L2 table at 0x%llx, past the end of "
                         "the file",
                         (unsigned long long)l2_off);
        }
        if (l2_off & (ck->cluster_size - 1)) {
            p->result.corruptions++;
            say_l1_entry(ck, p, t, i,
                         "points at an L2 table at 0x%llx, which is not "
                         "cluster aligned",
                         (unsigned long long)l2_off);
        }
        int ret = check_l2(ck, p, t, i, l2_off, buf);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* One slice of an L1 table, scanned (or given the COPIED pass) by one
 * worker into its own part. */
struct check_slice {
    uint64_t first, end;
    struct check_part part;
};

/* The slices of one table, handed to the pool one item each. */
struct check_job {
    struct check_state *ck;
    const struct check_table *t;
    enum check_pass pass;
    struct check_slice *slices;
};

/* Scan slice ITEM with BUF (one cluster).  Its error stays in its part,
 * and 0 goes back to the pool: every slice runs whatever the others do,
 * so the counts and messages do not depend on the thread count. */
static int run_slice(void *opaque, uint8_t *buf, unsigned worker,
                     uint64_t item)
{
    const struct check_job *j = opaque;
    struct check_slice *sl = &j->slices[item];

    (void)worker;
    sl->part.err =
        j->pass == PASS_COUNT
            ? check_l1_range(j->ck, &sl->part, j->t, sl->first, sl->end, buf)
            : qcow2_check_copied_range(j->ck, &sl->part, j->t, sl->first,
                                       sl->end, j->pass == PASS_COPIED_REPAIR,
                                       buf);
    if (sl->part.err < 0) {
        snprintf(sl->part.err_msg, sizeof(sl->part.err_msg), "%s",
                 vimg_last_error());
    }
    return 0;
}

/* Run the job's N slices: one in the calling thread (its messages go
 * straight to the report callback), more on the check's pool (each
 * buffers its messages; the caller merges them in table order). */
static int run_slices(struct check_state *ck, struct check_job *j, unsigned n)
{
    if (n == 1) {
        uint8_t *buf = malloc((size_t)ck->cluster_size);
        if (!buf) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        run_slice(j, buf, 0, 0);
        free(buf);
        return 0;
    }
    if (!ck->pool) {
        int ret = vimg_pool_create(&ck->pool, ck->nb_threads);
        if (ret < 0) {
            return ret;
        }
    }
    const struct vimg_pool_job job = {
        .nb_items = n,
        .buf_bytes = (size_t)ck->cluster_size,
        .fn = run_slice,
        .opaque = j,
    };
    return vimg_pool_run(ck->pool, &job);
}

/*
 * Run PASS over table T on up to nb_threads threads, each over a slice
 * holding about the same number of L2 tables.
 */
int qcow2_check_run_pass(struct check_state *ck, struct check_part *p,
                         const struct check_table *t, enum check_pass pass)
{
    uint64_t nb_tables = 0;

    for (uint64_t i = 0; i < t->nb_entries; i++) {
        nb_tables += (t->entries[i] & QCOW2_L1E_OFFSET_MASK) != 0;
    }
    unsigned n = ck->nb_threads;
    if (pass == PASS_COPIED_REPAIR) {
        /* an L2 table shared by several L1 entries must be fixed by the
         * first and then seen fixed by the others, as in qemu's order */
        n = 1;
    }
    if (nb_tables / CHECK_MIN_TABLES_PER_THREAD < n) {
        n = (unsigned)VIMG_MAX(nb_tables / CHECK_MIN_TABLES_PER_THREAD, 1);
    }
    struct check_job job = {
        .ck = ck,
        .t = t,
        .pass = pass,
        .slices = calloc(n, sizeof(*job.slices)),
    };
    if (!job.slices) {
        p->result.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    /* cut the table into N slices of about nb_tables / N tables */
    uint64_t i = 0;
    for (unsigned k = 0; k < n; k++) {
        const uint64_t want = (nb_tables * (k + 1)) / n - (nb_tables * k) / n;
        uint64_t got = 0;
        job.slices[k].part.is_buffered = n > 1;
        job.slices[k].first = i;
        while (i < t->nb_entries && (got < want || k == n - 1)) {
            got += (t->entries[i] & QCOW2_L1E_OFFSET_MASK) != 0;
            i++;
        }
        job.slices[k].end = i;
    }
    int ret = run_slices(ck, &job, n);
    if (ret < 0) {
        /* no buffer or no pool: nothing was scanned */
        p->result.check_errors++;
        free(job.slices);
        return ret;
    }
    for (unsigned k = 0; k < n; k++) {
        qcow2_check_merge_part(ck, p, &job.slices[k].part);
    }
    free(job.slices);
    return p->err;
}

/* Read the NB entries of the L1 table at OFFSET (the part inside the
 * file; the rest reads as zeroes and is left out). */
int qcow2_check_load_table(struct check_state *ck, struct check_part *p,
                           uint64_t offset, uint64_t nb, uint64_t **out,
                           uint64_t *nb_out)
{
    *out = NULL;
    *nb_out = 0;
    if (offset >= ck->file_size || nb == 0) {
        return 0;
    }
    const uint64_t n =
        VIMG_MIN(nb, VIMG_DIV_ROUND_UP(ck->file_size - offset, 8));
    uint64_t *l1 = malloc(n ? (size_t)n * 8 : 1);
    if (!l1) {
        p->result.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = qcow2_check_read(ck, l1, (size_t)n * 8, offset);
    if (ret < 0) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: could not read the L1 table at 0x%llx: %s",
                        (unsigned long long)offset, vimg_last_error());
        free(l1);
        return ret;
    }
    load_be64_array(l1, n);
    *out = l1;
    *nb_out = n;
    return 0;
}

/* ------------------------------------------------------ other metadata */

static int check_bitmaps(struct check_state *ck, struct check_part *p)
{
    struct qcow2_state *s = ck->s;

    if (s->nb_bitmaps == 0) {
        return 0;
    }
    if (!count_range(ck, p, s->ext.bitmap_dir_offset, s->ext.bitmap_dir_size)) {
        qcow2_check_say(ck, p,
            "ERROR: the bitmap directory at 0x%llx (%llu bytes) is past the "
            "end of the file",
            (unsigned long long)s->ext.bitmap_dir_offset,
            (unsigned long long)s->ext.bitmap_dir_size);
    }
    for (size_t k = 0; k < s->nb_bitmaps; k++) {
        const struct qcow2_bitmap *b = &s->bitmaps[k];
        const uint64_t bytes = (uint64_t)b->table_size * 8;
        if (!count_range(ck, p, b->table_offset, bytes)) {
            qcow2_check_say(ck, p,
                "ERROR: the table of bitmap '%s' at 0x%llx is past the end "
                "of the file",
                b->name, (unsigned long long)b->table_offset);
        }
        if (b->table_offset >= ck->file_size || bytes == 0) {
            continue;
        }
        uint64_t *tab = NULL, n = 0;
        int ret = qcow2_check_load_table(ck, p, b->table_offset, b->table_size,
                                         &tab, &n);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = 0; i < n; i++) {
            const uint64_t e = tab[i];
            const uint64_t off = e & BME_OFFSET_MASK;
            if ((e & BME_RESERVED_MASK) ||
                (off &&
                 ((e & BME_ALL_ONES) || (off & (ck->cluster_size - 1))))) {
                p->result.corruptions++;
                qcow2_check_say(ck, p,
                    "ERROR: bitmap '%s': table entry %llu (0x%016llx) is "
                    "invalid (reserved bits or an unaligned offset)",
                    b->name, (unsigned long long)i, (unsigned long long)e);
                continue;
            }
            if (off && !count_range(ck, p, off, ck->cluster_size)) {
                qcow2_check_say(ck, p,
                    "ERROR: bitmap '%s': table entry %llu points at 0x%llx, "
                    "past the end of the file",
                    b->name, (unsigned long long)i, (unsigned long long)off);
            }
        }
        free(tab);
    }
    return 0;
}

/* The refcount blocks themselves (qemu's check_refblocks). */
static void check_refblocks(struct check_state *ck, struct check_part *p)
{
    const uint64_t rt_off = ck->s->h.refcount_table_offset;

    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t off = refblock_offset(ck, i);
        const uint64_t c = off >> ck->cluster_bits;
        if (off & (ck->cluster_size - 1)) {
            p->result.corruptions++;
            ck->is_rebuild_needed = true;
            qcow2_check_say(ck, p,
                "ERROR: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx, which is not cluster aligned",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off);
            continue;
        }
        if (c >= ck->nb_clusters) {
            ck->is_rebuild_needed = true;
            if (ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS) {
                /* qemu grows the file to hold the block, counts that as a
                 * fix, and then finds the block's cluster with refcount 0;
                 * the rebuild replaces all of it.  Count the same. */
                p->result.corruptions_fixed++;
                p->result.corruptions++;
            } else {
                p->result.corruptions++;
            }
            qcow2_check_say(
                ck, p,
                "%s: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx, past the end of the file",
                (ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS) ? "Repairing"
                                                              : "ERROR",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off);
            continue;
        }
        if (off == 0) {
            continue;
        }
        count_range(ck, p, off, ck->cluster_size);
        if (ck->is_fast) {
            continue; /* its count is looked at once all are counted */
        }
        const uint64_t n = count_get(ck, c);
        if (n != 1) {
            p->result.corruptions++;
            ck->is_rebuild_needed = true;
            qcow2_check_say(ck, p,
                "ERROR: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx that has %llu references: it "
                "overlaps other metadata or data",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off, (unsigned long long)n);
        }
    }
}

void qcow2_check_active_table(const struct check_state *ck,
                              struct check_table *t)
{
    const struct qcow2_state *s = ck->s;

    memset(t, 0, sizeof(*t));
    snprintf(t->label, sizeof(t->label), "active L1 table at 0x%llx",
             (unsigned long long)s->h.l1_table_offset);
    t->offset = s->h.l1_table_offset;
    t->entries = s->l1;
    /* entries past the end of the file read as zeroes */
    t->nb_entries =
        s->h.l1_table_offset < ck->file_size
            ? VIMG_MIN(s->h.l1_size,
                       VIMG_DIV_ROUND_UP(ck->file_size - s->h.l1_table_offset,
                                         8))
            : 0;
    t->is_active = true;
}

/* The active L1 table and its L2 tables. */
static int count_active_table(struct check_state *ck, struct check_part *p)
{
    const struct qcow2_state *s = ck->s;
    struct check_table t;

    qcow2_check_active_table(ck, &t);
    if (!count_range(ck, p, t.offset, (uint64_t)s->h.l1_size * 8)) {
        qcow2_check_say(ck, p,
                        "ERROR: the %s (%u entries) is past the end of the "
                        "file",
                        t.label, s->h.l1_size);
    }
    return qcow2_check_run_pass(ck, p, &t, PASS_COUNT);
}

/* The L1 table of snapshot SN and its L2 tables. */
static int count_snapshot(struct check_state *ck, struct check_part *p,
                          const struct qcow2_snapshot *sn)
{
    if (sn->l1_table_offset & (ck->cluster_size - 1)) {
        p->result.corruptions++;
        qcow2_check_say(ck, p,
                        "ERROR: snapshot %s ('%s'): its L1 table offset "
                        "0x%llx is not cluster aligned; the snapshot table "
                        "entry is corrupt",
                        sn->id, sn->name,
                        (unsigned long long)sn->l1_table_offset);
        return 0;
    }
    if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        p->result.corruptions++;
        qcow2_check_say(ck, p,
                        "ERROR: snapshot %s ('%s'): its L1 table of %u "
                        "entries is too large; the snapshot table entry is "
                        "corrupt",
                        sn->id, sn->name, sn->l1_size);
        return 0;
    }
    struct check_table t;
    memset(&t, 0, sizeof(t));
    snprintf(t.label, sizeof(t.label),
             "L1 table at 0x%llx of snapshot %s ('%s')",
             (unsigned long long)sn->l1_table_offset, sn->id, sn->name);
    t.offset = sn->l1_table_offset;
    if (!count_range(ck, p, t.offset, (uint64_t)sn->l1_size * 8)) {
        qcow2_check_say(ck, p,
                        "ERROR: the %s (%u entries) is past the end of the "
                        "file",
                        t.label, sn->l1_size);
    }
    uint64_t *l1 = NULL;
    int ret = qcow2_check_load_table(ck, p, t.offset, sn->l1_size, &l1,
                                     &t.nb_entries);
    if (ret < 0) {
        return ret;
    }
    t.entries = l1;
    ret = l1 ? qcow2_check_run_pass(ck, p, &t, PASS_COUNT) : 0;
    free(l1);
    return ret;
}

/* Every snapshot's tables, and the snapshot table. */
static int count_snapshots(struct check_state *ck, struct check_part *p)
{
    const struct qcow2_state *s = ck->s;

    if (s->has_data_file && s->nb_snapshots) {
        p->result.corruptions++;
        qcow2_check_say(ck, p,
                        "ERROR: the image has %zu snapshots and an external "
                        "data file, which cannot go together",
                        s->nb_snapshots);
    }
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        int ret = count_snapshot(ck, p, &s->snapshots[k]);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots &&
        !count_range(ck, p, s->h.snapshots_offset, s->snapshots_size)) {
        qcow2_check_say(ck, p,
                        "ERROR: the snapshot table at 0x%llx (%llu bytes) is "
                        "past the end of the file",
                        (unsigned long long)s->h.snapshots_offset,
                        (unsigned long long)s->snapshots_size);
    }
    return 0;
}

/* The refcount table and the encryption header. */
static void count_fixed_metadata(struct check_state *ck, struct check_part *p)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t reftable_bytes = (uint64_t)s->h.refcount_table_clusters
                                    << ck->cluster_bits;

    if (!count_range(ck, p, s->h.refcount_table_offset, reftable_bytes)) {
        qcow2_check_say(ck, p,
                        "ERROR: the refcount table at 0x%llx (%u clusters) "
                        "is past the end of the file",
                        (unsigned long long)s->h.refcount_table_offset,
                        s->h.refcount_table_clusters);
    }
    if (s->ext.has_crypto && s->ext.crypto_length &&
        !count_range(ck, p, s->ext.crypto_offset, s->ext.crypto_length)) {
        qcow2_check_say(ck, p,
                        "ERROR: the encryption header at 0x%llx (%llu bytes) "
                        "is past the end of the file",
                        (unsigned long long)s->ext.crypto_offset,
                        (unsigned long long)s->ext.crypto_length);
    }
}

/* Count every reference into ck->counts (qemu's calculate_refcounts). */
int qcow2_check_count_references(struct check_state *ck, struct check_part *p)
{
    if (ck->counts) {
        memset(ck->counts, 0, (size_t)ck->nb_counts * sizeof(uint16_t));
    }
    ck->nb_overflow = 0;
    p->used_end = 0;
    ck->is_rebuild_needed = false;

    count_range(ck, p, 0, ck->cluster_size); /* the header */
    int ret = count_active_table(ck, p);
    if (ret == 0) {
        ret = count_snapshots(ck, p);
    }
    if (ret < 0) {
        return ret;
    }
    count_fixed_metadata(ck, p);
    ret = check_bitmaps(ck, p);
    if (ret < 0) {
        return ret;
    }
    check_refblocks(ck, p);
    ck->used_end = p->used_end;
    return 0;
}
