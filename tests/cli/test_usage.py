# SPDX-License-Identifier: MIT
"""The command line itself: --version, help, usage errors, exit codes."""
import re

import pytest

from conftest import VIMG, run, SANITIZER_MARKS

COMMANDS = ['info', 'map', 'convert', 'compare']


def no_crash(p):
    assert p.returncode >= 0, f'killed by signal {-p.returncode}'
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, p.stderr


def test_version():
    p = run([VIMG, '--version'])
    assert p.returncode == 0
    assert re.match(r'^vimg version \d+\.\d+\.\d+ ', p.stdout), p.stdout


def test_help_lists_every_command():
    p = run([VIMG, 'help'])
    assert p.returncode == 0
    for cmd in COMMANDS:
        assert re.search(rf'^\s+{cmd}\s', p.stdout, re.M), p.stdout


@pytest.mark.parametrize('cmd', COMMANDS)
def test_help_command(cmd):
    p = run([VIMG, 'help', cmd])
    assert p.returncode == 0
    assert p.stdout.startswith(f'usage: vimg {cmd} '), p.stdout


def test_no_arguments_prints_usage():
    p = run([VIMG])
    no_crash(p)
    assert p.returncode == 1
    assert 'usage: vimg' in p.stderr


def test_unknown_command():
    p = run([VIMG, 'frobnicate', 'x'])
    no_crash(p)
    assert p.returncode == 1
    assert "unknown command 'frobnicate'" in p.stderr
    assert 'usage: vimg' in p.stderr


def test_help_unknown_command():
    p = run([VIMG, 'help', 'frobnicate'])
    assert p.returncode == 1
    assert "unknown command 'frobnicate'" in p.stderr


@pytest.mark.parametrize('cmd', COMMANDS)
def test_unknown_flag(cmd):
    p = run([VIMG, cmd, '--no-such-flag', 'a', 'b'])
    no_crash(p)
    # compare reports usage errors with 2, like qemu-img compare
    assert p.returncode == (2 if cmd == 'compare' else 1)
    assert f'usage: vimg {cmd}' in p.stderr


@pytest.mark.parametrize('cmd,args', [
    ('info', []), ('info', ['a', 'b']), ('map', []),
    ('convert', ['only-one']), ('compare', ['only-one']),
])
def test_wrong_number_of_files(cmd, args):
    p = run([VIMG, cmd, *args])
    no_crash(p)
    assert p.returncode == (2 if cmd == 'compare' else 1)
    assert f'usage: vimg {cmd}' in p.stderr


@pytest.mark.parametrize('cmd', ['info', 'map'])
def test_bad_output_format(cmd, tmp_path):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\0' * 1024)
    p = run([VIMG, cmd, '--output=xml', img])
    assert p.returncode == 1
    assert 'human or json' in p.stderr


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / 'nope.qcow2'
    for cmd in (['info'], ['map'], ['convert', '-O', 'raw']):
        extra = [tmp_path / 'out.raw'] if cmd[0] == 'convert' else []
        p = run([VIMG, *cmd, missing, *extra])
        no_crash(p)
        assert p.returncode == 1
        assert p.stderr.strip() == (f"vimg: Could not open '{missing}': "
                                    "No such file or directory"), p.stderr
    p = run([VIMG, 'compare', missing, missing])
    assert p.returncode == 2


def test_unknown_format(tmp_path):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\0' * 1024)
    p = run([VIMG, 'info', '-f', 'vmdk9', img])
    assert p.returncode == 1
    assert "unknown format 'vmdk9'" in p.stderr


def test_convert_refuses_output_that_is_an_input(tmp_path):
    img = tmp_path / 'x.raw'
    data = bytes(range(256)) * 16
    img.write_bytes(data)
    p = run([VIMG, 'convert', '-O', 'raw', img, img])
    assert p.returncode == 1
    assert 'also an input' in p.stderr
    assert img.read_bytes() == data, 'the input was damaged'


def test_convert_unsupported_output_format(tmp_path):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\1' * 4096)
    p = run([VIMG, 'convert', '-O', 'vmdk', img, tmp_path / 'o'])
    assert p.returncode == 1
    assert 'not supported' in p.stderr
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('bad', ['-1', '100', '3x', '511'])
def test_convert_bad_sparse_size(tmp_path, bad):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\1' * 4096)
    p = run([VIMG, 'convert', '-S', bad, '-O', 'raw', img, tmp_path / 'o'])
    assert p.returncode == 1
    assert 'sparse' in p.stderr


def test_convert_progress_bar(tmp_path):
    img = tmp_path / 'x.raw'
    img.write_bytes(b'\1' * (1 << 20))
    out = tmp_path / 'o.raw'
    p = run([VIMG, 'convert', '-p', '-O', 'raw', img, out])
    assert p.returncode == 0, p.stderr
    assert '100.0%' in p.stderr and '[####' in p.stderr, p.stderr
    assert out.read_bytes() == img.read_bytes()
    q = run([VIMG, 'convert', '-p', '-q', '-O', 'raw', img, out])
    assert q.returncode == 0 and q.stderr == ''
