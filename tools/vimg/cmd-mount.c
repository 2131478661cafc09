/* SPDX-License-Identifier: MIT */
/*
 * cmd-mount.c: `vimg mount IMAGE MOUNTPOINT`: the guest disk as one
 * regular file at MOUNTPOINT, through libfuse3 (as qemu-storage-daemon's
 * FUSE export).
 *
 * The mount point is a regular file (made empty if missing); the file
 * system mounted on it is that one file.  Requests run on libfuse's
 * worker threads against one libvimg handle, which is safe from many
 * threads.  What a file system asks maps onto the library:
 *
 *   read / write             vimg_pread / vimg_pwrite
 *   fsync                    vimg_flush
 *   fallocate PUNCH_HOLE     vimg_discard (reads as zeroes afterwards)
 *   fallocate ZERO_RANGE     vimg_write_zeroes
 *   lseek SEEK_DATA/HOLE     vimg_block_status (holes: ranges that read as
 *                            zeroes without stored data)
 *   truncate                 grows the disk (vimg_resize); never shrinks
 *   st_blocks                the blocks the image file occupies, so that
 *                            cp and tar notice a sparse disk
 *
 * Unmounting (fusermount3 -u, umount, or SIGTERM/SIGINT to vimg) ends the
 * loop; the image is then flushed and closed.
 */
#define FUSE_USE_VERSION 31
#include <fuse3/fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

int cmd_mount(int argc, char **argv);

struct mount_state {
    vimg_image *img;
    const char *image_path;
    bool is_readonly;
    uid_t uid;
    gid_t gid;
};

static struct mount_state *state(void)
{
    return fuse_get_context()->private_data;
}

static bool is_root(const char *path)
{
    return strcmp(path, "/") == 0;
}

static int mnt_getattr(const char *path, struct stat *st,
                       struct fuse_file_info *fi)
{
    struct mount_state *s = state();
    struct stat host;

    if (!is_root(path)) {
        return -ENOENT;
    }
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFREG | (s->is_readonly ? 0444 : 0644);
    st->st_nlink = 1;
    st->st_uid = s->uid;
    st->st_gid = s->gid;
    st->st_size = (off_t)vimg_size(s->img);
    st->st_blksize = 65536;
    if (stat(s->image_path, &host) == 0) {
        st->st_blocks = host.st_blocks;
        st->st_atim = host.st_atim;
        st->st_mtim = host.st_mtim;
        st->st_ctim = host.st_ctim;
    }
    return 0;
}

static int mnt_open(const char *path, struct fuse_file_info *fi)
{
    if (!is_root(path)) {
        return -ENOENT;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY && state()->is_readonly) {
        return -EROFS;
    }
    if (fi->flags & O_TRUNC) {
        return -EPERM; /* a disk is not emptied by opening it */
    }
    fi->keep_cache = 1; /* only this process changes the disk */
    return 0;
}

/* Clamp [off, off + len) to the disk; 0 bytes past the end. */
static size_t clamp(vimg_image *img, off_t off, size_t len)
{
    uint64_t size = vimg_size(img);

    if (off < 0 || (uint64_t)off >= size) {
        return 0;
    }
    return (uint64_t)off + len > size ? (size_t)(size - (uint64_t)off) : len;
}

static int mnt_read(const char *path, char *buf, size_t len, off_t off,
                    struct fuse_file_info *fi)
{
    vimg_image *img = state()->img;
    int ret;

    len = clamp(img, off, len);
    if (len == 0) {
        return 0;
    }
    ret = vimg_pread(img, buf, len, (uint64_t)off);
    return ret < 0 ? ret : (int)len;
}

static int mnt_write(const char *path, const char *buf, size_t len,
                     off_t off, struct fuse_file_info *fi)
{
    vimg_image *img = state()->img;
    int ret;

    len = clamp(img, off, len);
    if (len == 0) {
        return -ENOSPC; /* a disk does not grow by writing past its end */
    }
    ret = vimg_pwrite(img, buf, len, (uint64_t)off);
    return ret < 0 ? ret : (int)len;
}

