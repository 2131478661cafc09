# SPDX-License-Identifier: MIT
"""Probing (issue 9, item 2): every format qemu-img probes is recognised.

Images are made by `qemu-img create -f FMT` for each format qemu-img can
create; dmg, bochs and cloop it cannot create, so minimal files are built
here from each format's documented layout (bochs and cloop ones that
qemu-img itself opens, a dmg that is only a "koly" trailer).  vimg must
name the format where qemu-img does (`qemu-img info --output=json` is the
oracle) and refuse every command on the formats it does not implement,
leaving the file unchanged, or open it (qcow2, raw).
"""
import hashlib
import json
import struct
import zlib

import pytest

from conftest import BUILD_DIR, VIMG, qemu, run

SIZE = 8 << 20

# format -> extra `qemu-img create` arguments (luks needs a key secret)
CREATED = {
    'qcow': [],
    'qcow2': [],
    'raw': [],
    'vhdx': [],
    'vmdk': [],
    'vmdk-flat': ['-o', 'subformat=monolithicFlat'],
    'vmdk-stream': ['-o', 'subformat=streamOptimized'],
    'vdi': [],
    'vpc': [],
    'qed': [],
    'parallels': [],
    'luks': ['--object', 'secret,id=s0,data=secret', '-o',
             'key-secret=s0,iter-time=10'],
}
FOREIGN = ['vmdk', 'vmdk-flat', 'vmdk-stream', 'vdi', 'vpc',
           'qed', 'parallels', 'luks', 'bochs', 'cloop', 'dmg', 'vpc-fixed',
           'dmg-koly']


def make_bochs(path, disk=1 << 20, extent=64 << 10):
    """A growing Bochs redolog: 512-byte header (magic, type "Redolog",
    subtype "Growing", version 2.0, header size, catalog entries, bitmap
    size, extent size, disk size), then a catalog with no extent
    allocated."""
    entries = disk // extent
    h = bytearray(512)
    h[0:23] = b'Bochs Virtual HD Image\0'
    h[32:40] = b'Redolog\0'
    h[48:56] = b'Growing\0'
    struct.pack_into('<IIIIIxxxxQ', h, 64, 0x00020000, 512, entries, 512,
                     extent, disk)
    path.write_bytes(bytes(h) + struct.pack(f'<{entries}I',
                                            *[0xffffffff] * entries))


def make_cloop(path, block=512, n=2):
    """cloop 2.0: the 128-byte shell preamble, block size and count (big
    endian), n+1 offsets, then zlib-compressed blocks."""
    pre = (b'#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && '
           b'mount -r -t iso9660 /dev/cloop $1\n').ljust(128, b'\0')
    blocks = [zlib.compress(bytes(block)) for _ in range(n)]
    offs = [128 + 8 + 8 * (n + 1)]
    for b in blocks:
        offs.append(offs[-1] + len(b))
    path.write_bytes(pre + struct.pack('>II', block, n) +
                     struct.pack(f'>{n + 1}Q', *offs) + b''.join(blocks))


def koly():
    """A UDIF trailer: "koly", version 4, header size 512."""
    k = bytearray(512)
    k[0:4] = b'koly'
    struct.pack_into('>III', k, 4, 4, 512, 1)
    return bytes(k)


