/* SPDX-License-Identifier: MIT */
/*
 * fuzz-open.c: libFuzzer target for the image parsers.  The input bytes are
 * opened from memory (probed, then forced to "qcow2" when the probe picked
 * something else), and everything a reader would do is done to them: get
 * the info, walk block status over the disk, read the disk in odd-sized
 * chunks.  Besides crashes and sanitizer reports, it aborts when the
 * library breaks a promise of vimg.h (an error without a message, an
 * extent of the wrong length, a "zero" extent that reads non-zero).
 *
 * Reading work is bounded so that a header claiming an exabyte disk does
 * not time the fuzzer out: at most READ_BUDGET bytes are read (half of it
 * at the start of the disk, a quarter in the middle and a quarter at the
 * end), plus FINE_READS small reads of an input-dependent size,
 * and at most 1.5 * STATUS_STEPS block status calls are made, each
 * reading at most ZERO_PROBE bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
    /* Odd on purpose, so that reads straddle cluster and sector bounds. */
    READ_CHUNK = 192 * 1024 + 7,
    STATUS_STEPS = 4096,
    ZERO_PROBE = 4096,
};
#define READ_BUDGET (UINT64_C(64) << 20)
#define FINE_READS 256

static uint8_t read_buf[READ_CHUNK];

/* VIMG_FUZZ_VERBOSE=1: say how each open went (for corpus upkeep). */
static int verbose = -1;

/* Abort, so the fuzzer records the input: the library broke its contract. */
static void broken(const char *what, int ret)
{
    fprintf(stderr, "fuzz-open: broken promise: %s (ret %d, error \"%s\")\n",
            what, ret, vimg_last_error());
    abort();
}

/* A failed call must return a negative errno and leave a message. */
static void check_error(int ret, const char *call)
{
    if (ret >= 0) {
        return;
    }
    if (ret < -4095) {
        broken(call, ret);
    }
    if (vimg_last_error()[0] == '\0') {
        broken(call, ret);
    }
    if (strchr(vimg_last_error(), '\n') != NULL) {
        broken("error message is not one line", ret);
    }
}

/* Let ASan check that a string the library handed out is readable. */
static size_t touch(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

/* Read every key and string of a format-specific information tree */
static size_t touch_entries(const struct vimg_info_entry *e)
{
    size_t n = 0;

    for (; e; e = e->next) {
        n += touch(e->key) + touch(e->string) + touch_entries(e->children);
    }
    return n;
}

static void exercise_info(vimg_image *img)
{
    struct vimg_info *info = NULL;
    const int ret = vimg_get_info(img, &info);
    check_error(ret, "vimg_get_info");
    if (ret < 0) {
        return;
    }
    if (info == NULL || info->format == NULL) {
        broken("vimg_get_info gave no info or no format", ret);
    }
    if (info->virtual_size != vimg_size(img)) {
        broken("info virtual_size differs from vimg_size", ret);
    }
    size_t n = touch(info->format) + touch(info->backing_file) +
               touch(info->full_backing_file) + touch(info->backing_format) +
               touch_entries(info->format_specific);
    if (info->nb_snapshots > 0 && info->snapshots == NULL) {
        broken("snapshots missing", ret);
    }
    for (size_t i = 0; i < info->nb_snapshots; i++) {
        n += touch(info->snapshots[i].id) + touch(info->snapshots[i].name);
    }
    if (info->nb_bitmaps > 0 && info->bitmaps == NULL) {
        broken("bitmaps missing", ret);
    }
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        n += touch(info->bitmaps[i].name);
    }
    (void)n;
    vimg_info_free(info);
}

static bool is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != 0) {
            return false;
        }
    }
    return true;
}

/*
 * Walk block status over [start, end) for at most *steps calls.  Where an
 * extent says ZERO, read its first ZERO_PROBE bytes and check they are
 * zeroes.
 */
static void walk_status(vimg_image *img, uint64_t start, uint64_t end,
                        unsigned *steps)
{
    uint64_t off = start;
    while (off < end && *steps > 0) {
        struct vimg_extent ext;
        memset(&ext, 0xa5, sizeof(ext));
        (*steps)--;
        const int ret = vimg_block_status(img, off, end - off, &ext);
        check_error(ret, "vimg_block_status");
        if (ret < 0) {
            return;
        }
        if (ext.length == 0 || ext.length > end - off) {
            broken("block status extent length out of range", ret);
        }
        if (ext.flags & VIMG_EXTENT_OFFSET) {
            (void)touch(ext.file_name);
        }
        if (ext.flags & VIMG_EXTENT_ZERO) {
            const size_t len = ext.length < ZERO_PROBE ? (size_t)ext.length
                                                       : ZERO_PROBE;
            const int r = vimg_pread(img, read_buf, len, off);
            check_error(r, "vimg_pread of a zero extent");
            if (r == 0 && !is_zero(read_buf, len)) {
                broken("extent flagged ZERO reads non-zero data", r);
            }
        }
        off += ext.length;
    }
}

