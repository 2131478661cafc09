/* SPDX-License-Identifier: MIT */
/*
 * qcow.c: the QCOW version 1 driver: probe, open, close, the L2 cache,
 * reads, writes (allocating and compressed), block status.
 *
 * Locking: S->lock guards the L1 table, the L2 cache and file_end; it is
 * held while a write allocates (so two writes never allocate the same
 * guest cluster twice) but not while reads, or writes into allocated
 * clusters, move data.
 *
 * Crash safety (there are no refcounts in QCOW v1): new clusters are
 * always taken at the end of the file; their data is written and flushed
 * before an L2 entry points at them, and a new L2 table is written and
 * flushed before the L1 entry points at it.  A crash may leave unused
 * bytes at the end of the file, never a pointer to unwritten data.
 */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "formats/qcow/qcow.h"
#include "vimg-endian.h"

static int qcow_probe(const uint8_t *buf, size_t len)
{
    return len >= 8 && load_be32(buf) == QCOW_MAGIC &&
                   load_be32(buf + 4) == QCOW_VERSION
               ? 100
               : 0;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static void qcow_close(struct vimg_image *img)
{
    struct qcow_state *s = img->priv;

    if (!s) {
        return;
    }
    for (size_t i = 0; i < QCOW_L2_CACHE_SLOTS; i++) {
        free(s->l2_cache[i].entries);
    }
    free(s->l1);
    pthread_mutex_destroy(&s->lock);
    free(s);
    img->priv = NULL;
}

static int read_backing_name(struct vimg_image *img, struct qcow_state *s)
{
    const struct qcow_header *h = &s->h;

    if (!h->backing_file_offset || !h->backing_file_size) {
        return 0;
    }
    char *name = calloc(1, h->backing_file_size + 1);
    if (!name) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, name, h->backing_file_size,
                            h->backing_file_offset);
    if (ret < 0 || name[0] == '\0') {
        free(name);
        return ret;
    }
    img->backing_name = name;
    return 0;
}

static int load_l1(struct vimg_image *img, struct qcow_state *s)
{
    const uint64_t n = s->h.l1_size;

    s->l1 = calloc(n ? n : 1, sizeof(uint64_t));
    if (!s->l1) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, s->l1, (size_t)n * 8,
                            s->h.l1_table_offset);
    if (ret < 0) {
        return ret;
    }
    load_be64_array(s->l1, n);
    return 0;
}

static int qcow_open(struct vimg_image *img, unsigned flags)
{
    uint8_t buf[QCOW_HDR_LEN];
    struct qcow_state *s = calloc(1, sizeof(*s));

    if (!s) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    pthread_mutex_init(&s->lock, NULL);
    img->priv = s;
    uint64_t file_size = 0;
    int ret = vimg_io_get_size(img->io, &file_size);
    if (ret == 0) {
        ret = vimg_io_pread(img->io, buf, sizeof(buf), 0);
    }
    if (ret == 0) {
        ret = qcow_header_decode(buf, sizeof(buf), &s->h);
        if (ret < 0) {
            vimg_error_prefix("%s", img->filename);
        }
    }
    if (ret < 0) {
        goto out;
    }
    /* info needs no key: an encrypted image opens for info only */
    if (s->h.crypt_method != QCOW_CRYPT_NONE &&
        ((flags & VIMG_OPEN_RDWR) || !(flags & VIMG_OPEN_INFO_ONLY))) {
        ret = vimg_error(-ENOTSUP, "%s: encrypted qcow images (aes) are not "
                                   "supported yet",
                         img->filename);
        goto out;
    }
    s->cluster_size = 1u << s->h.cluster_bits;
    s->l2_entries = 1u << s->h.l2_bits;
    s->l1_bytes = s->h.l1_size * 8;
    s->meta_end = VIMG_MAX((uint64_t)QCOW_HDR_LEN,
                           s->h.l1_table_offset + s->l1_bytes);
    if (s->h.backing_file_offset) {
        s->meta_end = VIMG_MAX(s->meta_end, s->h.backing_file_offset +
                                                s->h.backing_file_size);
    }
    /* new clusters go at the end of the file: never inside the tables */
    if (s->meta_end > file_size && (flags & VIMG_OPEN_RDWR) &&
        !(flags & VIMG_OPEN_CHECK)) {
        ret = vimg_error(-EIO, "%s: qcow: corrupt image: the backing name "
                               "or L1 table ends at 0x%llx, past the end of "
                               "the file (0x%llx); it can only be opened "
                               "read-only",
                         img->filename, (unsigned long long)s->meta_end,
                         (unsigned long long)file_size);
        goto out;
    }
    s->file_end = VIMG_MAX(file_size, s->meta_end);
    ret = read_backing_name(img, s);
    if (ret == 0) {
        ret = load_l1(img, s);
    }
    if (ret < 0) {
        goto out;
    }
    /* as qemu: whole sectors of the size stored */
    img->size = s->h.size & ~511ull;
    return 0;
out:
    qcow_close(img);
    return ret;
}

