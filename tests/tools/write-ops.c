/* SPDX-License-Identifier: MIT */
/*
 * write-ops.c: apply a list of guest writes to an image through libvimg,
 * in order, then flush and close.
 *
 *   write-ops [-f FORMAT] IMAGE OP...
 *
 * Each OP is one word, numbers in decimal or 0x hex:
 *   w:OFF:LEN:SEED   vimg_pwrite of LEN pattern bytes at OFF
 *   z:OFF:LEN        vimg_write_zeroes
 *   zu:OFF:LEN       vimg_write_zeroes with VIMG_ZERO_MAY_UNMAP
 *   d:OFF:LEN        vimg_discard
 *   c:OFF:SEED       one cluster of pattern bytes at OFF (cluster aligned;
 *                    the last cluster may be short) written compressed;
 *                    an error if the pattern does not compress
 *   f                vimg_flush
 *   s:OFF:FILE       vimg_pwrite of the bytes of FILE at OFF (qemu-io's
 *                    write -s)
 *
 * The pattern (tests/cli/snapshot_model.py makes the same bytes): the disk
 * is cut into 16-byte units; the unit at offset U holds SEED and then U,
 * both as little-endian 64-bit numbers, so every unit of every write is
 * distinct, and the pattern compresses.
 *
 * Exit status: 0 all done; 1 an operation failed (message names it and
 * vimg_last_error()); 2 usage or open error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg.h>

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* Fill BUF with the pattern bytes of [OFF, OFF + LEN) for SEED. */
static void fill_pattern(uint8_t *buf, uint64_t off, size_t len,
                         uint64_t seed)
{
    uint8_t unit[16];

    for (size_t i = 0; i < len;) {
        const uint64_t at = off + i;
        const uint64_t u = at & ~UINT64_C(15);
        const size_t skip = (size_t)(at - u);
        size_t n = 16 - skip;

        if (n > len - i) {
            n = len - i;
        }
        put_le64(unit, seed);
        put_le64(unit + 8, u);
        memcpy(buf + i, unit + skip, n);
        i += n;
    }
}

static int parse_num(const char *s, uint64_t *out)
{
    char *end;

    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *s == '-') {
        return -1;
    }
    *out = v;
    return 0;
}

/* Split "k:a:b:c" into the kind and up to 3 numbers; returns the count. */
static int parse_op(char *word, char **kind, uint64_t num[3])
{
    int n = 0;

    *kind = strtok(word, ":");
    if (!*kind) {
        return -1;
    }
    for (char *tok; (tok = strtok(NULL, ":")) != NULL;) {
        if (n == 3 || parse_num(tok, &num[n]) < 0) {
            return -1;
        }
        n++;
    }
    return n;
}

static int do_write(vimg_image *img, uint64_t off, uint64_t len,
                    uint64_t seed)
{
    uint8_t *buf = malloc(len ? len : 1);

    if (!buf) {
        return -ENOMEM;
    }
    fill_pattern(buf, off, len, seed);
    int r = vimg_pwrite(img, buf, len, off);
    free(buf);
    return r;
}

static int do_compressed(vimg_image *img, uint64_t off, uint64_t seed)
{
    const uint32_t cs = vimg_cluster_size(img);
    const uint64_t size = vimg_size(img);
    size_t len = cs;

    if (off % cs || off >= size) {
        fprintf(stderr, "write-ops: compressed write at %" PRIu64
                        " is not a cluster inside the disk\n", off);
        return -EINVAL;
    }
    if (size - off < len) {
        len = (size_t)(size - off);
    }
    uint8_t *data = calloc(1, cs);
    uint8_t *out = malloc(cs);
    int r = -ENOMEM;
    if (data && out) {
        fill_pattern(data, off, len, seed);
        r = vimg_compress_cluster(img, data, len, out, cs);
        if (r == 0) {
            fprintf(stderr, "write-ops: the pattern at %" PRIu64
                            " does not compress\n", off);
            r = -EINVAL;
        } else if (r > 0) {
            r = vimg_pwrite_compressed(img, out, (size_t)r, off);
        }
    }
    free(data);
    free(out);
    return r;
}

/* "s:OFF:FILE": write FILE's bytes (at most 1 MiB) at OFF. */
static int do_write_file(vimg_image *img, const char *arg)
{
    uint64_t off;
    char *num = strdup(arg);
    char *colon = num ? strchr(num, ':') : NULL;

    if (!colon) {
        free(num);
        return -EINVAL;
    }
    *colon = '\0';
    FILE *f = parse_num(num, &off) == 0 ? fopen(colon + 1, "rb") : NULL;
    free(num);
    if (!f) {
        return -EINVAL;
    }
    static uint8_t buf[1 << 20];
    const size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    return vimg_pwrite(img, buf, len, off);
}

static int run_op(vimg_image *img, const char *op_text, char *word)
{
    if (!strncmp(word, "s:", 2)) {
        const int r = do_write_file(img, word + 2);
        if (r < 0) {
            fprintf(stderr, "write-ops: %s failed: %s (%s)\n", op_text,
                    strerror(-r), vimg_last_error());
            return 1;
        }
        return 0;
    }
    char *kind;
    uint64_t num[3] = {0, 0, 0};
    const int n = parse_op(word, &kind, num);
    int r;

    if (n < 0) {
        fprintf(stderr, "write-ops: bad operation '%s'\n", op_text);
        return 2;
    }
    if (!strcmp(kind, "w") && n == 3) {
        r = do_write(img, num[0], num[1], num[2]);
    } else if (!strcmp(kind, "z") && n == 2) {
        r = vimg_write_zeroes(img, num[0], num[1], 0);
    } else if (!strcmp(kind, "zu") && n == 2) {
        r = vimg_write_zeroes(img, num[0], num[1], VIMG_ZERO_MAY_UNMAP);
    } else if (!strcmp(kind, "d") && n == 2) {
        r = vimg_discard(img, num[0], num[1]);
    } else if (!strcmp(kind, "c") && n == 2) {
        r = do_compressed(img, num[0], num[1]);
    } else if (!strcmp(kind, "f") && n == 0) {
        r = vimg_flush(img);
    } else {
        fprintf(stderr, "write-ops: bad operation '%s'\n", op_text);
        return 2;
    }
    if (r < 0) {
        fprintf(stderr, "write-ops: %s failed: %s (%s)\n", op_text,
                strerror(-r), vimg_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *format = NULL;
    int first = 1;
    vimg_image *img = NULL;

    if (argc > 2 && !strcmp(argv[1], "-f")) {
        format = argv[2];
        first = 3;
    }
    if (argc - first < 1) {
        fprintf(stderr, "usage: write-ops [-f FORMAT] IMAGE OP...\n");
        return 2;
    }
    int r = vimg_open(&img, argv[first], format, VIMG_OPEN_RDWR);
    if (r < 0) {
        fprintf(stderr, "write-ops: cannot open %s: %s\n", argv[first],
                vimg_last_error());
        return 2;
    }
    int status = 0;
    for (int i = first + 1; i < argc && status == 0; i++) {
        char *word = strdup(argv[i]);
        if (!word) {
            status = 2;
            break;
        }
        status = run_op(img, argv[i], word);
        free(word);
    }
    if (status == 0 && (r = vimg_flush(img)) < 0) {
        fprintf(stderr, "write-ops: flush failed: %s\n", vimg_last_error());
        status = 1;
    }
    vimg_close(img);
    return status;
}
