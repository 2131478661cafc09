/* SPDX-License-Identifier: MIT */
/*
 * cmd-info.c: `vimg info`, with qemu-img info's output in human form and
 * JSON (same field names; keys in the order qemu-img prints them).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

int cmd_info(int argc, char **argv);

static struct json_object *snapshot_json(const struct vimg_snapshot_info *s)
{
    struct json_object *o = json_object_new_object();

    if (s->has_icount) {
        json_object_object_add(o, "icount",
                               json_object_new_int64((int64_t)s->icount));
    }
    json_object_object_add(
        o, "vm-clock-nsec",
        json_object_new_int64((int64_t)(s->vm_clock_nsec % 1000000000)));
    json_object_object_add(o, "name", json_object_new_string(s->name));
    json_object_object_add(o, "date-sec", json_object_new_int64(s->date_sec));
    json_object_object_add(o, "date-nsec",
                           json_object_new_int64(s->date_nsec));
    json_object_object_add(
        o, "vm-clock-sec",
        json_object_new_int64((int64_t)(s->vm_clock_nsec / 1000000000)));
    json_object_object_add(o, "id", json_object_new_string(s->id));
    json_object_object_add(o, "vm-state-size",
                           json_object_new_int64((int64_t)s->vm_state_size));
    return o;
}

/* A format-specific information entry as JSON */
static struct json_object *entry_json(const struct vimg_info_entry *e)
{
    struct json_object *o;

    switch (e->type) {
    case VIMG_INFO_STRING:
        return json_object_new_string(e->string);
    case VIMG_INFO_BOOL:
        return json_object_new_boolean(e->boolean);
    case VIMG_INFO_INT:
        return json_object_new_int64(e->integer);
    case VIMG_INFO_LIST:
        o = json_object_new_array();
        for (const struct vimg_info_entry *c = e->children; c; c = c->next) {
            json_object_array_add(o, entry_json(c));
        }
        return o;
    default:
        o = json_object_new_object();
        for (const struct vimg_info_entry *c = e->children; c; c = c->next) {
            json_object_object_add(o, c->key, entry_json(c));
        }
        return o;
    }
}

static struct json_object *image_json(vimg_image *img,
                                      const struct vimg_info *info)
{
    struct json_object *o = json_object_new_object();
    const char *path = vimg_filename(img);

    if (info->backing_format) {
        json_object_object_add(o, "backing-filename-format",
                               json_object_new_string(info->backing_format));
    }
    if (info->nb_snapshots) {
        struct json_object *list = json_object_new_array();
        for (size_t i = 0; i < info->nb_snapshots; i++) {
            json_object_array_add(list, snapshot_json(&info->snapshots[i]));
        }
        json_object_object_add(o, "snapshots", list);
    }
    json_object_object_add(o, "virtual-size",
                           json_object_new_int64((int64_t)info->virtual_size));
    json_object_object_add(o, "filename", json_object_new_string(path));
    if (info->cluster_size) {
        json_object_object_add(o, "cluster-size",
                               json_object_new_int64(info->cluster_size));
    }
    json_object_object_add(o, "format", json_object_new_string(info->format));
    const int64_t actual = cli_actual_size(path);
    if (actual >= 0) {
        json_object_object_add(o, "actual-size",
                               json_object_new_int64(actual));
    }
    if (info->encrypted) {
        json_object_object_add(o, "encrypted", json_object_new_boolean(true));
    }
    if (info->format_specific) {
        struct json_object *fs = json_object_new_object();
        json_object_object_add(fs, "type", json_object_new_string(
                                               info->format_specific->key));
        json_object_object_add(fs, "data", entry_json(info->format_specific));
        json_object_object_add(o, "format-specific", fs);
    }
    if (info->backing_file) {
        json_object_object_add(o, "full-backing-filename",
                               json_object_new_string(info->full_backing_file));
        json_object_object_add(o, "backing-filename",
                               json_object_new_string(info->backing_file));
    }
    json_object_object_add(o, "dirty-flag",
                           json_object_new_boolean(info->dirty));
    return o;
}

/* Human dump of a JSON value the way qemu-img prints format-specific
 * information: "key: value", lists as "[i]:", '-' in keys shown as ' '. */
