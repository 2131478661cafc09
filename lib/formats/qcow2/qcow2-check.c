/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.c: consistency check and repair (qemu-img check).
 *
 * Every refcount is rebuilt from scratch into an array with one 16-bit
 * counter per host cluster (qcow2.txt, "Host cluster management"):
 * header, active and snapshot L1/L2 tables ("Cluster mapping"), data and
 * compressed clusters ("Compressed Clusters Descriptor"), the snapshot
 * table ("Snapshots"), refcount table and blocks, crypto header, bitmap
 * directory and bitmap tables ("Bitmaps").  The result is compared with
 * the stored refcounts; then the COPIED flags of the active tables are
 * checked against the stored refcounts.  What counts as one corruption or
 * one leak follows qemu-img check 7.2 (docs/formats/qcow2.md lists the
 * rules), so that the counts and exit codes agree.
 *
 * Memory: two bytes per cluster of the image file (counters that would
 * pass 0xffff on wide-refcount images go to a small side table), plus one
 * cluster-sized buffer per worker thread.  L2 tables of an L1 table are
 * scanned by worker threads, each over a slice of the L1 entries, with
 * atomic counters; each worker buffers its messages so that they come out
 * in table order whatever the thread count.
 *
 * Repairs, crash-safe order: refcounts that are too low are raised and
 * made durable before leaked ones are lowered; a rebuilt refcount
 * structure goes to fresh clusters past the end of the file and is made
 * durable before the header points at it (one 12-byte write); COPIED
 * flags are fixed only after the refcounts are right.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/qcow2/qcow2.h"
#include "vimg-endian.h"

/* qcow2.txt: reserved bits of the table entries */
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define BME_RESERVED_MASK 0xff000000000001feull
#define BME_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_ALL_ONES 1ull
#define L2_BITMAP_ALL_ALLOC 0xffffffffull

#define CK_MAX_THREADS 8
/* Below this many L2 tables in one L1 table, one thread does it all. */
#define CK_MIN_TABLES_PER_THREAD 16
/* Clusters with too low a refcount whose users are looked up and named,
 * and how many users each. */
#define CK_MAX_SUSPECTS 16
#define CK_USERS_PER_SUSPECT 4

enum ck_type {
    CK_UNALLOCATED,
    CK_ZERO_PLAIN,
    CK_ZERO_ALLOC,
    CK_NORMAL,
    CK_COMPRESSED,
};

/* Messages of one worker, in order, '\0'-separated. */
struct ck_msgs {
    char *buf;
    size_t len, cap;
};

/* What one worker (or the main thread) found. */
struct ck_part {
    struct vimg_check_result r;
    struct ck_msgs m;
    bool is_buffered;
    int err;
    char err_msg[256]; /* a worker's error message (thread local there) */
    uint64_t used_end; /* highest cluster this part referenced, + 1 */
};

struct ck_overflow {
    uint64_t cluster;
    uint64_t extra; /* the counter is 0xffff + extra */
};

struct ck {
    struct vimg_image *img;
    struct qcow2_state *s;
    unsigned fix;
    vimg_check_report_fn report;
    void *opaque;
    uint64_t cs;
    unsigned cb;
    uint64_t file_size;
    uint64_t nb_clusters;   /* clusters of the file */
    uint64_t cap_clusters;  /* entries in refs */
    uint16_t *refs;         /* computed refcounts, later stored ones */
    uint64_t used_end;      /* highest referenced cluster + 1 */
    bool has_broken_block;  /* a refcount table entry is unaligned */
    uint64_t cmp_end;       /* compare_end() when the COPIED pass runs */
    uint64_t refcount_max;
    pthread_mutex_t ovf_lock;
    struct ck_overflow *ovf;
    size_t nb_ovf, cap_ovf;
    uint64_t *reftable;     /* decoded, reftable_entries long */
    uint64_t reftable_entries;
    uint64_t rb_entries;
    bool is_rebuild_needed;
    uint64_t highest;
    unsigned nb_threads;
    /* clusters whose refcount is too low, whose users get named */
    struct ck_suspect {
        uint64_t cluster;
        unsigned nb_users;
        char users[CK_USERS_PER_SUSPECT][128];
    } *suspects;
    size_t nb_suspects;
};

/* One L1 table to scan. */
struct ck_l1 {
    char label[160];        /* "active L1 table at 0x..." */
    uint64_t offset;
    const uint64_t *l1;     /* decoded entries */
    uint64_t nb_entries;    /* of l1 (the part inside the file) */
    bool is_active;         /* count allocation info; fix COPIED */
};

/* ------------------------------------------------------------ messages */

static void say(struct ck *ck, struct ck_part *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(struct ck *ck, struct ck_part *p, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (!p->is_buffered) {
        if (ck->report) {
            ck->report(ck->opaque, line);
        }
        return;
    }
    const size_t n = strlen(line) + 1;
    if (p->m.len + n > p->m.cap) {
        size_t cap = p->m.cap ? p->m.cap * 2 : 4096;
        while (cap < p->m.len + n) {
            cap *= 2;
        }
        char *b = realloc(p->m.buf, cap);
        if (!b) {
            return; /* a lost message, not a wrong count */
        }
        p->m.buf = b;
        p->m.cap = cap;
    }
    memcpy(p->m.buf + p->m.len, line, n);
    p->m.len += n;
}

static void add_result(struct vimg_check_result *to,
                       const struct vimg_check_result *from)
{
    to->check_errors += from->check_errors;
    to->corruptions += from->corruptions;
    to->leaks += from->leaks;
    to->corruptions_fixed += from->corruptions_fixed;
    to->leaks_fixed += from->leaks_fixed;
    to->allocated_clusters += from->allocated_clusters;
    to->fragmented_clusters += from->fragmented_clusters;
    to->compressed_clusters += from->compressed_clusters;
}

/* Hand a worker's messages to the report callback, add its counts to P. */
static void merge_part(struct ck *ck, struct ck_part *p, struct ck_part *w)
{
    for (size_t off = 0; off < w->m.len;) {
        const char *line = w->m.buf + off;
        if (ck->report) {
            ck->report(ck->opaque, line);
        }
        off += strlen(line) + 1;
    }
    free(w->m.buf);
    w->m.buf = NULL;
    add_result(&p->r, &w->r);
    p->used_end = VIMG_MAX(p->used_end, w->used_end);
    if (w->err < 0 && p->err == 0) {
        /* the message was recorded in the worker's thread */
        p->err = vimg_error(w->err, "%s", w->err_msg);
    }
}

/* ------------------------------------------------------------ counters */

static uint64_t ovf_extra(struct ck *ck, uint64_t k)
{
    for (size_t i = 0; i < ck->nb_ovf; i++) {
        if (ck->ovf[i].cluster == k) {
            return ck->ovf[i].extra;
        }
    }
    return 0;
}

/*
 * Counters at or above CK_SAT live in the side table: refs[k] stays at
 * CK_SAT and ovf holds the rest.  CK_SAT leaves room above it for the
 * increments of every thread that may briefly overshoot and undo (see
 * ref_inc), so the 16-bit counter never wraps.
 */
#define CK_SAT 0xfff0u

/* The counter of cluster K (no thread may be incrementing). */
static inline uint64_t ref_get(struct ck *ck, uint64_t k)
{
    if (k >= ck->cap_clusters) {
        return 0;
    }
    const uint16_t v = ck->refs[k];
    return v < CK_SAT ? v : CK_SAT + ovf_extra(ck, k);
}

/* Set the side-table part of cluster K's counter to EXTRA. */
static void ovf_set(struct ck *ck, uint64_t k, uint64_t extra)
{
    for (size_t i = 0; i < ck->nb_ovf; i++) {
        if (ck->ovf[i].cluster == k) {
            ck->ovf[i].extra = extra;
            return;
        }
    }
    if (ck->nb_ovf == ck->cap_ovf) {
        const size_t cap = ck->cap_ovf ? ck->cap_ovf * 2 : 16;
        struct ck_overflow *o = realloc(ck->ovf, cap * sizeof(*o));
        if (!o) {
            return; /* keeps CK_SAT: off only for absurd images */
        }
        ck->ovf = o;
        ck->cap_ovf = cap;
    }
    ck->ovf[ck->nb_ovf].cluster = k;
    ck->ovf[ck->nb_ovf].extra = extra;
    ck->nb_ovf++;
}

static void ref_set(struct ck *ck, uint64_t k, uint64_t v)
{
    assert(k < ck->cap_clusters);
    if (v < CK_SAT) {
        ck->refs[k] = (uint16_t)v;
        return;
    }
    ck->refs[k] = CK_SAT;
    ovf_set(ck, k, v - CK_SAT);
}

/*
 * Add a reference to cluster K; false if its refcount would overflow the
 * image's refcount width.  Safe from many threads: one atomic add, undone
 * when the counter was already at the image's maximum or in the side
 * table (at most CK_MAX_THREADS such overshoots are in flight at once).
 */
static inline bool ref_inc(struct ck *ck, uint64_t k)
{
    const uint16_t old =
        __atomic_fetch_add(&ck->refs[k], (uint16_t)1, __ATOMIC_RELAXED);

    if (old < CK_SAT && old < ck->refcount_max) {
        return true;
    }
    __atomic_fetch_sub(&ck->refs[k], (uint16_t)1, __ATOMIC_RELAXED);
    if (old < CK_SAT) {
        return false; /* narrow refcounts: at the maximum */
    }
    bool is_ok = true;
    pthread_mutex_lock(&ck->ovf_lock);
    const uint64_t extra = ovf_extra(ck, k);
    if (CK_SAT + extra >= ck->refcount_max) {
        is_ok = false;
    } else {
        /* refs[k] is at CK_SAT (plus other threads' overshoots, which
         * they undo): leave it alone, a store could lose those undos */
        ovf_set(ck, k, extra + 1);
    }
    pthread_mutex_unlock(&ck->ovf_lock);
    return is_ok;
}

/*
 * Count one reference to every cluster [OFFSET, OFFSET+SIZE) touches.
 * Like qemu, the last cluster may reach less than one cluster past the end
 * of the file (it may be partly written); anything further is a corruption
 * the caller describes: returns false then (counted here).
 */
static bool inc_refs(struct ck *ck, struct ck_part *p, uint64_t offset,
                     uint64_t size)
{
    uint64_t end;

    if (size == 0) {
        return true;
    }
    if (vimg_add_overflows(offset, size, &end) ||
        (end > ck->file_size && end - ck->file_size >= ck->cs)) {
        p->r.corruptions++;
        return false;
    }
    const uint64_t first = offset >> ck->cb;
    const uint64_t last = (end - 1) >> ck->cb;
    if (last + 1 > p->used_end) {
        p->used_end = last + 1;
    }
    for (uint64_t k = first; k <= last; k++) {
        assert(k < ck->cap_clusters);
        if (!ref_inc(ck, k)) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: cluster 0x%llx is referenced more often than a "
                "%u-bit refcount can count; widen the refcounts with 'qemu-img "
                "amend -o refcount_bits=64' or copy the image with 'vimg "
                "convert'",
                (unsigned long long)(k << ck->cb),
                1u << ck->s->h.refcount_order);
        }
    }
    return true;
}

