/* SPDX-License-Identifier: MIT */
/*
 * test-qcow2-cluster.c: qcow2_l2_entry_type, the classification of plain
 * and extended L2 entries (qcow2.txt, "Cluster mapping" and "Extended L2
 * Entries"), every enum value including the invalid bitmaps, and the
 * external data file case where host offset 0 is a real cluster.
 */
#include "unit.h"

#include "formats/qcow2/qcow2.h"

#define HOST 0x50000ull /* a cluster-aligned host offset */
#define COPIED (1ull << 63)
#define COMPRESSED (1ull << 62)
#define ZERO 1ull

static void init_state(struct qcow2_state *s, bool extl2, bool data_file)
{
    memset(s, 0, sizeof(*s));
    s->cluster_bits = 16;
    s->cluster_size = 1ull << 16;
    s->has_subclusters = extl2;
    s->l2_entry_bytes = extl2 ? 16 : 8;
    s->l2_bits = extl2 ? 12 : 13;
    s->subcluster_bits = 11;
    s->has_data_file = data_file;
}

static enum qcow2_subcluster_type type(const struct qcow2_state *s,
                                       uint64_t entry, uint64_t bitmap,
                                       unsigned sc)
{
    return qcow2_l2_entry_type(s, entry, bitmap, sc);
}

static void test_plain(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, false, false);
    assert_int_equal(type(&s, 0, 0, 0), QCOW2_SC_UNALLOCATED);
    assert_int_equal(type(&s, HOST, 0, 0), QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, HOST | COPIED, 0, 0), QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, ZERO, 0, 0), QCOW2_SC_ZERO_PLAIN);
    assert_int_equal(type(&s, ZERO | COPIED, 0, 0), QCOW2_SC_ZERO_PLAIN);
    assert_int_equal(type(&s, HOST | ZERO, 0, 0), QCOW2_SC_ZERO_ALLOC);
    assert_int_equal(type(&s, HOST | ZERO | COPIED, 0, 0),
                     QCOW2_SC_ZERO_ALLOC);
    /* without an external data file, COPIED alone is not an allocation */
    assert_int_equal(type(&s, COPIED, 0, 0), QCOW2_SC_UNALLOCATED);
    /* the top host offset bit (55) and the lowest (9) count */
    assert_int_equal(type(&s, 1ull << 55, 0, 0), QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, 1ull << 9, 0, 0), QCOW2_SC_NORMAL);
    /* bits 1..8 and 56..61 are not offset bits */
    assert_int_equal(type(&s, 0x1feull, 0, 0), QCOW2_SC_UNALLOCATED);
    assert_int_equal(type(&s, 0x3full << 56, 0, 0), QCOW2_SC_UNALLOCATED);
    /* compressed wins over everything; its other bits mean something else */
    assert_int_equal(type(&s, COMPRESSED, 0, 0), QCOW2_SC_COMPRESSED);
    assert_int_equal(type(&s, COMPRESSED | HOST | ZERO, 0, 0),
                     QCOW2_SC_COMPRESSED);
    /* the bitmap and subcluster index are ignored for plain L2 */
    assert_int_equal(type(&s, HOST, UINT64_MAX, 5), QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, 0, UINT64_MAX, 31), QCOW2_SC_UNALLOCATED);
}

static void test_plain_data_file(void **state)
{
    (void)state;
    struct qcow2_state s;

    /* an external data file maps guest cluster N to host offset N * size,
     * so host offset 0 is valid: COPIED marks it allocated */
    init_state(&s, false, true);
    assert_int_equal(type(&s, COPIED, 0, 0), QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, COPIED | ZERO, 0, 0), QCOW2_SC_ZERO_ALLOC);
    assert_int_equal(type(&s, 0, 0, 0), QCOW2_SC_UNALLOCATED);
    assert_int_equal(type(&s, ZERO, 0, 0), QCOW2_SC_ZERO_PLAIN);
    assert_int_equal(type(&s, HOST, 0, 0), QCOW2_SC_NORMAL);
}

/* Bitmap with the allocation bit for SC (bit SC) and/or zero (32 + SC). */
static uint64_t bm(unsigned sc, bool alloc, bool zero)
{
    return (alloc ? 1ull << sc : 0) | (zero ? 1ull << (32 + sc) : 0);
}

static void test_extended(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, true, false);
    for (unsigned sc = 0; sc < 32; sc++) {
        /* with a host cluster */
        assert_int_equal(type(&s, HOST, bm(sc, true, false), sc),
                         QCOW2_SC_NORMAL);
        assert_int_equal(type(&s, HOST | COPIED, bm(sc, true, false), sc),
                         QCOW2_SC_NORMAL);
        assert_int_equal(type(&s, HOST, bm(sc, false, true), sc),
                         QCOW2_SC_ZERO_ALLOC);
        assert_int_equal(type(&s, HOST, 0, sc), QCOW2_SC_UNALLOCATED_ALLOC);
        assert_int_equal(type(&s, HOST, bm(sc, true, true), sc),
                         QCOW2_SC_INVALID);
        /* without one */
        assert_int_equal(type(&s, 0, 0, sc), QCOW2_SC_UNALLOCATED);
        assert_int_equal(type(&s, 0, bm(sc, false, true), sc),
                         QCOW2_SC_ZERO_PLAIN);
        assert_int_equal(type(&s, 0, bm(sc, true, false), sc),
                         QCOW2_SC_INVALID);
        assert_int_equal(type(&s, 0, bm(sc, true, true), sc),
                         QCOW2_SC_INVALID);
        /* COPIED without an offset is still no host cluster */
        assert_int_equal(type(&s, COPIED, bm(sc, true, false), sc),
                         QCOW2_SC_INVALID);
        assert_int_equal(type(&s, COPIED, 0, sc), QCOW2_SC_UNALLOCATED);
    }
}

