# SPDX-License-Identifier: MIT
"""A model of a qcow2 image with internal snapshots, for
test_snapshot_model.py: the bytes the active layer and every internal
snapshot must hold, updated by each vimg operation the test runs, and
compared with what qemu-img (the oracle) and vimg read after it.

Guest writes are done by vimg (tests/tools/write-ops), with the pattern
that tool makes: the disk is cut into 16-byte units, the unit at offset U
holds SEED and U as little-endian 64-bit numbers (every write distinct,
and compressible)."""
import json
import os
import struct

from conftest import BUILD_DIR, SANITIZER_MARKS, VIMG, run

KiB, MiB = 1 << 10, 1 << 20
WRITE_OPS = os.path.join(BUILD_DIR, 'tests', 'tools', 'write-ops')


def pattern(seed, off, length):
    """The bytes write-ops writes at [OFF, OFF + LENGTH) for SEED."""
    start, end = off & ~15, (off + length + 15) & ~15
    units = b''.join(struct.pack('<QQ', seed, u)
                     for u in range(start, end, 16))
    return units[off - start:off - start + length]


def first_difference(got, want, unit):
    """A short description of where GOT and WANT differ."""
    if len(got) != len(want):
        return f'size {len(got)}, expected {len(want)}'
    bad = [o for o in range(0, len(want), unit)
           if got[o:o + unit] != want[o:o + unit]]
    o = bad[0]
    i = next(i for i in range(o, o + unit) if got[i] != want[i])
    return (f'{len(bad)} clusters differ, first at {o:#x} (byte {i:#x}: '
            f'{got[i]:#04x}, expected {want[i]:#04x})')


def snapshot_table(path):
    """The snapshot table of the qcow2 image at PATH, read from the file:
    a list of dicts with id, name, l1_size, vm_state_size, disk_size (None
    without the extra data)."""
    with open(path, 'rb') as f:
        head = f.read(72)
        count, table = struct.unpack('>IQ', head[60:72])
        f.seek(table)
        entries = []
        for _ in range(count):
            fixed = f.read(40)
            (_l1, l1_size, id_len, name_len, _ds, _dn, _clock, vm_state,
             extra_len) = struct.unpack('>QIHHIIQII', fixed)
            extra = f.read(extra_len)
            disk_size = (struct.unpack('>Q', extra[8:16])[0]
                         if extra_len >= 16 else None)
            if extra_len >= 8:
                vm_state = struct.unpack('>Q', extra[0:8])[0]
            sid = f.read(id_len).decode()
            name = f.read(name_len).decode()
            used = 40 + extra_len + id_len + name_len
            f.read(-used % 8)
            entries.append({'id': sid, 'name': name, 'l1_size': l1_size,
                            'vm_state_size': vm_state,
                            'disk_size': disk_size})
    return entries


