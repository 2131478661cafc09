# SPDX-License-Identifier: MIT
"""`vimg mount IMAGE MOUNTPOINT`: the guest disk as one file (FUSE).

Read with cmp against qemu-img convert -O raw, written with dd
conv=notrunc, holes seen by lseek and cp --sparse, fallocate mapped to
discard and zero writes, unmount by fusermount3 -u and by SIGTERM, and
qemu-img check after each.  These tests need /dev/fuse: without it (a
kernel or container with no FUSE) they skip, saying so; everything else
they need (fusermount3, the FUSE-enabled vimg) must be there.
"""
import json
import os
import signal
import shutil
import subprocess
import time

import pytest

from conftest import VIMG, qemu, run, vimg

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not os.path.exists('/dev/fuse'),
                                reason='this kernel has no /dev/fuse')


def is_mounted(path):
    with open('/proc/self/mountinfo') as f:
        return any(line.split()[4] == str(path) for line in f)


class Mount:
    """`vimg mount --foreground` in a child; .stop() unmounts."""

    def __init__(self, image, mnt, *flags):
        assert shutil.which('fusermount3'), 'fusermount3 not found (fuse3)'
        self.mnt = mnt
        self.proc = subprocess.Popen([VIMG, 'mount', '--foreground', *flags,
                                      str(image), str(mnt)],
                                     stderr=subprocess.PIPE)
        for _ in range(500):
            if is_mounted(mnt):
                return
            if self.proc.poll() is not None:
                pytest.fail(f'vimg mount exited {self.proc.returncode}: '
                            f'{self.proc.stderr.read().decode()}')
            time.sleep(0.01)
        self.proc.kill()
        pytest.fail('not mounted after 5 s')

    def stop(self, how='fusermount'):
        if how == 'fusermount':
            run(['fusermount3', '-u', self.mnt], check=True)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            run(['fusermount3', '-u', '-z', self.mnt])
            pytest.fail('vimg mount did not exit after unmounting')
        err = self.proc.stderr.read().decode(errors='replace')
        assert self.proc.returncode == 0, err
        assert 'Sanitizer' not in err and 'runtime error' not in err, err
        assert not is_mounted(self.mnt)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()


def sample_chain(d):
    """A qcow2 over a compressed qcow2: data, holes, zero clusters."""
    base = d / 'base.qcow2'
    src = d / 'src.raw'
    with open('/usr/bin/qemu-img', 'rb') as f:
        blob = f.read(2 * MiB)
    with open(src, 'wb') as f:
        f.truncate(16 * MiB)
        f.seek(3 * MiB)
        f.write(blob)
    qemu('qemu-img', 'convert', '-q', '-c', '-O', 'qcow2', src, base)
    top = d / 'top.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2',
         top)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x61 9M 192k',
         '-c', 'write -z 4M 256k', top)
    return top


def test_read_matches_qemu_img_and_holes(tmp_path):
    img = sample_chain(tmp_path)
    ref = tmp_path / 'ref.raw'
    qemu('qemu-img', 'convert', '-O', 'raw', img, ref)
    mnt = tmp_path / 'disk'
    with Mount(img, mnt, '-r') as m:
        assert os.path.getsize(mnt) == 16 * MiB
        assert run(['cmp', mnt, ref]).returncode == 0
        # SEEK_DATA / SEEK_HOLE walk the same extents as qemu-img map
        rows = json.loads(run(['qemu-img', 'map', '-U', '--output=json',
                               img], check=True).stdout)
        want = [(r['start'], r['start'] + r['length']) for r in rows
                if r['data'] and not r['zero']]
        got, pos = [], 0
        with open(mnt, 'rb') as f:
            fd = f.fileno()
            while True:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                got.append((start, end))
                pos = end
        assert got == merge(want)
        # cp sees the holes: the copy is sparse and identical
        out = tmp_path / 'copy.raw'
        run(['cp', '--sparse=auto', mnt, out], check=True)
        assert run(['cmp', out, ref]).returncode == 0
        assert os.stat(out).st_blocks * 512 <= 4 * MiB
        # read-only: writes are refused
        p = run(['dd', 'if=/dev/zero', f'of={mnt}', 'bs=4k', 'count=1',
                 'conv=notrunc'])
        assert p.returncode != 0
        m.stop('fusermount')


def merge(ranges):
    out = []
    for s, e in ranges:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


@pytest.mark.parametrize('how', ['fusermount', 'sigterm'])
def test_write_punch_zero_then_check(tmp_path, how):
    img = sample_chain(tmp_path)
    mnt = tmp_path / 'disk'
    with Mount(img, mnt) as m:
        pattern = tmp_path / 'pat'
        pattern.write_bytes(b'\xc3' * (3 * 65536 + 100))
        run(['dd', f'if={pattern}', f'of={mnt}', 'bs=64k', 'seek=20',
             'conv=notrunc,fsync'], check=True)
        run(['fallocate', '-p', '-o', str(3 * MiB), '-l', str(MiB), mnt],
            check=True)
        run(['fallocate', '-z', '-o', str(9 * MiB), '-l', '65536', mnt],
            check=True)
        with open(mnt, 'rb') as f:
            f.seek(20 * 65536)
            assert f.read(3 * 65536 + 100) == b'\xc3' * (3 * 65536 + 100)
        # the image is locked for writing while mounted
        p = run(['qemu-img', 'info', img])
        assert p.returncode == 1 and 'lock' in p.stderr
        m.stop(how)
    p = run(['qemu-img', 'check', img])
    assert p.returncode == 0, p.stdout + p.stderr
    p = run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0xc3 1280k 196708',
             '-c', 'read -P 0 3M 1M', '-c', 'read -P 0 9M 64k',
             '-c', 'read -P 0x61 9280k 128k', img], check=True)
    assert 'Pattern verification failed' not in p.stdout, p.stdout


def test_background_mount_and_errors(tmp_path):
    img = tmp_path / 'bg.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
    mnt = tmp_path / 'bg'
    p = vimg('mount', img, mnt)      # forks; the mount point is created
    assert p.returncode == 0, p.stderr
    assert is_mounted(mnt) and os.path.getsize(mnt) == MiB
    run(['fusermount3', '-u', mnt], check=True)
    for _ in range(500):   # the server flushes, closes and drops its lock
        if run(['qemu-img', 'info', img]).returncode == 0:
            break
        time.sleep(0.01)
    else:
        pytest.fail('image still locked after unmounting')
    p = vimg('mount', img, tmp_path)  # a directory is no mount point
    assert p.returncode == 1 and 'must be a regular file' in p.stderr
    p = vimg('mount', tmp_path / 'none.qcow2', mnt)
    assert p.returncode == 1 and 'Could not open' in p.stderr
