/* SPDX-License-Identifier: MIT */
/*
 * luks.c: LUKS1 header parser (read-only, no key).  Layout, big-endian,
 * from cryptsetup's LUKS1 on-disk format specification:
 *
 *   0 magic "LUKS\xba\xbe"    6 version (u16, 1)
 *   8 cipher-name[32]        40 cipher-mode[32]      72 hash-spec[32]
 * 104 payload-offset (u32, sectors)                 108 key-bytes (u32)
 * 112 mk-digest[20]         132 mk-digest-salt[32]  164 mk-digest-iter
 * 168 uuid[40]              208 8 key slots of 48 bytes: active (u32,
 *     0x00AC71F3 or 0x0000DEAD), iterations, salt[32], key-material
 *     offset (u32, sectors), stripes (u32)
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "crypto/luks.h"
#include "vimg-endian.h"
#include "util/vimg-util.h"

#define LUKS_SECTOR 512u
#define SLOT_ACTIVE 0x00AC71F3u
#define SLOT_INACTIVE 0x0000DEADu

/* Copy the NUL-terminated string field FIELD (LEN bytes) into OUT. */
static int field_string(const uint8_t *field, size_t len, char *out,
                        size_t cap, const char *what)
{
    const uint8_t *nul = memchr(field, 0, len);
    if (!nul || (size_t)(nul - field) >= cap) {
        return vimg_error(-EINVAL, "LUKS header: the %s field is not a "
                                   "terminated string",
                          what);
    }
    memcpy(out, field, (size_t)(nul - field) + 1);
    return 0;
}

/* "aes" with KEY_BITS -> "aes-256", as qemu names cipher algorithms. */
static int cipher_alg(const char *name, unsigned key_bits, char *out,
                      size_t cap)
{
    static const char *const sized[] = {"aes", "serpent", "twofish"};
    for (size_t i = 0; i < sizeof(sized) / sizeof(sized[0]); i++) {
        if (!strcmp(name, sized[i]) &&
            (key_bits == 128 || key_bits == 192 || key_bits == 256)) {
            snprintf(out, cap, "%.10s-%u", sized[i], key_bits);
            return 0;
        }
    }
    if (!strcmp(name, "cast5") && key_bits == 128) {
        snprintf(out, cap, "cast5-128");
        return 0;
    }
    if (!strcmp(name, "sm4") && key_bits == 128) {
        snprintf(out, cap, "sm4");
        return 0;
    }
    return vimg_error(-EINVAL, "LUKS header: unsupported cipher '%s' with "
                               "a %u-bit key",
                      name, key_bits);
}

/* "xts-plain64" -> mode "xts", ivgen "plain64"; "cbc-essiv:sha256" ->
 * "cbc", "essiv", ivgen hash "sha256". */
static int cipher_mode(const char *spec, struct vimg_luks_info *out)
{
    const char *dash = strchr(spec, '-');
    const size_t mode_len = dash ? (size_t)(dash - spec) : strlen(spec);

    if (mode_len == 0 || mode_len >= sizeof(out->cipher_mode)) {
        return vimg_error(-EINVAL, "LUKS header: bad cipher mode '%s'",
                          spec);
    }
    memcpy(out->cipher_mode, spec, mode_len);
    out->cipher_mode[mode_len] = '\0';
    if (!dash) {
        return 0;
    }
    const char *ivgen = dash + 1;
    const char *colon = strchr(ivgen, ':');
    const size_t iv_len = colon ? (size_t)(colon - ivgen) : strlen(ivgen);
    if (iv_len == 0 || iv_len >= sizeof(out->ivgen_alg) ||
        (colon && strlen(colon + 1) >= sizeof(out->ivgen_hash_alg))) {
        return vimg_error(-EINVAL, "LUKS header: bad cipher mode '%s'",
                          spec);
    }
    memcpy(out->ivgen_alg, ivgen, iv_len);
    out->ivgen_alg[iv_len] = '\0';
    if (colon) {
        strcpy(out->ivgen_hash_alg, colon + 1);
    }
    return 0;
}

int vimg_luks_parse(const uint8_t *buf, size_t len,
                    struct vimg_luks_info *out)
{
    static const uint8_t magic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};
    char name[32];
    int ret;

    memset(out, 0, sizeof(*out));
    if (len < VIMG_LUKS_HEADER_LEN) {
        return vimg_error(-EINVAL, "LUKS header: %zu bytes, it needs %u",
                          len, VIMG_LUKS_HEADER_LEN);
    }
    if (memcmp(buf, magic, sizeof(magic))) {
        return vimg_error(-EINVAL, "LUKS header: bad magic");
    }
    if (load_be16(buf + 6) != 1) {
        return vimg_error(-EINVAL, "LUKS header: version %u (only LUKS1 is "
                                   "supported)",
                          load_be16(buf + 6));
    }
    char mode[32];
    ret = field_string(buf + 8, 32, name, sizeof(name), "cipher name");
    if (ret == 0) {
        ret = field_string(buf + 40, 32, mode, sizeof(mode), "cipher mode");
    }
    if (ret == 0) {
        ret = field_string(buf + 72, 32, out->hash_alg, sizeof(out->hash_alg),
                           "hash spec");
    }
    if (ret == 0) {
        ret = field_string(buf + 168, 40, out->uuid, sizeof(out->uuid),
                           "uuid");
    }
    if (ret < 0) {
        return ret;
    }
    ret = cipher_mode(mode, out);
    if (ret < 0) {
        return ret;
    }
    uint32_t key_bytes = load_be32(buf + 108);
    if (!strcmp(out->cipher_mode, "xts")) {
        key_bytes /= 2; /* two keys of the cipher's size */
    }
    if (key_bytes == 0 || key_bytes > 64) {
        return vimg_error(-EINVAL, "LUKS header: bad key size %u",
                          load_be32(buf + 108));
    }
    ret = cipher_alg(name, key_bytes * 8, out->cipher_alg,
                     sizeof(out->cipher_alg));
    if (ret < 0) {
        return ret;
    }
    out->payload_offset = (uint64_t)load_be32(buf + 104) * LUKS_SECTOR;
    out->master_key_iters = load_be32(buf + 164);
    for (unsigned i = 0; i < VIMG_LUKS_SLOTS; i++) {
        const uint8_t *k = buf + 208 + 48 * i;
        const uint32_t state = load_be32(k);
        struct vimg_luks_slot *slot = &out->slots[i];
        if (state != SLOT_ACTIVE && state != SLOT_INACTIVE) {
            return vimg_error(-EINVAL, "LUKS header: key slot %u has an "
                                       "unknown state 0x%x",
                              i, state);
        }
        slot->active = state == SLOT_ACTIVE;
        slot->iters = load_be32(k + 4);
        slot->key_offset = (uint64_t)load_be32(k + 40) * LUKS_SECTOR;
        slot->stripes = load_be32(k + 44);
    }
    return 0;
}
