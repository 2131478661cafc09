# SPDX-License-Identifier: MIT
"""Snapshots are changed by nothing but snapshot commands (issue 9).

After every vimg operation that writes metadata (guest writes, zero
writes, discards and compressed writes through libvimg; amend of each
option; snapshot create, apply and delete; resize; check -r; commit;
rebase) every internal snapshot and the active layer must read, with
qemu-img and with vimg, as a model of what they hold (snapshot_model.py);
qemu-img check must be clean and list the model's snapshots.  Run on v2
and v3 images, extended L2, compressed and zero clusters, refcount widths
1 and 64."""
import json
import random

import pytest

from conftest import VIMG
from snapshot_model import KiB, MiB, Image, no_sanitizer_report, run

SIZE = 4 * MiB

# kind -> (cluster size, create options)
KINDS = {
    'v2': (4 * KiB, ['compat=0.10']),
    'v3': (16 * KiB, ['compat=1.1']),
    'extl2': (32 * KiB, ['extended_l2=on']),
    'compressed': (8 * KiB, []),
    'zero': (16 * KiB, []),
    'rb1': (8 * KiB, ['refcount_bits=1']),
    'rb64': (8 * KiB, ['refcount_bits=64']),
    # zero clusters that keep a host cluster a snapshot shares, as
    # `qemu-io -c 'write -z'` leaves them (vimg's own zero writes drop
    # a shared cluster instead)
    'qemu-zero': (16 * KiB, []),
}


def qemu_zero(img, ranges):
    """Zero RANGES (cluster numbers, counts) with qemu-io write -z,
    preparing state vimg does not make itself."""
    cs = img.cluster_size
    cmds = []
    for first, count in ranges:
        cmds += ['-c', f'write -z {first * cs} {count * cs}']
        img.active[first * cs:(first + count) * cs] = bytes(count * cs)
    run(['qemu-io', '-f', 'qcow2', *cmds, img.path], check=True)


