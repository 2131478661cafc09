/* check-gen.c - write a qcow2 image whose clusters were allocated in a
 * scrambled order, fast, for bench/check.sh.
 *
 * Usage: check-gen OUT VIRTUAL_SIZE [CLUSTER_BITS] [SEED]
 *
 * Every guest cluster of the virtual disk is written once, in the order of
 * a seeded random permutation, and the file is laid out the way qemu's
 * allocator would lay it out for those writes: clusters are taken from the
 * end of the file, an L2 table is allocated just before the first data
 * cluster it maps, a refcount block just before the first cluster it
 * covers.  So L2 tables, refcount blocks and data interleave and the data
 * of neighbouring guest clusters is scattered over the whole file, which
 * is what makes `check` slow (random L2 and refcount lookups).
 *
 * The result is a clean qcow2 v3 image (refcount_bits=16, no snapshots,
 * zlib compression type), checked by bench/check.sh with qemu-img check.
 * Data cluster N (guest order) is filled with the 8-byte big-endian value
 * N repeated, so a reader that mixes clusters up is caught by a compare.
 * Writing it goes as fast as the disk: ~1 s for 512 MiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COPIED (1ull << 63)

static void die(const char *what)
{
    fprintf(stderr, "check-gen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n, sz);
    if (!p)
        die("calloc");
    return p;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint64_t rng_state;

static uint64_t next_rand(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* --- the file, written front to back through a buffer ---------------- */
static int fd;
static uint64_t csize;        /* cluster size */
static uint8_t *wbuf;         /* clusters [wbuf_first, next_free) */
static uint64_t wbuf_first;
static uint64_t next_free;    /* next cluster index to allocate */
static uint64_t bufsz;        /* bytes in wbuf */

static void flush_wbuf(void)
{
    size_t len = (size_t)((next_free - wbuf_first) * csize);
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, wbuf + done, len - done,
                           (off_t)(wbuf_first * csize + done));
        if (n < 0)
            die("write");
        done += (size_t)n;
    }
    wbuf_first = next_free;
}

/* refcount blocks, kept in memory and written at the end */
static uint64_t rb_entries;   /* refcounts per block */
static uint64_t *rb_offset;   /* host cluster of refcount block i (0: none) */
static uint8_t **rb_data;
static uint64_t rb_max;

static uint64_t take_cluster(void);

static void set_refcount(uint64_t cluster)
{
    uint64_t i = cluster / rb_entries;
    if (i >= rb_max) {
        fprintf(stderr, "check-gen: refcount table too small\n");
        exit(1);
    }
    if (!rb_offset[i]) {
        rb_data[i] = xcalloc(1, csize);
        rb_offset[i] = take_cluster();
        set_refcount(rb_offset[i]);
    }
    put_be16(rb_data[i] + 2 * (cluster % rb_entries), 1);
}

/* Take the next cluster at the end of the file (zero-filled).  The
 * buffer always has room: alloc_cluster() makes it. */
static uint64_t take_cluster(void)
{
    uint64_t c = next_free++;
    memset(wbuf + (c - wbuf_first) * csize, 0, csize);
    return c;
}

/* Allocate one cluster; up to two refcount blocks may come with it
 * (a new block, and one for the block itself when it starts a new range),
 * so make room for three before taking any: the caller's pointer into the
 * buffer stays valid. */
