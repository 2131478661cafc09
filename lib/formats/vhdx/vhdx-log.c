/* SPDX-License-Identifier: MIT */
/*
 * vhdx-log.c: the VHDX log ([MS-VHDX] 2.3): finding the active sequence
 * of entries and replaying it.  A read-write open replays into the file,
 * durably, and then clears the log GUID in both headers; a read-only open
 * replays into an in-memory overlay that every read of the file goes
 * through, leaving the file untouched.
 *
 * The log is a ring of 4 KiB sectors.  An entry is a header sector (its
 * first 64 bytes), descriptors (32 bytes each, after the header, padded to
 * whole sectors), then one data sector per data descriptor.  An entry is
 * valid when its signature, log GUID, lengths, CRC-32C over the whole
 * entry, descriptors and data sector sequence numbers all agree.  The
 * active sequence ends at the valid entry with the highest sequence
 * number whose Tail field leads, through entries with consecutive
 * sequence numbers, to it (2.3.3); a torn or invalid entry after it is
 * ignored.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

#define ENTRY_HEADER_BYTES 64u
#define DESC_BYTES 32u
/* Log replay writes go at or after the region tables' area, never into
 * the file identifier or the headers. */
#define REPLAY_MIN_OFFSET VHDX_REGION1_OFFSET

struct entry {
    uint32_t pos;
    uint32_t length;
    uint32_t tail;
    uint64_t seq;
    uint32_t nb_desc;
    uint32_t desc_sectors;
    uint64_t flushed_file_offset;
    uint64_t last_file_offset;
};

/* The 4 KiB sector POS bytes into the ring (POS sector-aligned) */
static const uint8_t *sector_at(const uint8_t *log, uint32_t len, uint64_t pos)
{
    return log + (pos % len);
}

/* Descriptor I of the entry at POS */
static const uint8_t *desc_at(const uint8_t *log, uint32_t len, uint32_t pos,
                              uint32_t i)
{
    const uint64_t rel = ENTRY_HEADER_BYTES + (uint64_t)DESC_BYTES * i;
    return sector_at(log, len, pos + rel / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR) +
           rel % VHDX_LOG_SECTOR;
}

