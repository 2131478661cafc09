/* SPDX-License-Identifier: MIT */
/*
 * cli.c: helpers shared by the subcommands.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

bool cli_parse_size(const char *s, uint64_t *out)
{
    char *end;

    if (!s || !*s || *s == '-') {
        return false;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) {
        return false;
    }
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'b': case 'B': shift = 0; end++; break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    case 'p': case 'P': shift = 50; end++; break;
    case 'e': case 'E': shift = 60; end++; break;
    default:
        return false;
    }
    if (*end != '\0') {
        return false;
    }
    double bytes = ldexp(v, (int)shift);
    if (bytes >= 18446744073709551616.0 || bytes != floor(bytes)) {
        return false;
    }
    *out = (uint64_t)bytes;
    return true;
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

int cli_open(vimg_image **out, const char *file, const char *format,
             unsigned flags)
{
    int ret = vimg_open(out, file, format, flags);

    if (ret < 0) {
        /* the library's message usually starts with the file name */
        const char *msg = vimg_last_error();
        const size_t n = strlen(file);
        if (strncmp(msg, file, n) == 0 && strncmp(msg + n, ": ", 2) == 0) {
            msg += n + 2;
        }
        cli_error("Could not open '%s': %s", file, msg);
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
