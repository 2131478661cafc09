/* SPDX-License-Identifier: MIT */
/*
 * cmd-create.c: `vimg create`, qemu-img create's flags and -o options.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_create(int argc, char **argv);

/* The backing file named in OPTS must open (relative names are relative
 * to FILE's directory); it gives the default size.  Prints the error. */
static int check_backing(vimg_opts *opts, const char *file)
{
    const char *backing = vimg_opts_get(opts, "backing_file");
    vimg_image *b = NULL;
    char path[4096];
    const char *slash = strrchr(file, '/');

    if (backing[0] != '/' && slash) {
        snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - file), file,
                 backing);
    } else {
        snprintf(path, sizeof(path), "%s", backing);
    }
    if (vimg_open(&b, path, vimg_opts_get(opts, "backing_fmt"), 0) < 0) {
        cli_error("%s: Could not open backing image: %s", file,
                  vimg_last_error());
        return -1;
    }
    int ret = 0;
    if (!vimg_opts_get(opts, "size")) {
        char size[32];
        snprintf(size, sizeof(size), "%" PRIu64, vimg_size(b));
        ret = vimg_opts_set(opts, "size", size);
    }
    vimg_close(b);
    if (ret < 0) {
        cli_error("%s", vimg_last_error());
    }
    return ret;
}

/* Set SIZE (the size argument) in OPTS; prints qemu-img's error. */
static int set_size_argument(vimg_opts *opts, const char *arg)
{
    uint64_t size;
    const int err = cli_strtosz(arg, &size);

    if (err == -EINVAL) {
        cli_error("Invalid image size specified. You may use k, M, G, "
                  "T, P or E suffixes for kilobytes, megabytes, "
                  "gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (err < 0 || size > INT64_MAX) {
        cli_error("Invalid image size specified. Must be between 0 and "
                  "%" PRId64 ".", INT64_MAX);
        return -1;
    }
    char text[32];
    snprintf(text, sizeof(text), "%" PRIu64, size);
    if (vimg_opts_set(opts, "size", text) < 0) {
        cli_error("%s", vimg_last_error());
        return -1;
    }
    return 0;
}

/* -b and -F into OPTS, unless -o named them (the -o value wins) */
static int set_backing(vimg_opts *opts, const char *file, const char *format,
                       const char *backing, const char *backing_fmt)
{
    int ret = 0;

    if (backing && !vimg_opts_get(opts, "backing_file")) {
        ret = vimg_opts_set(opts, "backing_file", backing);
    }
    if (ret == 0 && backing_fmt && !vimg_opts_get(opts, "backing_fmt")) {
        ret = vimg_opts_set(opts, "backing_fmt", backing_fmt);
    }
    if (ret == -ENOENT) {
        cli_error("%s: Backing file not supported for file format '%s'", file,
                  format);
    } else if (ret < 0) {
        cli_error("%s", vimg_last_error());
    }
    return ret;
}

int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *format = "raw", *backing = NULL, *backing_fmt = NULL;
    char *optstrings[64];
    int nb_optstrings = 0;
    bool is_quiet = false, is_unsafe = false;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:b:F:uo:qh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'b':
            backing = optarg;
            break;
        case 'F':
            backing_fmt = optarg;
            break;
        case 'u':
            is_unsafe = true;
            break;
        case 'o':
            if (nb_optstrings == 64) {
                cli_error("too many -o options");
                return 1;
            }
            optstrings[nb_optstrings++] = optarg;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'h':
            printf("usage: vimg %s\n", "create -f FMT [-b BACKING [-F FMT]] "
                                       "[-u] [-o OPTIONS] [-q] FILE [SIZE]");
            return 0;
        default:
            return cli_usage("create");
        }
    }
    vimg_opts *opts = NULL;
    int rc = 1;
    if (cli_new_options(&opts, format, VIMG_OPTS_CREATE) < 0) {
        return 1;
    }
    for (int i = 0; i < nb_optstrings; i++) {
        if (cli_is_options_help(optstrings[i])) {
            vimg_format_print_options(format, VIMG_OPTS_CREATE, stdout);
            rc = 0;
            goto out;
        }
    }
    for (int i = 0; i < nb_optstrings; i++) {
        if (cli_parse_options(opts, optstrings[i]) < 0) {
            goto out;
        }
    }
    if (optind >= argc) {
        cli_error("Expecting image file name");
        rc = cli_usage("create");
        goto out;
    }
    const char *file = argv[optind++];
    if (set_backing(opts, file, format, backing, backing_fmt) < 0) {
        goto out;
    }
    if (optind < argc && set_size_argument(opts, argv[optind++]) < 0) {
        goto out;
    }
    if (optind != argc) {
        cli_error("Unexpected argument '%s'", argv[optind]);
        rc = cli_usage("create");
        goto out;
    }
    backing = vimg_opts_get(opts, "backing_file");
    backing_fmt = vimg_opts_get(opts, "backing_fmt");
    if (backing_fmt && !backing) {
        cli_error("%s: backing format given without a backing file", file);
        goto out;
    }
    if (backing && !backing_fmt) {
        cli_error("%s: Backing file specified without backing format", file);
        goto out;
    }
    if (backing && !is_unsafe && check_backing(opts, file) < 0) {
        goto out;
    }
    if (!vimg_opts_get(opts, "size")) {
        cli_error("%s: Image creation needs a size parameter", file);
        goto out;
    }
    if (!is_quiet) {
        char *desc = vimg_opts_describe(opts);
        printf("Formatting '%s', fmt=%s%s%s\n", file, format,
               desc && *desc ? " " : "", desc ? desc : "");
        free(desc);
    }
    if (vimg_create_ext(file, opts) < 0) {
        cli_error("%s", vimg_last_error());
        goto out;
    }
    rc = 0;
out:
    vimg_opts_free(opts);
    return rc;
}