static uint32_t qcow_cluster_size(struct vimg_image *img)
{
    const struct qcow_state *s = img->priv;

    return s->cluster_size;
}

int qcow_read_l2(struct vimg_image *img, uint64_t offset, uint64_t *entries)
{
    const struct qcow_state *s = img->priv;
    const size_t n = s->l2_entries;
    int ret = vimg_io_pread(img->io, entries, n * 8, offset);

    if (ret < 0) {
        return ret;
    }
    load_be64_array(entries, n);
    return 0;
}

/* The cached entries of the L2 table at OFFSET, loading it if needed. */
static int l2_get_locked(struct vimg_image *img, uint64_t offset,
                         uint64_t **out)
{
    struct qcow_state *s = img->priv;
    struct qcow_l2_slot *victim = &s->l2_cache[0];

    for (size_t i = 0; i < QCOW_L2_CACHE_SLOTS; i++) {
        struct qcow_l2_slot *slot = &s->l2_cache[i];
        if (slot->offset == offset && slot->entries) {
            slot->last_use = ++s->use_clock;
            *out = slot->entries;
            return 0;
        }
        if (!slot->entries || slot->last_use < victim->last_use) {
            victim = slot;
        }
    }
    if (!victim->entries) {
        victim->entries = malloc((size_t)s->l2_entries * 8);
        if (!victim->entries) {
            return vimg_error(-ENOMEM, "out of memory");
        }
    }
    victim->offset = 0;
    int ret = qcow_read_l2(img, offset, victim->entries);
    if (ret < 0) {
        return ret;
    }
    victim->offset = offset;
    victim->last_use = ++s->use_clock;
    *out = victim->entries;
    return 0;
}

/* The L2 table of L1 entry L1_INDEX: *OUT NULL when there is none. */
static int l2_for_index_locked(struct vimg_image *img, uint64_t l1_index,
                               uint64_t **out)
{
    struct qcow_state *s = img->priv;
    const uint64_t l2_bytes = (uint64_t)s->l2_entries * 8;

    *out = NULL;
    if (l1_index >= s->h.l1_size || !s->l1[l1_index]) {
        return 0;
    }
    const uint64_t off = s->l1[l1_index];
    if (off < s->meta_end || off > s->file_end ||
        s->file_end - off < l2_bytes) {
        return vimg_error(-EIO, "%s: qcow: corrupt L1 entry %llu: L2 table "
                                "offset 0x%llx outside the file's data",
                          img->filename, (unsigned long long)l1_index,
                          (unsigned long long)off);
    }
    return l2_get_locked(img, off, out);
}

/* Is mapping M of guest cluster INDEX inside the file's data? */
static int check_mapping(struct vimg_image *img, uint64_t index,
                         const struct qcow_mapping *m)
{
    const struct qcow_state *s = img->priv;
    const uint64_t len =
        m->kind == QCOW_CLUSTER_COMPRESSED ? m->csize : 1;

    if (m->kind == QCOW_CLUSTER_UNALLOCATED) {
        return 0;
    }
    if (m->offset < s->meta_end || m->offset > s->file_end || len == 0 ||
        s->file_end - m->offset < len) {
        return vimg_error(-EIO, "%s: qcow: corrupt L2 entry of guest offset "
                                "0x%llx: %s cluster at 0x%llx (%u bytes) "
                                "outside the file's data",
                          img->filename,
                          (unsigned long long)(index << s->h.cluster_bits),
                          m->kind == QCOW_CLUSTER_COMPRESSED ? "compressed"
                                                             : "data",
                          (unsigned long long)m->offset, m->csize);
    }
    return 0;
}

