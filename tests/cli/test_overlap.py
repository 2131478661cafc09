# SPDX-License-Identifier: MIT
"""The overlap check: refcounts that lie must not let the write path
overwrite metadata.  The image is marked corrupt instead, as qemu does."""
import json
import os
import struct

import pytest

from conftest import BUILD_DIR, VIMG, run

WRITER = os.path.join(BUILD_DIR, 'tests', 'tools', 'crash-writer')


def test_allocation_over_an_l2_table_marks_corrupt(tmp_path):
    img = tmp_path / 'o.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         img, '4M'], check=True)
    run(['qemu-io', '-c', 'write -P 0x41 0 64k', img], check=True)
    # drop the refcount of the L2 table to 0: it looks free
    d = bytearray(img.read_bytes())
    l1 = struct.unpack('>Q', d[40:48])[0]
    l2 = struct.unpack('>Q', d[l1:l1 + 8])[0] & 0x00fffffffffffe00
    rt = struct.unpack('>Q', d[48:56])[0]
    rb = struct.unpack('>Q', d[rt:rt + 8])[0]
    c = l2 // 4096
    d[rb + 2 * c:rb + 2 * c + 2] = b'\0\0'
    img.write_bytes(bytes(d))
    table = bytes(d[l2:l2 + 4096])

    p = run([WRITER, 'run', img, '1'])
    assert p.returncode == 1
    assert 'marked corrupt' in p.stderr, p.stderr
    d = img.read_bytes()
    assert d[l2:l2 + 4096] == table, 'the L2 table was overwritten'
    info = json.loads(run(['qemu-img', 'info', '--output=json', img],
                          check=True).stdout)
    assert info['format-specific']['data']['corrupt'] is True
    # read-write opens are refused from now on, reads still work
    p = run([WRITER, 'run', img, '1'])
    assert p.returncode == 1 and 'corrupt' in p.stderr
    out = tmp_path / 'o.raw'
    p = run([VIMG, 'convert', '-O', 'raw', img,
             out])
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:65536] == b'\x41' * 65536


def refcount_to_zero(d, off, cluster_size):
    """Make the cluster at OFF look free (16-bit refcounts, one block)."""
    rt = struct.unpack('>Q', d[48:56])[0]
    rb = struct.unpack('>Q', d[rt:rt + 8])[0]
    c = off // cluster_size
    d[rb + 2 * c:rb + 2 * c + 2] = b'\0\0'


def bitmap_clusters(d):
    """(directory offset, [(table offset, [data cluster offsets])])"""
    off = struct.unpack('>I', d[100:104])[0]
    while True:
        t, length = struct.unpack('>II', d[off:off + 8])
        if t == 0x23852875:
            nb, _, _, doff = struct.unpack('>IIQQ', d[off + 8:off + 32])
            break
        assert t != 0, 'no bitmaps extension'
        off += 8 + (length + 7) // 8 * 8
    out, p = [], doff
    for _ in range(nb):
        to, ts, _, _, _, nl, ed = struct.unpack('>QIIBBHI', d[p:p + 24])
        data = [struct.unpack('>Q', d[to + 8 * j:to + 8 * j + 8])[0]
                & 0x00fffffffffffe00 for j in range(ts)]
        out.append((to, [x for x in data if x]))
        p = (p + 24 + ed + nl + 7) // 8 * 8
    return doff, out


@pytest.mark.parametrize('what', ['directory', 'table', 'data'])
def test_allocation_over_bitmaps_marks_corrupt(tmp_path, what):
    """Persistent bitmaps are metadata too: their directory, tables and
    data clusters are never handed out for new data."""
    img = tmp_path / 'b.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         img, '4M'], check=True)
    run(['qemu-io', '-c', 'write -P 0x41 0 64k', img], check=True)
    run(['qemu-img', 'bitmap', '--add', img, 'b0'], check=True)
    run(['qemu-io', '-c', 'write -P 0x42 1M 64k', img], check=True)
    d = bytearray(img.read_bytes())
    doff, bitmaps = bitmap_clusters(d)
    target = {'directory': doff, 'table': bitmaps[0][0],
              'data': bitmaps[0][1][0]}[what]
    refcount_to_zero(d, target, 4096)
    img.write_bytes(bytes(d))
    before = bytes(d[target:target + 4096])

    p = run([WRITER, 'run', img, '1'])
    assert p.returncode == 1
    assert 'marked corrupt' in p.stderr, p.stderr
    if what == 'directory':
        # the one change allowed: the enabled bitmap b0 is marked in use
        # (flags bit 0) before the first write (docs/bitmaps.md)
        expect = bytearray(before)
        expect[15] |= 1
        before = bytes(expect)
    assert img.read_bytes()[target:target + 4096] == before
