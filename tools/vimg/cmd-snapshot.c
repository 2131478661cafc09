/* SPDX-License-Identifier: MIT */
/*
 * cmd-snapshot.c: `vimg snapshot`, qemu-img snapshot's flags, messages and
 * exit codes: list, create, apply or delete internal snapshots.
 */
#include <getopt.h>
#include <string.h>

#include "cli.h"

int cmd_snapshot(int argc, char **argv);

enum action { NONE, LIST, CREATE, APPLY, DELETE };

static int list(const char *file, const char *format)
{
    vimg_image *img = NULL;
    struct vimg_info *info = NULL;

    if (cli_open(&img, file, format, VIMG_OPEN_NO_BACKING) < 0) {
        return 1;
    }
    int ret = vimg_get_info(img, &info);
    if (ret < 0) {
        cli_error("%s", vimg_last_error());
    } else if (info->nb_snapshots) {
        cli_print_snapshots(info);
    }
    vimg_info_free(info);
    vimg_close(img);
    return ret < 0 ? 1 : 0;
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"force-share", no_argument, NULL, 'U'},
        {"format", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL, *name = NULL;
    enum action action = NONE;
    bool is_quiet = false;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+la:c:d:f:qUh", longopts, NULL)) !=
           -1) {
        enum action a = NONE;
        switch (c) {
        case 'l':
            a = LIST;
            break;
        case 'a':
            a = APPLY;
            break;
        case 'c':
            a = CREATE;
            break;
        case 'd':
            a = DELETE;
            break;
        case 'f':
            format = optarg;
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 'h':
            printf("usage: vimg snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | "
                   "-d SNAPSHOT] [-f FMT] [-q] FILE\n");
            return 0;
        default:
            return cli_usage("snapshot");
        }
        if (a != NONE) {
            if (action != NONE) {
                cli_error("Cannot mix '-l', '-a', '-c', '-d'");
                return cli_usage("snapshot");
            }
            action = a;
            name = a == LIST ? NULL : optarg;
        }
    }
    (void)is_quiet; /* nothing is printed but the list and errors */
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("snapshot");
    }
    const char *file = argv[optind];
    if (action == NONE) {
        return 0; /* as qemu-img: nothing asked, nothing done */
    }
    if (action == LIST) {
        return list(file, format);
    }
    vimg_image *img = NULL;
    if (cli_open(&img, file, format,
                 VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING) < 0) {
        return 1;
    }
    int ret;
    const char *what;
    switch (action) {
    case CREATE:
        ret = vimg_snapshot_create(img, name);
        what = "create";
        break;
    case APPLY:
        ret = vimg_snapshot_apply(img, name);
        what = "apply";
        break;
    default:
        ret = vimg_snapshot_delete(img, name);
        what = "delete";
        break;
    }
    if (ret == 0) {
        ret = vimg_flush(img); /* vimg_close() cannot report a failure */
    }
    if (ret < 0) {
        cli_error("Could not %s snapshot '%s': %s", what, name,
                  vimg_last_error());
    }
    vimg_close(img);
    return ret < 0 ? 1 : 0;
}
