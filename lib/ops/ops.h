/* SPDX-License-Identifier: MIT */
/*
 * ops.h: helpers shared by the whole-image algorithms in lib/ops.
 */
#ifndef VIMG_OPS_H
#define VIMG_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Is every byte of BUF zero? */
bool vimg_buffer_is_zero(const uint8_t *buf, size_t len);

#endif
