/* gen.c - fast deterministic generator of "filesystem-like" disk content.
 *
 * Usage: gen OUT SIZE_BYTES [dense|sparse] [SEED]
 *
 * Writes SIZE_BYTES of content to OUT (created/truncated).  The content is a
 * seeded-PRNG mix of 4 KiB blocks that loosely resemble what a used
 * filesystem holds, chosen in runs of a few blocks ("files"):
 *   - text:    words from a small dictionary, spaces, punctuation, newlines
 *   - records: packed structs of counters, small integers, flags, timestamps
 *   - random:  incompressible bytes (already-compressed media, archives)
 *   - mixed:   half text, half random
 * With zlib/zstd at qcow2 cluster granularity this compresses ~2-2.5x.
 * No 4 KiB block is ever all-zero, so a dense image is fully allocated.
 *
 * Content depends only on (SEED, offset): each 1 MiB chunk is seeded from its
 * index, so "sparse" mode (every other 1 MiB chunk left as a hole, chunks
 * 0, 2, 4, ... written) holds the same bytes as "dense" mode at the written
 * offsets.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define BLK 4096u
#define BUFCHUNKS 8 /* write 8 MiB at a time */

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct rng { uint64_t s; };

static inline uint64_t next(struct rng *r)
{
    /* xorshift64* */
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static const char *const words[] = {
    "the", "of", "and", "to", "in", "is", "for", "that", "with", "on",
    "file", "data", "system", "kernel", "user", "config", "error", "value",
    "return", "static", "const", "struct", "int", "void", "char", "if",
    "else", "while", "include", "define", "buffer", "size", "offset", "read",
    "write", "open", "close", "image", "disk", "block", "cluster", "table",
    "header", "version", "license", "copyright", "software", "without",
    "warranty", "function", "module", "package", "install", "library",
    "usr", "lib", "share", "bin", "etc", "var", "log", "cache", "node",
    "http", "https", "www", "org", "com", "json", "xml", "html", "div",
    "class", "name", "type", "id", "time", "date", "status", "ok", "true",
    "false", "null", "none", "self", "this", "new", "delete", "update",
    "select", "from", "where", "order", "by", "group", "count", "sum",
    "Linux", "Debian", "GNU", "Free", "Foundation", "Public", "General",
    "message", "warning", "info", "debug", "trace", "started", "stopped",
    "service", "network", "interface", "address", "port", "connection",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static void fill_random(struct rng *r, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t v = next(r);
        memcpy(p + i, &v, 8);
    }
}

static void fill_text(struct rng *r, uint8_t *p, size_t n)
{
    size_t i = 0;
    uint64_t v = 0;
    int bits = 0;
    while (i < n) {
        if (bits < 16) { v = next(r); bits = 64; }
        /* skewed word choice: small indices are more frequent */
        unsigned a = v & 0x7f, b = (v >> 7) & 0x7f;
        unsigned w = (a < b ? a : b) % NWORDS;
        unsigned sep = (v >> 14) & 0x3;
        v >>= 16; bits -= 16;
        const char *s = words[w];
        size_t l = strlen(s);
        if (i + l + 1 > n) {
            while (i < n) p[i++] = ' ';
            break;
        }
        memcpy(p + i, s, l);
        i += l;
        p[i++] = sep == 0 ? '\n' : sep == 1 ? ',' : ' ';
    }
}

static void fill_records(struct rng *r, uint8_t *p, size_t n, uint64_t base)
{
    /* 32-byte records: u64 id, u32 small, u16 flags, u16 kind,
     * u64 timestamp, u64 hash-ish (random) */
    uint64_t ts = 1700000000ull + (base >> 9);
    for (size_t i = 0; i + 32 <= n; i += 32) {
        uint64_t v = next(r);
        uint64_t id = base + i / 32;
        uint32_t small = (uint32_t)(v & 0x3ff);
        uint16_t flags = (uint16_t)((v >> 10) & 0x7);
        uint16_t kind = (uint16_t)((v >> 13) & 0x3);
        uint64_t hash = (v >> 16) & 0xffffffffull; /* 4 random bytes */
        ts += (v >> 60) & 3;
        memcpy(p + i, &id, 8);
        memcpy(p + i + 8, &small, 4);
        memcpy(p + i + 12, &flags, 2);
        memcpy(p + i + 14, &kind, 2);
        memcpy(p + i + 16, &ts, 8);
        memcpy(p + i + 24, &hash, 8);
    }
}

static void gen_chunk(uint64_t seed, uint64_t idx, uint8_t *p)
{
    struct rng r = { splitmix(seed ^ splitmix(idx)) | 1 };
    unsigned type = 0, left = 0;
    for (unsigned b = 0; b < CHUNK / BLK; b++) {
        uint8_t *q = p + (size_t)b * BLK;
        if (left == 0) {
            uint64_t v = next(&r);
            unsigned pick = v % 100;
            /* 50% text, 32% records, 10% random, 8% mixed */
            type = pick < 50 ? 0 : pick < 82 ? 1 : pick < 92 ? 2 : 3;
            left = 1 + ((v >> 8) % 16); /* run of 1..16 blocks */
        }
        left--;
        switch (type) {
        case 0: fill_text(&r, q, BLK); break;
        case 1: fill_records(&r, q, BLK, (idx << 8 | b) << 7); break;
        case 2: fill_random(&r, q, BLK); break;
        default:
            fill_text(&r, q, BLK / 2);
            fill_random(&r, q + BLK / 2, BLK / 2);
            break;
        }
    }
}

static uint64_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return 0;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    case 't': case 'T': v <<= 40; end++; break;
    default: break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    return *end ? 0 : v;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s OUT SIZE [dense|sparse] [SEED]\n", argv[0]);
        return 2;
    }
    uint64_t size = parse_size(argv[2]);
    if (size == 0 || size % CHUNK) {
        fprintf(stderr, "gen: SIZE must be a positive multiple of 1 MiB\n");
        return 2;
    }
    int sparse = argc > 3 && strcmp(argv[3], "sparse") == 0;
    if (argc > 3 && !sparse && strcmp(argv[3], "dense") != 0) {
        fprintf(stderr, "gen: mode must be dense or sparse\n");
        return 2;
    }
    uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 0) : 0x5eed2024;

    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror(argv[1]); return 1; }
    uint8_t *buf = aligned_alloc(4096, (size_t)CHUNK * BUFCHUNKS);
    if (!buf) { perror("alloc"); return 1; }

    uint64_t nchunks = size / CHUNK;
    for (uint64_t c = 0; c < nchunks;) {
        /* gather a run of chunks to write contiguously */
        unsigned n = 0;
        uint64_t start = c;
        while (c < nchunks && n < BUFCHUNKS) {
            if (sparse && (c & 1)) break;
            gen_chunk(seed, c, buf + (size_t)n * CHUNK);
            n++; c++;
            if (sparse) break;
        }
        if (n) {
            size_t len = (size_t)n * CHUNK, done = 0;
            while (done < len) {
                ssize_t w = pwrite(fd, buf + done, len - done,
                                   (off_t)(start * CHUNK + done));
                if (w < 0) {
                    if (errno == EINTR) continue;
                    perror("write");
                    return 1;
                }
                done += (size_t)w;
            }
        }
        if (sparse && c < nchunks && (c & 1)) c++; /* skip the hole */
    }
    if (ftruncate(fd, (off_t)size) < 0) { perror("ftruncate"); return 1; }
    if (close(fd) < 0) { perror("close"); return 1; }
    free(buf);
    return 0;
}
