# SPDX-License-Identifier: MIT
"""vimg resize against qemu-img resize on copies of the same images:
qemu-img check stays clean and the guest content is the same."""
import json
import shutil

import pytest

from conftest import VIMG, run

IMAGES = ['', 'cluster_size=512', 'cluster_size=512,refcount_bits=64',
          'extended_l2=on', 'compat=0.10', 'lazy_refcounts=on',
          'compression_type=zstd']
SIZES = ['+3M', '100M', '3G', '--shrink 1M', '--shrink 1500k',
         '--shrink -1000k', '4M']


def make(path, opts):
    run(['qemu-img', 'create', '-q', '-f', 'qcow2',
         *(['-o', opts] if opts else []), path, '4M'], check=True)
    run(['qemu-io', '-c', 'write -c -P 2 1M 64k', '-c', 'write -P 1 0 1M',
         '-c', 'write -P 1 1088k 3008k', '-c', 'write -z 2M 64k', path],
        check=True)


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('opts', IMAGES, ids=[o or 'default' for o in IMAGES])
def test_resize_like_qemu(tmp_path, opts, size):
    ours, theirs = tmp_path / 'v.qcow2', tmp_path / 'q.qcow2'
    make(ours, opts)
    shutil.copy(ours, theirs)
    args = size.split()
    p = run([VIMG, 'resize', ours, *args])
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'Image resized.\n'
    run(['qemu-img', 'resize', '-q', theirs, *args], check=True)
    c = run(['qemu-img', 'check', '--output=json', ours])
    assert c.returncode == 0, c.stdout + c.stderr
    report = json.loads(c.stdout)
    assert report.get('corruptions', 0) == 0 and report.get('leaks', 0) == 0
    cmp = run(['qemu-img', 'compare', '-s', ours, theirs])
    assert cmp.returncode == 0, cmp.stdout
    # qemu can still write past the old end
    w = run(['qemu-io', '-c', 'write -P 9 0 512', ours])
    assert w.returncode == 0, w.stdout + w.stderr


def test_shrink_needs_flag(tmp_path):
    img = tmp_path / 'x.qcow2'
    make(img, '')
    before = img.read_bytes()
    p = run([VIMG, 'resize', img, '1M'])
    assert p.returncode == 1
    assert '--shrink' in p.stderr
    assert img.read_bytes() == before


def test_resize_raw(tmp_path):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\x07' * 65536)
    assert run([VIMG, 'resize', '-f', 'raw', img, '+64k']).returncode == 0
    data = img.read_bytes()
    assert len(data) == 131072 and data[:65536] == b'\x07' * 65536
    assert data[65536:] == bytes(65536)
    p = run([VIMG, 'resize', '-f', 'raw', '--shrink', img, '1000'])
    assert p.returncode == 0
    assert img.stat().st_size == 1000
    p = run([VIMG, 'resize', '-f', 'raw', '--preallocation=full', img, '1M'])
    assert p.returncode == 0
    assert img.stat().st_blocks * 512 >= 1 << 20


def test_resize_refuses_negative(tmp_path):
    img = tmp_path / 'x.qcow2'
    make(img, '')
    p = run([VIMG, 'resize', '--shrink', img, '-5M'])
    assert p.returncode == 1
    assert 'positive' in p.stderr


def test_resize_v2_with_snapshot_refused(tmp_path):
    img = tmp_path / 'x.qcow2'
    make(img, 'compat=0.10')
    run(['qemu-img', 'snapshot', '-c', 's', img], check=True)
    before = img.read_bytes()
    p = run([VIMG, 'resize', img, '+1M'])
    assert p.returncode == 1
    assert 'snapshots' in p.stderr
    assert img.read_bytes() == before
