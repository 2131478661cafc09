/* SPDX-License-Identifier: MIT */
/*
 * vhdx-header.c: decoding the VHDX structures that sit in byte buffers:
 * CRC-32C ([MS-VHDX] 2.2.2 "Checksum"), the headers (2.2.2), the region
 * table (2.2.3) and the metadata region with its items (2.6).  No I/O:
 * each function is unit tested and fuzzed alone.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

/* CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), byte-wise table */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        }
        crc_table[i] = c;
    }
}

uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

uint32_t vhdx_checksum(const uint8_t *buf, size_t len, size_t csum_off)
{
    static const uint8_t zero[4];
    uint32_t crc = vhdx_crc32c(0, buf, csum_off);
    crc = vhdx_crc32c(crc, zero, 4);
    return vhdx_crc32c(crc, buf + csum_off + 4, len - csum_off - 4);
}

bool vhdx_guid_is_zero(const uint8_t guid[16])
{
    static const uint8_t zero[16];
    return memcmp(guid, zero, 16) == 0;
}

void vhdx_guid_random(uint8_t g[16])
{
    size_t got = 0;
    while (got < 16) {
        const ssize_t n = getrandom(g + got, 16 - got, 0);
        if (n <= 0) {
            /* no entropy source: still unique enough within a process */
            for (size_t i = got; i < 16; i++) {
                g[i] = (uint8_t)(rand() >> 7);
            }
            break;
        }
        got += (size_t)n;
    }
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40); /* version 4 */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80); /* RFC 4122 variant */
}

/* The on-disk bytes of a GUID: Data1..3 little-endian, Data4 as is */
void vhdx_guid_format(const uint8_t g[16], char out[37])
{
    snprintf(out, 37,
             "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             (unsigned)load_le32(g), (unsigned)load_le16(g + 4),
             (unsigned)load_le16(g + 6), g[8], g[9], g[10], g[11], g[12],
             g[13], g[14], g[15]);
}

void vhdx_guid_parse(const char *text, uint8_t out[16])
{
    unsigned v[11];
    sscanf(text, "%8x-%4x-%4x-%2x%2x-%2x%2x%2x%2x%2x%2x", &v[0], &v[1],
           &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10]);
    store_le32(out, v[0]);
    out[4] = (uint8_t)v[1];
    out[5] = (uint8_t)(v[1] >> 8);
    out[6] = (uint8_t)v[2];
    out[7] = (uint8_t)(v[2] >> 8);
    for (int i = 0; i < 8; i++) {
        out[8 + i] = (uint8_t)v[3 + i];
    }
}

/* Is the on-disk GUID G the one TEXT spells? */
static bool guid_is(const uint8_t g[16], const char *text)
{
    char s[37];
    vhdx_guid_format(g, s);
    return strcmp(s, text) == 0;
}


/* A structure vimg does not know that the reader must understand */
static int unknown_required(const uint8_t guid[16], const char *what)
{
    char g[37];
    vhdx_guid_format(guid, g);
    return vimg_error(-ENOTSUP, "vhdx: unknown required %s %s", what, g);
}

int vhdx_header_decode(const uint8_t *buf, struct vhdx_header *out,
                       int which)
{
    if (memcmp(buf, "head", 4) != 0) {
        return vimg_error(-EIO, "vhdx: corrupt header %d: no signature",
                          which);
    }
    const uint32_t csum = load_le32(buf + 4);
    if (vhdx_checksum(buf, VHDX_HEADER_SIZE, 4) != csum) {
        return vimg_error(-EIO, "vhdx: corrupt header %d: bad checksum",
                          which);
    }
    out->seq = load_le64(buf + 8);
    memcpy(out->file_write_guid, buf + 16, 16);
    memcpy(out->data_write_guid, buf + 32, 16);
    memcpy(out->log_guid, buf + 48, 16);
    out->log_version = load_le16(buf + 64);
    out->version = load_le16(buf + 66);
    out->log_length = load_le32(buf + 68);
    out->log_offset = load_le64(buf + 72);
    if (out->version != 1) {
        return vimg_error(-ENOTSUP, "vhdx: header %d: unsupported version "
                                    "%u",
                          which, out->version);
    }
    if (out->log_version != 0) {
        return vimg_error(-ENOTSUP, "vhdx: header %d: unsupported log "
                                    "version %u",
                          which, out->log_version);
    }
    if (!vimg_is_aligned(out->log_offset, VHDX_MiB) ||
        !vimg_is_aligned(out->log_length, VHDX_MiB) ||
        (out->log_length && out->log_offset < VHDX_MiB) ||
        out->log_offset > VHDX_MAX_SIZE) {
        return vimg_error(-EIO, "vhdx: corrupt header %d: log at 0x%llx, "
                                "0x%x bytes",
                          which, (unsigned long long)out->log_offset,
                          (unsigned)out->log_length);
    }
    return 0;
}

