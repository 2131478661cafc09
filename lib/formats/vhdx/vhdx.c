/* SPDX-License-Identifier: MIT */
/*
 * vhdx.c: the VHDX driver ([MS-VHDX] v1.0): probing, open (headers, log
 * replay, region table, metadata, BAT, parent locator), reads, block
 * status with true host offsets, and info (create: vhdx-create.c,
 * writes: vhdx-write.c).  Resize and check are not implemented yet
 * (docs/formats/vhdx.md).
 *
 * Reads look the BAT up under s->lock and read data without it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/vhdx/vhdx.h"
#include "vimg-endian.h"

/* The largest metadata region vimg reads (Hyper-V and qemu use 1 MiB) */
#define VHDX_MAX_METADATA_REGION (32 * VHDX_MiB)

static int vhdx_probe(const uint8_t *buf, size_t len)
{
    return len >= 8 && memcmp(buf, "vhdxfile", 8) == 0 ? 100 : 0;
}

/* 2.2.2: the current header is the valid one with the higher sequence
 * number. */
static int read_headers(struct vimg_image *img, struct vhdx_state *s)
{
    uint8_t buf[VHDX_HEADER_SIZE];
    struct vhdx_header h[2];
    bool valid[2];
    int err = 0;

    int ret = vimg_io_pread(img->io, buf, 8, 0);
    if (ret < 0) {
        return ret;
    }
    if (memcmp(buf, "vhdxfile", 8) != 0) {
        return vimg_error(-EINVAL, "%s: not a vhdx image", img->filename);
    }
    for (int i = 0; i < 2; i++) {
        ret = vimg_io_pread(img->io, buf, sizeof(buf),
                            i ? VHDX_HEADER2_OFFSET : VHDX_HEADER1_OFFSET);
        if (ret < 0) {
            return ret;
        }
        ret = vhdx_header_decode(buf, &h[i], i + 1);
        valid[i] = ret == 0;
        if (ret < 0 && (err == 0 || ret == -ENOTSUP)) {
            err = ret;
        }
    }
    if (!valid[0] && !valid[1]) {
        vimg_error_prefix("%s: no valid header", img->filename);
        return err;
    }
    s->cur_header = !valid[0] || (valid[1] && h[1].seq > h[0].seq);
    s->h = h[s->cur_header];
    return 0;
}

/* 2.2.3: region table 1, or 2 when 1 is damaged */
static int read_regions(struct vimg_image *img, struct vhdx_state *s)
{
    uint8_t *buf = malloc(VHDX_REGION_TABLE_SIZE);
    int ret = -ENOMEM;

    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    for (int i = 0; i < 2; i++) {
        ret = vhdx_file_read(img, buf, VHDX_REGION_TABLE_SIZE,
                             i ? VHDX_REGION2_OFFSET : VHDX_REGION1_OFFSET);
        if (ret == 0) {
            ret = vhdx_region_table_decode(buf, &s->r);
        }
        if (ret == 0 || ret == -ENOTSUP) {
            break;
        }
    }
    free(buf);
    if (ret < 0) {
        vimg_error_prefix("%s", img->filename);
    }
    return ret;
}

static int read_metadata(struct vimg_image *img, struct vhdx_state *s)
{
    const uint32_t len = s->r.meta_length;

    if (len > VHDX_MAX_METADATA_REGION ||
        s->r.meta_offset + len > s->file_size) {
        return vimg_error(-EIO, "%s: vhdx: corrupt region table: metadata "
                                "region of 0x%x bytes at 0x%llx",
                          img->filename, (unsigned)len,
                          (unsigned long long)s->r.meta_offset);
    }
    uint8_t *buf = malloc(len);
    if (!buf) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    int ret = vhdx_file_read(img, buf, len, s->r.meta_offset);
    if (ret == 0) {
        ret = vhdx_metadata_decode(buf, len, &s->m);
        if (ret < 0) {
            vimg_error_prefix("%s", img->filename);
        }
    }
    free(buf);
    return ret;
}

/* A Windows path as a POSIX one: backslashes become slashes, and a
 * relative path loses its leading ".\" (new string, NULL: no memory) */
static char *posix_path(const char *win)
{
    if (win[0] == '.' && (win[1] == '\\' || win[1] == '/')) {
        win += 2;
    }
    char *p = strdup(win);
    for (char *q = p; q && *q; q++) {
        if (*q == '\\') {
            *q = '/';
        }
    }
    return p;
}

/*
 * 2.6.2.6.1: the parent's path, from the locator's relative_path when
 * that file exists next to the image, else from absolute_win32_path when
 * it names an existing file, else relative_path (the error then names
 * it).  The parent may be in any format vimg reads: it is probed.
 */
static int find_parent(struct vimg_image *img, struct vhdx_state *s)
{
    const char *rel = vhdx_locator_get(&s->m, "relative_path");
    const char *abs = vhdx_locator_get(&s->m, "absolute_win32_path");
    char *name = NULL;
    struct stat st;

    if (!rel && !abs) {
        return vimg_error(-EIO, "%s: vhdx: the parent locator has no "
                                "relative_path or absolute_win32_path",
                          img->filename);
    }
    if (rel) {
        name = posix_path(rel);
        char *full = name ? vimg_path_join_dir(img->filename, name) : NULL;
        const bool exists = full && stat(full, &st) == 0;
        free(full);
        if (name && !exists && abs) {
            char *a = posix_path(abs);
            if (a && stat(a, &st) == 0) {
                free(name);
                name = a;
            } else {
                free(a);
            }
        }
    } else {
        name = posix_path(abs);
    }
    if (!name) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    img->backing_name = name;
    return 0;
}

