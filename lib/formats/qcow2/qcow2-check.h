/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.h: what the files of the qcow2 check share; private to them
 * (nothing outside qcow2-check*.c includes it).
 *
 *   qcow2-check.c            entry point, messages, the order of the passes,
 *                            naming the users of clusters counted too low
 *   qcow2-check-scan.c       counting every reference: header, L1/L2 tables
 *                            (on worker threads), snapshots, refcount
 *                            structure, crypto header, bitmaps
 *   qcow2-check-refcounts.c  the counters, and counted against stored
 *                            refcounts
 *   qcow2-check-fast.c       the fast check of a clean image: references
 *                            as runs of clusters, no counter per cluster
 *   qcow2-check-repair.c     fixes: refcounts, COPIED flags, rebuilding the
 *                            refcount structure, the snapshot table
 */
#ifndef VIMG_QCOW2_CHECK_H
#define VIMG_QCOW2_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/qcow2/qcow2.h"

struct vimg_pool;

/* qcow2.txt: reserved bits of the table entries */
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_STD_RESERVED_MASK 0x3f000000000001feull
#define BME_RESERVED_MASK 0xff000000000001feull
#define BME_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_ALL_ONES 1ull
#define L2_BITMAP_ALL_ALLOC 0xffffffffull

#define CHECK_MAX_THREADS 8
/* Below this many L2 tables in one L1 table, one thread does it all. */
#define CHECK_MIN_TABLES_PER_THREAD 16
/* Clusters with too low a refcount whose users are looked up and named,
 * and how many users each. */
#define CHECK_MAX_SUSPECTS 16
#define CHECK_USERS_PER_SUSPECT 4

enum check_entry_type {
    ENTRY_UNALLOCATED,
    ENTRY_ZERO_PLAIN,
    ENTRY_ZERO_ALLOC,
    ENTRY_NORMAL,
    ENTRY_COMPRESSED,
};

/* Clusters [FIRST, END) referenced once more each.  IS_COPIED: referenced
 * by an active table entry with the COPIED flag set, so the clusters must
 * end up with a refcount of exactly 1. */
struct check_run {
    uint64_t first, end;
    bool is_copied;
};

/* The runs one worker (or the main thread) counted, in the order seen. */
struct check_runs {
    struct check_run *v;
    size_t len, cap;
};

/* Messages of one worker, in order, '\0'-separated. */
struct check_messages {
    char *buf;
    size_t len, cap;
};

/* What one worker (or the main thread) found. */
struct check_part {
    struct vimg_check_result result;
    struct check_messages messages;
    bool is_buffered;  /* messages kept for later (a worker's), not said */
    int err;
    char err_msg[256]; /* a worker's error message (thread local there) */
    uint64_t used_end; /* highest cluster this part referenced, + 1 */
    struct check_runs runs; /* the fast check's references */
};

/* A counter past COUNT_SATURATED: the rest of it. */
struct check_overflow {
    uint64_t cluster;
    uint64_t extra; /* the counter is COUNT_SATURATED + extra */
};

/* A cluster whose refcount is too low, and who uses it. */
struct check_suspect {
    uint64_t cluster;
    unsigned nb_users;
    char users[CHECK_USERS_PER_SUSPECT][128];
};

/* One check of one image. */
struct check_state {
    struct vimg_image *img;
    struct qcow2_state *s;
    unsigned repair_flags; /* VIMG_CHECK_REPAIR_* */
    vimg_check_report_fn report;
    void *opaque;
    uint64_t cluster_size;
    unsigned cluster_bits;
    uint64_t file_size;
    uint64_t nb_clusters;   /* clusters of the file */

    /* one counter per cluster: references counted, and after the last
     * compare the stored refcounts (for the COPIED pass) */
    uint16_t *counts;
    uint64_t nb_counts;     /* entries in counts */
    uint64_t refcount_max;  /* what the image's refcount width holds */
    pthread_mutex_t overflow_lock;
    struct check_overflow *overflow; /* counters past COUNT_SATURATED */
    size_t nb_overflow, cap_overflow;
    uint64_t used_end;      /* highest referenced cluster + 1 */
    uint64_t compared_end;  /* qcow2_check_compare_end() when the COPIED
                             * pass runs */
    uint64_t last_used_cluster; /* highest with a stored or counted
                                 * refcount (image end offset) */

    /* the stored refcount structure */
    uint64_t *reftable;     /* decoded, reftable_entries long */
    uint64_t reftable_entries;
    uint64_t refblock_entries; /* refcounts per refcount block */
    bool has_broken_block;  /* a refcount table entry is unaligned */
    bool is_rebuild_needed;

