/* SPDX-License-Identifier: MIT */
/*
 * vhdx-bat.c: the block allocation table ([MS-VHDX] 2.5): its geometry
 * (payload blocks interleaved with one sector bitmap entry per chunk),
 * loading and validating every entry, and mapping a range of the disk to
 * runs of stored data, zeroes or the parent's data.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

int vhdx_bat_geometry(struct vhdx_state *s)
{
    const struct vhdx_metadata *m = &s->m;

    /* 2.5: chunk ratio = 2^23 * logical sector size / block size, at
     * least 16 (256 MiB blocks of 512-byte sectors) */
    s->chunk_ratio = (uint32_t)((VHDX_SECTORS_PER_BITMAP *
                                 m->logical_sector_size) /
                                m->block_size);
    s->data_blocks = (m->virtual_size + m->block_size - 1) / m->block_size;
    if (m->has_parent) {
        const uint64_t chunks =
            (s->data_blocks + s->chunk_ratio - 1) / s->chunk_ratio;
        s->bat_entries = chunks * (s->chunk_ratio + 1);
    } else {
        s->bat_entries = s->data_blocks + (s->data_blocks - 1) / s->chunk_ratio;
    }
    if (s->bat_entries > s->r.bat_length / 8) {
        return vimg_error(-EIO, "vhdx: corrupt BAT: %llu entries do not fit "
                                "in its region of 0x%x bytes",
                          (unsigned long long)s->bat_entries,
                          (unsigned)s->r.bat_length);
    }
    return 0;
}

/* Does [off, off + len) overlap one of the file's metadata areas? */
static bool overlaps_metadata(const struct vhdx_state *s, uint64_t off,
                              uint64_t len)
{
    const struct {
        uint64_t off, len;
    } areas[] = {
        {0, VHDX_MiB},
        {s->h.log_offset, s->h.log_length},
        {s->r.bat_offset, s->r.bat_length},
        {s->r.meta_offset, s->r.meta_length},
    };
    for (size_t i = 0; i < sizeof(areas) / sizeof(areas[0]); i++) {
        if (off < areas[i].off + areas[i].len && areas[i].off < off + len) {
            return true;
        }
    }
    return false;
}

bool vhdx_block_offset_ok(const struct vhdx_state *s, uint64_t off,
                          uint64_t len)
{
    return off != 0 && off % VHDX_MiB == 0 && off <= VHDX_MAX_SIZE &&
           !overlaps_metadata(s, off, len);
}

static int check_entry(struct vimg_image *img, const struct vhdx_state *s,
                       uint64_t i, bool is_bitmap)
{
    const uint64_t e = s->bat[i];
    const unsigned state = e & VHDX_BAT_STATE_MASK;
    const uint64_t off = e & VHDX_BAT_OFFSET_MASK;
    bool ok;
    bool present;

    if (is_bitmap) {
        ok = state == VHDX_SB_NOT_PRESENT ||
             (state == VHDX_SB_PRESENT && s->m.has_parent);
        present = state == VHDX_SB_PRESENT;
    } else {
        ok = state != 4 &&
             (state != VHDX_PAYLOAD_PARTIALLY_PRESENT || s->m.has_parent);
        present = state == VHDX_PAYLOAD_FULLY_PRESENT ||
                  state == VHDX_PAYLOAD_PARTIALLY_PRESENT;
    }
    if (!ok) {
        return vimg_error(-EIO, "%s: vhdx: corrupt BAT entry %llu: state %u",
                          img->filename, (unsigned long long)i, state);
    }
    const uint64_t len = is_bitmap ? VHDX_BITMAP_BLOCK_SIZE : s->m.block_size;
    if (present && (off > VHDX_MAX_SIZE || overlaps_metadata(s, off, len))) {
        return vimg_error(-EIO, "%s: vhdx: corrupt BAT entry %llu: %s block "
                                "at 0x%llx overlaps metadata",
                          img->filename, (unsigned long long)i,
                          is_bitmap ? "sector bitmap" : "payload",
                          (unsigned long long)off);
    }
    return 0;
}

int vhdx_bat_load(struct vimg_image *img, struct vhdx_state *s)
{
    const uint64_t bytes = s->bat_entries * 8;

    if (s->r.bat_offset + bytes > s->file_size) {
        return vimg_error(-EIO, "%s: vhdx: corrupt BAT: 0x%llx bytes at "
                                "0x%llx, past the end of the file",
                          img->filename, (unsigned long long)bytes,
                          (unsigned long long)s->r.bat_offset);
    }
    s->bat = malloc(bytes ? bytes : 1);
    if (!s->bat) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vhdx_file_read(img, s->bat, bytes, s->r.bat_offset);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        s->bat[i] = load_le64((const uint8_t *)&s->bat[i]);
    }
    for (uint64_t i = 0; i < s->bat_entries; i++) {
        const bool is_bitmap = i % (s->chunk_ratio + 1) == s->chunk_ratio;
        ret = check_entry(img, s, i, is_bitmap);
        if (ret < 0) {
            return ret;
        }
    }
    /* a partially present block needs its chunk's sector bitmap */
    for (uint64_t b = 0; b < s->data_blocks; b++) {
        const uint64_t e = s->bat[vhdx_payload_index(s, b)];
        if ((e & VHDX_BAT_STATE_MASK) == VHDX_PAYLOAD_PARTIALLY_PRESENT &&
            (s->bat[vhdx_bitmap_index(s, b)] & VHDX_BAT_STATE_MASK) !=
                VHDX_SB_PRESENT) {
            return vimg_error(-EIO, "%s: vhdx: corrupt BAT: block %llu is "
                                    "partially present without a sector "
                                    "bitmap",
                              img->filename, (unsigned long long)b);
        }
    }
    return 0;
}