/* ---------------------------------------------------------------- I/O */

/* Read LEN bytes at OFF; bytes past the end of the file read as zeroes. */
static int read_at(struct ck *ck, void *buf, size_t len, uint64_t off)
{
    return vimg_io_pread(ck->img->io, buf, len, off);
}

static int write_at(struct ck *ck, const void *buf, size_t len, uint64_t off)
{
    int ret = vimg_io_pwrite(ck->img->io, buf, len, off);

    if (ret == 0 && off + len > ck->s->file_size) {
        ck->s->file_size = off + len;
    }
    return ret;
}

static int sync_file(struct ck *ck)
{
    return vimg_io_flush(ck->img->io);
}

/* ----------------------------------------------------- L1 and L2 scan */

static enum ck_type entry_type(const struct ck *ck, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return CK_COMPRESSED;
    }
    if ((e & QCOW2_OFLAG_ZERO) && !ck->s->has_subclusters) {
        return (e & QCOW2_L2E_OFFSET_MASK) ? CK_ZERO_ALLOC : CK_ZERO_PLAIN;
    }
    if (!(e & QCOW2_L2E_OFFSET_MASK)) {
        /* offset 0 is a real cluster of an external data file when the
         * COPIED flag says so (qcow2.txt) */
        return ck->s->has_data_file && (e & QCOW2_OFLAG_COPIED)
                   ? CK_NORMAL
                   : CK_UNALLOCATED;
    }
    return CK_NORMAL;
}

/* Guest bytes one L2 table maps. */
static uint64_t l2_span(const struct ck *ck)
{
    return ck->cs << ck->s->l2_bits;
}

/* Make the entry at [L2_OFF + J * entry size] read as zeroes
 * (qemu's fix for preallocated clusters that are not aligned). */
static int zero_l2_entry(struct ck *ck, uint64_t l2_off, uint64_t j,
                         uint64_t bitmap)
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
    int ret = write_at(ck, b, n, l2_off + j * ck->s->l2_entry_bytes);
    return ret == 0 ? sync_file(ck) : ret;
}

/* Check the L2 table at L2_OFF, entry L1_INDEX of table T. */
static int check_l2(struct ck *ck, struct ck_part *p, const struct ck_l1 *t,
                    uint64_t l1_index, uint64_t l2_off, uint8_t *buf)
{
    struct qcow2_state *s = ck->s;
    const uint64_t guest0 = l1_index * l2_span(ck);
    const unsigned eb = s->l2_entry_bytes;
    const uint64_t nb_entries = ck->cs / eb;
    uint64_t next_contiguous = 0;

    if (l2_off >= ck->file_size) {
        return 0; /* reads as zeroes: nothing allocated */
    }
    /* only the part inside the file can hold entries */
    const uint64_t in_file = VIMG_MIN(ck->cs, ck->file_size - l2_off);
    const uint64_t n = VIMG_DIV_ROUND_UP(in_file, eb);
    int ret = read_at(ck, buf, (size_t)(n * eb), l2_off);
    if (ret < 0) {
        p->r.check_errors++;
        say(ck, p, "ERROR: could not read the L2 table at 0x%llx: %s",
            (unsigned long long)l2_off, vimg_last_error());
        return ret;
    }
    (void)nb_entries;
#define L2CTX "L2 table at 0x%llx (%s entry %llu, guest 0x%llx-0x%llx)"
#define L2ARGS                                                                 \
    (unsigned long long)l2_off, t->label, (unsigned long long)l1_index,        \
        (unsigned long long)guest0,                                            \
        (unsigned long long)(guest0 + l2_span(ck) - 1)
    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = load_be64(buf + j * eb);
        const uint64_t bm = s->has_subclusters ? load_be64(buf + j * eb + 8)
                                               : 0;
        const enum ck_type type = entry_type(ck, e);
        const unsigned long long guest = guest0 + j * ck->cs;

        if (e == 0 && bm == 0) {
            continue;
        }
        if (type != CK_COMPRESSED && (e & L2E_STD_RESERVED_MASK)) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: " L2CTX ": entry %llu (guest 0x%llx) has reserved "
                "bits set: 0x%016llx",
                L2ARGS, (unsigned long long)j, guest, (unsigned long long)e);
        }
        switch (type) {
        case CK_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) is a "
                    "compressed cluster with the COPIED flag set, which "
                    "compressed clusters never have",
                    L2ARGS, (unsigned long long)j, guest);
                e &= ~QCOW2_OFLAG_COPIED;
            }
            if (s->has_data_file) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) is a "
                    "compressed cluster, but the image has an external data "
                    "file",
                    L2ARGS, (unsigned long long)j, guest);
                break;
            }
            if (bm) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) is a "
                    "compressed cluster with a non-zero subcluster bitmap "
                    "0x%016llx",
                    L2ARGS, (unsigned long long)j, guest,
                    (unsigned long long)bm);
                break;
            }
            const uint64_t coff = e & s->csize_mask;
            const uint64_t sectors =
                ((e >> s->csize_shift) & ((1ull << (ck->cb - 8)) - 1)) + 1;
            const uint64_t csize = sectors * 512 - (coff & 511);
            if (!inc_refs(ck, p, coff, csize)) {
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) points at "
                    "compressed data at 0x%llx (%llu bytes), past the end "
                    "of the file",
                    L2ARGS, (unsigned long long)j, guest,
                    (unsigned long long)coff, (unsigned long long)csize);
            }
            if (t->is_active) {
                p->r.allocated_clusters++;
                p->r.compressed_clusters++;
                /* compressed clusters count as fragmented, as in qemu */
                p->r.fragmented_clusters++;
            }
            break;
        }
        case CK_ZERO_ALLOC:
        case CK_NORMAL: {
            const uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            if ((bm >> 32) & bm) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) has a "
                    "subcluster bitmap 0x%016llx with subclusters both "
                    "allocated and zero",
                    L2ARGS, (unsigned long long)j, guest,
                    (unsigned long long)bm);
            }
            if (off & (ck->cs - 1)) {
                p->r.corruptions++;
                const bool has_data = s->has_subclusters
                                          ? (bm & L2_BITMAP_ALL_ALLOC) != 0
                                          : !(e & QCOW2_OFLAG_ZERO);
                if (!has_data) {
                    const bool is_fix = ck->fix & VIMG_CHECK_REPAIR_ERRORS;
                    say(ck, p,
                        "%s: " L2CTX ": entry %llu (guest 0x%llx) is a "
                        "preallocated zero cluster at 0x%llx, which is not "
                        "cluster aligned%s",
                        is_fix ? "Repairing" : "ERROR", L2ARGS,
                        (unsigned long long)j, guest,
                        (unsigned long long)off,
                        is_fix ? "; making it a plain zero cluster" : "");
                    if (is_fix) {
                        int r = zero_l2_entry(ck, l2_off, j, bm);
                        if (r == 0) {
                            p->r.corruptions--;
                            p->r.corruptions_fixed++;
                            continue;
                        }
                        p->r.check_errors++;
                        say(ck, p, "ERROR: could not write the L2 entry: %s",
                            vimg_last_error());
                    }
                } else {
                    say(ck, p,
                        "ERROR: " L2CTX ": entry %llu (guest 0x%llx) points "
                        "at data at 0x%llx, which is not cluster aligned",
                        L2ARGS, (unsigned long long)j, guest,
                        (unsigned long long)off);
                }
            }
            if (t->is_active) {
                p->r.allocated_clusters++;
                if (next_contiguous && off != next_contiguous) {
                    p->r.fragmented_clusters++;
                }
                next_contiguous = off + ck->cs;
            }
            if (!s->has_data_file && !inc_refs(ck, p, off, ck->cs)) {
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) points at "
                    "data at 0x%llx, past the end of the file",
                    L2ARGS, (unsigned long long)j, guest,
                    (unsigned long long)off);
            }
            break;
        }
        case CK_ZERO_PLAIN:
            break;
        case CK_UNALLOCATED:
            if (bm & L2_BITMAP_ALL_ALLOC) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: " L2CTX ": entry %llu (guest 0x%llx) has no host "
                    "cluster but its subcluster bitmap 0x%016llx says "
                    "allocated",
                    L2ARGS, (unsigned long long)j, guest,
                    (unsigned long long)bm);
            }
            break;
        }
    }
    return 0;
}

