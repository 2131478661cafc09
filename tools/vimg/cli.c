/* SPDX-License-Identifier: MIT */
/*
 * cli.c: helpers shared by the subcommands.
 */
#include <ctype.h>
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

/* The full 128-bit product of A and B, as *HI:*LO. */
static void mul_64x64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
    const uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    const uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    const uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi;
    const uint64_t hl = a_hi * b_lo, hh = a_hi * b_hi;
    const uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);

    *lo = (mid << 32) | (ll & 0xffffffffu);
    *hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
}

/* The multiplier of suffix C, or 0 if C is not one. */
static uint64_t size_suffix(char c)
{
    static const char suffixes[] = "kmgtpe";
    const char *p = strchr(suffixes, c | 0x20);

    if (c == 'b' || c == 'B') {
        return 1;
    }
    if (!c || !p) {
        return 0;
    }
    return 1ull << (10 * (unsigned)(p - suffixes + 1));
}

/* Parse the integral part: decimal, or hex after "0x".  Returns 0, -EINVAL
 * or -ERANGE; *end is past what was read. */
static int parse_size_integer(const char *s, const char **end,
                              uint64_t *out, bool *is_hex)
{
    const char *p = s;
    char *e;

    while (isspace((unsigned char)*p)) {
        p++;
    }
    if (*p == '+') {
        p++;
    }
    *end = s;
    if (!isdigit((unsigned char)*p)) {
        return -EINVAL;
    }
    errno = 0;
    uint64_t v = strtoull(p, &e, 10);
    *is_hex = false;
    if (errno == 0 && v == 0 && (*e == 'x' || *e == 'X') &&
        isxdigit((unsigned char)e[1])) {
        errno = 0;
        v = strtoull(p, &e, 16);
        *is_hex = true;
    }
    *end = e;
    *out = v;
    return errno == ERANGE ? -ERANGE : 0;
}

/*
 * qemu's size syntax: an integer (decimal, or hex after 0x), an optional
 * decimal fraction (no exponent), an optional suffix b or k/M/G/T/P/E
 * (powers of 1024, either case).  A fraction needs a suffix other than b;
 * the result is rounded to the nearest byte, halves up.
 */
int cli_strtosz(const char *s, uint64_t *out)
{
    const char *end;
    uint64_t val = 0, frac = 0;
    bool is_hex;
    int ret = parse_size_integer(s, &end, &val, &is_hex);

    if (ret == 0 && *end == '.' && is_hex) {
        ret = -EINVAL;
        end = s;
    } else if (ret == 0 && *end == '.') {
        char *e;
        errno = 0;
        const double f = strtod(end, &e);
        if (e == end) {
            end++; /* "1." and "1.k" have no digits after the point */
        } else if (memchr(end, 'e', (size_t)(e - end)) ||
                   memchr(end, 'E', (size_t)(e - end))) {
            ret = -EINVAL;
            end = s;
        } else {
            /* as 64-bit fixed point; a fraction that rounds to 1.0 counts
             * as none, as in qemu-img */
            frac = f < 1.0 ? (uint64_t)ldexp(f, 64) : 0;
            end = e;
        }
    }
    if (ret == 0) {
        uint64_t mul = size_suffix(*end);
        if (mul) {
            end++;
        } else {
            mul = 1;
        }
        if (mul == 1 && frac) {
            ret = -EINVAL;
            end = s;
        } else if (mul > 1) {
            uint64_t hi, lo, frac_hi, frac_lo;
            mul_64x64(val, mul, &hi, &lo);
            mul_64x64(frac, mul, &frac_hi, &frac_lo);
            /* add the whole bytes of the fraction, then round */
            const uint64_t add = frac_hi + (frac_lo >> 63);
            val = lo + add;
            if (hi || val < lo) {
                ret = -ERANGE;
            }
        }
    }
    if (*end) {
        return -EINVAL;
    }
    if (ret == 0) {
        *out = val;
    }
    return ret;
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

static bool parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

/* Apply one "key=value" of -o to O.  Strings point into the argument. */
int cli_apply_create_option(struct vimg_create_opts *o, char *kv,
                            bool *has_size)
{
    char *eq = strchr(kv, '=');
    if (!eq) {
        cli_error("Invalid option '%s': expected key=value", kv);
        return -1;
    }
    *eq = '\0';
    const char *key = kv, *val = eq + 1;
    uint64_t n;
    bool b;

    if (!strcmp(key, "size")) {
        if (!cli_parse_size(val, &o->size)) {
            goto bad;
        }
        *has_size = true;
    } else if (!strcmp(key, "compat")) {
        if (!strcmp(val, "0.10") || !strcmp(val, "v2")) {
            o->qcow2_version = 2;
        } else if (!strcmp(val, "1.1") || !strcmp(val, "v3")) {
            o->qcow2_version = 3;
        } else {
            cli_error("Invalid compatibility level: '%s'", val);
            return -1;
        }
    } else if (!strcmp(key, "cluster_size")) {
        if (!cli_parse_size(val, &n) || n > UINT32_MAX) {
            goto bad;
        }
        o->cluster_size = (uint32_t)n;
    } else if (!strcmp(key, "refcount_bits")) {
        char *end;
        unsigned long v = strtoul(val, &end, 10);
        if (*end || v == 0 || v > 64) {
            cli_error("Refcount width must be a power of two and may not "
                      "exceed 64 bits");
            return -1;
        }
        o->refcount_bits = (unsigned)v;
    } else if (!strcmp(key, "lazy_refcounts") ||
               !strcmp(key, "extended_l2") ||
               !strcmp(key, "data_file_raw") ||
               !strcmp(key, "data_file_keep")) {
        if (!parse_bool(val, &b)) {
            goto bad;
        }
        if (key[0] == 'l') {
            o->lazy_refcounts = b;
        } else if (key[0] == 'e') {
            o->extended_l2 = b;
        } else if (!strcmp(key, "data_file_keep")) {
            o->data_file_keep = b;
        } else {
            o->data_file_raw = b;
        }
    } else if (!strcmp(key, "data_file")) {
        o->data_file = val;
    } else if (!strcmp(key, "compression_type")) {
        o->compression_type = val;
    } else if (!strcmp(key, "preallocation")) {
        o->preallocation = val;
    } else if (!strcmp(key, "backing_file")) {
        o->backing_file = val;
    } else if (!strcmp(key, "backing_fmt")) {
        o->backing_format = val;
    } else if (!strcmp(key, "encryption") || !strncmp(key, "encrypt", 7)) {
        cli_error("encrypted images are not supported yet");
        return -1;
    } else {
        cli_error("Invalid parameter '%s'", key);
        return -1;
    }
    return 0;
bad:
    cli_error("Parameter '%s' expects a %s, not '%s'", key,
              !strcmp(key, "size") || !strcmp(key, "cluster_size")
                  ? "size (with an optional k, M, G, T suffix)"
                  : "boolean (on or off)",
              val);
    return -1;
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