def make(tmp_path, kind):
    """Build an image of KIND; return (path, format name vimg must say)."""
    if kind in CREATED:
        fmt = kind.split('-')[0]
        path = tmp_path / f'img.{kind}'
        args = ['qemu-img', 'create', '-q', '-f', fmt, *CREATED[kind], path,
                str(SIZE)]
        # qemu times PBKDF2 for luks and, on a busy machine, may fail with
        # "Unable to get accurate CPU usage": try again then
        for _ in range(4 if fmt == 'luks' else 0):
            if run(args).returncode == 0:
                return path, fmt
        qemu(*args)
        return path, fmt
    if kind == 'bochs':
        path = tmp_path / 'img.bochs'
        make_bochs(path)
        return path, 'bochs'
    if kind == 'cloop':
        path = tmp_path / 'img.cloop'
        make_cloop(path)
        return path, 'cloop'
    if kind == 'dmg':
        # qemu names a file *.dmg a dmg whatever its content
        path = tmp_path / 'img.dmg'
        path.write_bytes(bytes(4096) + koly())
        return path, 'dmg'
    if kind == 'dmg-koly':
        path = tmp_path / 'img.bin'
        path.write_bytes(bytes(4096) + koly())
        return path, 'dmg'
    if kind == 'vpc-fixed':
        path = tmp_path / 'img.vhd'
        qemu('qemu-img', 'create', '-q', '-f', 'vpc', '-o', 'subformat=fixed',
             path, str(SIZE))
        return path, 'vpc'
    raise AssertionError(kind)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_format(path):
    """The format qemu-img probes for PATH, or None if it cannot open it."""
    p = run(['qemu-img', 'info', '--output=json', path])
    return json.loads(p.stdout)['format'] if p.returncode == 0 else None


@pytest.mark.parametrize('kind', FOREIGN)
def test_foreign_named_as_qemu_names_it(tmp_path, kind):
    path, fmt = make(tmp_path, kind)
    theirs = qemu_format(path)
    if kind == 'vpc-fixed':
        # qemu-img 7.2 takes a fixed VHD (footer only) for raw, and a raw
        # resize would move the footer away: vimg names it instead
        assert theirs == 'raw'
    elif kind == 'dmg-koly':
        assert theirs == 'raw'  # qemu goes by the name only
    elif kind == 'dmg':
        # this minimal dmg has no block table, qemu cannot open it; that
        # it probed dmg shows in its error being the dmg driver's
        assert theirs is None
        probed = run(['qemu-img', 'info', path])
        forced = run(['qemu-img', 'info', '-f', 'dmg', path])
        assert probed.stderr == forced.stderr
        assert run(['qemu-img', 'info', '-f', 'raw', path]).returncode == 0
    else:
        assert theirs == fmt
    p = run([VIMG, 'info', path])
    assert p.returncode == 1, p.stdout
    assert p.stdout == ''
    assert (f"{path}': image is in {fmt} format, which vimg does not "
            f"support yet") in p.stderr, p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr


@pytest.mark.parametrize('kind', FOREIGN)
def test_foreign_refused_unchanged(tmp_path, kind):
    path, fmt = make(tmp_path, kind)
    before = digest(path)
    size = path.stat().st_size
    out = tmp_path / 'out.raw'
    cmds = [
        ['convert', '-O', 'raw', path, out],
        ['resize', path, str(SIZE * 2)],
        ['map', path],
        ['check', path],
        ['snapshot', '-c', 's', path],
        ['compare', path, path],
    ]
    for args in cmds:
        p = run([VIMG, *args])
        assert p.returncode != 0, f'{args}: {p.stdout}'
        assert f'{fmt} format' in p.stderr, f'{args}: {p.stderr}'
        assert 'Image resized' not in p.stdout
    assert not out.exists()
    assert path.stat().st_size == size
    assert digest(path) == before


@pytest.mark.parametrize('kind', ['qcow', 'qcow2', 'vhdx', 'raw'])
def test_supported_open(tmp_path, kind):
    path, fmt = make(tmp_path, kind)
    assert qemu_format(path) == fmt
    p = run([VIMG, 'info', '--output=json', path], check=True)
    info = json.loads(p.stdout)
    assert info['format'] == fmt
    assert info['virtual-size'] == SIZE


def test_foreign_backing_file_named(tmp_path):
    """A backing file in a foreign format with no stored format is refused
    by name, not read as raw under the overlay."""
    base, _ = make(tmp_path, 'vdi')
    top = tmp_path / 'top.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base.name,
         '-F', 'vdi', top)
    top2 = tmp_path / 'top2.qcow2'
    qemu('cp', top, top2)
    strip_backing_format(top)
    p = run([VIMG, 'convert', '-O', 'raw', top, tmp_path / 'o.raw'])
    assert p.returncode == 1
    assert 'vdi format' in p.stderr, p.stderr
    assert not (tmp_path / 'o.raw').exists()
    # with the format stored, the refusal names it too
    p = run([VIMG, 'map', top2])
    assert p.returncode == 1
    assert 'vimg does not support the vdi format' in p.stderr, p.stderr