int qcow_get_mapping_locked(struct vimg_image *img, uint64_t index,
                            struct qcow_mapping *out)
{
    struct qcow_state *s = img->priv;
    uint64_t *l2;
    int ret = l2_for_index_locked(img, index >> s->h.l2_bits, &l2);

    if (ret < 0) {
        return ret;
    }
    if (!l2) {
        memset(out, 0, sizeof(*out));
        return 0;
    }
    qcow_l2_entry_decode(l2[index & (s->l2_entries - 1)], s->h.cluster_bits,
                         out);
    return check_mapping(img, index, out);
}

/*
 * The mapping of the cluster at OFFSET, and *LEN: how many bytes from
 * OFFSET (at most MAX) map the same way (unallocated, compressed within
 * one cluster, or data at consecutive host offsets).
 */
static int get_run(struct vimg_image *img, uint64_t offset, uint64_t max,
                   struct qcow_mapping *m, uint64_t *len)
{
    struct qcow_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const unsigned table_shift = s->h.cluster_bits + s->h.l2_bits;
    uint64_t index = offset >> s->h.cluster_bits;
    /* bounded work per call (a damaged L1 table may repeat one table
     * millions of times); callers ask again for the rest */
    unsigned budget = 1u << 16;

    pthread_mutex_lock(&s->lock);
    int ret = qcow_get_mapping_locked(img, index, m);
    uint64_t n = VIMG_MIN(max, cs - (offset & (cs - 1)));
    while (ret == 0 && n < max && m->kind != QCOW_CLUSTER_COMPRESSED &&
           budget--) {
        struct qcow_mapping next;
        index = (offset + n) >> s->h.cluster_bits;
        const uint64_t l1_index = index >> s->h.l2_bits;
        if (m->kind == QCOW_CLUSTER_UNALLOCATED && !s->l1[l1_index]) {
            /* a whole table's span without a table: one step */
            n = VIMG_MIN(max, ((l1_index + 1) << table_shift) - offset);
            continue;
        }
        ret = qcow_get_mapping_locked(img, index, &next);
        if (ret < 0 || next.kind != m->kind ||
            (m->kind == QCOW_CLUSTER_NORMAL &&
             next.offset != m->offset + ((index << s->h.cluster_bits) -
                                         (offset & ~(cs - 1))))) {
            break;
        }
        n = VIMG_MIN(max, n + cs);
    }
    pthread_mutex_unlock(&s->lock);
    *len = n;
    return ret;
}

/* The whole guest cluster of compressed mapping M, inflated into OUT. */
static int read_compressed(struct vimg_image *img,
                           const struct qcow_mapping *m, uint8_t *out)
{
    const struct qcow_state *s = img->priv;
    uint8_t *in = malloc(m->csize);

    if (!in) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vimg_io_pread(img->io, in, m->csize, m->offset);
    if (ret == 0 &&
        vimg_inflate_raw(in, m->csize, out, s->cluster_size) < 0) {
        ret = vimg_error(-EIO, "%s: qcow: corrupt compressed cluster at "
                               "0x%llx (%u bytes)",
                         img->filename, (unsigned long long)m->offset,
                         m->csize);
    }
    free(in);
    return ret;
}

static int qcow_pread(struct vimg_image *img, void *buf, size_t count,
                      uint64_t offset)
{
    struct qcow_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    uint8_t *p = buf;
    uint8_t *cluster = NULL;
    int ret = 0;

    while (count && ret == 0) {
        struct qcow_mapping m;
        uint64_t n;
        ret = get_run(img, offset, count, &m, &n);
        if (ret < 0) {
            break;
        }
        const uint64_t in = offset & (cs - 1);
        switch (m.kind) {
        case QCOW_CLUSTER_UNALLOCATED:
            ret = vimg_read_backing(img, p, (size_t)n, offset);
            break;
        case QCOW_CLUSTER_NORMAL:
            ret = vimg_io_pread(img->io, p, (size_t)n, m.offset + in);
            break;
        case QCOW_CLUSTER_COMPRESSED:
            if (!cluster && !(cluster = malloc(cs))) {
                ret = vimg_error(-ENOMEM, "out of memory");
                break;
            }
            ret = read_compressed(img, &m, cluster);
            if (ret == 0) {
                memcpy(p, cluster + in, (size_t)n);
            }
            break;
        }
        p += n;
        offset += n;
        count -= (size_t)n;
    }
    free(cluster);
    return ret;
}