def workload(img, rnd, kind, count=8, start=0, end=None):
    """A seeded list of guest writes for KIND, inside [START, END)."""
    end = len(img.active) if end is None else end
    cs = img.cluster_size
    ops = []
    for _ in range(count):
        choice = rnd.random()
        if kind == 'compressed' and choice < 0.4:
            off = rnd.randrange(start // cs, end // cs) * cs
            ops.append(('c', off))
            continue
        if kind == 'zero' and choice < 0.4:
            off = rnd.randrange(start // cs, end // cs) * cs
            n = min(rnd.randrange(1, 4) * cs, end - off)
            ops.append((rnd.choice(['z', 'zu']), off, n))
            continue
        off = rnd.randrange(start, end - 1)
        n = min(rnd.choice([1, 512, 3000, cs, 2 * cs + 77, 70 * KiB]),
                end - off)
        if choice < 0.8:
            ops.append(('w', off, n))
        elif choice < 0.9:
            ops.append((rnd.choice(['z', 'zu']), off, n))
        else:
            # a discard smaller than a cluster may be ignored; whole ones
            # must read zeroes
            off = off // cs * cs
            n = max(n // cs, 1) * cs
            ops.append(('d', off, min(n, end - off)))
    img.write(*ops)
    return ops


def make(tmp_path, kind, name='m.qcow2'):
    cs, opts = KINDS[kind]
    return Image(tmp_path / name, SIZE, cs, opts)


def snapshots_allowed(kind):
    return kind != 'rb1'


@pytest.mark.parametrize('kind', list(KINDS))
def test_sequence(tmp_path, kind):
    """A representative sequence of metadata-writing operations, each
    followed by a full comparison with the model."""
    rnd = random.Random(f'model-{kind}')
    img = make(tmp_path, kind)
    workload(img, rnd, kind, 12)
    img.verify('first writes')
    if not snapshots_allowed(kind):
        # refcount_bits=1: a snapshot would need refcount 2; vimg
        # refuses, as qemu-img does, and changes nothing
        before = open(img.path, 'rb').read()
        img.vimg('snapshot', '-c', 's1', img.path, expect=1)
        assert open(img.path, 'rb').read() == before
        img.amend('refcount_bits=2')
        img.verify('amend refcount_bits=2')
    img.snapshot_create('s1')
    img.verify('snapshot -c s1')
    workload(img, rnd, kind, 10)
    img.verify('writes after s1')
    img.snapshot_create('s2')
    workload(img, rnd, kind, 10)
    if kind == 'qemu-zero':
        cs = img.cluster_size
        img.write(('w', 0, 16 * cs))
        img.snapshot_create('sz')
        qemu_zero(img, [(1, 3), (6, 1), (9, 4)])
        img.verify('qemu-io write -z over shared clusters')
        # writes into them copy, never write the shared cluster
        img.write(('w', cs + 100, 200), ('w', 6 * cs, cs // 2),
                  ('z', 10 * cs, cs), ('d', 11 * cs, cs))
        img.verify('writes into shared zero clusters')
        qemu_zero(img, [(2, 1), (6, 1), (12, 1)])
    img.verify('writes after s2')
    if kind == 'v2':
        # v2 to v3 with snapshots in place
        img.amend('compat=1.1')
        img.verify('amend compat=1.1', full=True)
    img.amend('lazy_refcounts=on')
    if True:
        workload(img, rnd, kind, 6)
        img.verify('writes with lazy refcounts')
        img.amend('lazy_refcounts=off')
        img.verify('amend lazy_refcounts=off')
    # a refcount width too small for the shared clusters is refused
    img.amend('refcount_bits=1', expect=1)
    # (compressed clusters packed in one host cluster count one reference
    # each: 4 bits may not hold that)
    for bits in (64, 8 if kind == 'compressed' else 4, 16):
        img.amend(f'refcount_bits={bits}')
        img.verify(f'amend refcount_bits={bits}')
    img.vimg('check', '-r', 'all', img.path)
    img.verify('check -r all on a clean image')
    img.make_leak()
    img.expect_check_errors('a leak made')
    img.vimg('check', '-r', 'leaks', img.path)
    img.verify('check -r leaks')
    img.make_refcount_too_low()
    img.make_leak()
    img.expect_check_errors('refcount made too low')
    img.vimg('check', '-r', 'all', img.path)
    img.verify('check -r all', full=True)
    # the repaired refcount makes writes copy the shared clusters
    img.write(('w', 0, len(img.active)))
    img.verify('writes over everything after the repair')
    img.snapshot_apply('s1')
    img.verify('snapshot -a s1')
    workload(img, rnd, kind, 8)
    img.verify('writes after apply')
    img.snapshot_create('s3')
    img.snapshot_delete('s2')
    img.verify('snapshot -d s2')
    img.resize(SIZE + MiB)
    workload(img, rnd, kind, 6, start=SIZE - 64 * KiB)
    img.verify('resize +1M and writes')
    img.amend(f'size={SIZE + 2 * MiB}')
    img.verify('amend size (grow)')
    # vimg refuses to drop data past the new end (qemu-img drops it)
    new = SIZE - 512 * KiB
    img.amend(f'size={new}', expect=1)
    img.write(('d', new, len(img.active) - new))
    img.amend(f'size={new}')
    img.verify('amend size (shrink)', full=True)
    # refused as qemu-img refuses them, the file unchanged
    img.amend(f'data_file={img.path}.data', expect=1)
    img.amend('data_file_raw=on', expect=1)
    img.resize(SIZE - MiB, shrink=True)
    img.verify('resize --shrink')
    workload(img, rnd, kind, 6)
    img.snapshot_apply('s3')
    img.verify('snapshot -a s3')
    img.snapshot_delete('s1')
    img.snapshot_delete('s3')
    img.verify('all snapshots deleted')


DOWNGRADE_KINDS = ['v2', 'v3', 'extl2', 'compressed', 'zero', 'rb64',
                   'qemu-zero']


@pytest.mark.parametrize('kind', DOWNGRADE_KINDS)
def test_amend_compat_downgrade(tmp_path, kind):
    """amend -o compat=0.10 with internal snapshots: refused with the
    image unchanged (as qemu-img refuses), or done with every snapshot
    intact; never a snapshot that reads differently (issue 9 item 7)."""
    rnd = random.Random(f'downgrade-{kind}')
    img = make(tmp_path, kind)
    workload(img, rnd, kind, 12)
    img.snapshot_create('s1')
    workload(img, rnd, kind, 10)
    img.snapshot_create('s2')
    workload(img, rnd, kind, 8)
    if kind == 'qemu-zero':
        # over clusters s3 shares
        img.write(('w', 0, 8 * img.cluster_size))
        img.snapshot_create('s3')
        qemu_zero(img, [(1, 2), (5, 1)])
    if kind == 'rb64':
        img.amend('refcount_bits=16')
    if kind == 'v2':
        img.amend('compat=1.1')
        workload(img, rnd, 'zero', 8)
    img.verify('before the downgrade')
    before = open(img.path, 'rb').read()
    p = run([VIMG, 'amend', '-f', 'qcow2', '-o', 'compat=0.10',
             img.path])
    no_sanitizer_report(p, ['amend', img.path])
    if p.returncode != 0:
        assert open(img.path, 'rb').read() == before, \
            'a refused downgrade changed the file'
        return
    assert kind != 'extl2', 'extended L2 tables cannot be downgraded'

    img.verify('amend compat=0.10', full=True)
    workload(img, rnd, kind, 6)
    img.verify('writes after the downgrade', full=True)


@pytest.mark.parametrize('prealloc', ['metadata', 'falloc', 'full'])
@pytest.mark.parametrize('kind', ['v2', 'v3', 'extl2'])
def test_resize_preallocation(tmp_path, kind, prealloc):
    """Growing with preallocation after a shrink and discards freed
    clusters: the new space reads as zeroes (never as the stale data of a
    reused cluster), snapshots keep theirs."""
    rnd = random.Random(f'prealloc-{kind}-{prealloc}')
    img = make(tmp_path, kind)
    img.write(('w', 0, SIZE))
    img.snapshot_create('s1')
    workload(img, rnd, 'v3', 8)
    # clusters only the active layer uses, freed by the shrink and the
    # discard, are what a grow could reuse
    img.write(('w', SIZE - MiB, MiB), ('w', 0, 256 * KiB))
    if kind == 'v2':
        # as qemu-img: "Can't resize a v2 image which has snapshots"
        img.resize(SIZE - MiB, shrink=True, expect=1)
        img.resize(SIZE + MiB, prealloc=prealloc, expect=1)
        img.snapshot_create('s2')
        img.snapshot_delete('s1')
        img.verify('refused resizes')
        img.snapshot_delete('s2')
    img.resize(SIZE - MiB, shrink=True)
    img.write(('d', 0, 256 * KiB))
    img.verify('shrink and discard')
    img.resize(SIZE + MiB, prealloc=prealloc)
    img.verify(f'resize --preallocation={prealloc}', full=True)
    workload(img, rnd, 'v3', 6, start=SIZE - 2 * MiB)
    img.verify('writes after the grow')
    if img.snaps:
        img.snapshot_apply('s1')
        img.verify('snapshot -a s1 after the grow')


def make_base(tmp_path, name, seed=0):
    base = Image(tmp_path / name, SIZE, 64 * KiB, [])
    base.seed = seed
    base.write(('w', 0, SIZE))
    return base


@pytest.mark.parametrize('kind', ['v2', 'v3', 'extl2', 'compressed',
                                  'zero', 'rb64'])
def test_commit_into_image_with_snapshots(tmp_path, kind):
    """vimg commit of an overlay into a base that has internal snapshots:
    the base's active layer takes the overlay's data, its snapshots stay."""
    rnd = random.Random(f'commit-base-{kind}')
    img = make(tmp_path, kind)
    workload(img, rnd, kind, 10)
    img.snapshot_create('s1')
    workload(img, rnd, kind, 8)
    img.snapshot_create('s2')
    ov = Image(tmp_path / 'ov.qcow2', SIZE, 64 * KiB, [],
               base=(img.path, img.active))
    ov.seed = 10000
    workload(ov, rnd, 'zero', 12)
    img.vimg('commit', '-q', ov.path)
    img.active[:] = ov.active
    img.verify('commit into it', full=True)
    ov.verify('commit (the overlay)', full=True)
    img.snapshot_apply('s1')
    img.verify('snapshot -a s1 after the commit')


@pytest.mark.parametrize('kind,drop', [
    ('v2', False), ('v3', False), ('v3', True), ('extl2', False),
    ('compressed', True)])
def test_commit_image_with_snapshots(tmp_path, kind, drop):
    """vimg commit of an overlay that has internal snapshots into its base:
    the overlay is emptied (or kept with -d) yet its snapshots stay."""
    rnd = random.Random(f'commit-top-{kind}-{drop}')
    base = make_base(tmp_path, 'base.qcow2', seed=5000)
    cs, opts = KINDS[kind]
    top = Image(tmp_path / 'top.qcow2', SIZE, cs, opts,
                base=(base.path, base.active))
    # the snapshots own every cluster the commit changes in the base
    top.write(('w', 0, SIZE))
    top.snapshot_create('s1')
    workload(top, rnd, kind, 10)
    top.snapshot_create('s2')
    workload(top, rnd, kind, 10)
    top.verify('writes')
    top.vimg('commit', '-q', *(['-d'] if drop else []), top.path)
    base.active[:] = top.active
    base.verify('commit of the overlay')
    top.verify('commit (the overlay)', full=True)
    workload(top, rnd, kind, 6)
    top.snapshot_apply('s1')
    top.verify('snapshot -a s1 after the commit')


@pytest.mark.parametrize('kind', ['v2', 'v3', 'extl2', 'compressed'])
def test_rebase_image_with_snapshots(tmp_path, kind):
    """vimg rebase (safe and -u) and amend -o backing_file of an image with
    internal snapshots: the active layer keeps its content (safe) and the
    snapshots read through to whatever backing file the image names.

    b1 and b2 differ in the first MiB, which the image owns in every
    layer, and in the last MiB, which no snapshot owns."""
    rnd = random.Random(f'rebase-{kind}')
    b1 = make_base(tmp_path, 'b1.qcow2', seed=5000)
    run(['qemu-img', 'convert', '-O', 'qcow2', b1.path,
         tmp_path / 'b2.qcow2'], check=True)
    b2 = Image.adopt(tmp_path / 'b2.qcow2', 64 * KiB, b1.active)
    b2.seed = 6000
    b2.write(('w', 0, MiB), ('w', SIZE - MiB, MiB))
    tail = slice(SIZE - MiB, SIZE)
    cs, opts = KINDS[kind]
    top = Image(tmp_path / 'top.qcow2', SIZE, cs, opts,
                base=(b1.path, b1.active))
    top.write(('w', 0, MiB))
    workload(top, rnd, kind, 6, start=MiB, end=SIZE - MiB)
    top.snapshot_create('s1')
    workload(top, rnd, kind, 6, start=MiB, end=SIZE - MiB)
    top.snapshot_create('s2')
    workload(top, rnd, kind, 6, start=MiB, end=SIZE - MiB)
    top.verify('writes over b1')

    top.vimg('rebase', '-q', '-b', b2.path, '-F', 'qcow2', top.path)
    top.set_snapshots(SIZE - MiB, b2.active[tail])
    top.verify('rebase onto b2', full=True)
    top.vimg('rebase', '-q', '-u', '-b', b1.path, '-F', 'qcow2', top.path)
    top.set_snapshots(SIZE - MiB, b1.active[tail])
    top.verify('rebase -u onto b1')
    top.amend(f'backing_file={b2.path},backing_fmt=qcow2')
    top.set_snapshots(SIZE - MiB, b2.active[tail])
    top.verify('amend -o backing_file=b2')
    top.snapshot_apply('s1')
    top.verify('snapshot -a s1 over b2')
    top.snapshot_delete('s2')
    top.verify('snapshot -d s2 over b2')


def bitmap_names(img):
    """Names of IMG's persistent bitmaps; none may be left in use."""
    info = json.loads(run(['qemu-img', 'info', '--output=json', '-f',
                           'qcow2', img.path], check=True).stdout)
    bitmaps = info['format-specific']['data'].get('bitmaps', [])
    for b in bitmaps:
        assert 'in-use' not in b['flags'], f'bitmap {b["name"]} in use'
    return [b['name'] for b in bitmaps]


def test_image_with_bitmap(tmp_path):
    """The metadata-writing commands on an image with a persistent dirty
    bitmap (which vimg keeps, and which stops some commands as it stops
    qemu-img's): snapshots and the active layer stay as modelled."""
    rnd = random.Random('bitmap')
    img = make(tmp_path, 'compressed')
    run(['qemu-img', 'bitmap', '--add', img.path, 'b0'], check=True)
    workload(img, rnd, 'compressed', 10)
    img.snapshot_create('s1')
    workload(img, rnd, 'zero', 10)
    img.verify('writes with a bitmap')
    # refused by qemu-img too: "Device has active dirty bitmaps"
    img.refused('snapshot', '-a', 's1', img.path)
    img.refused('amend', '-o', 'compat=0.10', img.path)
    img.snapshot_create('s2')
    img.amend('lazy_refcounts=on')
    workload(img, rnd, 'v3', 6)
    img.amend('lazy_refcounts=off,refcount_bits=64')
    img.verify('amend with a bitmap', full=True)
    img.resize(SIZE + MiB)
    img.write(('w', SIZE - 100, 200))
    img.vimg('check', '-r', 'all', img.path)
    img.verify('resize and check -r all with a bitmap', full=True)
    ov = Image(tmp_path / 'ov.qcow2', SIZE + MiB, 64 * KiB, [],
               base=(img.path, img.active))
    ov.seed = 10000
    workload(ov, rnd, 'zero', 8)
    img.vimg('commit', '-q', ov.path)
    img.active[:] = ov.active
    img.snapshot_delete('s1')
    img.verify('commit into it, snapshot -d s1', full=True)
    assert bitmap_names(img) == ['b0']
