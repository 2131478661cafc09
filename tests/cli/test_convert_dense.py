# SPDX-License-Identifier: MIT
"""vimg convert of dense data: qcow2 outputs written in runs of fresh
clusters (one allocation and one write per run, runs stop at an L2 table's
end) and raw outputs written in chunk order by one writer stay what
qemu-img makes: same guest content, clean check, the same allocation (du)
for raw outputs, holes where qemu-img leaves them."""
import json
import os

import pytest

from conftest import VIMG, run

MiB = 1 << 20


def qemu(*args):
    return run(['qemu-img', *args], check=True, timeout=120)


def pattern(path, size, holes=()):
    """SIZE bytes of varied non-zero data, zero in the (offset, length)
    HOLES (left as holes in the file)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        pos = 0
        block = bytes((i * 7 + 1) & 0xff or 1 for i in range(MiB))
        while pos < size:
            f.seek(pos)
            f.write(block[:min(MiB, size - pos)])
            pos += MiB
    with open(path, 'r+b') as f:
        for off, n in holes:
            os.posix_fallocate(f.fileno(), off, n)  # allocated...
            f.seek(off)
            f.write(bytes(n))                       # ...but zero
    return path


def guest_map(img):
    """qemu-img map without host offsets, neighbours merged."""
    out = []
    for e in json.loads(run(['qemu-img', 'map', '--output=json', img],
                            check=True).stdout):
        key = (e['zero'], e['data'])
        if out and out[-1][2] == key and out[-1][0] + out[-1][1] == e['start']:
            out[-1] = (out[-1][0], out[-1][1] + e['length'], key)
        else:
            out.append((e['start'], e['length'], key))
    return out


def allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize('cluster', ['4k', '64k'])
@pytest.mark.parametrize('threads', ['1', '3'])
def test_raw_to_qcow2_dense(tmp_path, cluster, threads):
    # 4k clusters: an L2 table maps 2 MiB, so runs cross many tables
    size = 9 * MiB + 4096
    src = pattern(tmp_path / 'src.raw', size,
                  holes=[(3 * MiB, 256 * 1024), (7 * MiB + 4096, 8192)])
    out = tmp_path / 'v.qcow2'
    ref = tmp_path / 'q.qcow2'
    p = run([VIMG, 'convert', '-m', threads, '-O', 'qcow2', '-o',
             f'cluster_size={cluster}', src, out])
    assert p.returncode == 0, p.stderr
    qemu('convert', '-O', 'qcow2', '-o', f'cluster_size={cluster}', src, ref)
    qemu('check', out)
    qemu('compare', '-f', 'raw', '-F', 'qcow2', src, out)
    # the same guest clusters allocated (host places may differ: qemu
    # puts a new refcount block elsewhere) and the same file size
    assert guest_map(out) == guest_map(ref)
    assert os.path.getsize(out) == os.path.getsize(ref)


def test_qcow2_to_qcow2_over_existing(tmp_path):
    """-n onto an image that already has some clusters: fresh runs stop at
    allocated clusters, which are written in place."""
    src = pattern(tmp_path / 'src.raw', 4 * MiB)
    out = tmp_path / 'out.qcow2'
    qemu('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64k', out,
         str(4 * MiB))
    run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1M 128k', '-c',
         'write -z 2M 64k', out], check=True)
    p = run([VIMG, 'convert', '-n', '-O', 'qcow2', src, out])
    assert p.returncode == 0, p.stderr
    qemu('check', out)
    qemu('compare', '-f', 'raw', '-F', 'qcow2', src, out)


@pytest.mark.parametrize('threads', ['1', '2', '4'])
def test_qcow2_to_raw_sparse_as_qemu(tmp_path, threads):
    size = 13 * MiB + 512
    raw = pattern(tmp_path / 'src.raw', size,
                  holes=[(2 * MiB, 3 * MiB), (9 * MiB + 512, 64 * 1024)])
    src = tmp_path / 'src.qcow2'
    qemu('convert', '-O', 'qcow2', raw, src)
    out = tmp_path / 'v.raw'
    ref = tmp_path / 'q.raw'
    p = run([VIMG, 'convert', '-m', threads, '-O', 'raw', src, out])
    assert p.returncode == 0, p.stderr
    qemu('convert', '-O', 'raw', src, ref)
    assert out.read_bytes() == ref.read_bytes()
    assert allocated(out) == allocated(ref)


def test_raw_to_raw_replacing_a_file(tmp_path):
    """The output replaces a larger file: nothing of it is left."""
    src = pattern(tmp_path / 'src.raw', 5 * MiB,
                  holes=[(MiB, MiB)])
    out = tmp_path / 'out.raw'
    out.write_bytes(b'\xee' * (8 * MiB))
    p = run([VIMG, 'convert', '-f', 'raw', '-O', 'raw', src, out])
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == src.read_bytes()
    ref = tmp_path / 'q.raw'
    qemu('convert', '-f', 'raw', '-O', 'raw', src, ref)
    assert allocated(out) == allocated(ref)
