# SPDX-License-Identifier: MIT
"""The overlap check: refcounts that lie must not let the write path
overwrite metadata.  The image is marked corrupt instead, as qemu does."""
import json
import os
import struct

from conftest import BUILD_DIR, run

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
    p = run([os.environ.get('VIMG', 'vimg'), 'convert', '-O', 'raw', img,
             out])
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:65536] == b'\x41' * 65536
