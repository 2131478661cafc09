/* SPDX-License-Identifier: MIT */
/*
 * cmd-serve.c: `vimg serve`, qemu-nbd's common flags on top of nbdkit.
 *
 * vimg does not carry an NBD server of its own: it runs nbdkit with the
 * vimg plugin (plugins/nbdkit), so TLS, filters and the protocol's corners
 * are nbdkit's.  qemu-nbd's behaviour maps onto nbdkit like this:
 *
 *   -k SOCKET / -p PORT / -b ADDR   -U SOCKET / -p PORT / -i ADDR
 *   -x NAME                          -e NAME (the export name)
 *   -r                               -r, and the plugin opens read-only
 *   -s (writes go to a throw-away overlay)   --filter=cow, image read-only
 *   -e SHARED (default 1, 0: no limit)       --filter=limit limit=SHARED
 *                                    (multi-conn advertised unless 1)
 *   no -t: exit when the last client leaves  --filter=exitlast
 *   --fork: return once the server listens    nbdkit's own daemonising
 *   no --fork: stay in the foreground         -f
 *   --pid-file=FILE                  -P FILE
 *
 * vimg execs nbdkit, so signals and the exit status are nbdkit's.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int cmd_serve(int argc, char **argv);

#define PLUGIN_NAME "nbdkit-vimg-plugin.so"

/*
 * The plugin to load: $VIMG_NBDKIT_PLUGIN; else the one built next to this
 * vimg (a build tree: tools/vimg/vimg and plugins/nbdkit/); else the
 * installed one; else nbdkit's own lookup of the name "vimg".
 */
static const char *plugin_path(char *buf, size_t len)
{
    const char *env = getenv("VIMG_NBDKIT_PLUGIN");
    char self[PATH_MAX];
    ssize_t n;

    if (env && *env) {
        return env;
    }
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(buf, len, "%s/../../plugins/nbdkit/" PLUGIN_NAME, self);
            if (access(buf, R_OK) == 0) {
                return buf;
            }
        }
    }
#ifdef VIMG_NBDKIT_PLUGIN_PATH
    if (access(VIMG_NBDKIT_PLUGIN_PATH, R_OK) == 0) {
        return VIMG_NBDKIT_PLUGIN_PATH;
    }
#endif
    return "vimg";
}

struct serve_args {
    const char *format, *socket, *port, *bind, *name, *snapshot;
    const char *pid_file;
    long shared;
    bool is_readonly, is_persistent, is_fork, is_verbose, is_cow;
    bool no_backing;
};

/* The plugin's KEY=VALUE parameters, kept until exec. */
struct params {
    char buf[8][PATH_MAX + 32];
    int used;
};

/* Append "KEY=VALUE" (VALUE NULL: nothing) to the nbdkit argument list. */
static void add_param(char **args, int *n, struct params *p, const char *key,
                      const char *value)
{
    if (!value) {
        return;
    }
    char *s = p->buf[p->used++];
    snprintf(s, sizeof(p->buf[0]), "%s=%s", key, value);
    args[(*n)++] = s;
}

static int run_nbdkit(const struct serve_args *a, const char *image)
{
    static struct params p;
    char plugin_buf[PATH_MAX + 64], limit[32];
    char *args[40];
    int n = 0;

    args[n++] = "nbdkit";
    if (!a->is_fork) {
        args[n++] = "-f";
    }
    if (a->is_verbose) {
        args[n++] = "-v";
    }
    if (a->is_readonly) {
        args[n++] = "-r";
    }
    if (a->socket) {
        args[n++] = "-U";
        args[n++] = (char *)a->socket;
    } else {
        args[n++] = "-p";
        args[n++] = (char *)(a->port ? a->port : "10809");
        if (a->bind) {
            args[n++] = "-i";
            args[n++] = (char *)a->bind;
        }
    }
    args[n++] = "-e";
    args[n++] = (char *)(a->name ? a->name : "");
    if (a->pid_file) {
        args[n++] = "-P";
        args[n++] = (char *)a->pid_file;
    }
    if (!a->is_persistent) {
        args[n++] = "--filter=exitlast";
    }
    if (a->shared > 0) {
        args[n++] = "--filter=limit";
    }
    if (a->is_cow) {
        args[n++] = "--filter=cow";
    }
    args[n++] = (char *)plugin_path(plugin_buf, sizeof(plugin_buf));
    add_param(args, &n, &p, "file", image);
    add_param(args, &n, &p, "format", a->format);
    add_param(args, &n, &p, "snapshot", a->snapshot);
    add_param(args, &n, &p, "readonly",
              a->is_readonly || a->is_cow || a->snapshot ? "true" : NULL);
    add_param(args, &n, &p, "backing", a->no_backing ? "off" : NULL);
    add_param(args, &n, &p, "multi-conn", a->shared == 1 ? "false" : NULL);
    if (a->shared > 0) {
        snprintf(limit, sizeof(limit), "%ld", a->shared);
        add_param(args, &n, &p, "limit", limit);
    }
    args[n] = NULL;

    fflush(NULL);
    execvp(args[0], args);
    if (errno == ENOENT) {
        cli_error("nbdkit is not installed: vimg serve runs the nbdkit NBD "
                  "server with the vimg plugin (Debian: apt-get install "
                  "nbdkit)");
    } else {
        cli_error("cannot run nbdkit: %s", strerror(errno));
    }
    return 1;
}

