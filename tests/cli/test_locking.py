# SPDX-License-Identifier: MIT
"""Image locking, as qemu does it (issue 9).

An image is held open by qemu-nbd, qemu-io or a second vimg (the
hold-image tool, which opens it through libvimg); then each command is run
twice, by qemu-img and by vimg, on two identical copies held the same way.
The outcome (exit status, which "Failed to get ... lock" message, which
image it names) must be the same, and a command vimg refuses must leave
every file as it was.  The other way round, the lock bytes vimg holds in
/proc/locks must be the ones qemu-io holds for the same open, and qemu-img
and qemu-io must be refused by a vimg holder exactly as by that qemu-io.
"""
import hashlib
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BUILD_DIR, SANITIZER_MARKS, VIMG, qemu, run

HOLD = os.path.join(BUILD_DIR, 'tests', 'tools', 'hold-image')
MIB = 1 << 20


def lock_bytes(path):
    """The OFD lock bytes someone holds on PATH, from /proc/locks."""
    ino = os.stat(path).st_ino
    held = set()
    with open('/proc/locks') as f:
        for line in f:
            fields = line.split()
            if 'OFDLCK' not in fields:
                continue
            if not any(x.endswith(f':{ino}') for x in fields):
                continue
            start, end = int(fields[-2]), int(fields[-1])
            held.update(range(start, end + 1))
    return held


class Holder:
    """KIND ('qemu-nbd', 'qemu-io' or 'vimg') holding PATH open in MODE
    ('rw', 'ro' or 'U' for read-only with force-share)."""

    def __init__(self, kind, mode, path, fmt):
        self.kind, self.mode, self.path, self.fmt = kind, mode, path, fmt
        self.proc = None

    def __enter__(self):
        d = os.path.dirname(self.path)
        if self.kind == 'qemu-nbd':
            args = ['qemu-nbd', '-f', self.fmt, '-k',
                    os.path.join(d, 'nbd.sock'), self.path]
            if self.mode != 'rw':
                args.insert(1, '-r')
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        elif self.kind == 'qemu-io':
            args = ['qemu-io', '-f', self.fmt, self.path]
            if self.mode != 'rw':
                args.insert(1, '-r')
            if self.mode == 'U':
                args.insert(1, '-U')
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        else:
            args = [HOLD, '-f', self.fmt, self.path]
            if self.mode == 'rw':
                args.insert(1, '-w')
            if self.mode == 'U':
                args.insert(1, '-U')
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
            line = self.proc.stdout.readline()
            assert line == b'ready\n', \
                f'hold-image failed: {self.proc.stderr.read()}'
            return self
        deadline = time.monotonic() + 10
        while not lock_bytes(self.path):
            assert self.proc.poll() is None, \
                f'{self.kind} exited: {self.proc.stderr.read()}'
            assert time.monotonic() < deadline, f'{self.kind} took no lock'
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        if self.kind == 'qemu-nbd':
            self.proc.terminate()
        else:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.proc.stderr.read().decode(errors='replace')
        self.proc.stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.kind == 'vimg':
            assert_clean(err, 'hold-image')
            assert self.proc.returncode == 0, err


def assert_clean(stderr, what):
    for mark in SANITIZER_MARKS:
        assert mark not in stderr, f'{what}: {mark} report:\n{stderr}'


def outcome(p):
    """What must be the same for qemu-img and vimg."""
    locks = re.findall(r'Failed to get (?:shared )?"[a-z ]+" lock', p.stderr)
    who = re.findall(r'Is another process using the image \[([^\]]*)\]\?',
                     p.stderr)
    force = 'force-share=on can only be used with read-only' in p.stderr
    return p.returncode, locks, who, force


def hashes(d):
    out = {}
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if os.path.isfile(path) and not name.endswith('.sock'):
            with open(path, 'rb') as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_files(d, fmt):
    """img.FMT (1 MiB, data in the first 64 KiB), ref.raw (its content),
    src.raw (other data) in D."""
    os.makedirs(d)
    img = os.path.join(d, f'img.{fmt}')
    qemu('qemu-img', 'create', '-q', '-f', fmt, img, '1M')
    qemu('qemu-io', '-f', fmt, '-c', 'write -q -P 0x5a 0 64k', img)
    qemu('qemu-img', 'convert', '-f', fmt, '-O', 'raw', img,
         os.path.join(d, 'ref.raw'))
    src = os.path.join(d, 'src.raw')
    qemu('qemu-img', 'create', '-q', '-f', 'raw', src, '1M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -q -P 0xa5 4k 8k', src)
    return f'img.{fmt}'


