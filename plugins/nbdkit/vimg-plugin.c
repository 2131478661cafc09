/* SPDX-License-Identifier: MIT */
/*
 * nbdkit-vimg-plugin: serve any image libvimg opens (raw, qcow2, and the
 * formats to come) over NBD through nbdkit.
 *
 *   nbdkit vimg IMAGE [format=FMT] [snapshot=ID|NAME] [backing=off]
 *                     [readonly=true] [cache-size=BYTES]
 *
 * One image handle serves every connection: libvimg handles are safe to
 * use from many threads (include/vimg.h), so the thread model is
 * parallel, and because all connections share the handle a flush on one
 * makes every connection's completed writes durable (multi-conn is safe).
 * The handle is opened in .get_ready, before nbdkit forks into the
 * background, so a bad image fails the server at start-up with the
 * library's message; its locks are OFD locks, held by the open file
 * description that the forked server keeps, for the export's life.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <vimg.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *image_path;      /* file=, the magic parameter */
static const char *format;    /* format=, NULL: probe */
static const char *snapshot;  /* snapshot=, NULL: the active layer */
static bool no_backing;       /* backing=off */
static bool readonly;         /* readonly=true */
static uint64_t cache_size;   /* cache-size=, 0: the format's default */
static bool multi_conn = true; /* multi-conn=false: do not advertise it */

static vimg_image *img;       /* the one handle all connections share */
static unsigned caps;         /* vimg_capabilities(img) */

static void vimg_plugin_unload(void)
{
    vimg_close(img);
    img = NULL;
    free(image_path);
}

static int parse_flag(const char *key, const char *value, bool *out)
{
    int r = nbdkit_parse_bool(value);

    if (r < 0) {
        return -1; /* nbdkit_parse_bool reported it */
    }
    (void)key;
    *out = r;
    return 0;
}

static int vimg_plugin_config(const char *key, const char *value)
{
    if (strcmp(key, "file") == 0) {
        free(image_path);
        image_path = nbdkit_realpath(value);
        return image_path ? 0 : -1;
    }
    if (strcmp(key, "format") == 0) {
        format = value;
        return 0;
    }
    if (strcmp(key, "snapshot") == 0) {
        snapshot = value;
        return 0;
    }
    if (strcmp(key, "readonly") == 0) {
        return parse_flag(key, value, &readonly);
    }
    if (strcmp(key, "multi-conn") == 0) {
        return parse_flag(key, value, &multi_conn);
    }
    if (strcmp(key, "cache-size") == 0) {
        int64_t n = nbdkit_parse_size(value);

        if (n < 0) {
            return -1;
        }
        cache_size = (uint64_t)n;
        return 0;
    }
    if (strcmp(key, "backing") == 0) {
        bool on;

        if (parse_flag(key, value, &on) < 0) {
            return -1;
        }
        no_backing = !on;
        return 0;
    }
    nbdkit_error("unknown parameter '%s' (see nbdkit vimg --help)", key);
    return -1;
}

static int vimg_plugin_config_complete(void)
{
    if (!image_path) {
        nbdkit_error("no image given: nbdkit vimg IMAGE (or file=IMAGE)");
        return -1;
    }
    if (snapshot) {
        readonly = true; /* a snapshot is served read-only, as qemu-nbd -l */
    }
    return 0;
}

#define vimg_plugin_config_help \
    "[file=]IMAGE          (required) the image to serve\n" \
    "format=FMT            raw, qcow2, ... (default: probe the contents)\n" \
    "snapshot=ID|NAME      serve an internal snapshot (read-only)\n" \
    "backing=off           do not open the backing chain\n" \
    "readonly=true         open the image read-only (use with nbdkit -r)\n" \
    "cache-size=BYTES      metadata cache per image (qcow2 L2 tables)\n" \
    "multi-conn=false      do not invite clients to open several connections"

