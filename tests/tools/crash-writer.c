/* SPDX-License-Identifier: MIT */
/*
 * crash-writer: a seeded write workload for crash and fault tests.
 *
 *   crash-writer run IMAGE SEED [FAULT]    write until done, killed, or a
 *                                          fault; print "flushed K" after
 *                                          each successful flush
 *   crash-writer verify IMAGE SEED K       the writes of ops < K read back
 *
 * Op i writes (or zeroes) part of its own 64 KiB slot, so after a crash
 * every op up to the last flush must read back exactly, whatever later
 * ops did.  FAULT "wN" or "fN" fails the Nth write or flush of the image
 * file and every one after it, as a dying disk would; then the program
 * exits 0 if the library returned an error, 2 if no fault fired.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vimg-internal.h"

#define SLOT (64u * 1024)

static uint64_t rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

struct op {
    uint64_t offset;
    uint32_t len;
    uint8_t pattern; /* 0: write zeroes */
};

/* Op I for a disk of NB_SLOTS slots: slot perm[i], deterministic. */
static struct op make_op(uint64_t seed, const uint32_t *perm, uint32_t i)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + i + 1;
    for (int k = 0; k < 4; k++) {
        rng(&s);
    }
    struct op op;
    op.len = 1 + (uint32_t)(rng(&s) % SLOT);
    const uint32_t start = (uint32_t)(rng(&s) % (SLOT - op.len + 1));
    op.offset = (uint64_t)perm[i] * SLOT + start;
    op.pattern = rng(&s) % 5 == 0 ? 0 : (uint8_t)(1 + rng(&s) % 255);
    return op;
}

static uint32_t *make_perm(uint64_t seed, uint32_t n)
{
    uint32_t *p = malloc(n * sizeof(*p));
    uint64_t s = seed | 1;
    for (uint32_t i = 0; i < n; i++) {
        p[i] = i;
    }
    for (uint32_t i = n - 1; i > 0; i--) {
        const uint32_t j = (uint32_t)(rng(&s) % (i + 1));
        const uint32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    return p;
}

static void fill(uint8_t *buf, const struct op *op)
{
    for (uint32_t k = 0; k < op->len; k++) {
        buf[k] = op->pattern ? (uint8_t)(op->pattern + k * 7 + (k >> 9))
                             : 0;
    }
}

static int open_image(vimg_image **img, const char *path, const char *fault,
                      struct vimg_io **fio_out)
{
    struct vimg_io *io = NULL;
    int ret = vimg_io_file_open(&io, path, true, false);
    if (ret < 0) {
        return ret;
    }
    if (fault) {
        struct vimg_io_fault_plan plan = {.sticky = true};
        const unsigned n = (unsigned)strtoul(fault + 1, NULL, 10);
        if (fault[0] == 'w') {
            plan.fail_write_n = n;
        } else {
            plan.fail_flush_n = n;
        }
        ret = vimg_io_fault_new(fio_out, io, &plan);
        if (ret < 0) {
            vimg_io_close(io);
            return ret;
        }
        io = *fio_out;
    }
    return vimg_open_io(img, io, path, NULL, VIMG_OPEN_RDWR);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: crash-writer run IMAGE SEED [wN|fN]\n"
                        "       crash-writer verify IMAGE SEED K\n");
        return 1;
    }
    const bool is_verify = strcmp(argv[1], "verify") == 0;
    const char *path = argv[2];
    const uint64_t seed = strtoull(argv[3], NULL, 0);
    const char *fault = !is_verify && argc > 4 ? argv[4] : NULL;
    struct vimg_io *fio = NULL;
    vimg_image *img = NULL;
    int ret = is_verify ? vimg_open(&img, path, NULL, 0)
                        : open_image(&img, path, fault, &fio);
    if (ret < 0) {
        fprintf(stderr, "crash-writer: open: %s\n", vimg_last_error());
        return 1;
    }
    const uint32_t nb_slots = (uint32_t)(vimg_size(img) / SLOT);
    uint32_t *perm = make_perm(seed, nb_slots);
    uint8_t *buf = malloc(SLOT), *got = malloc(SLOT);

    int rc = 2;
    if (is_verify) {
        const uint32_t k = (uint32_t)strtoul(argv[4], NULL, 0);
        rc = 0;
        for (uint32_t i = 0; i < k && i < nb_slots && rc == 0; i++) {
            const struct op op = make_op(seed, perm, i);
            fill(buf, &op);
            if (vimg_pread(img, got, op.len, op.offset) < 0) {
                fprintf(stderr, "crash-writer: read: %s\n",
                        vimg_last_error());
                rc = 1;
            } else if (memcmp(buf, got, op.len) != 0) {
                fprintf(stderr,
                        "crash-writer: op %u (%u bytes at 0x%llx) was "
                        "flushed but does not read back\n",
                        i, op.len, (unsigned long long)op.offset);
                rc = 1;
            }
        }
        if (rc == 0) {
            printf("verified %u ops\n", k);
        }
        goto out;
    }

    for (uint32_t i = 0; i < nb_slots; i++) {
        const struct op op = make_op(seed, perm, i);
        fill(buf, &op);
        ret = op.pattern ? vimg_pwrite(img, buf, op.len, op.offset)
                         : vimg_write_zeroes(img, op.offset, op.len,
                                             i % 2 ? VIMG_ZERO_MAY_UNMAP : 0);
        if (ret == 0 && i % 8 == 7) {
            ret = vimg_flush(img);
            if (ret == 0) {
                printf("flushed %u\n", i + 1);
                fflush(stdout);
            }
        }
        if (ret < 0) {
            if (!fault || vimg_io_fault_count(fio) == 0) {
                fprintf(stderr, "crash-writer: op %u: %s\n", i,
                        vimg_last_error());
                rc = 1;
                goto out;
            }
            rc = 0; /* the fault reached the caller as an error */
            break;
        }
    }
    if (rc == 2 && vimg_flush(img) < 0 && fault &&
        vimg_io_fault_count(fio) > 0) {
        rc = 0;
    }
    if (rc == 2 && fault && vimg_io_fault_count(fio) > 0) {
        /* a fault fired but every call succeeded: that would hide it */
        fprintf(stderr, "crash-writer: a fault was injected but no call "
                        "failed\n");
        rc = 1;
    }
    printf(rc == 2 ? "done\n" : "failed cleanly\n");
    if (!fault && rc == 2) {
        rc = 0;
    }
out:
    vimg_close(img);
    free(perm);
    free(buf);
    free(got);
    return rc;
}
