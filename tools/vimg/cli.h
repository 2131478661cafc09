/* SPDX-License-Identifier: MIT */
/*
 * cli.h: what the vimg subcommands share: the command table, option and
 * size parsing, error reporting, human sizes, JSON output.
 */
#ifndef VIMG_CLI_H
#define VIMG_CLI_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "vimg.h"

struct cli_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage; /* one or more lines after "vimg " */
    const char *summary;
};

extern const struct cli_command cli_commands[];

/* Print "vimg: MESSAGE" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print the usage of COMMAND to stderr and return exit code 1. */
int cli_usage(const char *command);
/* Parse a size as qemu-img does: "512", "64k", "1.5M", "0x1000", "2G"
 * (suffixes b, k, M, G, T, P, E in binary units; a fraction needs one of
 * k..E).  Returns 0, -EINVAL (not a size) or -ERANGE (above 2^64 - 1). */
int cli_strtosz(const char *s, uint64_t *out);
/* cli_strtosz() == 0; false on any error. */
bool cli_parse_size(const char *s, uint64_t *out);
/* qemu-style human size: "348 KiB", "4 MiB", "0 B". */
void cli_human_size(uint64_t bytes, char *buf, size_t len);
/* VIMG_OPEN_FORCE_SHARE after -U/--force-share: cli_open() adds it. */
extern unsigned cli_force_share;
/* Open FILE (with FORMAT or probing), printing qemu-style errors. */
int cli_open(vimg_image **out, const char *file, const char *format,
             unsigned flags);
/* Worker threads for check: VIMG_CHECK_THREADS, 0 (one per CPU) when
 * unset. */
unsigned cli_check_threads(void);
/* Make IMG read as the internal snapshot ARG names (-l of convert and
 * measure): "snapshot.id=ID,snapshot.name=NAME" (either part), or an ID or
 * else a name.  Prints the error; returns -1. */
int cli_view_snapshot(vimg_image *img, const char *arg);
/* qemu-img's "Snapshot list:" table of INFO's snapshots. */
void cli_print_snapshots(const struct vimg_info *info);
/* Bytes the file occupies on disk, or -1. */
int64_t cli_actual_size(const char *path);
/* Print OBJ as qemu prints JSON: 4-space indent, keys in insert order. */
void cli_print_json(FILE *f, struct json_object *obj);

/* Is the -o argument ARG a request for the list of options ("help",
 * "?")? */
bool cli_is_options_help(const char *arg);
/* A new option list (vimg_opts_new()); prints the error, -1. */
int cli_new_options(vimg_opts **out, const char *format, unsigned purpose);
/* Add a -o LIST to OPTS (vimg_opts_parse()); prints the error, -1. */
int cli_parse_options(vimg_opts *opts, const char *list);

/* A progress bar on stderr, drawn when enabled. */
struct cli_progress {
    bool is_enabled;
    int last_permille;
};
void cli_progress_update(struct cli_progress *p, uint64_t done,
                         uint64_t total);
void cli_progress_done(struct cli_progress *p);

#endif