/* Entries [FIRST, END) of an L1 table. */
static int check_l1_range(struct ck *ck, struct ck_part *p,
                          const struct ck_l1 *t, uint64_t first, uint64_t end,
                          uint8_t *buf)
{
    for (uint64_t i = first; i < end; i++) {
        const uint64_t e = t->l1[i];
        const uint64_t l2_off = e & QCOW2_L1E_OFFSET_MASK;
        const uint64_t g0 = i * l2_span(ck);
        if (!l2_off) {
            continue;
        }
        if (e & L1E_RESERVED_MASK) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: %s: entry %llu (guest 0x%llx-0x%llx) has reserved "
                "bits set: 0x%016llx",
                t->label, (unsigned long long)i, (unsigned long long)g0,
                (unsigned long long)(g0 + l2_span(ck) - 1),
                (unsigned long long)e);
        }
        if (!inc_refs(ck, p, l2_off, ck->cs)) {
            say(ck, p,
                "ERROR: %s: entry %llu (guest 0x%llx-0x%llx) points at an L2 "
                "table at 0x%llx, past the end of the file",
                t->label, (unsigned long long)i, (unsigned long long)g0,
                (unsigned long long)(g0 + l2_span(ck) - 1),
                (unsigned long long)l2_off);
        }
        if (l2_off & (ck->cs - 1)) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: %s: entry %llu (guest 0x%llx-0x%llx) points at an L2 "
                "table at 0x%llx, which is not cluster aligned",
                t->label, (unsigned long long)i, (unsigned long long)g0,
                (unsigned long long)(g0 + l2_span(ck) - 1),
                (unsigned long long)l2_off);
        }
        int ret = check_l2(ck, p, t, i, l2_off, buf);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Work for one thread: a slice of an L1 table, or the COPIED pass. */
struct ck_job {
    struct ck *ck;
    const struct ck_l1 *t;
    uint64_t first, end;
    bool is_copied_pass;
    bool is_repair;
    struct ck_part part;
    pthread_t thread;
};

static int copied_range(struct ck *ck, struct ck_part *p, const struct ck_l1 *t,
                        uint64_t first, uint64_t end, bool is_repair,
                        uint8_t *buf);

static void *job_run(void *opaque)
{
    struct ck_job *j = opaque;
    uint8_t *buf = malloc((size_t)j->ck->cs);

    if (!buf) {
        j->part.err = vimg_error(-ENOMEM, "out of memory");
        j->part.r.check_errors++;
        snprintf(j->part.err_msg, sizeof(j->part.err_msg), "out of memory");
        return NULL;
    }
    j->part.err = j->is_copied_pass
                      ? copied_range(j->ck, &j->part, j->t, j->first, j->end,
                                     j->is_repair, buf)
                      : check_l1_range(j->ck, &j->part, j->t, j->first, j->end,
                                       buf);
    if (j->part.err < 0) {
        snprintf(j->part.err_msg, sizeof(j->part.err_msg), "%s",
                 vimg_last_error());
    }
    free(buf);
    return NULL;
}

/*
 * Run the L2 scan (or the COPIED pass) of table T on up to nb_threads
 * threads, each over a slice holding about the same number of L2 tables.
 */
static int run_jobs(struct ck *ck, struct ck_part *p, const struct ck_l1 *t,
                    bool is_copied_pass, bool is_repair)
{
    uint64_t nb_tables = 0;

    for (uint64_t i = 0; i < t->nb_entries; i++) {
        nb_tables += (t->l1[i] & QCOW2_L1E_OFFSET_MASK) != 0;
    }
    unsigned n = ck->nb_threads;
    if (is_copied_pass && is_repair) {
        /* an L2 table shared by several L1 entries must be fixed by the
         * first and then seen fixed by the others, as in qemu's order */
        n = 1;
    }
    if (nb_tables / CK_MIN_TABLES_PER_THREAD < n) {
        n = (unsigned)VIMG_MAX(nb_tables / CK_MIN_TABLES_PER_THREAD, 1);
    }
    struct ck_job *jobs = calloc(n, sizeof(*jobs));
    if (!jobs) {
        p->r.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    /* cut the table into N slices of about nb_tables / N tables */
    uint64_t i = 0;
    for (unsigned k = 0; k < n; k++) {
        const uint64_t want = (nb_tables * (k + 1)) / n - (nb_tables * k) / n;
        uint64_t got = 0;
        jobs[k].ck = ck;
        jobs[k].t = t;
        jobs[k].is_copied_pass = is_copied_pass;
        jobs[k].is_repair = is_repair;
        jobs[k].part.is_buffered = n > 1;
        jobs[k].first = i;
        while (i < t->nb_entries && (got < want || k == n - 1)) {
            got += (t->l1[i] & QCOW2_L1E_OFFSET_MASK) != 0;
            i++;
        }
        jobs[k].end = i;
    }
    if (n == 1) {
        jobs[0].part.is_buffered = false;
        job_run(&jobs[0]);
    } else {
        unsigned started = 0;
        for (unsigned k = 0; k < n; k++) {
            if (pthread_create(&jobs[k].thread, NULL, job_run, &jobs[k]) != 0) {
                break;
            }
            started++;
        }
        for (unsigned k = 0; k < started; k++) {
            pthread_join(jobs[k].thread, NULL);
        }
        for (unsigned k = started; k < n; k++) {
            job_run(&jobs[k]); /* no thread to be had: do it here */
        }
    }
    for (unsigned k = 0; k < n; k++) {
        merge_part(ck, p, &jobs[k].part);
    }
    free(jobs);
    return p->err;
}

/* Read the NB entries of the L1 table at OFFSET (the part inside the
 * file; the rest reads as zeroes and is left out). */
static int load_l1(struct ck *ck, struct ck_part *p, uint64_t offset,
                   uint64_t nb, uint64_t **out, uint64_t *nb_out)
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
        p->r.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = read_at(ck, l1, (size_t)n * 8, offset);
    if (ret < 0) {
        p->r.check_errors++;
        say(ck, p, "ERROR: could not read the L1 table at 0x%llx: %s",
            (unsigned long long)offset, vimg_last_error());
        free(l1);
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        l1[i] = load_be64((const uint8_t *)&l1[i]);
    }
    *out = l1;
    *nb_out = n;
    return 0;
}

/* ------------------------------------------------------ other metadata */

