/* SPDX-License-Identifier: MIT */
/*
 * vhdx-write.c: writes.  Data into a fully present block goes straight to
 * its host offset.  A write into any other block first makes the block
 * fully present: a new block at the end of the file (or the block's own
 * offset when it has one, as a fixed disk's ZERO blocks do), filled with
 * zeroes, or with the parent's data (a differencing disk; a partially
 * present block keeps its own sectors and gets the parent's for the
 * others), then the data.  The BAT change then goes through the log
 * ([MS-VHDX] 2.3):
 *
 *   block data written, flush; log entry (the BAT sector), flush;
 *   BAT sector in place, flush
 *
 * so a crash at any point leaves the old mapping or, after replay, the
 * new one, with the data in place.  Each entry's Tail is the entry
 * itself: everything logged before it is already durable in place.  The
 * first write of an open gives the headers new file and data write GUIDs
 * and a fresh log GUID (older entries in the ring are then ignored); a
 * clean close clears the log GUID again, so other readers see no log.
 *
 * One mutex guards the BAT, allocation and the log; data reads and writes
 * into present blocks run without it.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

#define FILL_CHUNK VHDX_MiB

/* Both headers rewritten from s->h, the non-current one first, each
 * flushed (2.2.2.1) */
int vhdx_update_headers(struct vimg_image *img, struct vhdx_state *s)
{
    uint8_t buf[VHDX_HEADER_SIZE];

    for (int i = 0; i < 2; i++) {
        const int slot = 1 - s->cur_header;
        s->h.seq++;
        vhdx_header_encode(&s->h, buf);
        int ret = vimg_io_pwrite(img->io, buf, sizeof(buf),
                                 slot ? VHDX_HEADER2_OFFSET
                                      : VHDX_HEADER1_OFFSET);
        if (ret == 0) {
            ret = vimg_io_flush(img->io);
        }
        if (ret < 0) {
            return ret;
        }
        s->cur_header = slot;
    }
    return 0;
}

/* The first change of this open: new GUIDs and a fresh log */
static int begin_writes(struct vimg_image *img, struct vhdx_state *s)
{
    if (s->is_log_open) {
        return 0;
    }
    if (s->h.log_length < 2 * VHDX_LOG_SECTOR) {
        return vimg_error(-ENOTSUP, "%s: vhdx: a log of %u bytes is too "
                                    "small to write",
                          img->filename, (unsigned)s->h.log_length);
    }
    vhdx_guid_random(s->h.file_write_guid);
    vhdx_guid_random(s->h.data_write_guid);
    vhdx_guid_random(s->h.log_guid);
    int ret = vhdx_update_headers(img, s);
    if (ret < 0) {
        return ret;
    }
    s->is_log_open = true;
    s->log_pos = 0;
    s->log_seq = 1;
    return 0;
}

/* One log entry holding the 4 KiB sector SECTOR for file offset OFF */
static int log_sector(struct vimg_image *img, struct vhdx_state *s,
                      uint64_t off, const uint8_t *sector)
{
    uint8_t e[2 * VHDX_LOG_SECTOR] = {0};
    const uint64_t seq = s->log_seq;

    memcpy(e, "loge", 4);
    store_le32(e + 8, sizeof(e));
    store_le32(e + 12, s->log_pos);
    store_le64(e + 16, seq);
    store_le32(e + 24, 1);
    memcpy(e + 32, s->h.log_guid, 16);
    store_le64(e + 48, s->file_size);
    store_le64(e + 56, s->file_size);
    uint8_t *d = e + 64;
    memcpy(d, "desc", 4);
    memcpy(d + 4, sector + 4092, 4);
    memcpy(d + 8, sector, 8);
    store_le64(d + 16, off);
    store_le64(d + 24, seq);
    uint8_t *data = e + VHDX_LOG_SECTOR;
    memcpy(data, "data", 4);
    store_le32(data + 4, (uint32_t)(seq >> 32));
    memcpy(data + 8, sector + 8, 4084);
    store_le32(data + 4092, (uint32_t)seq);
    store_le32(e + 4, vhdx_checksum(e, sizeof(e), 4));
    for (uint32_t i = 0; i < sizeof(e); i += VHDX_LOG_SECTOR) {
        const uint64_t at = s->h.log_offset +
                            (s->log_pos + (uint64_t)i) % s->h.log_length;
        int ret = vimg_io_pwrite(img->io, e + i, VHDX_LOG_SECTOR, at);
        if (ret < 0) {
            return ret;
        }
    }
    s->log_pos = (uint32_t)((s->log_pos + sizeof(e)) % s->h.log_length);
    s->log_seq++;
    return vimg_io_flush(img->io);
}

/* BAT entry INDEX becomes VALUE: through the log, then in place */
static int set_bat_entry(struct vimg_image *img, struct vhdx_state *s,
                         uint64_t index, uint64_t value)
{
    uint8_t sector[VHDX_LOG_SECTOR];
    const uint64_t rel = index * 8 / VHDX_LOG_SECTOR * VHDX_LOG_SECTOR;
    const uint64_t off = s->r.bat_offset + rel;
    const uint64_t first = rel / 8;

    int ret = vimg_io_pread(img->io, sector, sizeof(sector), off);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < VHDX_LOG_SECTOR / 8; i++) {
        if (first + i < s->bat_entries) {
            store_le64(sector + 8 * i,
                       first + i == index ? value : s->bat[first + i]);
        }
    }
    ret = log_sector(img, s, off, sector);
    if (ret == 0) {
        ret = vimg_io_pwrite(img->io, sector, sizeof(sector), off);
    }
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0) {
        s->bat[index] = value;
    }
    return ret;
}

