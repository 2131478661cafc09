/* SPDX-License-Identifier: MIT */
/*
 * cmd-amend.c: `vimg amend`, qemu-img amend's flags, messages and exit
 * codes: change an image's options in place.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_amend(int argc, char **argv);

/* -o help: the amendable options of the format of -f, else of FILE */
static int print_options_help(const char *format, const char *file)
{
    vimg_image *img = NULL;

    if (!format && !file) {
        cli_error("Expecting one image file name");
        return cli_usage("amend");
    }
    if (!format) {
        if (cli_open(&img, file, NULL, VIMG_OPEN_INFO_ONLY |
                                           VIMG_OPEN_NO_BACKING) < 0) {
            return 1;
        }
        format = vimg_format(img);
    }
    int rc = 0;
    if (vimg_format_options(format) &&
        !(vimg_format_capabilities(format) & VIMG_CAN_AMEND)) {
        cli_error("Format driver '%s' does not support option amendment",
                  format);
        rc = 1;
    } else if (vimg_format_print_options(format, VIMG_OPTS_AMEND, stdout) <
               0) {
        cli_error("%s", vimg_last_error());
        rc = 1;
    }
    vimg_close(img);
    return rc;
}

/* Parse the -o lists into a new amend list for FORMAT, or, without one,
 * for the format FILE probes as (before FILE is opened for writing, so
 * that a bad option changes nothing; the probe takes no lock).  Prints
 * the error, -1; -ENOTSUP (not printed) for a format without amendment,
 * which the read-write open reports as qemu-img does. */
static int parse_options(vimg_opts **out, const char *format,
                         const char *file, char **lists, int nb_lists)
{
    vimg_image *probe = NULL;

    if (!format && cli_open(&probe, file, NULL,
                            VIMG_OPEN_INFO_ONLY | VIMG_OPEN_NO_BACKING |
                                VIMG_OPEN_NO_LOCK) < 0) {
        return -1;
    }
    int ret = vimg_opts_new(out, format ? format : vimg_format(probe),
                            VIMG_OPTS_AMEND);
    if (ret < 0 && ret != -ENOTSUP) {
        cli_error("%s", vimg_last_error());
    }
    for (int i = 0; ret == 0 && i < nb_lists; i++) {
        ret = cli_parse_options(*out, lists[i]);
    }
    vimg_close(probe);
    return ret == -ENOTSUP ? ret : ret < 0 ? -1 : 0;
}

int cmd_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL;
    char *lists[64];
    int nb_lists = 0;
    bool has_help = false;
    struct cli_progress progress = {.last_permille = -1};
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+o:f:t:pqh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'o':
            if (nb_lists == 64) {
                cli_error("too many -o options");
                return 1;
            }
            has_help |= cli_is_options_help(optarg);
            lists[nb_lists++] = optarg;
            break;
        case 'f':
            format = optarg;
            break;
        case 't':
            break; /* every change is synced in any cache mode */
        case 'p':
            progress.is_enabled = true;
            break;
        case 'q':
            progress.is_enabled = false;
            break;
        case 'F':
            break;
        case 'h':
            printf("usage: vimg amend [-f FMT] [-p] [-q] -o OPTIONS FILE\n");
            return 0;
        default:
            return cli_usage("amend");
        }
    }
    if (has_help) {
        return print_options_help(format,
                                  optind < argc ? argv[optind] : NULL);
    }
    if (!nb_lists) {
        cli_error("Must specify options (-o)");
        return cli_usage("amend");
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("amend");
    }
    const char *file = argv[optind];
    vimg_opts *opts = NULL;
    const int parsed = parse_options(&opts, format, file, lists, nb_lists);
    if (parsed == -1) {
        vimg_opts_free(opts);
        return 1;
    }
    vimg_image *img = NULL;
    if (cli_open(&img, file, format, VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING) <
        0) {
        vimg_opts_free(opts);
        return 1;
    }
    if (parsed < 0) {
        cli_error("Format driver '%s' does not support option amendment",
                  vimg_format(img));
        vimg_close(img);
        return 1;
    }
    int ret = vimg_amend_ext(img, opts);
    if (ret == 0) {
        ret = vimg_flush(img); /* vimg_close() cannot report a failure */
    }
    if (ret < 0) {
        cli_error("%s", vimg_last_error());
    } else {
        cli_progress_update(&progress, 1, 1);
        cli_progress_done(&progress);
    }
    vimg_opts_free(opts);
    vimg_close(img);
    return ret < 0 ? 1 : 0;
}