static void dump_human(struct json_object *v, int level);

static void dump_entry(const char *label, struct json_object *v, int level)
{
    enum json_type t = json_object_get_type(v);

    printf("%*s%s:", level * 4, "", label);
    if (t == json_type_object || t == json_type_array) {
        printf("\n");
        dump_human(v, level + 1);
    } else {
        printf(" %s\n", json_object_get_string(v));
    }
}

static void dump_human(struct json_object *v, int level)
{
    if (json_object_get_type(v) == json_type_array) {
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            char label[32];
            snprintf(label, sizeof(label), "[%zu]", i);
            dump_entry(label, json_object_array_get_idx(v, i), level);
        }
        return;
    }
    json_object_object_foreach(v, key, val) {
        char label[128];
        snprintf(label, sizeof(label), "%s", key);
        for (char *p = label; *p; p++) {
            if (*p == '-') {
                *p = ' ';
            }
        }
        dump_entry(label, val, level);
    }
}

static void print_human(vimg_image *img, const struct vimg_info *info,
                        struct json_object *json)
{
    char size[32];

    printf("image: %s\n", vimg_filename(img));
    printf("file format: %s\n", info->format);
    cli_human_size(info->virtual_size, size, sizeof(size));
    printf("virtual size: %s (%" PRIu64 " bytes)\n", size,
           info->virtual_size);
    const int64_t actual = cli_actual_size(vimg_filename(img));
    if (actual >= 0) {
        cli_human_size((uint64_t)actual, size, sizeof(size));
        printf("disk size: %s\n", size);
    } else {
        printf("disk size: unavailable\n");
    }
    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->cluster_size) {
        printf("cluster_size: %u\n", info->cluster_size);
    }
    if (info->dirty) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing_file) {
        printf("backing file: %s", info->backing_file);
        if (strcmp(info->backing_file, info->full_backing_file) != 0) {
            printf(" (actual path: %s)", info->full_backing_file);
        }
        printf("\n");
        if (info->backing_format) {
            printf("backing file format: %s\n", info->backing_format);
        }
    }
    if (info->nb_snapshots) {
        cli_print_snapshots(info);
    }
    struct json_object *fs;
    if (json_object_object_get_ex(json, "format-specific", &fs)) {
        struct json_object *data;
        if (json_object_object_get_ex(fs, "data", &data)) {
            printf("Format specific information:\n");
            dump_human(data, 1);
        }
    }
}

int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, 'o'},
        {"backing-chain", no_argument, NULL, 'b'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *format = NULL;
    bool is_json = false, is_chain = false;
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
        case 'b':
            is_chain = true;
            break;
        case 'U':
            cli_force_share = VIMG_OPEN_FORCE_SHARE;
            break;
        case 'h':
            printf("usage: vimg %s\n", cli_commands[0].usage);
            return 0;
        default:
            return cli_usage("info");
        }
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        return cli_usage("info");
    }
    const char *file = argv[optind];
    vimg_image *top = NULL;
    if (cli_open(&top, file, format,
                 VIMG_OPEN_INFO_ONLY |
                     (is_chain ? 0 : VIMG_OPEN_NO_BACKING)) < 0) {
        return 1;
    }

    struct json_object *list = json_object_new_array();
    int rc = 0;
    bool is_first = true;
    for (vimg_image *img = top; img; img = vimg_backing(img)) {
        struct vimg_info *info = NULL;
        if (vimg_get_info(img, &info) < 0) {
            cli_error("%s", vimg_last_error());
            rc = 1;
            break;
        }
        struct json_object *o = image_json(img, info);
        if (!is_json) {
            if (!is_first) {
                printf("\n");
            }
            print_human(img, info, o);
        }
        is_first = false;
        json_object_array_add(list, o);
        vimg_info_free(info);
        if (!is_chain) {
            break;
        }
    }
    if (rc == 0 && is_json) {
        if (is_chain) {
            cli_print_json(stdout, list);
        } else {
            cli_print_json(stdout, json_object_array_get_idx(list, 0));
        }
    }
    json_object_put(list);
    vimg_close(top);
    return rc;
}