/* Open the image once, before nbdkit forks or accepts a connection. */
static int vimg_plugin_get_ready(void)
{
    struct vimg_open_opts opts = VIMG_OPEN_OPTS_INIT;
    int ret;

    opts.flags = readonly ? 0 : VIMG_OPEN_RDWR;
    if (no_backing) {
        opts.flags |= VIMG_OPEN_NO_BACKING;
    }
    opts.cache_size = cache_size;
    ret = vimg_open_ext(&img, image_path, format, &opts);
    if (ret < 0) {
        nbdkit_error("%s", vimg_last_error());
        return -1;
    }
    if (snapshot) {
        /* qemu-nbd -l: an ID, else a name */
        ret = vimg_snapshot_view(img, snapshot, NULL);
        if (ret == -ENOENT) {
            ret = vimg_snapshot_view(img, NULL, snapshot);
        }
        if (ret < 0) {
            nbdkit_error("%s: snapshot '%s': %s", image_path, snapshot,
                         vimg_last_error());
            return -1;
        }
    }
    if (!readonly && vimg_is_format_probed(img)) {
        nbdkit_debug("%s: format was probed; name it with format= to "
                     "allow writes to its first sector", image_path);
    }
    caps = vimg_capabilities(img);
    return 0;
}

/* Every connection uses the shared handle; there is no per-connection
 * state, so the handle pointer itself is returned. */
static void *vimg_plugin_open(int ro)
{
    (void)ro;
    return img;
}

/* Report a failed call with the library's message and its errno. */
static int fail(int ret)
{
    nbdkit_error("%s", vimg_last_error());
    nbdkit_set_error(-ret);
    return -1;
}

static int64_t vimg_plugin_get_size(void *h)
{
    return (int64_t)vimg_size(h);
}

static int vimg_plugin_block_size(void *h, uint32_t *minimum,
                                  uint32_t *preferred, uint32_t *maximum)
{
    uint32_t cs = vimg_cluster_size(h);

    *minimum = 1;
    *preferred = cs < 4096 ? 4096 : cs > 2u * 1024 * 1024 ? 2u * 1024 * 1024
                                                           : cs;
    *maximum = 0xffffffff;
    return 0;
}

static int vimg_plugin_can_write(void *h)
{
    return (caps & VIMG_CAN_WRITE) != 0;
}

static int vimg_plugin_can_flush(void *h)
{
    return 1; /* a flush always succeeds; writable handles do real work */
}

static int vimg_plugin_can_trim(void *h)
{
    return (caps & VIMG_CAN_DISCARD) != 0;
}

static int vimg_plugin_can_zero(void *h)
{
    /* Zero requests always work when the image is writable; whether they
     * are fast is can_fast_zero's business. */
    return (caps & VIMG_CAN_WRITE) != 0;
}

static int vimg_plugin_can_fast_zero(void *h)
{
    return 1; /* answered per request: ENOTSUP where it would be slow */
}

static int vimg_plugin_can_fua(void *h)
{
    return NBDKIT_FUA_NATIVE;
}

static int vimg_plugin_can_multi_conn(void *h)
{
    /* One shared handle: a flush covers every connection.  A server that
     * admits one client at a time (vimg serve -e 1) turns it off so that
     * clients such as nbdcopy do not open connections it would refuse. */
    return multi_conn;
}

static int vimg_plugin_can_extents(void *h)
{
    return 1;
}

static int vimg_plugin_can_cache(void *h)
{
    return NBDKIT_CACHE_EMULATE;
}

static int vimg_plugin_pread(void *h, void *buf, uint32_t count,
                             uint64_t offset, uint32_t flags)
{
    int ret = vimg_pread(h, buf, count, offset);

    return ret < 0 ? fail(ret) : 0;
}

static int flush_if_fua(void *h, uint32_t flags)
{
    int ret;

    if (!(flags & NBDKIT_FLAG_FUA)) {
        return 0;
    }
    ret = vimg_flush(h);
    return ret < 0 ? fail(ret) : 0;
}

static int vimg_plugin_pwrite(void *h, const void *buf, uint32_t count,
                              uint64_t offset, uint32_t flags)
{
    int ret = vimg_pwrite(h, buf, count, offset);

    return ret < 0 ? fail(ret) : flush_if_fua(h, flags);
}

static int vimg_plugin_flush(void *h, uint32_t flags)
{
    int ret = vimg_flush(h);

    return ret < 0 ? fail(ret) : 0;
}

