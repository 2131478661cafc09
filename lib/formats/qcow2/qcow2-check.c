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
 * Memory: two bytes per cluster of the image file (counters that would
 * pass 0xffff on wide-refcount images go to a small side table), plus one
 * cluster-sized buffer per worker thread.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/qcow2/qcow2-check.h"
#include "util/pool.h"
#include "vimg-endian.h"

/* ------------------------------------------------------------ messages */

void qcow2_check_say(struct ck *ck, struct ck_part *p, const char *fmt, ...)
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
void qcow2_check_merge_part(struct ck *ck, struct ck_part *p, struct ck_part *w)
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

/* ----------------------------------------------------------------- I/O */

/* Read LEN bytes at OFF; bytes past the end of the file read as zeroes. */
int qcow2_check_read(struct ck *ck, void *buf, size_t len, uint64_t off)
{
    return vimg_io_pread(ck->img->io, buf, len, off);
}

int qcow2_check_write(struct ck *ck, const void *buf, size_t len, uint64_t off)
{
    int ret = vimg_io_pwrite(ck->img->io, buf, len, off);

    if (ret == 0 && off + len > ck->s->file_size) {
        ck->s->file_size = off + len;
    }
    return ret;
}

int qcow2_check_sync(struct ck *ck)
{
    return vimg_io_flush(ck->img->io);
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

/* THREADS as asked (vimg_check_opts), 0: one per CPU */
static unsigned thread_count(unsigned threads)
{
    long n = threads ? (long)threads : sysconf(_SC_NPROCESSORS_ONLN);
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
    int ret = qcow2_check_sync(ck);
    if (ret == 0) {
        ret = qcow2_check_write(ck, b, sizeof(b), QCOW2_HDR_INCOMPAT);
    }
    if (ret == 0) {
        ret = qcow2_check_sync(ck);
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
        if (qcow2_check_read(ck, buf, (size_t)ck->cs, l2_off) < 0) {
            continue;
        }
        for (uint64_t j = 0; j < ck->cs / eb; j++) {
            const uint64_t e = load_be64(buf + j * eb);
            const uint64_t g = g0 + j * ck->cs;
            switch (qcow2_check_entry_type(ck, e)) {
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
        if (qcow2_check_load_table(ck, &scratch, sn->l1_table_offset,
                                   sn->l1_size, &l1, &n) == 0) {
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
        qcow2_check_say(
            ck, p,
            "  cluster %llu (0x%llx) with too low a refcount is used "
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
    ret = qcow2_check_count_references(ck, p);
    if (ret < 0) {
        return ret;
    }
    const struct vimg_check_result pre = p->r;
    const bool is_fix_errors = ck->fix & VIMG_CHECK_REPAIR_ERRORS;
    /* read only: this compare is the last one, it may keep stored values */
    ck->suspects = calloc(CK_MAX_SUSPECTS, sizeof(*ck->suspects));
    ret = qcow2_check_compare_refcounts(ck, p, 0, ck->fix == 0);
    if (ret < 0) {
        return ret;
    }
    name_users(ck, p);
    free(ck->suspects);
    ck->suspects = NULL;
    ck->nb_suspects = 0;
    if (ck->is_rebuild_needed && is_fix_errors) {
        const struct vimg_check_result old = p->r;
        ret = qcow2_check_rebuild_refcount_structure(ck, p);
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
        ret = qcow2_check_count_references(ck, p);
        if (ret < 0) {
            return ret;
        }
        const struct vimg_check_result saved = p->r;
        memset(&p->r, 0, sizeof(p->r));
        ret = qcow2_check_compare_refcounts(
            ck, p, ck->fix & VIMG_CHECK_REPAIR_LEAKS, true);
        if (ck->is_rebuild_needed) {
            qcow2_check_say(ck, p,
                            "ERROR: the rebuilt refcount structure is still "
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
            qcow2_check_say(
                ck, p,
                "ERROR: the refcount structure must be rebuilt, which "
                "only '-r all' does");
            return vimg_error(-EIO, "%s: the refcount structure must be "
                                    "rebuilt ('-r all')",
                              ck->img->filename);
        }
        if (p->r.leaks || p->r.corruptions) {
            p->r = pre;
            ret = qcow2_check_compare_refcounts(ck, p, ck->fix, true);
            if (ret < 0) {
                return ret;
            }
        }
    }
    ret = qcow2_check_copied_flags(ck, p);
    if (ret < 0) {
        return ret;
    }
    return 0;
}

int qcow2_check(struct vimg_image *img, unsigned flags, unsigned threads,
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
    ck.nb_threads = thread_count(threads);
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
        qcow2_check_say(&ck, &p, "ERROR: %s", s->check_load_msg);
        ret = vimg_error(s->check_load_error, "%s", s->check_load_msg);
        goto out;
    }
    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        qcow2_check_say(&ck, &p,
                        "Note: the image is dirty (lazy refcounts, not closed "
                        "cleanly): its refcounts may be stale%s",
                        flags & VIMG_CHECK_REPAIR_ERRORS
                            ? ""
                            : "; 'vimg check -r all' "
                              "repairs them");
    }
    if (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
        qcow2_check_say(&ck, &p, "Note: the image is marked corrupt%s",
                        flags & VIMG_CHECK_REPAIR_ERRORS
                            ? ""
                            : "; 'vimg check -r all' "
                              "repairs it");
    }
    /* v3 snapshot table entries need the virtual disk size (qcow2.txt,
     * "Snapshots": extra data of at least 16 bytes) */
    uint64_t nb_incomplete = 0;
    for (size_t k = 0; k < s->nb_snapshots && s->h.version >= 3; k++) {
        if (!s->snapshots[k].has_disk_size) {
            nb_incomplete++;
            qcow2_check_say(&ck, &p,
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
        ret = qcow2_check_fix_snapshot_table(&ck, &p);
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
    vimg_pool_destroy(ck.pool);
    pthread_mutex_destroy(&ck.ovf_lock);
    return ret;
}
