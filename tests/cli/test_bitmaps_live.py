# SPDX-License-Identifier: MIT
"""Persistent dirty bitmaps stay true while vimg writes (issue 9, item 6).

Each test makes an image with bitmaps by `qemu-img bitmap --add` (enabled
and disabled, several granularities), does the same guest writes once
with vimg and once with qemu-img/qemu-io on a copy, and compares the
dirty maps as qemu-nbd exports them (`qemu-nbd -B NAME` read through
`nbdinfo --map=qemu:dirty-bitmap:NAME`).  After every vimg operation the
image checks clean and no bitmap is left in use; a vimg killed mid-write
leaves its enabled bitmaps in use (inconsistent), as qemu does.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BUILD_DIR, qemu, run, vimg

WORKLOAD = os.path.join(BUILD_DIR, 'tests', 'tools', 'workload')
WRITER = os.path.join(BUILD_DIR, 'tests', 'tools', 'crash-writer')

# name -> (granularity, enabled)
BITMAPS = {
    'b0': ('64K', True),
    'b1': ('512K', True),
    'b2': ('512', True),
    'off': ('4K', False),
}


@pytest.fixture(scope='module', autouse=True)
def nbd_tools():
    for tool in ('qemu-nbd', 'nbdinfo'):
        assert shutil.which(tool), f'{tool} not found (make deps)'


def make_image(path, size='16M', opts=(), bitmaps=BITMAPS):
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', *opts, path, size)
    for name, (gran, enabled) in bitmaps.items():
        qemu('qemu-img', 'bitmap', '--add', '-g', gran,
             *([] if enabled else ['--disable']), path, name)
    return path


def dirty_map(img, name):
    """[(offset, length, 'dirty'|'clean')] of bitmap NAME, by qemu-nbd."""
    sock = os.path.join(os.path.dirname(img), f'nbd-{os.getpid()}.sock')
    srv = subprocess.Popen(['qemu-nbd', '-r', '-f', 'qcow2', '-B', name,
                            '-k', sock, str(img)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if os.path.exists(sock) or srv.poll() is not None:
                break
            time.sleep(0.02)
        assert os.path.exists(sock), \
            f'qemu-nbd -B {name} {img}: {srv.communicate()[1].decode()}'
        p = run(['nbdinfo', '--map=qemu:dirty-bitmap:' + name,
                 f'nbd+unix:///?socket={sock}'], check=True)
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=10)
        if os.path.exists(sock):
            os.unlink(sock)
    out = []
    for line in p.stdout.splitlines():
        off, length, _, what = line.split()
        out.append((int(off), int(length), what))
    return out


def bitmap_flags(img):
    info = json.loads(qemu('qemu-img', 'info', '-U', '--output=json',
                           img).stdout)
    bms = info['format-specific']['data'].get('bitmaps', [])
    return {b['name']: sorted(b['flags']) for b in bms}


def assert_clean_image(img, what):
    c = run(['qemu-img', 'check', img])
    assert c.returncode == 0, f'{what}: qemu-img check:\n{c.stdout}{c.stderr}'


def assert_same_maps(mine, theirs, names=BITMAPS):
    for name in names:
        assert dirty_map(mine, name) == dirty_map(theirs, name), \
            f'bitmap {name}'


def assert_stored(img, names=BITMAPS):
    """Every bitmap consistent again, enabled ones still auto."""
    flags = bitmap_flags(img)
    for name in names:
        want = ['auto'] if BITMAPS.get(name, ('', True))[1] else []
        assert flags[name] == want, (name, flags)


@pytest.mark.parametrize('opts', [[], ['-o', 'cluster_size=4k'],
                                  ['-o', 'cluster_size=16k,extended_l2=on']],
                         ids=['64k', '4k', 'extl2'])
def test_convert_n_dirties_like_qemu(tmp_path, opts):
    src = tmp_path / 'src.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', src, '6M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -P 1 100k 300k',
         '-c', 'write -P 2 2M 4k', '-c', 'write -P 3 5M 1536', src)
    mine = make_image(tmp_path / 'mine.qcow2', opts=opts)
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)

    p = vimg('convert', '-n', '-f', 'raw', '-O', 'qcow2', src, mine)
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'qcow2', src, theirs)

    assert_clean_image(mine, 'convert -n')
    assert_stored(mine)
    assert_same_maps(mine, theirs)
    assert dirty_map(mine, 'b0')[0][2] == 'dirty'
    assert dirty_map(mine, 'off') == [(0, 16 << 20, 'clean')]


RUN_BYTES = 4096  # workload phase 2: run r belongs to thread r % THREADS


def owned_segments(thread, threads, off, end):
    """The parts of [OFF, END) a phase 2 thread writes (workload.c,
    next_owned)."""
    pos = off
    while pos < end:
        run = pos // RUN_BYTES
        run += (thread + threads - run % threads) % threads
        start = max(pos, run * RUN_BYTES)
        if start >= end:
            return
        stop = end if threads == 1 else min(end, (run + 1) * RUN_BYTES)
        yield start, stop - start
        pos = stop


def replay_ops(log, threads=4):
    """qemu-io commands for the write, zero and discard ops of a workload
    -v log (phase 2 ops only on their thread's runs)."""
    cmds = []
    for line in log.splitlines():
        f = line.split()
        if '#' not in line or len(f) < 4:
            continue
        i = next(k for k, w in enumerate(f) if w.startswith('#'))
        if i + 3 >= len(f):
            continue
        op, off, length = f[i + 1], int(f[i + 2], 16), int(f[i + 3][1:])
        if f[0] == 'p2':
            segs = owned_segments(int(f[1][1:]), threads, off, off + length)
        else:
            segs = [(off, length)]
        for o, n in segs:
            if op == 'pwrite':
                cmds.append(f'write {o} {n}')
            elif op == 'write_zeroes':
                unmap = ' -u' if 'may_unmap' in f else ''
                cmds.append(f'write -z{unmap} {o} {n}')
            elif op == 'discard':
                cmds.append(f'discard {o} {n}')
    return cmds


@pytest.mark.parametrize('phase', ['1', '2'])
@pytest.mark.parametrize('seed', [1, 7])
def test_workload_dirties_like_qemu(tmp_path, seed, phase):
    mine = make_image(tmp_path / 'mine.qcow2', opts=['-o', 'cluster_size=4k'])
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)
    model = tmp_path / 'model.raw'
    qemu('qemu-img', 'convert', '-O', 'raw', mine, model)

    # phase 2: four threads writing the same clusters at once
    p = run([WORKLOAD, '--phase', phase, '-n', '160', '-s', str(seed), '-m',
             '100000', '-t', '4', '-v',
             mine, model], timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    cmds = replay_ops(p.stderr)
    kinds = {c.split()[0] + (' -z' if '-z' in c else '') for c in cmds}
    assert kinds == {'write', 'write -z', 'discard'}, kinds
    args = []
    for c in cmds:
        args += ['-c', c]
    qemu('qemu-io', '-f', 'qcow2', *args, theirs)

    assert_clean_image(mine, 'workload')
    assert_stored(mine)
    assert_same_maps(mine, theirs)


def test_commit_dirties_base_like_qemu(tmp_path):
    mine = {}
    theirs = {}
    for d, who in ((mine, 'mine'), (theirs, 'theirs')):
        (tmp_path / who).mkdir()
        d['base'] = make_image(tmp_path / who / 'base.qcow2')
        qemu('qemu-io', '-c', 'write -P 5 0 1M', d['base'])
        d['top'] = tmp_path / who / 'top.qcow2'
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2',
             '-F', 'qcow2', d['top'])
        qemu('qemu-img', 'bitmap', '--add', d['top'], 'b0')
        qemu('qemu-io', '-c', 'write -P 6 3M 1M', '-c', 'write -P 7 9M 1k',
             '-c', 'write -z 12M 64k', d['top'])

    p = vimg('commit', mine['top'])
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'commit', theirs['top'])

    for k in ('base', 'top'):
        assert_clean_image(mine[k], f'commit ({k})')
        assert_same_maps(mine[k], theirs[k],
                         BITMAPS if k == 'base' else ['b0'])
    assert_stored(mine['base'])
    assert ('3145728', 'dirty') in {(str(o), w) for o, _, w in
                                    dirty_map(mine['base'], 'b0')}