/* The current content of guest cluster INDEX (mapping M, not normal). */
static int old_cluster(struct vimg_image *img, uint64_t index,
                       const struct qcow_mapping *m, uint8_t *out)
{
    const struct qcow_state *s = img->priv;

    if (m->kind == QCOW_CLUSTER_COMPRESSED) {
        return read_compressed(img, m, out);
    }
    return vimg_read_backing(img, out, s->cluster_size,
                             index << s->h.cluster_bits);
}

/*
 * Point entries FIRST..FIRST+N-1 of L1 entry L1_INDEX's L2 table at
 * ENTRIES, in crash-safe order, after the data they point at was written:
 * flush, then the entries; or, for a new table at NEW_L2 (L2 was NULL),
 * the whole table, flush, then the L1 entry.
 */
static int commit_entries_locked(struct vimg_image *img, uint64_t l1_index,
                                 uint64_t *l2, uint64_t new_l2,
                                 size_t first, const uint64_t *entries,
                                 size_t n)
{
    struct qcow_state *s = img->priv;
    const size_t l2_bytes = (size_t)s->l2_entries * 8;
    int ret;

    if (l2) {
        uint8_t *be = malloc(n * 8);
        if (!be) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < n; i++) {
            store_be64(be + i * 8, entries[i]);
        }
        ret = vimg_io_flush(img->io);
        if (ret == 0) {
            ret = vimg_io_pwrite(img->io, be, n * 8,
                                 s->l1[l1_index] + first * 8);
        }
        free(be);
        if (ret == 0) {
            memcpy(l2 + first, entries, n * 8);
        }
        return ret;
    }
    uint8_t *table = calloc(1, l2_bytes);
    if (!table) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        store_be64(table + (first + i) * 8, entries[i]);
    }
    ret = vimg_io_pwrite(img->io, table, l2_bytes, new_l2);
    free(table);
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    uint8_t be[8];
    store_be64(be, new_l2);
    if (ret == 0) {
        ret = vimg_io_pwrite(img->io, be, 8,
                             s->h.l1_table_offset + l1_index * 8);
    }
    if (ret == 0) {
        s->l1[l1_index] = new_l2;
    }
    return ret;
}

/* Reserve room for a new L2 table when L2 is NULL (*NEW_L2, else 0). */
static void reserve_l2_locked(struct qcow_state *s, const uint64_t *l2,
                              uint64_t *new_l2)
{
    *new_l2 = 0;
    if (!l2) {
        *new_l2 = align_up(s->file_end, s->cluster_size);
        s->file_end = *new_l2 + (uint64_t)s->l2_entries * 8;
    }
}

/*
 * Write BUF (COUNT bytes at guest OFFSET, whose cluster is unallocated or
 * compressed) into new clusters: this cluster and the unallocated ones
 * after it in the same L2 table that the write reaches.  *DONE gets the
 * bytes written.  Holds S->lock throughout.
 */
