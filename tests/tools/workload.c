/* SPDX-License-Identifier: MIT */
/*
 * workload.c: a seeded random write workload on one image handle, checked
 * byte for byte against a raw model of the guest content.
 *
 *   workload [-t THREADS] [-n OPS] [-s SEED] [-m MAXLEN] [-f FORMAT]
 *            [--no-zeroes] [--no-discard] [--phase 1|2] [-v] IMAGE MODEL
 *
 * MODEL is a raw file holding IMAGE's current guest content (made with
 * `qemu-img convert -O raw`).  The image is opened read-write (with its
 * backing chain) and the tool runs:
 *
 * Phase 1, one thread, OPS/2 operations: vimg_pwrite of 1 byte to MAXLEN
 *   (default 1 MiB) of seeded, non-constant data at random offsets
 *   (unaligned, aligned to 512 B..2 MiB, straddling such boundaries, and
 *   the last bytes of the disk); ~15% vimg_write_zeroes (with or without
 *   VIMG_ZERO_MAY_UNMAP), ~10% vimg_discard (both up to 4 x MAXLEN);
 *   vimg_flush now and then; every ~16 operations a random range is read
 *   back and compared with the model.
 *
 * Phase 2, THREADS threads on the same handle, OPS/2 operations in all:
 *   the disk is cut into 4 KiB runs (eight 512-byte sectors) owned round
 *   robin, run r by thread r % THREADS, so threads never write the same
 *   bytes (the result is deterministic) yet write the same clusters at
 *   once.  Each operation picks a random range and writes, zeroes or
 *   discards only the caller's runs inside it (one call per run, adjacent
 *   runs merged when there is one thread).  Reads check only the caller's
 *   own bytes: the others' may be in flux.
 *
 * Then: vimg_flush, read the whole disk and compare; vimg_close; reopen
 * read-only and compare again; write the model back to MODEL (so it holds
 * what the image should now contain) and print
 * "workload: N ops, all match".  The model is written whenever every
 * operation succeeded, even if the final comparison failed, so that
 * `qemu-img compare` can show the difference.
 *
 * -f FORMAT opens IMAGE as that format (default: probe).  --phase N runs
 * only that phase.  -v logs every operation on stderr (for reproducers).
 *
 * Exit status: 0 all matched; 1 a mismatch or an error return (message
 * names phase, thread, operation number, offset, length and
 * vimg_last_error()); 2 usage or setup error; 3 a write returned -ENOTSUP
 * (the format's write path is not there yet).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg.h>

#include "tool-open.h"

#define RUN_BYTES 4096u     /* phase 2 ownership unit: 8 sectors */
#define CHECK_CHUNK (UINT64_C(4) << 20)

enum op_kind { OP_WRITE, OP_ZERO, OP_DISCARD };

struct config {
    unsigned threads;
    unsigned long ops;
    uint64_t seed;
    uint64_t max_len;
    bool has_zeroes;
    bool has_discard;
    int only_phase;         /* 0: both */
    bool is_verbose;
    const char *format;
    const char *image;
    const char *model_path;
};

struct shared {
    const struct config *cfg;
    vimg_image *img;
    uint8_t *model;
    uint64_t size;
    pthread_barrier_t start;
    atomic_bool failed;
    atomic_int status;      /* exit status of the first failure */
    atomic_ulong ops_done;
};

struct worker {
    struct shared *sh;
    int phase;              /* 1, 2, or 0 for the final checks */
    unsigned index;         /* thread index in phase 2; 0 in phase 1 */
    unsigned long nb_ops;
    pthread_t tid;
    uint64_t rnd;           /* xorshift64* state, never 0 */
    uint8_t *buf;           /* MAXLEN bytes of write data */
    uint8_t *rbuf;          /* read-back buffer */
    uint64_t rbuf_len;
};

