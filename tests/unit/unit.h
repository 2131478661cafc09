/* SPDX-License-Identifier: MIT */
/*
 * unit.h: what every unit test program includes: cmocka (which wants
 * stdarg/stddef/setjmp first) and a check that a call failed with the
 * expected errno and said why.
 */
#ifndef VIMG_UNIT_H
#define VIMG_UNIT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "vimg-internal.h"

/*
 * RET must be ERR, and vimg_last_error() must contain WORD (any case).
 * Clear the message with vimg_error_clear() before the call, so that a
 * stale message cannot satisfy the check.
 */
#define assert_error(ret, err, word)                                           \
    do {                                                                       \
        const int ret_ = (ret);                                                \
        if (ret_ != (err)) {                                                   \
            fail_msg("%s returned %d, expected %s (%d); message \"%s\"",       \
                     #ret, ret_, #err, (err), vimg_last_error());              \
        }                                                                      \
        if (!strcasestr(vimg_last_error(), (word))) {                          \
            fail_msg("%s: message \"%s\" does not mention \"%s\"", #ret,      \
                     vimg_last_error(), (word));                               \
        }                                                                      \
    } while (0)

#endif