    unsigned nb_threads;
    struct vimg_pool *pool; /* for tables split over threads, made once */

    /* The fast check (qcow2-check-fast.c): references are counted as runs
     * (ck->counts stays NULL); any message, error or doubt sets
     * is_fast_failed (atomically), and the exact check runs instead. */
    bool is_fast;
    bool is_fast_failed;
    uint64_t nb_runs;       /* runs in every part (atomic) */
    uint64_t max_runs;      /* more than this: not worth it, fail */

    /* clusters whose refcount is too low, whose users get named */
    struct check_suspect *suspects;
    size_t nb_suspects;
};

/* One L1 table to scan. */
struct check_table {
    char label[160];        /* "active L1 table at 0x..." */
    uint64_t offset;
    const uint64_t *entries; /* decoded */
    uint64_t nb_entries;    /* the part inside the file */
    bool is_active;         /* count allocation info; fix COPIED */
};

/* What the workers do over their slices of an L1 table. */
enum check_pass {
    PASS_COUNT,         /* count references, check the entries */
    PASS_COPIED,        /* check COPIED flags against stored refcounts */
    PASS_COPIED_REPAIR, /* the same, fixing the flags */
};

/* Guest bytes one L2 table maps. */
static inline uint64_t l2_span(const struct check_state *ck)
{
    return ck->cluster_size << ck->s->l2_bits;
}

/* The offset of refcount block IDX in the stored refcount table (0:
 * none, or past the table). */
static inline uint64_t refblock_offset(const struct check_state *ck,
                                       uint64_t idx)
{
    return idx < ck->reftable_entries
               ? ck->reftable[idx] & QCOW2_REFT_OFFSET_MASK
               : 0;
}

/* qcow2-check.c */
/* Report one message: to the callback, or into P's buffer when P is a
 * worker's part. */
