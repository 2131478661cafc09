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

static void print_options_help(const char *format)
{
    printf("Supported options:\n");
    printf("  size=<size>            Virtual disk size\n");
    printf("  preallocation=<str>    off, %sfalloc, full\n",
           strcmp(format, "qcow2") == 0 ? "metadata, " : "");
    if (strcmp(format, "qcow2") != 0) {
        return;
    }
    printf("  backing_file=<str>     File name of a base image\n"
           "  backing_fmt=<str>      Image format of the base image\n"
           "  cluster_size=<size>    qcow2 cluster size (512 to 2M)\n"
           "  compat=<str>           0.10 (v2) or 1.1 (v3)\n"
           "  compression_type=<str> zlib or zstd\n"
           "  data_file=<str>        File name of an external data file\n"
           "  data_file_raw=<bool>   The external data file is a raw image\n"
           "  data_file_keep=<bool>  vimg only: keep the bytes of an existing\n"
           "                         data file (qemu-img empties it; use with\n"
           "                         data_file_raw=on to wrap a raw disk)\n"
           "  extended_l2=<bool>     Extended L2 tables (subclusters)\n"
           "  lazy_refcounts=<bool>  Postpone refcount updates\n"
           "  refcount_bits=<num>    Width of a reference count (1..64)\n");
}

int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
    const char *format = "raw";
    char *optstrings[64];
    int nb_optstrings = 0;
    bool is_quiet = false, is_unsafe = false, has_size = false;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:b:F:uo:qh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'b':
            o.backing_file = optarg;
            break;
        case 'F':
            o.backing_format = optarg;
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
    if (strcmp(format, "raw") && strcmp(format, "qcow2")) {
        cli_error("Unknown file format '%s' (vimg creates raw and qcow2)",
                  format);
        return 1;
    }
    o.format = format;
    for (int i = 0; i < nb_optstrings; i++) {
        if (!strcmp(optstrings[i], "help") || !strcmp(optstrings[i], "?")) {
            print_options_help(format);
            return 0;
        }
        for (char *kv = strtok(optstrings[i], ","); kv;
             kv = strtok(NULL, ",")) {
            if (cli_apply_create_option(&o, kv, &has_size) < 0) {
                return 1;
            }
        }
    }
    if (optind >= argc) {
        cli_error("Expecting image file name");
        return cli_usage("create");
    }
    const char *file = argv[optind++];
    if (optind < argc) {
        const int err = cli_strtosz(argv[optind], &o.size);
        if (err == -EINVAL) {
            cli_error("Invalid image size specified. You may use k, M, G, "
                      "T, P or E suffixes for kilobytes, megabytes, "
                      "gigabytes, terabytes, petabytes and exabytes.");
            return 1;
        }
        if (err < 0 || o.size > INT64_MAX) {
            cli_error("Invalid image size specified. Must be between 0 and "
                      "%" PRId64 ".", INT64_MAX);
            return 1;
        }
        has_size = true;
        optind++;
    }
    if (optind != argc) {
        cli_error("Unexpected argument '%s'", argv[optind]);
        return cli_usage("create");
    }
    if (o.backing_format && !o.backing_file) {
        cli_error("%s: backing format given without a backing file", file);
        return 1;
    }
    if (o.backing_file && !o.backing_format) {
        cli_error("%s: Backing file specified without backing format", file);
        return 1;
    }
    if (o.backing_file && !is_unsafe) {
        /* The backing file must open; it also gives the default size.
         * Relative names are relative to the new image's directory. */
        vimg_image *b = NULL;
        char path[4096];
        const char *slash = strrchr(file, '/');
        if (o.backing_file[0] != '/' && slash) {
            snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - file), file,
                     o.backing_file);
        } else {
            snprintf(path, sizeof(path), "%s", o.backing_file);
        }
        if (vimg_open(&b, path, o.backing_format, 0) < 0) {
            cli_error("%s: Could not open backing image: %s", file,
                      vimg_last_error());
            return 1;
        }
        if (!has_size) {
            o.size = vimg_size(b);
            has_size = true;
        }
        vimg_close(b);
    }
    if (!has_size) {
        cli_error("%s: Image creation needs a size parameter", file);
        return 1;
    }
    if (!is_quiet) {
        printf("Formatting '%s', fmt=%s", file, format);
        if (!strcmp(format, "qcow2")) {
            printf(" cluster_size=%u extended_l2=%s",
                   o.cluster_size ? o.cluster_size : 65536,
                   o.extended_l2 ? "on" : "off");
        }
        if (o.preallocation) {
            printf(" preallocation=%s", o.preallocation);
        }
        if (!strcmp(format, "qcow2")) {
            printf(" compression_type=%s",
                   o.compression_type ? o.compression_type : "zlib");
        }
        printf(" size=%" PRIu64, o.size);
        if (o.backing_file) {
            printf(" backing_file=%s backing_fmt=%s", o.backing_file,
                   o.backing_format);
        }
        if (o.data_file) {
            printf(" data_file=%s data_file_raw=%s", o.data_file,
                   o.data_file_raw ? "on" : "off");
        }
        if (!strcmp(format, "qcow2")) {
            printf(" compat=%s lazy_refcounts=%s refcount_bits=%u",
                   o.qcow2_version == 2 ? "0.10" : "1.1",
                   o.lazy_refcounts ? "on" : "off",
                   o.refcount_bits ? o.refcount_bits : 16);
        }
        printf("\n");
    }
    if (vimg_create(file, &o) < 0) {
        cli_error("%s", vimg_last_error());
        return 1;
    }
    return 0;
}
