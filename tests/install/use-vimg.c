/* SPDX-License-Identifier: MIT */
/*
 * use-vimg.c: a program built against the installed libvimg, the way a
 * user builds one (`cc use-vimg.c $(pkg-config --cflags --libs vimg)`),
 * by tests/install/test-install.py.
 *
 *   use-vimg RAW QCOW2 EXPECTED
 *
 * opens RAW as raw and QCOW2 by probing, checks their formats and reads
 * each whole disk, which must equal the bytes of the file EXPECTED.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vimg.h>

static unsigned char *read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    long len = -1;

    if (f && fseek(f, 0, SEEK_END) == 0) {
        len = ftell(f);
    }
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc(len ? (size_t)len : 1);
    }
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    if (f) {
        fclose(f);
    }
    *len_out = buf ? (size_t)len : 0;
    return buf;
}

/* Open PATH (FORMAT, or NULL to probe), expect WANT_FORMAT and content
 * EXPECTED; returns 0 or 1 with the reason on stderr. */
static int check_image(const char *path, const char *format,
                       const char *want_format,
                       const unsigned char *expected, size_t len)
{
    vimg_image *img = NULL;
    unsigned char *buf = NULL;
    int failed = 1;

    if (vimg_open(&img, path, format, 0) < 0) {
        fprintf(stderr, "use-vimg: %s\n", vimg_last_error());
        return 1;
    }
    if (strcmp(vimg_format(img), want_format) != 0) {
        fprintf(stderr, "use-vimg: %s: format %s, expected %s\n", path,
                vimg_format(img), want_format);
    } else if (vimg_size(img) != len) {
        fprintf(stderr, "use-vimg: %s: size %llu, expected %zu\n", path,
                (unsigned long long)vimg_size(img), len);
    } else if (!(buf = malloc(len ? len : 1))) {
        fprintf(stderr, "use-vimg: out of memory\n");
    } else if (vimg_pread(img, buf, len, 0) < 0) {
        fprintf(stderr, "use-vimg: %s\n", vimg_last_error());
    } else if (memcmp(buf, expected, len) != 0) {
        fprintf(stderr, "use-vimg: %s: content differs\n", path);
    } else {
        printf("%s: %s, %zu bytes read\n", path, want_format, len);
        failed = 0;
    }
    free(buf);
    vimg_close(img);
    return failed;
}

int main(int argc, char **argv)
{
    size_t len;

    if (argc != 4) {
        fprintf(stderr, "usage: use-vimg RAW QCOW2 EXPECTED\n");
        return 2;
    }
    unsigned char *expected = read_file(argv[3], &len);
    if (!expected) {
        perror(argv[3]);
        return 2;
    }
    printf("libvimg %s\n", vimg_version());
    int failed = check_image(argv[1], "raw", "raw", expected, len);
    failed |= check_image(argv[2], NULL, "qcow2", expected, len);
    free(expected);
    return failed;
}