/* Fill [from, to) of the block at HOST, whose guest offset is GUEST, with
 * what the disk reads there now (zeroes or the parent's data); runs of
 * the block's own sectors (partially present) are kept. */
static int fill_block(struct vimg_image *img, uint64_t guest, uint64_t host,
                      uint64_t from, uint64_t to, bool is_fresh)
{
    uint8_t *buf = NULL;
    int ret = 0;

    while (ret == 0 && from < to) {
        struct vhdx_run run;
        ret = vhdx_get_run(img, guest + from, to - from, &run);
        if (ret < 0) {
            break;
        }
        const uint64_t n = run.length;
        if (run.kind == VHDX_RUN_ZERO ||
            (run.kind == VHDX_RUN_BACKING && !img->backing)) {
            if (!is_fresh) {
                ret = vimg_io_zero(img->io, host + from, n, false);
            }
        } else if (run.kind == VHDX_RUN_BACKING) {
            if (!buf && !(buf = malloc(FILL_CHUNK))) {
                ret = vimg_error(-ENOMEM, "out of memory");
                break;
            }
            for (uint64_t k = 0; ret == 0 && k < n; k += FILL_CHUNK) {
                const size_t c = (size_t)VIMG_MIN(n - k, FILL_CHUNK);
                ret = vimg_read_backing(img, buf, c, guest + from + k);
                if (ret == 0) {
                    ret = vimg_io_pwrite(img->io, buf, c, host + from + k);
                }
            }
        }
        /* VHDX_RUN_DATA: the block's own sector, already in place */
        from += n;
    }
    free(buf);
    return ret;
}

/* Make BLOCK fully present (the mutex held); its host offset in *HOST */
static int allocate_block(struct vimg_image *img, struct vhdx_state *s,
                          uint64_t block, uint64_t in_block, uint64_t count,
                          const void *data, uint64_t *host)
{
    const uint64_t bs = s->m.block_size;
    const uint64_t index = vhdx_payload_index(s, block);
    const uint64_t e = s->bat[index];
    const unsigned state = e & VHDX_BAT_STATE_MASK;
    uint64_t off = e & VHDX_BAT_OFFSET_MASK;
    bool is_fresh = false;
    int ret = begin_writes(img, s);

    if (ret < 0) {
        return ret;
    }
    /* a fixed disk's blocks keep their place */
    if (state == VHDX_PAYLOAD_NOT_PRESENT || !s->m.leave_blocks_allocated ||
        state == VHDX_PAYLOAD_PARTIALLY_PRESENT ||
        !vhdx_block_offset_ok(s, off, bs)) {
        off = state == VHDX_PAYLOAD_PARTIALLY_PRESENT ? off : 0;
    }
    if (off == 0) {
        /* a new block at the end of the file, 1 MiB aligned */
        off = (s->file_size + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
        if (off < VHDX_MiB) {
            off = VHDX_MiB;
        }
        ret = vimg_io_truncate(img->io, off + bs);
        if (ret < 0) {
            return ret;
        }
        s->file_size = off + bs;
        is_fresh = true;
    }
    const uint64_t guest = block * bs;
    const uint64_t end = VIMG_MIN(bs, img->size - guest);
    ret = fill_block(img, guest, off, 0, in_block, is_fresh);
    if (ret == 0) {
        ret = fill_block(img, guest, off, in_block + count, end, is_fresh);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(img->io, data, count, off + in_block);
    }
    if (ret == 0) {
        ret = vimg_io_flush(img->io);
    }
    if (ret == 0) {
        ret = set_bat_entry(img, s, index, off | VHDX_PAYLOAD_FULLY_PRESENT);
    }
    *host = off;
    return ret;
}

int vhdx_pwrite(struct vimg_image *img, const void *buf, size_t count,
                uint64_t offset)
{
    struct vhdx_state *s = img->priv;
    const uint8_t *p = buf;
    const uint64_t bs = s->m.block_size;

    while (count > 0) {
        const uint64_t block = offset / bs;
        const uint64_t in_block = offset % bs;
        const size_t n = (size_t)VIMG_MIN((uint64_t)count, bs - in_block);
        uint64_t host;
        int ret = 0;

        pthread_mutex_lock(&s->lock);
        const uint64_t e = s->bat[vhdx_payload_index(s, block)];
        if (s->is_broken) {
            ret = vimg_error(-EIO, "%s: vhdx: an earlier metadata update "
                                   "failed; reopen the image",
                             img->filename);
        } else if ((e & VHDX_BAT_STATE_MASK) == VHDX_PAYLOAD_FULLY_PRESENT) {
            host = e & VHDX_BAT_OFFSET_MASK;
            pthread_mutex_unlock(&s->lock);
            ret = vimg_io_pwrite(img->io, p, n, host + in_block);
            if (ret < 0) {
                return ret;
            }
            goto next;
        } else {
            ret = allocate_block(img, s, block, in_block, n, p, &host);
            s->is_broken = ret < 0;
        }
        pthread_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
    next:
        p += n;
        offset += n;
        count -= n;
    }
    return 0;
}

int vhdx_flush(struct vimg_image *img)
{
    return vimg_io_flush(img->io);
}

/* A clean close: every logged change is in place, so the log is empty */
void vhdx_close_writes(struct vimg_image *img, struct vhdx_state *s)
{
    if (!s->is_log_open || s->is_broken) {
        return;
    }
    if (vimg_io_flush(img->io) == 0) {
        memset(s->h.log_guid, 0, sizeof(s->h.log_guid));
        vhdx_update_headers(img, s);
    }
}
