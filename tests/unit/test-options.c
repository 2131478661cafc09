/* SPDX-License-Identifier: MIT */
/*
 * test-options.c: the format-neutral option API: option lists checked
 * against a format's table (qemu-img's words, ",," escaping), `-o help`,
 * open and check options structs, and the capability query front ends
 * use to advertise features.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "unit.h"

/* A fresh file name in TMPDIR (or /tmp); unlink() it when done. */
static void temp_name(char *buf, size_t len, const char *tag)
{
    const char *dir = getenv("TMPDIR");

    snprintf(buf, len, "%s/vimg-test-options-%ld-%s", dir ? dir : "/tmp",
             (long)getpid(), tag);
}

static void create(const char *path, const char *format, uint64_t size)
{
    struct vimg_create_opts o = VIMG_CREATE_OPTS_INIT;

    o.format = format;
    o.size = size;
    assert_int_equal(vimg_create(path, &o), 0);
}

static void test_capabilities_raw(void **state)
{
    (void)state;
    char path[512];
    vimg_image *img = NULL;

    temp_name(path, sizeof(path), "caps.raw");
    create(path, "raw", 1 << 20);
    assert_int_equal(vimg_open(&img, path, "raw", 0), 0);
    assert_int_equal(vimg_capabilities(img),
                     VIMG_CAN_EXTENTS | VIMG_CAN_CREATE);
    vimg_close(img);

    assert_int_equal(vimg_open(&img, path, "raw", VIMG_OPEN_RDWR), 0);
    const unsigned caps = vimg_capabilities(img);
    assert_int_equal(caps, VIMG_CAN_CREATE | VIMG_CAN_WRITE | VIMG_CAN_ZERO |
                               VIMG_CAN_EXTENTS |
                               VIMG_CAN_RESIZE | VIMG_CAN_FLUSH);
    vimg_close(img);
    unlink(path);
    assert_int_equal(vimg_capabilities(NULL), 0);
}

static void test_capabilities_qcow2(void **state)
{
    (void)state;
    char path[512];
    vimg_image *img = NULL;
    const unsigned always = VIMG_CAN_EXTENTS | VIMG_CAN_SNAPSHOT |
                            VIMG_CAN_BACKING | VIMG_CAN_AMEND |
                            VIMG_CAN_CHECK | VIMG_CAN_CREATE |
                            VIMG_CAN_BITMAPS; /* version 3 */

    temp_name(path, sizeof(path), "caps.qcow2");
    create(path, "qcow2", 1 << 20);
    assert_int_equal(vimg_open(&img, path, NULL, 0), 0);
    assert_int_equal(vimg_capabilities(img), always);
    vimg_close(img);

    assert_int_equal(vimg_open(&img, path, "qcow2", VIMG_OPEN_RDWR), 0);
    assert_int_equal(vimg_capabilities(img),
                     always | VIMG_CAN_WRITE | VIMG_CAN_ZERO |
                         VIMG_CAN_DISCARD | VIMG_CAN_RESIZE |
                         VIMG_CAN_FLUSH | VIMG_CAN_COMPRESS);
    vimg_close(img);
    unlink(path);
}

static void test_open_opts(void **state)
{
    (void)state;
    char path[512];
    vimg_image *img = NULL;
    struct vimg_open_opts o = VIMG_OPEN_OPTS_INIT;

    temp_name(path, sizeof(path), "open.qcow2");
    create(path, "qcow2", 4 << 20);
    /* a cache of one byte still holds two tables, and works */
    o.flags = VIMG_OPEN_RDWR;
    o.cache_size = 1;
    assert_int_equal(vimg_open_ext(&img, path, NULL, &o), 0);
    uint8_t buf[4096];
    memset(buf, 0xa5, sizeof(buf));
    for (uint64_t off = 0; off < (4 << 20); off += 1 << 20) {
        assert_int_equal(vimg_pwrite(img, buf, sizeof(buf), off), 0);
    }
    for (uint64_t off = 0; off < (4 << 20); off += 1 << 20) {
        uint8_t back[4096];
        assert_int_equal(vimg_pread(img, back, sizeof(back), off), 0);
        assert_memory_equal(back, buf, sizeof(buf));
    }
    vimg_close(img);
    img = NULL;

    /* NULL options are the defaults: read-only */
    assert_int_equal(vimg_open_ext(&img, path, NULL, NULL), 0);
    assert_false(vimg_capabilities(img) & VIMG_CAN_WRITE);
    vimg_close(img);
    img = NULL;

    vimg_error_clear();
    o.version = 99;
    assert_error(vimg_open_ext(&img, path, NULL, &o), -EINVAL, "version");
    assert_null(img);
    o.version = VIMG_OPEN_OPTS_VERSION;
    o.flags = VIMG_OPEN_RDWR | VIMG_OPEN_FORCE_SHARE;
    assert_error(vimg_open_ext(&img, path, NULL, &o), -EINVAL, "read-only");
    unlink(path);
}

