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

/* Options qemu-img takes for each target format (its create options and
 * those of the file it would be created on). */
static const char *const raw_keys[] = {"size", "preallocation", "nocow",
                                       "extent_size_hint", NULL};
static const char *const qcow2_keys[] = {
    "size", "compat", "backing_file", "backing_fmt", "encryption",
    "cluster_size", "preallocation", "lazy_refcounts", "refcount_bits",
    "data_file", "data_file_raw", "compression_type", "extended_l2",
    "nocow", "extent_size_hint", NULL};

static bool is_known_key(const char *format, const char *key)
{
    const char *const *keys = strcmp(format, "raw") == 0 ? raw_keys
                                                          : qcow2_keys;
    if (strcmp(format, "qcow2") == 0 && strncmp(key, "encrypt.", 8) == 0) {
        return true; /* known, refused later */
    }
    for (; *keys; keys++) {
        if (strcmp(*keys, key) == 0) {
            return true;
        }
    }
    return false;
}

static bool is_bool_value(const char *v)
{
    static const char *const words[] = {"on", "off", "yes", "no", "true",
                                        "false"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcmp(v, words[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* Apply one "key=value" of -o for a FORMAT target.  Prints qemu-img's
 * error and returns -1 on a bad one. */
static int apply_option(struct vimg_create_opts *o, const char *format,
                        char *kv, bool *has_size)
{
    char *eq = strchr(kv, '=');
    const size_t key_len = eq ? (size_t)(eq - kv) : strlen(kv);
    char key[64];

    snprintf(key, sizeof(key), "%.*s", (int)key_len, kv);
    if (!is_known_key(format, key)) {
        cli_error("Invalid parameter '%s'", key);
        cli_error("Invalid options for file format '%s'", format);
        return -1;
    }
    if (!strcmp(key, "nocow") || !strcmp(key, "extent_size_hint") ||
        (!strcmp(key, "preallocation") && !strcmp(format, "raw"))) {
        /* file options: no bearing on the size, only checked */
        uint64_t n;
        if (!eq) {
            return 0;
        }
        if (!strcmp(key, "nocow") && !is_bool_value(eq + 1)) {
            cli_error("Parameter 'nocow' expects 'on' or 'off'");
            cli_error("Invalid options for file format '%s'", format);
            return -1;
        }
        if (!strcmp(key, "extent_size_hint") &&
            !cli_parse_size(eq + 1, &n)) {
            cli_error("Parameter 'extent_size_hint' expects a non-negative "
                      "number below 2^64");
            cli_error("Invalid options for file format '%s'", format);
            return -1;
        }
        return 0;
    }
    if (!strcmp(key, "size") && !strcmp(format, "raw")) {
        /* raw's size is a plain size; qcow2's is checked against limits */
        uint64_t n;
        if (!eq || !cli_parse_size(eq + 1, &n)) {
            cli_error("Parameter 'size' expects a non-negative number "
                      "below 2^64");
            cli_error("Invalid options for file format '%s'", format);
            return -1;
        }
        return 0;
    }
    return cli_apply_create_option(o, kv, has_size);
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
    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;
    const char *in_format = NULL, *out_format = "raw";
    char *snapshot = NULL;
    char *optstrings[64];
    int nb_optstrings = 0;
    bool is_json = false, has_size = false, has_opt_size = false;
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
    int rc = 1;
    if (file) {
        if (cli_open(&src, file, in_format, 0) < 0) {
            return 1;
        }
        if (snapshot && cli_view_snapshot(src, snapshot) < 0) {
            goto out;
        }
    }
    if (strcmp(out_format, "raw") != 0 && strcmp(out_format, "qcow2") != 0) {
        cli_error("Unknown file format '%s'", out_format);
        goto out;
    }
    o.format = out_format;
    for (int i = 0; i < nb_optstrings; i++) {
        for (char *kv = strtok(optstrings[i], ","); kv;
             kv = strtok(NULL, ",")) {
            if (apply_option(&o, out_format, kv, &has_opt_size) < 0) {
                goto out;
            }
        }
    }
    if (has_size) {
        o.size = size; /* --size wins over -o size= */
    }

    struct vimg_measure_result r;
    if (vimg_measure(src, &o, &r) < 0) {
        cli_error("%s", vimg_last_error());
        goto out;
    }
    print_result(&r, is_json);
    rc = 0;
out:
    vimg_close(src);
    return rc;
}