static int check_bitmaps(struct ck *ck, struct ck_part *p)
{
    struct qcow2_state *s = ck->s;

    if (s->nb_bitmaps == 0) {
        return 0;
    }
    if (!inc_refs(ck, p, s->ext.bitmap_dir_offset, s->ext.bitmap_dir_size)) {
        say(ck, p,
            "ERROR: the bitmap directory at 0x%llx (%llu bytes) is past the "
            "end of the file",
            (unsigned long long)s->ext.bitmap_dir_offset,
            (unsigned long long)s->ext.bitmap_dir_size);
    }
    for (size_t k = 0; k < s->nb_bitmaps; k++) {
        const struct qcow2_bitmap *b = &s->bitmaps[k];
        const uint64_t bytes = (uint64_t)b->table_size * 8;
        if (!inc_refs(ck, p, b->table_offset, bytes)) {
            say(ck, p,
                "ERROR: the table of bitmap '%s' at 0x%llx is past the end "
                "of the file",
                b->name, (unsigned long long)b->table_offset);
        }
        if (b->table_offset >= ck->file_size || bytes == 0) {
            continue;
        }
        uint64_t *tab = NULL, n = 0;
        int ret = load_l1(ck, p, b->table_offset, b->table_size, &tab, &n);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = 0; i < n; i++) {
            const uint64_t e = tab[i];
            const uint64_t off = e & BME_OFFSET_MASK;
            if ((e & BME_RESERVED_MASK) ||
                (off && ((e & BME_ALL_ONES) || (off & (ck->cs - 1))))) {
                p->r.corruptions++;
                say(ck, p,
                    "ERROR: bitmap '%s': table entry %llu (0x%016llx) is "
                    "invalid (reserved bits or an unaligned offset)",
                    b->name, (unsigned long long)i, (unsigned long long)e);
                continue;
            }
            if (off && !inc_refs(ck, p, off, ck->cs)) {
                say(ck, p,
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
static void check_refblocks(struct ck *ck, struct ck_part *p)
{
    const uint64_t rt_off = ck->s->h.refcount_table_offset;

    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t off = ck->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        const uint64_t c = off >> ck->cb;
        if (off & (ck->cs - 1)) {
            p->r.corruptions++;
            ck->is_rebuild_needed = true;
            say(ck, p,
                "ERROR: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx, which is not cluster aligned",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off);
            continue;
        }
        if (c >= ck->nb_clusters) {
            ck->is_rebuild_needed = true;
            if (ck->fix & VIMG_CHECK_REPAIR_ERRORS) {
                /* qemu grows the file to hold the block, counts that as a
                 * fix, and then finds the block's cluster with refcount 0;
                 * the rebuild replaces all of it.  Count the same. */
                p->r.corruptions_fixed++;
                p->r.corruptions++;
            } else {
                p->r.corruptions++;
            }
            say(ck, p,
                "%s: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx, past the end of the file",
                (ck->fix & VIMG_CHECK_REPAIR_ERRORS) ? "Repairing" : "ERROR",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off);
            continue;
        }
        if (off == 0) {
            continue;
        }
        inc_refs(ck, p, off, ck->cs);
        const uint64_t n = ref_get(ck, c);
        if (n != 1) {
            p->r.corruptions++;
            ck->is_rebuild_needed = true;
            say(ck, p,
                "ERROR: refcount table at 0x%llx: entry %llu points at a "
                "refcount block at 0x%llx that has %llu references: it "
                "overlaps other metadata or data",
                (unsigned long long)rt_off, (unsigned long long)i,
                (unsigned long long)off, (unsigned long long)n);
        }
    }
}

/* Rebuild every refcount into ck->refs (qemu's calculate_refcounts). */
static int calculate(struct ck *ck, struct ck_part *p)
{
    struct qcow2_state *s = ck->s;
    int ret;

    memset(ck->refs, 0, (size_t)ck->cap_clusters * sizeof(uint16_t));
    ck->nb_ovf = 0;
    p->used_end = 0;
    ck->is_rebuild_needed = false;

    /* header */
    inc_refs(ck, p, 0, ck->cs);

    /* active L1 table and its L2 tables */
    struct ck_l1 t;
    memset(&t, 0, sizeof(t));
    snprintf(t.label, sizeof(t.label), "active L1 table at 0x%llx",
             (unsigned long long)s->h.l1_table_offset);
    t.offset = s->h.l1_table_offset;
    t.l1 = s->l1;
    t.nb_entries =
        s->h.l1_table_offset < ck->file_size
            ? VIMG_MIN(s->h.l1_size,
                       VIMG_DIV_ROUND_UP(ck->file_size - s->h.l1_table_offset,
                                         8))
            : 0;
    t.is_active = true;
    if (!inc_refs(ck, p, t.offset, (uint64_t)s->h.l1_size * 8)) {
        say(ck, p, "ERROR: the %s (%u entries) is past the end of the file",
            t.label, s->h.l1_size);
    }
    ret = run_jobs(ck, p, &t, false, false);
    if (ret < 0) {
        return ret;
    }

    /* snapshots */
    if (s->has_data_file && s->nb_snapshots) {
        p->r.corruptions++;
        say(ck, p, "ERROR: the image has %zu snapshots and an external data "
                   "file, which cannot go together",
            s->nb_snapshots);
    }
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        if (sn->l1_table_offset & (ck->cs - 1)) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: snapshot %s ('%s'): its L1 table offset 0x%llx is "
                "not cluster aligned; the snapshot table entry is corrupt",
                sn->id, sn->name, (unsigned long long)sn->l1_table_offset);
            continue;
        }
        if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            p->r.corruptions++;
            say(ck, p,
                "ERROR: snapshot %s ('%s'): its L1 table of %u entries is "
                "too large; the snapshot table entry is corrupt",
                sn->id, sn->name, sn->l1_size);
            continue;
        }
        struct ck_l1 st;
        memset(&st, 0, sizeof(st));
        snprintf(st.label, sizeof(st.label),
                 "L1 table at 0x%llx of snapshot %s ('%s')",
                 (unsigned long long)sn->l1_table_offset, sn->id, sn->name);
        st.offset = sn->l1_table_offset;
        if (!inc_refs(ck, p, st.offset, (uint64_t)sn->l1_size * 8)) {
            say(ck, p, "ERROR: the %s (%u entries) is past the end of the "
                       "file",
                st.label, sn->l1_size);
        }
        uint64_t *l1 = NULL;
        ret = load_l1(ck, p, st.offset, sn->l1_size, &l1, &st.nb_entries);
        if (ret < 0) {
            return ret;
        }
        st.l1 = l1;
        ret = l1 ? run_jobs(ck, p, &st, false, false) : 0;
        free(l1);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots &&
        !inc_refs(ck, p, s->h.snapshots_offset, s->snapshots_size)) {
        say(ck, p,
            "ERROR: the snapshot table at 0x%llx (%llu bytes) is past the "
            "end of the file",
            (unsigned long long)s->h.snapshots_offset,
            (unsigned long long)s->snapshots_size);
    }

    /* refcount table */
    if (!inc_refs(ck, p, s->h.refcount_table_offset,
                  (uint64_t)s->h.refcount_table_clusters << ck->cb)) {
        say(ck, p,
            "ERROR: the refcount table at 0x%llx (%u clusters) is past the "
            "end of the file",
            (unsigned long long)s->h.refcount_table_offset,
            s->h.refcount_table_clusters);
    }

    /* crypto header */
    if (s->ext.has_crypto && s->ext.crypto_length &&
        !inc_refs(ck, p, s->ext.crypto_offset, s->ext.crypto_length)) {
        say(ck, p,
            "ERROR: the encryption header at 0x%llx (%llu bytes) is past "
            "the end of the file",
            (unsigned long long)s->ext.crypto_offset,
            (unsigned long long)s->ext.crypto_length);
    }

    ret = check_bitmaps(ck, p);
    if (ret < 0) {
        return ret;
    }
    check_refblocks(ck, p);
    ck->used_end = p->used_end;
    return 0;
}

/* ----------------------------------------------------- stored refcounts */

/* Clusters compared: the file's, or one more when a reference reaches
 * into the cluster after the end (qemu grows its array the same way). */
static uint64_t compare_end(const struct ck *ck)
{
    return VIMG_MAX(ck->nb_clusters, ck->used_end);
}

/* Is refcount table entry IDX's block unreadable (unaligned)? */
static bool is_block_broken(const struct ck *ck, uint64_t idx)
{
    return idx < ck->reftable_entries &&
           (ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK & (ck->cs - 1));
}

/* The stored refcount of cluster C, read from the file: -EIO when its
 * refcount block is not aligned. */
static int stored_from_file(struct ck *ck, uint64_t c, uint64_t *out)
{
    const uint64_t idx = c / ck->rb_entries;
    *out = 0;
    if (idx >= ck->reftable_entries) {
        return 0;
    }
    const uint64_t off = ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK;
    if (!off) {
        return 0;
    }
    if (off & (ck->cs - 1)) {
        return -EIO;
    }
    const uint64_t i = c % ck->rb_entries;
    const unsigned order = ck->s->h.refcount_order;
    const uint64_t byte = (i << order) / 8;
    uint8_t b[8];
    const size_t len = order >= 3 ? (size_t)1 << (order - 3) : 1;
    int ret = read_at(ck, b, len, off + byte);
    if (ret < 0) {
        return ret;
    }
    /* qcow2_refcount_get wants the block; fake one around the entry */
    *out = order >= 3 ? qcow2_refcount_get(b, 0, order)
                      : qcow2_refcount_get(b, i % (8u >> order), order);
    return 0;
}

/*
 * Compare the computed refcounts with the stored ones (qemu's
 * compare_refcounts).  FIX: the repairs allowed now.  With IS_FINAL, the
 * repairs are written and ck->refs ends up holding the stored refcounts
 * (for the COPIED pass); else nothing is written.
 */