def test_explicit_raw_reads_foreign(tmp_path):
    """-f raw still reads any file as raw, as in qemu."""
    path, _ = make(tmp_path, 'vdi')
    out = tmp_path / 'o.raw'
    run([VIMG, 'convert', '-f', 'raw', '-O', 'raw', path, out], check=True)
    assert out.read_bytes()[:path.stat().st_size] == path.read_bytes()


def strip_backing_format(path):
    """Turn the backing format header extension of qcow2 PATH into an
    unknown one (which every reader skips): the image then names its
    backing file without a format, as images made by older tools do
    (qemu-img 7.2 no longer creates those)."""
    with open(path, 'r+b') as f:
        h = f.read(4096)
        version = struct.unpack('>I', h[4:8])[0]
        off = 72 if version == 2 else struct.unpack('>I', h[100:104])[0]
        while True:
            kind, length = struct.unpack('>II', h[off:off + 8])
            assert kind != 0, 'no backing format extension'
            if kind == 0xE2792ACA:
                f.seek(off)
                f.write(struct.pack('>I', 0x6e6f6e65))
                break
            off += 8 + (length + 7) // 8 * 8
    info = json.loads(run(['qemu-img', 'info', '--output=json', path],
                          check=True).stdout)
    assert 'backing-filename-format' not in info


# --- guessed raw: qemu-img's warning and the block-0 guard (item 3) ---

WRITE_OPS = f'{BUILD_DIR}/tests/tools/write-ops'


def warning_lines(stderr):
    """The WARNING line and its indented continuation lines."""
    out, inside = [], False
    for line in stderr.splitlines():
        inside = line.startswith('WARNING:') or (inside and
                                                 line.startswith('    '))
        if inside:
            out.append(line)
    return out


@pytest.mark.parametrize('args', [
    ['resize', '{img}', '9M'],
    ['amend', '-o', 'size=9M', '{img}'],
    ['snapshot', '-c', 's', '{img}'],
    ['resize', '-f', 'raw', '{img}', '10M'],
    ['info', '{img}'],
    ['map', '{img}'],
], ids=['resize', 'amend', 'snapshot', 'resize-f-raw', 'info', 'map'])
def test_guessed_raw_warning(tmp_path, args):
    """Word for word qemu-img's warning, on the same opens (read-write,
    format guessed); none with -f raw or for reading."""
    ours, theirs = tmp_path / 'w.raw', tmp_path / 'q' / 'w.raw'
    theirs.parent.mkdir()
    for path in (ours, theirs):
        qemu('qemu-img', 'create', '-q', '-f', 'raw', path, '8M')
    p = run([VIMG, *[a.format(img=ours.name) for a in args]], cwd=tmp_path)
    q = run(['qemu-img', *[a.format(img=theirs.name) for a in args]],
            cwd=theirs.parent)
    assert p.returncode == q.returncode, p.stderr + q.stderr
    assert warning_lines(p.stderr) == warning_lines(q.stderr), p.stderr
    expect_warning = args[0] in ('resize', 'amend', 'snapshot') and \
        '-f' not in args
    assert bool(warning_lines(p.stderr)) == expect_warning, p.stderr


def first_sectors(tmp_path):
    """512-byte payloads for sector 0: the first sectors of images
    qemu-img makes, and bytes no format claims."""
    out = {}
    tmp_path.mkdir()
    for fmt in ('qcow2', 'qcow', 'vhdx', 'vmdk', 'vdi', 'qed', 'luks'):
        path, _ = make(tmp_path, fmt)
        out[fmt] = path.read_bytes()[:512].ljust(512, b'\0')
    out['vmdk-descriptor'] = (b'# Disk DescriptorFile\nversion=1\n'
                              b'CID=fffffffe\n').ljust(512, b'\0')
    out['harmless'] = bytes(range(256)) * 2
    return out


