# SPDX-License-Identifier: MIT
"""Crash safety and fault injection of the qcow2 write path.

crash-writer runs a seeded workload (each op in its own 64 KiB slot) and
prints "flushed K" after each flush.  Killed with SIGKILL at random
moments, or with the image file failing from its Nth write or flush on
(a dying disk), the image must stay free of corruption for qemu-img check
(leaks are allowed), and every op before the last flush must read back.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BUILD_DIR, run

WRITER = os.path.join(BUILD_DIR, 'tests', 'tools', 'crash-writer')

KINDS = {
    'default': ['-o', 'cluster_size=4k'],
    'refcount1-512': ['-o', 'cluster_size=512,refcount_bits=1'],
    'extl2': ['-o', 'extended_l2=on,cluster_size=16k'],
    'lazy': ['-o', 'lazy_refcounts=on,cluster_size=4k'],
    'v2': ['-o', 'compat=0.10,cluster_size=4k'],
}


def template(d, kind):
    img = d / f'{kind}.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', *KINDS[kind], img, '16M'],
        check=True)
    # existing data, compressed clusters and a snapshot: writes must COW
    run(['qemu-io', '-c', 'write -c -P 0x31 0 256k', '-c',
         'write -P 0x32 4M 1M', img], check=True)
    if kind != 'refcount1-512':
        run(['qemu-img', 'snapshot', '-c', 'before', img], check=True)
    return img


def check_no_corruption(img, kind):
    c = run(['qemu-img', 'check', '--output=json', img])
    assert c.returncode in (0, 3), c.stdout + c.stderr
    report = json.loads(c.stdout)
    assert report.get('corruptions', 0) == 0, report
    assert report.get('check-errors', 0) == 0, report
    if kind == 'lazy':
        r = run(['qemu-img', 'check', '-r', 'all', img])
        assert r.returncode == 0, r.stdout + r.stderr


def last_flush(stdout):
    k = 0
    for line in stdout.splitlines():
        if line.startswith('flushed '):
            k = int(line.split()[1])
    return k


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_sigkill_at_random_points(tmp_path, kind):
    assert os.access(WRITER, os.X_OK), WRITER
    tpl = template(tmp_path, kind)
    rnd = random.Random(kind)
    for attempt in range(8):
        img = tmp_path / f'run{attempt}.qcow2'
        shutil.copy(tpl, img)
        seed = str(attempt + 1)
        p = subprocess.Popen([WRITER, 'run', img, seed],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        k = last_flush(out.decode())
        check_no_corruption(img, kind)
        v = run([WRITER, 'verify', img, seed, str(k)])
        assert v.returncode == 0, v.stderr
        # and the snapshot taken before is untouched
        if kind != 'refcount1-512':
            a = tmp_path / 'a.raw'
            b = tmp_path / 'b.raw'
            run(['qemu-img', 'convert', '-l', 'snapshot.name=before',
                 '-O', 'raw', img, a], check=True)
            run(['qemu-img', 'convert', '-l', 'snapshot.name=before',
                 '-O', 'raw', tpl, b], check=True)
            assert a.read_bytes() == b.read_bytes()


def fault_points():
    return list(range(1, 25)) + list(range(25, 3000, 31))


@pytest.mark.parametrize('what', ['w', 'f'])
@pytest.mark.parametrize('kind', ['default', 'refcount1-512', 'extl2'])
def test_fault_injection(tmp_path, kind, what):
    tpl = template(tmp_path, kind)
    fired = 0
    for n in fault_points():
        img = tmp_path / 'f.qcow2'
        shutil.copy(tpl, img)
        p = run([WRITER, 'run', img, '3', f'{what}{n}'], timeout=120)
        assert p.returncode in (0, 2), p.stderr
        if p.returncode == 2:
            break  # the workload never reached write/flush number n
        fired += 1
        check_no_corruption(img, kind)
        v = run([WRITER, 'verify', img, '3', str(last_flush(p.stdout))])
        assert v.returncode == 0, f'{what}{n}: {v.stderr}'
    assert fired > 5, 'too few fault points were reached'
