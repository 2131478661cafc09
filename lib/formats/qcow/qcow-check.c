/* SPDX-License-Identifier: MIT */
/*
 * qcow-check.c: `vimg check` for QCOW v1, which qemu-img does not check.
 * Every structure (header with backing name and L1 table, L2 tables, data
 * clusters, compressed streams) must lie inside the file and overlap no
 * other; each that does not is one corruption.  There are no reference
 * counts, so there are no leaks, and nothing is repaired.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow/qcow.h"

enum extent_kind { EXT_HEADER, EXT_L2, EXT_DATA, EXT_COMPRESSED };

static const char *const kind_names[] = {
    "header and L1 table", "L2 table", "data cluster", "compressed cluster"};

struct extent {
    uint64_t start, end;
    uint64_t owner; /* L1 index (L2 tables) or guest offset (data) */
    enum extent_kind kind;
    bool is_bad;
};

struct checker {
    struct vimg_image *img;
    struct qcow_state *s;
    uint64_t file_size;
    struct extent *ext;
    size_t nb, cap;
    struct vimg_check_result *res;
    vimg_check_report_fn report;
    void *opaque;
};

__attribute__((format(printf, 2, 3))) static void say(struct checker *ck,
                                                      const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!ck->report) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    ck->report(ck->opaque, line);
}

static int add_extent(struct checker *ck, uint64_t start, uint64_t len,
                      uint64_t owner, enum extent_kind kind)
{
    if (ck->nb == ck->cap) {
        const size_t cap = ck->cap ? ck->cap * 2 : 64;
        struct extent *e = realloc(ck->ext, cap * sizeof(*e));
        if (!e) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        ck->ext = e;
        ck->cap = cap;
    }
    ck->ext[ck->nb++] = (struct extent){start, start + len, owner, kind,
                                        false};
    return 0;
}

/* Is [START, START+LEN) inside the file?  Counts and says it if not. */
static bool in_file(struct checker *ck, uint64_t start, uint64_t len,
                    const char *what, uint64_t owner)
{
    if (len && start <= ck->file_size && ck->file_size - start >= len &&
        start >= QCOW_HDR_LEN) {
        return true;
    }
    ck->res->corruptions++;
    say(ck, "ERROR: %s of %s 0x%llx at 0x%llx (%llu bytes) is outside the "
            "file's data (file size 0x%llx)",
        what, strcmp(what, "L2 table") ? "guest offset" : "L1 entry",
        (unsigned long long)owner, (unsigned long long)start,
        (unsigned long long)len, (unsigned long long)ck->file_size);
    return false;
}

