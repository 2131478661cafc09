# SPDX-License-Identifier: MIT
"""vimg create against qemu-img create: for each option combination both
tools make an image; qemu-img must find vimg's clean and describe it the
same way as its own, and qemu-io must be able to write and read it back.
Combinations qemu-img refuses, vimg refuses too, and writes nothing."""
import json
import os

import pytest

from conftest import VIMG, run

QEMU_IMG = 'qemu-img'

# (id, format, -o options, size, extra args)
GOOD = [
    ('raw', 'raw', '', '1M', []),
    ('raw-odd-size', 'raw', '', '1000', []),
    ('raw-falloc', 'raw', 'preallocation=falloc', '1M', []),
    ('raw-full', 'raw', 'preallocation=full', '1M', []),
    ('default', 'qcow2', '', '1M', []),
    ('odd-size', 'qcow2', '', '1000', []),
    ('zero-size', 'qcow2', '', '0', []),
    ('compat-0.10', 'qcow2', 'compat=0.10', '3M', []),
    ('v2', 'qcow2', 'compat=v2', '3M', []),
    ('cluster-512', 'qcow2', 'cluster_size=512', '3M', []),
    ('cluster-4k', 'qcow2', 'cluster_size=4k', '3M', []),
    ('cluster-2M', 'qcow2', 'cluster_size=2M', '5M', []),
    ('refcount-1', 'qcow2', 'refcount_bits=1', '3M', []),
    ('refcount-2', 'qcow2', 'refcount_bits=2', '3M', []),
    ('refcount-8', 'qcow2', 'refcount_bits=8', '3M', []),
    ('refcount-64', 'qcow2', 'refcount_bits=64', '3M', []),
    ('lazy', 'qcow2', 'lazy_refcounts=on', '3M', []),
    ('extl2-16k', 'qcow2', 'extended_l2=on,cluster_size=16k', '3M', []),
    ('extl2-2M', 'qcow2', 'extended_l2=on,cluster_size=2M', '5M', []),
    ('zstd', 'qcow2', 'compression_type=zstd', '3M', []),
    ('data-file', 'qcow2', 'data_file=img.data', '3M', []),
    ('data-file-raw', 'qcow2', 'data_file=img.data,data_file_raw=on', '3M',
     []),
    ('data-file-raw-extl2', 'qcow2',
     'data_file=img.data,data_file_raw=on,extended_l2=on', '3M', []),
    ('prealloc-metadata', 'qcow2', 'preallocation=metadata', '3M', []),
    ('prealloc-metadata-512', 'qcow2',
     'preallocation=metadata,cluster_size=512,refcount_bits=1', '2M', []),
    ('prealloc-falloc', 'qcow2', 'preallocation=falloc', '3M', []),
    ('prealloc-full', 'qcow2', 'preallocation=full', '3M', []),
    ('prealloc-full-v2', 'qcow2', 'preallocation=full,compat=0.10', '3M', []),
    ('prealloc-data-file', 'qcow2', 'preallocation=full,data_file=img.data',
     '3M', []),
    ('big-sparse', 'qcow2', 'cluster_size=512', '64G', []),
    ('backing', 'qcow2', '', '2M', ['-b', 'base.raw', '-F', 'raw']),
    ('backing-size-from-base', 'qcow2', '', None,
     ['-b', 'base.raw', '-F', 'raw']),
    ('backing-extl2-prealloc', 'qcow2',
     'extended_l2=on,preallocation=metadata', '2M',
     ['-b', 'base.raw', '-F', 'raw']),
    ('backing-unsafe', 'qcow2', '', '2M',
     ['-u', '-b', 'missing.qcow2', '-F', 'qcow2']),
    ('many-options', 'qcow2',
     'cluster_size=32k,refcount_bits=32,lazy_refcounts=on,'
     'compression_type=zstd,extended_l2=on', '7M', []),
]

BAD = [
    ('v2-lazy', 'qcow2', 'compat=0.10,lazy_refcounts=on'),
    ('v2-refcount', 'qcow2', 'compat=0.10,refcount_bits=8'),
    ('v2-extl2', 'qcow2', 'compat=0.10,extended_l2=on'),
    ('v2-zstd', 'qcow2', 'compat=0.10,compression_type=zstd'),
    ('v2-data-file', 'qcow2', 'compat=0.10,data_file=x.data'),
    ('extl2-small-cluster', 'qcow2', 'extended_l2=on,cluster_size=4k'),
    ('cluster-3k', 'qcow2', 'cluster_size=3k'),
    ('cluster-256', 'qcow2', 'cluster_size=256'),
    ('cluster-4M', 'qcow2', 'cluster_size=4M'),
    ('refcount-3', 'qcow2', 'refcount_bits=3'),
    ('refcount-128', 'qcow2', 'refcount_bits=128'),
    ('raw-without-file', 'qcow2', 'data_file_raw=on'),
    ('bad-compat', 'qcow2', 'compat=2.0'),
    ('bad-prealloc', 'qcow2', 'preallocation=sometimes'),
    ('raw-metadata', 'raw', 'preallocation=metadata'),
    ('unknown-option', 'qcow2', 'frobnicate=on'),
    ('bad-bool', 'qcow2', 'lazy_refcounts=maybe'),
    ('compression-lz4', 'qcow2', 'compression_type=lz4'),
]


def make(tool, cwd, fmt, opts, size, extra):
    args = ['create', '-q', '-f', fmt]
    if opts:
        args += ['-o', opts]
    args += extra + ['img.' + fmt] + ([size] if size else [])
    return run([tool, *args], cwd=cwd)