static int mnt_fsync(const char *path, int datasync,
                     struct fuse_file_info *fi)
{
    return vimg_flush(state()->img);
}

static int mnt_truncate(const char *path, off_t size,
                        struct fuse_file_info *fi)
{
    struct mount_state *s = state();
    uint64_t cur = vimg_size(s->img);

    if (size < 0 || (uint64_t)size < cur) {
        return -EPERM; /* shrinking would throw data away: vimg resize */
    }
    if ((uint64_t)size == cur) {
        return 0;
    }
    if (s->is_readonly) {
        return -EROFS;
    }
    return vimg_resize(s->img, (uint64_t)size, NULL, 0);
}

static int mnt_fallocate(const char *path, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    vimg_image *img = state()->img;
    size_t n;

    if (off < 0 || len <= 0) {
        return -EINVAL;
    }
    n = clamp(img, off, (size_t)len);
    if (mode & FALLOC_FL_PUNCH_HOLE) {
        if (!(mode & FALLOC_FL_KEEP_SIZE)) {
            return -EINVAL; /* as for any file */
        }
        return n ? vimg_discard(img, (uint64_t)off, n) : 0;
    }
    if (mode & FALLOC_FL_ZERO_RANGE) {
        return n ? vimg_write_zeroes(img, (uint64_t)off, n, 0) : 0;
    }
    if (mode & ~FALLOC_FL_KEEP_SIZE) {
        return -EOPNOTSUPP;
    }
    /* plain allocation: the range reads already; past the end it grows */
    if (!(mode & FALLOC_FL_KEEP_SIZE) &&
        (uint64_t)off + (uint64_t)len > vimg_size(img)) {
        return vimg_resize(img, (uint64_t)off + (uint64_t)len, NULL, 0);
    }
    return 0;
}

/* Reads as zeroes without stored data: what SEEK_HOLE calls a hole. */
static bool is_hole(const struct vimg_extent *e)
{
    return !(e->flags & VIMG_EXTENT_DATA) || (e->flags & VIMG_EXTENT_ZERO);
}

static off_t mnt_lseek(const char *path, off_t off, int whence,
                       struct fuse_file_info *fi)
{
    vimg_image *img = state()->img;
    uint64_t size = vimg_size(img);
    uint64_t pos = (uint64_t)off;

    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        return -EINVAL; /* the kernel handles SEEK_SET/CUR/END */
    }
    if (off < 0 || pos >= size) {
        return -ENXIO;
    }
    while (pos < size) {
        struct vimg_extent e;
        int ret = vimg_block_status(img, pos, size - pos, &e);

        if (ret < 0) {
            return ret;
        }
        if (is_hole(&e) == (whence == SEEK_HOLE)) {
            return (off_t)pos;
        }
        pos += e.length;
    }
    return whence == SEEK_HOLE ? (off_t)size : -ENXIO;
}

/* Times and modes belong to the image file; accept and ignore changes. */
static int mnt_utimens(const char *path, const struct timespec tv[2],
                       struct fuse_file_info *fi)
{
    return is_root(path) ? 0 : -ENOENT;
}

static void *mnt_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    cfg->kernel_cache = 1;
    cfg->attr_timeout = 1.0;
    return fuse_get_context()->private_data;
}

static const struct fuse_operations mount_ops = {
    .init = mnt_init,
    .getattr = mnt_getattr,
    .open = mnt_open,
    .read = mnt_read,
    .write = mnt_write,
    .fsync = mnt_fsync,
    .truncate = mnt_truncate,
    .fallocate = mnt_fallocate,
    .lseek = mnt_lseek,
    .utimens = mnt_utimens,
};