static bool entry_header(const uint8_t *log, uint32_t len, uint32_t pos,
                         const uint8_t guid[16], struct entry *e)
{
    const uint8_t *p = sector_at(log, len, pos);

    if (memcmp(p, "loge", 4) != 0 || memcmp(p + 32, guid, 16) != 0) {
        return false;
    }
    e->pos = pos;
    e->length = load_le32(p + 8);
    e->tail = load_le32(p + 12);
    e->seq = load_le64(p + 16);
    e->nb_desc = load_le32(p + 24);
    e->flushed_file_offset = load_le64(p + 48);
    e->last_file_offset = load_le64(p + 56);
    if (e->length == 0 || e->length % VHDX_LOG_SECTOR || e->length > len ||
        e->tail % VHDX_LOG_SECTOR || e->tail >= len || e->seq == 0) {
        return false;
    }
    const uint64_t desc_bytes =
        ENTRY_HEADER_BYTES + (uint64_t)DESC_BYTES * e->nb_desc;
    e->desc_sectors =
        (uint32_t)((desc_bytes + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR);
    return desc_bytes <= e->length;
}

static bool entry_checksum_ok(const uint8_t *log, uint32_t len,
                              const struct entry *e)
{
    const uint8_t *first = sector_at(log, len, e->pos);
    uint32_t crc = vhdx_checksum(first, VHDX_LOG_SECTOR, 4);

    for (uint32_t s = 1; s < e->length / VHDX_LOG_SECTOR; s++) {
        crc = vhdx_crc32c(crc, sector_at(log, len,
                                         (uint64_t)e->pos +
                                             (uint64_t)s * VHDX_LOG_SECTOR),
                          VHDX_LOG_SECTOR);
    }
    return crc == load_le32(first + 4);
}

/* The descriptors and data sectors of E agree with each other */
static bool entry_descriptors_ok(const uint8_t *log, uint32_t len,
                                 const struct entry *e)
{
    uint32_t data = 0;

    for (uint32_t i = 0; i < e->nb_desc; i++) {
        const uint8_t *d = desc_at(log, len, e->pos, i);
        const uint64_t off = load_le64(d + 16);
        if (load_le64(d + 24) != e->seq || off % VHDX_LOG_SECTOR) {
            return false;
        }
        if (memcmp(d, "zero", 4) == 0) {
            const uint64_t n = load_le64(d + 8);
            if (n % VHDX_LOG_SECTOR) {
                return false;
            }
            continue;
        }
        if (memcmp(d, "desc", 4) != 0) {
            return false;
        }
        const uint64_t sec = e->desc_sectors + (uint64_t)data++;
        if (sec >= e->length / VHDX_LOG_SECTOR) {
            return false;
        }
        const uint8_t *s = sector_at(log, len,
                                     e->pos + sec * VHDX_LOG_SECTOR);
        if (memcmp(s, "data", 4) != 0 ||
            load_le32(s + 4) != (uint32_t)(e->seq >> 32) ||
            load_le32(s + 4092) != (uint32_t)e->seq) {
            return false;
        }
    }
    return true;
}

static bool entry_valid(const uint8_t *log, uint32_t len, uint32_t pos,
                        const uint8_t guid[16], struct entry *e)
{
    return entry_header(log, len, pos, guid, e) &&
           entry_checksum_ok(log, len, e) &&
           entry_descriptors_ok(log, len, e);
}

/* Does the chain from HEAD's tail reach HEAD through consecutive
 * sequence numbers?  *COUNT: the entries in it. */
static bool sequence_complete(const uint8_t *log, uint32_t len,
                              const uint8_t guid[16], const struct entry *head,
                              uint32_t *count)
{
    uint32_t pos = head->tail;
    uint64_t seq = 0;
    const uint32_t max = len / VHDX_LOG_SECTOR;

    for (uint32_t n = 1; n <= max; n++) {
        struct entry e;
        if (!entry_valid(log, len, pos, guid, &e) ||
            (n > 1 && e.seq != seq + 1)) {
            return false;
        }
        if (e.pos == head->pos) {
            *count = n;
            return e.seq == head->seq;
        }
        seq = e.seq;
        pos = (uint32_t)(((uint64_t)pos + e.length) % len);
    }
    return false;
}

int vhdx_log_find(const uint8_t *log, uint32_t len, const uint8_t guid[16],
                  struct vhdx_log_seq *out)
{
    struct entry best;
    uint32_t best_count = 0;
    bool have = false;

    memset(out, 0, sizeof(*out));
    if (len == 0 || len % VHDX_LOG_SECTOR) {
        return vimg_error(-EIO, "vhdx: corrupt log: length 0x%x",
                          (unsigned)len);
    }
    for (uint32_t pos = 0; pos < len; pos += VHDX_LOG_SECTOR) {
        struct entry e;
        uint32_t count;
        if ((have && load_le64(sector_at(log, len, pos) + 16) <= best.seq) ||
            !entry_valid(log, len, pos, guid, &e)) {
            continue;
        }
        if (sequence_complete(log, len, guid, &e, &count)) {
            best = e;
            best_count = count;
            have = true;
        }
    }
    if (!have) {
        return 0;
    }
    out->found = true;
    out->tail = best.tail;
    out->nb_entries = best_count;
    out->head_seq = best.seq;
    out->flushed_file_offset = best.flushed_file_offset;
    out->last_file_offset = best.last_file_offset;
    return 0;
}

int vhdx_log_replay(const uint8_t *log, uint32_t len,
                    const struct vhdx_log_seq *seq, vhdx_log_apply_fn apply,
                    void *opaque)
{
    uint32_t pos = seq->tail;
    uint8_t sector[VHDX_LOG_SECTOR];

    for (uint32_t n = 0; n < seq->nb_entries; n++) {
        struct entry e;
        /* vhdx_log_find validated every entry; read its header again */
        const uint8_t *h = sector_at(log, len, pos);
        e.pos = pos;
        e.length = load_le32(h + 8);
        e.nb_desc = load_le32(h + 24);
        e.desc_sectors = (uint32_t)((ENTRY_HEADER_BYTES +
                                     (uint64_t)DESC_BYTES * e.nb_desc +
                                     VHDX_LOG_SECTOR - 1) /
                                    VHDX_LOG_SECTOR);
        uint32_t data = 0;
        for (uint32_t i = 0; i < e.nb_desc; i++) {
            const uint8_t *d = desc_at(log, len, pos, i);
            const uint64_t off = load_le64(d + 16);
            int ret;
            if (memcmp(d, "zero", 4) == 0) {
                ret = apply(opaque, off, load_le64(d + 8), NULL);
            } else {
                const uint8_t *s = sector_at(
                    log, len,
                    pos + (uint64_t)(e.desc_sectors + data++) *
                              VHDX_LOG_SECTOR);
                memcpy(sector, d + 8, 8);
                memcpy(sector + 8, s + 8, 4084);
                memcpy(sector + 4092, d + 4, 4);
                ret = apply(opaque, off, VHDX_LOG_SECTOR, sector);
            }
            if (ret < 0) {
                return ret;
            }
        }
        pos = (uint32_t)(((uint64_t)pos + e.length) % len);
    }
    return 0;
}

/* The overlay: ranges applied in order, a later one wins */
int vhdx_overlay_add(struct vhdx_overlay *o, uint64_t offset,
                     uint64_t length, const uint8_t *data)
{
    if (o->nb == o->cap) {
        const size_t cap = o->cap ? o->cap * 2 : 16;
        void *p = realloc(o->ranges, cap * sizeof(*o->ranges));
        if (!p) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        o->ranges = p;
        o->cap = cap;
    }
    struct vhdx_overlay_range *r = &o->ranges[o->nb];
    r->offset = offset;
    r->length = length;
    r->data = NULL;
    if (data) {
        r->data = malloc(length);
        if (!r->data) {
            return vimg_error(-ENOMEM, "out of memory");
        }
        memcpy(r->data, data, length);
    }
    if (o->nb == 0 || offset < o->lo) {
        o->lo = offset;
    }
    if (o->nb == 0 || offset + length > o->hi) {
        o->hi = offset + length;
    }
    o->nb++;
    return 0;
}

void vhdx_overlay_free(struct vhdx_overlay *o)
{
    for (size_t i = 0; i < o->nb; i++) {
        free(o->ranges[i].data);
    }
    free(o->ranges);
    memset(o, 0, sizeof(*o));
}

int vhdx_file_read(struct vimg_image *img, void *buf, size_t count,
                   uint64_t offset)
{
    const struct vhdx_state *s = img->priv;
    const struct vhdx_overlay *o = &s->overlay;
    int ret = vimg_io_pread(img->io, buf, count, offset);

    if (ret < 0 || o->nb == 0 || offset >= o->hi || offset + count <= o->lo) {
        return ret;
    }
    for (size_t i = 0; i < o->nb; i++) {
        const struct vhdx_overlay_range *r = &o->ranges[i];
        const uint64_t lo = VIMG_MAX(r->offset, offset);
        const uint64_t hi = VIMG_MIN(r->offset + r->length, offset + count);
        if (lo >= hi) {
            continue;
        }
        uint8_t *dst = (uint8_t *)buf + (lo - offset);
        if (r->data) {
            memcpy(dst, r->data + (lo - r->offset), hi - lo);
        } else {
            memset(dst, 0, hi - lo);
        }
    }
    return 0;
}

struct replay_ctx {
    struct vimg_image *img;
    struct vhdx_state *s;
    bool writable;
};

/* One write of the log: checked, then into the file or the overlay */
static int apply_write(void *opaque, uint64_t offset, uint64_t length,
                       const uint8_t *data)
{
    struct replay_ctx *c = opaque;
    const struct vhdx_header *h = &c->s->h;
    uint64_t end;

    if (offset < REPLAY_MIN_OFFSET || vimg_add_overflows(offset, length, &end) ||
        end > VHDX_MAX_SIZE ||
        (offset < h->log_offset + h->log_length && h->log_offset < end)) {
        return vimg_error(-EIO, "%s: vhdx: the log cannot be replayed: it "
                                "writes 0x%llx bytes at 0x%llx, over the "
                                "headers or the log itself",
                          c->img->filename, (unsigned long long)length,
                          (unsigned long long)offset);
    }
    if (!c->writable) {
        return vhdx_overlay_add(&c->s->overlay, offset, length, data);
    }
    if (!data) {
        return vimg_io_zero(c->img->io, offset, length, false);
    }
    return vimg_io_pwrite(c->img->io, data, length, offset);
}

static int replay_durably(struct vimg_image *img, struct vhdx_state *s,
                          const uint8_t *log, const struct vhdx_log_seq *seq)
{
    struct replay_ctx c = {img, s, true};
    int ret = vhdx_log_replay(log, s->h.log_length, seq, apply_write, &c);

    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0 && s->file_size < seq->last_file_offset) {
        ret = vimg_io_truncate(img->io, seq->last_file_offset);
        if (ret == 0) {
            s->file_size = seq->last_file_offset;
            ret = vimg_io_flush(img->io);
        }
    }
    return ret;
}

