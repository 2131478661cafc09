/* SPDX-License-Identifier: MIT */
/*
 * vhdx.h: the VHDX format ([MS-VHDX] v1.0): on-disk layout, the driver's
 * state, and the functions of each file of the driver.
 *
 *   vhdx-header.c  CRC-32C, GUIDs, headers, region table, metadata and
 *                  parent locator decoding (byte buffers, no I/O)
 *   vhdx-log.c     finding the active log sequence and replaying it,
 *                  into the file or into an in-memory overlay
 *   vhdx-bat.c     the BAT: entry index, states, sector bitmaps, mapping
 *   vhdx.c         open, read, block status, info; the ops table
 */
#ifndef VIMG_VHDX_H
#define VIMG_VHDX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/format.h"

#define VHDX_KiB 1024u
#define VHDX_MiB (1024u * 1024u)

/* 2.1: file layout */
#define VHDX_FILE_ID_OFFSET 0
#define VHDX_HEADER1_OFFSET (64 * VHDX_KiB)
#define VHDX_HEADER2_OFFSET (128 * VHDX_KiB)
#define VHDX_REGION1_OFFSET (192 * VHDX_KiB)
#define VHDX_REGION2_OFFSET (256 * VHDX_KiB)
#define VHDX_HEADER_SIZE (4 * VHDX_KiB)      /* checksummed part */
#define VHDX_REGION_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_METADATA_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_LOG_SECTOR 4096u
#define VHDX_MAX_REGION_ENTRIES 2047u
#define VHDX_MAX_METADATA_ENTRIES 2047u
#define VHDX_MIN_BLOCK_SIZE VHDX_MiB
#define VHDX_MAX_BLOCK_SIZE (256 * VHDX_MiB)
#define VHDX_MAX_SIZE (UINT64_C(64) << 40)   /* 64 TiB */
#define VHDX_SECTORS_PER_BITMAP (UINT64_C(1) << 23)
#define VHDX_BITMAP_BLOCK_SIZE VHDX_MiB

/* The GUIDs of the regions, metadata items and locator type vimg knows */
#define GUID_BAT "2dc27766-f623-4200-9d64-115e9bfd4a08"
#define GUID_METADATA "8b7ca206-4790-4b9a-b8fe-575f050f886e"
#define GUID_FILE_PARAMETERS "caa16737-fa36-4d43-b3b6-33f0aa44e76b"
#define GUID_VIRTUAL_DISK_SIZE "2fa54224-cd1b-4876-b211-5dbed83bf4b8"
#define GUID_PAGE83 "beca12ab-b2e6-4523-93ef-c309e000c746"
#define GUID_LOGICAL_SECTOR "8141bf1d-a96f-4709-ba47-f233a8faab5f"
#define GUID_PHYSICAL_SECTOR "cda348c7-445d-4471-9cc9-e9885251c556"
#define GUID_PARENT_LOCATOR "a8d35f2d-b30b-454d-abf7-d3d84834ab0c"
#define GUID_LOCATOR_VHDX "b04aefb7-d19e-4a81-b789-25b8e9445913"

/* Payload BAT entry states (2.5.1.1); 4 and 5 are reserved, qemu reads
 * 5 (UNMAPPED of the 0.95 draft) as zeroes. */
enum {
    VHDX_PAYLOAD_NOT_PRESENT = 0,
    VHDX_PAYLOAD_UNDEFINED = 1,
    VHDX_PAYLOAD_ZERO = 2,
    VHDX_PAYLOAD_UNMAPPED = 3,
    VHDX_PAYLOAD_UNMAPPED_V095 = 5,
    VHDX_PAYLOAD_FULLY_PRESENT = 6,
    VHDX_PAYLOAD_PARTIALLY_PRESENT = 7,
};
/* Sector bitmap BAT entry states (2.5.1.2) */
enum { VHDX_SB_NOT_PRESENT = 0, VHDX_SB_PRESENT = 6 };
#define VHDX_BAT_STATE_MASK 0x7u
#define VHDX_BAT_OFFSET_MASK (~UINT64_C(0xfffff))

