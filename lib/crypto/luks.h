/* SPDX-License-Identifier: MIT */
/*
 * luks.h: a read-only parser of the LUKS1 header (the on-disk format of
 * cryptsetup's "LUKS On-Disk Format Specification", version 1.2.3), as
 * qcow2 stores it for encrypt.format=luks.  It describes the header (what
 * qemu-img info shows); it needs no key and decrypts nothing.
 */
#ifndef VIMG_CRYPTO_LUKS_H
#define VIMG_CRYPTO_LUKS_H

#include <stddef.h>
#include <stdint.h>

#include <vimg.h>

#define VIMG_LUKS_HEADER_LEN 592

/* Parse the LUKS1 header at the start of BUF (LEN bytes).  Returns 0, or
 * -EINVAL with a message naming what is wrong. */
int vimg_luks_parse(const uint8_t *buf, size_t len,
                    struct vimg_luks_info *out);

#endif