/* Only subcluster SC's own two bits decide its type. */
static void test_extended_other_bits(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, true, false);
    for (unsigned sc = 0; sc < 32; sc++) {
        const uint64_t others_alloc = 0xffffffffull & ~(1ull << sc);
        const uint64_t others_zero = others_alloc << 32;
        assert_int_equal(type(&s, HOST, others_alloc, sc),
                         QCOW2_SC_UNALLOCATED_ALLOC);
        assert_int_equal(type(&s, HOST, others_zero, sc),
                         QCOW2_SC_UNALLOCATED_ALLOC);
        assert_int_equal(type(&s, HOST, others_zero | bm(sc, true, false), sc),
                         QCOW2_SC_NORMAL);
        assert_int_equal(type(&s, HOST, others_alloc | bm(sc, false, true), sc),
                         QCOW2_SC_ZERO_ALLOC);
        const uint64_t others_zero_plain = others_zero | bm(sc, false, true);
        assert_int_equal(type(&s, 0, others_zero_plain, sc),
                         QCOW2_SC_ZERO_PLAIN);
        assert_int_equal(type(&s, 0, others_zero, sc), QCOW2_SC_UNALLOCATED);
        /* bit 0 of the entry (the zero flag of plain L2) is not looked
         * at with extended entries: the bitmap says what reads as zero */
        assert_int_equal(type(&s, HOST | ZERO, bm(sc, true, false), sc),
                         QCOW2_SC_NORMAL);
        assert_int_equal(type(&s, ZERO, 0, sc), QCOW2_SC_UNALLOCATED);
        assert_int_equal(type(&s, HOST | ZERO, 0, sc),
                         QCOW2_SC_UNALLOCATED_ALLOC);
    }
}

/*
 * An entry that breaks the rules in any subcluster is invalid as a whole,
 * whichever subcluster is asked about (qcow2.txt, "Extended L2 Entries":
 * an allocation bit needs a host cluster, and a subcluster cannot be both
 * allocated and zero).  QEMU's qcow2_get_subcluster_type() checks the
 * whole bitmap this way, so qemu-img refuses to read such an entry; a
 * reader that looks only at the asked subcluster's bits would return
 * data from an entry qemu calls corrupt.
 */
static void test_extended_invalid_whole_entry(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, true, false);
    for (unsigned sc = 0; sc < 32; sc++) {
        const unsigned other = (sc + 1) % 32;
        /* no host cluster, but another subcluster claims to be allocated */
        assert_int_equal(type(&s, 0, bm(other, true, false), sc),
                         QCOW2_SC_INVALID);
        assert_int_equal(type(&s, 0, bm(other, true, false) |
                                         bm(sc, false, true), sc),
                         QCOW2_SC_INVALID);
        /* another subcluster is both allocated and zero */
        assert_int_equal(type(&s, HOST, bm(other, true, true), sc),
                         QCOW2_SC_INVALID);
        assert_int_equal(type(&s, HOST, bm(other, true, true) |
                                            bm(sc, true, false), sc),
                         QCOW2_SC_INVALID);
    }
}

static void test_extended_data_file(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, true, true);
    /* host offset 0 with COPIED is an allocated cluster */
    assert_int_equal(type(&s, COPIED, bm(0, true, false), 0),
                     QCOW2_SC_NORMAL);
    assert_int_equal(type(&s, COPIED, bm(7, false, true), 7),
                     QCOW2_SC_ZERO_ALLOC);
    assert_int_equal(type(&s, COPIED, 0, 31), QCOW2_SC_UNALLOCATED_ALLOC);
    assert_int_equal(type(&s, COPIED, bm(3, true, true), 3),
                     QCOW2_SC_INVALID);
    /* without COPIED, offset 0 is no cluster */
    assert_int_equal(type(&s, 0, bm(0, true, false), 0), QCOW2_SC_INVALID);
    assert_int_equal(type(&s, 0, bm(0, false, true), 0), QCOW2_SC_ZERO_PLAIN);
    assert_int_equal(type(&s, 0, 0, 0), QCOW2_SC_UNALLOCATED);
}

static void test_extended_compressed(void **state)
{
    (void)state;
    struct qcow2_state s;

    init_state(&s, true, false);
    assert_int_equal(type(&s, COMPRESSED | HOST, 0, 0), QCOW2_SC_COMPRESSED);
    assert_int_equal(type(&s, COMPRESSED | 0x1234, 0, 9),
                     QCOW2_SC_COMPRESSED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_plain_data_file),
        cmocka_unit_test(test_extended),
        cmocka_unit_test(test_extended_other_bits),
        cmocka_unit_test(test_extended_invalid_whole_entry),
        cmocka_unit_test(test_extended_data_file),
        cmocka_unit_test(test_extended_compressed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
