/* SPDX-License-Identifier: MIT */
/*
 * test-io-mem.c: the in-memory file: reads past the end give zeroes,
 * writes past the end grow it (the gap reads as zeroes), truncate both
 * ways, and the data is a copy of what it was made from.
 */
#include "unit.h"

static struct vimg_io *mem_new(const void *data, size_t len)
{
    struct vimg_io *io = NULL;

    assert_int_equal(vimg_io_mem_new(&io, data, len, "test.img"), 0);
    assert_non_null(io);
    assert_string_equal(io->name, "test.img");
    return io;
}

static uint64_t size_of(struct vimg_io *io)
{
    uint64_t size = 12345;

    assert_int_equal(vimg_io_get_size(io, &size), 0);
    return size;
}

static void test_read(void **state)
{
    (void)state;
    char src[] = "hello, world";
    struct vimg_io *io = mem_new(src, 12);
    uint8_t buf[32];

    /* the file is a copy */
    src[0] = 'J';
    assert_int_equal(size_of(io), 12);
    assert_int_equal(vimg_io_pread(io, buf, 12, 0), 0);
    assert_memory_equal(buf, "hello, world", 12);

    /* straddling the end: the rest is zeroes */
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 20, 7), 0);
    assert_memory_equal(buf, "world", 5);
    for (int i = 5; i < 20; i++) {
        assert_int_equal(buf[i], 0);
    }
    assert_int_equal(buf[20], 0xee);

    /* wholly past the end, even far past */
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 16, 12), 0);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(buf[i], 0);
    }
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 16, UINT64_MAX - 8), 0);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(buf[i], 0);
    }
    /* reading does not grow it */
    assert_int_equal(size_of(io), 12);
    vimg_io_close(io);
}

static void test_write_grows(void **state)
{
    (void)state;
    struct vimg_io *io = mem_new("abcd", 4);
    uint8_t buf[64];
    size_t len;

    /* inside */
    assert_int_equal(vimg_io_pwrite(io, "XY", 2, 1), 0);
    assert_int_equal(size_of(io), 4);
    /* past the end, leaving a gap */
    assert_int_equal(vimg_io_pwrite(io, "tail", 4, 40), 0);
    assert_int_equal(size_of(io), 44);
    const uint8_t *data = vimg_io_mem_data(io, &len);
    assert_int_equal(len, 44);
    assert_memory_equal(data, "aXYd", 4);
    for (int i = 4; i < 40; i++) {
        assert_int_equal(data[i], 0);
    }
    assert_memory_equal(data + 40, "tail", 4);
    assert_int_equal(vimg_io_pread(io, buf, 44, 0), 0);
    assert_memory_equal(buf, data, 44);

    /* straddling the end */
    assert_int_equal(vimg_io_pwrite(io, "123456", 6, 42), 0);
    assert_int_equal(size_of(io), 48);
    assert_int_equal(vimg_io_pread(io, buf, 8, 40), 0);
    assert_memory_equal(buf, "ta123456", 8);

    /* an empty write at the end does not change anything */
    assert_int_equal(vimg_io_pwrite(io, "", 0, 48), 0);
    assert_int_equal(size_of(io), 48);

    /* offset + count overflows: refused, file unchanged */
    vimg_error_clear();
    assert_error(vimg_io_pwrite(io, "zz", 2, UINT64_MAX), -EFBIG, "test.img");
    /* too large to hold */
    vimg_error_clear();
    assert_error(vimg_io_pwrite(io, "zz", 2, 1ull << 63), -EFBIG, "large");
    assert_int_equal(size_of(io), 48);
    assert_int_equal(vimg_io_flush(io), 0);
    vimg_io_close(io);
}

static void test_empty_and_truncate(void **state)
{
    (void)state;
    struct vimg_io *io = mem_new(NULL, 0);
    uint8_t buf[16];

    assert_int_equal(size_of(io), 0);
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, sizeof(buf), 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0);
    }
    assert_int_equal(vimg_io_pwrite(io, "0123456789", 10, 0), 0);
    assert_int_equal(vimg_io_truncate(io, 4), 0);
    assert_int_equal(size_of(io), 4);
    memset(buf, 0xee, sizeof(buf));
    assert_int_equal(vimg_io_pread(io, buf, 10, 0), 0);
    assert_memory_equal(buf, "0123\0\0\0\0\0\0", 10);
    /* growing again gives zeroes, not the old bytes */
    assert_int_equal(vimg_io_truncate(io, 10), 0);
    assert_int_equal(size_of(io), 10);
    assert_int_equal(vimg_io_pread(io, buf, 10, 0), 0);
    assert_memory_equal(buf, "0123\0\0\0\0\0\0", 10);
    assert_int_equal(vimg_io_truncate(io, 0), 0);
    assert_int_equal(size_of(io), 0);
    /* no hole support: everything is data */
    uint64_t n = 0;
    assert_int_equal(vimg_io_data_status(io, 0, 100, &n), 1);
    assert_int_equal(n, 100);
    vimg_io_close(io);
    vimg_io_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read),
        cmocka_unit_test(test_write_grows),
        cmocka_unit_test(test_empty_and_truncate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
