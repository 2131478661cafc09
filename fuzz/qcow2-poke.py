#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""qcow2-poke.py: damage a qcow2 image in place, for the fuzz seed corpus.

    qcow2-poke.py FILE WHAT VALUE [WHAT VALUE ...]

WHAT is one of
  a header field       magic version backing_file_offset backing_file_size
                       cluster_bits size crypt_method l1_size l1_table_offset
                       refcount_table_offset refcount_table_clusters
                       nb_snapshots snapshots_offset incompatible_features
                       compatible_features autoclear_features refcount_order
                       header_length compression_type
  l1[N]                the Nth L1 entry
  reftable[N]          the Nth refcount table entry
  l2data               the first L2 entry of a normal (uncompressed) cluster
  l2comp               the first L2 entry of a compressed cluster
  l2comp.offset        only the host offset inside that compressed entry
  l2comp.sectors       only the "additional sectors" count of that entry
  at:OFF:SIZE          SIZE bytes (1, 2, 4 or 8) at file offset OFF, an
                       expression like VALUE (plus `comp`, the host offset
                       of the first compressed cluster)
  truncate             the file length
  ext                  append a header extension: VALUE is TYPE:HEXDATA
                       (type in hex), written over the end marker
VALUE is a Python expression over the names `eof` (file size), `cs`
(cluster size), `l1` (L1 table offset), `l2` (offset of the L2 table
holding l2data/l2comp), `old` (the current value) and the header fields.
All numbers are big-endian, as in the qcow2 specification ("Header",
"Cluster mapping", "Compressed Clusters Descriptor").
"""
import os
import struct
import sys

# (offset, struct format) of each header field, qcow2 spec "Header".
FIELDS = {
    'magic': (0, '>I'), 'version': (4, '>I'),
    'backing_file_offset': (8, '>Q'), 'backing_file_size': (16, '>I'),
    'cluster_bits': (20, '>I'), 'size': (24, '>Q'),
    'crypt_method': (32, '>I'), 'l1_size': (36, '>I'),
    'l1_table_offset': (40, '>Q'), 'refcount_table_offset': (48, '>Q'),
    'refcount_table_clusters': (56, '>I'), 'nb_snapshots': (60, '>I'),
    'snapshots_offset': (64, '>Q'), 'incompatible_features': (72, '>Q'),
    'compatible_features': (80, '>Q'), 'autoclear_features': (88, '>Q'),
    'refcount_order': (96, '>I'), 'header_length': (100, '>I'),
    'compression_type': (104, '>B'),
}
SIZES = {1: '>B', 2: '>H', 4: '>I', 8: '>Q'}
OFFSET_MASK = 0x00fffffffffffe00          # L1/L2 entry bits 9..55
COMPRESSED = 1 << 62


class Image:
    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            self.data = bytearray(f.read())
        self.hdr = {k: self.get(off, fmt) for k, (off, fmt) in FIELDS.items()}
        self.cs = 1 << self.hdr['cluster_bits']
        self.extended_l2 = bool(self.hdr['incompatible_features'] & 16)

    def get(self, off, fmt):
        n = struct.calcsize(fmt)
        if off + n > len(self.data):
            return 0
        return struct.unpack_from(fmt, self.data, off)[0]

    def put(self, off, fmt, value):
        n = struct.calcsize(fmt)
        if off + n > len(self.data):
            self.data.extend(bytes(off + n - len(self.data)))
        struct.pack_into(fmt, self.data, off, value & ((1 << (8 * n)) - 1))

    def l2_entries(self):
        """Yield (file offset of entry, entry, l2 table offset)."""
        l1 = self.hdr['l1_table_offset']
        esize = 16 if self.extended_l2 else 8
        for i in range(self.hdr['l1_size']):
            l2 = self.get(l1 + 8 * i, '>Q') & OFFSET_MASK
            if l2 == 0:
                continue
            for j in range(self.cs // esize):
                off = l2 + j * esize
                entry = self.get(off, '>Q')
                if entry:
                    yield off, entry, l2

    def find(self, compressed):
        for off, entry, l2 in self.l2_entries():
            if bool(entry & COMPRESSED) == compressed:
                return off, entry, l2
        sys.exit(f'{self.path}: no {"compressed" if compressed else "data"}'
                 ' L2 entry')


def add_extension(img, value):
    """Write extension TYPE:HEXDATA where the end marker is (qcow2 spec
    "Header extensions": type u32, length u32, data padded to 8)."""
    typ, hexdata = value.split(':')
    data = bytes.fromhex(hexdata)
    off = img.hdr['header_length'] if img.hdr['version'] >= 3 else 72
    while img.get(off, '>I') != 0:
        off += 8 + (img.get(off + 4, '>I') + 7) // 8 * 8
    padded = data + bytes(-len(data) % 8)
    img.data[off:off + 16 + len(padded)] = (
        struct.pack('>II', int(typ, 16), len(data)) + padded + bytes(8))


def main():
    if len(sys.argv) < 4 or len(sys.argv) % 2:
        sys.exit(__doc__)
    img = Image(sys.argv[1])
    for what, expr in zip(sys.argv[2::2], sys.argv[3::2]):
        names = dict(img.hdr, eof=len(img.data), cs=img.cs,
                     l1=img.hdr['l1_table_offset'], l2=0)
        # Which bits of which bytes WHAT covers: (offset, fmt, mask, shift).
        shift, mask = 0, None
        if what in FIELDS:
            off, fmt = FIELDS[what]
        elif what == 'ext':
            add_extension(img, expr)
            continue
        elif what == 'truncate':
            del img.data[eval(expr, {}, dict(names, old=len(img.data))):]
            continue
        elif what.startswith('l1['):
            off, fmt = names['l1'] + 8 * int(what[3:-1]), '>Q'
        elif what.startswith('reftable['):
            off = img.hdr['refcount_table_offset'] + 8 * int(what[9:-1])
            fmt = '>Q'
        elif what.startswith('at:'):
            _, o, n = what.split(':')
            if 'comp' in o:
                _, entry, _ = img.find(True)
                names['comp'] = entry & ((1 << (62 - (img.cs.bit_length()
                                                      - 1 - 8))) - 1)
            off, fmt = eval(o, {}, names), SIZES[int(n)]
        elif what.startswith('l2data') or what.startswith('l2comp'):
            off, _, names['l2'] = img.find(what.startswith('l2comp'))
            fmt = '>Q'
            # Compressed descriptor: x = 62 - (cluster_bits - 8) offset bits.
            x = 62 - (img.hdr['cluster_bits'] - 8)
            if what.endswith('.offset'):
                mask = (1 << x) - 1
            elif what.endswith('.sectors'):
                shift, mask = x, (1 << (62 - x)) - 1
        else:
            sys.exit(f'unknown field {what}')
        cur = img.get(off, fmt)
        old = cur if mask is None else (cur >> shift) & mask
        value = eval(expr, {}, dict(names, old=old))
        if mask is not None:
            value = (cur & ~(mask << shift)) | ((value & mask) << shift)
        img.put(off, fmt, value)
    with open(img.path, 'wb') as f:
        f.write(img.data)


if __name__ == '__main__':
    main()