def test_rebase_dirties_like_qemu(tmp_path):
    mine = {}
    theirs = {}
    for d, who in ((mine, 'mine'), (theirs, 'theirs')):
        (tmp_path / who).mkdir()
        old = tmp_path / who / 'old.qcow2'
        new = tmp_path / who / 'new.qcow2'
        for b, pat in ((old, 1), (new, 2)):
            qemu('qemu-img', 'create', '-q', '-f', 'qcow2', b, '16M')
            qemu('qemu-io', '-c', f'write -P {pat} 1M 512k', b)
        d['top'] = make_image(tmp_path / who / 'top.qcow2',
                              opts=['-b', 'old.qcow2', '-F', 'qcow2'])

    p = vimg('rebase', '-b', 'new.qcow2', '-F', 'qcow2', mine['top'])
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'rebase', '-b', 'new.qcow2', '-F', 'qcow2',
         theirs['top'])

    assert_clean_image(mine['top'], 'rebase')
    assert_stored(mine['top'])
    assert_same_maps(mine['top'], theirs['top'])
    assert any(w == 'dirty' for _, _, w in dirty_map(mine['top'], 'b0'))


def test_resize_follows_qemu(tmp_path):
    mine = make_image(tmp_path / 'mine.qcow2')
    qemu('qemu-io', '-c', 'write 1M 64k', '-c', 'write 12M 64k', mine)
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)

    # shrinking drops the bits past the end; growing adds clean ones
    for args in (['--shrink', '8M'], ['24M']):
        p = vimg('resize', '-f', 'qcow2', mine, *args)
        assert p.returncode == 0, p.stderr
        qemu('qemu-img', 'resize', '-f', 'qcow2', theirs, *args)
        assert_clean_image(mine, f'resize {args}')
        assert_stored(mine)
    assert_same_maps(mine, theirs)
    assert dirty_map(mine, 'b0') == [(0, 1 << 20, 'clean'),
                                     (1 << 20, 64 << 10, 'dirty'),
                                     ((1 << 20) + (64 << 10),
                                      (23 << 20) - (64 << 10), 'clean')]


