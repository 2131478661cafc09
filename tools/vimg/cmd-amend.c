/* SPDX-License-Identifier: MIT */
/*
 * cmd-amend.c: `vimg amend`, qemu-img amend's flags, messages and exit
 * codes: change an image's options in place.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_amend(int argc, char **argv);

/* The options amend can change, and the flag each one sets */
static const struct {
    const char *key;
    unsigned which;
} amendable[] = {
    {"size", VIMG_AMEND_SIZE},
    {"compat", VIMG_AMEND_COMPAT},
    {"lazy_refcounts", VIMG_AMEND_LAZY_REFCOUNTS},
    {"refcount_bits", VIMG_AMEND_REFCOUNT_BITS},
    {"data_file", VIMG_AMEND_DATA_FILE},
    {"data_file_raw", VIMG_AMEND_DATA_FILE_RAW},
    {"backing_file", VIMG_AMEND_BACKING_FILE},
    {"backing_fmt", VIMG_AMEND_BACKING_FMT},
};

static const char *const creation_only[] = {
    "cluster_size", "extended_l2", "compression_type", "preallocation",
    "encryption",
};

/* Apply one "key=value" of -o to O and WHICH; prints the error, -1. */
static int apply_option(struct vimg_create_opts *o, char *kv, unsigned *which)
{
    const size_t n = strcspn(kv, "=");
    bool has_size = false;

    for (size_t i = 0; i < sizeof(amendable) / sizeof(amendable[0]); i++) {
        if (strlen(amendable[i].key) == n &&
            strncmp(kv, amendable[i].key, n) == 0) {
            *which |= amendable[i].which;
            const char *val = kv[n] ? kv + n + 1 : "";
            if (amendable[i].which == VIMG_AMEND_COMPAT &&
                strcmp(val, "0.10") && strcmp(val, "1.1") &&
                strcmp(val, "v2") && strcmp(val, "v3")) {
                cli_error("Unknown compatibility level %s", val); /* qemu's */
                return -1;
            }
            return cli_apply_create_option(o, kv, &has_size);
        }
    }
    for (size_t i = 0; i < sizeof(creation_only) / sizeof(*creation_only);
         i++) {
        if ((strlen(creation_only[i]) == n &&
             strncmp(kv, creation_only[i], n) == 0) ||
            strncmp(kv, "encrypt.", 8) == 0) {
            kv[n] = '\0';
            cli_error("Invalid parameter '%s'\nThis option is only supported "
                      "for image creation",
                      kv);
            return -1;
        }
    }
    kv[n] = '\0';
    cli_error("Invalid parameter '%s'", kv);
    return -1;
}

int cmd_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, 'F'},
        {NULL, 0, NULL, 0},
    };
    struct vimg_create_opts opts = VIMG_CREATE_OPTS_INIT;
    const char *format = NULL;
    unsigned which = 0;
    bool has_options = false;
    struct cli_progress progress = {.last_permille = -1};
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+o:f:t:pqh", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'o':
            has_options = true;
            for (char *kv = strtok(optarg, ","); kv; kv = strtok(NULL, ",")) {
                if (apply_option(&opts, kv, &which) < 0) {
                    return 1;
                }
            }
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
    if (!has_options) {
        cli_error("Must specify options (-o)");
        return cli_usage("amend");
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("amend");
    }
    const char *file = argv[optind];
    vimg_image *img = NULL;
    if (cli_open(&img, file, format, VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING) <
        0) {
        return 1;
    }
    int ret = vimg_amend(img, &opts, which);
    if (ret == 0) {
        ret = vimg_flush(img); /* vimg_close() cannot report a failure */
    }
    if (ret < 0) {
        cli_error("%s", vimg_last_error());
    } else {
        cli_progress_update(&progress, 1, 1);
        cli_progress_done(&progress);
    }
    vimg_close(img);
    return ret < 0 ? 1 : 0;
}
