# SPDX-License-Identifier: MIT
"""Block devices as convert/create targets and as sources (issue 9).

Each test makes a loop device over a small file (losetup, as root) and
detaches it at the end.  The oracle is qemu-img doing the same thing on
the same device filled with the same junk: a raw result must be the same
bytes on the whole device (the junk past the copy is kept by both), a
qcow2 one must check clean and compare equal to the source.  Refusals
(growing the device, preallocation, resize) must match qemu-img's.
Without loop device support (no root, no /dev/loop-control) the tests
fail with that reason: they need the environment, not an oracle.
"""
import os
import subprocess

import pytest

from conftest import VIMG, qemu, run

DEV_SIZE = 8 << 20


@pytest.fixture
def loopdev(tmp_path):
    backing = tmp_path / 'loop.img'
    with open(backing, 'wb') as f:
        f.truncate(DEV_SIZE)
    p = run(['losetup', '-f', '--show', backing])
    assert p.returncode == 0, \
        f'environment: cannot make a loop device (root and loop support ' \
        f'needed): {p.stderr}'
    dev = p.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '-d', dev], check=False)


JUNK = os.urandom(DEV_SIZE)


def fill_junk(dev):
    with open(dev, 'r+b') as f:
        f.write(JUNK)
        f.flush()
        os.fsync(f.fileno())


def read_dev(dev):
    with open(dev, 'rb') as f:
        return f.read()


@pytest.fixture
def source(tmp_path):
    """A 6 MiB raw image with data, a hole and zeroes written as data."""
    src = tmp_path / 'src.raw'
    qemu('qemu-img', 'create', '-f', 'raw', src, '6M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -P 0x55 1M 64k',
         '-c', 'write -P 0x66 5M 4k', '-c', 'write -P 0 3M 128k', src)
    return src


def both(dev, setup, args):
    """Run ARGS with qemu-img and vimg on DEV after SETUP; their outcomes
    and the device contents after each."""
    out = []
    for tool in ('qemu-img', VIMG):
        fill_junk(dev)
        setup()
        p = run([tool, *args])
        out.append((p, read_dev(dev)))
    return out


@pytest.mark.parametrize('existing', [False, True])
def test_convert_raw_onto_device(loopdev, source, existing):
    args = ['convert', '-f', 'raw', '-O', 'raw', source, loopdev]
    if existing:
        args.insert(1, '-n')
    (q, q_dev), (v, v_dev) = both(loopdev, lambda: None, args)
    assert q.returncode == 0, q.stderr
    assert v.returncode == 0, v.stderr
    # the source's zeroes are on the device, the tail keeps its junk
    assert v_dev[:6 << 20] == open(source, 'rb').read()
    assert v_dev == q_dev


@pytest.mark.parametrize('existing', [False, True])
def test_convert_qcow2_onto_device(loopdev, source, existing):
    args = ['convert', '-f', 'raw', '-O', 'qcow2', source, loopdev]
    if existing:
        args.insert(1, '-n')

    def setup():
        if existing:
            qemu('qemu-img', 'create', '-f', 'qcow2', loopdev, '6M')
    for tool in ('qemu-img', VIMG):
        fill_junk(loopdev)
        setup()
        p = run([tool, *args])
        assert p.returncode == 0, (tool, p.stderr)
        qemu('qemu-img', 'check', '-f', 'qcow2', loopdev)
        qemu('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', source,
             loopdev)


def test_create_on_device(loopdev):
    for args in (['create', '-f', 'qcow2', loopdev, '100M'],
                 ['create', '-f', 'qcow2', '-o', 'preallocation=metadata',
                  loopdev, '4M']):
        for tool in ('qemu-img', VIMG):
            fill_junk(loopdev)
            p = run([tool, *args])
            assert p.returncode == 0, (tool, p.stderr)
            qemu('qemu-img', 'check', '-f', 'qcow2', loopdev)
            info = qemu('qemu-img', 'info', '-f', 'qcow2', loopdev).stdout
            assert args[-1].replace('M', ' MiB') in info
            # reads as zeroes, whatever the device held (qemu-img leaves
            # the old bytes in preallocated clusters; vimg does not)
            if tool == VIMG or 'preallocation=metadata' not in args:
                qemu('qemu-io', '-f', 'qcow2', '-c', 'read -P 0 0 4M',
                     loopdev)
    # a raw create that fits leaves the device as it was, but for the
    # first sector, which qemu-img zeroes (its "first block")
    (q, q_dev), (v, v_dev) = both(
        loopdev, lambda: None, ['create', '-f', 'raw', loopdev, '4M'])
    assert q.returncode == 0 and v.returncode == 0, v.stderr
    assert v_dev == q_dev
    assert v_dev[512:] == JUNK[512:]


@pytest.mark.parametrize('args', [
    ['create', '-f', 'raw', '{dev}', '16M'],
    ['create', '-f', 'raw', '-o', 'preallocation=full', '{dev}', '1M'],
    ['create', '-f', 'raw', '-o', 'preallocation=falloc', '{dev}', '1M'],
    ['create', '-f', 'qcow2', '-o', 'preallocation=full', '{dev}', '1M'],
    ['convert', '-f', 'raw', '-O', 'raw', '{big}', '{dev}'],
    ['resize', '-f', 'raw', '--shrink', '{dev}', '4M'],
    ['resize', '-f', 'raw', '{dev}', '16M'],
])
def test_device_refusals_like_qemu(loopdev, tmp_path, args):
    big = tmp_path / 'big.raw'
    qemu('qemu-img', 'create', '-f', 'raw', big, '16M')
    a = [x.format(dev=loopdev, big=big) for x in args]
    (q, q_dev), (v, v_dev) = both(loopdev, lambda: None, a)
    assert q.returncode == 1, q.stderr
    assert v.returncode == 1, v.stdout + v.stderr
    assert os.path.exists(loopdev) and os.path.isabs(loopdev)
    assert v_dev == JUNK, 'a refused command changed the device'


def test_device_as_source(loopdev, tmp_path):
    fill_junk(loopdev)
    out_v, out_q = tmp_path / 'v.qcow2', tmp_path / 'q.qcow2'
    p = run([VIMG, 'info', '--output=json', '-f', 'raw', loopdev])
    assert p.returncode == 0, p.stderr
    assert f'"virtual-size": {DEV_SIZE}' in p.stdout
    p = run([VIMG, 'convert', '-f', 'raw', '-O', 'qcow2', loopdev, out_v])
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', loopdev, out_q)
    qemu('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', loopdev, out_v)
    assert os.path.getsize(out_v) == os.path.getsize(out_q)
