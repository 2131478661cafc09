/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-refcounts.c: the computed refcounts (one 16-bit counter per
 * host cluster; counters that would pass it go to a small side table) and
 * their comparison with the refcounts stored in the image.  What counts
 * as one corruption or one leak follows qemu-img check 7.2
 * (docs/formats/qcow2.md lists the rules).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-check.h"
#include "vimg-endian.h"

/* ------------------------------------------------------------ counters */

uint64_t qcow2_check_overflow_get(const struct check_state *ck, uint64_t k)
{
    for (size_t i = 0; i < ck->nb_overflow; i++) {
        if (ck->overflow[i].cluster == k) {
            return ck->overflow[i].extra;
        }
    }
    return 0;
}

/* Set the side-table part of cluster K's counter to EXTRA. */
void qcow2_check_overflow_set(struct check_state *ck, uint64_t k,
                              uint64_t extra)
{
    for (size_t i = 0; i < ck->nb_overflow; i++) {
        if (ck->overflow[i].cluster == k) {
            ck->overflow[i].extra = extra;
            return;
        }
    }
    if (ck->nb_overflow == ck->cap_overflow) {
        const size_t cap = ck->cap_overflow ? ck->cap_overflow * 2 : 16;
        struct check_overflow *o = realloc(ck->overflow, cap * sizeof(*o));
        if (!o) {
            return; /* keeps COUNT_SATURATED: off only for absurd images */
        }
        ck->overflow = o;
        ck->cap_overflow = cap;
    }
    ck->overflow[ck->nb_overflow].cluster = k;
    ck->overflow[ck->nb_overflow].extra = extra;
    ck->nb_overflow++;
}

void qcow2_check_count_set(struct check_state *ck, uint64_t k, uint64_t v)
{
    assert(k < ck->nb_counts);
    if (v < COUNT_SATURATED) {
        ck->counts[k] = (uint16_t)v;
        return;
    }
    ck->counts[k] = COUNT_SATURATED;
    qcow2_check_overflow_set(ck, k, v - COUNT_SATURATED);
}

/* ---------------------------------------------------- stored refcounts */

uint64_t qcow2_check_compare_end(const struct check_state *ck)
{
    return VIMG_MAX(ck->nb_clusters, ck->used_end);
}

/* Is refcount table entry IDX's block unreadable (unaligned)? */
bool qcow2_check_is_block_broken(const struct check_state *ck, uint64_t idx)
{
    return (refblock_offset(ck, idx) & (ck->cluster_size - 1)) != 0;
}

/* The stored refcount of cluster C, read from the file: -EIO when its
 * refcount block is not aligned. */
static int read_stored_refcount(struct check_state *ck, uint64_t c,
                                uint64_t *out)
{
    const uint64_t off = refblock_offset(ck, c / ck->refblock_entries);

    *out = 0;
    if (!off) {
        return 0;
    }
    if (off & (ck->cluster_size - 1)) {
        return -EIO;
    }
    const uint64_t i = c % ck->refblock_entries;
    const unsigned order = ck->s->h.refcount_order;
    const uint64_t byte = (i << order) / 8;
    uint8_t b[8];
    const size_t len = order >= 3 ? (size_t)1 << (order - 3) : 1;
    int ret = qcow2_check_read(ck, b, len, off + byte);
    if (ret < 0) {
        return ret;
    }
    /* qcow2_refcount_get wants the block; fake one around the entry */
    *out = order >= 3 ? qcow2_refcount_get(b, 0, order)
                      : qcow2_refcount_get(b, i % (8u >> order), order);
    return 0;
}

/* What one compare does: which repairs it may make, and whether it
 * writes them. */
struct compare_pass {
    unsigned fix;     /* VIMG_CHECK_REPAIR_* allowed now */
    bool is_final;    /* write the repairs; keep stored refcounts */
    bool has_lowered; /* leaks fixed: refcounts to lower at the end */
};

/* Every cluster [FIRST, LAST) counted by the refcount block at OFF, which
 * is not aligned: one check error each, as in qemu. */
static void report_unaligned_block(struct check_state *ck,
                                   struct check_part *p, uint64_t first,
                                   uint64_t last, uint64_t off)
{
    for (uint64_t c = first; c < last; c++) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: cannot get the refcount of cluster %llu "
                        "(0x%llx): its refcount block at 0x%llx is not "
                        "cluster aligned",
                        (unsigned long long)c,
                        (unsigned long long)(c << ck->cluster_bits),
                        (unsigned long long)off);
    }
}

/*
 * Cluster C has the refcount STORED in the refcount block at OFF (BLOCK,
 * whose first cluster is FIRST), but COMPUTED references.  Report it, and
 * either fix it (raised in BLOCK, or lowered later) or count it as a
 * corruption or a leak.  Returns true when BLOCK was changed.
 */
