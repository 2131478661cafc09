/* SPDX-License-Identifier: MIT */
/*
 * cmd-rebase.c: `vimg rebase`, qemu-img rebase's flags, messages and exit
 * codes.  Like qemu-img 7.2, a new backing file needs its format (-F).
 */
#include <getopt.h>
#include <string.h>

#include "cli.h"

int cmd_rebase(int argc, char **argv);

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    cli_progress_update(opaque, done, total);
}

/* Format names qemu-img knows, which -u may store even where vimg cannot
 * open the format yet. */
static bool is_format_name(const char *name)
{
    static const char *const names[] = {
        "raw",  "qcow2", "qcow", "vmdk", "vdi",   "vhdx",      "vpc",
        "qed",  "luks",  "dmg",  "bochs", "cloop", "parallels", "vvfat",
        "file", "host_device", "nbd", NULL,
    };
    for (size_t i = 0; names[i]; i++) {
        if (strcmp(names[i], name) == 0) {
            return true;
        }
    }
    return false;
}

int cmd_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {"object", required_argument, NULL, 'O'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_rebase_opts opts = VIMG_REBASE_OPTS_INIT;
    struct cli_progress progress = {.last_permille = -1};
    const char *format = NULL, *backing = NULL, *backing_fmt = NULL;
    bool is_quiet = false;
    unsigned flags = VIMG_OPEN_RDWR;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+hf:F:b:upt:T:qU", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'F':
            backing_fmt = optarg;
            break;
        case 'b':
            backing = optarg;
            break;
        case 'u':
            opts.is_unsafe = true;
            break;
        case 'p':
            progress.is_enabled = true;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 't':
        case 'T':
            if (strcmp(optarg, "none") && strcmp(optarg, "writeback") &&
                strcmp(optarg, "writethrough") && strcmp(optarg, "unsafe") &&
                strcmp(optarg, "directsync")) {
                cli_error("Invalid cache option: %s", optarg);
                return 1;
            }
            if (c == 't' && strcmp(optarg, "unsafe") == 0) {
                flags |= VIMG_OPEN_CACHE_UNSAFE;
            }
            break;
        case 'U':
        case 'O':
            break;
        case 'h':
            printf("usage: vimg %s\n", "rebase [-f FMT] [-t CACHE] [-u] [-p] "
                                       "[-q] -b BACKING [-F FMT] FILE");
            return 0;
        default:
            return cli_usage("rebase");
        }
    }
    if (is_quiet) {
        progress.is_enabled = false;
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("rebase");
    }
    if (!opts.is_unsafe && !backing) {
        cli_error("Must specify backing file (-b) or use unsafe mode (-u)");
        return cli_usage("rebase");
    }
    if (backing_fmt && !is_format_name(backing_fmt)) {
        cli_error("Invalid format name: '%s'", backing_fmt);
        return 1;
    }
    const char *file = argv[optind];
    /* qemu-img copies first and then refuses to write the header; refuse
     * before anything is written instead */
    if (backing && *backing && !backing_fmt) {
        cli_error("Could not change the backing file to '%s': backing "
                  "format must be specified",
                  backing);
        return 1;
    }
    if (opts.is_unsafe) {
        flags |= VIMG_OPEN_NO_BACKING;
    }
    vimg_image *img = NULL;
    if (cli_open(&img, file, format, flags) < 0) {
        return 1;
    }
    if (progress.is_enabled) {
        opts.progress = progress_cb;
        opts.progress_opaque = &progress;
    }
    int rc = 0;
    if (vimg_rebase(img, backing, backing_fmt, &opts) < 0) {
        if (progress.is_enabled) {
            fputc('\n', stderr);
        }
        cli_error("%s", vimg_last_error());
        rc = 1;
    } else {
        cli_progress_done(&progress);
    }
    vimg_close(img);
    return rc;
}
