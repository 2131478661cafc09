/* SPDX-License-Identifier: MIT */
/*
 * vhdx-create.c: the options a VHDX image is created with (qemu-img's,
 * plus backing_file/backing_fmt for differencing disks and
 * logical_sector_size), and create.
 *
 * Layout, as qemu-img lays it out: the file identifier, both headers and
 * both region tables in the first MiB; the log (log_size) at 1 MiB; the
 * BAT (rounded up to a MiB), then the metadata region (1 MiB); for a
 * fixed disk, every payload block after that, in order.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

/* In the order `qemu-img create -f vhdx -o help` lists them */
const struct vimg_option vhdx_options[] = {
    {"backing_file", VIMG_OPTION_STRING, NULL,
     "File name of the parent (a differencing disk; vimg only)", 0},
    {"backing_fmt", VIMG_OPTION_STRING, NULL,
     "Format of the parent image (vimg only)", 0},
    {"block_size", VIMG_OPTION_SIZE, "0",
     "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on "
     "image size.",
     0},
    {"block_state_zero", VIMG_OPTION_BOOL, NULL,
     "Force use of payload blocks of type 'ZERO'. Non-standard, but "
     "default.  Do not set to 'off' when using 'qemu-img convert' with "
     "subformat=dynamic.",
     0},
    {"extent_size_hint", VIMG_OPTION_SIZE, NULL,
     "Extent size hint for the image file, 0 to disable (ignored by vimg)",
     0},
    {"log_size", VIMG_OPTION_SIZE, "1048576", "Log size; min 1MB.", 0},
    {"logical_sector_size", VIMG_OPTION_SIZE, NULL,
     "Logical sector size, 512 (default) or 4096 (vimg only)", 0},
    {"nocow", VIMG_OPTION_BOOL, NULL,
     "Turn off copy-on-write (valid only on btrfs; ignored by vimg)", 0},
    {"preallocation", VIMG_OPTION_STRING, NULL,
     "Preallocation mode (allowed values: off, falloc, full)", 0},
    {"size", VIMG_OPTION_SIZE, NULL, "Virtual disk size; max of 64TB.", 0},
    {"subformat", VIMG_OPTION_STRING, NULL,
     "VHDX format type, can be either 'dynamic' or 'fixed'. Default is "
     "'dynamic'.",
     0},
    {NULL, 0, NULL, NULL, 0},
};

int vhdx_check_option(const char *key, const char *value, unsigned purpose)
{
    (void)purpose;
    if (!strcmp(key, "subformat") && strcmp(value, "dynamic") != 0 &&
        strcmp(value, "fixed") != 0) {
        return vimg_error(-EINVAL, "Parameter 'subformat' does not accept "
                                   "value '%s'",
                          value);
    }
    if (!strcmp(key, "preallocation") && strcmp(value, "off") != 0 &&
        strcmp(value, "falloc") != 0 && strcmp(value, "full") != 0) {
        return vimg_error(-EINVAL, "Parameter 'preallocation' does not "
                                   "accept value '%s'",
                          value);
    }
    return 0;
}

/* qemu-img's "Formatting" line: size, log_size, block_size, then what
 * was set */
void vhdx_describe_options(const struct vimg_opts *o, FILE *out)
{
    static const char *const keys[] = {
        "backing_file", "backing_fmt", "subformat", "block_state_zero",
        "preallocation", "logical_sector_size"};

    fprintf(out, "size=%llu log_size=%llu block_size=%llu",
            (unsigned long long)vimg_opts_number(o, "size", 0),
            (unsigned long long)vimg_opts_number(o, "log_size", VHDX_MiB),
            (unsigned long long)vimg_opts_number(o, "block_size", 0));
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = vimg_opts_get(o, keys[i]);
        if (v) {
            fprintf(out, " %s=%s", keys[i], v);
        }
    }
}

struct create_params {
    uint64_t size;
    uint32_t block_size;
    uint32_t log_size;
    uint32_t sector;
    bool fixed;
    bool zero_state;
    const char *parent;
};

/* qemu's automatic block size */
static uint32_t auto_block_size(uint64_t size)
{
    if (size > (UINT64_C(32) << 40)) {
        return 64 * VHDX_MiB;
    }
    if (size > (UINT64_C(100) << 30)) {
        return 32 * VHDX_MiB;
    }
    if (size > (UINT64_C(1) << 30)) {
        return 16 * VHDX_MiB;
    }
    return 8 * VHDX_MiB;
}

