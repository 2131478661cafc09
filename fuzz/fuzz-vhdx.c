/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vhdx.c: libFuzzer target for the VHDX driver's parsers and log
 * replay.  A VHDX file is megabytes of mostly zeroes, so the input is a
 * sparse file (fuzz/vhdx_tool.py writes it):
 *
 *   u8 flags, le32 file size (at most 32 MiB), then records of
 *   le32 offset, le16 length, LENGTH bytes, copied into a zeroed file.
 *
 * Flag 1 recomputes the CRC-32C of both headers, both region tables and
 * every log entry the current header's log region holds, so that mutations
 * get past the checksums.  The file is opened read-only as vhdx (the log,
 * if any, is replayed in memory), its block status walked and its first
 * MiBs read.  Flag 2 also opens a copy read-write (the log replayed into
 * the copy) and requires it to read exactly as the read-only open did:
 * the in-memory replay and the durable one must agree; then writes
 * 4 KiB through the log and reads them back.  Besides crashes
 * and sanitizer reports, it aborts on an error that is not a negative
 * errno with a one-line message, an extent of a wrong length, and
 * disagreeing replays.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILE (32u << 20)
#define READ_BUDGET (8u << 20)
#define STATUS_STEPS 2048

static void broken(const char *what, int ret)
{
    fprintf(stderr, "fuzz-vhdx: broken promise: %s (ret %d, error \"%s\")\n",
            what, ret, vimg_last_error());
    abort();
}

static void check_error(int ret, const char *call)
{
    if (ret < 0 && (ret < -4095 || vimg_last_error()[0] == '\0' ||
                    strchr(vimg_last_error(), '\n'))) {
        broken(call, ret);
    }
}

static void fix_crc(uint8_t *file, size_t len, uint64_t off, size_t n)
{
    if (off < len && len - off >= n) {
        store_le32(file + off + 4, vhdx_checksum(file + off, n, 4));
    }
}

/* The CRCs a mutation breaks: headers, region tables, log entries (the
 * ones that fit in the ring without wrapping) */
static void fix_checksums(uint8_t *file, size_t len)
{
    fix_crc(file, len, VHDX_HEADER1_OFFSET, VHDX_HEADER_SIZE);
    fix_crc(file, len, VHDX_HEADER2_OFFSET, VHDX_HEADER_SIZE);
    fix_crc(file, len, VHDX_REGION1_OFFSET, VHDX_REGION_TABLE_SIZE);
    fix_crc(file, len, VHDX_REGION2_OFFSET, VHDX_REGION_TABLE_SIZE);
    if (len < VHDX_HEADER2_OFFSET + VHDX_HEADER_SIZE) {
        return;
    }
    const uint8_t *h1 = file + VHDX_HEADER1_OFFSET;
    const uint8_t *h2 = file + VHDX_HEADER2_OFFSET;
    const uint8_t *h = load_le64(h2 + 8) > load_le64(h1 + 8) ? h2 : h1;
    const uint64_t log_len = load_le32(h + 68);
    const uint64_t log_off = load_le64(h + 72);
    if (log_off >= len || len - log_off < log_len) {
        return;
    }
    for (uint64_t p = 0; p + VHDX_LOG_SECTOR <= log_len;
         p += VHDX_LOG_SECTOR) {
        uint8_t *e = file + log_off + p;
        const uint32_t n = load_le32(e + 8);
        if (memcmp(e, "loge", 4) == 0 && n >= VHDX_LOG_SECTOR &&
            n % VHDX_LOG_SECTOR == 0 && n <= log_len - p) {
            store_le32(e + 4, vhdx_checksum(e, n, 4));
        }
    }
}

/* Walk block status, then read the first READ_BUDGET bytes into *OUT */
static void walk(vimg_image *img, uint8_t **out, size_t *out_len)
{
    const uint64_t size = vimg_size(img);
    uint64_t off = 0;

    for (int i = 0; i < STATUS_STEPS && off < size; i++) {
        struct vimg_extent e;
        int ret = vimg_block_status(img, off, size - off, &e);
        check_error(ret, "vimg_block_status");
        if (ret < 0) {
            break;
        }
        if (e.length == 0 || e.length > size - off) {
            broken("extent length", 0);
        }
        off += e.length;
    }
    const size_t n = (size_t)(size < READ_BUDGET ? size : READ_BUDGET);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        return;
    }
    int ret = vimg_pread(img, buf, n, 0);
    check_error(ret, "vimg_pread");
    if (ret < 0) {
        free(buf);
        return;
    }
    *out = buf;
    *out_len = n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5) {
        return 0;
    }
    const unsigned flags = data[0];
    const size_t len = load_le32(data + 1) % (MAX_FILE + 1);
    uint8_t *file = calloc(1, len ? len : 1);
    if (!file) {
        return 0;
    }
    for (size_t p = 5; p + 6 <= size;) {
        const uint32_t off = load_le32(data + p);
        size_t n = load_le16(data + p + 4);
        p += 6;
        n = n < size - p ? n : size - p;
        if (off < len) {
            memcpy(file + off, data + p, n < len - off ? n : len - off);
        }
        p += n;
    }
    if (flags & 1) {
        fix_checksums(file, len);
    }

    uint8_t *ro = NULL;
    size_t ro_len = 0;
    vimg_image *img = NULL;
    int ret = vimg_open_memory(&img, file, len, "vhdx", "fuzz.vhdx");
    check_error(ret, "vimg_open_memory");
    if (ret == 0) {
        struct vimg_info *info = NULL;
        check_error(vimg_get_info(img, &info), "vimg_get_info");
        vimg_info_free(info);
        walk(img, &ro, &ro_len);
        vimg_close(img);
    }

    if ((flags & 2) && ret == 0) {
        struct vimg_io *io = NULL;
        vimg_image *rw = NULL;
        ret = vimg_io_mem_new(&io, file, len, "fuzz-rw.vhdx");
        if (ret == 0) {
            ret = vimg_open_io(&rw, io, "fuzz-rw.vhdx", "vhdx",
                               VIMG_OPEN_RDWR | VIMG_OPEN_NO_LOCK);
            check_error(ret, "vimg_open_io rw");
        }
        if (ret == 0) {
            uint8_t *got = NULL;
            size_t got_len = 0;
            walk(rw, &got, &got_len);
            if (ro && got && (got_len != ro_len || memcmp(got, ro, ro_len))) {
                broken("read-write replay reads differently from the "
                       "in-memory one",
                       0);
            }
            free(got);
            /* and a write through the log, read back */
            static uint8_t pattern[4096 + 5];
            memset(pattern, 0x5a, sizeof(pattern));
            const uint64_t at = vimg_size(rw) / 2;
            if (vimg_size(rw) >= sizeof(pattern) * 2) {
                uint8_t back[sizeof(pattern)];
                ret = vimg_pwrite(rw, pattern, sizeof(pattern), at);
                check_error(ret, "vimg_pwrite");
                if (ret == 0) {
                    ret = vimg_pread(rw, back, sizeof(back), at);
                    check_error(ret, "vimg_pread after write");
                    if (ret == 0 && memcmp(back, pattern, sizeof(back))) {
                        broken("a write does not read back", 0);
                    }
                }
            }
            vimg_close(rw);
        }
    }
    free(ro);
    free(file);
    return 0;
}