def info(cwd, fmt):
    p = run([QEMU_IMG, 'info', '--output=json', '-f', fmt, 'img.' + fmt],
            cwd=cwd)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    d.pop('actual-size', None)     # depends on how much each tool wrote
    return d


def setup_dir(d):
    d.mkdir()
    run([QEMU_IMG, 'create', '-q', '-f', 'raw', d / 'base.raw', '3M'],
        check=True)
    run(['qemu-io', '-f', 'raw', '-c', 'write -P 0x5a 0 1M',
         d / 'base.raw'], check=True)


@pytest.mark.parametrize('name,fmt,opts,size,extra', GOOD,
                         ids=[g[0] for g in GOOD])
def test_create_like_qemu(tmp_path, name, fmt, opts, size, extra):
    ours, theirs = tmp_path / 'vimg', tmp_path / 'qemu'
    setup_dir(ours)
    setup_dir(theirs)
    p = make(VIMG, ours, fmt, opts, size, extra)
    assert p.returncode == 0, p.stderr
    q = make(QEMU_IMG, theirs, fmt, opts, size, extra)
    assert q.returncode == 0, q.stderr

    # qemu-img describes both the same way
    assert info(ours, fmt) == info(theirs, fmt)
    img = ours / ('img.' + fmt)
    if name == 'backing-unsafe':
        return  # no backing file: qemu-img check and I/O cannot open it
    if fmt == 'qcow2':
        c = run([QEMU_IMG, 'check', '--output=json', img.name], cwd=ours)
        assert c.returncode == 0, c.stdout + c.stderr
        report = json.loads(c.stdout)
        assert report.get('leaks', 0) == 0 and report.get('corruptions',
                                                          0) == 0

    # the same guest content as qemu's image, and as vimg reads it
    cmp = run([QEMU_IMG, 'compare', '-f', fmt, '-F', fmt, img,
               theirs / ('img.' + fmt)], cwd=ours)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    vc = run([VIMG, 'compare', '-f', fmt, '-F', fmt, img.name,
              '../qemu/img.' + fmt], cwd=ours)
    assert vc.returncode == 0, vc.stdout + vc.stderr

    # qemu-io can write into vimg's image and read the data back
    if size in ('0', '1000'):
        return  # too small for the writes below
    w = run(['qemu-io', '-f', fmt, '-c', 'write -P 0xc3 4096 8192',
             '-c', 'write -z 65536 4096', '-c', 'read -P 0xc3 4096 8192',
             img.name], cwd=ours)
    assert w.returncode == 0 and 'fail' not in w.stdout.lower(), \
        w.stdout + w.stderr
    if fmt == 'qcow2':
        c = run([QEMU_IMG, 'check', img.name], cwd=ours)
        assert c.returncode == 0, c.stdout + c.stderr


@pytest.mark.parametrize('name,fmt,opts', BAD, ids=[b[0] for b in BAD])
def test_create_refused_like_qemu(tmp_path, name, fmt, opts):
    q = run([QEMU_IMG, 'create', '-q', '-f', fmt, '-o', opts,
             tmp_path / 'q.img', '1M'])
    assert q.returncode == 1, 'qemu-img accepts it: fix the table'
    target = tmp_path / 'v.img'
    p = run([VIMG, 'create', '-q', '-f', fmt, '-o', opts, target, '1M'])
    assert p.returncode == 1, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not target.exists(), 'a refused create wrote a file'


def test_create_refuses_missing_backing(tmp_path):
    p = run([VIMG, 'create', '-q', '-f', 'qcow2', '-b', 'nope.qcow2',
             '-F', 'qcow2', tmp_path / 'x.qcow2', '1M'])
    assert p.returncode == 1
    assert 'backing' in p.stderr.lower()
    assert not (tmp_path / 'x.qcow2').exists()


def test_create_backing_needs_format(tmp_path):
    setup_dir(tmp_path / 'd')
    p = run([VIMG, 'create', '-q', '-f', 'qcow2', '-b', 'base.raw',
             'x.qcow2', '1M'], cwd=tmp_path / 'd')
    assert p.returncode == 1
    assert 'without backing format' in p.stderr


def test_create_needs_size(tmp_path):
    p = run([VIMG, 'create', '-q', '-f', 'qcow2', tmp_path / 'x.qcow2'])
    assert p.returncode == 1
    assert 'size' in p.stderr


def test_create_options_help():
    p = run([VIMG, 'create', '-f', 'qcow2', '-o', 'help'])
    assert p.returncode == 0
    for opt in ('cluster_size', 'compat', 'refcount_bits', 'extended_l2',
                'data_file_raw', 'compression_type', 'preallocation'):
        assert opt in p.stdout


def test_create_keeps_existing_raw_data_file(tmp_path):
    """Wrapping an existing raw disk with data_file_raw and vimg's
    data_file_keep=on keeps its bytes: the qcow2 image then reads exactly
    the raw file.  (Without data_file_keep the file is emptied, as
    qemu-img does: test_qemu_compat.py.)"""
    raw = tmp_path / 'disk.raw'
    data = os.urandom(1 << 20)
    raw.write_bytes(data)
    p = run([VIMG, 'create', '-q', '-f', 'qcow2', '-o',
             'data_file=disk.raw,data_file_raw=on,data_file_keep=on',
             'wrap.qcow2', '1M'],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert raw.read_bytes() == data
    c = run([QEMU_IMG, 'compare', '-f', 'qcow2', '-F', 'raw', 'wrap.qcow2',
             'disk.raw'], cwd=tmp_path)
    assert c.returncode == 0, c.stdout + c.stderr
