/* SPDX-License-Identifier: MIT */
/*
 * cmd-resize.c: `vimg resize`, qemu-img resize's flags and messages.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_resize(int argc, char **argv);

/* CUR changed by N (SIGN 0: set to N); false unless the result is in
 * 1..INT64_MAX, as qemu-img requires. */
static bool new_size(uint64_t cur, uint64_t n, int sign, uint64_t *out)
{
    uint64_t size = n;

    if (sign > 0) {
        if (n > INT64_MAX - cur) {
            return false;
        }
        size = cur + n;
    } else if (sign < 0) {
        if (n >= cur) {
            return false;
        }
        size = cur - n;
    }
    *out = size;
    return size > 0 && size <= INT64_MAX;
}

int cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"shrink", no_argument, NULL, 's'},
        {"preallocation", required_argument, NULL, 'P'},
        {"format", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL, *prealloc = NULL;
    bool is_shrink = false, is_quiet = false;
    int c;

    /* the size comes last; take it out first so "-1G" is not an option */
    if (argc < 3) {
        cli_error("Expecting image file name and size");
        return cli_usage("resize");
    }
    const char *arg = argv[--argc];
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 's':
            is_shrink = true;
            break;
        case 'P':
            prealloc = optarg;
            break;
        case 'h':
            printf("usage: vimg resize [-f FMT] [--shrink] "
                   "[--preallocation=MODE] [-q] FILE [+|-]SIZE\n");
            return 0;
        default:
            return cli_usage("resize");
        }
    }
    if (argc - optind != 1) {
        cli_error("Expecting image file name and size");
        return cli_usage("resize");
    }
    const char *file = argv[optind];
    const bool has_prealloc = prealloc && strcmp(prealloc, "off") != 0;
    if (has_prealloc && strcmp(prealloc, "metadata") != 0 &&
        strcmp(prealloc, "falloc") != 0 && strcmp(prealloc, "full") != 0) {
        cli_error("Invalid preallocation mode '%s'", prealloc);
        return 1;
    }
    int sign = 0;
    if (arg[0] == '+' || arg[0] == '-') {
        sign = arg[0] == '+' ? 1 : -1;
        arg++;
    }
    uint64_t n;
    const int err = cli_strtosz(arg, &n);
    if (err == -EINVAL) {
        cli_error("Parameter 'size' expects a non-negative number below "
                  "2^64");
        fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, "
                        "mega-, giga-, tera-, peta-\nand exabytes, "
                        "respectively.\n");
        return 1;
    }
    if (err < 0) {
        cli_error("Value '%s' is out of range for parameter 'size'", arg);
        return 1;
    }
    vimg_image *img = NULL;
    if (cli_open(&img, file, format, VIMG_OPEN_RDWR) < 0) {
        return 1;
    }
    const uint64_t cur = vimg_size(img);
    uint64_t size;
    if (!new_size(cur, n, sign, &size)) {
        cli_error("New image size must be positive");
        vimg_close(img);
        return 1;
    }
    int rc = 0;
    if (has_prealloc && size <= cur) {
        /* qemu-img checks this before --shrink, whatever the format */
        cli_error("Preallocation can only be used for growing images");
        rc = 1;
    } else if (size < cur && !is_shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        rc = 1;
    } else if (vimg_resize(img, size, prealloc,
                           is_shrink ? VIMG_RESIZE_SHRINK : 0) < 0 ||
               vimg_flush(img) < 0) {
        cli_error("%s", vimg_last_error());
        rc = 1;
    } else if (!is_quiet) {
        printf("Image resized.\n");
    }
    vimg_close(img);
    return rc;
}
