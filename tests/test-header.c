/* SPDX-License-Identifier: MIT */
/* The public header must compile alone as ISO C11 with -pedantic. */
#include <vimg.h>

int main(void)
{
    struct vimg_convert_opts c = VIMG_CONVERT_OPTS_INIT;
    struct vimg_compare_opts k = VIMG_COMPARE_OPTS_INIT;
    return (c.version == VIMG_CONVERT_OPTS_VERSION &&
            k.version == VIMG_COMPARE_OPTS_VERSION &&
            VIMG_VERSION_NUMBER > 0)
               ? 0
               : 1;
}