/* splitmix64, to derive well-spread seeds from small ones. */
static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + UINT64_C(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* xorshift64*: the per-thread generator. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

static uint64_t seed_state(uint64_t seed, uint64_t stream)
{
    uint64_t s = splitmix64(splitmix64(seed) ^ (stream * 0x100000001b3u));
    return s != 0 ? s : 1;
}

/* A uniform value in [0, n); n > 0. */
static uint64_t below(uint64_t *rnd, uint64_t n)
{
    return next_random(rnd) % n;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static const char *op_name(enum op_kind kind)
{
    switch (kind) {
    case OP_WRITE:
        return "pwrite";
    case OP_ZERO:
        return "write_zeroes";
    default:
        return "discard";
    }
}

static void fail(struct worker *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report the first failure only; other threads then stop quietly. */
static void fail(struct worker *w, int status, const char *fmt, ...)
{
    struct shared *sh = w->sh;
    if (atomic_exchange(&sh->failed, true)) {
        return;
    }
    atomic_store(&sh->status, status);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (w->phase == 0) {
        fprintf(stderr, "workload: %s: %s\n", sh->cfg->image, msg);
    } else if (w->phase == 1) {
        fprintf(stderr, "workload: %s: phase 1: %s\n", sh->cfg->image, msg);
    } else {
        fprintf(stderr, "workload: %s: phase 2, thread %u of %u: %s\n",
                sh->cfg->image, w->index, sh->cfg->threads, msg);
    }
}

/* A failed library call: -ENOTSUP from a write means "not implemented". */
static void fail_call(struct worker *w, unsigned long op, const char *call,
                      uint64_t off, uint64_t len, int ret)
{
    const bool is_write_call = strcmp(call, "vimg_pread") != 0 &&
                               strcmp(call, "vimg_flush") != 0;
    const int status = ret == -ENOTSUP && is_write_call ? 3 : 1;
    char where[32] = "";
    if (w->phase != 0) {
        snprintf(where, sizeof(where), "op %lu: ", op);
    }
    fail(w, status, "%s%s(offset 0x%" PRIx64 ", length %" PRIu64
         ") failed: %s (%s)", where, call, off, len, strerror(-ret),
         vimg_last_error());
}

/*
 * Fill BUF with LEN bytes of seeded data: mostly random words, sometimes
 * runs of a repeated byte, runs of zeroes or whole zero buffers (data that
 * happens to be zero must be stored too).  Never one constant for a
 * whole write of more than a few bytes, so misplaced data shows.
 */
static void fill_data(uint8_t *buf, uint64_t len, uint64_t *rnd)
{
    uint64_t st = next_random(rnd) | 1;
    const unsigned style = (unsigned)below(rnd, 32);
    if (style == 0) {
        memset(buf, 0, len);
        if (len > 16) {
            buf[below(rnd, len)] = (uint8_t)(1 + below(rnd, 255));
        }
        return;
    }
    uint64_t i = 0;
    while (i < len) {
        uint64_t word = next_random(&st);
        if (style <= 3 && (word & 0xff) < 24) {
            /* A run of zeroes or of one byte, up to 4 KiB. */
            const uint64_t n = min_u64(len - i, 1 + (word >> 8) % 4096);
            memset(buf + i, (word & 0xff) < 12 ? 0 : (int)(word >> 40), n);
            i += n;
            continue;
        }
        for (int b = 0; b < 8 && i < len; b++, i++) {
            buf[i] = (uint8_t)(word >> (8 * b));
        }
    }
}

/* Lengths from 1 byte to MAX, with a bias to sizes that matter. */
static uint64_t pick_length(uint64_t *rnd, uint64_t max, uint64_t size)
{
    uint64_t len;
    switch (below(rnd, 9)) {
    case 0:
        len = 1 + below(rnd, 16);
        break;
    case 1:
        len = 1 + below(rnd, 512);
        break;
    case 2:
        len = 512 * (1 + below(rnd, 16));
        break;
    case 3:
        len = 1 + below(rnd, 4096);
        break;
    case 4:
        len = 4096 * (1 + below(rnd, 32));
        break;
    case 5:
        len = 1 + below(rnd, 65536);
        break;
    case 6:
        len = 65536 * (1 + below(rnd, 16));
        break;
    case 7:
        len = (UINT64_C(1) << (9 + below(rnd, 13))) * (1 + below(rnd, 4));
        break;
    default:
        len = 1 + below(rnd, max);
        break;
    }
    len = min_u64(len, min_u64(max, size));
    return len > 0 ? len : 1;
}

/*
 * Offsets: uniform, the very end of the disk, near the end, aligned to a
 * power of two from 512 B to 2 MiB, or straddling such a boundary.
 */
static uint64_t pick_offset(uint64_t *rnd, uint64_t len, uint64_t size)
{
    const uint64_t span = size - len;   /* last valid offset */
    uint64_t off;
    const unsigned kind = (unsigned)below(rnd, 12);
    if (kind == 0) {
        off = span;
    } else if (kind == 1) {
        off = span - below(rnd, min_u64(span, 70000) + 1);
    } else if (kind <= 4) {
        const uint64_t align = UINT64_C(1) << (9 + below(rnd, 13));
        off = below(rnd, size / align + 1) * align;
        if (kind == 4 && off > 0) {
            off -= 1 + below(rnd, min_u64(off, 1024));
        }
    } else if (kind <= 6) {
        /* Straddle an aligned boundary B: start before it, end after. */
        const uint64_t align = UINT64_C(1) << (9 + below(rnd, 13));
        const uint64_t b = below(rnd, size / align + 1) * align;
        off = b - min_u64(b, below(rnd, len) + (len == 1 ? 0 : 1));
    } else {
        off = below(rnd, span + 1);
    }
    return min_u64(off, span);
}

static bool report_mismatch(struct worker *w, unsigned long op,
                            const char *what, const uint8_t *got,
                            uint64_t off, uint64_t len)
{
    const uint8_t *want = w->sh->model + off;
    if (memcmp(got, want, len) == 0) {
        return true;
    }
    uint64_t i = 0;
    while (got[i] == want[i]) {
        i++;
    }
    uint64_t n = i;
    while (n < len && got[n] != want[n]) {
        n++;
    }
    fail(w, 1, "op %lu: %s: read(offset 0x%" PRIx64 ", length %" PRIu64
         ") differs from the model at offset 0x%" PRIx64 " (%" PRIu64
         " bytes differ from there): got 0x%02x, expected 0x%02x", op, what,
         off, len, off + i, n - i, got[i], want[i]);
    return false;
}

static int read_range(struct worker *w, unsigned long op, uint64_t off,
                      uint64_t len)
{
    if (len > w->rbuf_len) {
        free(w->rbuf);
        w->rbuf = malloc(len);
        w->rbuf_len = w->rbuf ? len : 0;
        if (w->rbuf == NULL) {
            fail(w, 2, "out of memory");
            return -ENOMEM;
        }
    }
    /* Poison, so a read that silently skips bytes is caught. */
    memset(w->rbuf, 0xdb, len);
    const int ret = vimg_pread(w->sh->img, w->rbuf, len, off);
    if (ret < 0) {
        fail_call(w, op, "vimg_pread", off, len, ret);
    }
    return ret;
}

static int do_op(struct worker *w, unsigned long op, enum op_kind kind,
                 const uint8_t *data, uint64_t off, uint64_t len,
                 unsigned zflags)
{
    struct shared *sh = w->sh;
    int ret;
    switch (kind) {
    case OP_WRITE:
        ret = vimg_pwrite(sh->img, data, len, off);
        break;
    case OP_ZERO:
        ret = vimg_write_zeroes(sh->img, off, len, zflags);
        break;
    default:
        ret = vimg_discard(sh->img, off, len);
        break;
    }
    if (ret < 0) {
        fail_call(w, op, kind == OP_WRITE  ? "vimg_pwrite"
                         : kind == OP_ZERO ? "vimg_write_zeroes"
                                           : "vimg_discard",
                  off, len, ret);
        return ret;
    }
    if (kind == OP_WRITE) {
        memcpy(sh->model + off, data, len);
    } else {
        memset(sh->model + off, 0, len);
    }
    return 0;
}

static enum op_kind pick_kind(struct worker *w, unsigned *zflags)
{
    const struct config *cfg = w->sh->cfg;
    const uint64_t r = below(&w->rnd, 100);
    *zflags = 0;
    if (r < 15 && cfg->has_zeroes) {
        *zflags = below(&w->rnd, 2) ? VIMG_ZERO_MAY_UNMAP : 0;
        return OP_ZERO;
    }
    if (r >= 15 && r < 25 && cfg->has_discard) {
        return OP_DISCARD;
    }
    return OP_WRITE;
}

static int maybe_flush(struct worker *w, unsigned long op)
{
    if (below(&w->rnd, 32) != 0) {
        return 0;
    }
    if (w->sh->cfg->is_verbose) {
        fprintf(stderr, "p%d t%u #%lu flush\n", w->phase, w->index, op);
    }
    const int ret = vimg_flush(w->sh->img);
    if (ret < 0) {
        fail_call(w, op, "vimg_flush", 0, 0, ret);
    }
    return ret;
}

/* Phase 1: one thread, any range. */
static void run_phase1(struct worker *w)
{
    struct shared *sh = w->sh;
    const struct config *cfg = sh->cfg;
    uint64_t last_off = 0, last_len = 1;
    for (unsigned long op = 0; op < w->nb_ops; op++) {
        unsigned zflags;
        const enum op_kind kind = pick_kind(w, &zflags);
        const uint64_t max = kind == OP_WRITE ? cfg->max_len : 4 * cfg->max_len;
        const uint64_t len = pick_length(&w->rnd, max, sh->size);
        const uint64_t off = pick_offset(&w->rnd, len, sh->size);
        if (kind == OP_WRITE) {
            fill_data(w->buf, len, &w->rnd);
        }
        if (cfg->is_verbose) {
            fprintf(stderr, "p1 #%lu %s 0x%" PRIx64 " +%" PRIu64 "%s\n", op,
                    op_name(kind), off, len,
                    zflags & VIMG_ZERO_MAY_UNMAP ? " may_unmap" : "");
        }
        if (do_op(w, op, kind, w->buf, off, len, zflags) < 0) {
            return;
        }
        atomic_fetch_add(&sh->ops_done, 1);
        last_off = off;
        last_len = len;
        if (maybe_flush(w, op) < 0) {
            return;
        }
        if (below(&w->rnd, 16) == 0) {
            /* Half the time around the last operation, edges included. */
            uint64_t roff, rlen;
            if (below(&w->rnd, 2)) {
                roff = last_off - min_u64(last_off, below(&w->rnd, 8192));
                const uint64_t end = min_u64(
                    sh->size, last_off + last_len + below(&w->rnd, 8192));
                rlen = end - roff;
            } else {
                rlen = pick_length(&w->rnd, 4 * cfg->max_len, sh->size);
                roff = pick_offset(&w->rnd, rlen, sh->size);
            }
            if (read_range(w, op, roff, rlen) < 0 ||
                !report_mismatch(w, op, "read-back", w->rbuf, roff, rlen)) {
                return;
            }
        }
    }
}

/*
 * The next piece of [*pos, end) that thread IDX of NB owns: a whole or
 * partial 4 KiB run (or several adjacent runs when NB is 1).  Returns
 * false when there is none left.
 */
static bool next_owned(unsigned idx, unsigned nb, uint64_t *pos,
                       uint64_t end, uint64_t *seg_off, uint64_t *seg_len)
{
    if (*pos >= end) {
        return false;
    }
    uint64_t run = *pos / RUN_BYTES;
    const uint64_t skip = (idx + nb - run % nb) % nb;
    run += skip;
    const uint64_t start = max_u64(*pos, run * RUN_BYTES);
    if (start >= end) {
        *pos = end;
        return false;
    }
    const uint64_t stop =
        nb == 1 ? end : min_u64(end, (run + 1) * RUN_BYTES);
    *seg_off = start;
    *seg_len = stop - start;
    *pos = stop;
    return true;
}

/* Phase 2: many threads, each on its own runs only. */
static void *run_phase2(void *opaque)
{
    struct worker *w = opaque;
    struct shared *sh = w->sh;
    const struct config *cfg = sh->cfg;
    pthread_barrier_wait(&sh->start);
    for (unsigned long op = 0; op < w->nb_ops; op++) {
        if (atomic_load(&sh->failed)) {
            break;
        }
        unsigned zflags;
        const enum op_kind kind = pick_kind(w, &zflags);
        const uint64_t len = pick_length(&w->rnd, cfg->max_len, sh->size);
        const uint64_t off = pick_offset(&w->rnd, len, sh->size);
        if (kind == OP_WRITE) {
            fill_data(w->buf, len, &w->rnd);
        }
        if (cfg->is_verbose) {
            fprintf(stderr, "p2 t%u #%lu %s 0x%" PRIx64 " +%" PRIu64
                    "%s (own runs only)\n", w->index, op, op_name(kind), off,
                    len, zflags & VIMG_ZERO_MAY_UNMAP ? " may_unmap" : "");
        }
        uint64_t pos = off, seg_off, seg_len;
        while (next_owned(w->index, cfg->threads, &pos, off + len, &seg_off,
                          &seg_len)) {
            if (do_op(w, op, kind, w->buf + (seg_off - off), seg_off, seg_len,
                      zflags) < 0) {
                return NULL;
            }
        }
        atomic_fetch_add(&sh->ops_done, 1);
        if (maybe_flush(w, op) < 0) {
            return NULL;
        }
        if (below(&w->rnd, 8) == 0) {
            const uint64_t rlen = pick_length(&w->rnd, cfg->max_len, sh->size);
            const uint64_t roff = pick_offset(&w->rnd, rlen, sh->size);
            if (read_range(w, op, roff, rlen) < 0) {
                return NULL;
            }
            pos = roff;
            while (next_owned(w->index, cfg->threads, &pos, roff + rlen,
                              &seg_off, &seg_len)) {
                if (!report_mismatch(w, op, "read-back of own runs",
                                     w->rbuf + (seg_off - roff), seg_off,
                                     seg_len)) {
                    return NULL;
                }
            }
        }
    }
    return NULL;
}

/* Compare the whole disk with the model; returns false on a mismatch. */
static bool verify_all(struct worker *w, const char *when)
{
    struct shared *sh = w->sh;
    for (uint64_t off = 0; off < sh->size; off += CHECK_CHUNK) {
        const uint64_t n = min_u64(CHECK_CHUNK, sh->size - off);
        if (read_range(w, 0, off, n) < 0) {
            return false;
        }
        if (memcmp(w->rbuf, sh->model + off, n) != 0) {
            uint64_t i = 0;
            while (w->rbuf[i] == sh->model[off + i]) {
                i++;
            }
            uint64_t k = i;
            while (k < n && w->rbuf[k] != sh->model[off + k]) {
                k++;
            }
            fail(w, 1, "%s: the image differs from the model first at offset"
                 " 0x%" PRIx64 " (%" PRIu64 " bytes differ from there): got"
                 " 0x%02x, expected 0x%02x", when, off + i, k - i,
                 w->rbuf[i], sh->model[off + i]);
            return false;
        }
    }
    return true;
}

static int load_file(const char *path, uint8_t **out, uint64_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -errno;
    }
    int ret = 0;
    uint8_t *data = NULL;
    if (fseeko(f, 0, SEEK_END) < 0) {
        ret = -errno;
        goto out;
    }
    const off_t len = ftello(f);
    if (len < 0 || fseeko(f, 0, SEEK_SET) < 0) {
        ret = -errno;
        goto out;
    }
    data = malloc(len > 0 ? (size_t)len : 1);
    if (data == NULL) {
        ret = -ENOMEM;
        goto out;
    }
    if (len > 0 && fread(data, 1, (size_t)len, f) != (size_t)len) {
        ret = -EIO;
        goto out;
    }
    *out = data;
    *out_len = (uint64_t)len;
    data = NULL;
out:
    free(data);
    fclose(f);
    return ret;
}

static int save_file(const char *path, const uint8_t *data, uint64_t len)
{
    FILE *f = fopen(path, "r+b");
    if (f == NULL) {
        return -errno;
    }
    int ret = 0;
    if (len > 0 && fwrite(data, 1, (size_t)len, f) != (size_t)len) {
        ret = -EIO;
    }
    if (fclose(f) != 0 && ret == 0) {
        ret = -errno;
    }
    return ret;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s) {
        return false;
    }
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    default:
        break;
    }
    if (*end != '\0') {
        return false;
    }
    *out = v;
    return true;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-t THREADS] [-n OPS] [-s SEED] [-m MAXLEN] "
            "[-f FORMAT] [--no-zeroes] [--no-discard] [--phase 1|2] [-v] "
            "IMAGE MODEL\n", argv0);
}

