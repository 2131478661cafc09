/* SPDX-License-Identifier: MIT */
/*
 * image.c: the public entry points.  Arguments are checked here once, then
 * the call is dispatched to the format driver.  Backing chains are opened
 * here, so any format can back any other.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/format.h"

/* Deeper chains are refused: they are almost certainly a loop. */
#define VIMG_MAX_CHAIN_DEPTH 64

/* The images above the one being opened, to catch backing loops. */
struct chain_link {
    dev_t dev;
    ino_t ino;
    const char *name;
    const struct chain_link *up;
};

static int open_io(struct vimg_image **out, struct vimg_io *io,
                   const char *path, const char *format,
                   const struct vimg_open_opts *opts, unsigned depth,
                   const struct chain_link *up);

/* What a layer runs on after vimg_reopen_rw() lost it: every access
 * fails with -EIO instead of touching freed driver state. */
static int dead_open(struct vimg_image *img, unsigned flags)
{
    (void)flags;
    return vimg_error(-EIO, "%s: image was lost in a failed reopen",
                      img->filename);
}

static void dead_close(struct vimg_image *img)
{
    (void)img;
}

static int dead_pread(struct vimg_image *img, void *buf, size_t count,
                      uint64_t offset)
{
    (void)buf;
    (void)count;
    (void)offset;
    return dead_open(img, 0);
}

static int dead_block_status(struct vimg_image *img, uint64_t offset,
                             uint64_t count, struct vimg_layer_status *out)
{
    (void)offset;
    (void)count;
    (void)out;
    return dead_open(img, 0);
}

static const struct vimg_format vimg_format_dead = {
    .name = "lost",
    .open = dead_open,
    .close = dead_close,
    .pread = dead_pread,
    .block_status = dead_block_status,
};

void vimg_set_compression_level(vimg_image *img, int level)
{
    img->compression_level = level;
}

char *vimg_path_join_dir(const char *path, const char *name)
{
    if (name[0] == '/') {
        return strdup(name);
    }
    const char *slash = strrchr(path, '/');
    if (!slash) {
        return strdup(name);
    }
    size_t dir_len = (size_t)(slash - path) + 1;
    char *out = malloc(dir_len + strlen(name) + 1);
    if (out) {
        memcpy(out, path, dir_len);
        strcpy(out + dir_len, name);
    }
    return out;
}

static void image_free(struct vimg_image *img)
{
    if (!img) {
        return;
    }
    if (img->drv && img->priv) {
        img->drv->close(img);
    }
    vimg_close(img->backing);
    vimg_io_close(img->io);
    free(img->filename);
    free(img->backing_name);
    free(img->backing_fmt);
    free(img->backing_path);
    free(img);
}

/*
 * The locks qemu-img takes on an image (or backing file) it opens with
 * FLAGS (see io.h): metadata formats let nobody else write or resize;
 * a raw file shares everything unless VIMG_OPEN_NO_OTHER_WRITERS.
 */
static void image_lock_perms(unsigned flags, bool is_raw, unsigned *perm,
                             unsigned *shared)
{
    const unsigned no_writers =
        VIMG_PERM_ALL & ~(VIMG_PERM_WRITE | VIMG_PERM_RESIZE);

    *perm = (flags & VIMG_OPEN_INFO_ONLY) ? 0 : VIMG_PERM_CONSISTENT_READ;
    if (flags & VIMG_OPEN_FORCE_SHARE) {
        *shared = VIMG_PERM_ALL;
        return;
    }
    *shared = is_raw && !(flags & VIMG_OPEN_NO_OTHER_WRITERS) ? VIMG_PERM_ALL
                                                              : no_writers;
    if (flags & VIMG_OPEN_RDWR) {
        *perm |= VIMG_PERM_WRITE | (is_raw ? 0 : VIMG_PERM_RESIZE);
    }
}

static int lock_image(struct vimg_image *img, struct vimg_io *io,
                      unsigned flags)
{
    unsigned perm, shared;

    if (flags & VIMG_OPEN_NO_LOCK) {
        return 0;
    }
    image_lock_perms(flags, strcmp(img->drv->name, "raw") == 0, &perm,
                     &shared);
    return vimg_io_lock(io, perm, shared);
}

