# SPDX-License-Identifier: MIT
"""All-or-nothing changes (issue 9 item 5; docs/safety.md).

On a small full file system (a tmpfs the test mounts), under `ulimit -f`
and with one injected write fault (vimg-faulty, VIMG_FAULT=WN), a failed
create leaves no file, a failed resize with preallocation leaves the old
size and, for qcow2, an image `qemu-img check` finds clean (no leaks).
qemu-img in the same situation is the oracle: it fails too and leaves the
same size (and the same image end, for qcow2).
"""
import os
import resource
import subprocess

import pytest

from conftest import VIMG, qemu, run

FAULTY = os.path.join(os.path.dirname(VIMG), 'vimg-faulty')


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs, unmounted at the end."""
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    p = run(['mount', '-t', 'tmpfs', '-o', 'size=8M', 'tmpfs', mnt])
    assert p.returncode == 0, \
        f'environment: cannot mount a tmpfs (needs root): {p.stderr}'
    try:
        yield mnt
    finally:
        subprocess.run(['umount', mnt], check=False)


def check_clean(path):
    """qemu-img check: no errors, no leaks; returns the image end."""
    p = run(['qemu-img', 'check', '--output=json', '-f', 'qcow2', path])
    assert p.returncode == 0, f'{path} is not clean: {p.stdout}{p.stderr}'
    import json
    return json.loads(p.stdout).get('image-end-offset')


def virtual_size(path, fmt):
    import json
    p = qemu('qemu-img', 'info', '--output=json', '-f', fmt, path)
    return json.loads(p.stdout)['virtual-size']


@pytest.mark.parametrize('mode', ['full', 'falloc'])
@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_resize_on_full_fs_keeps_old_image(small_fs, fmt, mode):
    outcome = {}
    for tool in ('qemu-img', VIMG):
        path = small_fs / f'{os.path.basename(tool)}.{fmt}'
        qemu('qemu-img', 'create', '-f', fmt, path, '1M')
        qemu('qemu-io', '-f', fmt, '-c', 'write -P 0x5a 0 64k', path)
        p = run([tool, 'resize', '-f', fmt, f'--preallocation={mode}', path,
                 '20M'])
        assert p.returncode == 1, (tool, p.stdout, p.stderr)
        assert 'No space left on device' in p.stderr, p.stderr
        assert virtual_size(path, fmt) == 1 << 20
        end = check_clean(path) if fmt == 'qcow2' else None
        qemu('qemu-io', '-f', fmt, '-c', 'read -P 0x5a 0 64k', path)
        outcome[tool] = (os.path.getsize(path), end)
        os.unlink(path)
    assert outcome[VIMG] == outcome['qemu-img']


def test_metadata_resize_on_full_fs_leaks_nothing(small_fs):
    """The L2 tables of a 200G metadata preallocation do not fit: the
    clusters planned for them are given back (qemu-img is clean too)."""
    for tool in ('qemu-img', VIMG):
        path = small_fs / f'{os.path.basename(tool)}.qcow2'
        qemu('qemu-img', 'create', '-f', 'qcow2', path, '1M')
        qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 64k', path)
        p = run([tool, 'resize', '-f', 'qcow2', '--preallocation=metadata',
                 path, '200G'])
        assert p.returncode == 1, (tool, p.stderr)
        assert 'No space left on device' in p.stderr, p.stderr
        assert virtual_size(path, 'qcow2') == 1 << 20
        check_clean(path)
        qemu('qemu-io', '-f', 'qcow2', '-c', 'read -P 0x5a 0 64k', path)
        os.unlink(path)


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_create_on_full_fs_leaves_no_file(small_fs, fmt):
    for tool in ('qemu-img', VIMG):
        path = small_fs / f'{os.path.basename(tool)}.{fmt}'
        p = run([tool, 'create', '-f', fmt, '-o', 'preallocation=full', path,
                 '20M'])
        assert p.returncode == 1, (tool, p.stderr)
        assert 'No space left on device' in p.stderr
    # qemu-img removes its qcow2 file; vimg removes both
    assert not (small_fs / f'vimg.{fmt}').exists()
    if fmt == 'qcow2':
        assert not (small_fs / 'qemu-img.qcow2').exists()
    assert os.listdir(small_fs) in ([], ['qemu-img.raw'])


def test_failed_create_keeps_an_existing_file(small_fs):
    """Only a file vimg made is removed; one that was there stays (qemu-img
    truncates it too)."""
    path = small_fs / 'old.qcow2'
    path.write_bytes(b'old')
    p = run([VIMG, 'create', '-f', 'qcow2', '-o', 'preallocation=full', path,
             '20M'])
    assert p.returncode == 1
    assert path.exists()


def limit_fsize(nbytes):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return pre


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_create_under_ulimit_leaves_no_file(tmp_path, fmt):
    for tool in ('qemu-img', VIMG):
        path = tmp_path / f'{os.path.basename(tool)}.{fmt}'
        p = subprocess.run([tool, 'create', '-f', fmt, '-o',
                            'preallocation=full', path, '4M'],
                           capture_output=True, timeout=60,
                           preexec_fn=limit_fsize(1 << 20))
        assert p.returncode == 1, (tool, p.stderr)
        assert b'File too large' in p.stderr or tool == 'qemu-img'
    assert not (tmp_path / f'vimg.{fmt}').exists()


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_resize_under_ulimit_keeps_old_size(tmp_path, fmt):
    path = tmp_path / f'r.{fmt}'
    qemu('qemu-img', 'create', '-f', fmt, path, '1M')
    qemu('qemu-io', '-f', fmt, '-c', 'write -P 0x5a 0 64k', path)
    p = subprocess.run([VIMG, 'resize', '-f', fmt, '--preallocation=full',
                        path, '8M'], capture_output=True, timeout=60,
                       preexec_fn=limit_fsize(2 << 20))
    assert p.returncode == 1, p.stderr
    assert b'File too large' in p.stderr
    assert virtual_size(path, fmt) == 1 << 20
    assert os.path.getsize(path) <= 2 << 20
    if fmt == 'qcow2':
        check_clean(path)
    qemu('qemu-io', '-f', fmt, '-c', 'read -P 0x5a 0 64k', path)


@pytest.mark.parametrize('fmt,mode,size', [
    ('raw', 'full', '4M'), ('qcow2', 'full', '4M'), ('qcow2', 'off', '2T'),
    ('qcow2', 'metadata', '2G')])
def test_resize_with_one_write_fault_rolls_back(tmp_path, fmt, mode, size):
    """Each of the resize's writes in turn fails once (VIMG_FAULT=WN):
    the command fails, and the image keeps its size, its data, and (qcow2)
    checks clean without leaks.  (2T grows the L1 table.)"""
    failed = 0
    for n in range(1, 40):
        path = tmp_path / f'f{n}.{fmt}'
        qemu('qemu-img', 'create', '-f', fmt, path, '1M')
        qemu('qemu-io', '-f', fmt, '-c', 'write -P 0x5a 0 64k', path)
        p = run([FAULTY, 'resize', '-f', fmt, f'--preallocation={mode}',
                 path, size], env={**os.environ, 'VIMG_FAULT': f'W{n}'})
        if 'vimg-faulty: 0 faults' in p.stderr:
            assert p.returncode == 0, p.stderr
            break
        failed += 1
        assert p.returncode == 1, (n, p.stderr)
        assert virtual_size(path, fmt) == 1 << 20, n
        if fmt == 'qcow2':
            check_clean(path)
        else:
            assert os.path.getsize(path) == 1 << 20
        qemu('qemu-io', '-f', fmt, '-c', 'read -P 0x5a 0 64k', path)
        os.unlink(path)
    assert failed >= 2, 'the faults never hit the resize'