def run_pair(tmp_path, name, fmt, holder, mode, commands, target=None,
             maker=None, hold_fmt='raw'):
    """Run COMMANDS with qemu-img and with vimg, each on its own copy of
    the files, whose TARGET (default the image) is held by HOLDER/MODE."""
    results = {}
    for tool in ('qemu-img', VIMG):
        d = str(tmp_path / f'{name}-{"q" if tool == "qemu-img" else "v"}')
        img = (maker or make_files)(d, fmt)
        held = os.path.join(d, target or img)
        got = []
        with Holder(holder, mode, held, hold_fmt if target else fmt):
            for cmd in commands:
                args = [a.replace('IMG', img) for a in cmd]
                before = hashes(d)
                p = run([tool, *args], cwd=d)
                if tool == VIMG:
                    assert_clean(p.stderr, args)
                o = outcome(p)
                if tool == VIMG and p.returncode != 0 and o[1]:
                    assert hashes(d) == before, \
                        f'refused vimg {args} changed files'
                got.append((args, o, p.stderr.strip()))
        results[tool] = got
    bad = [f'{args}:\n  qemu-img: {q} {qerr!r}\n  vimg:     {v} {verr!r}'
           for (args, q, qerr), (_, v, verr) in zip(results['qemu-img'],
                                                    results[VIMG])
           if v != q]
    assert not bad, f'{holder} {mode}: ' + '\n'.join(bad)


READS = [
    ['info', 'IMG'], ['info', '-U', 'IMG'],
    ['map', 'IMG'], ['map', '-U', 'IMG'],
    ['check', 'IMG'], ['check', '-U', 'IMG'],
    ['compare', 'IMG', 'ref.raw'], ['compare', '-U', 'IMG', 'ref.raw'],
    ['convert', '-O', 'raw', 'IMG', 'out.raw'],
    ['convert', '-U', '-O', 'raw', 'IMG', 'out2.raw'],
    ['measure', '-O', 'qcow2', 'IMG'], ['measure', '-U', '-O', 'qcow2', 'IMG'],
]
QCOW2_ONLY = [
    ['snapshot', '-l', 'IMG'], ['snapshot', '-l', '-U', 'IMG'],
    ['check', '-U', '-r', 'all', 'IMG'], ['check', '-r', 'all', 'IMG'],
    ['snapshot', '-c', 's1', 'IMG'],
    ['amend', '-o', 'lazy_refcounts=on', 'IMG'],
]
WRITES = [
    ['resize', 'IMG', '2M'],
    ['convert', '-n', '-O', 'FMT', 'src.raw', 'IMG'],
    ['convert', '-O', 'FMT', 'src.raw', 'IMG'],
    ['create', '-f', 'FMT', 'IMG', '1M'],
]

HOLDERS = [('qemu-nbd', 'rw'), ('qemu-nbd', 'ro'), ('qemu-io', 'rw'),
           ('qemu-io', 'ro'), ('qemu-io', 'U'), ('vimg', 'rw'),
           ('vimg', 'ro'), ('vimg', 'U')]


@pytest.mark.parametrize('holder,mode', HOLDERS,
                         ids=[f'{h}-{m}' for h, m in HOLDERS])
def test_qcow2_held(tmp_path, holder, mode):
    cmds = READS + QCOW2_ONLY + [[a.replace('FMT', 'qcow2') for a in c]
                                 for c in WRITES]
    run_pair(tmp_path, 'q', 'qcow2', holder, mode, cmds)


@pytest.mark.parametrize('holder,mode', [('qemu-nbd', 'rw'), ('qemu-nbd', 'ro'),
                                         ('qemu-io', 'rw'), ('vimg', 'rw'),
                                         ('vimg', 'ro')])
def test_raw_held(tmp_path, holder, mode):
    cmds = READS + [['resize', '-f', 'raw', 'IMG', '2M']] + \
        [[a.replace('FMT', 'raw') for a in c] for c in WRITES[1:]]
    run_pair(tmp_path, 'r', 'raw', holder, mode, cmds)


def make_chain(d, bfmt):
    """top.qcow2 over base.BFMT, with other.raw to rebase onto."""
    base = os.path.join(d, f'base.{bfmt}')
    qemu('qemu-img', 'create', '-q', '-f', bfmt, base, '1M')
    qemu('qemu-img', 'create', '-q', '-f', 'raw', os.path.join(d, 'other.raw'),
         '1M')
    qemu('qemu-io', '-f', bfmt, '-c', 'write -q -P 0x11 0 128k', base)
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', f'base.{bfmt}',
         '-F', bfmt, os.path.join(d, 'top.qcow2'))
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x22 64k 64k',
         os.path.join(d, 'top.qcow2'))