/* 2.2.2: a header */
struct vhdx_header {
    uint64_t seq;
    uint8_t file_write_guid[16];
    uint8_t data_write_guid[16];
    uint8_t log_guid[16];
    uint16_t log_version;
    uint16_t version;
    uint32_t log_length;
    uint64_t log_offset;
};

/* 2.2.3: the region table, only the regions vimg knows */
struct vhdx_regions {
    uint64_t bat_offset;
    uint32_t bat_length;
    uint64_t meta_offset;
    uint32_t meta_length;
};

/* 2.6.2: the metadata items; locator key/value pairs in UTF-8 */
#define VHDX_MAX_LOCATOR_ENTRIES 64
struct vhdx_locator_entry {
    char *key;
    char *value;
};
struct vhdx_metadata {
    uint32_t block_size;
    bool leave_blocks_allocated;
    bool has_parent;
    uint64_t virtual_size;
    uint8_t page83[16];
    uint32_t logical_sector_size;
    uint32_t physical_sector_size;
    size_t nb_locator;
    struct vhdx_locator_entry locator[VHDX_MAX_LOCATOR_ENTRIES];
};

/* A replayed log write kept in memory for a read-only open: DATA (NULL:
 * zeroes) covers [offset, offset + length) of the file. */
struct vhdx_overlay_range {
    uint64_t offset;
    uint64_t length;
    uint8_t *data;
};
struct vhdx_overlay {
    size_t nb;
    size_t cap;
    struct vhdx_overlay_range *ranges;
    uint64_t lo, hi; /* the union of the ranges lies within [lo, hi) */
};

/* The active log sequence, as vhdx_log_find() found it in the log. */
struct vhdx_log_seq {
    bool found;
    uint32_t tail;       /* log offset of its first entry */
    uint32_t nb_entries;
    uint64_t head_seq;
    uint64_t flushed_file_offset; /* of the head entry */
    uint64_t last_file_offset;
};

struct vhdx_state {
    struct vhdx_header h;
    int cur_header;      /* 0 or 1: the header in use */
    struct vhdx_regions r;
    struct vhdx_metadata m;
    uint64_t file_size;
    uint32_t chunk_ratio;        /* payload blocks per sector bitmap */
    uint64_t data_blocks;        /* payload blocks */
    uint64_t bat_entries;
    uint64_t *bat;               /* bat_entries entries, host order */
    bool log_replayed;           /* a log was replayed on open */
    struct vhdx_overlay overlay; /* read-only replay of the log */

    /* Writes (vhdx-write.c): the lock guards the BAT, allocation, the
     * log position and file_size. */
    pthread_mutex_t lock;
    bool is_log_open;  /* this open's log GUID is in the headers */
    bool is_broken;    /* a metadata update failed: no more writes */
    uint32_t log_pos;  /* ring offset of the next entry */
    uint64_t log_seq;  /* its sequence number */
};

/* vhdx-header.c */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len);
/* The CRC-32C of LEN bytes at BUF with the 4 bytes at CSUM_OFF as zero. */
uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t csum_off);
bool vhdx_guid_is_zero(const uint8_t guid[16]);
/* A new random (version 4) GUID */
void vhdx_guid_random(uint8_t g[16]);
/* TEXT, a GUID "xxxxxxxx-xxxx-...", as its on-disk bytes */
void vhdx_guid_parse(const char *text, uint8_t out[16]);
/* GUID as text, "xxxxxxxx-xxxx-..." (37 bytes with the NUL) */
void vhdx_guid_format(const uint8_t guid[16], char out[37]);
/* BUF: the 4 KiB of a header; -EIO (message names WHICH) if invalid. */
int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *out,
                       int which);
void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf);
/* BUF: the 64 KiB of a region table */
int vhdx_region_table_decode(const uint8_t *buf, struct vhdx_regions *out);
/* BUF: the metadata region's LEN bytes; frees nothing on failure:
 * vhdx_metadata_free() always. */
