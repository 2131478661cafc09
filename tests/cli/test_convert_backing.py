# SPDX-License-Identifier: MIT
"""vimg convert -B/-F (target with a backing file) and -n (existing
target): the same guest content and the same allocation as qemu-img
convert with the same flags on the same inputs, clean for qemu-img check;
and qemu-img's refusals."""
import json
import shutil

import pytest

from conftest import VIMG, run

MiB = 1 << 20


def qemu(*args, cwd=None):
    return run(['qemu-img', *args], check=True, cwd=cwd, timeout=120)


def io(img, *cmds, fmt='qcow2'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    run(args + [img], check=True)


def layout(img, length=None):
    """qemu-img map without host offsets: what is allocated where, at which
    depth, as data or zeroes."""
    more = [f'--max-length={length}'] if length else []
    p = qemu('map', '--output=json', *more, img)
    out = json.loads(p.stdout)
    for e in out:
        e.pop('offset', None)
    return out


def chain(d, base_fmt='qcow2', top_size=10 * MiB, top_cluster='64k'):
    """base (data everywhere) <- top (data, zero clusters, zero data,
    holes).  Returns (base, top)."""
    base = d / f'base.{base_fmt}'
    qemu('create', '-q', '-f', base_fmt, base, str(8 * MiB))
    io(base, 'write -P 0x11 0 8M', fmt=base_fmt)
    top = d / 'top.qcow2'
    qemu('create', '-q', '-f', 'qcow2', '-o', f'cluster_size={top_cluster}',
         '-b', base.name, '-F', base_fmt, top, str(top_size))
    io(top, 'write -P 0x22 1M 1M', 'write -z 3M 1M', 'write -P 0 5M 1M',
       'write -P 0x33 6M 4k', 'write -P 0x44 9M 512')
    return base, top


def check_clean(img):
    p = run(['qemu-img', 'check', '--output=json', img])
    assert p.returncode == 0, p.stdout + p.stderr


TARGETS = [
    [],
    ['-o', 'compat=0.10'],
    ['-c'],
    ['-o', 'cluster_size=4k'],
    ['-o', 'cluster_size=2M'],
    ['-o', 'extended_l2=on'],
    ['-S', '0'],
    ['-o', 'refcount_bits=1,cluster_size=512'],
]


@pytest.mark.parametrize('base_fmt', ['qcow2', 'raw'])
@pytest.mark.parametrize('target', TARGETS, ids=lambda t: ' '.join(t) or
                         'default')
def test_backing_target(tmp_path, base_fmt, target):
    """-B BASE -F FMT: only what the source's top layer holds is copied; the
    output reads like the source and is laid out like qemu-img's."""
    base, top = chain(tmp_path, base_fmt)
    flags = ['-O', 'qcow2', *target, '-B', base.name, '-F', base_fmt]
    qemu('convert', *flags, top.name, 'q.qcow2', cwd=tmp_path)
    p = run([VIMG, 'convert', *flags, top.name, 'v.qcow2'], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    v, q = tmp_path / 'v.qcow2', tmp_path / 'q.qcow2'
    check_clean(v)
    info = json.loads(qemu('info', '--output=json', v).stdout)
    assert info['backing-filename'] == base.name
    assert info['backing-filename-format'] == base_fmt
    if 'extended_l2=on' not in target:
        # qemu-img looks for zeroes in 4k pieces and, with subclusters,
        # leaves a partly written cluster's zero subclusters unallocated;
        # vimg writes the cluster.  Same content, different allocation.
        assert layout(v) == layout(q)
    qemu('compare', '-f', 'qcow2', '-F', 'qcow2', top, v)


def test_backing_smaller_source_cluster(tmp_path):
    """The source has 4k clusters, the target 2M ones: target clusters are
    partly from the backing file and partly written."""
    base, top = chain(tmp_path, top_cluster='4k')
    flags = ['-O', 'qcow2', '-o', 'cluster_size=2M', '-B', base.name, '-F',
             'qcow2']
    qemu('convert', *flags, top.name, 'q.qcow2', cwd=tmp_path)
    p = run([VIMG, 'convert', *flags, top.name, 'v.qcow2'], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    check_clean(tmp_path / 'v.qcow2')
    assert layout(tmp_path / 'v.qcow2') == layout(tmp_path / 'q.qcow2')
    qemu('compare', top, tmp_path / 'v.qcow2')


def test_backing_from_options(tmp_path):
    """-o backing_file=,backing_fmt= is the same as -B/-F."""
    base, top = chain(tmp_path)
    p = run([VIMG, 'convert', '-O', 'qcow2', '-o',
             f'backing_file={base.name},backing_fmt=qcow2', top.name,
             'v.qcow2'], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    qemu('convert', '-O', 'qcow2', '-B', base.name, '-F', 'qcow2', top.name,
         'q.qcow2', cwd=tmp_path)
    assert layout(tmp_path / 'v.qcow2') == layout(tmp_path / 'q.qcow2')
    qemu('compare', top, tmp_path / 'v.qcow2')


def test_backing_longer_than_source_backing(tmp_path):
    """The top is larger than its backing file: past the backing's end the
    top reads zeroes, and they must mask the new backing file's data.
    (qemu-img leaves that range to the new backing file and so changes the
    guest content: its output is not the oracle here, the source is.)"""
    base, top = chain(tmp_path, top_size=12 * MiB)
    big = tmp_path / 'big.qcow2'
    qemu('create', '-q', '-f', 'qcow2', big, str(12 * MiB))
    io(big, 'write -P 0x11 0 12M')
    flags = ['-O', 'qcow2', '-B', big.name, '-F', 'qcow2']
    qemu('convert', *flags, top.name, 'q.qcow2', cwd=tmp_path)
    p = run([VIMG, 'convert', *flags, top.name, 'v.qcow2'], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    check_clean(tmp_path / 'v.qcow2')
    qemu('compare', top, tmp_path / 'v.qcow2')
    # up to the old backing's end, laid out as qemu-img does it
    v, q = tmp_path / 'v.qcow2', tmp_path / 'q.qcow2'
    assert layout(v, 8 * MiB) == layout(q, 8 * MiB)
    assert layout(v)[-1]['zero'] and layout(v)[-1]['depth'] == 0


EXISTING = [
    ['-O', 'qcow2'],
    ['-O', 'qcow2', '-S', '0'],
    ['-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2'],
    ['-O', 'raw'],
    ['-O', 'raw', '-S', '0'],
]


@pytest.mark.parametrize('flags', EXISTING, ids=lambda f: ' '.join(f))
def test_existing_target(tmp_path, flags):
    """-n writes into an existing image full of other data: every byte of
    the source replaces it, zeroes included."""
    base, top = chain(tmp_path)
    fmt = flags[1]
    old = tmp_path / f'old.{fmt}'
    if '-B' in flags:
        # an empty overlay of the backing file -B names: what -n -B is for
        qemu('create', '-q', '-f', fmt, '-b', base.name, '-F', 'qcow2', old,
             str(12 * MiB))
    else:
        qemu('create', '-q', '-f', fmt, old, str(12 * MiB))
        io(old, 'write -P 0x99 0 12M', fmt=fmt)
    q, v = tmp_path / f'q.{fmt}', tmp_path / f'v.{fmt}'
    shutil.copy(old, q)
    shutil.copy(old, v)
    qemu('convert', '-n', *flags, top.name, q.name, cwd=tmp_path)
    p = run([VIMG, 'convert', '-n', *flags, top.name, v.name],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    if fmt == 'qcow2':
        check_clean(v)
    if '-B' in flags:
        # Past the old backing file's end (8M), qemu-img writes zeroes or
        # not depending on where its block status extents start; vimg
        # leaves ranges that read as zeroes already.
        assert layout(v, 8 * MiB) == layout(q, 8 * MiB)
        qemu('compare', top, v)
        return
    assert layout(v) == layout(q)
    qemu('compare', '-f', fmt, '-F', fmt, q, v)
    if '-B' not in flags:
        # the source's content, then the old data past its end
        raw = tmp_path / 'v-content.raw'
        qemu('convert', '-f', fmt, '-O', 'raw', v, raw)
        data = raw.read_bytes()
        qemu('convert', '-O', 'raw', top, tmp_path / 'top.raw')
        assert data[:10 * MiB] == (tmp_path / 'top.raw').read_bytes()
        assert data[10 * MiB:] == b'\x99' * (2 * MiB)


def test_existing_target_compressed(tmp_path):
    """-n -c into a used image (qemu-img fails there with an I/O error):
    the content is the source's."""
    base, top = chain(tmp_path)
    old = tmp_path / 'old.qcow2'
    qemu('create', '-q', '-f', 'qcow2', old, str(10 * MiB))
    io(old, 'write -P 0x99 0 10M')
    p = run([VIMG, 'convert', '-n', '-O', 'qcow2', '-c', top, old])
    assert p.returncode == 0, p.stderr
    check_clean(old)
    qemu('compare', top, old)


REFUSED = [
    (['-O', 'qcow2', '-B', 'base.qcow2'],
     'Use of backing file requires explicit backing format'),
    (['-O', 'qcow2', '-F', 'qcow2'],
     'Backing format cannot be used without backing file'),
    (['-O', 'raw', '-B', 'base.qcow2', '-F', 'qcow2'],
     "Backing file not supported for file format 'raw'"),
    (['-O', 'qcow2', '-B', 'missing.qcow2', '-F', 'qcow2'],
     'missing.qcow2'),
]


@pytest.mark.parametrize('flags,words', REFUSED, ids=lambda x: str(x))
def test_refused(tmp_path, flags, words):
    """What qemu-img refuses, vimg refuses, and leaves no output behind."""
    base, top = chain(tmp_path)
    out = tmp_path / 'out.img'
    q = run(['qemu-img', 'convert', *flags, top.name, 'q.img'],
            cwd=tmp_path)
    assert q.returncode == 1
    p = run([VIMG, 'convert', *flags, top.name, out.name], cwd=tmp_path)
    assert p.returncode == 1
    assert words in p.stderr
    assert not out.exists()


@pytest.mark.parametrize('fmt', ['qcow2', 'raw'])
def test_existing_target_too_small(tmp_path, fmt):
    base, top = chain(tmp_path)
    small = tmp_path / f'small.{fmt}'
    qemu('create', '-q', '-f', fmt, small, str(1 * MiB))
    io(small, 'write -P 0x99 0 1M', fmt=fmt)
    before = small.read_bytes()
    q = run(['qemu-img', 'convert', '-n', '-O', fmt, top, small])
    assert q.returncode == 1
    p = run([VIMG, 'convert', '-n', '-O', fmt, top, small])
    assert p.returncode == 1
    assert 'output file is smaller than input file' in p.stderr
    assert small.read_bytes() == before