static int get_params(const char *path, const struct vimg_opts *o,
                      struct create_params *p)
{
    const char *sub = vimg_opts_get(o, "subformat");
    const uint64_t bs = vimg_opts_number(o, "block_size", 0);
    const uint64_t log = vimg_opts_number(o, "log_size", VHDX_MiB);
    const uint64_t sector = vimg_opts_number(o, "logical_sector_size", 512);

    memset(p, 0, sizeof(*p));
    p->fixed = sub && !strcmp(sub, "fixed");
    p->zero_state = vimg_opts_bool(o, "block_state_zero", true);
    p->parent = vimg_opts_get(o, "backing_file");
    if (p->parent && !*p->parent) {
        p->parent = NULL;
    }
    if (sector != 512 && sector != 4096) {
        return vimg_error(-EINVAL, "%s: logical_sector_size must be 512 or "
                                   "4096",
                          path);
    }
    p->sector = (uint32_t)sector;
    p->size = vimg_opts_number(o, "size", 0);
    p->size = (p->size + sector - 1) / sector * sector;
    if (p->size == 0 || p->size > VHDX_MAX_SIZE) {
        return vimg_error(-EINVAL, "%s: Image size too large; max of 64TB",
                          path);
    }
    if (p->fixed && p->parent) {
        return vimg_error(-EINVAL, "%s: a differencing disk cannot be "
                                   "subformat=fixed",
                          path);
    }
    if (bs % VHDX_MiB || bs > VHDX_MAX_BLOCK_SIZE) {
        return vimg_error(-EINVAL, "%s: Block size must be a multiple of 1 "
                                   "MB, at most 256 MB",
                          path);
    }
    if (bs & (bs - 1)) {
        return vimg_error(-EINVAL, "%s: Block size must be a power of two",
                          path);
    }
    p->block_size = bs ? (uint32_t)bs : auto_block_size(p->size);
    if (log < VHDX_MiB || log > (UINT64_C(1) << 31)) {
        return vimg_error(-EINVAL, "%s: Log size must be at least 1 MB",
                          path);
    }
    p->log_size = (uint32_t)((log + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB);
    return 0;
}

/* UTF-8 (ASCII expected) S as UTF-16LE at OUT; returns the bytes */
static size_t put_utf16(uint8_t *out, const char *s)
{
    size_t n = 0;
    for (; *s; s++, n += 2) {
        out[n] = (uint8_t)*s;
        out[n + 1] = 0;
    }
    return n;
}

/* The parent's DataWriteGuid as "{...}" (a VHDX parent), else a zero
 * GUID: parent_linkage */
static void parent_linkage(const char *full, char out[40])
{
    uint8_t g[16] = {0};
    FILE *f = fopen(full, "rb");
    if (f) {
        uint8_t id[8];
        uint8_t h[2][VHDX_HEADER_SIZE];
        struct vhdx_header hd[2];
        bool ok[2] = {false, false};
        if (fread(id, 1, 8, f) == 8 && memcmp(id, "vhdxfile", 8) == 0) {
            for (int i = 0; i < 2; i++) {
                ok[i] = fseek(f, i ? VHDX_HEADER2_OFFSET
                                   : VHDX_HEADER1_OFFSET,
                              SEEK_SET) == 0 &&
                        fread(h[i], 1, VHDX_HEADER_SIZE, f) ==
                            VHDX_HEADER_SIZE &&
                        vhdx_header_decode(h[i], &hd[i], i + 1) == 0;
            }
        }
        fclose(f);
        if (ok[0] || ok[1]) {
            const int cur = !ok[0] || (ok[1] && hd[1].seq > hd[0].seq);
            memcpy(g, hd[cur].data_write_guid, 16);
        }
        vimg_error_clear();
    }
    char s[37];
    vhdx_guid_format(g, s);
    snprintf(out, 40, "{%s}", s);
}

/* A relative or absolute POSIX path in Windows form (slashes become
 * backslashes; a relative one starts with ".\") */
static char *win_path(const char *posix, bool relative)
{
    char *out = malloc(strlen(posix) + 3);
    if (!out) {
        return NULL;
    }
    snprintf(out, strlen(posix) + 3, "%s%s", relative ? ".\\" : "", posix);
    for (char *q = out; *q; q++) {
        if (*q == '/') {
            *q = '\\';
        }
    }
    return out;
}

/* The parent locator item (2.6.2.6) into OUT (room: 64 KiB); its bytes */
static size_t put_locator(uint8_t *out, const char *path, const char *parent)
{
    char linkage[40];
    char *full = vimg_path_join_dir(path, parent);
    char *abs = full ? realpath(full, NULL) : NULL;
    char *rel = parent[0] == '/' ? NULL : win_path(parent, true);
    char *absw = win_path(abs ? abs : (full ? full : parent), false);
    const char *keys[3] = {"parent_linkage", "relative_path",
                           "absolute_win32_path"};
    const char *values[3];
    unsigned n = 0;

    parent_linkage(full ? full : parent, linkage);
    values[n++] = linkage;
    if (rel) {
        values[n++] = rel;
    } else {
        keys[1] = keys[2];
    }
    if (absw) {
        values[n++] = absw;
    }
    /* locator type, reserved, count, then the entries, then strings */
    vhdx_guid_parse(GUID_LOCATOR_VHDX, out);
    out[18] = (uint8_t)n;
    size_t pos = 20 + 12 * (size_t)n;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *e = out + 20 + 12 * i;
        const size_t kl = put_utf16(out + pos, keys[i]);
        store_le32(e, (uint32_t)pos);
        pos += kl;
        const size_t vl = put_utf16(out + pos, values[i]);
        store_le32(e + 4, (uint32_t)pos);
        pos += vl;
        e[8] = (uint8_t)kl;
        e[9] = (uint8_t)(kl >> 8);
        e[10] = (uint8_t)vl;
        e[11] = (uint8_t)(vl >> 8);
    }
    free(full);
    free(abs);
    free(rel);
    free(absw);
    return pos;
}