def set_in_use(img, name):
    """Set the in_use flag of bitmap NAME by hand, as a crash leaves it."""
    with open(img, 'r+b') as f:
        hdr = f.read(65536)
        off = int.from_bytes(hdr[100:104], 'big')  # header_length
        while True:
            t = int.from_bytes(hdr[off:off + 4], 'big')
            ln = int.from_bytes(hdr[off + 4:off + 8], 'big')
            assert t != 0, 'no bitmaps extension'
            if t == 0x23852875:
                dir_off = int.from_bytes(hdr[off + 24:off + 32], 'big')
                break
            off += 8 + ((ln + 7) & ~7)
        f.seek(dir_off)
        d = f.read(65536)
        pos = 0
        while True:
            nlen = int.from_bytes(d[pos + 18:pos + 20], 'big')
            elen = int.from_bytes(d[pos + 20:pos + 24], 'big')
            if d[pos + 24 + elen:pos + 24 + elen + nlen] == name.encode():
                flags = int.from_bytes(d[pos + 12:pos + 16], 'big') | 1
                f.seek(dir_off + pos + 12)
                f.write(flags.to_bytes(4, 'big'))
                return
            pos += (24 + elen + nlen + 7) & ~7


def test_inconsistent_bitmaps_left_alone(tmp_path):
    mine = make_image(tmp_path / 'mine.qcow2')
    set_in_use(mine, 'b1')
    src = tmp_path / 'src.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', src, '2M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -P 9 0 2M', src)
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)

    p = vimg('convert', '-n', '-f', 'raw', '-O', 'qcow2', src, mine)
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'qcow2', src, theirs)
    assert_clean_image(mine, 'convert -n')
    flags = bitmap_flags(mine)
    assert flags['b1'] == ['auto', 'in-use'], flags
    assert flags['b0'] == ['auto'], flags
    assert_same_maps(mine, theirs, ['b0', 'b2', 'off'])

    # qemu-img refuses to resize an image with an inconsistent bitmap
    p = vimg('resize', '-f', 'qcow2', mine, '32M')
    q = run(['qemu-img', 'resize', '-f', 'qcow2', theirs, '32M'])
    assert q.returncode != 0
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Bitmap 'b1' is inconsistent" in p.stderr
    assert json.loads(qemu('qemu-img', 'info', '--output=json',
                           mine).stdout)['virtual-size'] == 16 << 20