int cmd_serve(int argc, char **argv)
{
    enum { OPT_PID_FILE = 256, OPT_FORK, OPT_NO_BACKING };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},
        {"snapshot", no_argument, NULL, 's'},
        {"persistent", no_argument, NULL, 't'},
        {"socket", required_argument, NULL, 'k'},
        {"port", required_argument, NULL, 'p'},
        {"bind", required_argument, NULL, 'b'},
        {"shared", required_argument, NULL, 'e'},
        {"export-name", required_argument, NULL, 'x'},
        {"load-snapshot", required_argument, NULL, 'l'},
        {"verbose", no_argument, NULL, 'v'},
        {"pid-file", required_argument, NULL, OPT_PID_FILE},
        {"fork", no_argument, NULL, OPT_FORK},
        {"no-backing", no_argument, NULL, OPT_NO_BACKING},
        {NULL, 0, NULL, 0},
    };
    struct serve_args a = {.shared = 1};
    char *end;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "f:rstk:p:b:e:x:l:vh", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'f':
            a.format = optarg;
            break;
        case 'r':
            a.is_readonly = true;
            break;
        case 's':
            a.is_cow = true;
            break;
        case 't':
            a.is_persistent = true;
            break;
        case 'k':
            a.socket = optarg;
            break;
        case 'p':
            a.port = optarg;
            break;
        case 'b':
            a.bind = optarg;
            break;
        case 'e':
            errno = 0;
            a.shared = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || a.shared < 0) {
                cli_error("Invalid shared device number '%s'", optarg);
                return 1;
            }
            break;
        case 'x':
            a.name = optarg;
            break;
        case 'l':
            a.snapshot = optarg;
            break;
        case 'v':
            a.is_verbose = true;
            break;
        case OPT_PID_FILE:
            a.pid_file = optarg;
            break;
        case OPT_FORK:
            a.is_fork = true;
            break;
        case OPT_NO_BACKING:
            a.no_backing = true;
            break;
        case 'h':
            printf("usage: vimg serve [-f FMT] [-r] [-s] [-t] "
                   "[-k SOCKET | -p PORT [-b ADDR]] [-e SHARED] [-x NAME] "
                   "[-l SNAPSHOT] [--pid-file=FILE] [--fork] [-v] FILE\n\n"
                   "Serve FILE over NBD (qemu-nbd's flags) by running "
                   "nbdkit with the vimg plugin.\n");
            return 0;
        default:
            return cli_usage("serve");
        }
    }
    if (argc - optind != 1) {
        cli_error("Expecting one image file name");
        return cli_usage("serve");
    }
    if (a.socket && (a.port || a.bind)) {
        cli_error("--socket cannot be used with --port or --bind");
        return 1;
    }
    /* qemu-img's messages for a missing or unreadable image, before the
     * server starts (nbdkit's would name the plugin instead). */
    vimg_image *img;
    if (cli_open(&img, argv[optind], a.format,
                 VIMG_OPEN_INFO_ONLY | VIMG_OPEN_NO_LOCK |
                     VIMG_OPEN_NO_BACKING) < 0) {
        return 1;
    }
    vimg_close(img);
    if (a.snapshot && !a.is_cow) {
        a.is_readonly = true; /* qemu-nbd -l exports read-only */
    }
    return run_nbdkit(&a, argv[optind]);
}
