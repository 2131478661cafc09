/* SPDX-License-Identifier: MIT */
/*
 * main.c: the vimg command line: dispatch to one cmd-*.c per subcommand,
 * with qemu-img's names, flags and exit codes.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_amend(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_mount(int argc, char **argv);
static int cmd_help(int argc, char **argv);

const struct cli_command cli_commands[] = {
    {"info", cmd_info,
     "info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILE",
     "show what an image is: format, sizes, backing file, features"},
    {"map", cmd_map,
     "map [-f FMT] [--output=human|json] [--start-offset=N] "
     "[--max-length=N] FILE",
     "show where each range of the virtual disk comes from"},
    {"convert", cmd_convert,
     "convert [-f FMT] [-O FMT] [-o OPTIONS] [-c] [-p] [-q] [-n] [-S SIZE] "
     "[-m THREADS] [-t CACHE] [-W] [-B BACKING -F FMT] [-l SNAPSHOT] "
     "IN... OUT",
     "copy images into a new image (sparse; several inputs concatenate)"},
    {"compare", cmd_compare,
     "compare [-f FMT] [-F FMT] [-s] [-p] [-q] A B",
     "check whether two images have the same guest content"},
    {"create", cmd_create,
     "create -f FMT [-b BACKING [-F FMT]] [-u] [-o OPTIONS] [-q] FILE [SIZE]",
     "create a new image ('-f FMT -o help' lists the format's options)"},
    {"resize", cmd_resize,
     "resize [-f FMT] [--shrink] [--preallocation=MODE] [-q] FILE [+|-]SIZE",
     "change the virtual size of an image"},
    {"snapshot", cmd_snapshot,
     "snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] [-f FMT] [-q] "
     "FILE",
     "list, create, apply or delete internal snapshots"},
    {"measure", cmd_measure,
     "measure [--output=human|json] [-O FMT] [-o OPTIONS] "
     "(--size N | [-f FMT] [-l SNAPSHOT] [-U] FILE)",
     "show how large a new image (empty, or a copy of FILE) would be"},
    {"amend", cmd_amend, "amend [-f FMT] [-p] [-q] -o OPTIONS FILE",
     "change an image's options in place (compat, refcount_bits, "
     "lazy_refcounts, size, ...)"},
    {"commit", cmd_commit,
     "commit [-f FMT] [-t CACHE] [-b BASE] [-d] [-p] [-q] FILE",
     "write an overlay's data into its backing file (or BASE)"},
    {"rebase", cmd_rebase,
     "rebase [-f FMT] [-t CACHE] [-u] [-p] [-q] -b BACKING [-F FMT] FILE",
     "change the backing file of an image, keeping its content (-u: "
     "only the name)"},
    {"check", cmd_check,
     "check [-f FMT] [--output=human|json] [-r leaks|all] [-q] FILE",
     "check (and with -r, repair) the consistency of an image"},
    {"serve", cmd_serve,
     "serve [-f FMT] [-r] [-s] [-t] [-k SOCKET | -p PORT [-b ADDR]] "
     "[-e SHARED] [-x NAME] [-l SNAPSHOT] [--pid-file=FILE] [--fork] FILE",
     "serve an image over NBD (qemu-nbd's flags; runs nbdkit)"},
    {"mount", cmd_mount,
     "mount [-f FMT] [-r] [--foreground] [--allow-other] IMAGE MOUNTPOINT",
     "mount the guest disk as one regular file (FUSE)"},
    {"help", cmd_help, "help [COMMAND]", "show help"},
    {NULL, NULL, NULL, NULL},
};

#ifndef VIMG_HAVE_FUSE
int cmd_mount(int argc, char **argv)
{
    cli_error("this vimg was built without FUSE (libfuse3-dev): "
              "'mount' is not available");
    return 1;
}
#endif

static void print_version(void)
{
    printf("vimg version %s (libvimg %s)\n", VIMG_VERSION_STRING,
           vimg_version());
}

static void print_help(FILE *f)
{
    fprintf(f, "usage: vimg [--version] [--help] COMMAND [ARGS]\n\n"
               "Commands:\n");
    for (const struct cli_command *c = cli_commands; c->name; c++) {
        fprintf(f, "  %-10s %s\n", c->name, c->summary);
    }
    fprintf(f, "\nSupported formats:");
    for (size_t i = 0; vimg_format_name(i); i++) {
        fprintf(f, " %s", vimg_format_name(i));
    }
    fprintf(f, "\nRun 'vimg help COMMAND' for a command's options.\n");
}

static int cmd_help(int argc, char **argv)
{
    if (argc < 2) {
        print_help(stdout);
        return 0;
    }
    for (const struct cli_command *c = cli_commands; c->name; c++) {
        if (strcmp(c->name, argv[1]) == 0) {
            printf("usage: vimg %s\n\n%s\n", c->usage, c->summary);
            return 0;
        }
    }
    cli_error("unknown command '%s'", argv[1]);
    print_help(stderr);
    return 1;
}

int main(int argc, char **argv)
{
    /* Past RLIMIT_FSIZE (ulimit -f) a write must fail with EFBIG ("File
     * too large") and an error message, not kill vimg half-way. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        print_help(stderr);
        return 1;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
        print_version();
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        print_help(stdout);
        return 0;
    }
    for (const struct cli_command *c = cli_commands; c->name; c++) {
        if (strcmp(c->name, cmd) == 0) {
            return c->run(argc - 1, argv + 1);
        }
    }
    cli_error("unknown command '%s'", cmd);
    print_help(stderr);
    return 1;
}