static int compare(struct ck *ck, struct ck_part *p, unsigned fix,
                   bool is_final)
{
    const uint64_t end = compare_end(ck);
    const uint64_t rbe = ck->rb_entries;
    const unsigned order = ck->s->h.refcount_order;
    uint8_t *block = malloc((size_t)ck->cs);
    uint8_t *orig = malloc((size_t)ck->cs);
    int ret = 0;
    bool has_lowered = false;

    if (!block || !orig) {
        free(block);
        free(orig);
        p->r.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    ck->highest = 0;
    for (uint64_t idx = 0; idx * rbe < end; idx++) {
        const uint64_t first = idx * rbe;
        const uint64_t last = VIMG_MIN(end, first + rbe);
        const uint64_t off = idx < ck->reftable_entries
                                 ? ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK
                                 : 0;
        if (off & (ck->cs - 1)) {
            for (uint64_t c = first; c < last; c++) {
                p->r.check_errors++;
                say(ck, p,
                    "ERROR: cannot get the refcount of cluster %llu "
                    "(0x%llx): its refcount block at 0x%llx is not cluster "
                    "aligned",
                    (unsigned long long)c, (unsigned long long)(c << ck->cb),
                    (unsigned long long)off);
            }
            continue;
        }
        if (off) {
            ret = read_at(ck, block, (size_t)ck->cs, off);
            if (ret < 0) {
                p->r.check_errors++;
                say(ck, p, "ERROR: could not read the refcount block at "
                           "0x%llx: %s",
                    (unsigned long long)off, vimg_last_error());
                goto out;
            }
            memcpy(orig, block, (size_t)ck->cs);
        }
        bool is_raised = false;
        for (uint64_t c = first; c < last; c++) {
            if (order == 4 && off) {
                /* the common width: skip equal entries quickly */
                while (c < last && ck->refs[c] < CK_SAT &&
                       load_be16(block + 2 * (c - first)) == ck->refs[c]) {
                    if (ck->refs[c]) {
                        ck->highest = c;
                    }
                    c++;
                }
                if (c == last) {
                    break;
                }
            }
            const uint64_t stored =
                off ? qcow2_refcount_get(block, c - first, order) : 0;
            const uint64_t computed = ref_get(ck, c);
            if (stored || computed) {
                ck->highest = c;
            }
            if (stored == computed) {
                continue;
            }
            uint64_t *fixed = NULL;
            if (stored == 0) {
                ck->is_rebuild_needed = true;
            } else if (stored > computed &&
                       (fix & VIMG_CHECK_REPAIR_LEAKS)) {
                fixed = &p->r.leaks_fixed;
            } else if (stored < computed &&
                       (fix & VIMG_CHECK_REPAIR_ERRORS)) {
                fixed = &p->r.corruptions_fixed;
            }
            say(ck, p,
                "%s cluster %llu (0x%llx): refcount %llu in the refcount "
                "block at 0x%llx, but %llu reference%s",
                fixed                ? "Repairing"
                : stored < computed ? "ERROR:"
                                     : "Leaked",
                (unsigned long long)c, (unsigned long long)(c << ck->cb),
                (unsigned long long)stored, (unsigned long long)off,
                (unsigned long long)computed, computed == 1 ? "" : "s");
            if (fixed) {
                (*fixed)++;
                if (stored < computed) {
                    qcow2_refcount_set(block, c - first, order, computed);
                    is_raised = true;
                } else {
                    has_lowered = true;
                }
                continue;
            }
            if (stored < computed) {
                p->r.corruptions++;
                if (ck->suspects && ck->nb_suspects < CK_MAX_SUSPECTS) {
                    ck->suspects[ck->nb_suspects++].cluster = c;
                }
            } else {
                p->r.leaks++;
            }
            if (is_final) {
                /* keep what the file says, for the COPIED pass */
                ref_set(ck, c, stored);
            }
        }
        if (is_final && is_raised) {
            ret = write_at(ck, block, (size_t)ck->cs, off);
            if (ret < 0) {
                p->r.check_errors++;
                say(ck, p, "ERROR: could not write the refcount block at "
                           "0x%llx: %s",
                    (unsigned long long)off, vimg_last_error());
                goto out;
            }
        }
    }
    if (!is_final || !has_lowered) {
        if (is_final && fix) {
            ret = sync_file(ck);
        }
        goto out;
    }
    /* Raised refcounts are durable before any is lowered: a crash in
     * between leaves leaks, never a cluster in use with too low a count. */
    ret = sync_file(ck);
    for (uint64_t idx = 0; ret == 0 && idx * rbe < end; idx++) {
        const uint64_t first = idx * rbe;
        const uint64_t last = VIMG_MIN(end, first + rbe);
        const uint64_t off = idx < ck->reftable_entries
                                 ? ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK
                                 : 0;
        if (!off || (off & (ck->cs - 1))) {
            continue;
        }
        ret = read_at(ck, block, (size_t)ck->cs, off);
        bool is_lowered = false;
        for (uint64_t c = first; ret == 0 && c < last; c++) {
            const uint64_t stored = qcow2_refcount_get(block, c - first, order);
            const uint64_t computed = ref_get(ck, c);
            if (stored > computed) {
                qcow2_refcount_set(block, c - first, order, computed);
                is_lowered = true;
            }
        }
        if (ret == 0 && is_lowered) {
            ret = write_at(ck, block, (size_t)ck->cs, off);
        }
    }
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret < 0) {
        p->r.check_errors++;
        say(ck, p, "ERROR: could not write refcount blocks: %s",
            vimg_last_error());
    }
out:
    free(block);
    free(orig);
    return ret;
}

/* ------------------------------------------------------------- rebuild */

static int grow_refs(struct ck *ck, uint64_t n)
{
    if (n <= ck->cap_clusters) {
        return 0;
    }
    uint16_t *r = realloc(ck->refs, (size_t)n * sizeof(uint16_t));
    if (!r) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memset(r + ck->cap_clusters, 0,
           (size_t)(n - ck->cap_clusters) * sizeof(uint16_t));
    ck->refs = r;
    ck->cap_clusters = n;
    return 0;
}

/*
 * Write a new refcount structure for the computed refcounts: refcount
 * blocks and table in fresh clusters past the end of everything, made
 * durable, then the header switched to them in one write.  The old
 * structure is leaked (the caller frees it).
 */
static int rebuild(struct ck *ck, struct ck_part *p)
{
    struct qcow2_state *s = ck->s;
    const uint64_t rbe = ck->rb_entries;
    const uint64_t per_rt_cluster = ck->cs / 8;
    const uint64_t start =
        VIMG_MAX(compare_end(ck), VIMG_DIV_ROUND_UP(s->file_size, ck->cs));
    uint64_t nb_blocks = VIMG_DIV_ROUND_UP(start, rbe);
    uint64_t rt_clusters = VIMG_DIV_ROUND_UP(nb_blocks, per_rt_cluster);
    uint8_t *buf = NULL;
    int ret;

    say(ck, p, "Rebuilding refcount structure");
    for (;;) {
        const uint64_t end = start + nb_blocks + rt_clusters;
        const uint64_t b = VIMG_DIV_ROUND_UP(end, rbe);
        const uint64_t t = VIMG_DIV_ROUND_UP(b, per_rt_cluster);
        if (b == nb_blocks && t == rt_clusters) {
            break;
        }
        nb_blocks = b;
        rt_clusters = t;
    }
    if ((rt_clusters << ck->cb) > QCOW2_MAX_REFTABLE_BYTES) {
        p->r.check_errors++;
        return vimg_error(-EFBIG, "%s: the new refcount table would exceed "
                                  "8 MiB",
                          ck->img->filename);
    }
    const uint64_t end = start + nb_blocks + rt_clusters;
    ret = grow_refs(ck, end);
    if (ret < 0) {
        p->r.check_errors++;
        return ret;
    }
    for (uint64_t c = start; c < end; c++) {
        ref_set(ck, c, 1);
    }

    /* refcount blocks, contiguous: written in batches of up to 1 MiB */
    const uint64_t batch = VIMG_MAX(1, (1u << 20) >> ck->cb);
    buf = malloc((size_t)(batch << ck->cb));
    if (!buf) {
        p->r.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < nb_blocks; i += batch) {
        const uint64_t n = VIMG_MIN(batch, nb_blocks - i);
        memset(buf, 0, (size_t)(n << ck->cb));
        for (uint64_t k = 0; k < n; k++) {
            uint8_t *b = buf + (k << ck->cb);
            const uint64_t first = (i + k) * rbe;
            const uint64_t last = VIMG_MIN(end, first + rbe);
            for (uint64_t c = first; c < last; c++) {
                const uint64_t v = ref_get(ck, c);
                if (v) {
                    qcow2_refcount_set(b, c - first, s->h.refcount_order, v);
                }
            }
        }
        ret = write_at(ck, buf, (size_t)(n << ck->cb),
                       (start + i) << ck->cb);
        if (ret < 0) {
            goto fail;
        }
    }
    /* refcount table */
    free(buf);
    const uint64_t rt_entries = rt_clusters * per_rt_cluster;
    buf = calloc((size_t)rt_entries, 8);
    uint64_t *table = calloc((size_t)rt_entries, sizeof(uint64_t));
    if (!buf || !table) {
        free(table);
        p->r.check_errors++;
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < nb_blocks; i++) {
        table[i] = (start + i) << ck->cb;
        store_be64(buf + i * 8, table[i]);
    }
    const uint64_t rt_off = (start + nb_blocks) << ck->cb;
    ret = write_at(ck, buf, (size_t)rt_entries * 8, rt_off);
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret < 0) {
        free(table);
        goto fail;
    }
    /* switch the header: table offset and size are adjacent fields */
    uint8_t h[12];
    store_be64(h, rt_off);
    store_be32(h + 8, (uint32_t)rt_clusters);
    ret = write_at(ck, h, sizeof(h), QCOW2_HDR_REFTABLE_OFFSET);
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret < 0) {
        free(table);
        goto fail;
    }
    s->h.refcount_table_offset = rt_off;
    s->h.refcount_table_clusters = (uint32_t)rt_clusters;
    free(ck->reftable);
    ck->reftable = table;
    ck->reftable_entries = rt_entries;
    ck->has_broken_block = false;
    ck->file_size = s->file_size;
    ck->nb_clusters = VIMG_DIV_ROUND_UP(ck->file_size, ck->cs);
    ret = grow_refs(ck, ck->nb_clusters + 2);
    if (ret < 0) {
        p->r.check_errors++;
    }
    goto out;
fail:
    p->r.check_errors++;
    say(ck, p, "ERROR: could not write the new refcount structure: %s",
        vimg_last_error());
out:
    free(buf);
    return ret;
}

/* --------------------------------------------------------- COPIED flags */

