# SPDX-License-Identifier: MIT
"""Many threads reading one image handle (DESIGN.md "Concurrency").

Each case builds a QCOW2 image with qemu-img/qemu-io (converted from a
seeded, partly compressible, partly sparse source, then overwritten in
places with unaligned writes, zero writes and discards, so clusters are
fragmented and some are half-written), takes its raw reference from
`qemu-img convert -O raw` (the oracle), and runs tests/tools/read-threads:
THREADS threads on one vimg handle, random reads of 1 byte to 1 MiB,
every byte compared with the reference, block status checked against it.
"""
import os
import random

import pytest

from conftest import BUILD_DIR, assert_no_crash, qemu, run

READ_THREADS = os.path.join(BUILD_DIR, 'tests', 'tools', 'read-threads')
ITERATIONS = 300
MiB = 1 << 20


def make_source(path, size, seed):
    """Seeded content: zeroes, random bytes, short repeats, text."""
    r = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        n = r.choice((512, 1000, 4096, 20000, 65536))
        kind = r.randrange(4)
        if kind == 0:
            out += bytes(n)
        elif kind == 1:
            out += r.randbytes(n)
        elif kind == 2:
            pat = r.randbytes(r.randrange(1, 100))
            out += (pat * (n // len(pat) + 1))[:n]
        else:
            words = [r.randbytes(r.randrange(2, 9)).hex().encode()
                     for _ in range(50)]
            text = b' '.join(r.choice(words) for _ in range(n // 5 + 1))
            out += text[:n]
    path.write_bytes(bytes(out[:size]))
    return path


def scribble(path, size, seed, fmt='qcow2', compressed=False, count=40):
    """Overwrite PATH in COUNT random places with qemu-io: data from
    random files at unaligned offsets, pattern writes, zero writes and
    discards; some compressed writes (cluster-aligned) if asked."""
    r = random.Random(seed)
    d = path.parent
    sources = []
    for i in range(3):
        src = d / f'scribble-{seed}-{i}.bin'
        src.write_bytes(r.randbytes(256 * 1024))
        sources.append(src)
    cmds = []
    for _ in range(count):
        length = r.choice((1, 300, 512, 4096, 7000, 65536, 200000))
        length = min(length, 256 * 1024)
        off = r.randrange(0, size - length)
        op = r.randrange(5)
        if op <= 1:
            cmds.append(f'write -s {r.choice(sources)} {off} {length}')
        elif op == 2:
            cmds.append(f'write -P {r.randrange(1, 256)} {off} {length}')
        elif op == 3:
            cmds.append(f'write -z {off} {length}')
        else:
            cmds.append(f'discard {off} {length}')
    if compressed:
        cs = 65536
        for _ in range(count // 4):
            off = r.randrange(0, size // cs) * cs
            cmds.append(f'write -c -s {r.choice(sources)} {off} {cs}')
    args = []
    for c in cmds:
        args += ['-c', c]
    qemu('qemu-io', '-f', fmt, *args, path, timeout=120)


def convert(src, dst, *opts, compress=False):
    qemu('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2',
         *(['-c'] if compress else []), *opts, src, dst, timeout=120)
    return dst


def build_plain(d):
    src = make_source(d / 'src.raw', 8 * MiB, 1)
    img = convert(src, d / 'plain.qcow2')
    scribble(img, 8 * MiB, 2)
    return img


def build_zlib(d):
    src = make_source(d / 'src.raw', 6 * MiB, 3)
    img = convert(src, d / 'zlib.qcow2', '-o', 'compression_type=zlib',
                  compress=True)
    scribble(img, 6 * MiB, 4, compressed=True)
    return img


def build_zstd(d):
    src = make_source(d / 'src.raw', 6 * MiB, 5)
    img = convert(src, d / 'zstd.qcow2', '-o', 'compression_type=zstd',
                  compress=True)
    scribble(img, 6 * MiB, 6, compressed=True)
    return img


def build_extl2(d):
    # 64 KiB clusters, 2 KiB subclusters: writes fill them partly.
    src = make_source(d / 'src.raw', 4 * MiB, 7)
    img = convert(src, d / 'extl2.qcow2',
                  '-o', 'extended_l2=on,cluster_size=64k')
    qemu('qemu-img', 'resize', '-f', 'qcow2', img, str(8 * MiB))
    scribble(img, 8 * MiB, 8, count=80)
    return img


def build_c512(d):
    src = make_source(d / 'src.raw', 2 * MiB, 9)
    img = convert(src, d / 'c512.qcow2', '-o', 'cluster_size=512')
    scribble(img, 2 * MiB, 10)
    return img


def build_chain(d):
    """base.raw <- mid.qcow2 (64k) <- top.qcow2 (4k clusters, compressed
    writes, larger than its backing: the tail reads as zeroes)."""
    make_source(d / 'base.raw', 4 * MiB, 11)
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw',
         '-F', 'raw', d / 'mid.qcow2', str(4 * MiB))
    scribble(d / 'mid.qcow2', 4 * MiB, 12)
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2',
         '-F', 'qcow2', '-o', 'cluster_size=4k', d / 'top.qcow2',
         str(6 * MiB))
    scribble(d / 'top.qcow2', 6 * MiB, 13)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -c -P 0x5c 0 4k',
         '-c', 'write -c -P 0x5d 5M 4k', d / 'top.qcow2')
    return d / 'top.qcow2'


BUILDERS = {
    'plain': build_plain, 'zlib': build_zlib, 'zstd': build_zstd,
    'extl2': build_extl2, 'c512': build_c512, 'chain': build_chain,
}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Build each image once: (image, raw reference) by name."""
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name)
            img = BUILDERS[name](d)
            ref = d / f'{name}.ref.raw'
            qemu('qemu-img', 'convert', '-O', 'raw', img, ref, timeout=120)
            cache[name] = (img, ref)
        return cache[name]
    return get


def test_read_threads_is_built():
    assert os.access(READ_THREADS, os.X_OK), \
        f'{READ_THREADS} missing: build tests/tools (meson compile)'


@pytest.mark.parametrize('threads', [4, 8])
@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_read_threads(images, name, threads):
    img, ref = images(name)
    p = run([READ_THREADS, '-t', threads, '-n', ITERATIONS,
             '-s', threads * 1000 + len(name), img, ref], timeout=300)
    assert_no_crash(p, f'read-threads {name}')
    assert p.returncode == 0, \
        f'read-threads {name} x{threads}: {p.stderr}{p.stdout}'
    assert 'all match' in p.stdout


def test_read_threads_detects_mismatch(images, tmp_path):
    """The checker itself must be able to fail: a flipped byte in the
    reference is reported with its offset."""
    img, ref = images('plain')
    bad = tmp_path / 'bad.raw'
    data = bytearray(ref.read_bytes())
    data[len(data) // 2] ^= 0xff
    bad.write_bytes(bytes(data))
    p = run([READ_THREADS, '-t', 4, '-n', 2000, '-s', 7, img, bad],
            timeout=300)
    assert_no_crash(p, 'read-threads on a wrong reference')
    assert p.returncode == 1, p.stdout + p.stderr
    assert f'{len(data) // 2:#x}' in p.stderr, p.stderr


@pytest.mark.parametrize('name', ['c512', 'extl2', 'chain'])
def test_read_threads_evicting_cache(images, name):
    """A two-slot L2 cache: tables are evicted and reloaded constantly
    while 8 threads read; every byte must still be right."""
    img, ref = images(name)
    env = dict(os.environ, VIMG_QCOW2_L2_CACHE_SIZE='1')
    p = run([READ_THREADS, '-t', 8, '-n', ITERATIONS, '-s', 99, img, ref],
            timeout=300, env=env)
    assert_no_crash(p, f'read-threads {name} with a tiny cache')
    assert p.returncode == 0, p.stderr + p.stdout
    assert 'all match' in p.stdout
