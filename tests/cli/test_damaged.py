# SPDX-License-Identifier: MIT
"""Damaged QCOW2 images: vimg must refuse them cleanly, never crash.

Each case takes an image made by qemu-img/qemu-io and pokes bytes into it
(qcow2 spec "Header", "Cluster mapping", "Compressed Clusters Descriptor";
the approach of QEMU iotest 060).  Then `vimg info`, `vimg map
--output=json` and `vimg convert -O raw` run on it, with the format forced
(-f qcow2) so that a damaged header is not just probed as raw.

What each command must do is in the CASES table:
  FAIL    exit 1, exactly one line on stderr naming the file and matching
          the case's keyword (what is wrong)
  OK      exit 0 with sane output: convert gives the same bytes as
          `qemu-img convert`, map extents tile the whole disk
  EITHER  FAIL or OK; used where qemu-img accepts the image and refusing
          it is also defensible (vimg checks offsets against the end of the
          file where qemu silently reads zeroes)
Every run must also not crash: exit code 0 or 1 (never a signal or an
abort), no AddressSanitizer/UBSan report (`make check` runs this suite a
second time with VIMG pointing at a sanitized binary).

What qemu-img 7.2 does with the same file is asserted too (column `qemu`:
which of info/map/convert it accepts), so the table documents where vimg
is stricter than qemu and stays true when qemu changes.
"""
import json
import os
import re
import shutil
import struct

import pytest

from conftest import assert_no_crash, qemu, run, vimg

FAIL, OK, EITHER = 'fail', 'ok', 'either'

# Header fields: (byte offset, struct format), big-endian (spec "Header").
HDR = {
    'magic': (0, '>I'), 'version': (4, '>I'),
    'backing_file_offset': (8, '>Q'), 'backing_file_size': (16, '>I'),
    'cluster_bits': (20, '>I'), 'size': (24, '>Q'),
    'crypt_method': (32, '>I'), 'l1_size': (36, '>I'),
    'l1_table_offset': (40, '>Q'), 'refcount_table_offset': (48, '>Q'),
    'refcount_table_clusters': (56, '>I'), 'nb_snapshots': (60, '>I'),
    'snapshots_offset': (64, '>Q'), 'incompatible_features': (72, '>Q'),
    'compatible_features': (80, '>Q'), 'autoclear_features': (88, '>Q'),
    'refcount_order': (96, '>I'), 'header_length': (100, '>I'),
    'compression_type': (104, '>B'),
}
OFFSET_MASK = 0x00fffffffffffe00      # L1/L2 entry bits 9..55
COPIED = 1 << 63
COMPRESSED = 1 << 62

# What is wrong, as the error message should say it (case-insensitive).
EOF_WORDS = (r'end of (the )?file|past (the )?end|beyond|truncat|\beof\b|'
             r'outside|too short|short read')
CORRUPT = r'corrupt|invalid'