int vhdx_log_open(struct vimg_image *img, struct vhdx_state *s,
                  bool writable)
{
    const struct vhdx_header *h = &s->h;
    struct vhdx_log_seq seq;
    uint8_t *log = NULL;
    int ret = 0;

    if (vhdx_guid_is_zero(h->log_guid)) {
        return 0;
    }
    if (h->log_length == 0 || h->log_offset + h->log_length > s->file_size) {
        return vimg_error(-EIO, "%s: vhdx: the log cannot be replayed: it "
                                "lies at 0x%llx, 0x%x bytes, past the end of "
                                "the file",
                          img->filename, (unsigned long long)h->log_offset,
                          (unsigned)h->log_length);
    }
    log = malloc(h->log_length);
    if (!log) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    ret = vimg_io_pread(img->io, log, h->log_length, h->log_offset);
    if (ret == 0) {
        ret = vhdx_log_find(log, h->log_length, h->log_guid, &seq);
    }
    if (ret == 0 && seq.found && s->file_size < seq.flushed_file_offset) {
        ret = vimg_error(-EIO, "%s: vhdx: the log cannot be replayed: the "
                               "file is 0x%llx bytes, shorter than the 0x%llx "
                               "its log entries were written for",
                         img->filename, (unsigned long long)s->file_size,
                         (unsigned long long)seq.flushed_file_offset);
    }
    if (ret == 0 && seq.found && writable) {
        ret = replay_durably(img, s, log, &seq);
    } else if (ret == 0 && seq.found) {
        struct replay_ctx c = {img, s, false};
        ret = vhdx_log_replay(log, h->log_length, &seq, apply_write, &c);
    }
    if (ret == 0 && writable) {
        /* both headers without the log GUID (2.2.2.1) */
        memset(s->h.log_guid, 0, sizeof(s->h.log_guid));
        ret = vhdx_update_headers(img, s);
    }
    s->log_replayed = ret == 0 && seq.found;
    free(log);
    return ret;
}
