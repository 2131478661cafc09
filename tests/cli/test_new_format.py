# SPDX-License-Identifier: MIT
"""Adding a read-only format is a folder, one registry line and one meson
line (docs/HACKING.md): the test-only driver tests/formats/testfmt/testfmt.c,
listed in lib/formats/registry.c through VIMG_TEST_FORMATS and built into
vimg-testfmt (tests/formats/meson.build), is probed, opened, read, compared,
mapped and converted by the unchanged CLI.
"""
import json
import os
import struct

import pytest

from conftest import BUILD_DIR, VIMG, qemu, run, vimg

TESTFMT = os.path.join(BUILD_DIR, 'tests', 'formats', 'vimg-testfmt')
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HEADER_BYTES = 512


def run_testfmt(*args, **kw):
    return run([TESTFMT, *args], **kw)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """(disk.tst, disk.raw, the disk's bytes): a 1 MiB + 1.5 KiB disk
    with a pattern, a zero run and a last sector of 0xff."""
    tmp = tmp_path_factory.mktemp('testfmt')
    data = bytearray(i * 7 % 251 for i in range((1 << 20) + 1536))
    data[4096:65536] = bytes(65536 - 4096)
    data[-512:] = b'\xff' * 512
    data = bytes(data)
    tst = tmp / 'disk.tst'
    tst.write_bytes(b'VIMGTEST' + struct.pack('<Q', len(data)) +
                    bytes(HEADER_BYTES - 16) + data)
    raw = tmp / 'disk.raw'
    raw.write_bytes(data)
    return tst, raw, data


def test_binary_built():
    assert os.access(TESTFMT, os.X_OK), f'{TESTFMT} not built'


def test_info_names_the_format(images):
    tst, _, data = images
    p = run_testfmt('info', tst, check=True)
    assert 'file format: testfmt\n' in p.stdout
    assert f'virtual size: 1 MiB ({len(data)} bytes)\n' in p.stdout
    info = json.loads(run_testfmt('info', '--output=json', tst,
                                  check=True).stdout)
    assert info['format'] == 'testfmt'
    assert info['virtual-size'] == len(data)


def test_convert_to_raw_reads_the_bytes(images, tmp_path):
    tst, _, data = images
    out = tmp_path / 'out.raw'
    run_testfmt('convert', '-O', 'raw', tst, out, check=True)
    assert out.read_bytes() == data


def test_compare_with_raw(images):
    tst, raw, _ = images
    p = run_testfmt('compare', tst, raw)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == 'Images are identical.\n'


def test_compare_finds_a_difference(images, tmp_path):
    tst, _, data = images
    other = tmp_path / 'other.raw'
    other.write_bytes(data[:5000] + b'\x01' + data[5001:])
    p = run_testfmt('compare', tst, other)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout == 'Content mismatch at offset 4608!\n'


def test_map(images):
    tst, _, data = images
    extents = json.loads(run_testfmt('map', '--output=json', tst,
                                     check=True).stdout)
    assert extents == [{'start': 0, 'length': len(data), 'depth': 0,
                        'present': True, 'zero': False, 'data': True,
                        'offset': HEADER_BYTES}]
    p = run_testfmt('map', tst, check=True)
    assert p.stdout.splitlines()[1].split() == \
        ['0', hex(len(data)), hex(HEADER_BYTES), str(tst)]


def test_convert_to_qcow2(images, tmp_path):
    """A driver that reads is a source for every output format."""
    tst, raw, _ = images
    out = tmp_path / 'out.qcow2'
    run_testfmt('convert', '-O', 'qcow2', tst, out, check=True)
    qemu('qemu-img', 'check', out)
    qemu('qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', raw, out)


def test_read_only(images):
    tst, _, _ = images
    p = run_testfmt('resize', tst, '2M')
    assert p.returncode == 1
    assert 'testfmt images are read-only' in p.stderr


def test_installed_vimg_does_not_know_it(images):
    """The format exists in the test build only: vimg takes it for raw."""
    tst, _, _ = images
    p = vimg('info', tst, check=True)
    assert 'file format: raw\n' in p.stdout
    assert os.path.basename(VIMG) == 'vimg'


def test_nothing_outside_the_driver_names_it():
    """The library and the CLI know nothing of testfmt but the registry's
    line: the proof needs no edit anywhere else."""
    named = []
    for top in ('include', 'lib', 'tools'):
        for dirpath, _, files in os.walk(os.path.join(SOURCE_ROOT, top)):
            for f in files:
                path = os.path.join(dirpath, f)
                with open(path, encoding='utf-8', errors='replace') as fh:
                    if 'testfmt' in fh.read():
                        named.append(os.path.relpath(path, SOURCE_ROOT))
    assert named == ['lib/formats/registry.c']
