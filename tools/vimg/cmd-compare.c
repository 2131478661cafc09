/* SPDX-License-Identifier: MIT */
/*
 * cmd-compare.c: `vimg compare`, with qemu-img compare's messages and exit
 * codes: 0 identical, 1 different, 2 error.
 */
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "cli.h"

int cmd_compare(int argc, char **argv);

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    cli_progress_update(opaque, done, total);
}

int cmd_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_compare_opts opts = VIMG_COMPARE_OPTS_INIT;
    struct cli_progress progress = {.last_permille = -1};
    const char *fmt_a = NULL, *fmt_b = NULL;
    bool is_quiet = false;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:F:spqT:hU", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f':
            fmt_a = optarg;
            break;
        case 'F':
            fmt_b = optarg;
            break;
        case 's':
            opts.is_strict = true;
            break;
        case 'p':
            progress.is_enabled = true;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'T':
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 'h':
            printf("usage: vimg %s\n", cli_commands[3].usage);
            return 0;
        default:
            cli_usage("compare");
            return 2;
        }
    }
    if (is_quiet) {
        progress.is_enabled = false;
    }
    if (argc - optind != 2) {
        cli_error("Expecting two image file names");
        cli_usage("compare");
        return 2;
    }
    const char *file_a = argv[optind], *file_b = argv[optind + 1];
    vimg_image *a = NULL, *b = NULL;
    int rc = 2;
    if (cli_open(&a, file_a, fmt_a, 0) < 0 ||
        cli_open(&b, file_b, fmt_b, 0) < 0) {
        goto out;
    }
    if (progress.is_enabled) {
        opts.progress = progress_cb;
        opts.progress_opaque = &progress;
    }
    struct vimg_compare_result res;
    if (vimg_compare(a, b, &opts, &res) < 0) {
        cli_error("Error while comparing: %s", vimg_last_error());
        goto out;
    }
    cli_progress_done(&progress);
    switch (res.verdict) {
    case VIMG_COMPARE_IDENTICAL:
        if (!is_quiet) {
            if (res.is_size_different) {
                printf("Warning: Image size mismatch!\n");
            }
            printf("Images are identical.\n");
        }
        rc = 0;
        break;
    case VIMG_COMPARE_CONTENT_MISMATCH:
        if (!is_quiet) {
            if (res.is_size_different && !opts.is_strict &&
                res.offset >= (vimg_size(a) < vimg_size(b) ? vimg_size(a)
                                                             : vimg_size(b))) {
                printf("Warning: Image size mismatch!\n");
            }
            printf("Content mismatch at offset %" PRIu64 "!\n", res.offset);
        }
        rc = 1;
        break;
    case VIMG_COMPARE_SIZE_MISMATCH:
        if (!is_quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        rc = 1;
        break;
    case VIMG_COMPARE_STATUS_MISMATCH:
        if (!is_quiet) {
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n",
                   res.offset);
        }
        rc = 1;
        break;
    }
out:
    vimg_close(a);
    vimg_close(b);
    return rc;
}
