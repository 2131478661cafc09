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


# --preallocation: the same resize by qemu-img on a copy is the reference.
# Each case: create options, size, qemu-io writes, the resize argument.
PREALLOC_CASES = {
    'default': ('', '4M', ['write -P 1 0 1M', 'write -P 2 3M 64k'], '+3M'),
    'unaligned': ('', '1000k', ['write -P 1 0 1000k'], '+1001k'),
    'c512': ('cluster_size=512', '1000k', ['write -P 1 0 999k'], '+3001k'),
    'c512-rb1': ('cluster_size=512,refcount_bits=1', '1000k',
                 ['write -P 1 0 1000k'], '+3001k'),
    'c2M': ('cluster_size=2M', '3M', ['write -P 1 0 3M'], '+5M'),
    'c2M-rb1': ('cluster_size=2M,refcount_bits=1', '3M',
                ['write -P 1 1M 2M'], '+7000k'),
    'v2': ('compat=0.10', '1000k', ['write -P 1 0 999k'], '+1001k'),
    'extl2': ('extended_l2=on', '1000k', ['write -P 1 0 1000k'], '+1001k'),
    # L1 grows: 64 KiB clusters map 512 MiB per L2 table
    'l1-grows': ('', '500M', ['write -P 1 0 64k', 'write -P 3 499M 1M'],
                 '+600M'),
    'l1-grows-c512': ('cluster_size=512', '31k', ['write -P 1 0 31k'],
                      '+200k'),
}


def prealloc_pair(tmp_path, opts, size, writes, data_file=False):
    """Two copies (made the same way, so that their disk usage compares)
    of an image with data, each with its own data file if DATA_FILE."""
    orig = tmp_path / 'a.qcow2'
    if data_file:
        opts = ','.join(o for o in (opts, f'data_file={tmp_path}/a.raw')
                        if o)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2',
         *(['-o', opts] if opts else []), orig, size], check=True)
    run(['qemu-io', *sum((['-c', w] for w in writes), []), orig],
        check=True)
    pair = []
    for name in 'vq':
        img = tmp_path / f'{name}.qcow2'
        shutil.copy(orig, img)
        if data_file:
            shutil.copy(tmp_path / 'a.raw', tmp_path / f'{name}.raw')
            run(['qemu-img', 'amend', '-q', '-f', 'qcow2', '-o',
                 f'data_file={tmp_path}/{name}.raw', img], check=True)
        pair.append(img)
    return pair


def map_json(path):
    return run(['qemu-img', 'map', '--output=json', path], check=True).stdout


def usage(path):
    st = path.stat()
    return st.st_size, st.st_blocks


@pytest.mark.parametrize('mode', ['metadata', 'falloc', 'full'])
@pytest.mark.parametrize('case', PREALLOC_CASES)
def test_resize_prealloc_like_qemu(tmp_path, mode, case):
    opts, size, writes, grow = PREALLOC_CASES[case]
    ours, theirs = prealloc_pair(tmp_path, opts, size, writes)
    p = run([VIMG, 'resize', f'--preallocation={mode}', ours, grow])
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'Image resized.\n'
    run(['qemu-img', 'resize', '-q', f'--preallocation={mode}', theirs,
         grow], check=True)
    c = run(['qemu-img', 'check', '--output=json', ours])
    assert c.returncode == 0, c.stdout + c.stderr
    report = json.loads(c.stdout)
    assert report.get('corruptions', 0) == 0 and report.get('leaks', 0) == 0
    assert run(['qemu-img', 'compare', '-s', ours, theirs]).returncode == 0
    # same layout, down to the host offsets and what the file system holds
    # (give or take one 4 KiB block: qemu's writes and fallocate calls are
    # not cut the same way)
    assert map_json(ours) == map_json(theirs)
    (size, blocks), (q_size, q_blocks) = usage(ours), usage(theirs)
    assert size == q_size and abs(blocks - q_blocks) <= 8


@pytest.mark.parametrize('mode', ['metadata', 'falloc', 'full'])
@pytest.mark.parametrize('grow', ['+1M', '+1001k'])
def test_resize_prealloc_data_file(tmp_path, mode, grow):
    ours, theirs = prealloc_pair(tmp_path, '', '1M', ['write -P 1 0 64k'],
                                 data_file=True)
    assert run([VIMG, 'resize', '-q', f'--preallocation={mode}', ours,
                grow]).returncode == 0
    run(['qemu-img', 'resize', '-q', f'--preallocation={mode}', theirs,
         grow], check=True)
    assert run(['qemu-img', 'check', ours]).returncode == 0
    assert run(['qemu-img', 'compare', '-s', ours, theirs]).returncode == 0
    assert map_json(ours) == map_json(theirs)
    assert usage(tmp_path / 'v.raw') == usage(tmp_path / 'q.raw')
    assert usage(ours) == usage(theirs)


@pytest.mark.parametrize('mode', ['metadata', 'falloc', 'full'])
@pytest.mark.parametrize('opts', ['', 'extended_l2=on', 'compat=0.10'])
def test_resize_prealloc_over_backing(tmp_path, mode, opts):
    """The new area reads as zeroes, not as the longer backing file."""
    base = tmp_path / 'b.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', base, '4M'], check=True)
    run(['qemu-io', '-c', 'write -P 5 0 4M', base], check=True)
    ours, theirs = tmp_path / 'v.qcow2', tmp_path / 'q.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F',
         'qcow2', *(['-o', opts] if opts else []), ours, '2M'], check=True)
    run(['qemu-io', '-c', 'write -P 1 0 64k', ours], check=True)
    shutil.copy(ours, theirs)
    before = ours.read_bytes()
    p = run([VIMG, 'resize', f'--preallocation={mode}', ours, '+1M'])
    q = run(['qemu-img', 'resize', f'--preallocation={mode}', theirs, '+1M'])
    assert p.returncode == q.returncode, p.stderr + q.stderr
    if q.returncode != 0:
        # v2 cannot record zero clusters: qemu refuses (after changing
        # the file); we refuse before touching it
        assert p.stderr.split(': ', 1)[1] == q.stderr.split(': ', 1)[1]
        assert ours.read_bytes() == before
        return
    assert run(['qemu-img', 'check', ours]).returncode == 0
    assert run(['qemu-img', 'compare', ours, theirs]).returncode == 0
    assert run(['qemu-io', '-c', 'read -P 0 2M 1M', ours]).returncode == 0


@pytest.mark.parametrize('args', [
    ['--preallocation=metadata', '--shrink', '1M'],
    ['--preallocation=falloc', '1M'],
    ['--preallocation=full', '4M'],
    ['--preallocation=bogus', '+1M'],
])
def test_resize_prealloc_refused_like_qemu(tmp_path, args):
    ours, theirs = prealloc_pair(tmp_path, '', '4M', ['write -P 1 0 1M'])
    before = ours.read_bytes()
    *flags, size = args
    p = run([VIMG, 'resize', *flags, ours, size])
    q = run(['qemu-img', 'resize', *flags, theirs, size])
    assert q.returncode != 0 and p.returncode == q.returncode
    assert p.stderr.startswith('vimg: ')
    assert p.stderr[len('vimg: '):] == q.stderr[len('qemu-img: '):]
    assert ours.read_bytes() == before