/* Stored refcount of cluster C after compare(): -EIO if unreadable. */
static inline int stored_refcount(struct ck *ck, uint64_t c,
                                  uint64_t *out)
{
    if (ck->has_broken_block && is_block_broken(ck, c / ck->rb_entries)) {
        return -EIO;
    }
    if (c < ck->cmp_end) {
        *out = ref_get(ck, c);
        return 0;
    }
    return stored_from_file(ck, c, out);
}

/* Would writing CS bytes at OFF overwrite fixed metadata? */
static bool overlaps_metadata(struct ck *ck, uint64_t off)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t c = off >> ck->cb;
    const uint64_t c_last = (off + ck->cs - 1) >> ck->cb;
    const struct {
        uint64_t off, bytes;
    } r[] = {
        {0, ck->cs},
        {s->h.l1_table_offset, (uint64_t)s->h.l1_size * 8},
        {s->h.refcount_table_offset,
         (uint64_t)s->h.refcount_table_clusters << ck->cb},
        {s->h.snapshots_offset, s->nb_snapshots ? s->snapshots_size : 0},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
        if (r[i].bytes == 0) {
            continue;
        }
        const uint64_t a = r[i].off >> ck->cb;
        const uint64_t b = (r[i].off + r[i].bytes - 1) >> ck->cb;
        if (c <= b && c_last >= a) {
            return true;
        }
    }
    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t rb = (ck->reftable[i] & QCOW2_REFT_OFFSET_MASK) >>
                            ck->cb;
        if (rb && rb >= c && rb <= c_last) {
            return true;
        }
    }
    return false;
}

/* The COPIED flags of entries [FIRST, END) of the active L1 table and of
 * their L2 tables (qemu's check_oflag_copied). */
static int copied_range(struct ck *ck, struct ck_part *p, const struct ck_l1 *t,
                        uint64_t first, uint64_t end, bool is_repair,
                        uint8_t *buf)
{
    struct qcow2_state *s = ck->s;
    const unsigned eb = s->l2_entry_bytes;

    for (uint64_t i = first; i < end; i++) {
        const uint64_t l1e = s->l1[i];
        const uint64_t l2_off = l1e & QCOW2_L1E_OFFSET_MASK;
        const uint64_t g0 = i * l2_span(ck);
        uint64_t rc;
        if (!l2_off || stored_refcount(ck, l2_off >> ck->cb, &rc) < 0) {
            continue;
        }
        if ((rc == 1) != ((l1e & QCOW2_OFLAG_COPIED) != 0)) {
            p->r.corruptions++;
            say(ck, p,
                "%s: %s: entry %llu (guest 0x%llx-0x%llx) has the COPIED "
                "flag %s, but its L2 table at 0x%llx has refcount %llu",
                is_repair ? "Repairing" : "ERROR", t->label,
                (unsigned long long)i, (unsigned long long)g0,
                (unsigned long long)(g0 + l2_span(ck) - 1),
                (l1e & QCOW2_OFLAG_COPIED) ? "set" : "clear",
                (unsigned long long)l2_off, (unsigned long long)rc);
            if (is_repair) {
                const uint64_t v = rc == 1 ? l1e | QCOW2_OFLAG_COPIED
                                           : l1e & ~QCOW2_OFLAG_COPIED;
                uint8_t b[8];
                store_be64(b, v);
                int ret = write_at(ck, b, 8, s->h.l1_table_offset + i * 8);
                if (ret < 0) {
                    p->r.check_errors++;
                    say(ck, p, "ERROR: could not write the L1 entry: %s",
                        vimg_last_error());
                    return ret;
                }
                s->l1[i] = v;
                p->r.corruptions--;
                p->r.corruptions_fixed++;
            }
        }
        int ret = read_at(ck, buf, (size_t)ck->cs, l2_off);
        if (ret < 0) {
            p->r.check_errors++;
            say(ck, p, "ERROR: could not read the L2 table at 0x%llx: %s",
                (unsigned long long)l2_off, vimg_last_error());
            return ret;
        }
        uint64_t nb_dirty = 0;
        for (uint64_t j = 0; j < ck->cs / eb; j++) {
            const uint64_t e = load_be64(buf + j * eb);
            const enum ck_type type = entry_type(ck, e);
            if (type != CK_NORMAL && type != CK_ZERO_ALLOC) {
                continue;
            }
            const uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
            if (s->has_data_file) {
                rc = 1;
            } else if (stored_refcount(ck, off >> ck->cb, &rc) < 0) {
                continue;
            }
            if ((rc == 1) == ((e & QCOW2_OFLAG_COPIED) != 0)) {
                continue;
            }
            p->r.corruptions++;
            say(ck, p,
                "%s: L2 table at 0x%llx (%s entry %llu): entry %llu (guest "
                "0x%llx) has the COPIED flag %s, but its cluster at 0x%llx "
                "has refcount %llu",
                is_repair ? "Repairing" : "ERROR", (unsigned long long)l2_off,
                t->label, (unsigned long long)i, (unsigned long long)j,
                (unsigned long long)(g0 + j * ck->cs),
                (e & QCOW2_OFLAG_COPIED) ? "set" : "clear",
                (unsigned long long)off, (unsigned long long)rc);
            if (is_repair) {
                store_be64(buf + j * eb, rc == 1 ? e | QCOW2_OFLAG_COPIED
                                                 : e & ~QCOW2_OFLAG_COPIED);
                nb_dirty++;
            }
        }
        if (nb_dirty) {
            if (overlaps_metadata(ck, l2_off)) {
                p->r.check_errors++;
                say(ck, p,
                    "ERROR: could not write the L2 table at 0x%llx: it "
                    "overlaps other metadata",
                    (unsigned long long)l2_off);
                return vimg_error(-EIO, "%s: L2 table at 0x%llx overlaps "
                                        "other metadata",
                                  ck->img->filename,
                                  (unsigned long long)l2_off);
            }
            ret = write_at(ck, buf, (size_t)ck->cs, l2_off);
            if (ret < 0) {
                p->r.check_errors++;
                say(ck, p, "ERROR: could not write the L2 table at 0x%llx: "
                           "%s",
                    (unsigned long long)l2_off, vimg_last_error());
                return ret;
            }
            p->r.corruptions -= nb_dirty;
            p->r.corruptions_fixed += nb_dirty;
        }
    }
    return 0;
}

static int check_copied(struct ck *ck, struct ck_part *p)
{
    struct qcow2_state *s = ck->s;
    bool is_repair;

    if (ck->fix & VIMG_CHECK_REPAIR_ERRORS) {
        is_repair = true;
    } else if (ck->fix & VIMG_CHECK_REPAIR_LEAKS) {
        /* only when the refcounts are known to be right */
        is_repair = !p->r.check_errors && !p->r.corruptions && !p->r.leaks;
    } else {
        is_repair = false;
    }
    struct ck_l1 t;
    memset(&t, 0, sizeof(t));
    ck->cmp_end = compare_end(ck);
    snprintf(t.label, sizeof(t.label), "active L1 table at 0x%llx",
             (unsigned long long)s->h.l1_table_offset);
    t.offset = s->h.l1_table_offset;
    t.l1 = s->l1;
    /* entries past the end of the file read as zeroes */
    t.nb_entries =
        s->h.l1_table_offset < ck->file_size
            ? VIMG_MIN(s->h.l1_size,
                       VIMG_DIV_ROUND_UP(ck->file_size - s->h.l1_table_offset,
                                         8))
            : 0;
    t.is_active = true;
    int ret = run_jobs(ck, p, &t, true, is_repair);
    if (ret == 0 && is_repair) {
        ret = sync_file(ck);
    }
    return ret;
}

/* ------------------------------------------------------ snapshot table */

/* Set the stored refcount of cluster C (its refcount block must exist). */
static int set_stored(struct ck *ck, uint64_t c, uint64_t v, uint8_t *block)
{
    const uint64_t idx = c / ck->rb_entries;
    const uint64_t off = ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK;
    int ret = read_at(ck, block, (size_t)ck->cs, off);

    if (ret == 0) {
        qcow2_refcount_set(block, c % ck->rb_entries,
                           ck->s->h.refcount_order, v);
        ret = write_at(ck, block, (size_t)ck->cs, off);
    }
    return ret;
}

/* Can cluster C get a refcount (its refcount block exists and is sane)? */
static bool is_covered(const struct ck *ck, uint64_t c)
{
    const uint64_t idx = c / ck->rb_entries;
    if (idx >= ck->reftable_entries) {
        return false;
    }
    const uint64_t off = ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK;
    return off && !(off & (ck->cs - 1)) && off < ck->file_size;
}

/*
 * Give the incomplete version 3 snapshot table entries their 16 bytes of
 * extra data (disk size: the current one, as qemu does) and write the
 * table anew: refcounts of the new clusters first, then the table, then
 * the header (entry count and offset, adjacent fields: one write), then
 * the old table's clusters are released.  Returns the entries fixed.
 */
