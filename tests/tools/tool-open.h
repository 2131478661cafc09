/* SPDX-License-Identifier: MIT */
/*
 * tool-open.h: how the test tools open an image: vimg_open() with the L2
 * cache size of VIMG_QCOW2_L2_CACHE_SIZE (bytes), which the tests set to
 * force evictions (the library reads no environment).
 */
#ifndef VIMG_TOOL_OPEN_H
#define VIMG_TOOL_OPEN_H

#include <stdlib.h>

#include <vimg.h>

static inline int open_with_env(vimg_image **out, const char *path,
                                const char *format, unsigned flags)
{
    struct vimg_open_opts opts = VIMG_OPEN_OPTS_INIT;
    const char *env = getenv("VIMG_QCOW2_L2_CACHE_SIZE");

    opts.flags = flags;
    opts.cache_size = env ? strtoull(env, NULL, 0) : 0;
    return vimg_open_ext(out, path, format, &opts);
}

#endif
