# SPDX-License-Identifier: MIT
"""vimg convert -c (zlib, isa-l + zlib underneath): other readers take the
output.  qemu-img (check, compare) and libyal's libqcow (qcowinfo, and
pyqcow reading every byte back) must see the source's content, for
every cluster size, on text, records, random and repeated data.  The
output is no larger than qemu-img's for the same input."""
import hashlib
import json
import random

import pytest

from conftest import VIMG, run

MiB = 1 << 20
WORDS = ('the of and to in is for that with on file data system kernel user '
         'config error value return static const struct int void char if '
         'else while include define buffer size offset read write open close '
         'image disk block cluster table header version license copyright '
         'software without warranty function module package install library '
         'usr lib share bin etc var log cache node http json xml html class '
         'name type id time date status ok true false null none self new '
         'delete update select from where order by group count sum Linux '
         'message warning info debug trace started stopped service network '
         'interface address port connection').split()


def content(size, seed=1):
    """4 KiB blocks, in runs, of text, records, random bytes and runs of
    one byte, as a used disk holds (like bench/gen.c, smaller)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.choice('tttrrxz')
        for _ in range(rng.randint(1, 8)):
            if kind == 't':
                b = ' '.join(rng.choice(WORDS) for _ in range(900)).encode()
            elif kind == 'r':
                b = b''.join(rng.randint(0, 1 << 20).to_bytes(4, 'little') +
                             rng.getrandbits(16).to_bytes(4, 'little') +
                             bytes([rng.randint(0, 3)]) + b'\0' * 7
                             for _ in range(256))
            elif kind == 'x':
                b = rng.randbytes(4096)
            else:
                b = bytes([rng.randint(1, 255)]) * 4096
            out += b[:4096].ljust(4096, b'.')
    return bytes(out[:size])


def sha1_pyqcow(path):
    import pyqcow  # python3-libqcow: libyal's reader, the second opinion
    f = pyqcow.file()
    f.open(str(path))
    try:
        h = hashlib.sha1()
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
        return f.get_media_size(), h.hexdigest()
    finally:
        f.close()


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp('zlib-src')
    src = d / 'src.raw'
    src.write_bytes(content(6 * MiB))
    return src


@pytest.mark.parametrize('cluster', ['512', '4k', '64k', '2M'])
def test_zlib_output_readable(source, tmp_path, cluster):
    out = tmp_path / 'out.qcow2'
    run([VIMG, 'convert', '-c', '-O', 'qcow2', '-o',
         f'cluster_size={cluster},compression_type=zlib', source, out],
        check=True, timeout=300)

    p = run(['qemu-img', 'check', '--output=json', out], check=True)
    report = json.loads(p.stdout)
    assert report.get('compressed-clusters', 0) > 0, report
    p = run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', source, out],
            check=True, timeout=300)
    assert 'Images are identical.' in p.stdout

    p = run(['qcowinfo', out], check=True)
    assert f'({source.stat().st_size} bytes)' in p.stdout, p.stdout
    assert sha1_pyqcow(out) == (source.stat().st_size,
                                hashlib.sha1(source.read_bytes()).hexdigest())


def test_zlib_not_larger_than_qemu(source, tmp_path):
    ours, theirs = tmp_path / 'vimg.qcow2', tmp_path / 'qemu.qcow2'
    run([VIMG, 'convert', '-c', '-O', 'qcow2', source, ours], check=True,
        timeout=300)
    run(['qemu-img', 'convert', '-c', '-O', 'qcow2', source, theirs],
        check=True, timeout=300)
    assert ours.stat().st_size <= theirs.stat().st_size
