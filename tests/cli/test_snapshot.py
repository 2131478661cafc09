# SPDX-License-Identifier: MIT
"""vimg snapshot: internal snapshots made, applied and deleted by vimg and
by qemu-img in turn, checked against raw models of every snapshot point,
with `qemu-img check` clean (no leaks either) after every step; refusals
as qemu-img's; and failures or kills at any point never corrupt."""
import os
import random
import signal
import struct
import subprocess
import time

import pytest

from conftest import VIMG, run

KiB, MiB = 1 << 10, 1 << 20
FAULTY = os.path.join(os.path.dirname(VIMG), 'vimg-faulty')


def qemu(*args):
    return run(['qemu-img', *args], check=True)


def qemu_io(img, *cmds):
    args = ['qemu-io', '-f', 'qcow2']
    for c in cmds:
        args += ['-c', c]
    run(args + [img], check=True)


def guest(img, tmp, snapshot=None):
    """The guest content of IMG (or of one of its snapshots), as bytes."""
    out = tmp / 'content.raw'
    more = ['-l', f'snapshot.name={snapshot}'] if snapshot else []
    qemu('convert', '-f', 'qcow2', *more, '-O', 'raw', img, out)
    data = out.read_bytes()
    out.unlink()
    return data


def check(img, allow_leaks=False):
    """qemu-img check: no corruption, and no leaks unless allowed."""
    p = run(['qemu-img', 'check', img])
    ok = (0, 3) if allow_leaks else (0,)
    assert p.returncode in ok, p.stdout + p.stderr
    return p


def check_after_crash(img):
    """After a failure or a kill: free of corruption (leaks allowed), or,
    when the dirty bit says the operation was cut short, clean once
    `qemu-img check -r all` has rebuilt the refcounts (as the next
    read-write open does)."""
    incompat = struct.unpack('>Q', img.read_bytes()[72:80])[0]
    if incompat & 1:
        run(['qemu-img', 'check', '-q', '-r', 'all', img])
        incompat = struct.unpack('>Q', img.read_bytes()[72:80])[0]
        assert not incompat & 1, 'check -r all left the image dirty'
        check(img)
    else:
        check(img, allow_leaks=True)


def snapshot(tool, *args):
    cmd = [VIMG] if tool == 'vimg' else ['qemu-img']
    p = run(cmd + ['snapshot', *args])
    assert p.returncode == 0, f'{tool} snapshot {args}: {p.stderr}'


CONFIGS = {
    'default': [],
    'c512': ['-o', 'cluster_size=512'],
    'c2M': ['-o', 'cluster_size=2M'],
    'rb4': ['-o', 'refcount_bits=4'],
    'rb64': ['-o', 'refcount_bits=64'],
    'v2': ['-o', 'compat=0.10'],
    'extl2': ['-o', 'extended_l2=on'],
    'lazy': ['-o', 'lazy_refcounts=on'],
    'zstd': ['-o', 'compression_type=zstd,cluster_size=4k'],
}


