/* SPDX-License-Identifier: MIT */
/*
 * vimg-util.h: what every layer of lib/ uses: recording an error for
 * vimg_last_error() (lib/error.c), min/max and overflow-checked
 * arithmetic.  Includes nothing of lib/ but the public header.
 */
#ifndef VIMG_UTIL_H
#define VIMG_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "vimg.h"

/* error.c */
/* Record a printf-style message for vimg_last_error(); returns ERR. */
int vimg_error(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "PREFIX: " (used for file names). */
void vimg_error_prefix(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
void vimg_error_clear(void);

/* Overflow-checked helpers. */
static inline bool vimg_add_overflows(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline bool vimg_is_aligned(uint64_t v, uint64_t align)
{
    return (v & (align - 1)) == 0;
}

#define VIMG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VIMG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define VIMG_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

#endif