void vhdx_header_encode(const struct vhdx_header *h, uint8_t *buf)
{
    memset(buf, 0, VHDX_HEADER_SIZE);
    memcpy(buf, "head", 4);
    store_le64(buf + 8, h->seq);
    memcpy(buf + 16, h->file_write_guid, 16);
    memcpy(buf + 32, h->data_write_guid, 16);
    memcpy(buf + 48, h->log_guid, 16);
    buf[64] = (uint8_t)h->log_version;
    buf[65] = (uint8_t)(h->log_version >> 8);
    buf[66] = (uint8_t)h->version;
    buf[67] = (uint8_t)(h->version >> 8);
    store_le32(buf + 68, h->log_length);
    store_le64(buf + 72, h->log_offset);
    store_le32(buf + 4, vhdx_checksum(buf, VHDX_HEADER_SIZE, 4));
}

int vhdx_region_table_decode(const uint8_t *buf, struct vhdx_regions *out)
{
    bool has_bat = false;
    bool has_meta = false;

    if (memcmp(buf, "regi", 4) != 0) {
        return vimg_error(-EIO, "vhdx: corrupt region table: no signature");
    }
    if (vhdx_checksum(buf, VHDX_REGION_TABLE_SIZE, 4) != load_le32(buf + 4)) {
        return vimg_error(-EIO, "vhdx: corrupt region table: bad checksum");
    }
    const uint32_t count = load_le32(buf + 8);
    if (count > VHDX_MAX_REGION_ENTRIES) {
        return vimg_error(-EIO, "vhdx: corrupt region table: %u entries",
                          (unsigned)count);
    }
    memset(out, 0, sizeof(*out));
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = buf + 16 + 32 * (size_t)i;
        const uint64_t off = load_le64(e + 16);
        const uint32_t len = load_le32(e + 24);
        const bool required = load_le32(e + 28) & 1;
        const bool is_bat = guid_is(e, GUID_BAT);
        const bool is_meta = guid_is(e, GUID_METADATA);

        if (!is_bat && !is_meta) {
            if (required) {
                return unknown_required(e, "region");
            }
            continue;
        }
        if ((is_bat && has_bat) || (is_meta && has_meta)) {
            return vimg_error(-EIO, "vhdx: corrupt region table: the %s "
                                    "region twice",
                              is_bat ? "BAT" : "metadata");
        }
        if (off < VHDX_MiB || !vimg_is_aligned(off, VHDX_MiB) ||
            !vimg_is_aligned(len, VHDX_MiB) || len == 0 ||
            off > VHDX_MAX_SIZE) {
            return vimg_error(-EIO, "vhdx: corrupt region table: %s region "
                                    "at 0x%llx, 0x%x bytes",
                              is_bat ? "BAT" : "metadata",
                              (unsigned long long)off, (unsigned)len);
        }
        if (is_bat) {
            out->bat_offset = off;
            out->bat_length = len;
            has_bat = true;
        } else {
            out->meta_offset = off;
            out->meta_length = len;
            has_meta = true;
        }
    }
    if (!has_bat || !has_meta) {
        return vimg_error(-EIO, "vhdx: corrupt region table: no %s region",
                          has_bat ? "metadata" : "BAT");
    }
    const uint64_t bat_end = out->bat_offset + out->bat_length;
    const uint64_t meta_end = out->meta_offset + out->meta_length;
    if (out->bat_offset < meta_end && out->meta_offset < bat_end) {
        return vimg_error(-EIO, "vhdx: corrupt region table: the BAT and "
                                "metadata regions overlap");
    }
    return 0;
}

/* UTF-16LE (N code units at P) as a new UTF-8 string; NULL if invalid or
 * out of memory. */
static char *utf16_to_utf8(const uint8_t *p, size_t n)
{
    char *out = malloc(n * 3 + 1);
    size_t o = 0;

    if (!out) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t c = load_le16(p + 2 * i);
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < n) {
            const uint32_t lo = load_le16(p + 2 * (i + 1));
            if (lo >= 0xdc00 && lo < 0xe000) {
                c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                i++;
            }
        }
        if (c == 0 || (c >= 0xd800 && c < 0xe000)) {
            free(out);
            return NULL;
        }
        if (c < 0x80) {
            out[o++] = (char)c;
        } else if (c < 0x800) {
            out[o++] = (char)(0xc0 | (c >> 6));
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            out[o++] = (char)(0xe0 | (c >> 12));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        } else {
            /* 4 bytes for 2 code units: still within n * 3 */
            out[o++] = (char)(0xf0 | (c >> 18));
            out[o++] = (char)(0x80 | ((c >> 12) & 0x3f));
            out[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
            out[o++] = (char)(0x80 | (c & 0x3f));
        }
    }
    out[o] = '\0';
    return out;
}

