/* SPDX-License-Identifier: MIT */
/*
 * cmd-convert.c: `vimg convert`, qemu-img convert's flags.  Several inputs
 * are concatenated into one output.
 */
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

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_convert_opts opts = VIMG_CONVERT_OPTS_INIT;
    struct cli_progress progress = {.last_permille = -1};
    const char *format = NULL, *snapshot = NULL;
    const char *out_format = "raw";
    struct vimg_create_opts create = VIMG_CREATE_OPTS_INIT;
    bool has_size = false;
    bool is_quiet = false;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:O:o:B:F:l:cpqnS:m:Wt:T:hU", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'O':
            out_format = optarg;
            break;
        case 'o':
            for (char *kv = strtok(optarg, ","); kv; kv = strtok(NULL, ",")) {
                if (cli_apply_create_option(&create, kv, &has_size) < 0) {
                    return 1;
                }
            }
            break;
        case 'B':
            create.backing_file = optarg;
            break;
        case 'l':
            snapshot = optarg;
            break;
        case 'F':
            create.backing_format = optarg;
            break;
        case 'c':
            opts.is_compressed = true;
            break;
        case 'p':
            progress.is_enabled = true;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'n':
            opts.is_existing_target = true;
            break;
        case 'S':
            if (!cli_parse_size(optarg, &opts.sparse_size) ||
                opts.sparse_size % 512 != 0 ||
                opts.sparse_size > 16ull * 1024 * 1024 * 1024) {
                cli_error("Invalid buffer size for sparse output specified. "
                          "Valid sizes are multiples of 512 up to 16 GiB");
                return 1;
            }
            break;
        case 'm': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 16) {
                cli_error("Invalid number of coroutines. Allowed number of "
                          "coroutines is between 1 and 16");
                return 1;
            }
            opts.threads = (unsigned)n;
            break;
        }
        case 'W':
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 't':
        case 'T':
            if (strcmp(optarg, "none") && strcmp(optarg, "writeback") &&
                strcmp(optarg, "writethrough") && strcmp(optarg, "unsafe") &&
                strcmp(optarg, "directsync")) {
                cli_error("Invalid cache option: %s", optarg);
                return 1;
            }
            /* any target cache mode but "unsafe" flushes at the end */
            if (c == 't') {
                opts.do_flush = strcmp(optarg, "unsafe") != 0;
            }
            break;
        case 'h':
            printf("usage: vimg %s\n", cli_commands[2].usage);
            return 0;
        default:
            return cli_usage("convert");
        }
    }
    if (is_quiet) {
        progress.is_enabled = false;
    }
    if (argc - optind < 2) {
        cli_error("Expecting image file name and output file name");
        return cli_usage("convert");
    }
    if (strcmp(out_format, "raw") != 0 && strcmp(out_format, "qcow2") != 0) {
        cli_error("output format '%s' is not supported yet (raw and qcow2 "
                  "are)",
                  out_format);
        return 1;
    }
    if (opts.is_compressed && strcmp(out_format, "qcow2") != 0) {
        cli_error("Compression not supported for this file format");
        return 1;
    }
    if (has_size) {
        cli_error("convert: -o size is not supported");
        return 1;
    }
    if (create.backing_file && !create.backing_format) {
        cli_error("Use of backing file requires explicit backing format");
        return 1;
    }
    if (create.backing_format && !create.backing_file) {
        cli_error("Backing format cannot be used without backing file");
        return 1;
    }
    opts.out_format = out_format;
    opts.create = &create;
    const char *out_path = argv[argc - 1];
    const size_t nb_srcs = (size_t)(argc - optind - 1);
    vimg_image **srcs = calloc(nb_srcs, sizeof(*srcs));
    int rc = 1;
    if (!srcs) {
        cli_error("out of memory");
        return 1;
    }
    if (snapshot && nb_srcs > 1) {
        cli_error("No support for concatenating multiple snapshot");
        goto out;
    }
    for (size_t i = 0; i < nb_srcs; i++) {
        const char *in = argv[optind + (int)i];
        /* as qemu-img: nobody writes a source while it is copied */
        if (cli_open(&srcs[i], in, format, VIMG_OPEN_NO_OTHER_WRITERS) < 0) {
            goto out;
        }
        if (snapshot && cli_view_snapshot(srcs[i], snapshot) < 0) {
            goto out;
        }
        for (vimg_image *l = srcs[i]; l; l = vimg_backing(l)) {
            if (is_same_file(vimg_filename(l), out_path)) {
                cli_error("output file '%s' is also an input ('%s')",
                          out_path, vimg_filename(l));
                goto out;
            }
        }
    }
    if (progress.is_enabled) {
        opts.progress = progress_cb;
        opts.progress_opaque = &progress;
    }
    if (vimg_convert(srcs, nb_srcs, out_path, &opts) < 0) {
        if (progress.is_enabled) {
            fputc('\n', stderr);
        }
        cli_error("error while converting: %s", vimg_last_error());
        goto out;
    }
    cli_progress_done(&progress);
    rc = 0;
out:
    for (size_t i = 0; i < nb_srcs; i++) {
        vimg_close(srcs[i]);
    }
    free(srcs);
    return rc;
}
