/* SPDX-License-Identifier: MIT */
/*
 * read-threads.c: hammer one image handle from several threads and check
 * every byte against a raw reference (made by `qemu-img convert -O raw`).
 *
 *   read-threads [-t THREADS] [-n ITERATIONS] [-s SEED] [-f FORMAT]
 *                IMAGE REFERENCE
 *
 * The image is opened once (with its backing chain).  Each thread does
 * ITERATIONS random reads: sizes from 1 byte to 1 MiB (a third of them
 * under 4 KiB, a third under 64 KiB), random offsets, a per-thread seed
 * derived from SEED.  Every eighth iteration it also asks block status at
 * the offset and checks that an extent flagged ZERO is zeroes in the
 * reference.  All threads start together (barrier) to maximise overlap.
 *
 * Exit status: 0 all reads matched, 1 mismatch or error (with a message
 * naming thread, iteration, offset and length), 2 usage or setup error.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vimg.h>

#include "tool-open.h"

#define MAX_READ (UINT64_C(1) << 20)

struct shared {
    vimg_image *img;
    const uint8_t *ref;
    uint64_t size;
    unsigned long iterations;
    uint64_t seed;
    pthread_barrier_t start;
    atomic_bool failed;
};

struct worker {
    struct shared *sh;
    unsigned index;
    pthread_t tid;
    uint64_t bytes_read;
};

/* splitmix64: a good, tiny, reproducible generator. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void fail(struct worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(struct worker *w, const char *fmt, ...)
{
    /* Report only the first failure; the others stop quietly. */
    if (atomic_exchange(&w->sh->failed, true)) {
        return;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "read-threads: thread %u: %s\n", w->index, msg);
}

static uint64_t pick_length(uint64_t *rnd, uint64_t size)
{
    uint64_t max;
    switch (next_random(rnd) % 3) {
    case 0:
        max = 4096;
        break;
    case 1:
        max = 65536;
        break;
    default:
        max = MAX_READ;
        break;
    }
    max = max < size ? max : size;
    return 1 + next_random(rnd) % max;
}

static bool is_zero(const uint8_t *p, uint64_t len, uint64_t *where)
{
    for (uint64_t i = 0; i < len; i++) {
        if (p[i] != 0) {
            *where = i;
            return false;
        }
    }
    return true;
}

static void *worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct shared *sh = w->sh;
    uint64_t rnd = sh->seed * 1000003 + w->index;
    uint8_t *buf = malloc(MAX_READ);
    if (buf == NULL) {
        fail(w, "out of memory");
        return NULL;
    }
    pthread_barrier_wait(&sh->start);
    for (unsigned long it = 0; it < sh->iterations; it++) {
        if (atomic_load(&sh->failed)) {
            break;
        }
        const uint64_t len = pick_length(&rnd, sh->size);
        const uint64_t off = next_random(&rnd) % (sh->size - len + 1);
        /* Poison, so a read that silently skips bytes is caught. */
        memset(buf, 0xdb, len);
        int ret = vimg_pread(sh->img, buf, len, off);
        if (ret < 0) {
            fail(w, "iteration %lu: vimg_pread(offset 0x%" PRIx64
                 ", length %" PRIu64 ") failed: %s (%s)", it, off, len,
                 strerror(-ret), vimg_last_error());
            break;
        }
        w->bytes_read += len;
        if (memcmp(buf, sh->ref + off, len) != 0) {
            uint64_t i = 0;
            while (buf[i] == sh->ref[off + i]) {
                i++;
            }
            fail(w, "iteration %lu: read(offset 0x%" PRIx64 ", length %"
                 PRIu64 ") differs from the reference at offset 0x%" PRIx64
                 ": got 0x%02x, expected 0x%02x", it, off, len, off + i,
                 buf[i], sh->ref[off + i]);
            break;
        }
        if (it % 8 == 0) {
            struct vimg_extent ext;
            ret = vimg_block_status(sh->img, off, len, &ext);
            if (ret < 0) {
                fail(w, "iteration %lu: vimg_block_status(offset 0x%" PRIx64
                     ", length %" PRIu64 ") failed: %s (%s)", it, off, len,
                     strerror(-ret), vimg_last_error());
                break;
            }
            uint64_t where;
            if (ext.length == 0 || ext.length > len) {
                fail(w, "iteration %lu: block status at 0x%" PRIx64
                     " for %" PRIu64 " bytes gave length %" PRIu64, it, off,
                     len, ext.length);
                break;
            }
            if ((ext.flags & VIMG_EXTENT_ZERO) &&
                !is_zero(sh->ref + off, ext.length, &where)) {
                fail(w, "iteration %lu: block status says [0x%" PRIx64
                     ", +%" PRIu64 ") reads as zeroes, but offset 0x%" PRIx64
                     " is not zero", it, off, ext.length, off + where);
                break;
            }
        }
    }
    free(buf);
    return NULL;
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

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-t THREADS] [-n ITERATIONS] [-s SEED] "
            "[-f FORMAT] IMAGE REFERENCE\n", argv0);
}