/* 2.6.2.6: the parent locator item, LEN bytes at P */
static int decode_locator(const uint8_t *p, size_t len,
                          struct vhdx_metadata *m)
{
    if (len < 20) {
        return vimg_error(-EIO, "vhdx: corrupt parent locator: %zu bytes",
                          len);
    }
    if (!guid_is(p, GUID_LOCATOR_VHDX)) {
        char g[37];
        vhdx_guid_format(p, g);
        return vimg_error(-ENOTSUP, "vhdx: unknown parent locator type %s",
                          g);
    }
    const unsigned count = load_le16(p + 18);
    if (count > VHDX_MAX_LOCATOR_ENTRIES || 20 + 12 * (size_t)count > len) {
        return vimg_error(-EIO, "vhdx: corrupt parent locator: %u entries",
                          count);
    }
    for (unsigned i = 0; i < count; i++) {
        const uint8_t *e = p + 20 + 12 * (size_t)i;
        const uint32_t koff = load_le32(e);
        const uint32_t voff = load_le32(e + 4);
        const uint16_t klen = load_le16(e + 8);
        const uint16_t vlen = load_le16(e + 10);
        if (klen == 0 || vlen == 0 || klen % 2 || vlen % 2 || koff > len ||
            len - koff < klen || voff > len || len - voff < vlen) {
            return vimg_error(-EIO, "vhdx: corrupt parent locator entry %u",
                              i);
        }
        struct vhdx_locator_entry *le = &m->locator[m->nb_locator];
        le->key = utf16_to_utf8(p + koff, klen / 2);
        le->value = utf16_to_utf8(p + voff, vlen / 2);
        m->nb_locator++;
        if (!le->key || !le->value) {
            return vimg_error(-EIO, "vhdx: corrupt parent locator entry %u: "
                                    "bad UTF-16",
                              i);
        }
    }
    return 0;
}

enum {
    ITEM_FILE_PARAMETERS = 1u << 0,
    ITEM_VIRTUAL_DISK_SIZE = 1u << 1,
    ITEM_PAGE83 = 1u << 2,
    ITEM_LOGICAL_SECTOR = 1u << 3,
    ITEM_PHYSICAL_SECTOR = 1u << 4,
    ITEM_PARENT_LOCATOR = 1u << 5,
};

static const struct {
    const char *guid;
    unsigned bit;
    uint32_t len; /* the exact length, 0: any */
    const char *name;
} known_items[] = {
    {GUID_FILE_PARAMETERS, ITEM_FILE_PARAMETERS, 8, "file parameters"},
    {GUID_VIRTUAL_DISK_SIZE, ITEM_VIRTUAL_DISK_SIZE, 8, "virtual disk size"},
    {GUID_PAGE83, ITEM_PAGE83, 16, "page 83 data"},
    {GUID_LOGICAL_SECTOR, ITEM_LOGICAL_SECTOR, 4, "logical sector size"},
    {GUID_PHYSICAL_SECTOR, ITEM_PHYSICAL_SECTOR, 4, "physical sector size"},
    {GUID_PARENT_LOCATOR, ITEM_PARENT_LOCATOR, 0, "parent locator"},
};

static int decode_item(unsigned bit, const uint8_t *p, size_t len,
                       struct vhdx_metadata *m)
{
    switch (bit) {
    case ITEM_FILE_PARAMETERS:
        m->block_size = load_le32(p);
        m->leave_blocks_allocated = load_le32(p + 4) & 1;
        m->has_parent = load_le32(p + 4) & 2;
        return 0;
    case ITEM_VIRTUAL_DISK_SIZE:
        m->virtual_size = load_le64(p);
        return 0;
    case ITEM_PAGE83:
        memcpy(m->page83, p, 16);
        return 0;
    case ITEM_LOGICAL_SECTOR:
        m->logical_sector_size = load_le32(p);
        return 0;
    case ITEM_PHYSICAL_SECTOR:
        m->physical_sector_size = load_le32(p);
        return 0;
    default:
        return decode_locator(p, len, m);
    }
}

