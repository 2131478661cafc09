/* SPDX-License-Identifier: MIT */
/*
 * cmd-convert.c: `vimg convert`, qemu-img convert's flags.  Several inputs
 * are concatenated into one output.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

int cmd_convert(int argc, char **argv);

static void progress_cb(void *opaque, uint64_t done, uint64_t total)
{
    cli_progress_update(opaque, done, total);
}

/* Is PATH the same file as any image of IMG's chain?  Converting onto an
 * input would destroy it. */
static bool is_same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* What the command line asks for */
struct convert_args {
    struct vimg_convert_opts opts;
    struct cli_progress progress;
    const char *format, *snapshot, *out_format;
    const char *backing, *backing_fmt; /* -B, -F */
    char *lists[64];                   /* -o */
    int nb_lists;
    bool has_help, is_quiet;
};

/* -t and -T: qemu's cache modes; any target mode but "unsafe" flushes at
 * the end.  Prints the error, -1. */
static int parse_cache_mode(struct convert_args *a, int c, const char *mode)
{
    static const char *const modes[] = {"none", "writeback", "writethrough",
                                        "unsafe", "directsync"};
    bool is_known = false;

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        is_known |= strcmp(mode, modes[i]) == 0;
    }
    if (!is_known) {
        cli_error("Invalid cache option: %s", mode);
        return -1;
    }
    if (c == 't') {
        a->opts.do_flush = strcmp(mode, "unsafe") != 0;
    }
    return 0;
}

/* One flag of the command line into A; -1 after printing an error. */
static int parse_flag(struct convert_args *a, int c, char *arg)
{
    long n;
    char *end;

    switch (c) {
    case 'f':
        a->format = arg;
        break;
    case 'O':
        a->out_format = arg;
        break;
    case 'o':
        if (a->nb_lists == 64) {
            cli_error("too many -o options");
            return -1;
        }
        a->has_help |= cli_is_options_help(arg);
        a->lists[a->nb_lists++] = arg;
        break;
    case 'B':
        a->backing = arg;
        break;
    case 'l':
        a->snapshot = arg;
        break;
    case 'F':
        a->backing_fmt = arg;
        break;
    case 'c':
        a->opts.is_compressed = true;
        break;
    case 'p':
        a->progress.is_enabled = true;
        break;
    case 'q':
        a->is_quiet = true;
        break;
    case 'n':
        a->opts.is_existing_target = true;
        break;
    case 'S':
        if (!cli_parse_size(arg, &a->opts.sparse_size) ||
            a->opts.sparse_size % 512 != 0 ||
            a->opts.sparse_size > 16ull * 1024 * 1024 * 1024) {
            cli_error("Invalid buffer size for sparse output specified. "
                      "Valid sizes are multiples of 512 up to 16 GiB");
            return -1;
        }
        break;
    case 'm':
        n = strtol(arg, &end, 10);
        if (*end || n < 1 || n > 16) {
            cli_error("Invalid number of coroutines. Allowed number of "
                      "coroutines is between 1 and 16");
            return -1;
        }
        a->opts.threads = (unsigned)n;
        break;
    case 'W':
        break;
    case 'U':
        cli_force_share = VIMG_OPEN_FORCE_SHARE;
        break;
    case 't':
    case 'T':
        return parse_cache_mode(a, c, arg);
    default:
        return -1;
    }
    return 0;
}

/* The target's options: the -o lists, -B and -F, checked as qemu-img
 * checks them.  Prints the error, -1. */
static int make_target_options(struct convert_args *a, vimg_opts **out)
{
    if (vimg_opts_new(out, a->out_format, VIMG_OPTS_CREATE) < 0) {
        cli_error("output format '%s' is not supported yet", a->out_format);
        return -1;
    }
    for (int i = 0; i < a->nb_lists; i++) {
        if (cli_parse_options(*out, a->lists[i]) < 0) {
            return -1;
        }
    }
    if (a->opts.is_compressed &&
        !(vimg_format_capabilities(a->out_format) & VIMG_CAN_COMPRESS)) {
        cli_error("Compression not supported for this file format");
        return -1;
    }
    if (vimg_opts_get(*out, "size")) {
        cli_error("convert: -o size is not supported");
        return -1;
    }
    const char *backing = a->backing ? a->backing
                                     : vimg_opts_get(*out, "backing_file");
    const char *backing_fmt =
        a->backing_fmt ? a->backing_fmt : vimg_opts_get(*out, "backing_fmt");
    if (backing && !backing_fmt) {
        cli_error("Use of backing file requires explicit backing format");
        return -1;
    }
    if (backing_fmt && !backing) {
        cli_error("Backing format cannot be used without backing file");
        return -1;
    }
    int ret = a->backing ? vimg_opts_set(*out, "backing_file", a->backing)
                         : 0;
    if (ret == 0 && a->backing_fmt) {
        ret = vimg_opts_set(*out, "backing_fmt", a->backing_fmt);
    }
    if (ret == -ENOENT) {
        cli_error("Backing file not supported for file format '%s'",
                  a->out_format);
    } else if (ret < 0) {
        cli_error("%s", vimg_last_error());
    }
    return ret < 0 ? -1 : 0;
}

