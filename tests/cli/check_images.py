# SPDX-License-Identifier: MIT
"""A small qcow2 parser and patcher for the `check` tests.

The damaged images of test_check.py and test_check_crash.py are made by
qemu-img and qemu-io, then broken in place by the patches below.  Each
patch finds what to break through the metadata (header, L1, L2, refcount
table and blocks, snapshot table; qcow2 spec sections "Header", "Cluster
mapping", "Host cluster management", "Snapshots"), so it works for any
cluster size, refcount width and compat level.
"""
import struct

# Header fields: (byte offset, struct format), big-endian (spec "Header").
HDR = {
    'magic': (0, '>I'), 'version': (4, '>I'),
    'backing_file_offset': (8, '>Q'), 'backing_file_size': (16, '>I'),
    'cluster_bits': (20, '>I'), 'size': (24, '>Q'),
    'crypt_method': (32, '>I'), 'l1_size': (36, '>I'),
    'l1_table_offset': (40, '>Q'), 'refcount_table_offset': (48, '>Q'),
    'refcount_table_clusters': (56, '>I'), 'nb_snapshots': (60, '>I'),
    'snapshots_offset': (64, '>Q'), 'incompatible_features': (72, '>Q'),
    'compatible_features': (80, '>Q'), 'autoclear_features': (88, '>Q'),
    'refcount_order': (96, '>I'), 'header_length': (100, '>I'),
}
OFFSET_MASK = 0x00fffffffffffe00      # L1/L2/reftable entry bits 9..55
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1                              # L2 bit 0 (v3, not extended L2)
L1_RESERVED = 0x7f000000000001ff      # bits 0-8 and 56-62
L2_RESERVED = 0x3f000000000001fe      # bits 1-8 and 56-61 (standard)

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0


