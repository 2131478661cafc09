# SPDX-License-Identifier: MIT
"""The write path, checked against qemu-img (DESIGN.md "What complete
means", "Concurrency", "Durability").

For each image recipe (made by qemu-img or by vimg create, with every
QCOW2 feature that changes how a write lands: compat 0.10/1.1, cluster
sizes 512 B..2 MiB, refcount widths 1..64, lazy refcounts, extended L2,
zstd, external data files, preallocation, a raw backing file, existing
compressed and zero clusters, internal snapshots whose clusters are
shared), the raw model is taken with `qemu-img convert -O raw` and
tests/tools/workload runs a seeded random workload on one vimg handle,
first sequential, then 4 threads writing the same clusters (never the
same bytes).  Afterwards qemu-img must find the image clean (no
corruptions, no leaks, dirty bit clear), `qemu-img compare` and
`vimg compare` must find it equal to the model, and every internal
snapshot must read exactly as before.

The other direction: qemu-io writes into images vimg created, and into
images vimg has just written, from a seeded script applied to a Python
model too; the result must check clean and compare equal.

Environment: VIMG_WRITE_OPS sets the workload length (default 400);
VIMG_WRITE_SEED is added to every workload seed (default 0), for soaks.
"""
import json
import os
import random
import zlib
from dataclasses import dataclass

import pytest

from conftest import BUILD_DIR, SANITIZER_MARKS, VIMG, qemu, run

WORKLOAD = os.path.join(BUILD_DIR, 'tests', 'tools', 'workload')
OPS = int(os.environ.get('VIMG_WRITE_OPS', '400'))
SEED = int(os.environ.get('VIMG_WRITE_SEED', '0'))  # added to workload seeds
THREADS = 4
KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True)
class Recipe:
    name: str
    opts: str = ''          # -o for create
    size: int = 8 * MiB
    fmt: str = 'qcow2'
    tool: str = 'qemu'      # who creates the image: 'qemu' or 'vimg'
    backing: int = 0        # size of a patterned backing file, or 0
    backing_fmt: str = 'raw'  # its format (qcow2: with compressed clusters)
    populate: bool = False  # existing data: plain, compressed, zero
    compressed: bool = True  # populate writes compressed clusters too
    snapshots: int = 0      # internal snapshots taken while populating

    @property
    def cluster_size(self):
        for o in self.opts.split(','):
            if o.startswith('cluster_size='):
                return parse_size(o.split('=', 1)[1])
        return 64 * KiB

    @property
    def seed(self):
        return zlib.crc32(self.name.encode())


