/* SPDX-License-Identifier: MIT */
/*
 * cmd-check.c: `vimg check`, with qemu-img check's flags, summary lines,
 * JSON fields and exit codes (0 clean, 1 check failed, 2 corruptions,
 * 3 leaks only, 63 format without checks).  Each problem is one line on
 * stderr that names the table, offset and guest range concerned.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "cli.h"

int cmd_check(int argc, char **argv);

static void report_line(void *opaque, const char *msg)
{
    (void)opaque;
    fprintf(stderr, "%s\n", msg);
}

static void add_int(struct json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

/*
 * qemu-img prints the fields in the order of its dictionary's hash
 * buckets; optional ones only when non-zero.
 */
static void print_json(const char *file, const char *format,
                       const struct vimg_check_result *r)
{
    struct json_object *o = json_object_new_object();

    if (r->image_end_offset) {
        add_int(o, "image-end-offset", r->image_end_offset);
    }
    if (r->compressed_clusters) {
        add_int(o, "compressed-clusters", r->compressed_clusters);
    }
    if (r->total_clusters) {
        add_int(o, "total-clusters", r->total_clusters);
    }
    if (r->corruptions) {
        add_int(o, "corruptions", r->corruptions);
    }
    if (r->corruptions_fixed) {
        add_int(o, "corruptions-fixed", r->corruptions_fixed);
    }
    add_int(o, "check-errors", r->check_errors);
    if (r->leaks) {
        add_int(o, "leaks", r->leaks);
    }
    if (r->leaks_fixed) {
        add_int(o, "leaks-fixed", r->leaks_fixed);
    }
    if (r->allocated_clusters) {
        add_int(o, "allocated-clusters", r->allocated_clusters);
    }
    json_object_object_add(o, "filename", json_object_new_string(file));
    json_object_object_add(o, "format", json_object_new_string(format));
    if (r->fragmented_clusters) {
        add_int(o, "fragmented-clusters", r->fragmented_clusters);
    }
    cli_print_json(stdout, o);
    json_object_put(o);
}

static void print_human(const struct vimg_check_result *r)
{
    if (r->corruptions == 0 && r->leaks == 0 && r->check_errors == 0) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n",
                   r->corruptions);
        }
        if (r->leaks) {
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        }
        if (r->check_errors) {
            printf("\n%" PRIu64
                   " internal errors have occurred during the check.\n",
                   r->check_errors);
        }
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
    }
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"repair", required_argument, NULL, 'r'},
        {"output", required_argument, NULL, 'O'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL;
    bool is_json = false, is_quiet = false;
    unsigned flags = 0;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:hr:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                flags = VIMG_CHECK_REPAIR_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                flags = VIMG_CHECK_REPAIR_ALL;
            } else {
                cli_error("Unknown option value for -r (expecting 'leaks' or "
                          "'all'): %s",
                          optarg);
                return cli_usage("check");
            }
            break;
        case 'O':
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
        case 'T': /* cache mode: accepted for compatibility */
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'h':
            printf("usage: vimg check [-f FMT] [--output=human|json] "
                   "[-r leaks|all] [-q] FILE\n");
            return 0;
        default:
            return cli_usage("check");
        }
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("check");
    }
    const char *file = argv[optind];
    vimg_image *img = NULL;
    unsigned open_flags = VIMG_OPEN_CHECK;
    if (flags) {
        open_flags |= VIMG_OPEN_RDWR;
    }
    if (cli_open(&img, file, format, open_flags) < 0) {
        return 1;
    }

    struct vimg_check_opts opts = VIMG_CHECK_OPTS_INIT;
    opts.flags = flags;
    opts.threads = cli_check_threads();
    opts.report = report_line;
    struct vimg_check_result r;
    int ret = vimg_check_ext(img, &opts, &r);
    if (ret == -ENOTSUP) {
        cli_error("This image format does not support checks");
        vimg_close(img);
        return 63;
    }
    char msg[512] = "";
    if (ret < 0) {
        snprintf(msg, sizeof(msg), "%s", vimg_last_error());
    }
    if (ret == 0 && (r.corruptions_fixed || r.leaks_fixed)) {
        if (!is_json && !is_quiet) {
            printf("The following inconsistencies were found and repaired:"
                   "\n\n"
                   "    %" PRIu64 " leaked clusters\n"
                   "    %" PRIu64 " corruptions\n\n"
                   "Double checking the fixed image now...\n",
                   r.leaks_fixed, r.corruptions_fixed);
            fflush(stdout);
        }
        const uint64_t leaks_fixed = r.leaks_fixed;
        const uint64_t corruptions_fixed = r.corruptions_fixed;
        opts.flags = 0;
        ret = vimg_check_ext(img, &opts, &r);
        if (ret < 0) {
            snprintf(msg, sizeof(msg), "%s", vimg_last_error());
        }
        r.leaks_fixed = leaks_fixed;
        r.corruptions_fixed = corruptions_fixed;
    }
    if (ret == 0 && !is_quiet) {
        if (is_json) {
            print_json(file, vimg_format(img), &r);
        } else {
            print_human(&r);
        }
    }
    vimg_close(img);
    if (ret < 0 || r.check_errors) {
        if (ret < 0) {
            cli_error("Check failed: %s", msg);
        } else {
            cli_error("Check failed");
        }
        return 1;
    }
    return r.corruptions ? 2 : r.leaks ? 3 : 0;
}