class Qcow2:
    """A qcow2 file in memory.  Read it, patch it, save() it."""

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            self.data = bytearray(f.read())
        assert self['magic'] == 0x514649fb, f'{path}: not qcow2'

    def save(self):
        with open(self.path, 'wb') as f:
            f.write(self.data)

    # --- raw access ------------------------------------------------------
    def get(self, off, fmt='>Q'):
        return struct.unpack_from(fmt, self.data, off)[0]

    def put(self, off, value, fmt='>Q'):
        struct.pack_into(fmt, self.data, off, value)

    def __getitem__(self, field):
        if field == 'refcount_order' and self['version'] < 3:
            return 4
        return self.get(HDR[field][0], HDR[field][1])

    def __setitem__(self, field, value):
        self.put(HDR[field][0], value, HDR[field][1])

    # --- geometry --------------------------------------------------------
    @property
    def eof(self):
        return len(self.data)

    @property
    def cluster_bits(self):
        return self['cluster_bits']

    @property
    def cluster_size(self):
        return 1 << self.cluster_bits

    @property
    def extended_l2(self):
        return self['version'] >= 3 and bool(
            self['incompatible_features'] & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self):
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self):
        return self.cluster_size // self.l2_entry_size

    @property
    def refcount_bits(self):
        return 1 << self['refcount_order']

    @property
    def refblock_entries(self):
        return self.cluster_size * 8 // self.refcount_bits

    def nb_clusters(self):
        return (self.eof + self.cluster_size - 1) // self.cluster_size

    # --- L1 / L2 ---------------------------------------------------------
    def l1_entry_off(self, i, l1_offset=None):
        if l1_offset is None:
            l1_offset = self['l1_table_offset']
        return l1_offset + 8 * i

    def l1(self, l1_offset=None, l1_size=None):
        """[(file offset of the entry, value)] of the active (or given) L1."""
        if l1_size is None:
            l1_size = self['l1_size']
        return [(self.l1_entry_off(i, l1_offset),
                 self.get(self.l1_entry_off(i, l1_offset)))
                for i in range(l1_size)]

    def l2_tables(self):
        """Host offsets of the L2 tables the active L1 points to."""
        return [e & OFFSET_MASK for _, e in self.l1() if e & OFFSET_MASK]

    def l2(self, l2_offset):
        """[(file offset of the entry, descriptor)] of one L2 table."""
        es = self.l2_entry_size
        return [(l2_offset + es * j, self.get(l2_offset + es * j))
                for j in range(self.l2_entries)]

    def data_entries(self):
        """Every standard allocated L2 entry of the active L1:
        [(entry file offset, descriptor)], in guest order."""
        out = []
        for l2 in self.l2_tables():
            for off, e in self.l2(l2):
                if not e & COMPRESSED and e & OFFSET_MASK:
                    out.append((off, e))
        assert out, f'{self.path}: no allocated data cluster'
        return out

    # --- refcounts -------------------------------------------------------
    def reftable_off(self, i):
        return self['refcount_table_offset'] + 8 * i

    def refblock_of(self, cluster):
        """File offset of the refcount block covering CLUSTER (0: none)."""
        i = cluster // self.refblock_entries
        if i >= self['refcount_table_clusters'] * self.cluster_size // 8:
            return 0
        return self.get(self.reftable_off(i)) & OFFSET_MASK

    def _refcount_loc(self, cluster):
        rb = self.refblock_of(cluster)
        assert rb, f'no refcount block for cluster {cluster}'
        return rb, cluster % self.refblock_entries

    def refcount(self, cluster):
        rb, idx = self._refcount_loc(cluster)
        bits = self.refcount_bits
        if bits < 8:
            per = 8 // bits
            byte = self.data[rb + idx // per]
            return (byte >> (idx % per * bits)) & ((1 << bits) - 1)
        nbytes = bits // 8
        return int.from_bytes(self.data[rb + idx * nbytes:
                                        rb + (idx + 1) * nbytes], 'big')

    def set_refcount(self, cluster, value):
        rb, idx = self._refcount_loc(cluster)
        bits = self.refcount_bits
        assert 0 <= value < 1 << bits
        if bits < 8:
            per = 8 // bits
            shift = idx % per * bits
            mask = ((1 << bits) - 1) << shift
            pos = rb + idx // per
            self.data[pos] = (self.data[pos] & ~mask) | (value << shift)
            return
        nbytes = bits // 8
        self.data[rb + idx * nbytes:rb + (idx + 1) * nbytes] = \
            value.to_bytes(nbytes, 'big')

    # --- snapshots -------------------------------------------------------
    def snapshots(self):
        """[(file offset of the snapshot table entry, l1_offset, l1_size)]."""
        out = []
        off = self['snapshots_offset']
        for _ in range(self['nb_snapshots']):
            l1_off = self.get(off)
            l1_size = self.get(off + 8, '>I')
            id_len = self.get(off + 12, '>H')
            name_len = self.get(off + 14, '>H')
            extra = self.get(off + 36, '>I')
            out.append((off, l1_off, l1_size))
            off += 40 + extra + id_len + name_len
            off = (off + 7) & ~7
        return out

    # --- helpers for the patches -----------------------------------------
    def align_up(self, n):
        cs = self.cluster_size
        return (n + cs - 1) // cs * cs

    def append_clusters(self, n):
        """Grow the file by N clusters (of 0xee bytes); return the first
        new cluster index."""
        start = self.align_up(self.eof)
        self.data += bytes(start - self.eof)
        self.data += b'\xee' * (n * self.cluster_size)
        return start // self.cluster_size


# --- the patches ---------------------------------------------------------------
# Each takes a Qcow2 and changes self.data; the caller saves.

def leak_appended(n):
    """N clusters past the old end of file, with refcount 1 and no user."""
    def patch(q):
        first = q.append_clusters(n)
        end = first
        while end < first + n and q.refblock_of(end):
            q.set_refcount(end, 1)      # only where a refcount block exists
            end += 1
        assert end > first, 'no refcount block covers the end of the file'
        del q.data[end * q.cluster_size:]
    return patch


def leak_dropped_l2_entry(q):
    """Drop a reference: the L2 entry goes, its data cluster leaks."""
    off, _ = q.data_entries()[1]
    q.put(off, 0)


def double_reference(q):
    """The second data entry points at the first one's cluster: that
    cluster has refcount 1 and two users; the second's cluster leaks."""
    (_, e0), (off1, _) = q.data_entries()[:2]
    q.put(off1, e0)


def l2_entry_past_eof(q):
    off, e = q.data_entries()[0]
    q.put(off, (e & ~OFFSET_MASK) | q.align_up(q.eof + 64 * q.cluster_size))


def l2_entry_unaligned(q):
    """Host offset not a multiple of the cluster size (needs clusters of
    at least 1 KiB: smaller ones have no such offset bits)."""
    assert q.cluster_size >= 1024
    off, e = q.data_entries()[0]
    q.put(off, e + 512)


def l2_overlaps_reftable(q):
    """The first L1 entry points at the refcount table."""
    off, e = q.l1()[0]
    assert e & OFFSET_MASK
    q.put(off, (e & ~OFFSET_MASK) | q['refcount_table_offset'])


def copied_set_on_shared(q):
    """After a snapshot: set COPIED on every shared (refcount 2) entry."""
    n = 0
    for off, e in q.data_entries():
        if q.refcount((e & OFFSET_MASK) >> q.cluster_bits) > 1:
            q.put(off, e | COPIED)
            n += 1
    assert n, 'no shared cluster'


def copied_missing(q):
    """Clear COPIED on one data entry with refcount 1."""
    for off, e in q.data_entries():
        if q.refcount((e & OFFSET_MASK) >> q.cluster_bits) == 1:
            assert e & COPIED
            q.put(off, e & ~COPIED)
            return
    raise AssertionError('no unshared cluster')


def copied_missing_l1(q):
    """Clear COPIED on an L1 entry whose L2 table has refcount 1."""
    off, e = q.l1()[0]
    assert e & COPIED
    q.put(off, e & ~COPIED)


def reftable_entry_zero(q):
    """Refcount table entry 0 cleared (offset 0, i.e. it would point at the
    header cluster: the spec reads it as "no refcount block"): every
    cluster it covered now has refcount 0, and the block itself leaks."""
    q.put(q.reftable_off(0), 0)


def reftable_entry_at_l1(q):
    """Refcount table entry 0 points at the L1 table (metadata overlap)."""
    q.put(q.reftable_off(0), q['l1_table_offset'] & ~(q.cluster_size - 1))


def refblock_unaligned(q):
    """Refcount table entry 0 is not cluster aligned: no refcount can be
    read, so the check cannot complete (qemu-img: check errors, exit 1)."""
    assert q.cluster_size >= 1024
    q.put(q.reftable_off(0), q.get(q.reftable_off(0)) + 512)


def refblock_entry_zero(q):
    """A used data cluster gets refcount 0."""
    _, e = q.data_entries()[0]
    q.set_refcount((e & OFFSET_MASK) >> q.cluster_bits, 0)


def refblock_entry_zero_l2(q):
    """An L2 table gets refcount 0."""
    q.set_refcount(q.l2_tables()[0] >> q.cluster_bits, 0)


def snapshot_l1_unaligned(q):
    off, l1_off, _ = q.snapshots()[0]
    q.put(off, l1_off + 8)


def snapshot_l1_past_eof(q):
    off, _, _ = q.snapshots()[0]
    q.put(off, q.align_up(q.eof + 64 * q.cluster_size))


def l2_reserved_bits(q):
    off, e = q.data_entries()[0]
    q.put(off, e | 1 << 57 | 1 << 3)


def l1_reserved_bits(q):
    off, e = q.l1()[0]
    q.put(off, e | 1 << 60 | 1 << 2)


def truncate_last_clusters(n):
    def patch(q):
        del q.data[q.align_up(q.eof) - n * q.cluster_size:]
    return patch


def set_incompat(bit):
    def patch(q):
        q['incompatible_features'] = q['incompatible_features'] | bit
    return patch


def lazy_dirty(q):
    """What a crash under lazy_refcounts=on leaves: dirty bit set, and the
    refcounts of the last written data clusters never updated (0)."""
    assert q['compatible_features'] & COMPAT_LAZY_REFCOUNTS
    q['incompatible_features'] = q['incompatible_features'] | INCOMPAT_DIRTY
    entries = q.data_entries()
    for _, e in entries[len(entries) // 2:]:
        q.set_refcount((e & OFFSET_MASK) >> q.cluster_bits, 0)


def extl2_alloc_and_zero(q):
    """Extended L2: subcluster 1 of the first data entry is marked both
    allocated and zero."""
    assert q.extended_l2
    off, _ = q.data_entries()[0]
    bm = q.get(off + 8)
    q.put(off + 8, bm | 1 << 1 | 1 << 33)


def many_leaks_and_reftable_zero(q):
    """Much repair work for the crash test: a hundred leaked clusters and
    refcount table entry 0 cleared (refcounts rebuilt from scratch)."""
    leak_appended(100)(q)
    reftable_entry_zero(q)


def combine(*patches):
    def patch(q):
        for p in patches:
            p(q)
    return patch
