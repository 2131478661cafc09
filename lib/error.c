/* SPDX-License-Identifier: MIT */
/*
 * error.c: the per-thread last-error message behind vimg_last_error().
 * A fixed _Thread_local buffer: recording an error never allocates.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util/vimg-util.h"

static _Thread_local char last_error[2048];

const char *vimg_last_error(void)
{
    return last_error;
}

const char *vimg_version(void)
{
    return VIMG_VERSION_STRING;
}

void vimg_error_clear(void)
{
    last_error[0] = '\0';
}

int vimg_error(int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return err;
}

void vimg_error_prefix(const char *fmt, ...)
{
    char old[sizeof(last_error)];
    va_list ap;

    memcpy(old, last_error, sizeof(old));
    va_start(ap, fmt);
    int n = vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(last_error) - 3) {
        return;
    }
    /* append ": OLD", truncated to fit */
    size_t used = (size_t)n;
    last_error[used++] = ':';
    last_error[used++] = ' ';
    const size_t room = sizeof(last_error) - used - 1;
    const size_t len = strnlen(old, room);
    memcpy(last_error + used, old, len);
    last_error[used + len] = '\0';
}