class Image:
    """A qcow2 file in memory, patched with the helpers below."""

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            self.data = bytearray(f.read())

    def save(self):
        with open(self.path, 'wb') as f:
            f.write(self.data)

    def get(self, off, fmt):
        return struct.unpack_from(fmt, self.data, off)[0]

    def put(self, off, fmt, value):
        struct.pack_into(fmt, self.data, off, value)

    def __getitem__(self, field):
        return self.get(*HDR[field])

    def __setitem__(self, field, value):
        self.put(*HDR[field], value)

    @property
    def eof(self):
        return len(self.data)

    @property
    def cluster_size(self):
        return 1 << self['cluster_bits']

    def align_up(self, n):
        cs = self.cluster_size
        return (n + cs - 1) // cs * cs

    def l1_entry_off(self, index=0):
        return self['l1_table_offset'] + 8 * index

    def l2_entry_off(self, compressed=False):
        """File offset of the first L2 entry (normal or compressed)."""
        for i in range(self['l1_size']):
            l2 = self.get(self.l1_entry_off(i), '>Q') & OFFSET_MASK
            if not l2:
                continue
            for j in range(self.cluster_size // 8):
                e = self.get(l2 + 8 * j, '>Q')
                if e and bool(e & COMPRESSED) == compressed:
                    return l2 + 8 * j
        raise AssertionError(f'{self.path}: no such L2 entry')

    def compressed_bits(self):
        """Width of the host offset field of a compressed descriptor."""
        return 62 - (self['cluster_bits'] - 8)


# --- the patches --------------------------------------------------------------

def truncate_to(n):
    def patch(img):
        del img.data[n(img):]
    return patch


def set_field(field, value):
    def patch(img):
        img[field] = value(img) if callable(value) else value
    return patch


def l1_past_eof(img):
    img.put(img.l1_entry_off(), '>Q', COPIED | img.align_up(img.eof + 2**20))


def l2_past_eof(img):
    off = img.l2_entry_off()
    img.put(off, '>Q', COPIED | img.align_up(img.eof + 2**20))


def l2_unaligned(img):
    off = img.l2_entry_off()
    img.put(off, '>Q', img.get(off, '>Q') + 512)


def compressed_past_eof(img):
    off = img.l2_entry_off(compressed=True)
    bits = img.compressed_bits()
    entry = img.get(off, '>Q')
    entry &= ~((1 << bits) - 1)
    img.put(off, '>Q', entry | (img.eof + 3 * img.cluster_size))


def compressed_straddles_eof(img):
    """Descriptor starts inside the file but its sectors run past the end."""
    off = img.l2_entry_off(compressed=True)
    bits = img.compressed_bits()
    entry = img.get(off, '>Q') & ~((1 << bits) - 1) & ~(((1 << (62 - bits))
                                                         - 1) << bits)
    sectors = (1 << (62 - bits)) - 1          # as many as the field holds
    img.put(off, '>Q', entry | (sectors << bits) | (img.eof - 100))


def compressed_garbage(img):
    off = img.l2_entry_off(compressed=True)
    host = img.get(off, '>Q') & ((1 << img.compressed_bits()) - 1)
    img.data[host:host + 16] = bytes(range(0xf0, 0x100))


def extl2_bitmap(index, bitmap):
    """Set the subcluster bitmap of entry INDEX of the first extended L2
    table (16-byte entries: descriptor, then alloc bits 0-31 and zero bits
    32-63, spec "Extended L2 Entries")."""
    def patch(img):
        l2 = img.get(img.l1_entry_off(), '>Q') & OFFSET_MASK
        img.put(l2 + 16 * index + 8, '>Q', bitmap)
    return patch


def snapshot_table_past_eof(img):
    img['snapshots_offset'] = img.align_up(img.eof + 2**20)


def first_extension_length(img):
    """Make the first header extension claim 4 GiB of data."""
    assert img.get(img['header_length'], '>I') != 0, 'no extension to break'
    img.put(img['header_length'] + 4, '>I', 0xfffffff0)


# --- the cases -------------------------------------------------------------------
# name: (base image, patch, {command: expectation}, keyword regex,
#        {commands qemu-img accepts})
ALL = ('info', 'map', 'convert')
Q_ALL, Q_NONE = set(ALL), set()


def fail_all():
    return dict.fromkeys(ALL, FAIL)


CASES = {
    # Only the header is left: the L1 table, refcount table and data are
    # gone.  qemu-img reads past the end as zeroes and accepts all three.
    'truncated-header-only': (
        'data', truncate_to(lambda img: img['header_length']),
        dict(info=EITHER, map=FAIL, convert=FAIL), EOF_WORDS, Q_ALL),
    # Half the file: metadata survives, the data clusters at the end don't.
    'truncated-half': (
        'data', truncate_to(lambda img: img.eof // 2),
        dict(info=EITHER, map=EITHER, convert=FAIL), EOF_WORDS, Q_ALL),
    'truncated-in-header': (
        'data', truncate_to(lambda img: 50),
        fail_all(), EOF_WORDS + '|header', Q_NONE),
    'l1-entry-past-eof': (
        'data', l1_past_eof,
        dict(info=EITHER, map=FAIL, convert=FAIL), EOF_WORDS, Q_ALL),
    'l2-entry-past-eof': (
        'data', l2_past_eof,
        dict(info=EITHER, map=EITHER, convert=FAIL), EOF_WORDS, Q_ALL),
    'l2-entry-unaligned': (
        'data', l2_unaligned,
        dict(info=EITHER, map=FAIL, convert=FAIL),
        CORRUPT + r'|align', {'info'}),
    'l1-size-huge': (
        'data', set_field('l1_size', 0x7fffffff),
        fail_all(), r'l1', Q_NONE),
    'bad-magic': (
        'data', set_field('magic', 0x514649fc),
        fail_all(), r'magic|not a qcow2', Q_NONE),
    'unknown-incompatible-bit5': (
        'data', set_field('incompatible_features', lambda img:
                          img['incompatible_features'] | 1 << 5),
        fail_all(), r'feature', Q_NONE),
    'unknown-incompatible-bit63': (
        'data', set_field('incompatible_features', lambda img:
                          img['incompatible_features'] | 1 << 63),
        fail_all(), r'feature', Q_NONE),
    'compressed-past-eof': (
        'zlib', compressed_past_eof,
        dict(info=EITHER, map=EITHER, convert=FAIL),
        EOF_WORDS + '|' + CORRUPT + '|compress', {'info', 'map'}),
    'compressed-straddles-eof': (
        'zlib', compressed_straddles_eof,
        dict(info=EITHER, map=EITHER, convert=FAIL),
        EOF_WORDS + '|' + CORRUPT + '|compress', {'info', 'map'}),
    'compressed-garbage-zlib': (
        'zlib', compressed_garbage,
        dict(info=OK, map=OK, convert=FAIL),
        CORRUPT + r'|compress|deflate|inflate|zlib', {'info', 'map'}),
    'compressed-garbage-zstd': (
        'zstd', compressed_garbage,
        dict(info=OK, map=OK, convert=FAIL),
        CORRUPT + r'|compress|zstd', {'info', 'map'}),
    'cluster-bits-8': (
        'data', set_field('cluster_bits', 8),
        fail_all(), r'cluster', Q_NONE),
    'cluster-bits-22': (
        'data', set_field('cluster_bits', 22),
        fail_all(), r'cluster', Q_NONE),
    'cluster-bits-255': (
        'data', set_field('cluster_bits', 255),
        fail_all(), r'cluster', Q_NONE),
    'l1-offset-unaligned': (
        'data', set_field('l1_table_offset', lambda img:
                          img['l1_table_offset'] + 8),
        fail_all(), r'l1', Q_NONE),
    'l1-offset-past-eof': (
        'data', set_field('l1_table_offset', lambda img:
                          img.align_up(img.eof + 2**20)),
        dict(info=EITHER, map=FAIL, convert=FAIL), r'l1', Q_ALL),
    'refcount-table-past-eof': (
        'data', set_field('refcount_table_offset', lambda img:
                          img.align_up(img.eof + 2**20)),
        dict(info=EITHER, map=EITHER, convert=EITHER),
        EOF_WORDS + '|refcount', Q_ALL),
    'refcount-table-unaligned': (
        'data', set_field('refcount_table_offset', lambda img:
                          img['refcount_table_offset'] + 16),
        fail_all(), r'refcount', Q_NONE),
    'refcount-order-7': (
        'data', set_field('refcount_order', 7),
        fail_all(), r'refcount', Q_NONE),
    'backing-file-size-huge': (
        'overlay', set_field('backing_file_size', 0xffffffff),
        fail_all(), r'backing', Q_NONE),
    'backing-file-offset-past-eof': (
        'overlay', set_field('backing_file_offset', lambda img:
                             img.eof + 4096),
        fail_all(), r'backing', Q_NONE),
    'header-length-huge': (
        'data', set_field('header_length', 0xfffffff0),
        fail_all(), r'header', Q_NONE),
    'header-length-short': (
        'data', set_field('header_length', 64),
        fail_all(), r'header', Q_NONE),
    # The backing format extension claims 4 GiB of data.
    'header-extension-huge': (
        'overlay', first_extension_length,
        fail_all(), r'extension|header', Q_NONE),
    'version-4': (
        'data', set_field('version', 4),
        fail_all(), r'version', Q_NONE),
    # qemu-img reads the missing table as zeroes: one snapshot, no name.
    'snapshot-table-past-eof': (
        'snap', snapshot_table_past_eof,
        dict(info=EITHER, map=EITHER, convert=EITHER),
        EOF_WORDS + '|snapshot', Q_ALL),
    'snapshot-count-huge': (
        'snap', set_field('nb_snapshots', 0x7fffffff),
        fail_all(), r'snapshot', Q_NONE),
    # Extended L2 (base: entry 0 normal, 1 unallocated, 2 compressed).
    # Subclusters 0-1 both allocated and zero: invalid.
    'extl2-alloc-and-zero': (
        'extl2', extl2_bitmap(0, 0x0000000300000003),
        dict(info=EITHER, map=FAIL, convert=FAIL),
        CORRUPT + r'|bitmap|subcluster', {'info'}),
    # Allocated subcluster in an entry without a host offset: invalid.
    'extl2-alloc-without-offset': (
        'extl2', extl2_bitmap(1, 0x1),
        dict(info=EITHER, map=FAIL, convert=FAIL),
        CORRUPT + r'|bitmap|subcluster|offset', {'info'}),
    # A compressed entry's bitmap is reserved; qemu ignores it.
    'extl2-compressed-with-bitmap': (
        'extl2', extl2_bitmap(2, 0x1),
        dict(info=EITHER, map=EITHER, convert=EITHER),
        CORRUPT + r'|bitmap|subcluster|compress', Q_ALL),
    'compression-type-unknown': (
        'zstd', set_field('compression_type', 7),
        fail_all(), r'compression', Q_NONE),
}


# --- the base images -----------------------------------------------------------

def make_bases(d):
    """qemu-made images; metadata first, data after it (4 KiB clusters)."""
    def create(name, size, opts, *writes, **kw):
        path = d / f'{name}.qcow2'
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts,
             *kw.get('extra', ()), path, size)
        if writes:
            args = []
            for w in writes:
                args += ['-c', w]
            qemu('qemu-io', '-f', 'qcow2', *args, path)
        return path

    bases = {
        'data': create('data', '1M', 'cluster_size=4k',
                       'write -P 0xa5 0 256k', 'write -P 0x5a 768k 64k'),
        'zlib': create('zlib', '256k', 'cluster_size=4k,compression_type=zlib',
                       'write -c -P 0x11 0 4k', 'write -c -P 0x12 64k 4k',
                       'write -P 0x13 128k 4k'),
        'zstd': create('zstd', '256k', 'cluster_size=4k,compression_type=zstd',
                       'write -c -P 0x21 0 4k', 'write -c -P 0x22 64k 4k',
                       'write -P 0x23 128k 4k'),
    }
    bases['extl2'] = create('extl2', '256k',
                            'cluster_size=16k,extended_l2=on',
                            'write -P 0x51 0 2k', 'write -z 4k 2k',
                            'write -c -P 0x52 32k 16k')
    create('base', '256k', 'cluster_size=4k', 'write -P 0x31 0 64k')
    bases['overlay'] = create('overlay', '256k', 'cluster_size=4k',
                              'write -P 0x32 4k 4k',
                              extra=('-b', 'base.qcow2', '-F', 'qcow2'))
    bases['snap'] = create('snap', '256k', 'cluster_size=4k',
                           'write -P 0x41 0 8k')
    qemu('qemu-img', 'snapshot', '-c', 'first', bases['snap'])
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x42 4k 8k', bases['snap'])
    return bases


@pytest.fixture(scope='session')
def bases(tmp_path_factory):
    return make_bases(tmp_path_factory.mktemp('bases'))


@pytest.fixture
def damaged(request, bases, tmp_path):
    """Copy the case's base image (and base.qcow2) and patch the copy."""
    base, patch = CASES[request.param][:2]
    shutil.copy(bases['overlay'].parent / 'base.qcow2', tmp_path)
    path = tmp_path / f'{request.param}.qcow2'
    shutil.copy(bases[base], path)
    img = Image(path)
    patch(img)
    img.save()
    return path


# --- the checks ----------------------------------------------------------------

def vimg_command(cmd, path, out):
    if cmd == 'info':
        return vimg('info', '-f', 'qcow2', path)
    if cmd == 'map':
        return vimg('map', '-f', 'qcow2', '--output=json', path)
    return vimg('convert', '-f', 'qcow2', '-O', 'raw', path, out)


def qemu_command(cmd, path, out):
    if cmd == 'info':
        args = ['info', '-f', 'qcow2', path]
    elif cmd == 'map':
        args = ['map', '-f', 'qcow2', '--output=json', path]
    else:
        args = ['convert', '-f', 'qcow2', '-O', 'raw', path, out]
    return run(['qemu-img', *args])


def assert_clean_failure(p, what, path, keyword):
    assert p.returncode == 1, \
        f'{what}: expected exit 1, got {p.returncode}\nstdout: ' \
        f'{p.stdout[:2000]}\nstderr: {p.stderr}'
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f'{what}: expected one line on stderr:\n{p.stderr}'
    assert os.path.basename(path) in lines[0], \
        f'{what}: the message does not name the file: {lines[0]}'
    # Judge the words, not the file name (case names contain keywords).
    words = lines[0].replace(str(path.parent), '').replace(path.name, '')
    assert re.search(keyword, words, re.I), \
        f'{what}: the message does not say what is wrong ' \
        f'(/{keyword}/): {lines[0]}'


def assert_sane_map(p, what, size):
    extents = json.loads(p.stdout)
    assert isinstance(extents, list) and extents, f'{what}: {p.stdout[:500]}'
    pos = 0
    for e in extents:
        assert e['start'] == pos and e['length'] > 0, f'{what}: gap at {e}'
        pos += e['length']
    assert pos == size, f'{what}: extents cover {pos} of {size} bytes'


def virtual_size(path):
    with open(path, 'rb') as f:
        return struct.unpack('>Q', f.read(32)[24:32])[0]


@pytest.mark.parametrize('damaged', sorted(CASES), indirect=True)
@pytest.mark.parametrize('cmd', ALL)
def test_damaged(damaged, cmd, tmp_path):
    name = damaged.stem
    expect, keyword, qemu_accepts = CASES[name][2][cmd], *CASES[name][3:]
    what = f'vimg {cmd} {name}'
    out = tmp_path / 'vimg.raw'
    p = vimg_command(cmd, damaged, out)
    assert_no_crash(p, what)

    qout = tmp_path / 'qemu.raw'
    q = qemu_command(cmd, damaged, qout)
    assert (q.returncode == 0) == (cmd in qemu_accepts), \
        f'qemu-img {cmd} on {name} exited {q.returncode} (table says it ' \
        f'{"accepts" if cmd in qemu_accepts else "refuses"} it): {q.stderr}'

    if expect == FAIL or (expect == EITHER and p.returncode != 0):
        assert_clean_failure(p, what, damaged, keyword)
        return
    assert p.returncode == 0, f'{what}: exit {p.returncode}: {p.stderr}'
    if cmd == 'map':
        assert_sane_map(p, what, virtual_size(damaged))
    elif cmd == 'convert':
        assert q.returncode == 0, \
            f'{what} succeeded where qemu-img convert fails: {q.stderr}'
        assert out.read_bytes() == qout.read_bytes(), \
            f'{what}: output differs from qemu-img convert'
    else:
        assert p.stdout.strip(), f'{what}: no output'


def test_bad_magic_probes_as_raw(bases, tmp_path):
    """Without -f, a file with a bad magic is raw, as qemu-img says."""
    path = tmp_path / 'magic.qcow2'
    shutil.copy(bases['data'], path)
    img = Image(path)
    img['magic'] = 0x514649fc
    img.save()
    p = vimg('info', '--output=json', path)
    assert_no_crash(p, 'vimg info')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['format'] == 'raw'
    q = qemu('qemu-img', 'info', '--output=json', path)
    assert json.loads(q.stdout)['format'] == 'raw'


@pytest.mark.parametrize('bit', [0, 1])
def test_dirty_and_corrupt_bits_read_only(bases, tmp_path, bit):
    """Dirty (bit 0) and corrupt (bit 1) images still open read-only, as in
    qemu-img; info says so and convert gives qemu's bytes."""
    path = tmp_path / 'flagged.qcow2'
    shutil.copy(bases['data'], path)
    img = Image(path)
    img['incompatible_features'] |= 1 << bit
    img.save()
    p = vimg('info', '--output=json', path)
    assert_no_crash(p, 'vimg info')
    assert p.returncode == 0, p.stderr
    specific = json.loads(p.stdout)['format-specific']['data']
    q = json.loads(qemu('qemu-img', 'info', '--output=json', path).stdout)
    assert specific['corrupt'] == q['format-specific']['data']['corrupt']
    if bit == 0:
        assert json.loads(p.stdout).get('dirty-flag') is True
    p = vimg('convert', '-O', 'raw', path, tmp_path / 'vimg.raw')
    assert_no_crash(p, 'vimg convert')
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'convert', '-O', 'raw', path, tmp_path / 'qemu.raw')
    assert (tmp_path / 'vimg.raw').read_bytes() == \
        (tmp_path / 'qemu.raw').read_bytes()


