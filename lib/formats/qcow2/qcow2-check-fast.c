/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-fast.c: the check of a clean image without a counter per
 * cluster.
 *
 * The exact check keeps two bytes per host cluster: 256 MiB for an 8 TiB
 * preallocated image.  But the references of such an image are a few long
 * runs of clusters, each referenced once.  So the fast check counts every
 * reference as a run [first, end) (runs that follow each other merge as
 * they are counted), sorts the run ends into segments of equal counts, and
 * compares those with the stored refcount blocks.  The COPIED pass needs
 * no second read of the L2 tables: a clean image without snapshots has the
 * COPIED flag on every active entry, whose cluster then must have refcount
 * 1, which the segments show.
 *
 * It proves an image clean or gives up: any message, error, mismatch,
 * too many runs (a fragmented or compressed image) or anything unusual
 * sets ck->is_fast_failed, nothing is said, and the exact check runs from
 * the start.  The clean summary it leaves is what the exact check would
 * report.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-check.h"
#include "vimg-endian.h"

/* ---------------------------------------------------------------- runs */

void qcow2_check_run_add(struct check_state *ck, struct check_part *p,
                         uint64_t first, uint64_t end, bool is_copied)
{
    struct check_runs *r = &p->runs;

    if (r->len) {
        struct check_run *last = &r->v[r->len - 1];
        if (last->end == first && last->is_copied == is_copied) {
            last->end = end;
            return;
        }
    }
    if (__atomic_add_fetch(&ck->nb_runs, 1, __ATOMIC_RELAXED) >
        ck->max_runs) {
        qcow2_check_fast_fail(ck);
        return;
    }
    if (r->len == r->cap) {
        const size_t cap = r->cap ? r->cap * 2 : 64;
        struct check_run *v = realloc(r->v, cap * sizeof(*v));
        if (!v) {
            qcow2_check_fast_fail(ck);
            return;
        }
        r->v = v;
        r->cap = cap;
    }
    r->v[r->len++] = (struct check_run){first, end, is_copied};
}

void qcow2_check_runs_merge(struct check_state *ck, struct check_part *p,
                            struct check_part *w)
{
    struct check_runs *to = &p->runs;
    struct check_runs *from = &w->runs;

    if (to->len + from->len > to->cap) {
        const size_t cap = VIMG_MAX(to->cap * 2, to->len + from->len);
        struct check_run *v = realloc(to->v, cap * sizeof(*v));
        if (!v) {
            qcow2_check_fast_fail(ck);
            goto out;
        }
        to->v = v;
        to->cap = cap;
    }
    if (from->len) {
        memcpy(to->v + to->len, from->v, from->len * sizeof(*from->v));
        to->len += from->len;
    }
out:
    free(from->v);
    memset(from, 0, sizeof(*from));
}

/* ------------------------------------------------------------ segments */

/* Clusters [FIRST, END) counted COUNT times (never 0). */
struct check_segment {
    uint64_t first, end, count;
};

struct check_segments {
    struct check_segment *v;
    size_t len;
};

/* Where runs start (+1) or end (-1). */
struct run_edge {
    uint64_t pos;
    int32_t count;  /* +1 or -1 */
    int32_t copied; /* the same for runs that need refcount 1, else 0 */
};

static int compare_edges(const void *a, const void *b)
{
    const uint64_t x = ((const struct run_edge *)a)->pos;
    const uint64_t y = ((const struct run_edge *)b)->pos;
    return x < y ? -1 : x > y;
}

/* Append [FIRST, END) counted COUNT times, merged with the segment before
 * when it goes on with the same count. */
static void add_segment(struct check_segments *segs, uint64_t first,
                        uint64_t end, uint64_t count)
{
    if (segs->len) {
        struct check_segment *last = &segs->v[segs->len - 1];
        if (last->end == first && last->count == count) {
            last->end = end;
            return;
        }
    }
    segs->v[segs->len++] = (struct check_segment){first, end, count};
}

/* Sum the RUNS into SEGS (free SEGS->v with free()): false when a
 * cluster that needs refcount 1 is counted more often, or a count passes
 * what the image's refcounts hold. */
static bool build_segments(struct check_state *ck,
                           const struct check_runs *runs,
                           struct check_segments *segs)
{
    const size_t n = runs->len * 2;
    struct run_edge *edges = malloc(n ? n * sizeof(*edges) : 1);
    bool is_ok = true;

