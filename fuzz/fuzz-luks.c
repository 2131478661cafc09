/* SPDX-License-Identifier: MIT */
/*
 * fuzz-luks.c: libFuzzer target for the LUKS1 header parser
 * (lib/crypto/luks.c), which `vimg info` runs on the bytes an encrypted
 * qcow2 image's crypto header extension points at.  Besides crashes and
 * sanitizer reports it aborts when the parser breaks a promise: an error
 * without a message, or a result with an unterminated or empty name, a
 * payload or key offset that is not whole sectors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/luks.h"
#include "vimg-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what)
{
    fprintf(stderr, "fuzz-luks: broken promise: %s (\"%s\")\n", what,
            vimg_last_error());
    abort();
}

static void check_name(const char *s, size_t cap, bool may_be_empty)
{
    if (!memchr(s, 0, cap)) {
        broken("unterminated name");
    }
    if (!may_be_empty && !*s) {
        broken("empty name");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vimg_luks_info info;

    vimg_error_clear();
    if (vimg_luks_parse(data, size, &info) < 0) {
        if (!*vimg_last_error()) {
            broken("error without a message");
        }
        return 0;
    }
    check_name(info.cipher_alg, sizeof(info.cipher_alg), false);
    check_name(info.cipher_mode, sizeof(info.cipher_mode), false);
    check_name(info.ivgen_alg, sizeof(info.ivgen_alg), true);
    check_name(info.ivgen_hash_alg, sizeof(info.ivgen_hash_alg), true);
    check_name(info.hash_alg, sizeof(info.hash_alg), true);
    check_name(info.uuid, sizeof(info.uuid), true);
    if (info.payload_offset % 512) {
        broken("payload offset not in sectors");
    }
    for (unsigned i = 0; i < VIMG_LUKS_SLOTS; i++) {
        if (info.slots[i].key_offset % 512) {
            broken("key offset not in sectors");
        }
    }
    return 0;
}