int vimg_lock_data_file(struct vimg_io *io, unsigned flags)
{
    unsigned perm = VIMG_PERM_CONSISTENT_READ;
    unsigned shared = VIMG_PERM_ALL & ~VIMG_PERM_RESIZE;

    if (flags & VIMG_OPEN_NO_LOCK) {
        return 0;
    }
    if (flags & VIMG_OPEN_FORCE_SHARE) {
        shared = VIMG_PERM_ALL;
    } else if (flags & VIMG_OPEN_NO_OTHER_WRITERS) {
        shared &= ~VIMG_PERM_WRITE;
    }
    if (flags & VIMG_OPEN_RDWR) {
        perm |= VIMG_PERM_WRITE | VIMG_PERM_RESIZE;
    }
    return vimg_io_lock(io, perm, shared);
}

static int open_backing(struct vimg_image *img, unsigned depth,
                        const struct chain_link *up)
{
    if (depth + 1 >= VIMG_MAX_CHAIN_DEPTH) {
        return vimg_error(-ELOOP, "%s: backing chain deeper than %d images",
                          img->filename, VIMG_MAX_CHAIN_DEPTH);
    }
    struct stat st;
    if (stat(img->backing_path, &st) == 0) {
        for (const struct chain_link *l = up; l; l = l->up) {
            if (l->dev == st.st_dev && l->ino == st.st_ino) {
                return vimg_error(-ELOOP,
                                  "backing chain loop: '%s' (backing file of "
                                  "'%s') is '%s', which is already in the "
                                  "chain",
                                  img->backing_path, img->filename, l->name);
            }
        }
    }
    struct vimg_io *io = NULL;
    int ret = vimg_io_file_open(&io, img->backing_path, false, false);
    if (ret < 0) {
        vimg_error_prefix("could not open backing file of '%s'",
                          img->filename);
        return ret;
    }
    const struct vimg_open_opts opts = {
        .version = VIMG_OPEN_OPTS_VERSION,
        .flags = img->flags & ~VIMG_OPEN_RDWR,
        .cache_size = img->cache_size,
    };
    ret = open_io(&img->backing, io, img->backing_path, img->backing_fmt,
                  &opts, depth + 1, up);
    if (ret < 0 && ret != -ELOOP) {
        vimg_error_prefix("could not open backing file of '%s'",
                          img->filename);
    }
    return ret;
}

/* Takes ownership of IO, also on failure. */
static int open_io(struct vimg_image **out, struct vimg_io *io,
                   const char *path, const char *format,
                   const struct vimg_open_opts *opts, unsigned depth,
                   const struct chain_link *up)
{
    struct vimg_image *img = calloc(1, sizeof(*img));
    const unsigned flags = opts->flags;
    int ret;

    if (!img) {
        vimg_io_close(io);
        return vimg_error(-ENOMEM, "out of memory");
    }
    img->io = io;
    img->flags = flags;
    img->cache_size = opts->cache_size;
    /* a check handle is written only by vimg_check's repairs */
    img->is_writable = (flags & VIMG_OPEN_RDWR) && !(flags & VIMG_OPEN_CHECK);
    img->filename = strdup(path);
    if (!img->filename) {
        ret = vimg_error(-ENOMEM, "out of memory");
        goto out;
    }
    if (format) {
        img->drv = vimg_format_find(format);
        if (!img->drv && vimg_format_is_foreign(format)) {
            ret = vimg_error(-ENOTSUP, "%s: vimg does not support the %s "
                                       "format yet",
                             path, format);
            goto out;
        }
        if (!img->drv) {
            ret = vimg_error(-EINVAL, "unknown format '%s'", format);
            goto out;
        }
    } else {
        ret = vimg_format_probe(io, &img->drv);
        if (ret < 0) {
            goto out;
        }
        img->is_probed = true;
    }
    /* before the driver reads (or, read-write, repairs) anything */
    ret = lock_image(img, io, flags);
    if (ret < 0) {
        goto out;
    }
    ret = img->drv->open(img, flags);
    if (ret < 0) {
        goto out;
    }
    if (img->backing_name) {
        img->backing_path = vimg_path_join_dir(path, img->backing_name);
        if (!img->backing_path) {
            ret = vimg_error(-ENOMEM, "out of memory");
            goto out;
        }
        if (!(flags & VIMG_OPEN_NO_BACKING)) {
            struct chain_link self = {.name = path, .up = up};
            struct stat st;
            if (stat(path, &st) == 0) {
                self.dev = st.st_dev;
                self.ino = st.st_ino;
            }
            ret = open_backing(img, depth, &self);
            if (ret < 0) {
                goto out;
            }
        }
    }
    *out = img;
    return 0;
out:
    image_free(img);
    return ret;
}