def test_block0_guard_as_qemu_io(tmp_path):
    """Writing another format's first sector into a guessed raw image is
    refused as qemu-io refuses it ("Operation not permitted"), and the
    image is left as qemu-io leaves it; with -f raw both write."""
    payloads = first_sectors(tmp_path / 'src')
    for name, data in payloads.items():
        payload = tmp_path / f'{name}.bin'
        payload.write_bytes(data)
        for forced in ([], ['-f', 'raw']):
            ours = tmp_path / f'{name}-ours.raw'
            theirs = tmp_path / f'{name}-theirs.raw'
            for path in (ours, theirs):
                path.write_bytes(bytes(range(256)) * 16)
            q = run(['qemu-io', *forced, '-c', f'write -s {payload} 0 512',
                     theirs])
            p = run([WRITE_OPS, *forced, ours, f's:0:{payload}'])
            what = f'{name} {forced}'
            refused = q.returncode != 0 or 'failed' in q.stdout + q.stderr
            assert refused == (name != 'harmless' and not forced), what
            assert (p.returncode != 0) == refused, f'{what}: {p.stderr}'
            if refused:
                assert 'not permitted' in q.stdout + q.stderr
                assert 'not permitted' in p.stderr, p.stderr
            assert ours.read_bytes() == theirs.read_bytes(), what


def commit_setup(d, header):
    """base.raw under an overlay that names it with no backing format; the
    guest wrote HEADER at offset 0 and a pattern at 1 MiB."""
    d.mkdir()
    base, top = d / 'base.raw', d / 'top.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', base, '4M')
    qemu('qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 4M', base)
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.raw',
         '-F', 'raw', top)
    strip_backing_format(top)
    payload = d / 'sector0.bin'
    payload.write_bytes(header)
    qemu('qemu-io', '-f', 'qcow2', '-c', f'write -s {payload} 0 512',
         '-c', 'write -P 0x22 1M 64k', top)
    return base, top


@pytest.mark.parametrize('what', ['qcow2-header', 'harmless'])
def test_commit_into_guessed_raw(tmp_path, what):
    """Issue 9 item 3: a guest's qcow2 header (backing file /etc/hostname)
    is not committed into a base whose format was guessed: qemu-img
    commit fails with "Operation not permitted" and so must vimg, leaving
    base and overlay as they were (qemu may have copied other ranges by
    then; vimg writes nothing).  Harmless data commits as usual."""
    if what == 'qcow2-header':
        evil = tmp_path / 'evil.qcow2'
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-b', '/etc/hostname',
             '-F', 'raw', evil, '1M')
        header = evil.read_bytes()[:512]
    else:
        header = b'boot sector ' * 42 + b'\0' * 8
    ours_base, ours_top = commit_setup(tmp_path / 'ours', header)
    theirs_base, theirs_top = commit_setup(tmp_path / 'theirs', header)
    before = ours_base.read_bytes()
    q = run(['qemu-img', 'commit', theirs_top])
    p = run([VIMG, 'commit', ours_top])
    assert p.returncode == q.returncode, p.stderr + q.stderr
    if what == 'qcow2-header':
        assert q.returncode == 1 and 'Operation not permitted' in q.stderr
        assert 'not permitted' in p.stderr, p.stderr
        # qemu's job may have copied other ranges before it failed (seen:
        # the 1 MiB pattern, some runs); its first sector stays, and vimg
        # refuses before writing anything
        assert theirs_base.read_bytes()[:512] == before[:512]
        assert ours_base.read_bytes() == before
        assert json.loads(run(['qemu-img', 'info', '--output=json',
                               ours_base]).stdout)['format'] == 'raw'
    else:
        assert p.returncode == 0, p.stderr
        assert ours_base.read_bytes() == theirs_base.read_bytes()
        assert ours_base.read_bytes()[:512] == header
    c = run(['qemu-img', 'compare', ours_top, theirs_top])
    assert c.returncode == 0, c.stdout + c.stderr
