/* SPDX-License-Identifier: MIT */
/*
 * probe-foreign.c: recognising the formats qemu-img probes that vimg has
 * no driver for (yet), so that such a file is refused by name instead of
 * being read, converted or resized as raw.
 *
 * Each test looks at the documented magic of its format.  Like qemu, most
 * look only at the first 512 bytes of the file; two formats keep their
 * only header at the end of the file (a fixed VHD's footer, a DMG's koly
 * block), and qemu names a DMG by its ".dmg" file name alone.
 */
#include <string.h>

#include "formats/format.h"
#include "vimg-endian.h"

/* Scores: a magic at the start of the file is as sure as qcow2's; a
 * trailer at the end is weaker (a header at the start wins); the file
 * name weakest, above raw only (qemu scores ".dmg" 2, raw 1). */
enum { SCORE_HEAD = 100, SCORE_TAIL = 50, SCORE_NAME = 2, SCORE_CLOOP = 2 };

static bool has_prefix(const struct vimg_probe_data *d, size_t off,
                       const char *magic, size_t n)
{
    return d->head_len >= off + n && memcmp(d->head + off, magic, n) == 0;
}

/* VHDX: the file type identifier "vhdxfile" at offset 0. */
static int probe_vhdx(const struct vimg_probe_data *d)
{
    return has_prefix(d, 0, "vhdxfile", 8) ? SCORE_HEAD : 0;
}

/* Does the line at P (up to END) read "version=N" for N in 1..3? */
static bool is_version_line(const char *p, const char *end)
{
    if (end - p < 10 || memcmp(p, "version=", 8) != 0 || p[8] < '1' ||
        p[8] > '3') {
        return false;
    }
    return p[9] == '\n' || (end - p >= 11 && p[9] == '\r' && p[10] == '\n');
}

/*
 * VMDK: a binary sparse extent starts with "KDMV" (VMDK 4) or "COWD"
 * (ESX 3); a text descriptor has comment and blank lines, then a
 * "version=1" (2, 3) line before anything else.
 */
static int probe_vmdk(const struct vimg_probe_data *d)
{
    if (has_prefix(d, 0, "KDMV", 4) || has_prefix(d, 0, "COWD", 4)) {
        return SCORE_HEAD;
    }
    const char *p = (const char *)d->head;
    const char *end = p + d->head_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (*p == '#') {
            if (!eol) {
                return 0;
            }
            p = eol + 1;
            continue;
        }
        const char *q = p;
        while (q < end && *q == ' ') {
            q++;
        }
        if (q < end && *q == '\r') {
            q++;
        }
        if (q > p || (q < end && *q == '\n')) {
            /* a blank line: nothing but spaces (and a CR) */
            if (q >= end || *q != '\n') {
                return 0;
            }
            p = q + 1;
            continue;
        }
        return is_version_line(p, end) ? SCORE_HEAD : 0;
    }
    return 0;
}

/* VDI (VirtualBox): little-endian signature 0xbeda107f at offset 64. */
static int probe_vdi(const struct vimg_probe_data *d)
{
    return d->head_len >= 68 && load_le32(d->head + 64) == 0xbeda107fu
               ? SCORE_HEAD
               : 0;
}

/* A VHD footer: cookie "conectix" and a valid one's-complement sum of
 * all 512 bytes but the checksum field at offset 64. */
static bool is_vhd_footer(const uint8_t *f)
{
    if (memcmp(f, "conectix", 8) != 0) {
        return false;
    }
    uint32_t sum = 0;
    for (size_t i = 0; i < 512; i++) {
        if (i < 64 || i >= 68) {
            sum += f[i];
        }
    }
    return ~sum == load_be32(f + 64);
}

/*
 * VPC/VHD: dynamic and differencing disks start with a copy of the footer
 * ("conectix"); a fixed disk has the footer only in its last 512 bytes.
 * qemu 7.2 takes a fixed VHD for raw; a raw resize or write of its end
 * would then destroy the footer, so vimg names it.
 */
static int probe_vpc(const struct vimg_probe_data *d)
{
    if (has_prefix(d, 0, "conectix", 8)) {
        return SCORE_HEAD;
    }
    return d->tail_len == 512 && is_vhd_footer(d->tail) ? SCORE_TAIL : 0;
}

/* QED: little-endian magic "QED\0". */
static int probe_qed(const struct vimg_probe_data *d)
{
    return has_prefix(d, 0, "QED", 4) ? SCORE_HEAD : 0;
}

/* Parallels: "WithoutFreeSpace" or "WithouFreSpacExt", then
 * little-endian version 2. */
static int probe_parallels(const struct vimg_probe_data *d)
{
    if (d->head_len < 64 || load_le32(d->head + 16) != 2) {
        return 0;
    }
    return has_prefix(d, 0, "WithoutFreeSpace", 16) ||
                   has_prefix(d, 0, "WithouFreSpacExt", 16)
               ? SCORE_HEAD
               : 0;
}

/*
 * DMG (Apple UDIF): the 512-byte "koly" trailer at the end of the file
 * (big-endian version 4, header size 512); qemu also takes any file named
 * *.dmg for one.
 */
static int probe_dmg(const struct vimg_probe_data *d)
{
    if (d->tail_len == 512 && memcmp(d->tail, "koly", 4) == 0 &&
        load_be32(d->tail + 4) == 4 && load_be32(d->tail + 8) == 512) {
        return SCORE_TAIL;
    }
    const size_t n = d->name ? strlen(d->name) : 0;
    return n > 4 && strcmp(d->name + n - 4, ".dmg") == 0 ? SCORE_NAME : 0;
}

/* LUKS: "LUKS\xba\xbe" and big-endian version 1 (or 2, which qemu 7.2
 * cannot open but which is no raw disk either). */
static int probe_luks(const struct vimg_probe_data *d)
{
    if (!has_prefix(d, 0, "LUKS\xba\xbe", 6) || d->head_len < 8) {
        return 0;
    }
    const unsigned version = load_be16(d->head + 6);
    return version == 1 || version == 2 ? SCORE_HEAD : 0;
}

/* Bochs: "Bochs Virtual HD Image" and type "Redolog", both NUL-padded,
 * little-endian version 1.0 or 2.0 at offset 64. */
static int probe_bochs(const struct vimg_probe_data *d)
{
    static const char magic[] = "Bochs Virtual HD Image";
    static const char type[] = "Redolog";

    if (!has_prefix(d, 0, magic, sizeof(magic)) ||
        !has_prefix(d, 32, type, sizeof(type)) || d->head_len < 68) {
        return 0;
    }
    const uint32_t version = load_le32(d->head + 64);
    return version == 0x00010000u || version == 0x00020000u ? SCORE_HEAD : 0;
}

/* cloop 2.0: the shell preamble that mounts the file; qemu scores it 2. */
static int probe_cloop(const struct vimg_probe_data *d)
{
    static const char magic[] =
        "#!/bin/sh\n#V2.0 Format\n"
        "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

    return has_prefix(d, 0, magic, sizeof(magic) - 1) ? SCORE_CLOOP : 0;
}

const struct vimg_foreign_format vimg_foreign_formats[] = {
    {"vhdx", probe_vhdx},
    {"vmdk", probe_vmdk},       {"vdi", probe_vdi},
    {"vpc", probe_vpc},         {"qed", probe_qed},
    {"parallels", probe_parallels}, {"dmg", probe_dmg},
    {"luks", probe_luks},       {"bochs", probe_bochs},
    {"cloop", probe_cloop},     {NULL, NULL},
};