int vhdx_metadata_decode(const uint8_t *buf, size_t len,
                         struct vhdx_metadata *out);
void vhdx_metadata_free(struct vhdx_metadata *m);
/* The value of KEY in the parent locator, or NULL */
const char *vhdx_locator_get(const struct vhdx_metadata *m, const char *key);

/* vhdx-log.c */
/* Find the active sequence in LOG (the LEN bytes of the log region) of a
 * header whose log GUID is GUID; out->found is false for an empty log.
 * -EIO for a log that names the GUID but has no complete sequence. */
int vhdx_log_find(const uint8_t *log, uint32_t len, const uint8_t guid[16],
                  struct vhdx_log_seq *out);
/* Call APPLY for every write of SEQ's entries, in order (DATA NULL for
 * zeroes); stops at its first error. */
typedef int (*vhdx_log_apply_fn)(void *opaque, uint64_t offset,
                                 uint64_t length, const uint8_t *data);
int vhdx_log_replay(const uint8_t *log, uint32_t len,
                    const struct vhdx_log_seq *seq, vhdx_log_apply_fn apply,
                    void *opaque);
/* Open-time log handling: replay durably (WRITABLE) or into s->overlay. */
int vhdx_log_open(struct vimg_image *img, struct vhdx_state *s,
                  bool writable);
int vhdx_overlay_add(struct vhdx_overlay *o, uint64_t offset,
                     uint64_t length, const uint8_t *data);
void vhdx_overlay_free(struct vhdx_overlay *o);
/* Read the file as after the log replay (the overlay applied). */
int vhdx_file_read(struct vimg_image *img, void *buf, size_t count,
                   uint64_t offset);

/* vhdx-create.c */
extern const struct vimg_option vhdx_options[];
int vhdx_check_option(const char *key, const char *value, unsigned purpose);
void vhdx_describe_options(const struct vimg_opts *o, FILE *out);
int vhdx_create(const char *path, const struct vimg_opts *o);

/* vhdx-write.c */
int vhdx_update_headers(struct vimg_image *img, struct vhdx_state *s);
int vhdx_pwrite(struct vimg_image *img, const void *buf, size_t count,
                uint64_t offset);
int vhdx_flush(struct vimg_image *img);
void vhdx_close_writes(struct vimg_image *img, struct vhdx_state *s);

/* vhdx-bat.c */
/* Chunk ratio, block counts and BAT size from the metadata;
 * -EIO if the BAT region is too small. */
int vhdx_bat_geometry(struct vhdx_state *s);
int vhdx_bat_load(struct vimg_image *img, struct vhdx_state *s);
static inline uint64_t vhdx_payload_index(const struct vhdx_state *s,
                                          uint64_t block)
{
    return block + block / s->chunk_ratio;
}
static inline uint64_t vhdx_bitmap_index(const struct vhdx_state *s,
                                         uint64_t block)
{
    return (block / s->chunk_ratio) * (s->chunk_ratio + 1) + s->chunk_ratio;
}

/* One run of the disk with a single state in this layer */
enum vhdx_run_kind {
    VHDX_RUN_DATA,    /* stored at host offset */
    VHDX_RUN_ZERO,    /* reads as zeroes */
    VHDX_RUN_BACKING, /* from the parent (zeroes without one) */
};
struct vhdx_run {
    enum vhdx_run_kind kind;
    uint64_t length;
    uint64_t host_offset; /* VHDX_RUN_DATA */
};
/* May a block of LEN bytes live at host offset OFF (1 MiB aligned, clear
 * of every metadata area)? */
bool vhdx_block_offset_ok(const struct vhdx_state *s, uint64_t off,
                          uint64_t len);
/* The run starting at OFFSET, at most COUNT bytes (COUNT > 0); the
 * caller holds s->lock. */
int vhdx_get_run(struct vimg_image *img, uint64_t offset, uint64_t count,
                 struct vhdx_run *out);

#endif