static int parse_args(int argc, char **argv, struct config *cfg)
{
    enum { OPT_NO_ZEROES = 256, OPT_NO_DISCARD, OPT_PHASE };
    static const struct option long_opts[] = {
        { "threads", required_argument, NULL, 't' },
        { "ops", required_argument, NULL, 'n' },
        { "seed", required_argument, NULL, 's' },
        { "max-len", required_argument, NULL, 'm' },
        { "format", required_argument, NULL, 'f' },
        { "verbose", no_argument, NULL, 'v' },
        { "no-zeroes", no_argument, NULL, OPT_NO_ZEROES },
        { "no-discard", no_argument, NULL, OPT_NO_DISCARD },
        { "phase", required_argument, NULL, OPT_PHASE },
        { NULL, 0, NULL, 0 },
    };
    *cfg = (struct config){ .threads = 4, .ops = 2000, .seed = 1,
                            .max_len = UINT64_C(1) << 20, .has_zeroes = true,
                            .has_discard = true };
    int opt;
    uint64_t v;
    while ((opt = getopt_long(argc, argv, "t:n:s:m:f:vh", long_opts,
                              NULL)) != -1) {
        switch (opt) {
        case 't':
            if (!parse_u64(optarg, &v) || v == 0 || v > 256) {
                return -1;
            }
            cfg->threads = (unsigned)v;
            break;
        case 'n':
            if (!parse_u64(optarg, &v)) {
                return -1;
            }
            cfg->ops = (unsigned long)v;
            break;
        case 's':
            if (!parse_u64(optarg, &cfg->seed)) {
                return -1;
            }
            break;
        case 'm':
            if (!parse_u64(optarg, &v) || v == 0 || v > (UINT64_C(1) << 30)) {
                return -1;
            }
            cfg->max_len = v;
            break;
        case 'f':
            cfg->format = optarg;
            break;
        case 'v':
            cfg->is_verbose = true;
            break;
        case OPT_NO_ZEROES:
            cfg->has_zeroes = false;
            break;
        case OPT_NO_DISCARD:
            cfg->has_discard = false;
            break;
        case OPT_PHASE:
            if (strcmp(optarg, "1") != 0 && strcmp(optarg, "2") != 0) {
                return -1;
            }
            cfg->only_phase = optarg[0] - '0';
            break;
        default:
            return -1;
        }
    }
    if (argc - optind != 2) {
        return -1;
    }
    cfg->image = argv[optind];
    cfg->model_path = argv[optind + 1];
    return 0;
}