def test_empty_file(tmp_path):
    path = tmp_path / 'empty.qcow2'
    path.write_bytes(b'')
    p = vimg('info', '-f', 'qcow2', path)
    assert_no_crash(p, 'vimg info')
    assert_clean_failure(p, 'vimg info empty file', path,
                         EOF_WORDS + '|magic|header|empty')



# --- backing chains that cannot be opened -----------------------------------------

LOOP_WORDS = r'loop|cycle|infinite|recurs|too (deep|long|many)|depth'


def make_loop(d, length):
    """LENGTH images whose backing files form a cycle (1: names itself)."""
    names = [f'node{i}.qcow2' for i in range(length)]
    for n in names:
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
             'cluster_size=4k', d / n, '1M')
    for i, n in enumerate(names):
        qemu('qemu-img', 'rebase', '-u', '-b', names[(i + 1) % length],
             '-F', 'qcow2', d / n)
    return d / names[0]


@pytest.mark.parametrize('length', [1, 2, 3])
@pytest.mark.parametrize('cmd', ['map', 'convert'])
def test_backing_loop(tmp_path, length, cmd):
    """A backing chain that loops is refused with a short message saying
    so.  (qemu-img info --backing-chain says "creates an infinite loop";
    qemu-img convert recurses until memory runs out, so it is not run.)"""
    path = make_loop(tmp_path, length)
    q = run(['qemu-img', 'info', '--backing-chain', path])
    assert q.returncode == 1 and 'infinite loop' in q.stderr, q.stderr
    p = vimg_command(cmd, path, tmp_path / 'out.raw')
    assert_no_crash(p, f'vimg {cmd} on a backing loop')
    assert_clean_failure(p, f'vimg {cmd} on a backing loop of {length}',
                         path, LOOP_WORDS)
    assert len(p.stderr) < 1000, f'message too long: {p.stderr[:300]}...'


@pytest.mark.parametrize('cmd', ['map', 'convert'])
def test_backing_missing(bases, tmp_path, cmd):
    """A missing backing file: one line naming the image and the file."""
    path = tmp_path / 'orphan.qcow2'
    shutil.copy(bases['overlay'], path)      # names base.qcow2, not copied
    p = vimg_command(cmd, path, tmp_path / 'out.raw')
    assert_no_crash(p, f'vimg {cmd} without the backing file')
    assert_clean_failure(p, f'vimg {cmd} without the backing file', path,
                         r'base\.qcow2')
    assert re.search(r'no such file|not found|cannot|could not', p.stderr,
                     re.I), p.stderr
