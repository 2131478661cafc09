/* SPDX-License-Identifier: MIT */
/*
 * cli.c: helpers shared by the subcommands.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"

void cli_error(const char *fmt, ...)
{
    va_list ap;

    fputs("vimg: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int cli_usage(const char *command)
{
    for (const struct cli_command *c = cli_commands; c->name; c++) {
        if (strcmp(c->name, command) == 0) {
            fprintf(stderr, "usage: vimg %s\nTry 'vimg help %s' for more "
                            "information.\n",
                    c->usage, c->name);
            return 1;
        }
    }
    return 1;
}

int cli_strtosz(const char *s, uint64_t *out)
{
    return vimg_parse_size(s, out);
}

bool cli_parse_size(const char *s, uint64_t *out)
{
    return s && cli_strtosz(s, out) == 0;
}

void cli_human_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const suffixes[] = {"",   "Ki", "Mi", "Gi",
                                           "Ti", "Pi", "Ei"};
    int exp;

    /* Switch to the next unit once the number would reach 1000 of this
     * one, as qemu does, so sizes never print as "1e+03 KiB". */
    frexp((double)bytes / (1000.0 / 1024.0), &exp);
    int i = exp > 0 ? (exp - 1) / 10 : 0;
    if (i > 6) {
        i = 6;
    }
    snprintf(buf, len, "%0.3g %sB", (double)bytes / (double)(1ull << (i * 10)),
             suffixes[i]);
}

#ifdef VIMG_FAULT_HOOK
/*
 * The test build of the CLI (vimg-faulty, tests only): with VIMG_FAULT=wN
 * or fN, the Nth write or flush of the first image opened read-write
 * fails, and every one after it, as a dying disk would; with WN or FN
 * only the Nth fails.  At exit it says
 * on stderr whether the fault fired.
 */
#include "vimg-internal.h"

static struct vimg_io *fault_io;
static unsigned fault_count;

static void report_fault(void)
{
    /* the image (and FAULT_IO) may be closed by now */
    fprintf(stderr, "vimg-faulty: %u faults injected\n", fault_count);
}

static int open_faulty(vimg_image **out, const char *file,
                       const char *format, unsigned flags)
{
    const char *spec = getenv("VIMG_FAULT");
    if (!spec || !(flags & VIMG_OPEN_RDWR) || fault_io) {
        return vimg_open(out, file, format, flags);
    }
    /* upper case (WN, FN): only that one call fails, as on a file system
     * that is full for a moment */
    struct vimg_io_fault_plan plan = {.sticky = spec[0] == 'w' ||
                                                spec[0] == 'f',
                                      .count_at_close = &fault_count};
    const unsigned n = (unsigned)strtoul(spec + 1, NULL, 10);
    if (spec[0] == 'w' || spec[0] == 'W') {
        plan.fail_write_n = n;
    } else {
        plan.fail_flush_n = n;
    }
    struct vimg_io *io = NULL;
    int ret = vimg_io_file_open(&io, file, true, false);
    if (ret == 0) {
        ret = vimg_io_fault_new(&fault_io, io, &plan);
        if (ret < 0) {
            vimg_io_close(io);
        }
    }
    if (ret == 0) {
        atexit(report_fault);
        ret = vimg_open_io(out, fault_io, file, format, flags);
    }
    return ret;
}
#define vimg_open open_faulty
#endif

unsigned cli_force_share;

/* A positive number from environment variable NAME (strtoull base 0),
 * or 0 when unset or not one. */
static uint64_t env_number(const char *name)
{
    const char *env = getenv(name);
    char *end;

    if (!env || !*env) {
        return 0;
    }
    const unsigned long long n = strtoull(env, &end, 0);
    return *end == '\0' ? n : 0;
}

unsigned cli_check_threads(void)
{
    const uint64_t n = env_number("VIMG_CHECK_THREADS");

    return n > 64 ? 64 : (unsigned)n;
}

#ifndef VIMG_FAULT_HOOK
/* The open options of the environment: VIMG_QCOW2_L2_CACHE_SIZE (bytes
 * of L2 tables, tests use it to force evictions). */
static int open_tuned(vimg_image **out, const char *file, const char *format,
                      unsigned flags)
{
    struct vimg_open_opts opts = VIMG_OPEN_OPTS_INIT;

    opts.flags = flags;
    opts.cache_size = env_number("VIMG_QCOW2_L2_CACHE_SIZE");
    return vimg_open_ext(out, file, format, &opts);
}
#define vimg_open open_tuned
#endif

int cli_open(vimg_image **out, const char *file, const char *format,
             unsigned flags)
{
    int ret = vimg_open(out, file, format, flags | cli_force_share);

    if (ret < 0) {
        /* the library's message usually starts with the file name */
        const char *msg = vimg_last_error();
        const size_t n = strlen(file);
        if (strncmp(msg, file, n) == 0 && strncmp(msg + n, ": ", 2) == 0) {
            msg += n + 2;
        }
        cli_error("Could not open '%s': %s", file, msg);
    } else if ((flags & VIMG_OPEN_RDWR) && vimg_is_format_probed(*out) &&
               strcmp(vimg_format(*out), "raw") == 0) {
        /* qemu-img's warning, word for word */
        fprintf(stderr,
                "WARNING: Image format was not specified for '%s' and "
                "probing guessed raw.\n"
                "         Automatically detecting the format is dangerous for "
                "raw images, write operations on block 0 will be "
                "restricted.\n"
                "         Specify the 'raw' format explicitly to remove the "
                "restrictions.\n",
                file);
    }
    return ret;
}