@pytest.mark.parametrize('config', list(CONFIGS))
def test_model(tmp_path, config):
    """A seeded sequence of writes and snapshot operations, each snapshot
    operation done by vimg or qemu-img in turn; the disk and every
    snapshot always read as their raw models."""
    rnd = random.Random(f'snap-{config}')
    img = tmp_path / 's.qcow2'
    size = 4 * MiB
    qemu('create', '-q', '-f', 'qcow2', *CONFIGS[config], img, str(size))
    model = bytearray(size)
    snaps = {}  # name -> bytes
    can_resize = config != 'v2'
    can_compress = config not in ('extl2',)
    cluster_size = {'c512': 512, 'c2M': 2 * MiB, 'zstd': 4 * KiB}.get(
        config, 64 * KiB)
    n = 0

    def write():
        nonlocal model
        off = rnd.randrange(0, len(model) // 512) * 512
        length = min(rnd.choice([512, 4 * KiB, 64 * KiB, 300 * KiB]),
                     len(model) - off)
        kind = rnd.choice(['data', 'data', 'zero', 'discard', 'compressed'])
        if kind == 'compressed' and can_compress:
            # qemu-io compresses whole, unallocated clusters only
            cs = cluster_size
            off = off // cs * cs
            length = min(cs, len(model) - off)
            pat = rnd.randrange(1, 256)
            qemu_io(img, f'discard {off} {length}',
                    f'write -c -P {pat} {off} {length}')
            model[off:off + length] = bytes([pat]) * length
        elif kind == 'discard':
            # discard is advisory: only whole clusters surely read zeroes
            cs = cluster_size
            off = off // cs * cs
            length = max(length // cs, 1) * cs
            length = min(length, len(model) - off) // cs * cs
            if length:
                qemu_io(img, f'discard {off} {length}')
                model[off:off + length] = bytes(length)
        elif kind == 'zero':
            qemu_io(img, f'write -z {off} {length}')
            model[off:off + length] = bytes(length)
        else:
            pat = rnd.randrange(1, 256)
            qemu_io(img, f'write -P {pat} {off} {length}')
            model[off:off + length] = bytes([pat]) * length

    for step in range(24):
        tool = 'vimg' if step % 2 == 0 else 'qemu-img'
        for _ in range(rnd.randrange(1, 4)):
            write()
        op = rnd.choice(['create', 'create', 'apply', 'delete', 'resize'])
        if op == 'create' or not snaps:
            n += 1
            name = f's{n}'
            snapshot(tool, '-c', name, img)
            snaps[name] = bytes(model)
        elif op == 'apply':
            name = rnd.choice(sorted(snaps))
            snapshot(tool, '-a', name, img)
            model = bytearray(snaps[name])
        elif op == 'delete':
            name = rnd.choice(sorted(snaps))
            snapshot(tool, '-d', name, img)
            del snaps[name]
        elif can_resize:
            grow = rnd.choice([512, 64 * KiB, 1 * MiB])
            cmd = [VIMG] if tool == 'vimg' else ['qemu-img']
            p = run(cmd + ['resize', '-q', '-f', 'qcow2', img,
                           f'+{grow}'])
            assert p.returncode == 0, p.stderr
            model += bytes(grow)
        check(img)
        assert guest(img, tmp_path) == bytes(model), f'step {step} ({op})'
    for name, content in snaps.items():
        got = guest(img, tmp_path, name)
        # qemu-img reads a snapshot at the current disk size
        n = min(len(got), len(content))
        assert got[:n] == content[:n], name
        assert got[n:] == bytes(len(got) - n), name
    # both list the same snapshots the same way
    v = run([VIMG, 'snapshot', '-l', img])
    q = run(['qemu-img', 'snapshot', '-l', img])
    assert v.returncode == 0 and v.stdout == q.stdout


def test_snapshot_shares_compressed_clusters(tmp_path):
    """Compressed clusters packed into one host cluster gain a reference
    each; deleting in the middle and applying old snapshots keeps them."""
    img = tmp_path / 'c.qcow2'
    qemu('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', img, '1M')
    for i in range(16):
        qemu_io(img, f'write -c -P {i + 1} {i * 4096} 4k')
    first = guest(img, tmp_path)
    snapshot('vimg', '-c', 'a', img)
    qemu_io(img, 'write -P 0x77 0 64k')
    snapshot('vimg', '-c', 'b', img)
    snapshot('vimg', '-d', 'a', img)
    check(img)
    snapshot('vimg', '-a', 'b', img)
    check(img)
    assert guest(img, tmp_path)[:65536] == b'\x77' * 65536
    snapshot('vimg', '-c', 'c', img)
    qemu_io(img, 'write -P 0x78 0 1M')
    snapshot('vimg', '-a', 'c', img)
    snapshot('vimg', '-d', 'b', img)
    snapshot('vimg', '-d', 'c', img)
    check(img)
    assert guest(img, tmp_path)[:65536] == b'\x77' * 65536
    assert guest(img, tmp_path)[65536:] == first[65536:]


def test_list_matches_qemu(tmp_path):
    img = tmp_path / 'l.qcow2'
    qemu('create', '-q', '-f', 'qcow2', img, '1M')
    v = run([VIMG, 'snapshot', '-l', img])
    assert v.returncode == 0 and v.stdout == ''
    qemu('snapshot', '-c', 'from-qemu', img)
    snapshot('vimg', '-c', 'from vimg', img)
    snapshot('vimg', '-c', 'from vimg', img)  # names need not be unique
    v = run([VIMG, 'snapshot', '-l', img])
    q = run(['qemu-img', 'snapshot', '-l', img])
    assert v.stdout == q.stdout
    assert [ln.split()[0] for ln in v.stdout.splitlines()[2:]] == \
        ['1', '2', '3']
    # info lists them too
    assert 'from vimg' in run([VIMG, 'info', img]).stdout
    # apply takes an ID; delete takes the first with that name
    snapshot('vimg', '-a', '1', img)
    snapshot('vimg', '-d', 'from vimg', img)
    q = run(['qemu-img', 'snapshot', '-l', img])
    assert [ln.split()[0] for ln in q.stdout.splitlines()[2:]] == ['1', '3']
    check(img)


def refusal(tmp_path, args, img, words):
    before = img.read_bytes()
    q = run(['qemu-img', 'snapshot', *args, img])
    img.write_bytes(before)  # qemu may have changed it
    p = run([VIMG, 'snapshot', *args, img])
    assert p.returncode == q.returncode == 1, (p.stderr, q.stderr)
    assert words in p.stderr, p.stderr
    assert img.read_bytes() == before


@pytest.mark.parametrize('bits', [1, 2])
def test_refcount_bits_too_small(tmp_path, bits):
    """One more reference would not fit: refused, the file unchanged."""
    img = tmp_path / 'r.qcow2'
    qemu('create', '-q', '-f', 'qcow2', '-o', f'refcount_bits={bits}', img,
         '1M')
    qemu_io(img, 'write -P 1 0 128k')
    for i in range({1: 0, 2: 2}[bits]):  # 2 bits hold 3: two fit
        snapshot('vimg', '-c', f'ok{i}', img)
    refusal(tmp_path, ['-c', 'one-too-many'], img,
            f'the most refcount_bits={bits} can hold')
    check(img)


def test_refusals(tmp_path):
    img = tmp_path / 'e.qcow2'
    qemu('create', '-q', '-f', 'qcow2', img, '1M')
    qemu('snapshot', '-c', 'x', img)
    refusal(tmp_path, ['-a', 'nope'], img, "apply snapshot 'nope'")
    refusal(tmp_path, ['-d', 'nope'], img, "delete snapshot 'nope'")
    refusal(tmp_path, ['-d', '1'], img, "delete snapshot '1'")  # names only
    refusal(tmp_path, ['-l', '-c', 'y'], img, "Cannot mix")
    df = tmp_path / 'df.qcow2'
    qemu('create', '-q', '-f', 'qcow2', '-o',
         f'data_file={tmp_path / "df.data"}', df, '1M')
    refusal(tmp_path, ['-c', 'y'], df, 'external data file')
    raw = tmp_path / 'r.raw'
    qemu('create', '-q', '-f', 'raw', raw, '1M')
    p = run([VIMG, 'snapshot', '-c', 'y', '-f', 'raw', raw])
    assert p.returncode == 1 and 'no internal snapshots' in p.stderr
    p = run([VIMG, 'snapshot', '-l', '-f', 'raw', raw])
    assert p.returncode == 0 and p.stdout == ''
    p = run([VIMG, 'snapshot', '-l', tmp_path / 'missing.qcow2'])
    assert p.returncode == 1 and 'missing.qcow2' in p.stderr


def make_busy(tmp_path, name, cluster='512'):
    """An image with many L2 tables, two snapshots and data changed since,
    so every snapshot operation has a lot to do."""
    img = tmp_path / name
    qemu('create', '-q', '-f', 'qcow2', '-o', f'cluster_size={cluster}', img,
         '16M')
    qemu_io(img, 'write -P 1 0 16M')
    qemu('snapshot', '-c', 'a', img)
    qemu_io(img, 'write -P 2 1M 6M')
    qemu('snapshot', '-c', 'b', img)
    qemu_io(img, 'write -P 3 4M 6M')
    return img


OPS = [('create', ['-c', 'new']), ('apply', ['-a', 'a']),
       ('delete', ['-d', 'a'])]


@pytest.mark.parametrize('op,args', OPS, ids=[o[0] for o in OPS])
@pytest.mark.parametrize('kind', ['w', 'f'])
def test_fault_injection(tmp_path, op, args, kind):
    """The Nth write (or flush) and all after it fail, N = 1, 2, ... until
    none fires: the command fails, and the image is free of corruption and
    reads either as before or as after the operation."""
    base = make_busy(tmp_path, 'base.qcow2', cluster='4k')
    before = guest(base, tmp_path)
    after_img = tmp_path / 'after.qcow2'
    after_img.write_bytes(base.read_bytes())
    snapshot('vimg', *args, after_img)
    after = guest(after_img, tmp_path)
    img = tmp_path / 'f.qcow2'
    for n in range(1, 400):
        img.write_bytes(base.read_bytes())
        p = run([FAULTY, 'snapshot', *args, img],
                env={**os.environ, 'VIMG_FAULT': f'{kind}{n}'})
        fired = 'vimg-faulty: 0 faults' not in p.stderr
        if not fired:
            assert p.returncode == 0, p.stderr
            break
        assert p.returncode == 1, f'{kind}{n}: the fault was not reported'
        check_after_crash(img)
        assert guest(img, tmp_path) in (before, after), f'{kind}{n}'
    else:
        pytest.fail('the fault kept firing')
    assert n > 2, 'the operation did no I/O?'


@pytest.mark.parametrize('op,args', OPS, ids=[o[0] for o in OPS])
def test_sigkill(tmp_path, op, args):
    """Killed at random moments: never corrupt, reads as before or after."""
    base = make_busy(tmp_path, 'base.qcow2')
    before = guest(base, tmp_path)
    after_img = tmp_path / 'after.qcow2'
    after_img.write_bytes(base.read_bytes())
    t0 = time.monotonic()
    snapshot('vimg', *args, after_img)
    took = time.monotonic() - t0
    after = guest(after_img, tmp_path)
    rnd = random.Random(op)
    img = tmp_path / 'k.qcow2'
    for i in range(12):
        img.write_bytes(base.read_bytes())
        p = subprocess.Popen([VIMG, 'snapshot', *args, img],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0, took))
        p.send_signal(signal.SIGKILL)
        p.wait()
        check_after_crash(img)
        assert guest(img, tmp_path) in (before, after), f'kill {i}'


@pytest.mark.parametrize('spec', ['s1', '1', 'snapshot.name=s2',
                                  'snapshot.id=2', 'snapshot.id=1,'
                                  'snapshot.name=s1'])
def test_convert_snapshot(tmp_path, spec):
    """convert -l reads a snapshot as qemu-img convert -l does."""
    img = tmp_path / 'c.qcow2'
    qemu('create', '-q', '-f', 'qcow2', img, '2M')
    qemu_io(img, 'write -P 1 0 1M')
    snapshot('vimg', '-c', 's1', img)
    qemu_io(img, 'write -P 2 512k 1M')
    snapshot('vimg', '-c', 's2', img)
    qemu_io(img, 'write -z 0 2M')
    for fmt in ('raw', 'qcow2'):
        v, q = tmp_path / f'v.{fmt}', tmp_path / f'q.{fmt}'
        p = run([VIMG, 'convert', '-l', spec, '-O', fmt, img, v])
        assert p.returncode == 0, p.stderr
        qemu('convert', '-l', spec, '-O', fmt, img, q)
        qemu('compare', '-f', fmt, '-F', fmt, v, q)
    assert guest(tmp_path / 'v.qcow2', tmp_path) != bytes(2 * MiB)


def test_convert_snapshot_refusals(tmp_path):
    img = tmp_path / 'c.qcow2'
    qemu('create', '-q', '-f', 'qcow2', img, '1M')
    snapshot('vimg', '-c', 's1', img)
    for args, words in [(['-l', 'nope', img], 'Failed to load snapshot'),
                        (['-l', 's1', img, img], 'multiple snapshot')]:
        q = run(['qemu-img', 'convert', '-O', 'raw', *args,
                 tmp_path / 'q.raw'])
        p = run([VIMG, 'convert', '-O', 'raw', *args, tmp_path / 'v.raw'])
        assert p.returncode == q.returncode == 1
        assert words in p.stderr, p.stderr
