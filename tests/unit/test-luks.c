/* SPDX-License-Identifier: MIT */
/*
 * test-luks.c: the LUKS1 header parser (lib/crypto/luks.c) on headers
 * built here field by field from the LUKS1 on-disk format: names as
 * qemu-img info prints them, slots, offsets in bytes, and refusals of
 * what is not a LUKS1 header.
 */
#include "unit.h"

#include "crypto/luks.h"
#include "vimg-endian.h"

static void put_string(uint8_t *h, size_t off, size_t len, const char *s)
{
    memset(h + off, 0, len);
    memcpy(h + off, s, strlen(s));
}

/* aes xts-plain64, 64 key bytes, sha256, slot 0 active. */
static void make_header(uint8_t *h)
{
    static const uint8_t magic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};

    memset(h, 0, VIMG_LUKS_HEADER_LEN);
    memcpy(h, magic, sizeof(magic));
    store_be16(h + 6, 1);
    put_string(h, 8, 32, "aes");
    put_string(h, 40, 32, "xts-plain64");
    put_string(h, 72, 32, "sha256");
    store_be32(h + 104, 4040);  /* payload, sectors */
    store_be32(h + 108, 64);    /* key bytes */
    store_be32(h + 164, 12345); /* master key digest iterations */
    put_string(h, 168, 40, "0b2f1c3a-1111-2222-3333-444455556666");
    for (unsigned i = 0; i < VIMG_LUKS_SLOTS; i++) {
        uint8_t *k = h + 208 + 48 * i;
        store_be32(k, i == 0 ? 0x00AC71F3u : 0x0000DEADu);
        store_be32(k + 4, i == 0 ? 777 : 0);
        store_be32(k + 40, 8 + 504 * i);
        store_be32(k + 44, 4000);
    }
}

static void test_default_header(void **state)
{
    (void)state;
    uint8_t h[VIMG_LUKS_HEADER_LEN];
    struct vimg_luks_info info;

    make_header(h);
    assert_int_equal(vimg_luks_parse(h, sizeof(h), &info), 0);
    assert_string_equal(info.cipher_alg, "aes-256");
    assert_string_equal(info.cipher_mode, "xts");
    assert_string_equal(info.ivgen_alg, "plain64");
    assert_string_equal(info.ivgen_hash_alg, "");
    assert_string_equal(info.hash_alg, "sha256");
    assert_string_equal(info.uuid, "0b2f1c3a-1111-2222-3333-444455556666");
    assert_true(info.payload_offset == 4040 * 512);
    assert_int_equal(info.master_key_iters, 12345);
    assert_true(info.slots[0].active);
    assert_int_equal(info.slots[0].iters, 777);
    assert_int_equal(info.slots[0].stripes, 4000);
    assert_true(info.slots[0].key_offset == 4096);
    for (unsigned i = 1; i < VIMG_LUKS_SLOTS; i++) {
        assert_false(info.slots[i].active);
        assert_true(info.slots[i].key_offset == (8 + 504 * i) * 512ull);
    }
}

static void test_cipher_names(void **state)
{
    (void)state;
    uint8_t h[VIMG_LUKS_HEADER_LEN];
    struct vimg_luks_info info;

    make_header(h);
    put_string(h, 40, 32, "cbc-essiv:sha256");
    store_be32(h + 108, 16);
    assert_int_equal(vimg_luks_parse(h, sizeof(h), &info), 0);
    assert_string_equal(info.cipher_alg, "aes-128");
    assert_string_equal(info.cipher_mode, "cbc");
    assert_string_equal(info.ivgen_alg, "essiv");
    assert_string_equal(info.ivgen_hash_alg, "sha256");

    put_string(h, 8, 32, "twofish");
    put_string(h, 40, 32, "cbc-plain");
    store_be32(h + 108, 24);
    assert_int_equal(vimg_luks_parse(h, sizeof(h), &info), 0);
    assert_string_equal(info.cipher_alg, "twofish-192");
    assert_string_equal(info.ivgen_alg, "plain");

    put_string(h, 8, 32, "rot13");
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "rot13");
}

static void test_refused(void **state)
{
    (void)state;
    uint8_t h[VIMG_LUKS_HEADER_LEN];
    struct vimg_luks_info info;

    make_header(h);
    assert_error(vimg_luks_parse(h, 100, &info), -EINVAL, "592");
    h[0] = 'X';
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "magic");
    make_header(h);
    store_be16(h + 6, 2);
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "version");
    make_header(h);
    memset(h + 8, 'a', 32);
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL,
                 "cipher name");
    make_header(h);
    memset(h + 168, '1', 40);
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "uuid");
    make_header(h);
    store_be32(h + 208 + 48 * 3, 0x12345678u);
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "slot 3");
    make_header(h);
    store_be32(h + 108, 0);
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL, "key size");
    make_header(h);
    put_string(h, 40, 32, "-plain64");
    assert_error(vimg_luks_parse(h, sizeof(h), &info), -EINVAL,
                 "cipher mode");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_header),
        cmocka_unit_test(test_cipher_names),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