/* Bytes of sector bitmap one call reads at most */
#define BITMAP_READ 4096u

/* A partially present block: the run of sectors that share the bit of
 * the sector at OFFSET, at most N bytes (within the block). */
static int bitmap_run(struct vimg_image *img, const struct vhdx_state *s,
                      uint64_t block, uint64_t offset, uint64_t n,
                      struct vhdx_run *out)
{
    const uint64_t lss = s->m.logical_sector_size;
    const uint64_t sb = s->bat[vhdx_bitmap_index(s, block)] &
                        VHDX_BAT_OFFSET_MASK;
    const uint64_t first = (offset / lss) % VHDX_SECTORS_PER_BITMAP;
    const uint64_t end_byte = offset + n;
    uint64_t nsec = (end_byte + lss - 1) / lss - offset / lss;
    uint8_t bits[BITMAP_READ + 1];

    nsec = VIMG_MIN(nsec, (uint64_t)BITMAP_READ * 8 - first % 8);
    const uint64_t byte0 = first / 8;
    const size_t nbytes = (size_t)((first % 8 + nsec + 7) / 8);
    int ret = vhdx_file_read(img, bits, nbytes, sb + byte0);
    if (ret < 0) {
        return ret;
    }
    const uint64_t bit0 = first % 8;
    const bool set = bits[0] >> bit0 & 1;
    uint64_t k = 1;
    while (k < nsec && ((bits[(bit0 + k) / 8] >> ((bit0 + k) % 8)) & 1) == set) {
        k++;
    }
    const uint64_t run_end = VIMG_MIN((offset / lss + k) * lss, end_byte);
    out->length = run_end - offset;
    if (set) {
        out->kind = VHDX_RUN_DATA;
        out->host_offset = (s->bat[vhdx_payload_index(s, block)] &
                            VHDX_BAT_OFFSET_MASK) +
                           offset % s->m.block_size;
    } else {
        out->kind = VHDX_RUN_BACKING;
    }
    return 0;
}

/* The run at OFFSET within its block, at most N bytes */
static int block_run(struct vimg_image *img, const struct vhdx_state *s,
                     uint64_t offset, uint64_t n, struct vhdx_run *out)
{
    const uint64_t block = offset / s->m.block_size;
    const uint64_t e = s->bat[vhdx_payload_index(s, block)];

    out->length = n;
    switch (e & VHDX_BAT_STATE_MASK) {
    case VHDX_PAYLOAD_FULLY_PRESENT:
        out->kind = VHDX_RUN_DATA;
        out->host_offset = (e & VHDX_BAT_OFFSET_MASK) +
                           offset % s->m.block_size;
        return 0;
    case VHDX_PAYLOAD_PARTIALLY_PRESENT:
        return bitmap_run(img, s, block, offset, n, out);
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
        /* undefined contents: a differencing disk shows its parent's */
        out->kind = s->m.has_parent ? VHDX_RUN_BACKING : VHDX_RUN_ZERO;
        return 0;
    default: /* ZERO, UNMAPPED (and the 0.95 draft's UNMAPPED) */
        out->kind = VHDX_RUN_ZERO;
        return 0;
    }
}

int vhdx_get_run(struct vimg_image *img, uint64_t offset, uint64_t count,
                 struct vhdx_run *out)
{
    const struct vhdx_state *s = img->priv;
    const uint64_t bs = s->m.block_size;
    uint64_t n = VIMG_MIN(count, bs - offset % bs);
    int ret = block_run(img, s, offset, n, out);

    /* extend over whole blocks of the same kind (data: contiguous) */
    bool is_whole = ret == 0 && out->length == n;
    while (is_whole && out->length < count) {
        struct vhdx_run next;
        n = VIMG_MIN(count - out->length, bs);
        ret = block_run(img, s, offset + out->length, n, &next);
        if (ret < 0 || next.kind != out->kind ||
            (next.kind == VHDX_RUN_DATA &&
             next.host_offset != out->host_offset + out->length)) {
            break;
        }
        out->length += next.length;
        is_whole = next.length == n;
    }
    return ret;
}