/* A metadata table entry I: item GUID, offset, length, flags (2.6.1.2:
 * IsUser 1, IsVirtualDisk 2, IsRequired 4) */
static void put_item(uint8_t *table, unsigned i, const char *guid,
                     uint32_t off, uint32_t len, uint32_t flags)
{
    uint8_t *e = table + 32 + 32 * i;
    vhdx_guid_parse(guid, e);
    store_le32(e + 16, off);
    store_le32(e + 20, len);
    store_le32(e + 24, flags);
}

/* The metadata region (1 MiB) of a new image into M */
static int put_metadata(uint8_t *m, const char *path,
                        const struct create_params *p)
{
    uint8_t *item = m + VHDX_METADATA_TABLE_SIZE;
    uint32_t off = VHDX_METADATA_TABLE_SIZE;
    unsigned n = 0;

    memcpy(m, "metadata", 8);
    store_le32(item, p->block_size);
    store_le32(item + 4, (p->fixed ? 1u : 0u) | (p->parent ? 2u : 0u));
    put_item(m, n++, GUID_FILE_PARAMETERS, off, 8, 4);
    store_le64(item + 8, p->size);
    put_item(m, n++, GUID_VIRTUAL_DISK_SIZE, off + 8, 8, 6);
    vhdx_guid_random(item + 16);
    put_item(m, n++, GUID_PAGE83, off + 16, 16, 6);
    store_le32(item + 32, p->sector);
    put_item(m, n++, GUID_LOGICAL_SECTOR, off + 32, 4, 6);
    store_le32(item + 36, p->sector);
    put_item(m, n++, GUID_PHYSICAL_SECTOR, off + 36, 4, 6);
    if (p->parent) {
        const size_t len = put_locator(item + 40, path, p->parent);
        if (len > 60 * VHDX_KiB) {
            return vimg_error(-EINVAL, "%s: the parent's path is too long",
                              path);
        }
        put_item(m, n++, GUID_PARENT_LOCATOR, off + 40, (uint32_t)len, 4);
    }
    m[10] = (uint8_t)n;
    return 0;
}