/* OPTS (NULL: defaults) as a current-version struct in *OUT. */
static int open_opts_copy(const struct vimg_open_opts *opts,
                          struct vimg_open_opts *out)
{
    const struct vimg_open_opts defaults = VIMG_OPEN_OPTS_INIT;

    if (opts && opts->version != VIMG_OPEN_OPTS_VERSION) {
        return vimg_error(-EINVAL, "vimg_open_ext: unknown options version "
                                   "%u",
                          opts->version);
    }
    *out = opts ? *opts : defaults;
    return 0;
}

int vimg_open_ext(vimg_image **out, const char *path, const char *format,
                  const struct vimg_open_opts *caller_opts)
{
    struct vimg_open_opts opts;
    struct vimg_io *io = NULL;

    if (!out || !path) {
        return vimg_error(-EINVAL, "vimg_open: NULL argument");
    }
    vimg_error_clear();
    int ret = open_opts_copy(caller_opts, &opts);
    if (ret < 0) {
        return ret;
    }
    if ((opts.flags & VIMG_OPEN_FORCE_SHARE) &&
        (opts.flags & VIMG_OPEN_RDWR)) {
        return vimg_error(-EINVAL, "%s: force-share=on can only be used "
                                   "with read-only images",
                          path);
    }
    ret = vimg_io_file_open(&io, path, opts.flags & VIMG_OPEN_RDWR, false);
    if (ret < 0) {
        return ret;
    }
    io->is_unsafe = opts.flags & VIMG_OPEN_CACHE_UNSAFE;
    return open_io(out, io, path, format, &opts, 0, NULL);
}

int vimg_open(vimg_image **out, const char *path, const char *format,
              unsigned flags)
{
    const struct vimg_open_opts opts = {.version = VIMG_OPEN_OPTS_VERSION,
                                        .flags = flags};

    return vimg_open_ext(out, path, format, &opts);
}

int vimg_open_memory(vimg_image **out, const void *data, size_t len,
                     const char *format, const char *name)
{
    const struct vimg_open_opts opts = {
        .version = VIMG_OPEN_OPTS_VERSION,
        .flags = VIMG_OPEN_NO_BACKING | VIMG_OPEN_MEMORY,
    };
    struct vimg_io *io = NULL;

    if (!out || (!data && len)) {
        return vimg_error(-EINVAL, "vimg_open_memory: NULL argument");
    }
    vimg_error_clear();
    int ret = vimg_io_mem_new(&io, data, len, name ? name : "memory");
    if (ret < 0) {
        return ret;
    }
    return open_io(out, io, name ? name : "memory", format, &opts, 0, NULL);
}

int vimg_open_io(vimg_image **out, struct vimg_io *io, const char *name,
                 const char *format, unsigned flags)
{
    const struct vimg_open_opts opts = {.version = VIMG_OPEN_OPTS_VERSION,
                                        .flags = flags};

    vimg_error_clear();
    return open_io(out, io, name, format, &opts, 0, NULL);
}

void vimg_close(vimg_image *img)
{
    image_free(img);
}

static int check_range(const struct vimg_image *img, size_t count,
                       uint64_t offset)
{
    uint64_t end;

    if (vimg_add_overflows(offset, count, &end) || end > img->size) {
        return vimg_error(-EINVAL,
                          "%s: request of %zu bytes at 0x%llx is beyond the "
                          "end of the disk (%llu bytes)",
                          img->filename, count, (unsigned long long)offset,
                          (unsigned long long)img->size);
    }
    return 0;
}

