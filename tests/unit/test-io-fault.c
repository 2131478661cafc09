/* SPDX-License-Identifier: MIT */
/*
 * test-io-fault.c: the fault injection wrapper: the Nth read, write or
 * flush fails with -EIO and does not reach the file below; counters are
 * per kind and keep running; sticky faults keep failing; 0 disables.
 */
#include "unit.h"

static struct vimg_io *fault_new(unsigned r, unsigned w, unsigned f,
                                 bool sticky)
{
    struct vimg_io *mem = NULL, *io = NULL;
    const struct vimg_io_fault_plan plan = {
        .fail_read_n = r, .fail_write_n = w, .fail_flush_n = f,
        .sticky = sticky};

    assert_int_equal(vimg_io_mem_new(&mem, "0123456789", 10, "inner.img"),
                     0);
    assert_int_equal(vimg_io_fault_new(&io, mem, &plan), 0);
    assert_string_equal(io->name, "inner.img");
    return io;
}

static int rd(struct vimg_io *io)
{
    char buf[4];

    return vimg_io_pread(io, buf, sizeof(buf), 0);
}

static void test_nth_read(void **state)
{
    (void)state;
    struct vimg_io *io = fault_new(3, 0, 0, false);
    char buf[4];

    assert_int_equal(rd(io), 0);
    assert_int_equal(rd(io), 0);
    assert_int_equal(vimg_io_fault_count(io), 0);
    vimg_error_clear();
    memset(buf, 'z', sizeof(buf));
    assert_error(vimg_io_pread(io, buf, sizeof(buf), 0x1234), -EIO,
                 "injected read fault at 0x1234");
    assert_memory_equal(buf, "zzzz", 4); /* nothing read */
    assert_int_equal(vimg_io_fault_count(io), 1);
    /* not sticky: the 4th and later work */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(vimg_io_pread(io, buf, sizeof(buf), 2), 0);
        assert_memory_equal(buf, "2345", 4);
    }
    assert_int_equal(vimg_io_fault_count(io), 1);
    /* writes and flushes were never planned to fail */
    assert_int_equal(vimg_io_pwrite(io, "ab", 2, 0), 0);
    assert_int_equal(vimg_io_flush(io), 0);
    vimg_io_close(io);
}

static void test_nth_write(void **state)
{
    (void)state;
    struct vimg_io *io = fault_new(0, 2, 0, false);
    char buf[10];

    /* reads do not count towards the write plan */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rd(io), 0);
    }
    assert_int_equal(vimg_io_pwrite(io, "A", 1, 0), 0);
    vimg_error_clear();
    assert_error(vimg_io_pwrite(io, "B", 1, 1), -EIO, "injected write");
    assert_int_equal(vimg_io_pwrite(io, "C", 1, 2), 0);
    /* the failed write did not reach the file */
    assert_int_equal(vimg_io_pread(io, buf, 10, 0), 0);
    assert_memory_equal(buf, "A1C3456789", 10);
    assert_int_equal(vimg_io_fault_count(io), 1);
    vimg_io_close(io);

    /* truncate counts as a write, on the same counter */
    io = fault_new(0, 2, 0, false);
    assert_int_equal(vimg_io_pwrite(io, "w", 1, 0), 0);
    vimg_error_clear();
    assert_error(vimg_io_truncate(io, 5), -EIO, "injected truncate");
    uint64_t size = 0;
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 10);
    assert_int_equal(vimg_io_truncate(io, 20), 0);
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 20);
    vimg_io_close(io);
}

static void test_nth_flush(void **state)
{
    (void)state;
    struct vimg_io *io = fault_new(0, 0, 1, false);

    vimg_error_clear();
    assert_error(vimg_io_flush(io), -EIO, "injected flush");
    assert_int_equal(vimg_io_flush(io), 0);
    assert_int_equal(vimg_io_flush(io), 0);
    assert_int_equal(vimg_io_fault_count(io), 1);
    vimg_io_close(io);
}

static void test_sticky(void **state)
{
    (void)state;
    struct vimg_io *io = fault_new(2, 3, 1, true);

    assert_int_equal(rd(io), 0);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rd(io), -EIO);
    }
    assert_int_equal(vimg_io_fault_count(io), 5);
    assert_int_equal(vimg_io_pwrite(io, "x", 1, 0), 0);
    assert_int_equal(vimg_io_pwrite(io, "x", 1, 0), 0);
    assert_int_equal(vimg_io_pwrite(io, "x", 1, 0), -EIO);
    assert_int_equal(vimg_io_pwrite(io, "x", 1, 0), -EIO);
    assert_int_equal(vimg_io_flush(io), -EIO);
    assert_int_equal(vimg_io_flush(io), -EIO);
    assert_int_equal(vimg_io_fault_count(io), 9);
    vimg_io_close(io);
}

static void test_disabled(void **state)
{
    (void)state;
    struct vimg_io *io = fault_new(0, 0, 0, true);

    for (int i = 0; i < 100; i++) {
        assert_int_equal(rd(io), 0);
        assert_int_equal(vimg_io_pwrite(io, "x", 1, 0), 0);
        assert_int_equal(vimg_io_flush(io), 0);
    }
    assert_int_equal(vimg_io_fault_count(io), 0);
    /* everything else passes through */
    uint64_t size = 0, n = 0;
    assert_int_equal(vimg_io_get_size(io, &size), 0);
    assert_int_equal(size, 10);
    assert_int_equal(vimg_io_data_status(io, 0, 10, &n), 1);
    assert_int_equal(n, 10);
    vimg_io_close(io);
}

/* The workload loop the style guide describes: N = 1, 2, ... until no
 * fault fires; each run fails cleanly until then. */
static void test_fault_loop(void **state)
{
    (void)state;
    unsigned n;

    for (n = 1; n < 100; n++) {
        struct vimg_io *io = fault_new(n, 0, 0, false);
        int ret = 0;
        for (int i = 0; i < 7 && ret == 0; i++) {
            ret = rd(io);
        }
        const unsigned faults = vimg_io_fault_count(io);
        vimg_io_close(io);
        if (ret == 0) {
            assert_int_equal(faults, 0);
            break;
        }
        assert_int_equal(ret, -EIO);
        assert_int_equal(faults, 1);
    }
    assert_int_equal(n, 8); /* the 7 reads failed in turn, then none */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nth_read),
        cmocka_unit_test(test_nth_write),
        cmocka_unit_test(test_nth_flush),
        cmocka_unit_test(test_sticky),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_fault_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
