# SPDX-License-Identifier: MIT
"""vimg measure against qemu-img measure: the same numbers (JSON and human
output) for a matrix of sources and target options, and the same refusals
with the same exit codes."""
import json
import os

import pytest

from conftest import VIMG, run

TARGETS = [
    ['-O', 'raw'],
    ['-O', 'qcow2'],
    ['-O', 'qcow2', '-o', 'cluster_size=512'],
    ['-O', 'qcow2', '-o', 'cluster_size=4k'],
    ['-O', 'qcow2', '-o', 'cluster_size=2M'],
    ['-O', 'qcow2', '-o', 'refcount_bits=1'],
    ['-O', 'qcow2', '-o', 'cluster_size=4k,refcount_bits=64'],
    ['-O', 'qcow2', '-o', 'extended_l2=on'],
    ['-O', 'qcow2', '-o', 'preallocation=metadata'],
    ['-O', 'qcow2', '-o', 'preallocation=full'],
    ['-O', 'qcow2', '-o', 'compat=0.10'],
]
TARGET_IDS = ['_'.join(t[1:]).replace('=', '-') for t in TARGETS]


def qemu_io(path, *cmds, fmt='qcow2'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    run(args + [path], check=True)


def create(path, size, opts='', fmt='qcow2', backing=None):
    args = ['qemu-img', 'create', '-q', '-f', fmt]
    if opts:
        args += ['-o', opts]
    if backing:
        args += ['-b', os.path.basename(backing), '-F', 'qcow2']
    run(args + [path, size], check=True)


def write_raw(path, size, pieces):
    """A raw file of SIZE bytes, sparse but for PIECES (offset, bytes)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for off, data in pieces:
            f.seek(off)
            f.write(data)


def make_sources(d):
    """name -> (path, extra args for measure): small images of every kind
    whose allocation qemu-img counts differently."""
    src = {}

    p = d / 'sparse.raw'
    write_raw(p, 5 * 2**20 + 1000, [(0, b'\x01' * 4096),
                                    (2**20 + 4096, b'\x02' * 70000),
                                    (5 * 2**20, b'\x03' * 1000)])
    src['raw-sparse'] = (p, ['-f', 'raw'])

    p = d / 'dense.raw'
    p.write_bytes(os.urandom(3 * 2**20 + 512))
    src['raw-dense'] = (p, [])

    p = d / 'holes.qcow2'
    create(p, '8M')
    qemu_io(p, 'write -P 1 0 4k', 'write -P 2 1M 100k', 'write -P 3 3M 1',
            'write -P 4 7M 1M')
    src['qcow2-holes'] = (p, [])

    p = d / 'zero.qcow2'
    create(p, '4M')
    qemu_io(p, 'write -P 1 0 1M', 'write -z 256k 512k', 'write -z 2M 1M',
            'write -P 0 3M 64k')  # zero bytes stored as data count
    src['qcow2-zero-clusters'] = (p, [])

    p = d / 'compressed.qcow2'
    create(p, '4M')
    qemu_io(p, 'write -c -P 5 0 64k', 'write -c -P 6 1M 64k',
            'write -P 7 2M 64k')
    src['qcow2-compressed'] = (p, [])

    p = d / 'small-clusters.qcow2'
    create(p, '3M', 'cluster_size=512')
    qemu_io(p, 'write -P 1 512 512', 'write -P 2 100k 3k',
            'write -P 3 2M 64k')
    src['qcow2-512'] = (p, [])

    p = d / 'extl2.qcow2'
    create(p, '4M', 'extended_l2=on')
    qemu_io(p, 'write -P 1 0 2k', 'write -P 2 130k 4k', 'write -z 1M 64k')
    src['qcow2-extended-l2'] = (p, [])

    p = d / 'prealloc.qcow2'
    create(p, '4M', 'preallocation=metadata')
    qemu_io(p, 'write -P 1 64k 64k', 'write -P 2 3M 4k')
    src['qcow2-prealloc-metadata'] = (p, [])

    p = d / 'v2.qcow2'
    create(p, '4M', 'compat=0.10')
    qemu_io(p, 'write -P 1 0 64k', 'write -z 1M 64k')
    src['qcow2-v2'] = (p, [])

    # a chain: raw base, qcow2 middle, qcow2 top; the top zeroes some of
    # the base and is longer than it
    base = d / 'base.raw'
    write_raw(base, 2 * 2**20, [(0, b'\x01' * 2**20)])
    mid = d / 'mid.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F',
         'raw', mid, '3M'], check=True)
    qemu_io(mid, 'write -P 2 2M 64k', 'write -z 128k 64k')
    top = d / 'top.qcow2'
    create(top, '6M', backing=mid)
    qemu_io(top, 'write -P 3 5M 4k', 'write -z 0 64k')
    src['chain'] = (top, [])

    p = d / 'snap.qcow2'
    create(p, '4M')
    qemu_io(p, 'write -P 1 0 1M')
    run(['qemu-img', 'snapshot', '-c', 'first', p], check=True)
    qemu_io(p, 'write -P 2 2M 2M', 'write -z 0 512k')
    run(['qemu-img', 'snapshot', '-c', '1', p], check=True)
    qemu_io(p, 'discard 0 4M')
    run(['qemu-img', 'resize', '-q', p, '6M'], check=True)
    src['snapshots'] = (p, [])
    src['snapshot-by-name'] = (p, ['-l', 'first'])
    src['snapshot-id-or-name'] = (p, ['-l', '1'])
    src['snapshot-id'] = (p, ['-l', 'snapshot.id=1'])
    src['snapshot-name'] = (p, ['-l', 'snapshot.name=1'])
    src['snapshot-both'] = (p, ['-l', 'snapshot.id=2,snapshot.name=1'])

    p = d / 'bitmaps.qcow2'
    create(p, '10M')
    qemu_io(p, 'write -P 1 0 64k')
    for args in (['bm0'], ['-g', '512', 'a-rather-long-bitmap-name'],
                 ['-g', '2M', '--disable', 'x']):
        run(['qemu-img', 'bitmap', '--add', p, *args], check=True)
    src['bitmaps'] = (p, [])

    return src


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp('measure'))


SOURCE_NAMES = ['raw-sparse', 'raw-dense', 'qcow2-holes',
                'qcow2-zero-clusters', 'qcow2-compressed', 'qcow2-512',
                'qcow2-extended-l2', 'qcow2-prealloc-metadata', 'qcow2-v2',
                'chain', 'snapshots', 'snapshot-by-name',
                'snapshot-id-or-name', 'snapshot-id', 'snapshot-name',
                'snapshot-both', 'bitmaps']


def both(args):
    ours = run([VIMG, 'measure', *args])
    theirs = run(['qemu-img', 'measure', *args])
    return ours, theirs


def assert_same_json(args):
    ours, theirs = both(['--output=json', *args])
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert json.loads(ours.stdout) == json.loads(theirs.stdout), args
    # the same text, field order included
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize('target', TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize('name', SOURCE_NAMES)
def test_source_like_qemu(sources, name, target):
    path, extra = sources[name]
    assert_same_json([*target, *extra, str(path)])


@pytest.mark.parametrize('name', SOURCE_NAMES)
def test_human_output_like_qemu(sources, name):
    path, extra = sources[name]
    for target in (['-O', 'qcow2'], []):
        ours, theirs = both([*target, *extra, str(path)])
        assert theirs.returncode == 0, theirs.stderr
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout


SIZES = ['0', '1', '511', '512', '1000', '64k', '1M', '1048577', '1.5k',
         '1G', '123456789', '1T', '5T', '8E', '9223372036854775296']


@pytest.mark.parametrize('target', TARGETS, ids=TARGET_IDS)
@pytest.mark.parametrize('size', SIZES)
def test_size_like_qemu(size, target):
    ours, theirs = both(['--output=json', *target, '--size', size])
    assert ours.returncode == theirs.returncode, ours.stderr + theirs.stderr
    if theirs.returncode == 0:
        assert json.loads(ours.stdout) == json.loads(theirs.stdout)
        assert ours.stdout == theirs.stdout
    else:
        assert ours.stdout == ''
        assert ours.stderr.startswith('vimg: '), ours.stderr


@pytest.mark.parametrize('size', ['0', '1000', '1G', '1T'])
def test_size_human_like_qemu(size):
    for target in ([], ['-O', 'qcow2', '-o', 'cluster_size=4k']):
        ours, theirs = both([*target, '--size', size])
        assert ours.returncode == 0 and theirs.returncode == 0
        assert ours.stdout == theirs.stdout


def test_options_accumulate_like_qemu():
    assert_same_json(['-O', 'qcow2', '-o', 'cluster_size=64k',
                      '-o', 'cluster_size=4k,refcount_bits=8', '--size', '1G'])
    # --size wins over size=, options after the file name count
    assert_same_json(['-O', 'qcow2', '-o', 'size=1T', '--size', '1M'])
    ours, theirs = both(['--size', '1M', '--output', 'json', '-O', 'qcow2'])
    assert ours.stdout == theirs.stdout


def test_format_and_options_ignored_by_measure(sources):
    path, _ = sources['qcow2-holes']
    # -f raw measures the qcow2 file itself; target options that do not
    # change sizes are accepted
    assert_same_json(['-f', 'raw', '-O', 'qcow2', str(path)])
    assert_same_json(['-O', 'qcow2', '-o',
                      'lazy_refcounts=on,compression_type=zstd,nocow=on,'
                      'extent_size_hint=1M', str(path), '-U'])
    assert_same_json(['-O', 'raw', '-o', 'preallocation=full', str(path)])


ERRORS = [
    ([], 'Either --size N or one filename must be specified'),
    (['--size', '1M', '{holes}'], '--size N cannot be used together'),
    (['{holes}', '{holes}'], 'At most one filename argument is allowed'),
    (['-f', 'qcow2', '--size', '1M'], 'require a filename argument'),
    (['-l', 'x', '--size', '1M'], 'require a filename argument'),
    (['--size', 'abc'], 'Invalid image size specified'),
    (['--size', '-1'], 'Invalid image size specified'),
    (['--size', '1.5'], 'Invalid image size specified'),
    (['--size', '9E'], 'Must be between 0 and 9223372036854775807'),
    (['--size', '9223372036854775808'],
     'Must be between 0 and 9223372036854775807'),
    (['--output=xml', '--size', '1M'], '--output must be used with human'),
    (['-O', 'bogus', '--size', '1M'], "Unknown file format 'bogus'"),
    (['-O', 'qcow2', '-o', 'foo=bar', '--size', '1M'],
     "Invalid parameter 'foo'"),
    (['-O', 'raw', '-o', 'cluster_size=4k', '--size', '1M'],
     "Invalid parameter 'cluster_size'"),
    (['-O', 'qcow2', '-o', 'help', '--size', '1M'],
     "Invalid parameter 'help'"),
    (['-O', 'qcow2', '-o', 'cluster_size=1000', '--size', '1M'],
     'Cluster size must be a power of two'),
    (['-O', 'qcow2', '-o', 'cluster_size=4M', '--size', '1M'],
     'Cluster size must be a power of two'),
    (['-O', 'qcow2', '-o', 'cluster_size=abc', '--size', '1M'],
     "'cluster_size'"),
    (['-O', 'qcow2', '-o', 'compat=0.11', '--size', '1M'],
     "Invalid compatibility level: '0.11'"),
    (['-O', 'qcow2', '-o', 'refcount_bits=3', '--size', '1M'],
     'Refcount width must be a power of two'),
    (['-O', 'qcow2', '-o', 'refcount_bits=128', '--size', '1M'],
     'Refcount width must be a power of two'),
    (['-O', 'qcow2', '-o', 'refcount_bits=8,compat=0.10', '--size', '1M'],
     'Different refcount widths than 16 bits require compatibility level'),
    (['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=4k', '--size', '1M'],
     'Extended L2 entries are only supported with cluster sizes of at '
     'least 16384 bytes'),
    (['-O', 'qcow2', '-o', 'extended_l2=maybe', '--size', '1M'],
     "'extended_l2'"),
    (['-O', 'qcow2', '-o', 'preallocation=bogus', '--size', '1M'],
     'invalid parameter value: bogus'),
    (['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '1T'],
     'The image size is too large (try using a larger cluster size)'),
    (['-O', 'qcow2', '-o', 'size=1T,cluster_size=512', '{holes}'],
     'The image size is too large'),
    (['{missing}'], "Could not open '{missing}'"),
    (['-f', 'qcow2', '{raw}'], "Could not open '{raw}'"),
    (['-l', 'nope', '{snap}'], "Failed to load snapshot: Can't find snapshot"),
    (['-l', 'snapshot.id=1,snapshot.name=1', '{snap}'],
     "Can't find snapshot"),
    (['-l', 'snapshot.id=', '{snap}'], "Can't find snapshot"),
    (['-l', 'snapshot.foo=1', '{snap}'],
     "Failed in parsing snapshot param 'snapshot.foo=1'"),
    (['-l', 'x', '{raw}'], 'does not support temporarily loading internal '
                           'snapshots'),
]


@pytest.mark.parametrize('args,message', ERRORS,
                         ids=[' '.join(a) or 'no-args' for a, _ in ERRORS])
def test_refusals_like_qemu(sources, tmp_path, args, message):
    names = {'holes': str(sources['qcow2-holes'][0]),
             'raw': str(sources['raw-sparse'][0]),
             'snap': str(sources['snapshots'][0]),
             'missing': str(tmp_path / 'missing.qcow2')}
    args = [a.format(**names) for a in args]
    message = message.format(**names)
    ours, theirs = both(args)
    assert theirs.returncode == 1, theirs.stdout + theirs.stderr
    assert message in theirs.stderr, theirs.stderr  # the oracle agrees
    assert ours.returncode == theirs.returncode, ours.stderr
    assert ours.stdout == ''
    assert message in ours.stderr, ours.stderr
    for line in ours.stderr.splitlines():
        assert line.startswith('vimg: '), ours.stderr


def test_huge_sparse_source(tmp_path):
    """A 1 TiB sparse raw file with one byte of data: qemu-img checks only
    --size against the L1 limit, never a source's size."""
    p = tmp_path / 'huge.raw'
    write_raw(p, 2**40, [(600 * 2**30 + 5, b'x')])
    for opts in ('cluster_size=512', 'cluster_size=2M,extended_l2=on',
                 'cluster_size=1k,refcount_bits=2'):
        assert_same_json(['-O', 'qcow2', '-o', opts, str(p)])


def test_help_and_usage():
    p = run([VIMG, 'help', 'measure'])
    assert p.returncode == 0
    assert p.stdout.startswith('usage: vimg measure '), p.stdout
    p = run([VIMG, 'measure', '--no-such-flag', '--size', '1M'])
    assert p.returncode == 1
    assert 'usage: vimg measure' in p.stderr
