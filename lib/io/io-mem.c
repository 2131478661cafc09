/* SPDX-License-Identifier: MIT */
/*
 * io-mem.c: a file held in memory, for tests and fuzzers.  Grows on write
 * past the end.  A mutex makes it as thread safe as a real file.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "util/vimg-util.h"

struct io_mem {
    struct vimg_io io;
    pthread_mutex_t lock;
    uint8_t *data;
    size_t len;
    char *name;
};

static int mem_pread(struct vimg_io *io, void *buf, size_t count, uint64_t off)
{
    struct io_mem *m = (struct io_mem *)io;

    pthread_mutex_lock(&m->lock);
    size_t have = off < m->len ? VIMG_MIN(count, m->len - (size_t)off) : 0;
    if (have) {
        memcpy(buf, m->data + off, have);
    }
    memset((uint8_t *)buf + have, 0, count - have);
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* Memory files serve tests and fuzzers: past 256 MiB writes fail as a
 * full disk would (a bad image may point a write anywhere, and a fuzzer
 * must not run out of memory over it). */
#define MEM_FILE_MAX (UINT64_C(256) << 20)

static int grow_locked(struct io_mem *m, uint64_t size)
{
    if (size > SIZE_MAX / 2 || size > MEM_FILE_MAX) {
        return vimg_error(-EFBIG, "%s: memory file too large: it cannot "
                                  "grow to %llu bytes",
                          m->name, (unsigned long long)size);
    }
    uint8_t *p = realloc(m->data, size ? (size_t)size : 1);
    if (!p) {
        return vimg_error(-ENOMEM, "%s: out of memory", m->name);
    }
    if (size > m->len) {
        memset(p + m->len, 0, (size_t)size - m->len);
    }
    m->data = p;
    m->len = (size_t)size;
    return 0;
}

static int mem_pwrite(struct vimg_io *io, const void *buf, size_t count,
                      uint64_t off)
{
    struct io_mem *m = (struct io_mem *)io;
    uint64_t end;
    int ret = 0;

    if (vimg_add_overflows(off, count, &end)) {
        return vimg_error(-EFBIG, "%s: write past the largest offset",
                          m->name);
    }
    pthread_mutex_lock(&m->lock);
    if (end > m->len) {
        ret = grow_locked(m, end);
    }
    if (ret == 0) {
        memcpy(m->data + off, buf, count);
    }
    pthread_mutex_unlock(&m->lock);
    return ret;
}

static int mem_flush(struct vimg_io *io)
{
    (void)io;
    return 0;
}

static int mem_get_size(struct vimg_io *io, uint64_t *out)
{
    struct io_mem *m = (struct io_mem *)io;

    pthread_mutex_lock(&m->lock);
    *out = m->len;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

static int mem_truncate(struct vimg_io *io, uint64_t size)
{
    struct io_mem *m = (struct io_mem *)io;

    pthread_mutex_lock(&m->lock);
    int ret = grow_locked(m, size);
    pthread_mutex_unlock(&m->lock);
    return ret;
}

static void mem_close(struct vimg_io *io)
{
    struct io_mem *m = (struct io_mem *)io;

    pthread_mutex_destroy(&m->lock);
    free(m->data);
    free(m->name);
    free(m);
}

static const struct vimg_io_ops mem_ops = {
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .get_size = mem_get_size,
    .truncate = mem_truncate,
    .close = mem_close,
};

int vimg_io_mem_new(struct vimg_io **out, const void *data, size_t len,
                    const char *name)
{
    struct io_mem *m = calloc(1, sizeof(*m));
    if (!m) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    m->name = strdup(name ? name : "memory");
    m->data = malloc(len ? len : 1);
    if (!m->name || !m->data) {
        free(m->name);
        free(m->data);
        free(m);
        return vimg_error(-ENOMEM, "out of memory");
    }
    if (len) {
        memcpy(m->data, data, len);
    }
    m->len = len;
    pthread_mutex_init(&m->lock, NULL);
    m->io.ops = &mem_ops;
    m->io.name = m->name;
    *out = &m->io;
    return 0;
}

const uint8_t *vimg_io_mem_data(struct vimg_io *io, size_t *len_out)
{
    struct io_mem *m = (struct io_mem *)io;

    *len_out = m->len;
    return m->data;
}
