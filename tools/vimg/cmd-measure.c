/* SPDX-License-Identifier: MIT */
/*
 * cmd-measure.c: `vimg measure`, qemu-img measure's flags, output and
 * errors: how large a new image would be, empty (--size) or holding a
 * copy of an image (optionally of one of its internal snapshots, -l).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_measure(int argc, char **argv);

#define MEASURE_USAGE                                                          \
    "measure [--output=human|json] [-O FMT] [-o OPTIONS] "                     \
    "(--size N | [-f FMT] [-l SNAPSHOT] [-U] FILE)"

enum { OPT_OUTPUT = 256, OPT_SIZE, OPT_OBJECT, OPT_IMAGE_OPTS };

/* The target's options: FORMAT's own and those of the file it would be
 * created on, as qemu-img measure takes them; --size wins over -o size.
 * Prints qemu-img's error, -1. */
static int make_target_options(vimg_opts **out, const char *format,
                               char **lists, int nb_lists, bool has_size,
                               uint64_t size)
{
    int ret = vimg_opts_new(out, format, VIMG_OPTS_MEASURE);

    if (ret < 0) {
        cli_error("%s", vimg_last_error());
        return -1;
    }
    for (int i = 0; ret == 0 && i < nb_lists; i++) {
        ret = vimg_opts_parse(*out, lists[i]);
    }
    if (ret == 0 && has_size) {
        char text[32];
        snprintf(text, sizeof(text), "%" PRIu64, size);
        ret = vimg_opts_set(*out, "size", text);
    }
    if (ret < 0) {
        cli_error("%s", vimg_last_error());
        if (ret != -ENOTSUP) {
            cli_error("Invalid options for file format '%s'", format);
        }
        return -1;
    }
    return 0;
}

static void print_result(const struct vimg_measure_result *r, bool is_json)
{
    if (!is_json) {
        printf("required size: %" PRIu64 "\n", r->required);
        printf("fully allocated size: %" PRIu64 "\n", r->fully_allocated);
        if (r->has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", r->bitmaps);
        }
        return;
    }
    /* qemu-img prints the fields in this order */
    struct json_object *o = json_object_new_object();
    if (r->has_bitmaps) {
        json_object_object_add(o, "bitmaps",
                               json_object_new_uint64(r->bitmaps));
    }
    json_object_object_add(o, "required",
                           json_object_new_uint64(r->required));
    json_object_object_add(o, "fully-allocated",
                           json_object_new_uint64(r->fully_allocated));
    cli_print_json(stdout, o);
    json_object_put(o);
}

int cmd_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {NULL, 0, NULL, 0},
    };
    const char *in_format = NULL, *out_format = "raw";
    char *snapshot = NULL;
    char *optstrings[64];
    int nb_optstrings = 0;
    bool is_json = false, has_size = false;
    uint64_t size = 0;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:o:l:U", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'f':
            in_format = optarg;
            break;
        case 'O':
            out_format = optarg;
            break;
        case 'o':
            if (nb_optstrings == 64) {
                cli_error("too many -o options");
                return 1;
            }
            optstrings[nb_optstrings++] = optarg;
            break;
        case 'l':
            snapshot = optarg;
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case OPT_OUTPUT:
            if (strcmp(optarg, "json") == 0) {
                is_json = true;
            } else if (strcmp(optarg, "human") == 0) {
                is_json = false;
            } else {
                cli_error("--output must be used with human or json as "
                          "argument.");
                return 1;
            }
            break;
        case OPT_SIZE:
            if (!cli_parse_size(optarg, &size)) {
                cli_error("Invalid image size specified. You may use k, M, "
                          "G, T, P or E suffixes for");
                cli_error("kilobytes, megabytes, gigabytes, terabytes, "
                          "petabytes and exabytes.");
                return 1;
            }
            if (size > INT64_MAX) {
                cli_error("Invalid image size specified. Must be between 0 "
                          "and %" PRId64 ".",
                          INT64_MAX);
                return 1;
            }
            has_size = true;
            break;
        case OPT_OBJECT:
        case OPT_IMAGE_OPTS:
            cli_error("--object and --image-opts are not supported");
            return 1;
        case 'h':
            printf("usage: vimg %s\n", MEASURE_USAGE);
            return 0;
        default:
            return cli_usage("measure");
        }
    }
    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        return 1;
    }
    const char *file = optind < argc ? argv[optind] : NULL;
    if (!file && (in_format || snapshot)) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if (file && has_size) {
        cli_error("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!file && !has_size) {
        cli_error("Either --size N or one filename must be specified.");
        return 1;
    }

    vimg_image *src = NULL;
    vimg_opts *target = NULL;
    int rc = 1;
    if (file) {
        if (cli_open(&src, file, in_format, 0) < 0) {
            return 1;
        }
        if (snapshot && cli_view_snapshot(src, snapshot) < 0) {
            goto out;
        }
    }
    if (make_target_options(&target, out_format, optstrings, nb_optstrings,
                            has_size, size) < 0) {
        goto out;
    }

    struct vimg_measure_result r;
    if (vimg_measure_ext(src, target, &r) < 0) {
        cli_error("%s", vimg_last_error());
        goto out;
    }
    print_result(&r, is_json);
    rc = 0;
out:
    vimg_opts_free(target);
    vimg_close(src);
    return rc;
}