def _refcount_place(f, index):
    """(byte offset in the file, bit shift, width) of the refcount of
    cluster INDEX of the open qcow2 file F."""
    f.seek(0)
    head = f.read(104)
    version, = struct.unpack('>I', head[4:8])
    cluster_bits, = struct.unpack('>I', head[20:24])
    reftable, = struct.unpack('>Q', head[48:56])
    order = struct.unpack('>I', head[96:100])[0] if version >= 3 else 4
    width = 1 << order
    per_block = (1 << cluster_bits) * 8 // width
    f.seek(reftable + 8 * (index // per_block))
    block, = struct.unpack('>Q', f.read(8))
    block &= 0x00fffffffffffe00
    assert block, f'no refcount block for cluster {index}'
    bit = (index % per_block) * width
    if width < 8:
        return block + bit // 8, bit % 8, width
    return block + bit // 8, 0, width


def get_refcount(path, index):
    with open(path, 'rb') as f:
        at, shift, width = _refcount_place(f, index)
        f.seek(at)
        raw = f.read(max(width // 8, 1))
    if width < 8:
        return (raw[0] >> shift) & ((1 << width) - 1)
    return int.from_bytes(raw, 'big')


def set_refcount(path, index, value):
    """Poke the refcount of cluster INDEX in the file (to damage it)."""
    with open(path, 'r+b') as f:
        at, shift, width = _refcount_place(f, index)
        f.seek(at)
        raw = f.read(max(width // 8, 1))
        if width < 8:
            mask = ((1 << width) - 1) << shift
            raw = bytes([(raw[0] & ~mask) | (value << shift)])
        else:
            raw = value.to_bytes(width // 8, 'big')
        f.seek(at)
        f.write(raw)


def no_sanitizer_report(p, args):
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, \
            f'{" ".join(map(str, args))}: {mark} report:\n{p.stderr}'


class Snap:
    def __init__(self, sid, name, data):
        self.id, self.name, self.data = sid, name, bytes(data)


class Image:
    """A qcow2 image at PATH and the model of its content.

    Every method that changes the image runs the vimg command, asserts
    its exit status and updates the model; verify() compares."""

    def __init__(self, path, size, cluster_size, create_opts, base=None):
        """Create the image with vimg; BASE: (path, content) of a qcow2
        backing file."""
        self.path = str(path)
        self.cluster_size = cluster_size
        self.active = bytearray(size)
        if base:
            create_opts = create_opts + [f'backing_file={base[0]}',
                                         'backing_fmt=qcow2']
            self.active[:] = base[1][:size]
        self.snaps = []
        self.seed = 0
        opts = ','.join([f'cluster_size={cluster_size}'] + create_opts)
        self.vimg('create', '-q', '-f', 'qcow2', '-o', opts, self.path,
                  str(size))

    @classmethod
    def adopt(cls, path, cluster_size, content):
        """An Image for an existing file at PATH holding CONTENT."""
        img = cls.__new__(cls)
        img.path, img.cluster_size = str(path), cluster_size
        img.active, img.snaps, img.seed = bytearray(content), [], 0
        return img

    def set_snapshots(self, off, data):
        """What every snapshot reads at OFF is now DATA (a backing file
        they fall through to changed)."""
        for snap in self.snaps:
            n = max(0, min(len(data), len(snap.data) - off))
            snap.data = snap.data[:off] + data[:n] + snap.data[off + n:]

    # ---- running vimg ----

    def vimg(self, *args, expect=0):
        p = run([VIMG, *args])
        no_sanitizer_report(p, args)
        assert p.returncode == expect, \
            (f'vimg {" ".join(map(str, args))} exited {p.returncode}, '
             f'expected {expect}:\n{p.stdout}{p.stderr}')
        return p

    def refused(self, *args):
        """vimg ARGS must fail and leave the file as it was."""
        before = open(self.path, 'rb').read()
        self.vimg(*args, expect=1)
        assert open(self.path, 'rb').read() == before, \
            f'a refused vimg {" ".join(map(str, args))} changed the file'

    def next_seed(self):
        self.seed += 1
        return self.seed

    def write(self, *ops):
        """Run write-ops with OPS (tuples: ('w', off, len), ('z', off,
        len), ('zu', off, len), ('d', off, len), ('c', off)) and apply
        them to the model.  Seeds are chosen here."""
        words = []
        for op in ops:
            kind, off = op[0], op[1]
            if kind == 'w':
                seed = self.next_seed()
                words.append(f'w:{off}:{op[2]}:{seed}')
                self.active[off:off + op[2]] = pattern(seed, off, op[2])
            elif kind == 'c':
                seed = self.next_seed()
                n = min(self.cluster_size, len(self.active) - off)
                words.append(f'c:{off}:{seed}')
                self.active[off:off + n] = pattern(seed, off, n)
            else:
                words.append(f'{kind}:{off}:{op[2]}')
                self.active[off:off + op[2]] = bytes(op[2])
        p = run([WRITE_OPS, '-f', 'qcow2', self.path, *words])
        no_sanitizer_report(p, words)
        assert p.returncode == 0, \
            f'write-ops {" ".join(words)}:\n{p.stdout}{p.stderr}'

    def snapshot_create(self, name):
        self.vimg('snapshot', '-c', name, self.path)
        sid = str(max([int(s.id) for s in self.snaps] + [0]) + 1)
        self.snaps.append(Snap(sid, name, self.active))

    def snap(self, name):
        return next(s for s in self.snaps if s.name == name)

    def snapshot_apply(self, name):
        self.vimg('snapshot', '-a', name, self.path)
        self.active = bytearray(self.snap(name).data)

    def snapshot_delete(self, name):
        self.vimg('snapshot', '-d', name, self.path)
        self.snaps.remove(self.snap(name))

    def resize(self, size, shrink=False, prealloc=None, expect=0):
        """vimg resize; a refused one (EXPECT != 0) must leave the file
        as it was."""
        args = ['resize', '-q', '-f', 'qcow2']
        if shrink:
            args.append('--shrink')
        if prealloc:
            args.append(f'--preallocation={prealloc}')
        before = open(self.path, 'rb').read() if expect else None
        self.vimg(*args, self.path, str(size), expect=expect)
        if expect:
            assert open(self.path, 'rb').read() == before, \
                f'a refused resize to {size} changed the file'
            return
        self.set_size(size)

    def set_size(self, size):
        if size < len(self.active):
            del self.active[size:]
        else:
            self.active += bytes(size - len(self.active))

    def amend(self, opts, expect=0):
        """vimg amend -o OPTS; a refused amend (EXPECT != 0) must leave
        the file as it was."""
        before = open(self.path, 'rb').read() if expect else None
        self.vimg('amend', '-f', 'qcow2', '-o', opts, self.path,
                  expect=expect)
        if expect:
            assert open(self.path, 'rb').read() == before, \
                f'a refused amend -o {opts} changed the file'
            return
        for kv in opts.split(','):
            if kv.startswith('size='):
                self.set_size(int(kv[5:]))

    def clusters(self):
        return os.path.getsize(self.path) // self.cluster_size

    def make_leak(self):
        """Give a free cluster inside the file refcount 1 (a leak)."""
        for index in range(self.clusters() - 1, 0, -1):
            if get_refcount(self.path, index) == 0:
                set_refcount(self.path, index, 1)
                return index
        raise AssertionError('no free cluster to leak')

    def make_refcount_too_low(self):
        """Give a cluster the snapshots share refcount 1 (too low: a
        write would overwrite it in place, under the snapshot)."""
        for index in range(self.clusters() - 1, 0, -1):
            if get_refcount(self.path, index) == 2:
                set_refcount(self.path, index, 1)
                return index
        raise AssertionError('no shared cluster')

    def expect_check_errors(self, what):
        p = run(['qemu-img', 'check', '-f', 'qcow2', self.path])
        assert p.returncode != 0, f'{what}: qemu-img check:\n{p.stdout}'

    # ---- reading and comparing ----

    def read(self, tool, snap=None):
        """The guest content of the active layer, or of snapshot SNAP,
        as TOOL ('qemu-img' or 'vimg') reads it."""
        out = self.path + '.read.raw'
        more = ['-l', f'snapshot.id={snap.id}'] if snap else []
        prog = VIMG if tool == 'vimg' else 'qemu-img'
        p = run([prog, 'convert', '-f', 'qcow2', *more, '-O', 'raw',
                 self.path, out])
        no_sanitizer_report(p, ['convert', self.path])
        assert p.returncode == 0, \
            f'{tool} convert {more} {self.path}:\n{p.stderr}'
        with open(out, 'rb') as f:
            data = f.read()
        os.unlink(out)
        return data

    def compare(self, what, tool, snap):
        got = self.read(tool, snap)
        want = bytes(snap.data if snap else self.active)
        # both read a snapshot at the current disk size (qemu-img loads
        # the snapshot's L1 table into the open image)
        size = len(self.active)
        want = want[:size] + bytes(max(0, size - len(want)))
        if got != want:
            layer = f'snapshot {snap.name} (id {snap.id})' if snap \
                else 'the active layer'
            raise AssertionError(
                f'after {what}: {layer} as {tool} reads it: '
                f'{first_difference(got, want, self.cluster_size)}')

    def check_clean(self, what):
        p = run(['qemu-img', 'check', '-f', 'qcow2', self.path])
        assert p.returncode == 0 and 'No errors were found' in p.stdout, \
            f'after {what}: qemu-img check:\n{p.stdout}{p.stderr}'

    def check_list(self, what, full):
        info = json.loads(run(['qemu-img', 'info', '--output=json', '-f',
                               'qcow2', self.path], check=True).stdout)
        assert info['virtual-size'] == len(self.active), what
        got = [(s['id'], s['name'], s['vm-state-size'])
               for s in info.get('snapshots', [])]
        want = [(s.id, s.name, 0) for s in self.snaps]
        assert got == want, f'after {what}: snapshot list {got}, ' \
                            f'expected {want}'
        table = snapshot_table(self.path)
        for entry, snap in zip(table, self.snaps):
            if entry['disk_size'] is not None:
                assert entry['disk_size'] == len(snap.data), \
                    f'after {what}: snapshot {snap.name} disk size ' \
                    f'{entry["disk_size"]}, expected {len(snap.data)}'
        if not full:
            return
        v = run([VIMG, 'snapshot', '-l', self.path])
        no_sanitizer_report(v, ['snapshot', '-l', self.path])
        q = run(['qemu-img', 'snapshot', '-l', self.path])
        assert v.returncode == 0 and v.stdout == q.stdout, \
            f'after {what}: vimg snapshot -l:\n{v.stdout}{v.stderr}\n' \
            f'qemu-img snapshot -l:\n{q.stdout}'

    def verify(self, what, full=False):
        """The image is clean, lists the model's snapshots, and every
        layer reads as its model with qemu-img.  vimg reads the active
        layer; to keep the test quick its snapshot reads and its snapshot
        list are compared every third time, after snapshot commands, and
        when FULL."""
        self.verifies = getattr(self, 'verifies', 0) + 1
        full = full or self.verifies % 3 == 0 or what.startswith('snapshot')
        self.check_clean(what)
        self.check_list(what, full)
        for tool in ('qemu-img', 'vimg'):
            self.compare(what, tool, None)
            for snap in self.snaps if tool == 'qemu-img' or full else ():
                self.compare(what, tool, snap)