static int cmp_extent(const void *a, const void *b)
{
    const struct extent *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort the extents and mark (count, say) each one that overlaps an
 * earlier one; with DATA_ONLY, only overlaps that involve data (those of
 * tables were counted by the first pass). */
static void find_overlaps(struct checker *ck, bool data_only)
{
    qsort(ck->ext, ck->nb, sizeof(*ck->ext), cmp_extent);
    size_t last = 0; /* the extent reaching furthest so far */
    for (size_t i = 1; i < ck->nb; i++) {
        struct extent *e = &ck->ext[i], *p = &ck->ext[last];
        const bool has_data = e->kind >= EXT_DATA || p->kind >= EXT_DATA;
        if (e->start < p->end && (!data_only || has_data)) {
            e->is_bad = true;
            ck->res->corruptions++;
            say(ck, "ERROR: %s at 0x%llx (owner 0x%llx) overlaps %s at "
                    "0x%llx (owner 0x%llx)",
                kind_names[e->kind], (unsigned long long)e->start,
                (unsigned long long)e->owner, kind_names[p->kind],
                (unsigned long long)p->start, (unsigned long long)p->owner);
        }
        if (e->end > p->end) {
            last = i;
        }
    }
}

/* The entries of the L2 table of L1 entry L1_INDEX at OFFSET */
static int scan_l2(struct checker *ck, uint64_t l1_index, uint64_t offset,
                   uint64_t *entries, uint64_t *prev_end)
{
    struct qcow_state *s = ck->s;
    const unsigned cb = s->h.cluster_bits;
    int ret = qcow_read_l2(ck->img, offset, entries);

    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < s->l2_entries; i++) {
        const uint64_t guest = ((l1_index << s->h.l2_bits) + i) << cb;
        struct qcow_mapping m;
        qcow_l2_entry_decode(entries[i], cb, &m);
        if (m.kind == QCOW_CLUSTER_UNALLOCATED) {
            continue;
        }
        const bool is_z = m.kind == QCOW_CLUSTER_COMPRESSED;
        const uint64_t len = is_z ? m.csize : s->cluster_size;
        if (guest < ck->img->size) {
            ck->res->allocated_clusters++;
            ck->res->compressed_clusters += is_z;
            /* as qemu counts them: compressed clusters always are */
            ck->res->fragmented_clusters +=
                is_z || (*prev_end && m.offset != *prev_end);
            *prev_end = is_z ? *prev_end : m.offset + len;
        }
        if (in_file(ck, m.offset, len,
                    is_z ? "compressed cluster" : "data cluster", guest)) {
            ret = add_extent(ck, m.offset, len, guest,
                             is_z ? EXT_COMPRESSED : EXT_DATA);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* The L2 tables the L1 table points at, inside the file */
static int collect_l2_tables(struct checker *ck)
{
    struct qcow_state *s = ck->s;
    const uint64_t l2_bytes = (uint64_t)s->l2_entries * 8;

    for (uint64_t i = 0; i < s->h.l1_size; i++) {
        const uint64_t off = s->l1[i];
        if (off && in_file(ck, off, l2_bytes, "L2 table", i)) {
            int ret = add_extent(ck, off, l2_bytes, i, EXT_L2);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static int check_all(struct checker *ck)
{
    struct qcow_state *s = ck->s;
    int ret = vimg_io_get_size(ck->img->io, &ck->file_size);

    if (ret < 0) {
        return ret;
    }
    if (s->meta_end > ck->file_size) {
        ck->res->corruptions++;
        say(ck, "ERROR: the header and L1 table end at 0x%llx, past the end "
                "of the file (0x%llx)",
            (unsigned long long)s->meta_end,
            (unsigned long long)ck->file_size);
    }
    ret = add_extent(ck, 0, s->meta_end, 0, EXT_HEADER);
    if (ret == 0) {
        ret = collect_l2_tables(ck);
    }
    if (ret < 0) {
        return ret;
    }
    /* overlapping L2 tables are not scanned: a damaged L1 table cannot
     * make the check read the same table over and over */
    find_overlaps(ck, false);
    const size_t nb_tables = ck->nb;
    struct extent *tables = malloc(nb_tables * sizeof(*tables));
    uint64_t *entries = malloc((size_t)s->l2_entries * 8);
    if (!tables || !entries) {
        free(tables);
        free(entries);
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(tables, ck->ext, nb_tables * sizeof(*tables));
    ck->nb = 0;
    uint64_t prev_end = 0;
    for (size_t i = 0; i < nb_tables && ret == 0; i++) {
        ret = add_extent(ck, tables[i].start, tables[i].end - tables[i].start,
                         tables[i].owner, tables[i].kind);
        if (ret == 0 && tables[i].kind == EXT_L2 && !tables[i].is_bad) {
            ret = scan_l2(ck, tables[i].owner, tables[i].start, entries,
                          &prev_end);
        }
    }
    free(tables);
    free(entries);
    if (ret < 0) {
        return ret;
    }
    find_overlaps(ck, true);
    for (size_t i = 0; i < ck->nb; i++) {
        ck->res->image_end_offset =
            VIMG_MAX(ck->res->image_end_offset, ck->ext[i].end);
    }
    return 0;
}

int qcow_check(struct vimg_image *img, unsigned flags, unsigned threads,
               struct vimg_check_result *res, vimg_check_report_fn report,
               void *opaque)
{
    struct checker ck = {.img = img, .s = img->priv, .res = res,
                         .report = report, .opaque = opaque};

    (void)threads;
    if (flags & VIMG_CHECK_REPAIR_ALL) {
        say(&ck, "qcow images have no reference counts: there are no leaks, "
                 "and errors are reported but not repaired");
    }
    pthread_mutex_lock(&ck.s->lock);
    int ret = check_all(&ck);
    pthread_mutex_unlock(&ck.s->lock);
    res->total_clusters =
        VIMG_DIV_ROUND_UP(img->size, (uint64_t)ck.s->cluster_size);
    free(ck.ext);
    return ret;
}