static int write_allocating(struct vimg_image *img, const uint8_t *buf,
                            uint64_t count, uint64_t offset, uint64_t *done)
{
    struct qcow_state *s = img->priv;
    const uint64_t cs = s->cluster_size;
    const unsigned cb = s->h.cluster_bits;
    const uint64_t index = offset >> cb;
    const uint64_t l1_index = index >> s->h.l2_bits;
    const size_t first = (size_t)(index & (s->l2_entries - 1));
    const uint64_t in = offset & (cs - 1);
    uint64_t *l2 = NULL;
    uint8_t *data = NULL;
    uint64_t *entries = NULL;
    struct qcow_mapping m0, m;

    pthread_mutex_lock(&s->lock);
    int ret = qcow_get_mapping_locked(img, index, &m0);
    if (ret == 0) {
        ret = l2_for_index_locked(img, l1_index, &l2);
    }
    if (ret < 0 || m0.kind == QCOW_CLUSTER_NORMAL) {
        /* allocated meanwhile: the caller writes in place */
        *done = 0;
        goto out;
    }
    /* how many clusters: up to 1 MiB of them, unallocated after the first */
    size_t n = 1;
    const size_t max = (size_t)VIMG_MAX(1, (1u << 20) >> cb);
    while (n < max && first + n < s->l2_entries &&
           ((index + n) << cb) < offset + count) {
        ret = qcow_get_mapping_locked(img, index + n, &m);
        if (ret < 0) {
            goto out;
        }
        if (m.kind != QCOW_CLUSTER_UNALLOCATED) {
            break;
        }
        n++;
    }
    /* l2 may have been evicted by the lookups: fetch it again */
    ret = l2_for_index_locked(img, l1_index, &l2);
    const uint64_t len = VIMG_MIN(count, (n << cb) - in);
    data = malloc(n * cs);
    entries = malloc(n * sizeof(*entries));
    if (ret == 0 && (!data || !entries)) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    if (ret == 0 && (in || (n == 1 && in + len < cs))) {
        ret = old_cluster(img, index, &m0, data);
    }
    const uint64_t end = in + len;
    if (ret == 0 && (end & (cs - 1)) && (n > 1 || in == 0)) {
        m.kind = QCOW_CLUSTER_UNALLOCATED;
        ret = old_cluster(img, index + n - 1, n == 1 ? &m0 : &m,
                          data + (n - 1) * cs);
    }
    if (ret < 0) {
        goto out;
    }
    memcpy(data + in, buf, (size_t)len);
    uint64_t new_l2;
    reserve_l2_locked(s, l2, &new_l2);
    const uint64_t host = align_up(s->file_end, cs);
    s->file_end = host + n * cs;
    ret = vimg_io_pwrite(img->io, data, (size_t)(n * cs), host);
    for (size_t i = 0; i < n; i++) {
        entries[i] = host + i * cs;
    }
    if (ret == 0) {
        ret = commit_entries_locked(img, l1_index, l2, new_l2, first,
                                    entries, n);
    }
    *done = len;
out:
    pthread_mutex_unlock(&s->lock);
    free(data);
    free(entries);
    return ret;
}