void qcow2_check_say(struct check_state *ck, struct check_part *p,
                     const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Hand a worker's messages to the report callback, add its counts to P. */
void qcow2_check_merge_part(struct check_state *ck, struct check_part *p,
                            struct check_part *w);
/* Read LEN bytes at OFF; bytes past the end of the file read as zeroes. */
int qcow2_check_read(struct check_state *ck, void *buf, size_t len,
                     uint64_t off);
int qcow2_check_write(struct check_state *ck, const void *buf, size_t len,
                      uint64_t off);
int qcow2_check_sync(struct check_state *ck);

/* qcow2-check-scan.c */
/* The host bytes compressed L2 ENTRY points at (qcow2.txt, "Compressed
 * Clusters Descriptor"). */
void qcow2_check_compressed_extent(const struct check_state *ck,
                                   uint64_t entry, uint64_t *offset,
                                   uint64_t *bytes);
/* What L2 entry E maps. */
enum check_entry_type qcow2_check_entry_type(const struct check_state *ck,
                                             uint64_t e);
/* Read the NB entries of the table at OFFSET (the part inside the file;
 * the rest reads as zeroes and is left out), decoded, into *OUT (free it
 * with free()) and their number into *NB_OUT. */
int qcow2_check_load_table(struct check_state *ck, struct check_part *p,
                           uint64_t offset, uint64_t nb, uint64_t **out,
                           uint64_t *nb_out);
/* Run PASS over TABLE, on up to nb_threads threads. */
int qcow2_check_run_pass(struct check_state *ck, struct check_part *p,
                         const struct check_table *table, enum check_pass pass);
/* Fill T with the active L1 table (the part inside the file). */
void qcow2_check_active_table(const struct check_state *ck,
                              struct check_table *t);
/* Count every reference into ck->counts (qemu's calculate_refcounts). */
int qcow2_check_count_references(struct check_state *ck, struct check_part *p);

/* qcow2-check-refcounts.c */
/*
 * Counters at or above COUNT_SATURATED live in the side table: counts[k]
 * stays at COUNT_SATURATED and the overflow table holds the rest.  The room
 * above it takes the increments of every thread that may briefly overshoot
 * and undo (see count_inc), so the 16-bit counter never wraps.
 */
#define COUNT_SATURATED 0xfff0u
/* The side-table part of cluster K's counter. */
uint64_t qcow2_check_overflow_get(const struct check_state *ck, uint64_t k);
/* Set the side-table part of cluster K's counter to EXTRA. */
void qcow2_check_overflow_set(struct check_state *ck, uint64_t k,
                              uint64_t extra);

/* The counter of cluster K (no thread may be incrementing). */
static inline uint64_t count_get(const struct check_state *ck, uint64_t k)
{
    if (k >= ck->nb_counts) {
        return 0;
    }
    const uint16_t v = ck->counts[k];
    return v < COUNT_SATURATED
               ? v
               : COUNT_SATURATED + qcow2_check_overflow_get(ck, k);
}

/* Set the counter of cluster K (below nb_counts) to V. */
void qcow2_check_count_set(struct check_state *ck, uint64_t k, uint64_t v);
/* Clusters compared: the file's, or one more when a reference reaches
 * into the cluster after the end (qemu grows its array the same way). */
uint64_t qcow2_check_compare_end(const struct check_state *ck);
/* Is refcount table entry IDX's block unreadable (unaligned)? */
bool qcow2_check_is_block_broken(const struct check_state *ck, uint64_t idx);
/* Stored refcount of cluster C after the final compare: -EIO if
 * unreadable. */
int qcow2_check_stored_refcount(struct check_state *ck, uint64_t c,
                                uint64_t *out);
/*
 * Compare the computed refcounts with the stored ones (qemu's
 * compare_refcounts).  FIX: the repairs allowed now.  With IS_FINAL, the
 * repairs are written and ck->counts ends up holding the stored refcounts
 * (for the COPIED pass); else nothing is written.
 */
int qcow2_check_compare_refcounts(struct check_state *ck, struct check_part *p,
                                  unsigned fix, bool is_final);

/* qcow2-check-fast.c */
/* Give up the fast check (any thread): the exact check runs instead. */
static inline void qcow2_check_fast_fail(struct check_state *ck)
{
    __atomic_store_n(&ck->is_fast_failed, true, __ATOMIC_RELAXED);
}

static inline bool qcow2_check_fast_has_failed(const struct check_state *ck)
{
    return __atomic_load_n(&ck->is_fast_failed, __ATOMIC_RELAXED);
}

/* Count clusters [FIRST, END) once more into P's runs (fast check). */
void qcow2_check_run_add(struct check_state *ck, struct check_part *p,
                         uint64_t first, uint64_t end, bool is_copied);
/* Move W's runs to the end of P's. */
void qcow2_check_runs_merge(struct check_state *ck, struct check_part *p,
                            struct check_part *w);
/*
 * The whole refcount check of an image without snapshots, when nothing
 * may be repaired, without a counter per cluster: true when the image is
 * proven clean (and P holds the counts a clean check reports; nothing is
 * said), false when the exact check must run (nothing was said either).
 */
bool qcow2_check_fast(struct check_state *ck, struct check_part *p);

/* qcow2-check-repair.c */
/* Make the entry at [L2_OFF + J * entry size] read as zeroes
 * (qemu's fix for preallocated clusters that are not aligned). */
int qcow2_check_zero_l2_entry(struct check_state *ck, uint64_t l2_off,
                              uint64_t j, uint64_t bitmap);
/* Write BLOCK, the refcount block at OFF, whose refcounts were raised. */
int qcow2_check_write_raised_block(struct check_state *ck,
                                   struct check_part *p, const uint8_t *block,
                                   uint64_t off);
/* After the last compare: make the raised refcounts durable, then (when
 * HAS_LOWERED) lower the stored refcounts above the counts and make that
 * durable too.  BLOCK is one cluster to work in. */
int qcow2_check_lower_leaked(struct check_state *ck, struct check_part *p,
                             unsigned fix, bool has_lowered, uint8_t *block);
/*
 * Write a new refcount structure for the computed refcounts: refcount
 * blocks and table in fresh clusters past the end of everything, made
 * durable, then the header switched to them in one write.  The old
 * structure is leaked (the caller frees it).
 */
int qcow2_check_rebuild_refcount_structure(struct check_state *ck,
                                           struct check_part *p);
/* The COPIED flags of entries [FIRST, END) of the active L1 table and of
 * their L2 tables (qemu's check_oflag_copied). */
int qcow2_check_copied_range(struct check_state *ck, struct check_part *p,
                             const struct check_table *t, uint64_t first,
                             uint64_t end, bool is_repair, uint8_t *buf);
/* The COPIED pass over the active tables, repairing what the flags allow. */
int qcow2_check_copied_flags(struct check_state *ck, struct check_part *p);
/* Give incomplete version 3 snapshot table entries their extra data and
 * write the table anew. */
int qcow2_check_fix_snapshot_table(struct check_state *ck,
                                   struct check_part *p);

#endif
