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
 *   --pid-file=FILE                  -P FILE
 *   --fork: return once the server listens    (see below)
 *
 * nbdkit always runs in the foreground (-f).  Without --fork vimg execs
 * it, so signals and the exit status are nbdkit's.  With --fork vimg
 * starts it in a new session (under a small waiting parent, since nbdkit
 * exits with its parent) and returns only once it accepts connections,
 * which nbdkit tells by writing its PID file (a temporary one when
 * --pid-file is not given); nbdkit's own daemonising returns before that.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
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

/* Tell why nbdkit could not be started. */
static void exec_failed(int err)
{
    if (err == ENOENT) {
        cli_error("nbdkit is not installed: vimg serve runs the nbdkit NBD "
                  "server with the vimg plugin (Debian: apt-get install "
                  "nbdkit)");
    } else {
        cli_error("cannot run nbdkit: %s", strerror(err));
    }
}

/* Copy what FD (a file) holds to stderr, and close it. */
static void show_log(int fd)
{
    char buf[4096];
    ssize_t n;
    off_t at = 0;

    while ((n = pread(fd, buf, sizeof(buf), at)) > 0) {
        fwrite(buf, 1, (size_t)n, stderr);
        at += n;
    }
    close(fd);
}

/*
 * --fork: run nbdkit (ARGS, whose PID file is PID_FILE) in a new session
 * and return once its PID file has content: 0, or 1 when it exited first
 * (its messages went to our stderr) or did not come up in 60 s.
 */
static int fork_server(char **args, const char *pid_file)
{
    /* The server's messages go to a file, shown if it fails to start:
     * once it runs, nothing may hold our caller's stderr open. */
    char log_path[] = "/tmp/vimg-serve-XXXXXX";
    int log_fd = mkstemp(log_path);
    int status;

    if (log_fd < 0) {
        cli_error("cannot create a temporary file: %s", strerror(errno));
        return 1;
    }
    unlink(log_path);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        cli_error("fork: %s", strerror(errno));
        close(log_fd);
        return 1;
    }
    if (pid == 0) {
        /* nbdkit ends itself when its parent dies (PR_SET_PDEATHSIG):
         * its parent is this child, which waits for it in a new session */
        setsid();
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, STDIN_FILENO);
            dup2(fd, STDOUT_FILENO);
            close(fd);
        }
        dup2(log_fd, STDERR_FILENO);
        close(log_fd);
        pid_t server = fork();
        if (server == 0) {
            execvp(args[0], args);
            exec_failed(errno);
            _exit(1);
        }
        if (server < 0 || waitpid(server, &status, 0) < 0) {
            _exit(1);
        }
        _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
    }
    for (int i = 0; i < 6000; i++) {
        struct stat st;
        if (stat(pid_file, &st) == 0 && st.st_size > 0) {
            close(log_fd);
            return 0;
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            show_log(log_fd); /* why nbdkit (or its exec) failed */
            return 1;
        }
        usleep(10000);
    }
    show_log(log_fd);
    cli_error("nbdkit did not start listening within 60 s");
    kill(pid, SIGTERM);
    return 1;
}

static int run_nbdkit(const struct serve_args *a, const char *image)
{
    static struct params p;
    char plugin_buf[PATH_MAX + 64], limit[32];
    char *args[40];
    int n = 0;

    args[n++] = "nbdkit";
    args[n++] = "-f";
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
    if (a->is_fork) {
        return fork_server(args, a->pid_file);
    }
    execvp(args[0], args);
    exec_failed(errno);
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
    char tmp_pid[64];
    if (a.is_fork && !a.pid_file) {
        /* the readiness signal; nbdkit removes it when it exits */
        snprintf(tmp_pid, sizeof(tmp_pid), "/tmp/vimg-serve-%ld.pid",
                 (long)getpid());
        unlink(tmp_pid);
        a.pid_file = tmp_pid;
    }
    if (a.snapshot && !a.is_cow) {
        a.is_readonly = true; /* qemu-nbd -l exports read-only */
    }
    return run_nbdkit(&a, argv[optind]);
}
