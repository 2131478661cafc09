/* SPDX-License-Identifier: MIT */
/*
 * test-probe.c: probing (registry.c, probe-foreign.c) on first and last
 * sectors built by hand from each format's documented magic: each names
 * its format, near misses stay raw, and a file in a format vimg cannot
 * open is refused by name through vimg_open_memory(); and the block-0
 * guard of a guessed raw image on a real file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "unit.h"

#include "formats/format.h"
#include "vimg-endian.h"

static uint8_t head[512];
static uint8_t tail[512];

static const char *probe_full(const char *name, bool with_tail)
{
    const struct vimg_format *drv = NULL;
    const struct vimg_probe_data d = {
        .head = head,
        .head_len = sizeof(head),
        .tail = with_tail ? tail : NULL,
        .tail_len = with_tail ? sizeof(tail) : 0,
        .name = name,
    };
    const char *fmt = vimg_format_probe_data(&d, &drv);
    /* a driver is returned exactly when it has the format */
    assert_true(drv ? strcmp(drv->name, fmt) == 0
                    : vimg_format_is_foreign(fmt));
    return fmt;
}

static const char *probe(void)
{
    return probe_full(NULL, false);
}

static void reset(void)
{
    memset(head, 0, sizeof(head));
    memset(tail, 0, sizeof(tail));
}

static void put(size_t off, const char *s, size_t n)
{
    memcpy(head + off, s, n);
}

static void test_zeroes_are_raw(void **state)
{
    (void)state;
    reset();
    assert_string_equal(probe(), "raw");
    assert_string_equal(probe_full("disk.img", true), "raw");
}

static void test_qcow_versions(void **state)
{
    (void)state;
    reset();
    put(0, "QFI\xfb", 4);
    store_be32(head + 4, 1);
    assert_string_equal(probe(), "qcow");
    store_be32(head + 4, 2);
    assert_string_equal(probe(), "qcow2");
    store_be32(head + 4, 3);
    assert_string_equal(probe(), "qcow2");
    /* an unknown version is still qcow2, refused as such on open */
    store_be32(head + 4, 7);
    assert_string_equal(probe(), "qcow2");
}

static void test_head_magics(void **state)
{
    (void)state;
    static const struct {
        const char *magic;
        size_t len;
        const char *fmt;
    } cases[] = {
        {"vhdxfile", 8, "vhdx"},     {"KDMV", 4, "vmdk"},
        {"COWD", 4, "vmdk"},         {"conectix", 8, "vpc"},
        {"QED", 4, "qed"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        reset();
        put(0, cases[i].magic, cases[i].len);
        assert_string_equal(probe(), cases[i].fmt);
        /* one byte off is no longer the format */
        head[1] ^= 0x20;
        assert_string_equal(probe(), "raw");
    }
}

static void test_vdi(void **state)
{
    (void)state;
    reset();
    put(0, "<<< Oracle VM VirtualBox Disk Image >>>\n", 40);
    store_le32(head + 64, 0xbeda107f);
    assert_string_equal(probe(), "vdi");
    store_le32(head + 64, 0x7f10dabe);
    assert_string_equal(probe(), "raw");
}

static void test_parallels(void **state)
{
    (void)state;
    for (int ext = 0; ext < 2; ext++) {
        reset();
        put(0, ext ? "WithouFreSpacExt" : "WithoutFreeSpace", 16);
        store_le32(head + 16, 2);
        assert_string_equal(probe(), "parallels");
        store_le32(head + 16, 3);
        assert_string_equal(probe(), "raw");
    }
}

static void test_luks(void **state)
{
    (void)state;
    for (uint16_t v = 0; v < 4; v++) {
        reset();
        put(0, "LUKS\xba\xbe", 6);
        store_be16(head + 6, v);
        assert_string_equal(probe(), v == 1 || v == 2 ? "luks" : "raw");
    }
}

static void test_bochs(void **state)
{
    (void)state;
    reset();
    put(0, "Bochs Virtual HD Image", 23);
    put(32, "Redolog", 8);
    put(48, "Growing", 8);
    store_le32(head + 64, 0x00020000);
    assert_string_equal(probe(), "bochs");
    store_le32(head + 64, 0x00010000);
    assert_string_equal(probe(), "bochs");
    store_le32(head + 64, 0x00030000);
    assert_string_equal(probe(), "raw");
    store_le32(head + 64, 0x00020000);
    put(32, "Redolog!", 8); /* the type must end where the word does */
    assert_string_equal(probe(), "raw");
}

static void test_cloop(void **state)
{
    (void)state;
    static const char magic[] =
        "#!/bin/sh\n#V2.0 Format\n"
        "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
    reset();
    put(0, magic, sizeof(magic) - 1);
    assert_string_equal(probe(), "cloop");
    head[20] = 'X';
    assert_string_equal(probe(), "raw");
}

static void test_vmdk_descriptor(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool is_vmdk;
    } cases[] = {
        {"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n", true},
        {"version=3\n", true},
        {"# c\r\n   \r\n\nversion=2\r\n", true},
        {"  \n# comment\nversion=1\n", true},
        {"version=4\n", false},
        {"CID=1\nversion=1\n", false},
        {"   x\nversion=1\n", false},
        {"# no newline at all", false},
        {"version=1", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        reset();
        put(0, cases[i].text, strlen(cases[i].text));
        assert_string_equal(probe(), cases[i].is_vmdk ? "vmdk" : "raw");
    }
}

/* A fixed VHD: only a footer in the last sector, with its checksum. */
static void test_vpc_footer(void **state)
{
    (void)state;
    reset();
    memcpy(tail, "conectix", 8);
    store_be32(tail + 12, 0x00010000);
    store_be32(tail + 60, 2); /* fixed */
    uint32_t sum = 0;
    for (size_t i = 0; i < sizeof(tail); i++) {
        sum += tail[i];
    }
    store_be32(tail + 64, ~sum);
    assert_string_equal(probe_full(NULL, true), "vpc");
    /* the footer is not looked for at the start */
    memcpy(head, tail, 8);
    head[0] = 'x';
    assert_string_equal(probe(), "raw");
    tail[100] ^= 1; /* bad checksum */
    assert_string_equal(probe_full(NULL, true), "raw");
}

static void test_dmg(void **state)
{
    (void)state;
    reset();
    assert_string_equal(probe_full("a/disk.dmg", false), "dmg");
    assert_string_equal(probe_full("a/disk.dmg.raw", false), "raw");
    assert_string_equal(probe_full(".dmg", false), "raw");
    memcpy(tail, "koly", 4);
    store_be32(tail + 4, 4);
    store_be32(tail + 8, 512);
    assert_string_equal(probe_full("disk.img", true), "dmg");
    store_be32(tail + 4, 5);
    assert_string_equal(probe_full("disk.img", true), "raw");
    /* a qcow2 header at the start beats a trailer at the end */
    store_be32(tail + 4, 4);
    put(0, "QFI\xfb", 4);
    store_be32(head + 4, 3);
    assert_string_equal(probe_full("disk.dmg", true), "qcow2");
}

/* A file in a foreign format is refused by name, never opened as raw;
 * -f raw still opens it. */
static void test_open_refuses_by_name(void **state)
{
    (void)state;
    static uint8_t file[4096];
    memcpy(file, "QED", 4);
    vimg_image *img = NULL;
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, file, sizeof(file), NULL, "x.img"),
                 -ENOTSUP, "qed format");
    assert_null(img);
    assert_int_equal(vimg_open_memory(&img, file, sizeof(file), "raw",
                                      "x.img"),
                     0);
    assert_string_equal(vimg_format(img), "raw");
    vimg_close(img);
    vimg_error_clear();
    assert_error(vimg_open_memory(&img, file, sizeof(file), "vmdk", "x.img"),
                 -ENOTSUP, "vmdk");
}