/* Open the NB_SRCS sources at ARGV into SRCS (-l: as the snapshot), none
 * of which may be OUT_PATH.  Prints the error, -1. */
static int open_sources(const struct convert_args *a, char **argv,
                        size_t nb_srcs, const char *out_path,
                        vimg_image **srcs)
{
    if (a->snapshot && nb_srcs > 1) {
        cli_error("No support for concatenating multiple snapshot");
        return -1;
    }
    for (size_t i = 0; i < nb_srcs; i++) {
        /* as qemu-img: nobody writes a source while it is copied */
        if (cli_open(&srcs[i], argv[i], a->format,
                     VIMG_OPEN_NO_OTHER_WRITERS) < 0) {
            return -1;
        }
        if (a->snapshot && cli_view_snapshot(srcs[i], a->snapshot) < 0) {
            return -1;
        }
        for (vimg_image *l = srcs[i]; l; l = vimg_backing(l)) {
            if (is_same_file(vimg_filename(l), out_path)) {
                cli_error("output file '%s' is also an input ('%s')",
                          out_path, vimg_filename(l));
                return -1;
            }
        }
    }
    return 0;
}

/* Copy SRCS into OUT_PATH with a progress bar if asked.  Prints the
 * error, -1. */
static int run_convert(struct convert_args *a, vimg_image **srcs,
                       size_t nb_srcs, const char *out_path)
{
    if (a->progress.is_enabled) {
        a->opts.progress = progress_cb;
        a->opts.progress_opaque = &a->progress;
    }
    if (vimg_convert(srcs, nb_srcs, out_path, &a->opts) < 0) {
        if (a->progress.is_enabled) {
            fputc('\n', stderr);
        }
        cli_error("error while converting: %s", vimg_last_error());
        return -1;
    }
    cli_progress_done(&a->progress);
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct convert_args a = {.opts = VIMG_CONVERT_OPTS_INIT,
                             .progress = {.last_permille = -1},
                             .out_format = "raw"};
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:O:o:B:F:l:cpqnS:m:Wt:T:hU",
                            longopts, NULL)) != -1) {
        if (c == 'h') {
            printf("usage: vimg %s\n", cli_commands[2].usage);
            return 0;
        }
        if (c == '?' || c == ':') {
            return cli_usage("convert");
        }
        if (parse_flag(&a, c, optarg) < 0) {
            return 1;
        }
    }
    if (a.is_quiet) {
        a.progress.is_enabled = false;
    }
    if (a.has_help) {
        if (vimg_format_print_options(a.out_format, VIMG_OPTS_CREATE,
                                      stdout) < 0) {
            cli_error("%s", vimg_last_error());
            return 1;
        }
        return 0;
    }
    if (argc - optind < 2) {
        cli_error("Expecting image file name and output file name");
        return cli_usage("convert");
    }
    vimg_opts *target = NULL;
    const char *out_path = argv[argc - 1];
    const size_t nb_srcs = (size_t)(argc - optind - 1);
    vimg_image **srcs = calloc(nb_srcs, sizeof(*srcs));
    int rc = 1;
    if (!srcs) {
        cli_error("out of memory");
        return 1;
    }
    if (make_target_options(&a, &target) == 0 &&
        open_sources(&a, argv + optind, nb_srcs, out_path, srcs) == 0) {
        a.opts.out_format = a.out_format;
        a.opts.target_options = target;
        rc = run_convert(&a, srcs, nb_srcs, out_path) < 0 ? 1 : 0;
    }
    for (size_t i = 0; i < nb_srcs; i++) {
        vimg_close(srcs[i]);
    }
    free(srcs);
    vimg_opts_free(target);
    return rc;
}