static void vhdx_close(struct vimg_image *img)
{
    struct vhdx_state *s = img->priv;

    if (!s) {
        return;
    }
    if (img->is_writable) {
        vhdx_close_writes(img, s);
    }
    pthread_mutex_destroy(&s->lock);
    vhdx_metadata_free(&s->m);
    vhdx_overlay_free(&s->overlay);
    free(s->bat);
    free(s);
    img->priv = NULL;
}

static int vhdx_open(struct vimg_image *img, unsigned flags)
{
    const bool is_write = (flags & VIMG_OPEN_RDWR) &&
                          !(flags & VIMG_OPEN_CHECK);
    struct vhdx_state *s = calloc(1, sizeof(*s));

    if (!s) {
        return vimg_error(-ENOMEM, "out of memory");
    }
    img->priv = s;
    pthread_mutex_init(&s->lock, NULL);
    int ret = vimg_io_get_size(img->io, &s->file_size);
    if (ret == 0) {
        ret = read_headers(img, s);
    }
    if (ret == 0) {
        /* before anything else is read (2.3.3) */
        ret = vhdx_log_open(img, s, is_write);
    }
    if (ret == 0) {
        ret = read_regions(img, s);
    }
    if (ret == 0) {
        ret = read_metadata(img, s);
    }
    if (ret == 0) {
        ret = vhdx_bat_geometry(s);
        if (ret < 0) {
            vimg_error_prefix("%s", img->filename);
        }
    }
    if (ret == 0) {
        ret = vhdx_bat_load(img, s);
    }
    if (ret == 0 && s->m.has_parent) {
        ret = find_parent(img, s);
    }
    if (ret < 0) {
        return ret;
    }
    img->size = s->m.virtual_size;
    return 0;
}

static int vhdx_pread(struct vimg_image *img, void *buf, size_t count,
                      uint64_t offset)
{
    uint8_t *p = buf;

    while (count > 0) {
        struct vhdx_state *s = img->priv;
        struct vhdx_run run;
        pthread_mutex_lock(&s->lock);
        int ret = vhdx_get_run(img, offset, count, &run);
        pthread_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
        const size_t n = (size_t)run.length;
        switch (run.kind) {
        case VHDX_RUN_DATA:
            ret = vhdx_file_read(img, p, n, run.host_offset);
            break;
        case VHDX_RUN_ZERO:
            memset(p, 0, n);
            break;
        default:
            ret = vimg_read_backing(img, p, n, offset);
            break;
        }
        if (ret < 0) {
            return ret;
        }
        p += n;
        offset += n;
        count -= n;
    }
    return 0;
}

static int vhdx_block_status(struct vimg_image *img, uint64_t offset,
                             uint64_t count, struct vimg_layer_status *out)
{
    struct vhdx_state *s = img->priv;
    struct vhdx_run run;

    pthread_mutex_lock(&s->lock);
    int ret = vhdx_get_run(img, offset, count, &run);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    out->length = run.length;
    out->file_name = img->filename;
    switch (run.kind) {
    case VHDX_RUN_DATA:
        out->flags = VIMG_EXTENT_DATA | VIMG_EXTENT_OFFSET;
        out->file_offset = run.host_offset;
        break;
    case VHDX_RUN_ZERO:
        out->flags = VIMG_EXTENT_ZERO;
        break;
    default:
        out->flags = s->m.has_parent ? 0 : VIMG_EXTENT_ZERO;
        break;
    }
    return 0;
}

static uint32_t vhdx_cluster_size(struct vimg_image *img)
{
    const struct vhdx_state *s = img->priv;
    return s->m.block_size;
}

/*
 * qemu-img info shows the block size as the cluster size and no
 * format-specific information for VHDX; vimg adds what the metadata says
 * (libvhdi's vhdiinfo shows the same facts).
 */
static int vhdx_info(struct vimg_image *img, struct vimg_info *info)
{
    const struct vhdx_state *s = img->priv;
    const struct vhdx_metadata *m = &s->m;
    char guid[37];
    int err = 0;

    info->cluster_size = m->block_size;
    info->dirty = false;
    struct vimg_info_entry *d =
        vimg_info_add(&err, NULL, "vhdx", VIMG_INFO_OBJECT);
    info->format_specific = d;
    vimg_info_add_string(&err, d, "subformat",
                         m->has_parent ? "differencing"
                         : m->leave_blocks_allocated ? "fixed"
                                                     : "dynamic");
    vimg_info_add_int(&err, d, "block-size", m->block_size);
    vimg_info_add_int(&err, d, "logical-sector-size", m->logical_sector_size);
    vimg_info_add_int(&err, d, "physical-sector-size",
                      m->physical_sector_size);
    vhdx_guid_format(m->page83, guid);
    vimg_info_add_string(&err, d, "page83-identifier", guid);
    vhdx_guid_format(s->h.data_write_guid, guid);
    vimg_info_add_string(&err, d, "data-write-guid", guid);
    vimg_info_add_int(&err, d, "log-size", s->h.log_length);
    vimg_info_add_bool(&err, d, "log-replayed", s->log_replayed);
    if (err < 0) {
        return vimg_error(err, "out of memory");
    }
    return 0;
}

const struct vimg_format vimg_format_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .pread = vhdx_pread,
    .pwrite = vhdx_pwrite,
    .flush = vhdx_flush,
    .block_status = vhdx_block_status,
    .cluster_size = vhdx_cluster_size,
    .info = vhdx_info,
    .create = vhdx_create,
    .options = vhdx_options,
    .check_option = vhdx_check_option,
    .describe_options = vhdx_describe_options,
};