static int vimg_plugin_trim(void *h, uint32_t count, uint64_t offset,
                            uint32_t flags)
{
    int ret = vimg_discard(h, offset, count);

    return ret < 0 ? fail(ret) : flush_if_fua(h, flags);
}

/*
 * A fast zero must not fall back to writing zero data.  The format records
 * zeroes in whole allocation units (qcow2 clusters); a request that is not
 * aligned to them would write zeroes into the partial units, so it is
 * refused with ENOTSUP, as the NBD protocol asks, and the client writes
 * the zeroes itself if it wants to.
 */
static bool zero_is_fast(void *h, uint32_t count, uint64_t offset)
{
    uint64_t cs = vimg_cluster_size(h);
    uint64_t end = offset + count;

    if (!(caps & VIMG_CAN_ZERO)) {
        return false;
    }
    return (offset % cs == 0 && end % cs == 0) || end == vimg_size(h);
}

static int vimg_plugin_zero(void *h, uint32_t count, uint64_t offset,
                            uint32_t flags)
{
    int ret;

    if ((flags & NBDKIT_FLAG_FAST_ZERO) && !zero_is_fast(h, count, offset)) {
        nbdkit_set_error(ENOTSUP);
        return -1;
    }
    ret = vimg_write_zeroes(h, offset, count,
                            flags & NBDKIT_FLAG_MAY_TRIM ? VIMG_ZERO_MAY_UNMAP
                                                         : 0);
    return ret < 0 ? fail(ret) : flush_if_fua(h, flags);
}

/*
 * base:allocation as qemu-nbd reports it, from the chain's block status:
 * a hole where no layer stores data, zero where reads return zeroes.  So
 * `nbdinfo --map` of the export shows what `qemu-img map` shows.
 */
static int vimg_plugin_extents(void *h, uint32_t count, uint64_t offset,
                               uint32_t flags, struct nbdkit_extents *extents)
{
    uint64_t end = offset + count;

    while (offset < end) {
        struct vimg_extent e;
        uint32_t type = 0;
        int ret = vimg_block_status(h, offset, end - offset, &e);

        if (ret < 0) {
            return fail(ret);
        }
        if (!(e.flags & VIMG_EXTENT_DATA)) {
            type |= NBDKIT_EXTENT_HOLE;
        }
        if (e.flags & VIMG_EXTENT_ZERO) {
            type |= NBDKIT_EXTENT_ZERO;
        }
        if (nbdkit_add_extent(extents, offset, e.length, type) < 0) {
            return -1;
        }
        offset += e.length;
        if (flags & NBDKIT_FLAG_REQ_ONE) {
            break;
        }
    }
    return 0;
}

static struct nbdkit_plugin plugin = {
    .name = "vimg",
    .longname = "nbdkit libvimg plugin (every format libvimg opens)",
    .version = "0.1.0",
    .description = "Serve virtual disk images read-write with libvimg.",
    .unload = vimg_plugin_unload,
    .config = vimg_plugin_config,
    .config_complete = vimg_plugin_config_complete,
    .config_help = vimg_plugin_config_help,
    .magic_config_key = "file",
    .get_ready = vimg_plugin_get_ready,
    .open = vimg_plugin_open,
    .get_size = vimg_plugin_get_size,
    .block_size = vimg_plugin_block_size,
    .can_write = vimg_plugin_can_write,
    .can_flush = vimg_plugin_can_flush,
    .can_trim = vimg_plugin_can_trim,
    .can_zero = vimg_plugin_can_zero,
    .can_fast_zero = vimg_plugin_can_fast_zero,
    .can_fua = vimg_plugin_can_fua,
    .can_multi_conn = vimg_plugin_can_multi_conn,
    .can_extents = vimg_plugin_can_extents,
    .can_cache = vimg_plugin_can_cache,
    .pread = vimg_plugin_pread,
    .pwrite = vimg_plugin_pwrite,
    .flush = vimg_plugin_flush,
    .trim = vimg_plugin_trim,
    .zero = vimg_plugin_zero,
    .extents = vimg_plugin_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