static bool compare_cluster(struct check_state *ck, struct check_part *p,
                            struct compare_pass *cmp, uint64_t c,
                            uint64_t stored, uint64_t computed, uint64_t off,
                            uint8_t *block, uint64_t first)
{
    uint64_t *fixed = NULL;

    if (stored == 0) {
        ck->is_rebuild_needed = true;
    } else if (stored > computed && (cmp->fix & VIMG_CHECK_REPAIR_LEAKS)) {
        fixed = &p->result.leaks_fixed;
    } else if (stored < computed && (cmp->fix & VIMG_CHECK_REPAIR_ERRORS)) {
        fixed = &p->result.corruptions_fixed;
    }
    qcow2_check_say(ck, p,
                    "%s cluster %llu (0x%llx): refcount %llu in the "
                    "refcount block at 0x%llx, but %llu reference%s",
                    fixed               ? "Repairing"
                    : stored < computed ? "ERROR:"
                                        : "Leaked",
                    (unsigned long long)c,
                    (unsigned long long)(c << ck->cluster_bits),
                    (unsigned long long)stored, (unsigned long long)off,
                    (unsigned long long)computed, computed == 1 ? "" : "s");
    if (fixed) {
        (*fixed)++;
        if (stored < computed) {
            qcow2_refcount_set(block, c - first, ck->s->h.refcount_order,
                               computed);
            return true;
        }
        cmp->has_lowered = true;
        return false;
    }
    if (stored < computed) {
        p->result.corruptions++;
        if (ck->suspects && ck->nb_suspects < CHECK_MAX_SUSPECTS) {
            ck->suspects[ck->nb_suspects++].cluster = c;
        }
    } else {
        p->result.leaks++;
    }
    if (cmp->is_final) {
        /* keep what the file says, for the COPIED pass */
        qcow2_check_count_set(ck, c, stored);
    }
    return false;
}

/* Compare clusters [FIRST, LAST) with the refcount block at OFF, read
 * into BLOCK (OFF 0: there is none, every stored refcount is 0).  Returns
 * true when refcounts in BLOCK were raised. */
static bool compare_block(struct check_state *ck, struct check_part *p,
                          struct compare_pass *cmp, uint64_t first,
                          uint64_t last, uint64_t off, uint8_t *block)
{
    const unsigned order = ck->s->h.refcount_order;
    bool is_raised = false;

    for (uint64_t c = first; c < last; c++) {
        if (order == 4 && off) {
            /* the common width: skip equal entries quickly */
            while (c < last && ck->counts[c] < COUNT_SATURATED &&
                   load_be16(block + 2 * (c - first)) == ck->counts[c]) {
                if (ck->counts[c]) {
                    ck->last_used_cluster = c;
                }
                c++;
            }
            if (c == last) {
                break;
            }
        }
        const uint64_t stored =
            off ? qcow2_refcount_get(block, c - first, order) : 0;
        const uint64_t computed = count_get(ck, c);
        if (stored || computed) {
            ck->last_used_cluster = c;
        }
        if (stored != computed) {
            is_raised |= compare_cluster(ck, p, cmp, c, stored, computed, off,
                                         block, first);
        }
    }
    return is_raised;
}

/*
 * Compare the computed refcounts with the stored ones (qemu's
 * compare_refcounts).  FIX: the repairs allowed now.  With IS_FINAL, the
 * repairs are written and ck->counts ends up holding the stored refcounts
 * (for the COPIED pass); else nothing is written.
 */
int qcow2_check_compare_refcounts(struct check_state *ck, struct check_part *p,
                                  unsigned fix, bool is_final)
{
    const uint64_t end = qcow2_check_compare_end(ck);
    const uint64_t refblock_entries = ck->refblock_entries;
    struct compare_pass cmp = {.fix = fix, .is_final = is_final};
    uint8_t *block = malloc((size_t)ck->cluster_size);
    int ret = 0;

    if (!block) {
        p->result.check_errors++;
        return vimg_error(-ENOMEM, "out of memory");
    }
    ck->last_used_cluster = 0;
    for (uint64_t idx = 0; idx * refblock_entries < end; idx++) {
        const uint64_t first = idx * refblock_entries;
        const uint64_t last = VIMG_MIN(end, first + refblock_entries);
        const uint64_t off = refblock_offset(ck, idx);
        if (off & (ck->cluster_size - 1)) {
            report_unaligned_block(ck, p, first, last, off);
            continue;
        }
        if (off) {
            ret = qcow2_check_read(ck, block, (size_t)ck->cluster_size, off);
            if (ret < 0) {
                p->result.check_errors++;
                qcow2_check_say(ck, p,
                                "ERROR: could not read the refcount block at "
                                "0x%llx: %s",
                                (unsigned long long)off, vimg_last_error());
                goto out;
            }
        }
        if (compare_block(ck, p, &cmp, first, last, off, block) && is_final) {
            ret = qcow2_check_write_raised_block(ck, p, block, off);
            if (ret < 0) {
                goto out;
            }
        }
    }
    if (is_final) {
        ret = qcow2_check_lower_leaked(ck, p, fix, cmp.has_lowered, block);
    }
out:
    free(block);
    return ret;
}

/* Stored refcount of cluster C after qcow2_check_compare_refcounts(): -EIO if
 * unreadable. */
int qcow2_check_stored_refcount(struct check_state *ck, uint64_t c,
                                uint64_t *out)
{
    if (ck->has_broken_block &&
        qcow2_check_is_block_broken(ck, c / ck->refblock_entries)) {
        return -EIO;
    }
    if (c < ck->compared_end) {
        *out = count_get(ck, c);
        return 0;
    }
    return read_stored_refcount(ck, c, out);
}
