# SPDX-License-Identifier: MIT
"""vimg convert -O qcow2: every output is clean for qemu-img check, has
the source's guest content, reads back byte-identical through vimg and
qemu-img, and is the same file whatever the thread count."""
import hashlib
import json

import pytest

from conftest import VIMG, run

MiB = 1 << 20


def qemu(*args, cwd=None):
    return run(['qemu-img', *args], check=True, cwd=cwd, timeout=300)


def io(img, *cmds, fmt='qcow2'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    run(args + [img], check=True)


def build(d, name):
    """Source images of several kinds, made by qemu."""
    img = d / f'{name}.qcow2'
    if name == 'plain':
        qemu('create', '-q', '-f', 'qcow2', img, str(6 * MiB + 512))
        io(img, 'write -P 0x11 0 1M', 'write -P 0x22 3M 100k',
           'write -z 1M 64k', 'write -P 0x33 6M 512')
    elif name == 'compressed':
        qemu('create', '-q', '-f', 'qcow2', img, str(4 * MiB))
        io(img, 'write -c -P 0x44 0 256k', 'write -P 0x55 1M 4k')
    elif name == 'extl2':
        qemu('create', '-q', '-f', 'qcow2', '-o',
             'extended_l2=on,cluster_size=64k', img, str(4 * MiB))
        io(img, 'write -P 0x66 1000 3000', 'write -z 2M 2k',
           'write -P 0x67 2101248 10k')
    elif name == 'chain':
        base = d / 'chain-base.raw'
        qemu('create', '-q', '-f', 'raw', base, str(3 * MiB))
        io(base, 'write -P 0x77 0 2M', fmt='raw')
        qemu('create', '-q', '-f', 'qcow2', '-b', base.name, '-F', 'raw',
             img, str(5 * MiB))
        io(img, 'write -P 0x78 512k 64k', 'write -z 1M 128k')
    elif name == 'snapshots':
        qemu('create', '-q', '-f', 'qcow2', img, str(4 * MiB))
        io(img, 'write -P 0x88 0 1M')
        qemu('snapshot', '-c', 's1', img)
        io(img, 'write -P 0x89 512k 1M')
    elif name == 'raw':
        img = d / 'raw.raw'
        qemu('create', '-q', '-f', 'raw', img, str(3 * MiB))
        io(img, 'write -P 0x99 4k 1M', fmt='raw')
    return img


SOURCES = ['plain', 'compressed', 'extl2', 'chain', 'snapshots', 'raw']
TARGETS = [
    ('default', []),
    ('zlib', ['-c']),
    ('zstd', ['-c', '-o', 'compression_type=zstd']),
    ('c512', ['-o', 'cluster_size=512,refcount_bits=1']),
    ('c2M-zstd', ['-c', '-o', 'cluster_size=2M,compression_type=zstd']),
    ('extl2', ['-o', 'extended_l2=on']),
    ('extl2-zlib', ['-c', '-o', 'extended_l2=on,cluster_size=16k']),
    ('v2-lazy-off', ['-o', 'compat=0.10']),
    ('lazy', ['-o', 'lazy_refcounts=on,refcount_bits=64']),
]


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp('sources')
    out = {}
    for name in SOURCES:
        img = build(d, name)
        ref = d / f'{name}.ref.raw'
        qemu('convert', '-O', 'raw', img, ref)
        out[name] = (img, ref)
    return out


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize('target,args', TARGETS, ids=[t[0] for t in TARGETS])
@pytest.mark.parametrize('source', SOURCES)
def test_convert_to_qcow2(sources, tmp_path, source, target, args):
    img, ref = sources[source]
    outs = []
    for threads in ('1', '4'):
        out = tmp_path / f'out-{threads}.qcow2'
        p = run([VIMG, 'convert', '-O', 'qcow2', '-m', threads, *args, img,
                 out], timeout=300)
        assert p.returncode == 0, p.stderr
        outs.append(out)
        c = run(['qemu-img', 'check', '--output=json', out])
        assert c.returncode == 0, c.stdout + c.stderr
        report = json.loads(c.stdout)
        assert report.get('corruptions', 0) == 0
        assert report.get('leaks', 0) == 0
        if '-c' in args and source != 'raw':
            assert report.get('compressed-clusters', 0) > 0, report
    # the same file whatever the thread count
    assert digest(outs[0]) == digest(outs[1])
    out = outs[1]
    cmp = run(['qemu-img', 'compare', '-F', 'raw', out, ref])
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    # back to raw through both tools: byte-identical
    qemu('convert', '-O', 'raw', out, tmp_path / 'q.raw')
    p = run([VIMG, 'convert', '-O', 'raw', out, tmp_path / 'v.raw'])
    assert p.returncode == 0, p.stderr
    assert (tmp_path / 'q.raw').read_bytes() == ref.read_bytes()
    assert (tmp_path / 'v.raw').read_bytes() == ref.read_bytes()
    # the options asked for are the image's
    info = json.loads(qemu('info', '--output=json', out).stdout)
    data = info['format-specific']['data']
    opts = ' '.join(args)
    if 'zstd' in opts:
        assert data['compression-type'] == 'zstd'
    if 'extended_l2=on' in opts:
        assert data['extended-l2'] is True
    if 'compat=0.10' in opts:
        assert data['compat'] == '0.10'
    if 'cluster_size=512' in opts:
        assert info['cluster-size'] == 512


def test_convert_compressed_is_smaller(sources, tmp_path):
    img, _ = sources['plain']
    plain, comp = tmp_path / 'p.qcow2', tmp_path / 'c.qcow2'
    assert run([VIMG, 'convert', '-O', 'qcow2', img, plain]).returncode == 0
    assert run([VIMG, 'convert', '-c', '-O', 'qcow2', img,
                comp]).returncode == 0
    assert comp.stat().st_size < plain.stat().st_size


def test_convert_compress_needs_qcow2(sources, tmp_path):
    img, _ = sources['plain']
    p = run([VIMG, 'convert', '-c', '-O', 'raw', img, tmp_path / 'x'])
    assert p.returncode == 1
    assert 'Compression not supported' in p.stderr