def parse_size(s):
    units = {'k': KiB, 'K': KiB, 'M': MiB, 'G': 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


RECIPES = [
    # qemu-img made, empty
    Recipe('v2', 'compat=0.10', 16 * MiB),
    Recipe('v3', 'compat=1.1', 16 * MiB),
    Recipe('cluster-512', 'cluster_size=512', 4 * MiB),
    Recipe('cluster-4k', 'cluster_size=4k', 8 * MiB),
    Recipe('cluster-2M', 'cluster_size=2M', 16 * MiB),
    Recipe('odd-size', '', 12 * MiB + 1536),
    Recipe('refcount-1', 'refcount_bits=1,cluster_size=4k', 8 * MiB),
    Recipe('refcount-2', 'refcount_bits=2', 8 * MiB),
    Recipe('refcount-8', 'refcount_bits=8', 8 * MiB),
    Recipe('refcount-16-512', 'refcount_bits=16,cluster_size=512', 4 * MiB),
    Recipe('refcount-64', 'refcount_bits=64,cluster_size=4k', 8 * MiB),
    Recipe('lazy', 'lazy_refcounts=on', 8 * MiB),
    Recipe('extl2-16k', 'extended_l2=on,cluster_size=16k', 8 * MiB),
    Recipe('extl2-64k', 'extended_l2=on,cluster_size=64k', 16 * MiB),
    Recipe('data-file', 'data_file=img.data', 8 * MiB),
    Recipe('data-file-raw', 'data_file=img.data,data_file_raw=on', 8 * MiB),
    Recipe('data-file-extl2', 'data_file=img.data,extended_l2=on', 8 * MiB),
    Recipe('prealloc-metadata', 'preallocation=metadata', 8 * MiB),
    Recipe('prealloc-metadata-v2', 'preallocation=metadata,compat=0.10',
           8 * MiB),
    Recipe('prealloc-falloc', 'preallocation=falloc', 8 * MiB),
    Recipe('prealloc-full', 'preallocation=full', 8 * MiB),
    Recipe('prealloc-full-extl2', 'preallocation=full,extended_l2=on',
           8 * MiB),
    # a raw backing file (shorter than the image: its tail reads zeroes)
    Recipe('backing', '', 8 * MiB, backing=6 * MiB),
    Recipe('backing-v2', 'compat=0.10', 8 * MiB, backing=8 * MiB),
    Recipe('backing-4k', 'cluster_size=4k', 8 * MiB, backing=8 * MiB,
           populate=True),
    Recipe('backing-extl2', 'extended_l2=on', 8 * MiB, backing=7 * MiB,
           populate=True),
    Recipe('backing-2M', 'cluster_size=2M', 16 * MiB, backing=16 * MiB,
           populate=True),
    Recipe('backing-qcow2', 'cluster_size=16k', 8 * MiB, backing=8 * MiB,
           backing_fmt='qcow2'),
    Recipe('backing-qcow2-extl2', 'extended_l2=on', 8 * MiB, backing=6 * MiB,
           backing_fmt='qcow2', populate=True),
    # existing data: compressed, zero and plain clusters; snapshots
    Recipe('zlib-data', '', 8 * MiB, populate=True),
    Recipe('zstd-data', 'compression_type=zstd', 8 * MiB, populate=True),
    Recipe('zstd-empty', 'compression_type=zstd', 4 * MiB),
    Recipe('data-512', 'cluster_size=512', 4 * MiB, populate=True),
    Recipe('snapshot', '', 8 * MiB, populate=True, snapshots=1),
    Recipe('snapshot-v2', 'compat=0.10', 8 * MiB, populate=True,
           snapshots=1),
    # (no compressed clusters: several share a host cluster, and two
    # snapshots would push its refcount past 3)
    Recipe('snapshots-refcount-2', 'refcount_bits=2,cluster_size=4k',
           8 * MiB, populate=True, compressed=False, snapshots=2),
    Recipe('snapshot-extl2', 'extended_l2=on,cluster_size=16k', 8 * MiB,
           populate=True, snapshots=1),
    Recipe('snapshot-lazy', 'lazy_refcounts=on', 8 * MiB, populate=True,
           snapshots=1),
    Recipe('snapshot-zstd-2M', 'compression_type=zstd,cluster_size=2M',
           16 * MiB, populate=True, snapshots=1),
    Recipe('snapshot-backing', 'cluster_size=16k', 8 * MiB,
           backing=8 * MiB, populate=True, snapshots=1),
    Recipe('data-file-populated', 'data_file=img.data', 8 * MiB,
           populate=True, compressed=False),
    # vimg create made
    Recipe('vimg-default', '', 16 * MiB, tool='vimg'),
    Recipe('vimg-v2', 'compat=0.10', 8 * MiB, tool='vimg'),
    Recipe('vimg-512-refcount-1', 'cluster_size=512,refcount_bits=1',
           4 * MiB, tool='vimg'),
    Recipe('vimg-2M', 'cluster_size=2M', 16 * MiB, tool='vimg'),
    Recipe('vimg-extl2', 'extended_l2=on,cluster_size=16k', 8 * MiB,
           tool='vimg'),
    Recipe('vimg-lazy-zstd', 'lazy_refcounts=on,compression_type=zstd',
           8 * MiB, tool='vimg'),
    Recipe('vimg-data-file-raw', 'data_file=img.data,data_file_raw=on',
           8 * MiB, tool='vimg'),
    Recipe('vimg-prealloc-metadata', 'preallocation=metadata', 8 * MiB,
           tool='vimg'),
    Recipe('vimg-backing', '', 8 * MiB, tool='vimg', backing=8 * MiB),
    Recipe('vimg-many-options',
           'cluster_size=32k,refcount_bits=32,lazy_refcounts=on,'
           'compression_type=zstd,extended_l2=on', 8 * MiB, tool='vimg'),
    Recipe('vimg-populated-snapshot', 'cluster_size=4k', 8 * MiB,
           tool='vimg', populate=True, snapshots=1),
    # raw (any size: the tail sector is partial)
    Recipe('raw', '', 8 * MiB + 1000, fmt='raw', populate=True,
           compressed=False),
    Recipe('raw-vimg', '', 4 * MiB, fmt='raw', tool='vimg'),
]
BY_NAME = {r.name: r for r in RECIPES}
assert len(BY_NAME) == len(RECIPES)


# -- building images ---------------------------------------------------------

def make_sources(d, seed):
    """Three files of seeded bytes for `qemu-io write -s` (which repeats a
    short file to fill the write): random, a short repeat, text."""
    r = random.Random(seed)
    data = [r.randbytes(300000),
            (r.randbytes(777) * 400)[:300000],
            b' '.join(r.randbytes(r.randrange(2, 9)).hex().encode()
                      for _ in range(30000))[:300000]]
    paths = []
    for i, b in enumerate(data):
        p = d / f'src{i}.bin'
        p.write_bytes(b)
        paths.append(p)
    return paths, data


def populate_commands(r, size, cs, sources, compressed):
    """qemu-io commands that leave data, zero, discarded and (if asked)
    compressed clusters all over an image of SIZE bytes."""
    cmds = []
    for _ in range(30):
        length = r.choice((1, 300, 512, 4096, 7000, 65536, 200000, 600000))
        length = min(length, size)
        off = r.randrange(0, size - length + 1)
        op = r.randrange(8)
        if op <= 3:
            cmds.append(f'write -s {r.choice(sources)} {off} {length}')
        elif op == 4:
            cmds.append(f'write -P {r.randrange(1, 256)} {off} {length}')
        elif op == 5:
            cmds.append(f'write -z {off} {length}')
        elif op == 6:
            cmds.append(f'write -z -u {off} {length}')
        else:
            cmds.append(f'discard {off} {length}')
    if compressed:
        # qemu compresses only into a cluster with no data offset: discard
        # it first (it becomes a zero or unallocated cluster).
        for _ in range(min(12, size // cs)):
            off = r.randrange(0, size // cs) * cs
            cmds.append(f'discard {off} {cs}')
            cmds.append(f'write -c -s {r.choice(sources)} {off} {cs}')
    return cmds


def qemu_io(fmt, img, cmds, cwd=None):
    args = []
    for c in cmds:
        args += ['-c', c]
    p = qemu('qemu-io', '-f', fmt, *args, img, timeout=120, cwd=cwd)
    assert 'failed' not in p.stdout.lower() and \
        'error' not in p.stdout.lower(), p.stdout + p.stderr
    return p


def make_backing(d, size, seed, fmt='raw'):
    """base.FMT: a 0x5a pattern overwritten in places with seeded data
    and zeroes; a qcow2 base (64 KiB clusters) also gets compressed
    clusters and unallocated ones (which read as zeroes)."""
    base = d / f'base.{fmt}'
    qemu('qemu-img', 'create', '-q', '-f', fmt, base, str(size))
    sources, _ = make_sources(d, seed + 1)
    r = random.Random(seed + 2)
    cmds = [f'write -P 0x5a 0 {size - size // 4}']
    for _ in range(20):
        length = r.choice((512, 4096, 65536, 300000))
        off = r.randrange(0, size - length + 1)
        cmds.append(f'write -s {r.choice(sources)} {off} {length}')
    for _ in range(6):
        cmds.append(f'write -z {r.randrange(0, size - 65536)} '
                    f'{r.choice((512, 4096, 65536))}')
    if fmt == 'qcow2':
        cs = 64 * KiB
        for _ in range(16):
            off = r.randrange(0, size // cs) * cs
            cmds.append(f'discard {off} {cs}')
            cmds.append(f'write -c -s {r.choice(sources)} {off} {cs}')
    qemu_io(fmt, base, cmds)
    return base


def build(recipe, d):
    """Make the image for RECIPE in D; returns (image, snapshot names)."""
    img = d / f'img.{recipe.fmt}'
    args = ['create', '-q', '-f', recipe.fmt]
    if recipe.opts:
        args += ['-o', recipe.opts]
    if recipe.backing:
        fmt = recipe.backing_fmt
        make_backing(d, recipe.backing, recipe.seed, fmt)
        args += ['-b', f'base.{fmt}', '-F', fmt]
    args += [img.name, str(recipe.size)]
    if recipe.tool == 'vimg':
        p = run([VIMG, *args], cwd=d)
        assert p.returncode == 0, f'vimg create failed: {p.stderr}'
    else:
        qemu('qemu-img', *args, cwd=d)
    snapshots = []
    if recipe.populate:
        sources, _ = make_sources(d, recipe.seed)
        r = random.Random(recipe.seed)
        rounds = recipe.snapshots + 1
        for i in range(rounds):
            qemu_io(recipe.fmt, img,
                    populate_commands(r, recipe.size, recipe.cluster_size,
                                      sources, recipe.compressed), cwd=d)
            if i < recipe.snapshots:
                name = f'snap{i + 1}'
                qemu('qemu-img', 'snapshot', '-c', name, img, cwd=d)
                snapshots.append(name)
    return img, snapshots


# -- checking images ---------------------------------------------------------

def to_raw(fmt, img, out, snapshot=None):
    extra = ['-l', f'snapshot.name={snapshot}'] if snapshot else []
    qemu('qemu-img', 'convert', '-f', fmt, *extra, '-O', 'raw', img, out,
         timeout=120)
    return out


def assert_clean(img):
    """qemu-img check finds nothing wrong; the dirty bit is clear."""
    c = run(['qemu-img', 'check', '--output=json', '-f', 'qcow2', img],
            timeout=120)
    try:
        report = json.loads(c.stdout)
    except ValueError:
        report = {}
    problems = {k: report.get(k, 0)
                for k in ('corruptions', 'leaks', 'check-errors')}
    assert c.returncode == 0 and not any(problems.values()), \
        f'qemu-img check {img}: exit {c.returncode}, {problems}\n' \
        f'{c.stdout}{c.stderr}\n' + \
        run(['qemu-img', 'check', '-f', 'qcow2', img]).stdout
    i = run(['qemu-img', 'info', '--output=json', '-f', 'qcow2', img],
            check=True)
    info = json.loads(i.stdout)
    assert info.get('dirty-flag', False) is False, \
        f'{img}: dirty bit still set after vimg_close'
    data = info.get('format-specific', {}).get('data', {})
    assert data.get('corrupt', False) is False, f'{img}: marked corrupt'


def assert_same(fmt, img, model):
    """qemu-img compare and vimg compare both find IMG equal to MODEL."""
    q = run(['qemu-img', 'compare', '-f', fmt, '-F', 'raw', img, model],
            timeout=120)
    assert q.returncode == 0, \
        f'qemu-img compare {img} {model}: exit {q.returncode}\n' \
        f'{q.stdout}{q.stderr}'
    v = run([VIMG, 'compare', '-f', fmt, '-F', 'raw', img, model],
            timeout=120)
    for mark in SANITIZER_MARKS:
        assert mark not in v.stderr, v.stderr
    assert v.returncode == 0, \
        f'vimg compare {img} {model}: exit {v.returncode}\n' \
        f'{v.stdout}{v.stderr}'


def run_workload(fmt, img, model, seed, ops=OPS, threads=THREADS):
    seed += SEED
    p = run([WORKLOAD, '-f', fmt, '-t', threads, '-n', ops, '-s', seed,
             img, model], timeout=600)
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, f'workload: {mark} report:\n{p.stderr}'
    what = {3: ' (the write path returned -ENOTSUP: not implemented)'}
    assert p.returncode == 0, \
        f'workload -f {fmt} -t {threads} -n {ops} -s {seed} {img} MODEL ' \
        f'exited {p.returncode}{what.get(p.returncode, "")}:\n' \
        f'{p.stderr}{p.stdout}'
    assert 'all match' in p.stdout, p.stdout
    return p


# -- the vimg workload -------------------------------------------------------

def test_workload_is_built():
    assert os.access(WORKLOAD, os.X_OK), \
        f'{WORKLOAD} missing: build tests/tools (meson compile)'


def snapshots_raw(recipe, img, d, when):
    return {s: to_raw(recipe.fmt, img, d / f'{s}.{when}.raw', s)
            for s in snapshot_names(img)}


def snapshot_names(img):
    if img.suffix != '.qcow2':
        return []
    info = json.loads(qemu('qemu-img', 'info', '--output=json', '-U',
                           img).stdout)
    return [s['name'] for s in info.get('snapshots', [])]


def workload_and_verify(recipe, d, seed, runs=1, threads=THREADS):
    """Build RECIPE in D, run the workload RUNS times (reopening between
    runs), then check the image with qemu-img and vimg against the model,
    and the snapshots against what they held before."""
    img, snapshots = build(recipe, d)
    model = to_raw(recipe.fmt, img, d / 'model.raw')
    before = snapshots_raw(recipe, img, d, 'before')
    assert sorted(before) == sorted(snapshots)
    for i in range(runs):
        run_workload(recipe.fmt, img, model, seed + i, threads=threads)
    if recipe.fmt == 'qcow2':
        assert_clean(img)
    assert_same(recipe.fmt, img, model)
    if 'data_file_raw=on' in recipe.opts:
        # the external data file is itself the guest disk, byte for byte
        assert_same('raw', d / 'img.data', model)
    after = snapshots_raw(recipe, img, d, 'after')
    assert sorted(after) == sorted(before), 'the snapshot list changed'
    for s, path in before.items():
        assert after[s].read_bytes() == path.read_bytes(), \
            f'snapshot {s} changed: the workload wrote into shared clusters'
    return img, model


@pytest.mark.parametrize('recipe', RECIPES, ids=[r.name for r in RECIPES])
def test_workload(tmp_path, monkeypatch, recipe):
    monkeypatch.chdir(tmp_path)  # qemu opens a data file from the cwd
    workload_and_verify(recipe, tmp_path, recipe.seed)


@pytest.mark.parametrize('name', ['v3', 'cluster-512', 'refcount-1',
                                  'snapshot'])
def test_workload_twice(tmp_path, monkeypatch, name):
    """A second run on the same image (reopened, with the first run's
    clusters allocated) starts from vimg's own metadata."""
    monkeypatch.chdir(tmp_path)
    workload_and_verify(BY_NAME[name], tmp_path, BY_NAME[name].seed, runs=2)


@pytest.mark.parametrize('name', ['cluster-512', 'snapshot', 'extl2-16k',
                                  'backing-4k', 'refcount-1'])
def test_workload_evicting_cache(tmp_path, monkeypatch, name):
    """A two-slot L2 cache: tables are evicted and written back all the
    time while 8 threads write; nothing may be lost."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('VIMG_QCOW2_L2_CACHE_SIZE', '1')
    workload_and_verify(BY_NAME[name], tmp_path, BY_NAME[name].seed + 5,
                        threads=8)


def test_workload_detects_mismatch(tmp_path):
    """The checker itself must be able to fail: a byte flipped in the
    model (of a raw image, which vimg writes already) is reported with
    its offset, and the model is still written back."""
    img = tmp_path / 'img.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', img, str(4 * MiB))
    model = tmp_path / 'model.raw'
    data = bytearray(4 * MiB)
    where = 3 * MiB + 12345
    data[where] = 0xa5
    model.write_bytes(bytes(data))
    p = run([WORKLOAD, '-f', 'raw', '-n', 2, '-m', 512, '-s', 3,
             '--no-zeroes', '--no-discard', img, model], timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f'{where:#x}' in p.stderr, p.stderr
    assert 'all match' not in p.stdout


# -- qemu-io as the writer ---------------------------------------------------

def qemu_io_script(r, size, cs, model, sources, has_discard, count=150):
    """COUNT seeded qemu-io commands, applied to MODEL (a bytearray) as
    qemu applies them: data writes from the source files (repeated to
    length) or -P patterns, zero writes, and cluster-aligned discards
    (qemu discards whole clusters only; they then read as zeroes)."""
    names, datas = sources
    cmds = []
    for _ in range(count):
        length = min(size, r.choice((1, 17, 512, 4096, 5000, 65536, 100000,
                                     1 << 20)))
        off = r.randrange(0, size - length + 1)
        if r.randrange(3) == 0:
            off -= off % 512
        op = r.randrange(10)
        if op <= 4:
            i = r.randrange(len(names))
            src = datas[i]
            buf = (src * (length // len(src) + 1))[:length]
            cmds.append(f'write -s {names[i]} {off} {length}')
            model[off:off + length] = buf
        elif op <= 6:
            p = r.randrange(256)
            cmds.append(f'write -P {p} {off} {length}')
            model[off:off + length] = bytes([p]) * length
        elif op <= 8 or not has_discard:
            cmds.append(f'write -z{" -u" if op == 8 else ""} {off} {length}')
            model[off:off + length] = bytes(length)
        else:
            first = r.randrange(0, size // cs)
            n = r.randrange(1, 5)
            end = min(size // cs, first + n)
            cmds.append(f'discard {first * cs} {(end - first) * cs}')
            model[first * cs:end * cs] = bytes((end - first) * cs)
    return cmds


QEMU_IO_ON_VIMG = [
    ('default', ''),
    ('v2', 'compat=0.10'),
    ('cluster-512-refcount-1', 'cluster_size=512,refcount_bits=1'),
    ('cluster-2M', 'cluster_size=2M'),
    ('extl2', 'extended_l2=on,cluster_size=16k'),
    ('lazy-refcount-64', 'lazy_refcounts=on,refcount_bits=64'),
    ('data-file', 'data_file=img.data'),
    ('prealloc-metadata', 'preallocation=metadata'),
    ('backing', 'backing'),
]


@pytest.mark.parametrize('name,opts', QEMU_IO_ON_VIMG,
                         ids=[q[0] for q in QEMU_IO_ON_VIMG])
def test_qemu_io_on_vimg_image(tmp_path, monkeypatch, name, opts):
    """Images vimg creates take qemu's writes and stay clean."""
    monkeypatch.chdir(tmp_path)
    size = 8 * MiB
    seed = zlib.crc32(name.encode())
    args = ['create', '-q', '-f', 'qcow2']
    cs = 64 * KiB
    if opts == 'backing':
        make_backing(tmp_path, size, seed)
        args += ['-b', 'base.raw', '-F', 'raw']
    elif opts:
        args += ['-o', opts]
        cs = Recipe('x', opts).cluster_size
    img = tmp_path / 'img.qcow2'
    p = run([VIMG, *args, img.name, str(size)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    model = bytearray(to_raw('qcow2', img, tmp_path / 'model.raw')
                      .read_bytes())
    sources = make_sources(tmp_path, seed)
    r = random.Random(seed)
    # (No v2 image over a backing file here: qemu discards such a
    # cluster by unallocating it, and it then reads from the backing.)
    cmds = qemu_io_script(r, size, cs, model, sources, has_discard=True)
    qemu_io('qcow2', img, cmds, cwd=tmp_path)
    (tmp_path / 'model.raw').write_bytes(bytes(model))
    assert_clean(img)
    assert_same('qcow2', img, tmp_path / 'model.raw')


@pytest.mark.parametrize('name', ['v3', 'cluster-512', 'extl2-16k',
                                  'refcount-2', 'snapshot', 'backing-4k',
                                  'vimg-many-options'])
def test_qemu_io_after_vimg_workload(tmp_path, monkeypatch, name):
    """qemu carries on writing an image vimg has written (so vimg's
    refcounts and free-space bookkeeping must be exact, or qemu would
    hand out a cluster twice); both writers' data must survive."""
    monkeypatch.chdir(tmp_path)
    recipe = BY_NAME[name]
    img, _ = build(recipe, tmp_path)
    model_path = to_raw('qcow2', img, tmp_path / 'model.raw')
    before = snapshots_raw(recipe, img, tmp_path, 'before')
    run_workload('qcow2', img, model_path, recipe.seed)
    model = bytearray(model_path.read_bytes())
    sources = make_sources(tmp_path, recipe.seed + 7)
    r = random.Random(recipe.seed + 7)
    cmds = qemu_io_script(r, recipe.size, recipe.cluster_size, model,
                          sources, has_discard=True)
    qemu_io('qcow2', img, cmds, cwd=tmp_path)
    model_path.write_bytes(bytes(model))
    assert_clean(img)
    assert_same('qcow2', img, model_path)
    after = snapshots_raw(recipe, img, tmp_path, 'after')
    assert sorted(after) == sorted(before), 'the snapshot list changed'
    for s, path in before.items():
        assert after[s].read_bytes() == path.read_bytes(), \
            f'snapshot {s} changed'