    segs->len = 0;
    segs->v = malloc(n ? n * sizeof(*segs->v) : 1);
    if (!edges || !segs->v) {
        free(edges);
        return false;
    }
    for (size_t i = 0; i < runs->len; i++) {
        const struct check_run *r = &runs->v[i];
        const int32_t copied = r->is_copied ? 1 : 0;
        edges[2 * i] = (struct run_edge){r->first, 1, copied};
        edges[2 * i + 1] = (struct run_edge){r->end, -1, -copied};
    }
    qsort(edges, n, sizeof(*edges), compare_edges);
    int64_t count = 0, copied = 0;
    uint64_t pos = 0;
    for (size_t i = 0; i < n && is_ok;) {
        const uint64_t next = edges[i].pos;
        if (count > 0 && next > pos) {
            is_ok = (copied == 0 || count == 1) &&
                    (uint64_t)count <= ck->refcount_max;
            add_segment(segs, pos, next, (uint64_t)count);
        }
        for (; i < n && edges[i].pos == next; i++) {
            count += edges[i].count;
            copied += edges[i].copied;
        }
        pos = next;
    }
    free(edges);
    return is_ok;
}

/* How often cluster C is counted. */
static uint64_t segment_count(const struct check_segments *segs, uint64_t c)
{
    size_t lo = 0, hi = segs->len;

    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (segs->v[mid].end <= c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < segs->len && segs->v[lo].first <= c ? segs->v[lo].count : 0;
}

/* Every refcount block counted once: anything else is an error the exact
 * check reports (qemu's check_refblocks). */
static bool refblocks_are_single(const struct check_state *ck,
                                 const struct check_segments *segs)
{
    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t off = refblock_offset(ck, i);
        if (off && segment_count(segs, off >> ck->cluster_bits) != 1) {
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------- compare */

/* Do entries [FROM, TO) of the refcount block BLOCK all hold V? */
static bool block_holds(const uint8_t *block, uint64_t from, uint64_t to,
                        unsigned order, uint64_t v)
{
    if (order == 4) {
        /* the common width, in a loop the compiler vectorises */
        unsigned diff = v > 0xffff;
        for (uint64_t i = from; i < to; i++) {
            diff |= load_be16(block + 2 * i) ^ (unsigned)v;
        }
        return diff == 0;
    }
    for (uint64_t i = from; i < to; i++) {
        if (qcow2_refcount_get(block, i, order) != v) {
            return false;
        }
    }
    return true;
}

/* Compare clusters [FIRST, LAST), whose refcounts are in BLOCK (NULL:
 * there is no block, they are all 0), with the segments from *SI on. */
static bool compare_block_fast(const struct check_state *ck,
                               const struct check_segments *segs, size_t *si,
                               uint64_t first, uint64_t last,
                               const uint8_t *block)
{
    const unsigned order = ck->s->h.refcount_order;

    for (uint64_t c = first; c < last;) {
        while (*si < segs->len && segs->v[*si].end <= c) {
            (*si)++;
        }
        const struct check_segment *sg =
            *si < segs->len ? &segs->v[*si] : NULL;
        uint64_t v = 0, end = last;
        if (sg && sg->first <= c) {
            v = sg->count;
            end = VIMG_MIN(last, sg->end);
        } else if (sg) {
            end = VIMG_MIN(last, sg->first);
        }
        if (block ? !block_holds(block, c - first, end - first, order, v)
                  : v != 0) {
            return false;
        }
        c = end;
    }
    return true;
}

/* The stored refcounts of every cluster compared equal to the segments,
 * with BLOCK (one cluster) to read them into. */
static bool refcounts_match(struct check_state *ck,
                            const struct check_segments *segs, uint8_t *block)
{
    const uint64_t end = qcow2_check_compare_end(ck);
    const uint64_t per_block = ck->refblock_entries;
    size_t si = 0;

    for (uint64_t idx = 0; idx * per_block < end; idx++) {
        const uint64_t first = idx * per_block;
        const uint64_t off = refblock_offset(ck, idx);
        if ((off & (ck->cluster_size - 1)) ||
            (off && qcow2_check_read(ck, block, (size_t)ck->cluster_size,
                                     off) < 0) ||
            !compare_block_fast(ck, segs, &si, first,
                                VIMG_MIN(end, first + per_block),
                                off ? block : NULL)) {
            return false;
        }
    }
    /* stored and counted agree: the last cluster in use is the last one
     * counted */
    ck->last_used_cluster = segs->len ? segs->v[segs->len - 1].end - 1 : 0;
    return true;
}

bool qcow2_check_fast(struct check_state *ck, struct check_part *p)
{
    struct check_segments segs = {NULL, 0};
    uint8_t *block = NULL;
    bool is_ok = qcow2_check_count_references(ck, p) == 0 &&
                 !qcow2_check_fast_has_failed(ck) && p->err == 0 &&
                 !p->result.check_errors && !p->result.corruptions &&
                 !p->result.leaks;

    is_ok = is_ok && build_segments(ck, &p->runs, &segs);
    free(p->runs.v);
    memset(&p->runs, 0, sizeof(p->runs));
    is_ok = is_ok && refblocks_are_single(ck, &segs);
    is_ok = is_ok && (block = malloc((size_t)ck->cluster_size)) != NULL;
    is_ok = is_ok && refcounts_match(ck, &segs, block);
    free(block);
    free(segs.v);
    return is_ok && !qcow2_check_fast_has_failed(ck);
}
