/* SPDX-License-Identifier: MIT */
/*
 * hold-image.c: open an image through libvimg and keep it open, so tests
 * can see what vimg's locks let other programs do (tests/cli/
 * test_locking.py).
 *
 *   hold-image [-w] [-U] [-i] [-n] [-f FORMAT] IMAGE
 *
 * -w opens read-write, -U with VIMG_OPEN_FORCE_SHARE, -i for inspection
 * only (as `vimg info`), -n with VIMG_OPEN_NO_LOCK.  Prints "ready" on stdout once the image is
 * open, then holds it until stdin is closed.
 *
 * Exit status: 0 after a clean close, 1 if the open failed (the message
 * on stderr), 2 usage error.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <vimg.h>

int main(int argc, char **argv)
{
    unsigned flags = 0;
    const char *format = NULL;
    int opt;

    while ((opt = getopt(argc, argv, "wUinf:")) != -1) {
        switch (opt) {
        case 'w':
            flags |= VIMG_OPEN_RDWR;
            break;
        case 'U':
            flags |= VIMG_OPEN_FORCE_SHARE;
            break;
        case 'i':
            flags |= VIMG_OPEN_INFO_ONLY;
            break;
        case 'n':
            flags |= VIMG_OPEN_NO_LOCK;
            break;
        case 'f':
            format = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: hold-image [-w] [-U] [-i] [-n] [-f FORMAT] "
                        "IMAGE\n");
        return 2;
    }
    vimg_image *img = NULL;
    if (vimg_open(&img, argv[optind], format, flags) < 0) {
        fprintf(stderr, "hold-image: %s\n", vimg_last_error());
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(STDIN_FILENO, buf, sizeof(buf)) > 0) {
    }
    vimg_close(img);
    return 0;
}