static void count_line(void *opaque, const char *msg)
{
    (void)msg;
    (*(unsigned *)opaque)++;
}

static void test_check_opts(void **state)
{
    (void)state;
    char path[512];
    vimg_image *img = NULL;
    struct vimg_check_result r;
    unsigned lines = 0;
    struct vimg_check_opts o = VIMG_CHECK_OPTS_INIT;

    temp_name(path, sizeof(path), "check.qcow2");
    create(path, "qcow2", 1 << 20);
    assert_int_equal(vimg_open(&img, path, NULL, VIMG_OPEN_CHECK), 0);
    for (unsigned threads = 0; threads <= 3; threads++) {
        o.threads = threads;
        o.report = count_line;
        o.report_opaque = &lines;
        assert_int_equal(vimg_check_ext(img, &o, &r), 0);
        assert_int_equal(r.corruptions + r.leaks + r.check_errors, 0);
    }
    assert_int_equal(lines, 0);
    assert_int_equal(vimg_check_ext(img, NULL, &r), 0);
    vimg_error_clear();
    o.flags = VIMG_CHECK_REPAIR_ALL; /* a read-only handle */
    assert_error(vimg_check_ext(img, &o, &r), -EROFS, "read-write");
    o.flags = 0x80;
    assert_error(vimg_check_ext(img, &o, &r), -EINVAL, "flags");
    o.flags = 0;
    o.version = 7;
    assert_error(vimg_check_ext(img, &o, &r), -EINVAL, "version");
    vimg_close(img);
    unlink(path);
}

static void test_parse_size(void **state)
{
    (void)state;
    uint64_t n = 0;

    assert_int_equal(vimg_parse_size("64k", &n), 0);
    assert_int_equal(n, 65536);
    assert_int_equal(vimg_parse_size("0x1000", &n), 0);
    assert_int_equal(n, 4096);
    assert_int_equal(vimg_parse_size("1.5M", &n), 0);
    assert_int_equal(n, 1536 * 1024);
    assert_int_equal(vimg_parse_size("abc", &n), -EINVAL);
    assert_int_equal(vimg_parse_size("1.5", &n), -EINVAL);
    assert_int_equal(vimg_parse_size("16E", &n), -ERANGE);
}

static void test_prealloc_parse(void **state)
{
    (void)state;
    enum vimg_prealloc m = VIMG_PREALLOC_FULL;

    assert_int_equal(vimg_prealloc_parse(NULL, &m), 0);
    assert_int_equal(m, VIMG_PREALLOC_OFF);
    assert_int_equal(vimg_prealloc_parse("metadata", &m), 0);
    assert_int_equal(m, VIMG_PREALLOC_METADATA);
    assert_int_equal(vimg_prealloc_parse("falloc", &m), 0);
    assert_int_equal(m, VIMG_PREALLOC_FALLOC);
    assert_int_equal(vimg_prealloc_parse("full", &m), 0);
    assert_int_equal(m, VIMG_PREALLOC_FULL);
    assert_int_equal(vimg_prealloc_parse("sometimes", &m), -EINVAL);
}