int main(int argc, char **argv)
{
    unsigned threads = 4;
    unsigned long iterations = 200;
    uint64_t seed = 1;
    const char *format = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "t:n:s:f:h")) != -1) {
        switch (opt) {
        case 't':
            threads = (unsigned)strtoul(optarg, NULL, 0);
            break;
        case 'n':
            iterations = strtoul(optarg, NULL, 0);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 0);
            break;
        case 'f':
            format = optarg;
            break;
        default:
            usage(argv[0]);
            return 2;
        }
    }
    if (argc - optind != 2 || threads == 0 || threads > 256) {
        usage(argv[0]);
        return 2;
    }
    const char *image = argv[optind], *reference = argv[optind + 1];

    struct shared sh = { .iterations = iterations, .seed = seed };
    uint8_t *ref = NULL;
    int ret = load_file(reference, &ref, &sh.size);
    if (ret < 0) {
        fprintf(stderr, "read-threads: %s: %s\n", reference, strerror(-ret));
        return 2;
    }
    sh.ref = ref;
    ret = open_with_env(&sh.img, image, format, 0);
    if (ret < 0) {
        fprintf(stderr, "read-threads: cannot open %s: %s\n", image,
                vimg_last_error());
        free(ref);
        return 1;
    }
    int status = 0;
    if (vimg_size(sh.img) != sh.size) {
        fprintf(stderr, "read-threads: %s: virtual size %" PRIu64
                " but the reference %s has %" PRIu64 " bytes\n", image,
                vimg_size(sh.img), reference, sh.size);
        status = 1;
        goto out;
    }
    if (sh.size == 0) {
        goto out;
    }

    struct worker *workers = calloc(threads, sizeof(*workers));
    if (workers == NULL) {
        status = 2;
        goto out;
    }
    pthread_barrier_init(&sh.start, NULL, threads);
    unsigned started = 0;
    for (; started < threads; started++) {
        workers[started] = (struct worker){ .sh = &sh, .index = started };
        if (pthread_create(&workers[started].tid, NULL, worker_main,
                           &workers[started]) != 0) {
            /* The barrier would never open: give up loudly. */
            fprintf(stderr, "read-threads: cannot start thread %u\n", started);
            abort();
        }
    }
    uint64_t total = 0;
    for (unsigned i = 0; i < started; i++) {
        pthread_join(workers[i].tid, NULL);
        total += workers[i].bytes_read;
    }
    pthread_barrier_destroy(&sh.start);
    free(workers);
    if (atomic_load(&sh.failed)) {
        status = 1;
    } else {
        printf("read-threads: %s: %u threads x %lu reads, %" PRIu64
               " bytes, all match\n", image, threads, iterations, total);
    }
out:
    vimg_close(sh.img);
    free(ref);
    return status;
}