static uint64_t alloc_cluster(void)
{
    if ((next_free + 3 - wbuf_first) * csize > bufsz)
        flush_wbuf();
    uint64_t c = take_cluster();
    set_refcount(c);
    return c;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: check-gen OUT VIRTUAL_SIZE [CLUSTER_BITS] "
                        "[SEED]\n");
        return 2;
    }
    uint64_t vsize = strtoull(argv[2], NULL, 0);
    unsigned cbits = argc > 3 ? (unsigned)atoi(argv[3]) : 9;
    rng_state = argc > 4 ? strtoull(argv[4], NULL, 0) : 0x5eed2024;
    if (cbits < 9 || cbits > 21) {
        fprintf(stderr, "check-gen: cluster bits must be 9..21\n");
        return 2;
    }
    csize = 1ull << cbits;
    if (!vsize || vsize % csize) {
        fprintf(stderr, "check-gen: size must be a multiple of the "
                        "cluster size\n");
        return 2;
    }
    uint64_t nguest = vsize / csize;
    uint64_t l2_entries = csize / 8;
    uint64_t nl2 = (nguest + l2_entries - 1) / l2_entries;
    uint64_t l1_clusters = (nl2 * 8 + csize - 1) / csize;
    rb_entries = csize * 8 / 16;
    /* upper bound of the file's clusters: header, reftable, L1, L2, data,
     * refcount blocks */
    uint64_t total = 1 + l1_clusters + nl2 + nguest;
    total += total / rb_entries + 2;
    uint64_t rt_clusters = ((total / rb_entries + 1) * 8 + csize - 1) / csize;
    total += rt_clusters + rt_clusters / rb_entries + 1;
    rb_max = rt_clusters * csize / 8;

    fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die(argv[1]);
    /* room for the metadata at the start, in one piece */
    uint64_t head = 1 + rt_clusters + l1_clusters;
    bufsz = (head + head / rb_entries + 4) * csize;
    if (bufsz < (8u << 20))
        bufsz = 8u << 20;
    wbuf = malloc(bufsz);
    rb_offset = xcalloc(rb_max, sizeof(*rb_offset));
    rb_data = xcalloc(rb_max, sizeof(*rb_data));
    uint64_t *l2_offset = xcalloc(nl2, sizeof(*l2_offset));
    uint8_t *l2_data = xcalloc(nl2, csize);
    if (!wbuf)
        die("malloc");

    /* header, refcount table and L1 table at the start of the file, in
     * one piece; their refcount blocks come after them */
    uint64_t hdr = take_cluster();
    uint64_t rt = next_free;
    for (uint64_t i = 0; i < rt_clusters; i++)
        take_cluster();
    uint64_t l1 = next_free;
    for (uint64_t i = 0; i < l1_clusters; i++)
        take_cluster();
    for (uint64_t c = hdr; c < l1 + l1_clusters; c++)
        set_refcount(c);

    uint8_t *h = wbuf + (hdr - wbuf_first) * csize;
    put_be32(h + 0, 0x514649fb);        /* magic */
    put_be32(h + 4, 3);                 /* version */
    put_be32(h + 20, cbits);
    put_be64(h + 24, vsize);
    put_be32(h + 36, (uint32_t)nl2);    /* l1_size */
    put_be64(h + 40, l1 * csize);
    put_be64(h + 48, rt * csize);
    put_be32(h + 56, (uint32_t)rt_clusters);
    put_be32(h + 96, 4);                /* refcount_order: 16 bits */
    put_be32(h + 100, 112);             /* header_length */
    /* byte 104: compression type zlib; 105-111 padding; then the end of
     * the header extensions (type 0), already zero */

    /* the scrambled writes */
    uint32_t *perm = malloc(nguest * sizeof(*perm));
    if (!perm)
        die("malloc");
    for (uint64_t i = 0; i < nguest; i++)
        perm[i] = (uint32_t)i;
    for (uint64_t i = nguest - 1; i > 0; i--) {
        uint64_t j = next_rand() % (i + 1);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (uint64_t k = 0; k < nguest; k++) {
        uint64_t g = perm[k];
        uint64_t t = g / l2_entries;
        if (!l2_offset[t])
            l2_offset[t] = alloc_cluster();
        uint64_t d = alloc_cluster();
        uint8_t *p = wbuf + (d - wbuf_first) * csize;
        for (uint64_t o = 0; o < csize; o += 8)
            put_be64(p + o, g);
        put_be64(l2_data + t * csize + (g % l2_entries) * 8,
                 COPIED | d * csize);
    }
    flush_wbuf();

    /* metadata kept in memory: L1, L2 tables, refcount table and blocks */
    uint8_t *buf = xcalloc(1, csize);
    uint8_t *l1buf = xcalloc(l1_clusters, csize);
    for (uint64_t t = 0; t < nl2; t++) {
        put_be64(l1buf + 8 * t, COPIED | l2_offset[t] * csize);
        if (pwrite(fd, l2_data + t * csize, csize,
                   (off_t)(l2_offset[t] * csize)) != (ssize_t)csize)
            die("write L2");
    }
    if (pwrite(fd, l1buf, l1_clusters * csize, (off_t)(l1 * csize)) !=
        (ssize_t)(l1_clusters * csize))
        die("write L1");
    uint8_t *rtbuf = xcalloc(rt_clusters, csize);
    for (uint64_t i = 0; i < rb_max; i++) {
        if (!rb_offset[i])
            continue;
        put_be64(rtbuf + 8 * i, rb_offset[i] * csize);
        if (pwrite(fd, rb_data[i], csize, (off_t)(rb_offset[i] * csize)) !=
            (ssize_t)csize)
            die("write refcount block");
        free(rb_data[i]);
    }
    if (pwrite(fd, rtbuf, rt_clusters * csize, (off_t)(rt * csize)) !=
        (ssize_t)(rt_clusters * csize))
        die("write refcount table");
    if (close(fd) < 0)
        die("close");
    fprintf(stderr, "check-gen: %s: %llu guest clusters of %llu bytes, "
            "%llu L2 tables, %llu clusters in the file\n", argv[1],
            (unsigned long long)nguest, (unsigned long long)csize,
            (unsigned long long)nl2, (unsigned long long)next_free);
    free(buf); free(l1buf); free(rtbuf); free(perm); free(l2_data);
    free(l2_offset); free(rb_offset); free(rb_data); free(wbuf);
    return 0;
}