/* The mount point must be a regular file; an absent one is created. */
static int prepare_mountpoint(const char *path)
{
    struct stat st;

    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            cli_error("%s: the mount point must be a regular file (the "
                      "disk is mounted as one file)", path);
            return -1;
        }
        return 0;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        cli_error("cannot create mount point '%s': %s", path,
                  strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}

static int run_mount(struct mount_state *s, const char *mountpoint,
                     bool is_foreground, bool is_allow_other)
{
    char *fargv[] = {"vimg", "-o", "fsname=vimg,subtype=vimg", NULL, NULL,
                     NULL};
    int fargc = 3;
    struct fuse *fuse;
    int ret = 1;

    if (is_allow_other) {
        fargv[fargc++] = "-o";
        fargv[fargc++] = "allow_other";
    }
    struct fuse_args args = FUSE_ARGS_INIT(fargc, fargv);
    fuse = fuse_new(&args, &mount_ops, sizeof(mount_ops), s);
    fuse_opt_free_args(&args);
    if (!fuse) {
        cli_error("cannot set up FUSE");
        return 1;
    }
    if (fuse_mount(fuse, mountpoint) != 0) {
        cli_error("cannot mount on '%s' (is /dev/fuse there, and "
                  "fusermount3 installed?)", mountpoint);
        goto out;
    }
    if (fuse_daemonize(is_foreground) != 0 ||
        fuse_set_signal_handlers(fuse_get_session(fuse)) != 0) {
        cli_error("cannot start the FUSE server");
        goto unmount;
    }
    /* 0: unmounted; a signal number: SIGTERM/SIGINT/SIGHUP ended it */
    ret = fuse_loop_mt(fuse, 0) >= 0 ? 0 : 1;
    fuse_remove_signal_handlers(fuse_get_session(fuse));
unmount:
    fuse_unmount(fuse);
out:
    fuse_destroy(fuse);
    return ret;
}

int cmd_mount(int argc, char **argv)
{
    enum { OPT_FOREGROUND = 256, OPT_ALLOW_OTHER };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},
        {"foreground", no_argument, NULL, OPT_FOREGROUND},
        {"allow-other", no_argument, NULL, OPT_ALLOW_OTHER},
        {NULL, 0, NULL, 0},
    };
    struct mount_state s = {.uid = getuid(), .gid = getgid()};
    const char *format = NULL;
    bool is_foreground = false, is_allow_other = false;
    int c, ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:rh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'r':
            s.is_readonly = true;
            break;
        case OPT_FOREGROUND:
            is_foreground = true;
            break;
        case OPT_ALLOW_OTHER:
            is_allow_other = true;
            break;
        case 'h':
            printf("usage: vimg mount [-f FMT] [-r] [--foreground] "
                   "[--allow-other] IMAGE MOUNTPOINT\n\n"
                   "Mount the guest disk of IMAGE as one regular file at "
                   "MOUNTPOINT (FUSE).\nUnmount with 'fusermount3 -u "
                   "MOUNTPOINT'.\n");
            return 0;
        default:
            return cli_usage("mount");
        }
    }
    if (argc - optind != 2) {
        cli_error("Expecting an image file name and a mount point");
        return cli_usage("mount");
    }
    /* the server runs from "/" once in the background */
    char *image_path = realpath(argv[optind], NULL);
    s.image_path = image_path ? image_path : argv[optind];
    if (cli_open(&s.img, argv[optind], format,
                 s.is_readonly ? 0 : VIMG_OPEN_RDWR) < 0) {
        free(image_path);
        return 1;
    }
    ret = prepare_mountpoint(argv[optind + 1]);
    if (ret == 0) {
        ret = run_mount(&s, argv[optind + 1], is_foreground, is_allow_other);
    } else {
        ret = 1;
    }
    if (vimg_flush(s.img) < 0) {
        cli_error("%s", vimg_last_error());
        ret = 1;
    }
    vimg_close(s.img);
    free(image_path);
    return ret;
}
