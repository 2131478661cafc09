/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.c: consistency check and repair (qemu-img check): the entry
 * point, the messages, and the order of the passes.
 *
 * Every refcount is rebuilt from scratch (qcow2-check-scan.c) and compared
 * with the stored refcounts (qcow2-check-refcounts.c); then the COPIED
 * flags of the active tables are checked against the stored refcounts.
 * What counts as one corruption or one leak follows qemu-img check 7.2
 * (docs/formats/qcow2.md lists the rules), so that the counts and exit
 * codes agree.  Repairs (qcow2-check-repair.c) are made in a crash-safe
 * order.
 *
 * A check that may not repair, of an image without snapshots, first tries
 * the fast check (qcow2-check-fast.c): references counted as runs of
 * clusters, which proves a clean image clean in memory that does not grow
 * with the image; on anything else it says nothing and the exact check
 * below runs.
 *
 * Memory of the exact check: two bytes per cluster of the image file
 * (counters that would pass 0xffff on wide-refcount images go to a small
 * side table), plus one cluster-sized buffer per worker thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2-check.h"
#include "util/pool.h"
#include "vimg-endian.h"

/* ------------------------------------------------------------ messages */

void qcow2_check_say(struct check_state *ck, struct check_part *p,
                     const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (ck->is_fast) {
        /* the fast check only proves an image clean */
        qcow2_check_fast_fail(ck);
        return;
    }
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
    if (p->messages.len + n > p->messages.cap) {
        size_t cap = p->messages.cap ? p->messages.cap * 2 : 4096;
        while (cap < p->messages.len + n) {
            cap *= 2;
        }
        char *b = realloc(p->messages.buf, cap);
        if (!b) {
            return; /* a lost message, not a wrong count */
        }
        p->messages.buf = b;
        p->messages.cap = cap;
    }
    memcpy(p->messages.buf + p->messages.len, line, n);
    p->messages.len += n;
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
void qcow2_check_merge_part(struct check_state *ck, struct check_part *p,
                            struct check_part *w)
{
    for (size_t off = 0; off < w->messages.len;) {
        const char *line = w->messages.buf + off;
        if (ck->report) {
            ck->report(ck->opaque, line);
        }
        off += strlen(line) + 1;
    }
    free(w->messages.buf);
    w->messages.buf = NULL;
    qcow2_check_runs_merge(ck, p, w);
    add_result(&p->result, &w->result);
    p->used_end = VIMG_MAX(p->used_end, w->used_end);
    if (w->err < 0 && p->err == 0) {
        /* the message was recorded in the worker's thread */
        p->err = vimg_error(w->err, "%s", w->err_msg);
    }
}

/* ----------------------------------------------------------------- I/O */

/* Read LEN bytes at OFF; bytes past the end of the file read as zeroes. */
int qcow2_check_read(struct check_state *ck, void *buf, size_t len,
                     uint64_t off)
{
    return vimg_io_pread(ck->img->io, buf, len, off);
}

int qcow2_check_write(struct check_state *ck, const void *buf, size_t len,
                      uint64_t off)
{
    int ret = vimg_io_pwrite(ck->img->io, buf, len, off);

    if (ret == 0 && off + len > ck->s->file_size) {
        ck->s->file_size = off + len;
    }
    return ret;
}

int qcow2_check_sync(struct check_state *ck)
{
    return vimg_io_flush(ck->img->io);
}

/* ------------------------------------------------------------- driver */

static int read_reftable(struct check_state *ck, struct check_part *p)
{
    const struct qcow2_state *s = ck->s;
    const uint64_t n =
        ((uint64_t)s->h.refcount_table_clusters << ck->cluster_bits) / 8;
    const uint64_t off = s->h.refcount_table_offset;
    /* entries past the end of the file read as zeroes: leave them out */
    const uint64_t in_file =
        off < ck->file_size
            ? VIMG_MIN(n, VIMG_DIV_ROUND_UP(ck->file_size - off, 8))
            : 0;
    uint64_t *t = NULL, got = 0;
    int ret = qcow2_check_load_table(ck, p, off, in_file, &t, &got);

    if (ret < 0) {
        return ret;
    }
    free(ck->reftable);
    ck->reftable = t;
    ck->reftable_entries = got;
    for (uint64_t i = 0; i < got; i++) {
        ck->has_broken_block |= qcow2_check_is_block_broken(ck, i);
    }
    return 0;
}

/* THREADS as asked (vimg_check_opts), 0: one per CPU, at most 8 */
static unsigned thread_count(unsigned threads)
{
    const unsigned n = threads ? threads : vimg_pool_default_threads();

    /* COUNT_SATURATED leaves room for this many overshoots */
    return VIMG_MIN(n, (unsigned)CHECK_MAX_THREADS);
}

/* ------------------------------------------------- naming the users */

static struct check_suspect *find_suspect(struct check_state *ck, uint64_t c)
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

static void note_user(struct check_state *ck, uint64_t off, uint64_t size,
                      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record "what" as a user of the suspects among the clusters of
 * [OFF, OFF+SIZE). */
static void note_user(struct check_state *ck, uint64_t off, uint64_t size,
                      const char *fmt, ...)
{
    uint64_t end;

    if (size == 0 || vimg_add_overflows(off, size, &end)) {
        return;
    }
    for (uint64_t c = off >> ck->cluster_bits;
         c <= (end - 1) >> ck->cluster_bits; c++) {
        if (c > ck->suspects[ck->nb_suspects - 1].cluster) {
            return;
        }
        struct check_suspect *sp = find_suspect(ck, c);
        if (!sp || sp->nb_users >= CHECK_USERS_PER_SUSPECT) {
            continue;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sp->users[sp->nb_users++], sizeof(sp->users[0]), fmt, ap);
        va_end(ap);
    }
}

static void note_table_users(struct check_state *ck, const char *label,
                             const uint64_t *l1, uint64_t nb, uint8_t *buf)
{
    const struct qcow2_state *s = ck->s;
    const unsigned entry_bytes = s->l2_entry_bytes;

    for (uint64_t i = 0; i < nb; i++) {
        const uint64_t l2_off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        const uint64_t g0 = i * l2_span(ck);
        if (!l2_off || l2_off >= ck->file_size) {
            continue;
        }
        note_user(ck, l2_off, ck->cluster_size,
                  "the L2 table for guest 0x%llx-0x%llx (%s)",
                  (unsigned long long)g0,
                  (unsigned long long)(g0 + l2_span(ck) - 1), label);
        if (qcow2_check_read(ck, buf, (size_t)ck->cluster_size, l2_off) < 0) {
            continue;
        }
        for (uint64_t j = 0; j < ck->cluster_size / entry_bytes; j++) {
            const uint64_t e = load_be64(buf + j * entry_bytes);
            const uint64_t g = g0 + j * ck->cluster_size;
            switch (qcow2_check_entry_type(ck, e)) {
            case ENTRY_COMPRESSED: {
                uint64_t offset, bytes;
                qcow2_check_compressed_extent(ck, e, &offset, &bytes);
                note_user(ck, offset, bytes,
                          "compressed data of guest 0x%llx (%s)",
                          (unsigned long long)g, label);
                break;
            }
            case ENTRY_NORMAL:
            case ENTRY_ZERO_ALLOC:
                if (!s->has_data_file) {
                    note_user(ck, e & QCOW2_L2E_OFFSET_MASK, ck->cluster_size,
                              "data of guest 0x%llx-0x%llx (%s)",
                              (unsigned long long)g,
                              (unsigned long long)(g + ck->cluster_size - 1),
                              label);
                }
                break;
            default:
                break;
            }
        }
    }
}

static int compare_suspects(const void *a, const void *b)
{
    const uint64_t x = ((const struct check_suspect *)a)->cluster;
    const uint64_t y = ((const struct check_suspect *)b)->cluster;
    return x < y ? -1 : x > y;
}

/* The fixed metadata among the users: header, tables, refcount blocks,
 * snapshot table, encryption header, bitmaps. */
static void note_metadata_users(struct check_state *ck)
{
    const struct qcow2_state *s = ck->s;

    note_user(ck, 0, ck->cluster_size, "the image header");
    note_user(ck, s->h.l1_table_offset, (uint64_t)s->h.l1_size * 8,
              "the active L1 table");
    note_user(ck, s->h.refcount_table_offset,
              (uint64_t)s->h.refcount_table_clusters << ck->cluster_bits,
              "the refcount table");
    for (uint64_t i = 0; i < ck->reftable_entries; i++) {
        const uint64_t rb = refblock_offset(ck, i);
        if (rb) {
            note_user(ck, rb, ck->cluster_size, "refcount block %llu",
                      (unsigned long long)i);
        }
    }
    if (s->nb_snapshots) {
        note_user(ck, s->h.snapshots_offset, s->snapshots_size,
                  "the snapshot table");
    }
    if (s->ext.has_crypto) {
        note_user(ck, s->ext.crypto_offset, s->ext.crypto_length,
                  "the encryption header");
    }
    if (s->nb_bitmaps) {
        note_user(ck, s->ext.bitmap_dir_offset, s->ext.bitmap_dir_size,
                  "the bitmap directory");
        for (size_t k = 0; k < s->nb_bitmaps; k++) {
            note_user(ck, s->bitmaps[k].table_offset,
                      (uint64_t)s->bitmaps[k].table_size * 8,
                      "the table of bitmap '%s'", s->bitmaps[k].name);
        }
    }
}

/* The snapshots' L1 tables and what they map, with BUF (one cluster). */
static void note_snapshot_users(struct check_state *ck, uint8_t *buf)
{
    const struct qcow2_state *s = ck->s;

    for (size_t k = 0; k < s->nb_snapshots; k++) {
        const struct qcow2_snapshot *sn = &s->snapshots[k];
        char label[96];
        uint64_t *l1 = NULL, n = 0;
        struct check_part scratch;
        memset(&scratch, 0, sizeof(scratch));
        if ((sn->l1_table_offset & (ck->cluster_size - 1)) ||
            (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            continue;
        }
        snprintf(label, sizeof(label), "snapshot %s", sn->id);
        note_user(ck, sn->l1_table_offset, (uint64_t)sn->l1_size * 8,
                  "the L1 table of %s", label);
        if (qcow2_check_load_table(ck, &scratch, sn->l1_table_offset,
                                   sn->l1_size, &l1, &n) == 0) {
            note_table_users(ck, label, l1, n, buf);
        }
        free(l1);
    }
}

/* One line per suspect, naming its users. */
static void say_suspects(struct check_state *ck, struct check_part *p)
{
    for (size_t i = 0; i < ck->nb_suspects; i++) {
        const struct check_suspect *sp = &ck->suspects[i];
        char line[CHECK_USERS_PER_SUSPECT * 130 + 1] = "";
        size_t used = 0;
        for (unsigned u = 0; u < sp->nb_users; u++) {
            int n = snprintf(line + used, sizeof(line) - used, "%s%s",
                             u ? "; " : "", sp->users[u]);
            if (n < 0 || (size_t)n >= sizeof(line) - used) {
                break;
            }
            used += (size_t)n;
        }
        qcow2_check_say(ck, p,
                        "  cluster %llu (0x%llx) with too low a refcount is "
                        "used by: %s",
                        (unsigned long long)sp->cluster,
                        (unsigned long long)(sp->cluster << ck->cluster_bits),
                        line);
    }
}

/* Say who uses the clusters whose refcount is too low, so the user knows
 * which guest data or table is at risk. */
static void name_users(struct check_state *ck, struct check_part *p)
{
    if (ck->nb_suspects == 0) {
        return;
    }
    qsort(ck->suspects, ck->nb_suspects, sizeof(*ck->suspects),
          compare_suspects);
    uint8_t *buf = malloc((size_t)ck->cluster_size);
    if (!buf) {
        return;
    }
    note_metadata_users(ck);
    struct check_table active;
    qcow2_check_active_table(ck, &active);
    note_table_users(ck, "active image", active.entries, active.nb_entries,
                     buf);
    note_snapshot_users(ck, buf);
    free(buf);
    say_suspects(ck, p);
}

/* The first, read-only compare; it is the last one when nothing may be
 * repaired, and then keeps the stored refcounts.  The users of clusters
 * counted too low are named. */
static int compare_and_name_users(struct check_state *ck,
                                  struct check_part *p)
{
    ck->suspects = calloc(CHECK_MAX_SUSPECTS, sizeof(*ck->suspects));
    int ret = qcow2_check_compare_refcounts(ck, p, 0, ck->repair_flags == 0);
    if (ret < 0) {
        return ret;
    }
    name_users(ck, p);
    free(ck->suspects);
    ck->suspects = NULL;
    ck->nb_suspects = 0;
    return 0;
}

/*
 * -r all on a refcount structure that must be rebuilt: rebuild it, then
 * count and compare everything again against the new one (fixing leaks).
 * The old structure is then leaked: it is freed without counting those
 * leaks.  What the first compare found and the recount does not is
 * counted fixed.  BASE_ERRORS: the check errors before the first count.
 */
static int rebuild_and_recount(struct check_state *ck, struct check_part *p,
                               uint64_t base_errors)
{
    const struct vimg_check_result old = p->result;
    int ret = qcow2_check_rebuild_refcount_structure(ck, p);

    if (ret < 0) {
        return ret;
    }
    p->result.check_errors = base_errors; /* recounted below */
    p->result.corruptions = 0;
    p->result.leaks = 0;
    p->result.allocated_clusters = 0;
    p->result.fragmented_clusters = 0;
    p->result.compressed_clusters = 0;
    ret = qcow2_check_count_references(ck, p);
    if (ret < 0) {
        return ret;
    }
    const struct vimg_check_result saved = p->result;
    memset(&p->result, 0, sizeof(p->result));
    ret = qcow2_check_compare_refcounts(
        ck, p, ck->repair_flags & VIMG_CHECK_REPAIR_LEAKS, true);
    if (ck->is_rebuild_needed) {
        qcow2_check_say(ck, p,
                        "ERROR: the rebuilt refcount structure is still "
                        "broken");
    }
    const uint64_t fresh_leaks = p->result.leaks;
    const uint64_t errs = p->result.check_errors;
    p->result = saved;
    p->result.check_errors += errs;
    if (ret < 0) {
        return ret;
    }
    if (p->result.corruptions < old.corruptions) {
        p->result.corruptions_fixed += old.corruptions - p->result.corruptions;
    }
    if (p->result.leaks < old.leaks) {
        p->result.leaks_fixed += old.leaks - p->result.leaks;
    }
    p->result.leaks += fresh_leaks;
    return 0;
}

/* -r leaks or -r all on a refcount structure that needs no rebuild:
 * compare again from the counts as they were before the first compare
 * (PRE), fixing what the flags allow. */
static int repair_refcounts(struct check_state *ck, struct check_part *p,
                            const struct vimg_check_result *pre)
{
    if (ck->is_rebuild_needed) {
        p->result.check_errors++;
        qcow2_check_say(ck, p,
                        "ERROR: the refcount structure must be rebuilt, "
                        "which only '-r all' does");
        return vimg_error(-EIO, "%s: the refcount structure must be "
                                "rebuilt ('-r all')",
                          ck->img->filename);
    }
    if (p->result.leaks || p->result.corruptions) {
        p->result = *pre;
        return qcow2_check_compare_refcounts(ck, p, ck->repair_flags, true);
    }
    return 0;
}

/* The size of the file, in bytes and clusters. */
static int read_file_size(struct check_state *ck, struct check_part *p)
{
    struct qcow2_state *s = ck->s;
    int ret = vimg_io_get_size(ck->img->io, &s->file_size);

    if (ret < 0) {
        p->result.check_errors++;
        return ret;
    }
    ck->file_size = s->file_size;
    ck->nb_clusters = VIMG_DIV_ROUND_UP(ck->file_size, ck->cluster_size);
    return 0;
}

/* One counter per cluster of the file (and two more: a reference may
 * reach one cluster past the end, and the rebuild grows it anyway). */
static int alloc_counts(struct check_state *ck, struct check_part *p)
{
    ck->nb_counts = ck->nb_clusters + 2;
    ck->counts = calloc((size_t)ck->nb_counts, sizeof(uint16_t));
    if (!ck->counts) {
        p->result.check_errors++;
        return vimg_error(-ENOMEM, "%s: out of memory for %llu refcounts",
                          ck->img->filename,
                          (unsigned long long)ck->nb_clusters);
    }
    return 0;
}

/*
 * The fast check (qcow2-check-fast.c) of an image without snapshots, when
 * nothing may be repaired: true when it proved the image clean (and P
 * holds what a clean check reports), false when the exact check must run;
 * nothing is said either way.
 */
static bool check_fast(struct check_state *ck, struct check_part *p)
{
    struct check_part fp;

    if (ck->repair_flags || ck->s->nb_snapshots) {
        return false;
    }
    memset(&fp, 0, sizeof(fp));
    ck->is_fast = true;
    ck->is_fast_failed = false;
    ck->nb_runs = 0;
    /* a few long runs make a preallocated or sequentially written image;
     * more than that, and the counters of the exact check are cheaper */
    ck->max_runs = VIMG_MAX(ck->nb_clusters / 256, (uint64_t)4096);
    const bool is_clean = read_reftable(ck, &fp) == 0 &&
                          !ck->has_broken_block && qcow2_check_fast(ck, &fp);
    ck->is_fast = false;
    free(fp.runs.v);
    free(fp.messages.buf);
    if (is_clean) {
        add_result(&p->result, &fp.result);
        p->used_end = VIMG_MAX(p->used_end, fp.used_end);
    }
    return is_clean;
}

/* Count, compare (and repair) the refcounts, then the COPIED flags. */
static int check_refcounts(struct check_state *ck, struct check_part *p)
{
    /* errors reading the old refcount structure end with a rebuild */
    const uint64_t base_errors = p->result.check_errors;

    if (check_fast(ck, p)) {
        return 0;
    }
    int ret = alloc_counts(ck, p);
    if (ret < 0) {
        return ret;
    }
    ret = read_reftable(ck, p);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_check_count_references(ck, p);
    if (ret < 0) {
        return ret;
    }
    const struct vimg_check_result pre = p->result;
    ret = compare_and_name_users(ck, p);
    if (ret < 0) {
        return ret;
    }
    if (ck->is_rebuild_needed &&
        (ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS)) {
        ret = rebuild_and_recount(ck, p, base_errors);
    } else if (ck->repair_flags) {
        ret = repair_refcounts(ck, p, &pre);
    }
    if (ret < 0) {
        return ret;
    }
    return qcow2_check_copied_flags(ck, p);
}

/* Set up CK for a check of IMG with FLAGS on THREADS threads. */
static void init_state(struct check_state *ck, struct vimg_image *img,
                       unsigned flags, unsigned threads,
                       vimg_check_report_fn report, void *opaque)
{
    struct qcow2_state *s = img->priv;

    memset(ck, 0, sizeof(*ck));
    ck->img = img;
    ck->s = s;
    ck->repair_flags = flags;
    ck->report = report;
    ck->opaque = opaque;
    ck->cluster_bits = s->cluster_bits;
    ck->cluster_size = s->cluster_size;
    ck->nb_threads = thread_count(threads);
    pthread_mutex_init(&ck->overflow_lock, NULL);
    ck->refblock_entries = (ck->cluster_size * 8) >> s->h.refcount_order;
    ck->refcount_max = s->h.refcount_order == 6
                           ? UINT64_MAX
                           : (1ull << (1u << s->h.refcount_order)) - 1;
}

static void free_state(struct check_state *ck)
{
    free(ck->counts);
    free(ck->overflow);
    free(ck->suspects);
    free(ck->reftable);
    vimg_pool_destroy(ck->pool);
    pthread_mutex_destroy(&ck->overflow_lock);
}

/* Say what the header bits tell before anything is counted. */
static void say_header_notes(struct check_state *ck, struct check_part *p)
{
    const uint64_t features = ck->s->h.incompatible_features;
    const bool is_fix = ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS;

    if (features & QCOW2_INCOMPAT_DIRTY) {
        qcow2_check_say(ck, p,
                        "Note: the image is dirty (lazy refcounts, not closed "
                        "cleanly): its refcounts may be stale%s",
                        is_fix ? "" : "; 'vimg check -r all' repairs them");
    }
    if (features & QCOW2_INCOMPAT_CORRUPT) {
        qcow2_check_say(ck, p, "Note: the image is marked corrupt%s",
                        is_fix ? "" : "; 'vimg check -r all' repairs it");
    }
}

/* v3 snapshot table entries need the virtual disk size (qcow2.txt,
 * "Snapshots": extra data of at least 16 bytes).  Returns how many lack
 * it. */
static uint64_t report_incomplete_snapshots(struct check_state *ck,
                                            struct check_part *p)
{
    const struct qcow2_state *s = ck->s;
    const bool is_fix = ck->repair_flags & VIMG_CHECK_REPAIR_ERRORS;
    uint64_t nb_incomplete = 0;

    for (size_t k = 0; k < s->nb_snapshots && s->h.version >= 3; k++) {
        if (!s->snapshots[k].has_disk_size) {
            nb_incomplete++;
            qcow2_check_say(ck, p,
                            "%s: snapshot table entry %zu (snapshot %s, "
                            "'%s') is incomplete: version 3 images need 16 "
                            "bytes of extra data",
                            is_fix ? "Repairing" : "ERROR", k,
                            s->snapshots[k].id, s->snapshots[k].name);
        }
    }
    return nb_incomplete;
}

/* The passes, in order, with the driver lock held. */
static int check_locked(struct check_state *ck, struct check_part *p)
{
    struct qcow2_state *s = ck->s;
    const unsigned flags = ck->repair_flags;
    int ret = read_file_size(ck, p);

    if (ret < 0) {
        return ret;
    }
    p->result.total_clusters = VIMG_DIV_ROUND_UP(s->h.size, ck->cluster_size);
    if (s->check_load_error) {
        p->result.check_errors++;
        qcow2_check_say(ck, p, "ERROR: %s", s->check_load_msg);
        return vimg_error(s->check_load_error, "%s", s->check_load_msg);
    }
    say_header_notes(ck, p);
    const uint64_t nb_incomplete = report_incomplete_snapshots(ck, p);
    /* check -r opens the image for writing, as qemu-img check -r does */
    if (flags) {
        ret = qcow2_header_clear_unknown_autoclear(ck->img);
        if (ret < 0) {
            p->result.check_errors++;
            return ret;
        }
    }
    ret = check_refcounts(ck, p);
    if (ret < 0) {
        return ret;
    }
    p->result.corruptions += nb_incomplete;
    /* the snapshot table is fixed only once the refcounts are right */
    if (nb_incomplete && (flags & VIMG_CHECK_REPAIR_ERRORS) &&
        p->result.check_errors == 0) {
        ret = qcow2_check_fix_snapshot_table(ck, p);
        if (ret < 0) {
            return ret;
        }
        p->result.corruptions -= nb_incomplete;
        p->result.corruptions_fixed += nb_incomplete;
    }
    p->result.image_end_offset = (ck->last_used_cluster + 1)
                                 << ck->cluster_bits;
    if (flags && p->result.check_errors == 0 && p->result.corruptions == 0) {
        ret = qcow2_header_mark_clean(ck->img);
        if (ret < 0) {
            p->result.check_errors++;
        }
    }
    return ret;
}

int qcow2_check(struct vimg_image *img, unsigned flags, unsigned threads,
                struct vimg_check_result *res, vimg_check_report_fn report,
                void *opaque)
{
    struct qcow2_state *s = img->priv;
    struct check_state ck;
    struct check_part p;

    init_state(&ck, img, flags, threads, report, opaque);
    memset(&p, 0, sizeof(p));
    pthread_mutex_lock(&s->lock);
    const int ret = check_locked(&ck, &p);
    pthread_mutex_unlock(&s->lock);
    *res = p.result;
    free_state(&ck);
    return ret;
}