static int qcow_pwrite(struct vimg_image *img, const void *buf, size_t count,
                       uint64_t offset)
{
    const uint8_t *p = buf;

    while (count) {
        struct qcow_mapping m;
        uint64_t n;
        int ret = get_run(img, offset, count, &m, &n);
        if (ret < 0) {
            return ret;
        }
        if (m.kind == QCOW_CLUSTER_NORMAL) {
            const struct qcow_state *s = img->priv;
            ret = vimg_io_pwrite(img->io, p, (size_t)n,
                                 m.offset + (offset & (s->cluster_size - 1)));
        } else {
            ret = write_allocating(img, p, count, offset, &n);
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        offset += n;
        count -= (size_t)n;
    }
    return 0;
}

/* Zeroes: nothing to do for clusters that read as zeroes already */
static int qcow_write_zeroes(struct vimg_image *img, uint64_t offset,
                             uint64_t count, unsigned flags)
{
    const struct qcow_state *s = img->priv;
    uint8_t *zero = calloc(1, s->cluster_size);
    int ret = zero ? 0 : vimg_error(-ENOMEM, "out of memory");

    (void)flags;
    while (count && ret == 0) {
        struct qcow_mapping m;
        uint64_t n;
        ret = get_run(img, offset, VIMG_MIN(count, s->cluster_size), &m, &n);
        if (ret == 0 &&
            (m.kind != QCOW_CLUSTER_UNALLOCATED || img->backing_name)) {
            ret = qcow_pwrite(img, zero, (size_t)n, offset);
        }
        offset += n;
        count -= n;
    }
    free(zero);
    return ret;
}

static int qcow_flush(struct vimg_image *img)
{
    return vimg_io_flush(img->io);
}

/* One cluster (the last of an odd-sized disk zero-padded) as raw
 * deflate, worth it only if it saves at least a byte of the cluster */
static int qcow_compress_cluster(struct vimg_image *img, const void *data,
                                 size_t len, void *out, size_t out_cap)
{
    const struct qcow_state *s = img->priv;
    uint8_t *cluster = calloc(1, s->cluster_size);

    if (!cluster) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    memcpy(cluster, data, len);
    int ret = vimg_deflate_raw(cluster, s->cluster_size, out,
                               VIMG_MIN(out_cap, s->cluster_size - 1u), 0);
    free(cluster);
    return ret;
}

static int qcow_pwrite_compressed(struct vimg_image *img, const void *data,
                                  size_t len, uint64_t offset)
{
    struct qcow_state *s = img->priv;
    const uint64_t index = offset >> s->h.cluster_bits;
    const uint64_t l1_index = index >> s->h.l2_bits;
    uint64_t *l2 = NULL, new_l2;

    pthread_mutex_lock(&s->lock);
    int ret = l2_for_index_locked(img, l1_index, &l2);
    if (ret == 0) {
        reserve_l2_locked(s, l2, &new_l2);
        /* streams are packed at the end of the file, as qemu does */
        const uint64_t host = s->file_end;
        s->file_end += len;
        ret = vimg_io_pwrite(img->io, data, len, host);
        const uint64_t e = qcow_l2_entry_compressed(host, (uint32_t)len,
                                                    s->h.cluster_bits);
        if (ret == 0) {
            ret = commit_entries_locked(
                img, l1_index, l2, new_l2,
                (size_t)(index & (s->l2_entries - 1)), &e, 1);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int qcow_block_status(struct vimg_image *img, uint64_t offset,
                             uint64_t count, struct vimg_layer_status *out)
{
    const struct qcow_state *s = img->priv;
    struct qcow_mapping m;
    int ret = get_run(img, offset, count, &m, &out->length);

    if (ret < 0) {
        return ret;
    }
    out->file_name = img->filename;
    out->file_offset = 0;
    switch (m.kind) {
    case QCOW_CLUSTER_UNALLOCATED:
        out->flags = 0;
        break;
    case QCOW_CLUSTER_NORMAL:
        out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET;
        out->file_offset = m.offset + (offset & (s->cluster_size - 1));
        break;
    case QCOW_CLUSTER_COMPRESSED:
        out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_COMPRESSED;
        break;
    }
    return 0;
}

/* commit's emptying, as qemu's qcow does it: a zeroed L1 table, then the
 * file cut right after it */
static int qcow_make_empty(struct vimg_image *img)
{
    struct qcow_state *s = img->priv;
    uint8_t *zero = calloc(1, s->l1_bytes ? (size_t)s->l1_bytes : 1);

    if (!zero) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&s->lock);
    int ret = vimg_io_pwrite(img->io, zero, (size_t)s->l1_bytes,
                             s->h.l1_table_offset);
    if (ret == 0) {
        memset(s->l1, 0, (size_t)s->l1_bytes);
        for (size_t i = 0; i < QCOW_L2_CACHE_SLOTS; i++) {
            s->l2_cache[i].offset = 0;
        }
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0) {
        s->file_end = s->h.l1_table_offset + s->l1_bytes;
        ret = vimg_io_truncate(img->io, s->file_end);
    }
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    pthread_mutex_unlock(&s->lock);
    free(zero);
    return ret;
}

const struct vimg_format vimg_format_qcow = {
    .name = "qcow",
    .probe = qcow_probe,
    .open = qcow_open,
    .close = qcow_close,
    .pread = qcow_pread,
    .pwrite = qcow_pwrite,
    .flush = qcow_flush,
    .write_zeroes = qcow_write_zeroes,
    .cluster_size = qcow_cluster_size,
    .compress_cluster = qcow_compress_cluster,
    .pwrite_compressed = qcow_pwrite_compressed,
    .block_status = qcow_block_status,
    .make_empty = qcow_make_empty,
    .info = qcow_info,
    .check = qcow_check,
    .create = qcow_create,
    .options = qcow_options,
    .check_option = qcow_check_option,
    .describe_options = qcow_describe_options,
};