/* The first MiB: file identifier, headers, region tables */
static void put_first_mib(uint8_t *b, const struct create_params *p,
                          uint64_t bat_off, uint32_t bat_len,
                          uint64_t meta_off)
{
    struct vhdx_header h = {
        .seq = 1,
        .version = 1,
        .log_length = p->log_size,
        .log_offset = VHDX_MiB,
    };

    memcpy(b, "vhdxfile", 8);
    put_utf16(b + 8, "vimg");
    vhdx_guid_random(h.file_write_guid);
    vhdx_guid_random(h.data_write_guid);
    vhdx_header_encode(&h, b + VHDX_HEADER1_OFFSET);
    h.seq = 2;
    vhdx_header_encode(&h, b + VHDX_HEADER2_OFFSET);
    uint8_t *t = b + VHDX_REGION1_OFFSET;
    memcpy(t, "regi", 4);
    store_le32(t + 8, 2);
    vhdx_guid_parse(GUID_BAT, t + 16);
    store_le64(t + 32, bat_off);
    store_le32(t + 40, bat_len);
    store_le32(t + 44, 1);
    vhdx_guid_parse(GUID_METADATA, t + 48);
    store_le64(t + 64, meta_off);
    store_le32(t + 72, VHDX_MiB);
    store_le32(t + 76, 1);
    store_le32(t + 4, vhdx_checksum(t, VHDX_REGION_TABLE_SIZE, 4));
    memcpy(b + VHDX_REGION2_OFFSET, t, VHDX_REGION_TABLE_SIZE);
}

/* The BAT of a new image: fixed blocks in order from DATA_OFF */
static void put_bat(uint8_t *bat, const struct vhdx_state *g,
                    const struct create_params *p, uint64_t data_off)
{
    for (uint64_t b = 0; b < g->data_blocks; b++) {
        uint64_t e = VHDX_PAYLOAD_NOT_PRESENT;
        if (p->fixed) {
            e = (data_off + b * p->block_size) |
                (p->zero_state ? VHDX_PAYLOAD_ZERO
                               : VHDX_PAYLOAD_FULLY_PRESENT);
        } else if (p->zero_state && !p->parent) {
            e = VHDX_PAYLOAD_ZERO;
        }
        store_le64(bat + 8 * vhdx_payload_index(g, b), e);
    }
}

static int write_image(const char *path, const struct create_params *p)
{
    struct vhdx_state g = {0};
    g.m.block_size = p->block_size;
    g.m.logical_sector_size = p->sector;
    g.m.virtual_size = p->size;
    g.m.has_parent = p->parent != NULL;
    g.r.bat_length = UINT32_MAX;
    vhdx_bat_geometry(&g);

    const uint64_t bat_off = VHDX_MiB + (uint64_t)p->log_size;
    const uint64_t bat_bytes = g.bat_entries * 8;
    const uint64_t bat_len = (bat_bytes + VHDX_MiB - 1) / VHDX_MiB * VHDX_MiB;
    const uint64_t meta_off = bat_off + bat_len;
    const uint64_t data_off = meta_off + VHDX_MiB;
    const uint64_t end = data_off + (p->fixed ? g.data_blocks *
                                                    (uint64_t)p->block_size
                                              : 0);
    uint8_t *first = calloc(1, VHDX_MiB);
    uint8_t *meta = calloc(1, VHDX_MiB);
    uint8_t *bat = calloc(1, bat_bytes);
    struct vimg_io *io = NULL;
    int ret = -ENOMEM;

    if (!first || !meta || !bat || bat_len > UINT32_MAX) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    ret = put_metadata(meta, path, p);
    if (ret < 0) {
        goto out;
    }
    put_first_mib(first, p, bat_off, (uint32_t)bat_len, meta_off);
    put_bat(bat, &g, p, data_off);
    ret = vimg_io_file_open(&io, path, true, true);
    if (ret == 0) {
        ret = vimg_io_truncate(io, end);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(io, bat, bat_bytes, bat_off);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(io, meta, VHDX_MiB, meta_off);
    }
    if (ret == 0) {
        ret = vimg_io_pwrite(io, first, VHDX_MiB, 0);
    }
    if (ret == 0) {
        ret = vimg_io_flush(io);
    }
out:
    vimg_io_close(io);
    free(first);
    free(meta);
    free(bat);
    return ret;
}

int vhdx_create(const char *path, const struct vimg_opts *o)
{
    struct create_params p;
    int ret = get_params(path, o, &p);

    if (ret < 0) {
        return ret;
    }
    const char *pre = vimg_opts_get(o, "preallocation");
    if (pre && strcmp(pre, "off") != 0) {
        return vimg_error(-ENOTSUP, "%s: vhdx: preallocation=%s is not "
                                    "supported yet",
                          path, pre);
    }
    return write_image(path, &p);
}
