/* SPDX-License-Identifier: MIT */
/*
 * cmd-commit.c: `vimg commit`, qemu-img commit's flags, messages and exit
 * codes.  -b names an image of the backing chain the way qemu matches it:
 * relative to the directory of each image that names a backing file,
 * compared by real path.
 */
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_commit(int argc, char **argv);

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    cli_progress_update(opaque, done, total);
}

/* NAME resolved against the directory of PATH (absolute NAME as is) */
static char *join_dir(const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    const size_t dir = name[0] == '/' || !slash ? 0
                                                : (size_t)(slash - path) + 1;
    char *out = malloc(dir + strlen(name) + 1);

    if (out) {
        memcpy(out, path, dir);
        strcpy(out + dir, name);
    }
    return out;
}

/* The layer of TOP's chain that NAME names, or NULL. */
static vimg_image *find_base(vimg_image *top, const char *name)
{
    for (vimg_image *l = top; vimg_backing(l); l = vimg_backing(l)) {
        vimg_image *b = vimg_backing(l);
        char *want = join_dir(vimg_filename(l), name);
        char real_want[PATH_MAX], real_have[PATH_MAX];
        const bool is_match = want && realpath(want, real_want) &&
                              realpath(vimg_filename(b), real_have) &&
                              strcmp(real_want, real_have) == 0;
        free(want);
        if (is_match) {
            return b;
        }
    }
    return NULL;
}

int cmd_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, 'O'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_commit_opts opts = VIMG_COMMIT_OPTS_INIT;
    struct cli_progress progress = {.last_permille = -1};
    const char *format = NULL, *base_name = NULL;
    bool is_quiet = false;
    unsigned flags = 0;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:ht:b:dpqr:", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 't':
            if (strcmp(optarg, "none") && strcmp(optarg, "writeback") &&
                strcmp(optarg, "writethrough") && strcmp(optarg, "unsafe") &&
                strcmp(optarg, "directsync")) {
                cli_error("Invalid cache option: %s", optarg);
                return 1;
            }
            flags = strcmp(optarg, "unsafe") == 0 ? VIMG_OPEN_CACHE_UNSAFE
                                                  : 0;
            break;
        case 'b':
            base_name = optarg;
            break;
        case 'd':
            opts.is_keep_top = true;
            break;
        case 'p':
            progress.is_enabled = true;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'r':
        case 'O':
            break; /* rate limits and objects: nothing to do */
        case 'h':
            printf("usage: vimg %s\n", "commit [-f FMT] [-t CACHE] [-b BASE] "
                                       "[-d] [-p] [-q] FILE");
            return 0;
        default:
            return cli_usage("commit");
        }
    }
    if (is_quiet) {
        progress.is_enabled = false;
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("commit");
    }
    const char *file = argv[optind];
    /* qemu-img: -b implies -d, the images in between become invalid */
    if (base_name) {
        opts.is_keep_top = true;
    }
    vimg_image *top = NULL;
    if (cli_open(&top, file, format,
                 flags | (opts.is_keep_top ? 0 : VIMG_OPEN_RDWR)) < 0) {
        return 1;
    }
    int rc = 1;
    if (!vimg_backing(top)) {
        cli_error("Image does not have a backing file");
        goto out;
    }
    if (base_name) {
        opts.base = find_base(top, base_name);
        if (!opts.base) {
            cli_error("Did not find '%s' in the backing chain of '%s'",
                      base_name, file);
            goto out;
        }
    }
    if (progress.is_enabled) {
        opts.progress = progress_cb;
        opts.progress_opaque = &progress;
    }
    if (vimg_commit(top, &opts) < 0) {
        if (progress.is_enabled) {
            fputc('\n', stderr);
        }
        cli_error("%s", vimg_last_error());
        goto out;
    }
    cli_progress_done(&progress);
    if (!is_quiet) {
        printf("Image committed.\n");
    }
    rc = 0;
out:
    vimg_close(top);
    return rc;
}