static int fix_snapshot_table(struct ck *ck, struct ck_part *p)
{
    struct qcow2_state *s = ck->s;
    uint8_t *table = NULL, *block = NULL;
    int ret = 0;

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
    const size_t len = qcow2_snapshots_encode(s->snapshots, s->nb_snapshots,
                                              NULL);
    const uint64_t n = VIMG_DIV_ROUND_UP(len, ck->cs);
    table = calloc(1, (size_t)(n << ck->cb));
    block = malloc((size_t)ck->cs);
    if (!table || !block) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    qcow2_snapshots_encode(s->snapshots, s->nb_snapshots, table);

    /* n free clusters with a refcount block to count them */
    const uint64_t limit = ck->reftable_entries * ck->rb_entries;
    uint64_t start = 0, run = 0;
    for (uint64_t c = 1; c < limit && run < n; c++) {
        if (ref_get(ck, c) == 0 && is_covered(ck, c)) {
            start = run ? start : c;
            run++;
        } else {
            run = 0;
        }
    }
    if (run < n) {
        ret = vimg_error(-ENOSPC, "%s: no room for a new snapshot table "
                                  "under the existing refcount blocks",
                         ck->img->filename);
        goto out;
    }
    for (uint64_t c = start; c < start + n && ret == 0; c++) {
        ret = set_stored(ck, c, 1, block);
    }
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret == 0) {
        ret = write_at(ck, table, (size_t)(n << ck->cb), start << ck->cb);
    }
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret < 0) {
        goto out;
    }
    uint8_t h[12];
    store_be32(h, (uint32_t)s->nb_snapshots);
    store_be64(h + 4, start << ck->cb);
    ret = write_at(ck, h, sizeof(h), QCOW2_HDR_NB_SNAPSHOTS);
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret < 0) {
        goto out;
    }
    const uint64_t old_off = s->h.snapshots_offset;
    const uint64_t old_size = s->snapshots_size;
    s->h.snapshots_offset = start << ck->cb;
    s->snapshots_size = len;
    for (uint64_t c = start; c < start + n; c++) {
        if (c < ck->cap_clusters) {
            ref_set(ck, c, 1);
        }
    }
    /* the old table's clusters lose the table's reference */
    if (old_size && old_off < ck->file_size) {
        const uint64_t first = old_off >> ck->cb;
        const uint64_t last = (old_off + old_size - 1) >> ck->cb;
        for (uint64_t c = first; c <= last && c < ck->cmp_end && ret == 0;
             c++) {
            const uint64_t v = ref_get(ck, c);
            if (v && is_covered(ck, c)) {
                ref_set(ck, c, v - 1);
                ret = set_stored(ck, c, v - 1, block);
            }
        }
        if (ret == 0) {
            ret = sync_file(ck);
        }
    }
out:
    if (ret < 0) {
        p->r.check_errors++;
        say(ck, p, "ERROR: could not rewrite the snapshot table: %s",
            vimg_last_error());
    }
    free(table);
    free(block);
    return ret;
}

/* ------------------------------------------------------------- driver */

static int read_reftable(struct ck *ck, struct ck_part *p)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t n =
        ((uint64_t)s->h.refcount_table_clusters << ck->cb) / 8;
    const uint64_t off = s->h.refcount_table_offset;
    /* entries past the end of the file read as zeroes: leave them out */
    const uint64_t in_file =
        off < ck->file_size
            ? VIMG_MIN(n, VIMG_DIV_ROUND_UP(ck->file_size - off, 8))
            : 0;
    uint64_t *t = NULL, got = 0;
    int ret = load_l1(ck, p, off, in_file, &t, &got);

    if (ret < 0) {
        return ret;
    }
    free(ck->reftable);
    ck->reftable = t;
    ck->reftable_entries = got;
    for (uint64_t i = 0; i < got; i++) {
        ck->has_broken_block |= is_block_broken(ck, i);
    }
    return 0;
}

static unsigned thread_count(void)
{
    const char *env = getenv("VIMG_CHECK_THREADS");
    long n = env && *env ? strtol(env, NULL, 10)
                         : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    return (unsigned)VIMG_MIN(n, CK_MAX_THREADS);
}

/* Clear the dirty and corrupt bits (v3 header). */
static int mark_clean(struct ck *ck)
{
    struct qcow2_state *s = ck->s;
    const uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;

    if (s->h.version < 3 || !(s->h.incompatible_features & bits)) {
        return 0;
    }
    uint8_t b[8];
    store_be64(b, s->h.incompatible_features & ~bits);
    int ret = sync_file(ck);
    if (ret == 0) {
        ret = write_at(ck, b, sizeof(b), QCOW2_HDR_INCOMPAT);
    }
    if (ret == 0) {
        ret = sync_file(ck);
    }
    if (ret == 0) {
        s->h.incompatible_features &= ~bits;
    }
    return ret;
}

/* ------------------------------------------------- naming the users */

static struct ck_suspect *suspect_of(struct ck *ck, uint64_t c)
{
    size_t lo = 0, hi = ck->nb_suspects;

    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (ck->suspects[mid].cluster < c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < ck->nb_suspects && ck->suspects[lo].cluster == c
               ? &ck->suspects[lo]
               : NULL;
}

static void user(struct ck *ck, uint64_t off, uint64_t size, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));

/* Record "what" as a user of the suspects among the clusters of
 * [OFF, OFF+SIZE). */
static void user(struct ck *ck, uint64_t off, uint64_t size, const char *fmt,
                 ...)
{
    uint64_t end;

    if (size == 0 || vimg_add_overflows(off, size, &end)) {
        return;
    }
    for (uint64_t c = off >> ck->cb; c <= (end - 1) >> ck->cb; c++) {
        if (c > ck->suspects[ck->nb_suspects - 1].cluster) {
            return;
        }
        struct ck_suspect *sp = suspect_of(ck, c);
        if (!sp || sp->nb_users >= CK_USERS_PER_SUSPECT) {
            continue;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sp->users[sp->nb_users++], sizeof(sp->users[0]), fmt, ap);
        va_end(ap);
    }
}

static void l1_users(struct ck *ck, const char *label, const uint64_t *l1,
                     uint64_t nb, uint8_t *buf)
{
    const struct qcow2_state *s = ck->s;
    const unsigned eb = s->l2_entry_bytes;

    for (uint64_t i = 0; i < nb; i++) {
        const uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        const uint64_t g0 = i * l2_span(ck);
        if (!l2_off || l2_off >= ck->file_size) {
            continue;
        }
        user(ck, l2_off, ck->cs, "the L2 table for guest 0x%llx-0x%llx (%s)",
             (unsigned long long)g0,
             (unsigned long long)(g0 + l2_span(ck) - 1), label);
        if (read_at(ck, buf, (size_t)ck->cs, l2_off) < 0) {
            continue;
        }
        for (uint64_t j = 0; j < ck->cs / eb; j++) {
            const uint64_t e = load_be64(buf + j * eb);
            const uint64_t g = g0 + j * ck->cs;
            switch (entry_type(ck, e)) {
            case CK_COMPRESSED: {
                const uint64_t coff = e & s->csize_mask;
                const uint64_t sectors =
                    ((e >> s->csize_shift) & ((1ull << (ck->cb - 8)) - 1)) +
                    1;
                user(ck, coff, sectors * 512 - (coff & 511),
                     "compressed data of guest 0x%llx (%s)",
                     (unsigned long long)g, label);
                break;
            }
            case CK_NORMAL:
            case CK_ZERO_ALLOC:
                if (!s->has_data_file) {
                    user(ck, e & QCOW2_L2E_OFFSET_MASK, ck->cs,
                         "data of guest 0x%llx-0x%llx (%s)",
                         (unsigned long long)g,
                         (unsigned long long)(g + ck->cs - 1), label);
                }
                break;
            default:
                break;
            }
        }
    }
}

static int cmp_suspect(const void *a, const void *b)
{
    const uint64_t x = ((const struct ck_suspect *)a)->cluster;
    const uint64_t y = ((const struct ck_suspect *)b)->cluster;
    return x < y ? -1 : x > y;
}

/* Say who uses the clusters whose refcount is too low, so the user knows
 * which guest data or table is at risk. */
static void name_users(struct ck *ck, struct ck_part *p)
{
    const struct qcow2_state *s = ck->s;

    if (ck->nb_suspects == 0) {
        return;
    }
    qsort(ck->suspects, ck->nb_suspects, sizeof(*ck->suspects), cmp_suspect);
    uint8_t *buf = malloc((size_t)ck->cs);
    if (!buf) {
        return;
    }
    user(ck, 0, ck->cs, "the image header");
    user(ck, s->h.l1_table_offset, (uint64_t)s->h.l1_size * 8,
         "the active L1 table");
    user(ck, s->h.refcount_table_offset,
         (uint64_t)s->h.refcount_table_clusters << ck->cb,
         "the refcount table");
    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t rb = ck->reftable[i] & QCOW2_REFT_OFFSET_MASK;
        if (rb) {
            user(ck, rb, ck->cs, "refcount block %llu",
                 (unsigned long long)i);
        }
    }
    if (s->nb_snapshots) {
        user(ck, s->h.snapshots_offset, s->snapshots_size,
             "the snapshot table");
    }
    if (s->ext.has_crypto) {
        user(ck, s->ext.crypto_offset, s->ext.crypto_length,
             "the encryption header");
    }
    if (s->nb_bitmaps) {
        user(ck, s->ext.bitmap_dir_offset, s->ext.bitmap_dir_size,
             "the bitmap directory");
        for (size_t k = 0; k < s->nb_bitmaps; k++) {
            user(ck, s->bitmaps[k].table_offset,
                 (uint64_t)s->bitmaps[k].table_size * 8,
                 "the table of bitmap '%s'", s->bitmaps[k].name);
        }
    }
    const uint64_t nb_active =
        s->h.l1_table_offset < ck->file_size
            ? VIMG_MIN(s->h.l1_size,
                       VIMG_DIV_ROUND_UP(ck->file_size - s->h.l1_table_offset,
                                         8))
            : 0;
    l1_users(ck, "active image", s->l1, nb_active, buf);
    for (size_t k = 0; k < s->nb_snapshots; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        char label[96];
        uint64_t *l1 = NULL, n = 0;
        struct ck_part scratch;
        memset(&scratch, 0, sizeof(scratch));
        if ((sn->l1_table_offset & (ck->cs - 1)) ||
            (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            continue;
        }
        snprintf(label, sizeof(label), "snapshot %s", sn->id);
        user(ck, sn->l1_table_offset, (uint64_t)sn->l1_size * 8,
             "the L1 table of %s", label);
        if (load_l1(ck, &scratch, sn->l1_table_offset, sn->l1_size, &l1,
                    &n) == 0) {
            l1_users(ck, label, l1, n, buf);
        }
        free(l1);
    }
    free(buf);
    for (size_t i = 0; i < ck->nb_suspects; i++) {
        const struct ck_suspect *sp = &ck->suspects[i];
        char line[CK_USERS_PER_SUSPECT * 130 + 1] = "";
        size_t used = 0;
        for (unsigned u = 0; u < sp->nb_users; u++) {
            int n = snprintf(line + used, sizeof(line) - used, "%s%s",
                             u ? "; " : "", sp->users[u]);
            if (n < 0 || (size_t)n >= sizeof(line) - used) {
                break;
            }
            used += (size_t)n;
        }
        say(ck, p, "  cluster %llu (0x%llx) with too low a refcount is used "
                   "by: %s",
            (unsigned long long)sp->cluster,
            (unsigned long long)(sp->cluster << ck->cb), line);
    }
}