def test_crash_leaves_bitmaps_in_use(tmp_path):
    # 1 GiB: 16384 ops with a flush every 8, seconds of work left when
    # the first flush is reported
    img = make_image(tmp_path / 'c.qcow2', size='1G',
                     opts=['-o', 'cluster_size=4k'])
    w = subprocess.Popen([WRITER, 'run', str(img), '3'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # kill it once it has flushed (so it has written) but is still going
    line = w.stdout.readline().decode()
    w.send_signal(signal.SIGKILL)
    assert line.startswith('flushed'), line + w.stderr.read().decode()
    w.wait()
    assert w.returncode == -signal.SIGKILL, 'crash-writer ended by itself'

    flags = bitmap_flags(img)
    for name, (_, enabled) in BITMAPS.items():
        # enabled bitmaps went stale on disk: in use; disabled untouched
        assert flags[name] == (['auto', 'in-use'] if enabled else []), flags
    c = run(['qemu-img', 'check', '--output=json', img])
    assert c.returncode in (0, 3), c.stdout + c.stderr  # leaks allowed
    assert dirty_map(img, 'off') == [(0, 1 << 30, 'clean')]


@pytest.mark.parametrize('enabled', [True, False], ids=['enabled', 'disabled'])
def test_snapshot_apply_refused_like_qemu(tmp_path, enabled):
    mine = tmp_path / 'mine.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', mine, '16M')
    qemu('qemu-io', '-c', 'write -P 1 1M 64k', mine)
    qemu('qemu-img', 'snapshot', '-c', 's1', mine)
    qemu('qemu-img', 'bitmap', '--add', *([] if enabled else ['--disable']),
         mine, 'b0')
    qemu('qemu-io', '-c', 'write -P 2 1M 64k', mine)
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)

    q = run(['qemu-img', 'snapshot', '-a', 's1', theirs])
    p = vimg('snapshot', '-a', 's1', mine)
    assert q.returncode == 1, q.stderr
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Could not apply snapshot 's1': Device has active dirty " \
        "bitmaps" in p.stderr
    # nothing changed: the data written after the snapshot is still there
    assert run(['qemu-img', 'compare', mine, theirs]).returncode == 0
    assert_clean_image(mine, 'snapshot -a')
    assert bitmap_flags(mine)['b0'] == (['auto'] if enabled else [])


def test_compressed_convert_n_dirties_like_qemu(tmp_path):
    src = tmp_path / 'src.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', src, '3M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -P 4 0 1M',
         '-c', 'write -P 5 2M 64k', src)
    mine = make_image(tmp_path / 'mine.qcow2', size='8M')
    theirs = tmp_path / 'theirs.qcow2'
    shutil.copy(mine, theirs)

    p = vimg('convert', '-n', '-c', '-f', 'raw', '-O', 'qcow2', src, mine)
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'convert', '-n', '-c', '-f', 'raw', '-O', 'qcow2', src,
         theirs)
    assert_clean_image(mine, 'convert -n -c')
    assert_stored(mine)
    assert_same_maps(mine, theirs)
    assert dirty_map(mine, 'b0')[0] == (0, 3 << 20, 'dirty')


def test_open_without_writes_keeps_bitmaps_consistent(tmp_path):
    """The documented difference from qemu (docs/bitmaps.md): a read-write
    open marks nothing until the first change, so a vimg killed before it
    wrote leaves consistent bitmaps (qemu-io would leave them in use).
    A guard for that choice, alongside the tests of the new behaviour."""
    img = make_image(tmp_path / 'h.qcow2')
    qemu('qemu-io', '-c', 'write 1M 64k', img)
    before = img.read_bytes()
    holder = subprocess.Popen([os.path.join(BUILD_DIR, 'tests', 'tools',
                                            'hold-image'), '-w', str(img)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    line = holder.stdout.readline().decode()
    assert line.strip() == 'ready', line + holder.stderr.read().decode()
    assert bitmap_flags(img) == {'b0': ['auto'], 'b1': ['auto'],
                                 'b2': ['auto'], 'off': []}
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert img.read_bytes() == before
    assert dirty_map(img, 'b0')[1] == (1 << 20, 64 << 10, 'dirty')