/* A raw file of 4 sectors holding SECTOR0 first; returns its path. */
static char *raw_file(const uint8_t *sector0)
{
    static char path[] = "/tmp/vimg-test-probe-XXXXXX";
    uint8_t file[2048] = {0};

    strcpy(path, "/tmp/vimg-test-probe-XXXXXX");
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    memcpy(file, sector0, 512);
    assert_int_equal(write(fd, file, sizeof(file)), (ssize_t)sizeof(file));
    close(fd);
    return path;
}

static void file_sector0(const char *path, uint8_t out[512])
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(out, 1, 512, f), 512);
    fclose(f);
}

static void test_guard_probed_raw(void **state)
{
    (void)state;
    static const uint8_t qcow2_hdr[16] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    uint8_t zero[512] = {0}, now[512];
    char *path = raw_file(zero);
    vimg_image *img = NULL;

    assert_int_equal(vimg_open(&img, path, NULL, VIMG_OPEN_RDWR), 0);
    assert_string_equal(vimg_format(img), "raw");
    assert_true(vimg_is_format_probed(img));
    vimg_error_clear();
    assert_error(vimg_pwrite(img, qcow2_hdr, sizeof(qcow2_hdr), 0), -EPERM,
                 "probe as qcow2");
    /* the same bytes past the first sector, or harmless ones, are fine */
    assert_int_equal(vimg_pwrite(img, qcow2_hdr, sizeof(qcow2_hdr), 512), 0);
    assert_int_equal(vimg_pwrite(img, "hello", 5, 100), 0);
    /* a magic built up by two writes is refused at the second */
    assert_int_equal(vimg_pwrite(img, "QFI", 3, 0), 0);
    vimg_error_clear();
    assert_error(vimg_pwrite(img, "\xfb", 1, 3), -EPERM, "qcow2");
    assert_int_equal(vimg_flush(img), 0);
    file_sector0(path, now);
    assert_memory_equal(now, "QFI\0", 4);
    assert_memory_equal(now + 100, "hello", 5);

    /* zeroes can complete a magic too: parallels version 0x102 -> 2 */
    assert_int_equal(vimg_pwrite(img, "WithoutFreeSpace\x02\x01", 18, 0), 0);
    vimg_error_clear();
    assert_error(vimg_write_zeroes(img, 17, 1, 0), -EPERM, "parallels");
    assert_int_equal(vimg_discard(img, 0, 512), 0); /* all zeroes: raw */
    vimg_close(img);

    /* given as raw, nothing is guarded */
    assert_int_equal(vimg_open(&img, path, "raw", VIMG_OPEN_RDWR), 0);
    assert_false(vimg_is_format_probed(img));
    assert_int_equal(vimg_pwrite(img, qcow2_hdr, sizeof(qcow2_hdr), 0), 0);
    vimg_close(img);
    file_sector0(path, now);
    assert_memory_equal(now, qcow2_hdr, sizeof(qcow2_hdr));
    /* and now it probes as qcow2: never a guessed raw image again */
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zeroes_are_raw),
        cmocka_unit_test(test_qcow_versions),
        cmocka_unit_test(test_head_magics),
        cmocka_unit_test(test_vdi),
        cmocka_unit_test(test_parallels),
        cmocka_unit_test(test_luks),
        cmocka_unit_test(test_bochs),
        cmocka_unit_test(test_cloop),
        cmocka_unit_test(test_vmdk_descriptor),
        cmocka_unit_test(test_vpc_footer),
        cmocka_unit_test(test_dmg),
        cmocka_unit_test(test_open_refuses_by_name),
        cmocka_unit_test(test_guard_probed_raw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
