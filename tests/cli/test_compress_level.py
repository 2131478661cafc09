# SPDX-License-Identifier: MIT
"""vimg convert -c on real data and -o compression_level: the default
output is no larger than qemu-img's (zlib and zstd) on a sample of
/usr/bin; every level writes what qemu-img reads back identically and
checks clean; the option is listed, range-checked per compression type
and refused where it makes no sense."""
import os

import pytest

from conftest import VIMG, run

MiB = 1 << 20
SAMPLE = 8 * MiB


@pytest.fixture(scope='module')
def binaries(tmp_path_factory):
    """SAMPLE bytes of /usr/bin contents (path order), as a raw disk."""
    out = bytearray()
    for name in sorted(os.listdir('/usr/bin')):
        path = os.path.join('/usr/bin', name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, 'rb') as f:
            out += f.read(SAMPLE - len(out))
        if len(out) >= SAMPLE:
            break
    assert len(out) == SAMPLE, 'less than 8 MiB in /usr/bin'
    src = tmp_path_factory.mktemp('compress-level') / 'bin.raw'
    src.write_bytes(bytes(out))
    return src


def convert(tool, src, out, opts):
    run([tool, 'convert', '-c', '-O', 'qcow2', '-o', opts, src, out],
        check=True, timeout=300)
    return out.stat().st_size


def reads_identically(src, out):
    run(['qemu-img', 'check', out], check=True, timeout=120)
    p = run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', src, out],
            check=True, timeout=120)
    assert 'Images are identical.' in p.stdout


@pytest.mark.parametrize('ctype', ['zlib', 'zstd'])
def test_default_not_larger_than_qemu(binaries, tmp_path, ctype):
    opts = f'compression_type={ctype}'
    ours = convert(VIMG, binaries, tmp_path / 'vimg.qcow2', opts)
    theirs = convert('qemu-img', binaries, tmp_path / 'qemu.qcow2', opts)
    assert ours <= theirs, (ours, theirs)
    assert ours < SAMPLE * 0.8  # it did compress
    reads_identically(binaries, tmp_path / 'vimg.qcow2')


@pytest.mark.parametrize('ctype,level', [
    ('zlib', 1), ('zlib', 2), ('zlib', 3), ('zlib', 9), ('zstd', 1),
    ('zstd', 12)])
def test_level_reads_identically(binaries, tmp_path, ctype, level):
    out = tmp_path / 'out.qcow2'
    convert(VIMG, binaries, out,
            f'compression_type={ctype},compression_level={level}')
    reads_identically(binaries, out)


def test_levels_trade_size_for_speed(binaries, tmp_path):
    """zlib: isa-l alone (level 1) is larger than the default, which is
    level 6."""
    size = {lv: convert(VIMG, binaries, tmp_path / f'{lv}.qcow2',
                        f'compression_level={lv}')
            for lv in (1, 6)}
    default = convert(VIMG, binaries, tmp_path / 'default.qcow2',
                      'cluster_size=64k')
    assert default == size[6]
    assert size[1] > size[6]


def test_existing_target(binaries, tmp_path):
    out = tmp_path / 'out.qcow2'
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', out, str(SAMPLE)],
        check=True)
    run([VIMG, 'convert', '-n', '-c', '-O', 'qcow2', '-o',
         'compression_level=2', binaries, out], check=True, timeout=300)
    reads_identically(binaries, out)


@pytest.mark.parametrize('opts,words', [
    ('compression_level=10', 'compression_level must be 1 to 9 for '
     'compression_type zlib'),
    ('compression_level=0', 'must be 1 to 9'),
    ('compression_type=zstd,compression_level=20', 'must be 1 to 19 for '
     'compression_type zstd'),
    ('compression_level=fast', "Parameter 'compression_level' expects a "
     'number'),
])
def test_out_of_range(binaries, tmp_path, opts, words):
    out = tmp_path / 'out.qcow2'
    p = run([VIMG, 'convert', '-c', '-O', 'qcow2', '-o', opts, binaries,
             out])
    assert p.returncode == 1, p.stderr
    assert words in p.stderr
    assert not out.exists()


def test_listed_in_help():
    for cmd in (['create', '-f', 'qcow2'], ['convert', '-O', 'qcow2']):
        p = run([VIMG, *cmd, '-o', 'help'], check=True)
        assert 'compression_level=<num>' in p.stdout, p.stdout
    p = run([VIMG, 'amend', '-f', 'qcow2', '-o', 'help'], check=True)
    assert 'compression_level' not in p.stdout
