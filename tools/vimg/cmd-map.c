/* SPDX-License-Identifier: MIT */
/*
 * cmd-map.c: `vimg map`: the block status of every range of the virtual
 * disk, merged into the same entries and printed in the same form as
 * `qemu-img map`.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_map(int argc, char **argv);

struct map_entry {
    uint64_t start;
    uint64_t length;
    unsigned depth;
    bool is_present, is_zero, is_data, has_offset;
    uint64_t offset;
    const char *file;
};

static bool can_merge(const struct map_entry *a, const struct map_entry *b)
{
    if (a->length == 0 || a->is_zero != b->is_zero ||
        a->is_data != b->is_data || a->depth != b->depth ||
        a->is_present != b->is_present || a->has_offset != b->has_offset) {
        return false;
    }
    if (a->has_offset) {
        if (strcmp(a->file, b->file) != 0 ||
            a->offset + a->length != b->offset) {
            return false;
        }
    }
    return true;
}

/* Print one entry; false (after an error message) if human output cannot
 * show it. */
static bool dump_entry(const struct map_entry *e, bool is_json,
                       bool is_first)
{
    if (is_json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
               ", \"depth\": %u, \"present\": %s, \"zero\": %s, \"data\": %s",
               is_first ? "[" : ",\n",
               e->start, e->length, e->depth, e->is_present ? "true" : "false",
               e->is_zero ? "true" : "false", e->is_data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRIu64, e->offset);
        }
        printf("}");
        return true;
    }
    if (e->is_data && !e->has_offset) {
        fflush(stdout);
        cli_error("File contains external, encrypted or compressed "
                  "clusters.");
        return false;
    }
    if (e->is_data && !e->is_zero) {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
               e->length, e->offset, e->file);
    }
    return true;
}

int cmd_map(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, 'o'},
        {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL;
    bool is_json = false;
    uint64_t start = 0, max_length = UINT64_MAX;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'o':
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
        case 's':
            if (!cli_parse_size(optarg, &start)) {
                cli_error("Invalid start offset specified! You may use k, "
                          "M, G, T, P or E suffixes for");
                return 1;
            }
            break;
        case 'l':
            if (!cli_parse_size(optarg, &max_length)) {
                cli_error("Invalid max length specified! You may use k, M, "
                          "G, T, P or E suffixes for");
                return 1;
            }
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 'h':
            printf("usage: vimg %s\n", cli_commands[1].usage);
            return 0;
        default:
            return cli_usage("map");
        }
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        return cli_usage("map");
    }
    vimg_image *img = NULL;
    if (cli_open(&img, argv[optind], format, 0) < 0) {
        return 1;
    }

    const uint64_t size = vimg_size(img);
    uint64_t end = size;
    if (max_length != UINT64_MAX && start < size) {
        end = start + (max_length < size - start ? max_length : size - start);
    }
    if (!is_json) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }

    struct map_entry cur = {0};
    bool have_cur = false, is_first = true;
    int rc = 0;
    for (uint64_t off = start; off < end;) {
        struct vimg_extent ext;
        if (vimg_block_status(img, off, end - off, &ext) < 0) {
            cli_error("%s", vimg_last_error());
            rc = 1;
            break;
        }
        struct map_entry next = {
            .start = off,
            .length = ext.length,
            .depth = ext.depth,
            .is_present = ext.flags & VIMG_EXTENT_PRESENT,
            .is_zero = ext.flags & VIMG_EXTENT_ZERO,
            .is_data = ext.flags & VIMG_EXTENT_DATA,
            .has_offset = ext.flags & VIMG_EXTENT_OFFSET,
            .offset = ext.file_offset,
            .file = ext.file_name ? ext.file_name : "",
        };
        off += ext.length;
        if (have_cur && can_merge(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (have_cur) {
            if (!dump_entry(&cur, is_json, is_first)) {
                rc = 1;
                break;
            }
            is_first = false;
        }
        cur = next;
        have_cur = true;
    }
    if (rc == 0 && !have_cur) {
        cur.start = start; /* qemu prints an empty entry */
        have_cur = true;
    }
    if (rc == 0 && !dump_entry(&cur, is_json, is_first)) {
        rc = 1;
    }
    if (rc == 0 && is_json) {
        printf("]\n");
    }
    vimg_close(img);
    return rc;
}