/* The values every disk needs, within the spec's limits (2.6.2) */
static int check_metadata(const struct vhdx_metadata *m, unsigned seen)
{
    const unsigned needed = ITEM_FILE_PARAMETERS | ITEM_VIRTUAL_DISK_SIZE |
                            ITEM_LOGICAL_SECTOR | ITEM_PHYSICAL_SECTOR;
    for (size_t i = 0; i < sizeof(known_items) / sizeof(known_items[0]);
         i++) {
        if ((needed & known_items[i].bit) && !(seen & known_items[i].bit)) {
            return vimg_error(-EIO, "vhdx: corrupt metadata: no %s item",
                              known_items[i].name);
        }
    }
    if (m->has_parent && !(seen & ITEM_PARENT_LOCATOR)) {
        return vimg_error(-EIO, "vhdx: corrupt metadata: a differencing disk "
                                "without a parent locator");
    }
    if (m->block_size < VHDX_MIN_BLOCK_SIZE ||
        m->block_size > VHDX_MAX_BLOCK_SIZE ||
        (m->block_size & (m->block_size - 1))) {
        return vimg_error(-EIO, "vhdx: corrupt metadata: block size %u",
                          (unsigned)m->block_size);
    }
    if (m->logical_sector_size != 512 && m->logical_sector_size != 4096) {
        return vimg_error(-EIO, "vhdx: corrupt metadata: logical sector size "
                                "%u",
                          (unsigned)m->logical_sector_size);
    }
    if (m->physical_sector_size != 512 && m->physical_sector_size != 4096) {
        return vimg_error(-EIO, "vhdx: corrupt metadata: physical sector size "
                                "%u",
                          (unsigned)m->physical_sector_size);
    }
    if (m->virtual_size == 0 || m->virtual_size > VHDX_MAX_SIZE ||
        !vimg_is_aligned(m->virtual_size, m->logical_sector_size)) {
        return vimg_error(-EIO, "vhdx: corrupt metadata: virtual disk size "
                                "0x%llx",
                          (unsigned long long)m->virtual_size);
    }
    return 0;
}

int vhdx_metadata_decode(const uint8_t *buf, size_t len,
                         struct vhdx_metadata *m)
{
    unsigned seen = 0;

    memset(m, 0, sizeof(*m));
    if (len < VHDX_METADATA_TABLE_SIZE || memcmp(buf, "metadata", 8) != 0) {
        return vimg_error(-EIO, "vhdx: corrupt metadata table: no "
                                "signature");
    }
    const unsigned count = load_le16(buf + 10);
    if (count > VHDX_MAX_METADATA_ENTRIES) {
        return vimg_error(-EIO, "vhdx: corrupt metadata table: %u entries",
                          count);
    }
    for (unsigned i = 0; i < count; i++) {
        const uint8_t *e = buf + 32 + 32 * (size_t)i;
        const uint32_t off = load_le32(e + 16);
        const uint32_t ilen = load_le32(e + 20);
        const uint32_t flags = load_le32(e + 24);
        size_t k = 0;
        const size_t nk = sizeof(known_items) / sizeof(known_items[0]);

        while (k < nk && ((flags & 1) || !guid_is(e, known_items[k].guid))) {
            k++;
        }
        if (k == nk) {
            if (flags & 4) {
                return unknown_required(e, "metadata item");
            }
            continue;
        }
        if (seen & known_items[k].bit) {
            return vimg_error(-EIO, "vhdx: corrupt metadata: the %s item "
                                    "twice",
                              known_items[k].name);
        }
        if (off < VHDX_METADATA_TABLE_SIZE || off > len || len - off < ilen ||
            (known_items[k].len && ilen != known_items[k].len)) {
            return vimg_error(-EIO, "vhdx: corrupt metadata: %s item at "
                                    "0x%x, %u bytes",
                              known_items[k].name, (unsigned)off,
                              (unsigned)ilen);
        }
        seen |= known_items[k].bit;
        int ret = decode_item(known_items[k].bit, buf + off, ilen, m);
        if (ret < 0) {
            return ret;
        }
    }
    return check_metadata(m, seen);
}

void vhdx_metadata_free(struct vhdx_metadata *m)
{
    for (size_t i = 0; i < m->nb_locator; i++) {
        free(m->locator[i].key);
        free(m->locator[i].value);
    }
    m->nb_locator = 0;
}

const char *vhdx_locator_get(const struct vhdx_metadata *m, const char *key)
{
    for (size_t i = 0; i < m->nb_locator; i++) {
        if (strcmp(m->locator[i].key, key) == 0) {
            return m->locator[i].value;
        }
    }
    return NULL;
}