static int check_refcounts(struct ck *ck, struct ck_part *p)
{
    /* errors reading the old refcount structure end with a rebuild */
    const uint64_t base_errors = p->r.check_errors;
    int ret = read_reftable(ck, p);

    if (ret < 0) {
        return ret;
    }
    ret = calculate(ck, p);
    if (ret < 0) {
        return ret;
    }
    const struct vimg_check_result pre = p->r;
    const bool is_fix_errors = ck->fix & VIMG_CHECK_REPAIR_ERRORS;
    /* read only: this compare is the last one, it may keep stored values */
    ck->suspects = calloc(CK_MAX_SUSPECTS, sizeof(*ck->suspects));
    ret = compare(ck, p, 0, ck->fix == 0);
    if (ret < 0) {
        return ret;
    }
    name_users(ck, p);
    free(ck->suspects);
    ck->suspects = NULL;
    ck->nb_suspects = 0;
    if (ck->is_rebuild_needed && is_fix_errors) {
        const struct vimg_check_result old = p->r;
        ret = rebuild(ck, p);
        if (ret < 0) {
            return ret;
        }
        /* The new structure is right for the old computed refcounts;
         * count everything again against it.  The old structure is now
         * leaked: free it without counting those leaks. */
        p->r.check_errors = base_errors; /* calculate counts its own */
        p->r.corruptions = 0;
        p->r.leaks = 0;
        p->r.allocated_clusters = 0;
        p->r.fragmented_clusters = 0;
        p->r.compressed_clusters = 0;
        ret = calculate(ck, p);
        if (ret < 0) {
            return ret;
        }
        const struct vimg_check_result saved = p->r;
        memset(&p->r, 0, sizeof(p->r));
        ret = compare(ck, p, ck->fix & VIMG_CHECK_REPAIR_LEAKS, true);
        if (ck->is_rebuild_needed) {
            say(ck, p, "ERROR: the rebuilt refcount structure is still "
                       "broken");
        }
        const uint64_t fresh_leaks = p->r.leaks;
        const uint64_t errs = p->r.check_errors;
        p->r = saved;
        p->r.check_errors += errs;
        if (ret < 0) {
            return ret;
        }
        if (p->r.corruptions < old.corruptions) {
            p->r.corruptions_fixed += old.corruptions - p->r.corruptions;
        }
        if (p->r.leaks < old.leaks) {
            p->r.leaks_fixed += old.leaks - p->r.leaks;
        }
        p->r.leaks += fresh_leaks;
    } else if (ck->fix) {
        if (ck->is_rebuild_needed) {
            p->r.check_errors++;
            say(ck, p, "ERROR: the refcount structure must be rebuilt, which "
                       "only '-r all' does");
            return vimg_error(-EIO, "%s: the refcount structure must be "
                                    "rebuilt ('-r all')",
                              ck->img->filename);
        }
        if (p->r.leaks || p->r.corruptions) {
            p->r = pre;
            ret = compare(ck, p, ck->fix, true);
            if (ret < 0) {
                return ret;
            }
        }
    }
    ret = check_copied(ck, p);
    if (ret < 0) {
        return ret;
    }
    return 0;
}

int qcow2_check(struct vimg_image *img, unsigned flags,
                struct vimg_check_result *res, vimg_check_report_fn report,
                void *opaque)
{
    struct qcow2_state *s = img->priv;
    struct ck ck;
    struct ck_part p;
    int ret;

    memset(&ck, 0, sizeof(ck));
    memset(&p, 0, sizeof(p));
    ck.img = img;
    ck.s = s;
    ck.fix = flags;
    ck.report = report;
    ck.opaque = opaque;
    ck.cb = s->cluster_bits;
    ck.cs = s->cluster_size;
    ck.nb_threads = thread_count();
    pthread_mutex_init(&ck.ovf_lock, NULL);
    ck.rb_entries = (ck.cs * 8) >> s->h.refcount_order;
    ck.refcount_max = s->h.refcount_order == 6
                          ? UINT64_MAX
                          : (1ull << (1u << s->h.refcount_order)) - 1;

    pthread_mutex_lock(&s->lock);
    ret = vimg_io_get_size(img->io, &s->file_size);
    if (ret < 0) {
        p.r.check_errors++;
        goto out;
    }
    ck.file_size = s->file_size;
    ck.nb_clusters = VIMG_DIV_ROUND_UP(ck.file_size, ck.cs);
    ck.cap_clusters = ck.nb_clusters + 2;
    ck.refs = calloc((size_t)ck.cap_clusters, sizeof(uint16_t));
    if (!ck.refs) {
        p.r.check_errors++;
        ret = vimg_error(-ENOMEM, "%s: out of memory for %llu refcounts",
                         img->filename, (unsigned long long)ck.nb_clusters);
        goto out;
    }
    p.r.total_clusters = VIMG_DIV_ROUND_UP(s->h.size, ck.cs);

    if (s->check_load_error) {
        p.r.check_errors++;
        say(&ck, &p, "ERROR: %s", s->check_load_msg);
        ret = vimg_error(s->check_load_error, "%s", s->check_load_msg);
        goto out;
    }
    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        say(&ck, &p, "Note: the image is dirty (lazy refcounts, not closed "
                     "cleanly): its refcounts may be stale%s",
            flags & VIMG_CHECK_REPAIR_ERRORS ? "" : "; 'vimg check -r all' "
                                                    "repairs them");
    }
    if (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
        say(&ck, &p, "Note: the image is marked corrupt%s",
            flags & VIMG_CHECK_REPAIR_ERRORS ? "" : "; 'vimg check -r all' "
                                                    "repairs it");
    }
    /* v3 snapshot table entries need the virtual disk size (qcow2.txt,
     * "Snapshots": extra data of at least 16 bytes) */
    uint64_t nb_incomplete = 0;
    for (size_t k = 0; k < s->nb_snapshots && s->h.version >= 3; k++) {
        if (!s->snapshots[k].has_disk_size) {
            nb_incomplete++;
            say(&ck, &p,
                "%s: snapshot table entry %zu (snapshot %s, '%s') is "
                "incomplete: version 3 images need 16 bytes of extra data",
                (flags & VIMG_CHECK_REPAIR_ERRORS) ? "Repairing" : "ERROR",
                k, s->snapshots[k].id, s->snapshots[k].name);
        }
    }

    /* check -r opens the image for writing, as qemu-img check -r does */
    if (flags) {
        ret = qcow2_clear_unknown_autoclear(img);
        if (ret < 0) {
            p.r.check_errors++;
            goto out;
        }
    }
    ret = check_refcounts(&ck, &p);
    if (ret < 0) {
        goto out;
    }
    p.r.corruptions += nb_incomplete;
    /* the snapshot table is fixed only once the refcounts are right */
    if (nb_incomplete && (flags & VIMG_CHECK_REPAIR_ERRORS) &&
        p.r.check_errors == 0) {
        ret = fix_snapshot_table(&ck, &p);
        if (ret < 0) {
            goto out;
        }
        p.r.corruptions -= nb_incomplete;
        p.r.corruptions_fixed += nb_incomplete;
    }
    p.r.image_end_offset = (ck.highest + 1) << ck.cb;
    if (flags && p.r.check_errors == 0 && p.r.corruptions == 0) {
        ret = mark_clean(&ck);
        if (ret < 0) {
            p.r.check_errors++;
        }
    }
out:
    pthread_mutex_unlock(&s->lock);
    *res = p.r;
    free(ck.refs);
    free(ck.ovf);
    free(ck.suspects);
    free(ck.reftable);
    pthread_mutex_destroy(&ck.ovf_lock);
    return ret;
}