CHAIN = [
    ['info', 'top.qcow2'], ['map', 'top.qcow2'], ['check', 'top.qcow2'],
    ['convert', '-O', 'raw', 'top.qcow2', 'out.raw'],
    ['compare', 'top.qcow2', 'ref.raw'],
    ['snapshot', '-c', 's', 'top.qcow2'],
    ['rebase', '-u', '-b', 'other.raw', '-F', 'raw', 'top.qcow2'],
    ['rebase', '-u', '-b', 'BASE', '-F', 'BFMT', 'top.qcow2'],
    ['rebase', '-b', 'other.raw', '-F', 'raw', 'top.qcow2'],
    ['rebase', '-u', '-b', 'BASE', '-F', 'BFMT', 'top.qcow2'],
    ['commit', 'top.qcow2'],
]
BACKING_HOLDS = [('raw', 'qemu-nbd', 'rw'), ('raw', 'qemu-nbd', 'ro'),
                 ('raw', 'qemu-io', 'U'), ('raw', 'vimg', 'rw'),
                 ('raw', 'vimg', 'ro'), ('qcow2', 'qemu-nbd', 'ro'),
                 ('qcow2', 'vimg', 'ro'), ('qcow2', 'qemu-io', 'U')]


@pytest.mark.parametrize('bfmt,holder,mode', BACKING_HOLDS,
                         ids=['-'.join(x) for x in BACKING_HOLDS])
def test_backing_held(tmp_path, bfmt, holder, mode):
    """The backing file is held: reads of the chain, rebases, and a commit
    into it (which reopens it read-write: the locks are upgraded)."""
    def files(d, fmt):
        os.makedirs(d)
        make_chain(d, bfmt)
        qemu('qemu-img', 'convert', '-O', 'raw', os.path.join(d, 'top.qcow2'),
             os.path.join(d, 'ref.raw'))
        return 'top.qcow2'
    cmds = [[a.replace('BFMT', bfmt).replace('BASE', f'base.{bfmt}')
             for a in c] for c in CHAIN]
    run_pair(tmp_path, 'c', 'qcow2', holder, mode, cmds,
             target=f'base.{bfmt}', maker=files, hold_fmt=bfmt)


@pytest.mark.parametrize('holder,mode', [('qemu-nbd', 'rw'), ('qemu-nbd', 'ro'),
                                         ('vimg', 'rw')])
def test_data_file_held(tmp_path, holder, mode):
    """The external data file is held."""
    def files(d, fmt):
        os.makedirs(d)
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
             'data_file=data.raw', os.path.join(d, 'img.qcow2'), '1M',
             cwd=d)
        qemu('qemu-io', '-f', 'qcow2', '-c', 'write -q -P 0x33 0 64k',
             'img.qcow2', cwd=d)
        return 'img.qcow2'
    cmds = [['info', 'IMG'], ['map', 'IMG'], ['check', 'IMG'],
            ['convert', '-O', 'raw', 'IMG', 'out.raw'],
            ['snapshot', '-l', 'IMG'], ['resize', 'IMG', '2M'],
            ['amend', '-o', 'lazy_refcounts=on', 'IMG'],
            ['create', '-f', 'qcow2', '-o', 'data_file=data.raw', 'new.qcow2',
             '1M']]
    run_pair(tmp_path, 'd', 'qcow2', holder, mode, cmds, target='data.raw',
             maker=files)


# vimg holding an image: the same lock bytes as qemu-io holding it the
# same way, so QEMU is refused exactly what qemu-img would refuse.
VIMG_HOLDS = [('qcow2', 'rw'), ('qcow2', 'ro'), ('qcow2', 'U'),
              ('raw', 'rw'), ('raw', 'ro')]