/*
 * Read [start, end) in chunks of CHUNK bytes, within the budget; stop at
 * the first error.
 */
static void read_range(vimg_image *img, uint64_t start, uint64_t end,
                       size_t chunk, uint64_t *budget)
{
    uint64_t off = start;
    while (off < end && *budget > 0) {
        uint64_t len = end - off;
        len = len < chunk ? len : chunk;
        len = len < *budget ? len : *budget;
        *budget -= len;
        const int ret = vimg_pread(img, read_buf, (size_t)len, off);
        check_error(ret, "vimg_pread");
        if (ret < 0) {
            if (verbose) {
                fprintf(stderr, "  read at 0x%llx: %s\n",
                        (unsigned long long)off, vimg_last_error());
            }
            return;
        }
        off += len;
    }
}

static void exercise(const uint8_t *data, size_t size, const char *format,
                     bool *opened_as_qcow2)
{
    vimg_image *img = NULL;
    int ret = vimg_open_memory(&img, data, size, format, "fuzz-input");
    check_error(ret, "vimg_open_memory");
    if (verbose < 0) {
        verbose = getenv("VIMG_FUZZ_VERBOSE") != NULL;
    }
    if (verbose) {
        fprintf(stderr, "  open(%s): %s\n", format ? format : "probe",
                ret < 0 ? vimg_last_error() : vimg_format(img));
    }
    if (ret < 0) {
        return;
    }
    if (img == NULL) {
        broken("vimg_open_memory succeeded without a handle", ret);
    }
    const char *fmt = vimg_format(img);
    if (fmt == NULL) {
        broken("vimg_format is NULL", 0);
    }
    *opened_as_qcow2 = strcmp(fmt, "qcow2") == 0;
    (void)touch(vimg_filename(img));
    if (vimg_backing(img) != NULL) {
        broken("a memory image opened a backing file", 0);
    }

    exercise_info(img);

    /* Reads past the end must fail cleanly, not read out of bounds. */
    const uint64_t disk = vimg_size(img);
    ret = vimg_pread(img, read_buf, 1, disk);
    if (ret >= 0) {
        broken("vimg_pread past the end of the disk succeeded", ret);
    }

    /*
     * Block status and reads: the start of the disk, a window in the
     * middle and one at the end, so huge disks still reach the last L1
     * and L2 entries.
     */
    uint64_t budget = READ_BUDGET / 2;
    unsigned steps = STATUS_STEPS;
    const uint64_t window = READ_BUDGET / 4;
    const uint64_t head_end = disk < 2 * window ? disk : 2 * window;
    walk_status(img, 0, head_end, &steps);
    read_range(img, 0, head_end, sizeof(read_buf), &budget);
    /*
     * Small reads of a size that depends on the input, so that reads start
     * and end inside clusters and subclusters (partial compressed
     * clusters, straddled extents).
     */
    const size_t fine = 1 + (size_t)(((uint64_t)size * 2654435761u) % 9973);
    uint64_t small_budget = (uint64_t)fine * FINE_READS;
    read_range(img, 0, disk, fine, &small_budget);
    if (disk > head_end) {
        const uint64_t mid = disk / 2 > head_end ? disk / 2 : head_end;
        const uint64_t mid_end = disk - mid < window ? disk : mid + window;
        const uint64_t tail = disk - window > mid_end ? disk - window
                                                      : mid_end;
        budget = window;
        steps = STATUS_STEPS / 4;
        walk_status(img, mid, mid_end, &steps);
        read_range(img, mid, mid_end, sizeof(read_buf), &budget);
        budget = window;
        steps = STATUS_STEPS / 4;
        walk_status(img, tail, disk, &steps);
        read_range(img, tail, disk, sizeof(read_buf), &budget);
    }
    if (verbose) {
        fprintf(stderr, "  disk 0x%llx bytes, %u status calls unused\n",
                (unsigned long long)disk, steps);
    }
    vimg_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool opened_as_qcow2 = false;
    exercise(data, size, NULL, &opened_as_qcow2);
    if (!opened_as_qcow2) {
        /* The probe said no (or the open failed): make the driver try. */
        exercise(data, size, "qcow2", &opened_as_qcow2);
    }
    return 0;
}
