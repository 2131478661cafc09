/* SPDX-License-Identifier: MIT */
/*
 * regress.c: replay a fuzz corpus without libFuzzer, so `meson test` (and
 * the sanitizer build) runs every saved input of a target on every build.
 *
 *   fuzz-open-regress [-v] PATH...
 *
 * Each PATH is a file or a directory, searched recursively (hidden files
 * such as .gitkeep are skipped).  Every file found is passed to
 * LLVMFuzzerTestOneInput.  Exits 0 after replaying at least one file, 1
 * when a path is missing or nothing was found (an empty corpus is a
 * broken test, not a passing one).  A crash is the target's business: it
 * aborts, and the name printed last (with -v, or on stderr before each
 * file when VIMG_REGRESS_VERBOSE is set) is the culprit.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct replay {
    unsigned long files;
    unsigned long long bytes;
    int verbose;
};

/* Read the whole of PATH into a malloc'd buffer. */
static int read_file(const char *path, uint8_t **out, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -errno;
    }
    size_t cap = 64 * 1024, len = 0;
    uint8_t *buf = malloc(cap);
    int ret = 0;
    if (buf == NULL) {
        ret = -ENOMEM;
        goto out;
    }
    for (;;) {
        if (len == cap) {
            uint8_t *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                ret = -ENOMEM;
                goto out;
            }
            buf = bigger;
            cap *= 2;
        }
        const size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                ret = -EIO;
            }
            break;
        }
    }
out:
    fclose(f);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    *out_len = len;
    return 0;
}

static int replay_file(struct replay *r, const char *path)
{
    uint8_t *data = NULL;
    size_t len = 0;
    const int ret = read_file(path, &data, &len);
    if (ret < 0) {
        fprintf(stderr, "regress: %s: %s\n", path, strerror(-ret));
        return ret;
    }
    if (r->verbose) {
        fprintf(stderr, "regress: running %s (%zu bytes)\n", path, len);
    }
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    r->files++;
    r->bytes += len;
    return 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_path(struct replay *r, const char *path);

/* Replay a directory's entries in name order, so runs are reproducible. */
static int replay_dir(struct replay *r, const char *path)
{
    DIR *dir = opendir(path);
    if (dir == NULL) {
        const int err = errno;
        fprintf(stderr, "regress: %s: %s\n", path, strerror(err));
        return -err;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int ret = 0;
    const struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.') {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **bigger = realloc(names, cap * sizeof(*names));
            if (bigger == NULL) {
                ret = -ENOMEM;
                goto out;
            }
            names = bigger;
        }
        const size_t len = strlen(path) + 1 + strlen(de->d_name) + 1;
        names[n] = malloc(len);
        if (names[n] == NULL) {
            ret = -ENOMEM;
            goto out;
        }
        snprintf(names[n], len, "%s/%s", path, de->d_name);
        n++;
    }
    qsort(names, n, sizeof(*names), compare_names);
    for (size_t i = 0; i < n && ret == 0; i++) {
        ret = replay_path(r, names[i]);
    }
out:
    for (size_t i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
    closedir(dir);
    return ret;
}

static int replay_path(struct replay *r, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        const int err = errno;
        fprintf(stderr, "regress: %s: %s\n", path, strerror(err));
        return -err;
    }
    if (S_ISDIR(st.st_mode)) {
        return replay_dir(r, path);
    }
    if (S_ISREG(st.st_mode)) {
        return replay_file(r, path);
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct replay r = { .verbose = getenv("VIMG_REGRESS_VERBOSE") != NULL };
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        r.verbose = 1;
        first = 2;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: %s [-v] CORPUS-DIR-OR-FILE...\n", argv[0]);
        return 2;
    }
    for (int i = first; i < argc; i++) {
        if (replay_path(&r, argv[i]) < 0) {
            return 1;
        }
    }
    if (r.files == 0) {
        fprintf(stderr, "regress: no inputs found in the given paths\n");
        return 1;
    }
    printf("regress: replayed %lu inputs (%llu bytes)\n", r.files, r.bytes);
    return 0;
}