static void test_opts_parse(void **state)
{
    (void)state;
    vimg_opts *o = NULL;

    assert_int_equal(vimg_opts_new(&o, "qcow2", VIMG_OPTS_CREATE), 0);
    assert_string_equal(vimg_opts_format(o), "qcow2");
    /* ",," is a comma inside a value; empty items are skipped */
    assert_int_equal(vimg_opts_parse(o, "backing_file=a,,b,,,backing_fmt="
                                        "raw,cluster_size=4k,"),
                     0);
    assert_string_equal(vimg_opts_get(o, "backing_file"), "a,b,");
    assert_string_equal(vimg_opts_get(o, "backing_fmt"), "raw");
    assert_string_equal(vimg_opts_get(o, "cluster_size"), "4k");
    assert_null(vimg_opts_get(o, "compat"));
    /* a later value replaces the earlier one */
    assert_int_equal(vimg_opts_parse(o, "cluster_size=512"), 0);
    assert_string_equal(vimg_opts_get(o, "cluster_size"), "512");

    vimg_error_clear();
    assert_error(vimg_opts_parse(o, "frobnicate=on"), -ENOENT,
                 "Invalid parameter 'frobnicate'");
    assert_error(vimg_opts_parse(o, "lazy_refcounts=maybe"), -EINVAL,
                 "Parameter 'lazy_refcounts' expects a boolean");
    assert_error(vimg_opts_parse(o, "cluster_size=abc"), -EINVAL,
                 "Parameter 'cluster_size' expects a size");
    assert_error(vimg_opts_parse(o, "refcount_bits=3x"), -EINVAL,
                 "Refcount width");
    assert_error(vimg_opts_parse(o, "compat=0.11"), -EINVAL,
                 "Invalid compatibility level: '0.11'");
    assert_error(vimg_opts_parse(o, "lazy_refcounts"), -EINVAL,
                 "expected key=value");
    assert_error(vimg_opts_parse(o, "encrypt.format=luks"), -ENOTSUP,
                 "not supported");
    /* file options are for measure only */
    assert_error(vimg_opts_set(o, "nocow", "on"), -ENOENT, "nocow");
    /* nothing of the refused items was kept */
    assert_null(vimg_opts_get(o, "lazy_refcounts"));
    vimg_opts_free(o);

    assert_int_equal(vimg_opts_new(&o, "raw", VIMG_OPTS_CREATE), 0);
    assert_error(vimg_opts_set(o, "cluster_size", "4k"), -ENOENT,
                 "Invalid parameter 'cluster_size'");
    vimg_opts_free(o);

    assert_int_equal(vimg_opts_new(&o, "raw", VIMG_OPTS_MEASURE), 0);
    assert_int_equal(vimg_opts_parse(o, "nocow=on,extent_size_hint=1M"), 0);
    assert_error(vimg_opts_set(o, "nocow", "maybe"), -EINVAL,
                 "expects 'on' or 'off'");
    vimg_opts_free(o);

    assert_error(vimg_opts_new(&o, "bogus", VIMG_OPTS_CREATE), -EINVAL,
                 "Unknown file format 'bogus'");
    assert_error(vimg_opts_new(&o, "raw", VIMG_OPTS_AMEND), -ENOTSUP,
                 "amendment");
}

static void test_opts_amend(void **state)
{
    (void)state;
    vimg_opts *o = NULL, *copy = NULL;

    assert_int_equal(vimg_opts_new(&o, "qcow2", VIMG_OPTS_AMEND), 0);
    assert_int_equal(vimg_opts_parse(o, "compat=v2,lazy_refcounts=off"), 0);
    assert_error(vimg_opts_parse(o, "cluster_size=4k"), -EINVAL,
                 "only supported for image creation");
    assert_error(vimg_opts_parse(o, "compat=1.2"), -EINVAL,
                 "Unknown compatibility level 1.2");
    assert_int_equal(vimg_opts_copy(&copy, o), 0);
    assert_string_equal(vimg_opts_get(copy, "compat"), "v2");
    vimg_opts_free(o);
    vimg_opts_free(copy);
}

/* What F printed; free() it */
static char *printed(FILE *f, char **buf)
{
    fclose(f);
    return *buf;
}

static void test_opts_help_and_describe(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_int_equal(vimg_format_print_options("raw", VIMG_OPTS_CREATE, f),
                     0);
    assert_string_equal(printed(f, &buf),
                        "Supported options:\n"
                        "  size=<size>            Virtual disk size\n"
                        "  preallocation=<str>    off, falloc, full\n");
    free(buf);
    vimg_error_clear();
    assert_error(vimg_format_print_options("bogus", 0, stdout), -EINVAL,
                 "bogus");

    const struct vimg_option *t = vimg_format_options("qcow2");
    assert_non_null(t);
    bool has_compat = false;
    for (; t->name; t++) {
        if (!strcmp(t->name, "compat")) {
            has_compat = true;
            assert_string_equal(t->default_value, "1.1");
            assert_true(t->flags & VIMG_OPTION_AMENDABLE);
        }
    }
    assert_true(has_compat);

    vimg_opts *o = NULL;
    assert_int_equal(vimg_opts_new(&o, "raw", VIMG_OPTS_CREATE), 0);
    assert_int_equal(vimg_opts_parse(o, "size=1M"), 0);
    char *d = vimg_opts_describe(o);
    assert_string_equal(d, "size=1048576");
    free(d);
    vimg_opts_free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_prealloc_parse),
        cmocka_unit_test(test_opts_parse),
        cmocka_unit_test(test_opts_amend),
        cmocka_unit_test(test_opts_help_and_describe),
        cmocka_unit_test(test_capabilities_raw),
        cmocka_unit_test(test_capabilities_qcow2),
        cmocka_unit_test(test_open_opts),
        cmocka_unit_test(test_check_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
