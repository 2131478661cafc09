# SPDX-License-Identifier: MIT
"""QCOW version 1 through the CLI and the library: a random write workload
against a model (threads, backing file, compressed clusters), SIGKILL and
failing-disk runs of the write path, check on damaged images, and the
commands qemu-img refuses for qcow (resize, measure) refused alike.

qemu-img has no check for qcow: after a crash the image must check clean
with `vimg check` (bounds and overlaps), read the same in qemu-img and
vimg, and every op before the last flush must read back.
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import BUILD_DIR, SANITIZER_MARKS, VIMG, qemu, run
from test_crash import last_flush

WORKLOAD = os.path.join(BUILD_DIR, 'tests', 'tools', 'workload')
WRITER = os.path.join(BUILD_DIR, 'tests', 'tools', 'crash-writer')
MiB = 1 << 20


def qcow_with_data(d, name, size='8M', backing=False):
    """A qemu-made qcow with plain and compressed clusters (and a raw
    backing file when BACKING)."""
    img = d / name
    args = []
    if backing:
        base = d / 'base.raw'
        qemu('qemu-img', 'create', '-q', '-f', 'raw', base, '6M')
        qemu('qemu-io', '-f', 'raw', '-c', 'write -P 0x5a 0 6M', base)
        args = ['-b', base.name, '-F', 'raw']
    qemu('qemu-img', 'create', '-q', '-f', 'qcow', *args, img, size)
    # qemu's qcow compresses one cluster per write (512 B over a backing
    # file, else 4 KiB)
    cs = 512 if backing else 4096
    zwrites = sum((['-c', f'write -c -P 0x31 {i * cs} {cs}']
                   for i in range(8)), [])
    qemu('qemu-io', *zwrites, '-c', 'write -P 0x32 4M 1M', img)
    return img


def to_raw(img, out):
    qemu('qemu-img', 'convert', '-O', 'raw', img, out, timeout=120)
    return out


def assert_checks_clean(img):
    c = run([VIMG, 'check', '--output=json', img])
    for mark in SANITIZER_MARKS:
        assert mark not in c.stderr, c.stderr
    assert c.returncode == 0, c.stdout + c.stderr
    r = json.loads(c.stdout)
    assert r['check-errors'] == 0 and 'corruptions' not in r, r


@pytest.mark.parametrize('backing', [False, True])
def test_workload_matches_model(tmp_path, backing):
    img = qcow_with_data(tmp_path, 'w.qcow', backing=backing)
    model = to_raw(img, tmp_path / 'model.raw')
    # lean: every allocation is flushed before its L2 entry is written
    p = run([WORKLOAD, '-f', 'qcow', '-t', 4, '-n', 40 if backing else 300,
             '-s', 11 + backing, '-m', 64 << 10, img, model], timeout=300)
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, p.stderr
    assert p.returncode == 0 and 'all match' in p.stdout, p.stdout + p.stderr
    q = run(['qemu-img', 'compare', '-f', 'qcow', '-F', 'raw', img, model],
            timeout=120)
    assert q.returncode == 0, q.stdout + q.stderr
    assert_checks_clean(img)


def assert_consistent(tmp_path, img, seed, k):
    assert_checks_clean(img)
    # qemu-img and vimg read the same disk
    a = to_raw(img, tmp_path / 'q.raw')
    v = run([VIMG, 'compare', '-F', 'raw', img, a], timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    v = run([WRITER, 'verify', img, seed, str(k)])
    assert v.returncode == 0, v.stderr


def test_sigkill_during_writes(tmp_path):
    tpl = qcow_with_data(tmp_path, 'tpl.qcow', size='16M', backing=True)
    rnd = random.Random(1)
    for attempt in range(4):
        img = tmp_path / f'run{attempt}.qcow'
        shutil.copy(tpl, img)
        seed = str(attempt + 1)
        p = subprocess.Popen([WRITER, 'run', img, seed],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.0, 0.2))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=60)
        assert_consistent(tmp_path, img, seed, last_flush(out.decode()))


@pytest.mark.parametrize('what', ['w', 'f'])
def test_failing_disk(tmp_path, what):
    tpl = qcow_with_data(tmp_path, 'tpl.qcow', size='16M')
    fired = 0
    for n in list(range(1, 9)) + list(range(9, 1200, 151)):
        img = tmp_path / 'f.qcow'
        shutil.copy(tpl, img)
        p = run([WRITER, 'run', img, '3', f'{what}{n}'], timeout=120)
        assert p.returncode in (0, 2), p.stderr
        if p.returncode == 2:
            break
        fired += 1
        assert_consistent(tmp_path, img, '3', last_flush(p.stdout))
    assert fired > 5


# -- damaged images: check counts, reads fail cleanly ------------------------

def l1_entry(img, i):
    with open(img, 'rb') as f:
        h = f.read(48)
        l1 = struct.unpack('>Q', h[40:48])[0]
        f.seek(l1 + 8 * i)
        return l1, struct.unpack('>Q', f.read(8))[0]


def poke(img, off, value):
    with open(img, 'r+b') as f:
        f.seek(off)
        f.write(struct.pack('>Q', value))


@pytest.mark.parametrize('damage', ['l2-past-eof', 'l2-overlaps-l2',
                                    'data-on-l2', 'compressed-past-eof'])
def test_check_finds_damage(tmp_path, damage):
    img = qcow_with_data(tmp_path, 'd.qcow')
    l1, l2 = l1_entry(img, 0)
    size = img.stat().st_size
    if damage == 'l2-past-eof':
        poke(img, l1, size + 4096)
    elif damage == 'l2-overlaps-l2':
        # L1 entry 1 (2M..4M, unallocated) gets a table across the first
        poke(img, l1 + 8, l2 - 512)
    elif damage == 'data-on-l2':
        # the L2 entry of guest cluster 1024 (4M) points at the L2 table
        _, l2b = l1_entry(img, 2)
        poke(img, l2b, l2)
    else:
        # the first compressed cluster's stream runs past the end
        with open(img, 'rb') as f:
            f.seek(l2)
            e = struct.unpack('>Q', f.read(8))[0]
        assert e >> 63
        poke(img, l2, (e & ~((1 << 51) - 1)) | (size - 10))
    c = run([VIMG, 'check', img])
    assert c.returncode == 2, c.stdout + c.stderr
    assert 'ERROR' in c.stderr, c.stderr
    r = run([VIMG, 'check', '--output=json', img])
    assert json.loads(r.stdout)['corruptions'] >= 1
    o = run([VIMG, 'convert', '-O', 'raw', img, tmp_path / 'o.raw'])
    for mark in SANITIZER_MARKS:
        assert mark not in o.stderr, o.stderr
    if damage in ('l2-past-eof', 'compressed-past-eof'):
        assert o.returncode == 1 and 'corrupt' in o.stderr, o.stderr


def test_check_repair_says_nothing_to_repair(tmp_path):
    img = qcow_with_data(tmp_path, 'r.qcow')
    c = run([VIMG, 'check', '-r', 'all', img])
    assert c.returncode == 0, c.stdout + c.stderr
    assert 'no reference counts' in c.stderr
    assert 'No errors were found' in c.stdout


def test_refused_as_qemu_refuses(tmp_path):
    img = qcow_with_data(tmp_path, 'x.qcow')
    for args in (['resize', img, '16M'], ['measure', '-O', 'qcow', '--size',
                                          '1G']):
        q = run(['qemu-img', *args])
        v = run([VIMG, *args])
        assert q.returncode == v.returncode == 1, (q.stderr, v.stderr)
    p = run([VIMG, 'create', '-f', 'qcow', '-o', 'cluster_size=4k',
             tmp_path / 'n.qcow', '1M'])
    assert p.returncode == 1 and "Invalid parameter 'cluster_size'" in p.stderr
    p = run([VIMG, 'create', '-f', 'qcow', tmp_path / 'n.qcow', '0'])
    assert p.returncode == 1 and 'cannot be zero length' in p.stderr


def test_commit_as_qemu(tmp_path):
    """commit writes the overlay into its backing file and empties it as
    qemu-img does (L1 zeroed, file cut after it): the same bytes."""
    q, v = tmp_path / 'q', tmp_path / 'v'
    q.mkdir()
    qcow_with_data(q, 'top.qcow', backing=True)
    shutil.copytree(q, v)
    for tool, d in (('qemu-img', q), (VIMG, v)):
        p = run([tool, 'commit', d / 'top.qcow'])
        assert p.returncode == 0, p.stderr
    for name in ('top.qcow', 'base.raw'):
        assert (q / name).read_bytes() == (v / name).read_bytes(), name
