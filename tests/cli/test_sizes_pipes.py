# SPDX-License-Identifier: MIT
"""Size strings, pipes and RLIMIT_FSIZE, with qemu-img as the oracle.

- Every size string is given to `qemu-img create` and `vimg create`: both
  accept it with the same size, or both refuse it; a refused size leaves
  no file.  `resize` is compared the same way, and must leave the image
  as qemu-img leaves it.
- A pipe, FIFO or socket as input or output is refused (qemu-img refuses
  too), never read as an empty image.
- Under `ulimit -f`, vimg fails with "File too large" and exit 1 as
  qemu-img does, and is not killed by SIGXFSZ.
"""
import os
import re
import resource
import socket
import subprocess

import pytest

from conftest import VIMG, qemu, run, vimg

SIZES = [
    '0', '00', '1', '512', '1k', '1K', '1m', '1M', '1g', '1G', '1t', '1T',
    '1b', '1B', '1.0', '1.', '1.M', '1.5M', '1.5k', '512.5k', '0.5k',
    '1.0000001M', '1.00000000000000000001k', '0.1E', '1.25G',
    '0x1000', '0X200', '0x10M', '0x', '0x1.5M', '+1M', ' 1M', '1M ',
    '1e3', '1E3', '1.5e3k', '1.5', '1.5b', '.5M', '1KiB', '1Kb', '1MB',
    'k', '', '-1', '1-', 'abc', '1 M', '8E', '16E', '18446744073709551615',
    '18446744073709551616', '9223372036854775808', '99999999999999999999k',
    'inf', 'nan', '1,5M', '7.9999999999999E', '0.0000001k', '2.5b',
]

MESSAGE_RE = re.compile(r'size=(\d+)')


def create_outcome(tool, path, size):
    """(accepted, size in the Formatting line) of a raw create."""
    if os.path.exists(path):
        os.unlink(path)
    p = run([*tool, 'create', '-f', 'raw', path, size])
    m = MESSAGE_RE.search(p.stdout)
    return p.returncode, (int(m.group(1)) if m else None), p


@pytest.mark.parametrize('size', SIZES)
def test_create_size_like_qemu(tmp_path, size):
    q_rc, q_size, q = create_outcome(['qemu-img'], tmp_path / 'q.raw', size)
    v_rc, v_size, v = create_outcome([VIMG], tmp_path / 'v.raw', size)
    # the size qemu-img parsed is what counts, even if its raw driver then
    # cannot make such a file
    assert v_size == q_size, (q.stdout + q.stderr, v.stdout + v.stderr)
    if q_size is None:
        assert v_rc == 1
        assert 'Invalid image size specified' in v.stderr
        assert not (tmp_path / 'v.raw').exists(), 'refused size left a file'
    elif q_rc == 0:
        assert v_rc == 0, v.stderr
        assert os.path.getsize(tmp_path / 'v.raw') == \
            os.path.getsize(tmp_path / 'q.raw')
    else:
        assert v_rc == 1


RESIZES = ['0', '-0', '+0', '2M', '+1M', '-512k', '-1M', '-2M', '1e3', '1.5',
           '1.5M', '1.0000001M', '8E', '+8E', '16E', '+16E',
           '18446744073709551615', '18446744073709551616', '0x200000', 'x']


@pytest.mark.parametrize('size', RESIZES)
def test_resize_size_like_qemu(tmp_path, size):
    results = []
    for tool, name in ((['qemu-img'], 'q.raw'), ([VIMG], 'v.raw')):
        path = tmp_path / name
        qemu('qemu-img', 'create', '-f', 'raw', path, '1M')
        p = run([*tool, 'resize', '-f', 'raw', '--shrink', path, '--', size])
        first = (p.stderr.splitlines() or [''])[0]
        message = re.sub(r'^(qemu-img|vimg): ', '', first)
        results.append((p.returncode, message, os.path.getsize(path)))
    (q_rc, q_msg, q_size), (v_rc, v_msg, v_size) = results
    assert (v_rc, v_size) == (q_rc, q_size)
    if q_rc:
        assert v_msg == q_msg


def test_stdin_pipe_refused(tmp_path):
    out = tmp_path / 'p.raw'
    data = os.urandom(1 << 20)
    for tool in (['qemu-img'], [VIMG]):
        p = subprocess.run([*tool, 'convert', '-f', 'raw', '-O', 'raw',
                            '/dev/stdin', out], input=data,
                           capture_output=True, timeout=60)
        assert p.returncode == 1, (tool, p.stderr)
        assert not out.exists(), f'{tool}: wrote an image from a pipe'
    assert b'is a pipe' in p.stderr


def test_fifo_refused_both_ways(tmp_path):
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    src = tmp_path / 's.raw'
    src.write_bytes(os.urandom(65536))
    # nothing opens the other end: a hang here is a failure (timeout)
    for args in (['info', '-f', 'raw', fifo],
                 ['convert', '-f', 'raw', '-O', 'raw', fifo,
                  tmp_path / 'o.raw'],
                 ['convert', '-f', 'raw', '-O', 'raw', src, fifo],
                 ['convert', '-f', 'raw', '-O', 'qcow2', src, fifo],
                 ['create', '-f', 'raw', fifo, '1M'],
                 ['create', '-f', 'qcow2', fifo, '1M']):
        p = vimg(*args, timeout=20)
        assert p.returncode == 1, (args, p.stderr)
        assert 'is a pipe or FIFO' in p.stderr, p.stderr
    assert not (tmp_path / 'o.raw').exists()
    # qemu-img refuses the FIFO as output too
    p = run(['qemu-img', 'convert', '-f', 'raw', '-O', 'raw', src, fifo],
            timeout=20)
    assert p.returncode == 1


def test_socket_refused(tmp_path):
    path = str(tmp_path / 'sock')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    try:
        p = vimg('info', '-f', 'raw', path, timeout=20)
    finally:
        s.close()
    assert p.returncode == 1
    # open() of a socket fails (ENXIO) before vimg can say more
    assert path in p.stderr


def limit_fsize(nbytes):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return pre


@pytest.mark.parametrize('args', [
    ['convert', '-f', 'raw', '-O', 'raw', '{src}', '{out}'],
    ['convert', '-f', 'raw', '-O', 'qcow2', '{src}', '{out}'],
    ['create', '-f', 'raw', '{out}', '2M'],
    ['create', '-f', 'qcow2', '-o', 'preallocation=full', '{out}', '2M'],
])
def test_rlimit_fsize_is_efbig(tmp_path, args):
    src = tmp_path / 'src.raw'
    src.write_bytes(os.urandom(4 << 20))
    outcomes = []
    for tool, name in (('qemu-img', 'q.img'), (VIMG, 'v.img')):
        a = [x.format(src=src, out=tmp_path / name) for x in args]
        p = subprocess.run([tool, *a], capture_output=True, timeout=60,
                           preexec_fn=limit_fsize(1 << 20))
        outcomes.append(p)
    q, v = outcomes
    assert q.returncode == 1, q.stderr
    assert v.returncode == 1, f'vimg exit {v.returncode} (SIGXFSZ is ' \
        f'{-int(__import__("signal").SIGXFSZ)}): {v.stderr}'
    assert b'File too large' in v.stderr, v.stderr