int vimg_pread(vimg_image *img, void *buf, size_t count, uint64_t offset)
{
    if (!img || (!buf && count)) {
        return vimg_error(-EINVAL, "vimg_pread: NULL argument");
    }
    int ret = check_range(img, count, offset);
    if (ret < 0 || count == 0) {
        return ret;
    }
    return img->drv->pread(img, buf, count, offset);
}

int vimg_pwrite(vimg_image *img, const void *buf, size_t count,
                uint64_t offset)
{
    if (!img || (!buf && count)) {
        return vimg_error(-EINVAL, "vimg_pwrite: NULL argument");
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (!img->drv->pwrite) {
        return vimg_error(-ENOTSUP, "%s: writing %s images is not supported",
                          img->filename, img->drv->name);
    }
    int ret = check_range(img, count, offset);
    if (ret == 0) {
        ret = vimg_format_guard_head(img, buf, count, offset);
    }
    if (ret < 0 || count == 0) {
        return ret;
    }
    return img->drv->pwrite(img, buf, count, offset);
}

int vimg_write_zeroes(vimg_image *img, uint64_t offset, uint64_t count,
                      unsigned flags)
{
    if (!img) {
        return vimg_error(-EINVAL, "vimg_write_zeroes: NULL argument");
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (count > SIZE_MAX) {
        return vimg_error(-EINVAL, "vimg_write_zeroes: count too large");
    }
    int ret = check_range(img, (size_t)count, offset);
    if (ret == 0) {
        ret = vimg_format_guard_head(img, NULL, (size_t)count, offset);
    }
    if (ret < 0 || count == 0) {
        return ret;
    }
    if (img->drv->write_zeroes) {
        return img->drv->write_zeroes(img, offset, count, flags);
    }
    /* generic fallback: write zero data */
    static const uint8_t zero[64 * 1024];
    while (count > 0 && ret == 0) {
        const size_t n = (size_t)VIMG_MIN(count, (uint64_t)sizeof(zero));
        ret = vimg_pwrite(img, zero, n, offset);
        offset += n;
        count -= n;
    }
    return ret;
}

int vimg_discard(vimg_image *img, uint64_t offset, uint64_t count)
{
    if (!img) {
        return vimg_error(-EINVAL, "vimg_discard: NULL argument");
    }
    if (img->is_writable && img->drv->discard && count <= SIZE_MAX) {
        int ret = check_range(img, (size_t)count, offset);
        if (ret == 0) {
            ret = vimg_format_guard_head(img, NULL, (size_t)count, offset);
        }
        if (ret < 0 || count == 0) {
            return ret;
        }
        return img->drv->discard(img, offset, count);
    }
    return vimg_write_zeroes(img, offset, count, VIMG_ZERO_MAY_UNMAP);
}

/* The snapshot operations share their argument checks. */
static int snapshot_op(vimg_image *img, const char *name,
                       int (*op)(struct vimg_image *, const char *))
{
    if (!img || !name) {
        return vimg_error(-EINVAL, "snapshot: NULL argument");
    }
    if (!op) {
        return vimg_error(-ENOTSUP, "%s: %s images have no internal "
                                    "snapshots",
                          img->filename, img->drv->name);
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    return op(img, name);
}

int vimg_snapshot_create(vimg_image *img, const char *name)
{
    if (name && !*name) {
        return vimg_error(-EINVAL, "a snapshot needs a name");
    }
    return snapshot_op(img, name, img ? img->drv->snapshot_create : NULL);
}

int vimg_snapshot_apply(vimg_image *img, const char *id_or_name)
{
    return snapshot_op(img, id_or_name,
                       img ? img->drv->snapshot_apply : NULL);
}

int vimg_snapshot_delete(vimg_image *img, const char *name)
{
    return snapshot_op(img, name, img ? img->drv->snapshot_delete : NULL);
}

int vimg_resize(vimg_image *img, uint64_t new_size,
                const char *preallocation, unsigned flags)
{
    if (!img) {
        return vimg_error(-EINVAL, "vimg_resize: NULL argument");
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (!img->drv->resize) {
        return vimg_error(-ENOTSUP, "%s: resizing %s images is not supported",
                          img->filename, img->drv->name);
    }
    if (new_size < img->size && !(flags & VIMG_RESIZE_SHRINK)) {
        return vimg_error(-EINVAL, "%s: shrinking needs the shrink flag "
                                   "(data beyond the new end is lost)",
                          img->filename);
    }
    enum vimg_prealloc mode;
    if (vimg_prealloc_parse(preallocation, &mode) < 0) {
        return vimg_error(-EINVAL, "unknown preallocation mode '%s'",
                          preallocation);
    }
    /* raw files are locked without it (qemu-img resize takes it) */
    int ret = 0;
    if (!(img->flags & VIMG_OPEN_NO_LOCK) &&
        !(img->io->lock_perm & VIMG_PERM_RESIZE)) {
        ret = vimg_io_lock(img->io, img->io->lock_perm | VIMG_PERM_RESIZE,
                           img->io->lock_shared);
        if (ret < 0) {
            return ret;
        }
    }
    const uint64_t old_size = img->size;
    ret = img->drv->resize(img, new_size, preallocation, flags);
    /* Grown over a longer backing file: the new area must read as zeroes,
     * not as the backing file's data; like qemu's bdrv_co_truncate, zero
     * all of it.  With preallocation the driver does it (zero clusters,
     * or preallocated clusters of zeroes: tests/cli/test_resize.py). */
    const uint64_t backing_size = img->backing ? img->backing->size : 0;
    if (ret == 0 && new_size > old_size && backing_size > old_size &&
        (!preallocation || strcmp(preallocation, "off") == 0)) {
        ret = vimg_write_zeroes(img, old_size, new_size - old_size, 0);
    }
    return ret;
}

uint32_t vimg_cluster_size(const vimg_image *img)
{
    if (!img) {
        return 0;
    }
    return img->drv->cluster_size ? img->drv->cluster_size(
                                        (struct vimg_image *)img)
                                  : 512;
}

int vimg_compress_cluster(vimg_image *img, const void *data, size_t len,
                          void *out, size_t out_cap)
{
    if (!img || !data || !out) {
        return vimg_error(-EINVAL, "vimg_compress_cluster: NULL argument");
    }
    if (!img->drv->compress_cluster) {
        return vimg_error(-ENOTSUP, "%s: %s images have no compressed "
                                    "clusters",
                          img->filename, img->drv->name);
    }
    const uint32_t cs = vimg_cluster_size(img);
    if (len == 0 || len > cs || out_cap < cs) {
        return vimg_error(-EINVAL, "vimg_compress_cluster: bad length");
    }
    return img->drv->compress_cluster(img, data, len, out, out_cap);
}

int vimg_pwrite_compressed(vimg_image *img, const void *data, size_t len,
                           uint64_t offset)
{
    if (!img || !data) {
        return vimg_error(-EINVAL, "vimg_pwrite_compressed: NULL argument");
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (!img->drv->pwrite_compressed) {
        return vimg_error(-ENOTSUP, "%s: %s images have no compressed "
                                    "clusters",
                          img->filename, img->drv->name);
    }
    const uint32_t cs = vimg_cluster_size(img);
    if (offset % cs || offset >= img->size || len == 0 || len >= cs) {
        return vimg_error(-EINVAL, "vimg_pwrite_compressed: offset 0x%llx "
                                   "or length %zu invalid",
                          (unsigned long long)offset, len);
    }
    return img->drv->pwrite_compressed(img, data, len, offset);
}

int vimg_flush(vimg_image *img)
{
    if (!img) {
        return vimg_error(-EINVAL, "vimg_flush: NULL argument");
    }
    if (!img->is_writable || !img->drv->flush) {
        return 0;
    }
    return img->drv->flush(img);
}

int vimg_check_ext(vimg_image *img, const struct vimg_check_opts *opts,
                   struct vimg_check_result *out)
{
    const struct vimg_check_opts defaults = VIMG_CHECK_OPTS_INIT;

    if (!img || !out) {
        return vimg_error(-EINVAL, "vimg_check: NULL argument");
    }
    memset(out, 0, sizeof(*out));
    if (!opts) {
        opts = &defaults;
    }
    if (opts->version != VIMG_CHECK_OPTS_VERSION) {
        return vimg_error(-EINVAL, "vimg_check: unknown options version %u",
                          opts->version);
    }
    if (opts->flags & ~VIMG_CHECK_REPAIR_ALL) {
        return vimg_error(-EINVAL, "vimg_check: unknown flags 0x%x",
                          opts->flags);
    }
    if (!img->drv->check) {
        return vimg_error(-ENOTSUP, "This image format does not support "
                                    "checks");
    }
    if (opts->flags && !(img->flags & VIMG_OPEN_RDWR)) {
        return vimg_error(-EROFS, "%s: repairs need an image opened "
                                  "read-write",
                          img->filename);
    }
    return img->drv->check(img, opts->flags, opts->threads, out,
                           opts->report, opts->report_opaque);
}

int vimg_check(vimg_image *img, unsigned flags,
               struct vimg_check_result *out, vimg_check_report_fn report,
               void *opaque)
{
    const struct vimg_check_opts opts = {.version = VIMG_CHECK_OPTS_VERSION,
                                         .flags = flags,
                                         .report = report,
                                         .report_opaque = opaque};

    return vimg_check_ext(img, &opts, out);
}

uint64_t vimg_size(const vimg_image *img)
{
    return img ? img->size : 0;
}

const char *vimg_format(const vimg_image *img)
{
    return img ? img->drv->name : NULL;
}

const char *vimg_filename(const vimg_image *img)
{
    return img ? img->filename : NULL;
}

bool vimg_is_format_probed(const vimg_image *img)
{
    return img && img->is_probed;
}

vimg_image *vimg_backing(const vimg_image *img)
{
    return img ? img->backing : NULL;
}

int vimg_read_backing(struct vimg_image *img, void *buf, size_t count,
                      uint64_t offset)
{
    struct vimg_image *b = img->backing;
    size_t have = 0;

    if (b && offset < b->size) {
        have = (size_t)VIMG_MIN((uint64_t)count, b->size - offset);
        int ret = b->drv->pread(b, buf, have, offset);
        if (ret < 0) {
            return ret;
        }
    }
    memset((uint8_t *)buf + have, 0, count - have);
    return 0;
}

/*
 * Walk down the chain as `qemu-img map` does: the first layer that has
 * data or zeroes for OFFSET answers; an unallocated range in a layer
 * without a backing file, or past the end of the backing file, reads as
 * zeroes that are not "present".
 */
int vimg_block_status(vimg_image *img, uint64_t offset, uint64_t count,
                      struct vimg_extent *out)
{
    if (!img || !out) {
        return vimg_error(-EINVAL, "vimg_block_status: NULL argument");
    }
    if (offset >= img->size || count == 0) {
        return vimg_error(-EINVAL,
                          "%s: block status at 0x%llx is beyond the end of "
                          "the disk",
                          img->filename, (unsigned long long)offset);
    }
    count = VIMG_MIN(count, img->size - offset);

    struct vimg_image *layer = img;
    unsigned depth = 0;
    for (;;) {
        struct vimg_layer_status st = {0};
        int ret = layer->drv->block_status(layer, offset, count, &st);
        if (ret < 0) {
            return ret;
        }
        assert(st.length > 0 && st.length <= count);
        memset(out, 0, sizeof(*out));
        out->length = st.length;
        out->depth = depth;
        if (st.flags & (VIMG_EXTENT_DATA | VIMG_EXTENT_ZERO)) {
            out->flags = st.flags | VIMG_EXTENT_PRESENT;
            out->file_offset = st.file_offset;
            out->file_name = st.file_name;
            return 0;
        }
        struct vimg_image *b = layer->backing;
        if (!b || offset >= b->size) {
            /* zeroes; a host offset the layer knows is still reported */
            out->flags = VIMG_EXTENT_ZERO | (st.flags & VIMG_EXTENT_OFFSET);
            out->file_offset = st.file_offset;
            out->file_name = st.file_name;
            return 0;
        }
        count = VIMG_MIN(st.length, b->size - offset);
        layer = b;
        depth++;
    }
}

/*
 * Reopen IMG (a layer of some chain, so its backing image and the image
 * above it keep pointing at the same struct) read-write in place: the
 * driver state and the file are replaced, the backing chain below stays.
 * A throwaway read-write open first checks that the driver will accept
 * it (corrupt or dirty images, unwritable files), so the in-place step
 * only fails on I/O errors; then the read-only state is restored.
 */
int vimg_reopen_rw(struct vimg_image *img)
{
    if (img->is_writable) {
        return 0;
    }
    if (img->flags & VIMG_OPEN_MEMORY) {
        return vimg_error(-EROFS, "%s: in-memory images are read-only",
                          img->filename);
    }
    const unsigned flags =
        (img->flags | VIMG_OPEN_RDWR) & ~VIMG_OPEN_INFO_ONLY;
    struct vimg_image *probe = NULL;
    struct vimg_io *io = NULL;
    struct vimg_io *probe_io = NULL;
    const unsigned old_perm = img->io->lock_perm;
    const unsigned old_shared = img->io->lock_shared;
    /* the locks move to the new file: upgraded before anything writes */
    int ret = vimg_io_file_open(&io, img->filename, true, false);
    if (ret == 0 && !(flags & VIMG_OPEN_NO_LOCK)) {
        vimg_io_lock(img->io, 0, VIMG_PERM_ALL);
        ret = lock_image(img, io, flags);
    }
    if (ret == 0) {
        ret = vimg_io_file_open(&probe_io, img->filename, true, false);
    }
    if (ret == 0) {
        const struct vimg_open_opts opts = {
            .version = VIMG_OPEN_OPTS_VERSION,
            .flags = flags | VIMG_OPEN_NO_BACKING | VIMG_OPEN_NO_LOCK,
            .cache_size = img->cache_size,
        };
        ret = open_io(&probe, probe_io, img->filename, img->drv->name, &opts,
                      0, NULL);
        vimg_close(probe);
    }
    if (ret < 0) {
        vimg_io_close(io);
        if (!(flags & VIMG_OPEN_NO_LOCK)) {
            vimg_io_lock(img->io, old_perm, old_shared);
        }
        vimg_error_prefix("could not reopen '%s' read-write", img->filename);
        return ret;
    }
    io->is_unsafe = flags & VIMG_OPEN_CACHE_UNSAFE;

    for (int attempt = 0; attempt < 2; attempt++) {
        const unsigned f = attempt == 0 ? flags : img->flags;
        img->drv->close(img);
        img->priv = NULL;
        vimg_io_close(img->io);
        img->io = io;
        io = NULL;
        free(img->backing_name);
        free(img->backing_fmt);
        img->backing_name = img->backing_fmt = NULL;
        int r = img->drv->open(img, f);
        if (r == 0) {
            img->flags = f;
            img->is_writable = f & VIMG_OPEN_RDWR;
            return ret;
        }
        if (attempt == 0) {
            /* back to read-only, keeping the first error */
            ret = r;
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", vimg_last_error());
            r = vimg_io_file_open(&io, img->filename, false, false);
            if (r == 0 && !(img->flags & VIMG_OPEN_NO_LOCK)) {
                vimg_io_lock(img->io, 0, VIMG_PERM_ALL);
                vimg_io_lock(io, old_perm, old_shared);
            }
            vimg_error(ret, "%s", msg);
            if (r < 0) {
                break;
            }
            io->is_unsafe = img->io->is_unsafe;
        }
    }
    /* Neither state could be restored: nothing of the driver is left.
     * Reads and writes fail from now on (see dead_ops below). */
    if (img->priv) {
        img->drv->close(img);
        img->priv = NULL;
    }
    img->drv = &vimg_format_dead;
    return ret;
}

int vimg_make_empty(struct vimg_image *img)
{
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (!img->drv->make_empty) {
        return vimg_error(-ENOTSUP, "%s: %s images cannot be emptied",
                          img->filename, img->drv->name);
    }
    return img->drv->make_empty(img);
}

int vimg_change_backing(vimg_image *img, const char *name, const char *fmt)
{
    if (!img) {
        return vimg_error(-EINVAL, "vimg_change_backing: NULL argument");
    }
    if (!img->is_writable) {
        return vimg_error(-EROFS, "%s: image is opened read-only",
                          img->filename);
    }
    if (!img->drv->change_backing) {
        return vimg_error(-ENOTSUP, "Operation not supported");
    }
    if (name && !*name) {
        name = NULL;
    }
    if (!name) {
        fmt = NULL;
    }
    char *new_name = name ? strdup(name) : NULL;
    char *new_fmt = fmt ? strdup(fmt) : NULL;
    char *new_path = name ? vimg_path_join_dir(img->filename, name) : NULL;
    int ret = 0;
    if ((name && (!new_name || !new_path)) || (fmt && !new_fmt)) {
        ret = vimg_error(-ENOMEM, "out of memory");
    }
    if (ret == 0) {
        ret = img->drv->change_backing(img, name, fmt);
    }
    if (ret < 0) {
        free(new_name);
        free(new_fmt);
        free(new_path);
        return ret;
    }
    free(img->backing_name);
    free(img->backing_fmt);
    free(img->backing_path);
    img->backing_name = new_name;
    img->backing_fmt = new_fmt;
    img->backing_path = new_path;

    /* The handle reads through the new chain from now on */
    if (img->flags & VIMG_OPEN_NO_BACKING) {
        return 0;
    }
    vimg_close(img->backing);
    img->backing = NULL;
    if (name) {
        struct chain_link self = {.name = img->filename};
        struct stat st;
        if (stat(img->filename, &st) == 0) {
            self.dev = st.st_dev;
            self.ino = st.st_ino;
        }
        ret = open_backing(img, 0, &self);
        if (ret < 0) {
            /* without its backing file a write could copy wrong data */
            img->is_writable = false;
            vimg_error_prefix("%s: backing file changed to '%s', but the "
                              "image is read-only until reopened",
                              img->filename, name);
        }
    }
    return ret;
}

int vimg_snapshot_view(vimg_image *img, const char *id, const char *name)
{
    if (!img || (!id && !name)) {
        return vimg_error(-EINVAL, "vimg_snapshot_view: bad argument");
    }
    if (!img->drv->snapshot_view) {
        return vimg_error(-ENOTSUP,
                          "Block format '%s' used by device '' does not "
                          "support temporarily loading internal snapshots",
                          img->drv->name);
    }
    if (img->is_writable) {
        return vimg_error(-EROFS, "%s: a snapshot can only be viewed through "
                                  "a read-only handle",
                          img->filename);
    }
    vimg_error_clear();
    return img->drv->snapshot_view(img, id, name);
}

int vimg_get_info(vimg_image *img, struct vimg_info **out)
{
    if (!img || !out) {
        return vimg_error(-EINVAL, "vimg_get_info: NULL argument");
    }
    struct vimg_info *info = calloc(1, sizeof(*info));
    if (!info) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    info->format = img->drv->name;
    info->virtual_size = img->size;
    if (img->backing_name) {
        info->backing_file = strdup(img->backing_name);
        info->full_backing_file = strdup(img->backing_path);
        if (!info->backing_file || !info->full_backing_file) {
            vimg_info_free(info);
            return vimg_error(-ENOMEM, "out of memory");
        }
        if (img->backing_fmt) {
            info->backing_format = strdup(img->backing_fmt);
            if (!info->backing_format) {
                vimg_info_free(info);
                return vimg_error(-ENOMEM, "out of memory");
            }
        }
    }
    if (img->drv->info) {
        int ret = img->drv->info(img, info);
        if (ret < 0) {
            vimg_info_free(info);
            return ret;
        }
    }
    *out = info;
    return 0;
}

void vimg_info_free(struct vimg_info *info)
{
    if (!info) {
        return;
    }
    free(info->backing_file);
    free(info->full_backing_file);
    free(info->backing_format);
    vimg_info_entry_free(info->format_specific);
    for (size_t i = 0; i < info->nb_snapshots; i++) {
        free(info->snapshots[i].id);
        free(info->snapshots[i].name);
    }
    free(info->snapshots);
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        free(info->bitmaps[i].name);
    }
    free(info->bitmaps);
    free(info->luks);
    free(info);
}