int64_t cli_actual_size(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0) {
        return -1;
    }
    return (int64_t)st.st_blocks * 512;
}

static void indent(FILE *f, int level)
{
    for (int i = 0; i < level; i++) {
        fputs("    ", f);
    }
}

static void print_json_value(FILE *f, struct json_object *obj, int level)
{
    switch (json_object_get_type(obj)) {
    case json_type_object: {
        fputs("{\n", f);
        int n = json_object_object_length(obj), i = 0;
        json_object_object_foreach(obj, key, val) {
            struct json_object *k = json_object_new_string(key);
            indent(f, level + 1);
            fprintf(f, "%s: ",
                    json_object_to_json_string_ext(k, JSON_C_TO_STRING_PLAIN));
            json_object_put(k);
            print_json_value(f, val, level + 1);
            fputs(++i < n ? ",\n" : "\n", f);
        }
        indent(f, level);
        fputc('}', f);
        break;
    }
    case json_type_array: {
        const size_t n = json_object_array_length(obj);
        fputs("[\n", f);
        for (size_t i = 0; i < n; i++) {
            indent(f, level + 1);
            print_json_value(f, json_object_array_get_idx(obj, i), level + 1);
            fputs(i + 1 < n ? ",\n" : "\n", f);
        }
        indent(f, level);
        fputc(']', f);
        break;
    }
    default:
        fputs(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN), f);
        break;
    }
}

void cli_print_json(FILE *f, struct json_object *obj)
{
    print_json_value(f, obj, 0);
    fputc('\n', f);
}

void cli_progress_update(struct cli_progress *p, uint64_t done,
                         uint64_t total)
{
    if (!p->is_enabled) {
        return;
    }
    int permille = total ? (int)(done * 1000 / total) : 1000;
    if (permille == p->last_permille) {
        return;
    }
    p->last_permille = permille;
    char bar[41];
    int filled = permille * 40 / 1000;
    for (int i = 0; i < 40; i++) {
        bar[i] = i < filled ? '#' : '.';
    }
    bar[40] = '\0';
    fprintf(stderr, "\r    [%s] %5.1f%%", bar, permille / 10.0);
    fflush(stderr);
}

void cli_progress_done(struct cli_progress *p)
{
    if (p->is_enabled) {
        p->last_permille = -1;
        cli_progress_update(p, 1, 1);
        fputc('\n', stderr);
    }
}

bool cli_is_options_help(const char *arg)
{
    return !strcmp(arg, "help") || !strcmp(arg, "?");
}

int cli_parse_options(vimg_opts *opts, const char *list)
{
    if (vimg_opts_parse(opts, list) < 0) {
        cli_error("%s", vimg_last_error());
        return -1;
    }
    return 0;
}

int cli_new_options(vimg_opts **out, const char *format, unsigned purpose)
{
    if (vimg_opts_new(out, format, purpose) < 0) {
        cli_error("%s", vimg_last_error());
        return -1;
    }
    return 0;
}

void cli_print_snapshots(const struct vimg_info *info)
{
    printf("Snapshot list:\n");
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < info->nb_snapshots; i++) {
        const struct vimg_snapshot_info *s = &info->snapshots[i];
        char size[32], date[32], clock[32], icount[32] = "";
        cli_human_size(s->vm_state_size, size, sizeof(size));
        const time_t t = s->date_sec;
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        const uint64_t ms = s->vm_clock_nsec / 1000000;
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02u:%02u.%03u",
                 ms / 3600000, (unsigned)(ms / 60000 % 60),
                 (unsigned)(ms / 1000 % 60), (unsigned)(ms % 1000));
        if (s->has_icount) {
            snprintf(icount, sizeof(icount), "%" PRIu64, s->icount);
        }
        printf("%-9s %-16s %8s%20s%13s%11s\n", s->id, s->name, size, date,
               clock, icount);
    }
}

/* Select the snapshot ARG names (-l): "snapshot.id=ID,snapshot.name=NAME"
 * (either part) or an id or name.  Prints the error; returns -1. */
int cli_view_snapshot(vimg_image *img, const char *arg)
{
    int ret;

    if (strncmp(arg, "snapshot.", 9) == 0) {
        const char *id = NULL, *name = NULL;
        char *copy = strdup(arg);
        if (!copy) {
            cli_error("out of memory");
            return -1;
        }
        for (char *kv = strtok(copy, ","); kv; kv = strtok(NULL, ",")) {
            char *eq = strchr(kv, '=');
            if (eq) {
                *eq = '\0';
            }
            if (eq && !strcmp(kv, "snapshot.id")) {
                id = eq + 1;
            } else if (eq && !strcmp(kv, "snapshot.name")) {
                name = eq + 1;
            } else {
                cli_error("Invalid parameter '%s'", kv);
                cli_error("Failed in parsing snapshot param '%s'", arg);
                free(copy);
                return -1;
            }
        }
        ret = id || name ? vimg_snapshot_view(img, id, name)
                         : vimg_snapshot_view(img, "", NULL);
        if (ret < 0) {
            cli_error("Failed to load snapshot: %s", vimg_last_error());
        }
        free(copy);
        return ret < 0 ? -1 : 0;
    }
    /* an id first, then a name, as qemu-img tries them */
    ret = vimg_snapshot_view(img, arg, NULL);
    if (ret == -ENOENT) {
        ret = vimg_snapshot_view(img, NULL, arg);
    }
    if (ret < 0) {
        cli_error("Failed to load snapshot: %s", vimg_last_error());
        return -1;
    }
    return 0;
}