int main(int argc, char **argv)
{
    struct config cfg;
    if (parse_args(argc, argv, &cfg) < 0) {
        usage(argv[0]);
        return 2;
    }
    struct shared sh = { .cfg = &cfg };
    atomic_init(&sh.failed, false);
    atomic_init(&sh.status, 0);
    atomic_init(&sh.ops_done, 0);
    int ret = load_file(cfg.model_path, &sh.model, &sh.size);
    if (ret < 0) {
        fprintf(stderr, "workload: %s: %s\n", cfg.model_path, strerror(-ret));
        return 2;
    }
    struct worker *workers = NULL;
    int status = 0;
    ret = open_with_env(&sh.img, cfg.image, cfg.format, VIMG_OPEN_RDWR);
    if (ret < 0) {
        fprintf(stderr, "workload: cannot open %s read-write: %s\n",
                cfg.image, vimg_last_error());
        free(sh.model);
        return ret == -ENOTSUP ? 3 : 1;
    }
    if (vimg_size(sh.img) != sh.size) {
        fprintf(stderr, "workload: %s: virtual size %" PRIu64
                " but the model %s has %" PRIu64 " bytes\n", cfg.image,
                vimg_size(sh.img), cfg.model_path, sh.size);
        status = 2;
        goto out;
    }
    if (sh.size == 0) {
        printf("workload: empty disk, nothing to do\n");
        goto out;
    }
    workers = calloc(cfg.threads, sizeof(*workers));
    if (workers == NULL) {
        status = 2;
        goto out;
    }
    for (unsigned i = 0; i < cfg.threads; i++) {
        workers[i] = (struct worker){ .sh = &sh, .index = i };
        workers[i].buf = malloc(cfg.max_len);
        if (workers[i].buf == NULL) {
            fprintf(stderr, "workload: out of memory\n");
            status = 2;
            goto out;
        }
    }

    /* Phase 1: worker 0 alone, with its own stream. */
    const unsigned long ops1 = cfg.ops / 2, ops2 = cfg.ops - ops1;
    struct worker *w0 = &workers[0];
    if (cfg.only_phase != 2) {
        w0->phase = 1;
        w0->nb_ops = ops1;
        w0->rnd = seed_state(cfg.seed, 0);
        run_phase1(w0);
    }

    /* Phase 2: every worker on the same handle. */
    if (cfg.only_phase != 1 && !atomic_load(&sh.failed)) {
        pthread_barrier_init(&sh.start, NULL, cfg.threads);
        for (unsigned i = 0; i < cfg.threads; i++) {
            struct worker *w = &workers[i];
            w->phase = 2;
            w->nb_ops = ops2 / cfg.threads + (i < ops2 % cfg.threads);
            w->rnd = seed_state(cfg.seed, 1000 + i);
            if (pthread_create(&w->tid, NULL, run_phase2, w) != 0) {
                /* The barrier would never open: give up loudly. */
                fprintf(stderr, "workload: cannot start thread %u\n", i);
                abort();
            }
        }
        for (unsigned i = 0; i < cfg.threads; i++) {
            pthread_join(workers[i].tid, NULL);
        }
        pthread_barrier_destroy(&sh.start);
    }
    if (atomic_load(&sh.failed)) {
        status = atomic_load(&sh.status);
        goto out;
    }

    /* Every operation succeeded: the model is exact from here on. */
    w0->phase = 0;
    ret = vimg_flush(sh.img);
    if (ret < 0) {
        fail_call(w0, 0, "vimg_flush", 0, 0, ret);
    }
    const bool was_live_ok = ret == 0 && verify_all(w0, "after the workload");
    vimg_close(sh.img);
    sh.img = NULL;
    bool was_reopen_ok = false;
    ret = open_with_env(&sh.img, cfg.image, cfg.format, 0);
    if (ret < 0) {
        fail(w0, 1, "cannot reopen read-only after vimg_close: %s",
             vimg_last_error());
    } else {
        was_reopen_ok = verify_all(w0, "after close and reopen");
    }
    ret = save_file(cfg.model_path, sh.model, sh.size);
    if (ret < 0) {
        fprintf(stderr, "workload: cannot write the model %s: %s\n",
                cfg.model_path, strerror(-ret));
        status = 2;
        goto out;
    }
    if (!was_live_ok || !was_reopen_ok) {
        status = atomic_load(&sh.status);
        goto out;
    }
    printf("workload: %lu ops, all match (%s, %u threads in phase 2)\n",
           (unsigned long)atomic_load(&sh.ops_done), cfg.image, cfg.threads);
out:
    vimg_close(sh.img);
    if (workers != NULL) {
        for (unsigned i = 0; i < cfg.threads; i++) {
            free(workers[i].buf);
            free(workers[i].rbuf);
        }
    }
    free(workers);
    free(sh.model);
    return status;
}