CLIENTS = [
    ['qemu-img', 'info', 'IMG'],
    ['qemu-img', 'check', 'IMG'],
    ['qemu-img', 'resize', '-f', 'FMT', 'IMG', '2M'],
    ['qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'FMT', 'src.raw', 'IMG'],
    ['qemu-io', '-f', 'FMT', '-c', 'write -P 7 0 4k', 'IMG'],
    ['qemu-io', '-r', '-f', 'FMT', '-c', 'read 0 4k', 'IMG'],
    ['qemu-io', '-U', '-r', '-f', 'FMT', '-c', 'read 0 4k', 'IMG'],
    ['qemu-nbd', '-f', 'FMT', '-k', 'c.sock', '--fork', 'IMG'],
    ['qemu-nbd', '-r', '-f', 'FMT', '-k', 'c.sock', '--fork', 'IMG'],
]


@pytest.mark.parametrize('fmt,mode', VIMG_HOLDS,
                         ids=[f'{f}-{m}' for f, m in VIMG_HOLDS])
def test_vimg_holds(tmp_path, fmt, mode):
    got = {}
    for kind in ('qemu-io', 'vimg'):
        d = str(tmp_path / kind)
        img = make_files(d, fmt)
        path = os.path.join(d, img)
        res = []
        with Holder(kind, mode, path, fmt):
            res.append(sorted(lock_bytes(path)))
            for cmd in CLIENTS:
                args = [a.replace('IMG', img).replace('FMT', fmt)
                        for a in cmd]
                p = run(args, cwd=d)
                res.append((args, p.returncode,
                            re.findall(r'Failed to get (?:shared )?'
                                       r'"[a-z ]+" lock', p.stderr)))
                if 'qemu-nbd' in args:
                    # a server that did start: stop it (and its locks)
                    sock = os.path.join(d, 'c.sock')
                    if p.returncode == 0:
                        run(['nbdinfo', '--size',
                             f'nbd+unix:///?socket={sock}'])
                        deadline = time.monotonic() + 10
                        while os.path.exists(sock) and \
                                time.monotonic() < deadline:
                            time.sleep(0.02)
                    if os.path.exists(sock):
                        os.unlink(sock)
        got[kind] = res
    assert got['vimg'][0] == got['qemu-io'][0], 'lock bytes differ'
    assert got['vimg'][0], 'vimg holds no lock'
    for q, v in zip(got['qemu-io'][1:], got['vimg'][1:]):
        assert v == q, f'{fmt} {mode}: {q[0]}: qemu-io holder {q}, vimg {v}'


def test_locks_released(tmp_path):
    """Nothing is left locked after a command, and the locks go with the
    process: a killed holder does not leave the image locked."""
    d = str(tmp_path / 'x')
    img = os.path.join(d, make_files(d, 'qcow2'))
    for args in (['info', img], ['check', img], ['snapshot', '-c', 's', img],
                 ['resize', img, '2M']):
        run([VIMG, *args], check=True)
        assert lock_bytes(img) == set()
    h = subprocess.Popen([HOLD, '-w', img], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    assert h.stdout.readline() == b'ready\n'
    assert run([VIMG, 'resize', img, '4M']).returncode == 1
    h.kill()
    h.wait()
    h.stdin.close()
    h.stdout.close()
    run([VIMG, 'resize', img, '4M'], check=True)


def test_library_flags(tmp_path):
    """VIMG_OPEN_FORCE_SHARE is for read-only opens only; with
    VIMG_OPEN_NO_LOCK a caller that locks by itself opens (and takes no
    lock) what is refused otherwise."""
    d = str(tmp_path / 'x')
    img = os.path.join(d, make_files(d, 'qcow2'))
    p = subprocess.run([HOLD, '-w', '-U', img], capture_output=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    assert b'force-share=on can only be used with read-only' in p.stderr
    with Holder('qemu-io', 'rw', img, 'qcow2'):
        held = lock_bytes(img)
        p = subprocess.run([HOLD, img], capture_output=True,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 1
        assert b'Failed to get shared "write" lock' in p.stderr
        h = subprocess.Popen([HOLD, '-n', '-w', img], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        assert h.stdout.readline() == b'ready\n'
        assert lock_bytes(img) == held
        h.stdin.close()
        assert h.wait(timeout=10) == 0
        h.stdout.close()


def test_concurrent_snapshots(tmp_path):
    """Two vimg snapshot -c at once: never both succeed with one lost."""
    d = str(tmp_path / 'x')
    img = os.path.join(d, make_files(d, 'qcow2'))
    ok = 0
    for i in range(8):
        procs = [subprocess.Popen([VIMG, 'snapshot', '-c', f's{i}-{j}', img],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for j in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            if p.returncode == 0:
                ok += 1
            else:
                assert p.returncode == 1
                assert b'Failed to get "write" lock' in err, err
    listed = qemu('qemu-img', 'snapshot', '-l', img).stdout
    assert len(re.findall(r'\bs\d-\d\b', listed)) == ok
    qemu('qemu-img', 'check', img)
