# SPDX-License-Identifier: MIT
"""Issue 9, items 7, 8 (info) and 9: where vimg differed from qemu-img on
images qemu-img handles (or on its own iotests 036, 060, 244, 261, 287).
qemu-img 7.2 is the reference; where it loses data (a downgrade that
zeroes a snapshot's cluster) vimg must keep every snapshot intact, checked
through qemu-img convert -l and qemu-img compare.
"""
import json
import os
import struct

import pytest

from conftest import VIMG, qemu, run, vimg

KiB = 1024
MiB = 1024 * KiB
OFFSET_MASK = 0x00fffffffffffe00


def info_json(path, *extra):
    return json.loads(qemu('qemu-img', 'info', '--output=json', *extra,
                           str(path)).stdout)


def header_u64(path, off):
    with open(path, 'rb') as f:
        f.seek(off)
        return struct.unpack('>Q', f.read(8))[0]


def poke(path, off, data):
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(data)


def first_l2_entry_offset(path):
    """File offset of L2 entry 0 of the active layer."""
    l1 = header_u64(path, 40)
    return header_u64(path, l1) & OFFSET_MASK


def snapshot_raw(tmp_path, img, name, tag):
    out = tmp_path / f'{tag}-{name}.raw'
    qemu('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', '-l',
         f'snapshot.name={name}', img, out)
    return out


def active_raw(tmp_path, img, tag):
    out = tmp_path / f'{tag}-active.raw'
    qemu('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', img, out)
    return out


def same_content(a, b):
    return run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', a,
                b]).returncode == 0


# ------------------------------------------------ item 7: compat=0.10

def _shared_zero_active(img):
    # the active layer zeroes a cluster the snapshot still reads: qemu-io
    # keeps the host offset with the zero flag (a preallocated zero
    # cluster shared with the snapshot)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 128k', img)
    qemu('qemu-img', 'snapshot', '-c', 's1', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -z 0 64k', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 3 128k 64k', img)
    qemu('qemu-img', 'snapshot', '-c', 's2', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -z 64k 128k', img)


def _shared_zero_in_snapshot(img):
    # a snapshot holds a preallocated zero cluster whose L2 table the
    # active layer shares (one table, two L1 references)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 192k', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -z 64k 64k', img)
    qemu('qemu-img', 'snapshot', '-c', 's1', img)
    qemu('qemu-img', 'snapshot', '-c', 's2', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 5 128k 64k', img)


@pytest.mark.parametrize('make', [_shared_zero_active,
                                  _shared_zero_in_snapshot])
def test_downgrade_keeps_every_snapshot(tmp_path, make):
    """Issue 9 item 7: after amend compat=0.10 every snapshot and the
    active layer read as before (qemu-img 7.2 zeroes the shared cluster
    in place: the older snapshot then reads zeroes there)."""
    img = tmp_path / 'a.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', img,
         '1M')
    make(img)
    names = [s['name'] for s in info_json(img).get('snapshots', [])]
    assert names == ['s1', 's2']
    before = {n: snapshot_raw(tmp_path, img, n, 'before') for n in names}
    before_active = active_raw(tmp_path, img, 'before')

    p = vimg('amend', '-f', 'qcow2', '-o', 'compat=0.10', img)
    assert p.returncode == 0, p.stderr
    assert info_json(img)['format-specific']['data']['compat'] == '0.10'
    qemu('qemu-img', 'check', img)
    for n in names:
        assert same_content(before[n], snapshot_raw(tmp_path, img, n,
                                                    'after')), \
            f'snapshot {n} changed by the downgrade'
    assert same_content(before_active, active_raw(tmp_path, img, 'after'))


def test_downgrade_refused_when_snapshot_size_differs(tmp_path):
    """qemu-img refuses to downgrade when a snapshot's disk size differs
    from the image's (v2 readers would not know it): vimg too, with the
    image unchanged."""
    img = tmp_path / 'g.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
    qemu('qemu-img', 'snapshot', '-c', 's', img)
    qemu('qemu-img', 'resize', '-q', img, '2M')
    ref = tmp_path / 'ref.qcow2'
    ref.write_bytes(img.read_bytes())
    q = run(['qemu-img', 'amend', '-o', 'compat=0.10', ref])
    assert q.returncode == 1
    before = img.read_bytes()
    p = vimg('amend', '-f', 'qcow2', '-o', 'compat=0.10', img)
    assert p.returncode == 1
    assert 'Internal snapshots prevent downgrade of image' in p.stderr
    assert 'Internal snapshots prevent downgrade of image' in q.stderr
    assert img.read_bytes() == before


# ---------------------------------------------------------- iotest 060

def _unaligned_zero_image(path):
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', path, '64M')
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write 0 64k', path)
    entry = first_l2_entry_offset(path)
    host = header_u64(path, entry) & OFFSET_MASK
    # zero flag, COPIED, and an offset inside the cluster
    poke(path, entry, struct.pack('>Q', (host + 0x2a00) | 1 | (1 << 63)))


def test_downgrade_unaligned_zero_cluster_marks_corrupt(tmp_path):
    """iotest 060: amend compat=0.10 on a zero cluster with an unaligned
    offset fails and marks the image corrupt, as qemu-img does; check -r
    all then repairs it and clears the bit."""
    ref = tmp_path / 'ref.qcow2'
    img = tmp_path / 'v.qcow2'
    _unaligned_zero_image(ref)
    img.write_bytes(ref.read_bytes())
    q = run(['qemu-img', 'amend', '-o', 'compat=0.10', ref])
    p = vimg('amend', '-f', 'qcow2', '-o', 'compat=0.10', img)
    assert q.returncode == 1 and p.returncode == 1
    assert 'unaligned' in p.stderr
    for path in (ref, img):
        data = info_json(path)['format-specific']['data']
        assert data['compat'] == '1.1'
        assert data['corrupt'] is True, path
    p = vimg('check', '-r', 'all', img)
    assert p.returncode == 0, p.stderr
    assert info_json(img)['format-specific']['data']['corrupt'] is False
    qemu('qemu-img', 'check', img)


def test_check_clears_corrupt_bit_after_refcount_rebuild(tmp_path):
    """iotest 060: an unaligned refcount block marks the image corrupt on
    the first write; one `check -r all` rebuilds the refcounts and clears
    the corrupt bit (the image is then clean for qemu-img)."""
    img = tmp_path / 'r.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '64M')
    rt = header_u64(img, 48)
    poke(img, rt, struct.pack('>Q', 0x22a00))
    w = run(['qemu-io', '-f', 'qcow2', '-c', 'write 0 64k', img])
    assert 'write failed' in w.stdout + w.stderr
    assert info_json(img)['format-specific']['data']['corrupt'] is True
    p = vimg('check', '-r', 'all', img)
    assert p.returncode == 0, p.stdout + p.stderr
    assert info_json(img)['format-specific']['data']['corrupt'] is False
    qemu('qemu-img', 'check', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 7 0 64k', img)
    qemu('qemu-img', 'check', img)


# ---------------------------------------------------------- iotest 036

AUTOCLEAR = 88
WRITERS = {
    'resize': (['resize', '{img}', '2M'], ['resize', '-f', 'qcow2', '{img}',
                                          '2M']),
    'snapshot': (['snapshot', '-c', 's', '{img}'],
                 ['snapshot', '-c', 's', '{img}']),
    'check-r': (['check', '-r', 'all', '{img}'],
                ['check', '-r', 'all', '{img}']),
    'info': (['info', '{img}'], ['info', '{img}']),
}


@pytest.mark.parametrize('cmd', sorted(WRITERS))
def test_unknown_autoclear_bits_cleared_by_writers(tmp_path, cmd):
    """iotest 036 / qcow2.txt: a writer clears the autoclear bits it does
    not know (bits 63 and 5 here); a reader keeps them.  The bits after vimg equal the bits
    after qemu-img running the same command."""
    results = []
    for tool, args in (('qemu-img', WRITERS[cmd][0]),
                       ('vimg', WRITERS[cmd][1])):
        img = tmp_path / f'{tool}.qcow2'
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
        poke(img, AUTOCLEAR, struct.pack('>Q', (1 << 63) | (1 << 5)))
        argv = [a.format(img=img) for a in args]
        p = run([tool if tool == 'qemu-img' else VIMG, *argv])
        assert p.returncode == 0, p.stdout + p.stderr
        results.append(header_u64(img, AUTOCLEAR))
    assert results[1] == results[0]
    if cmd != 'info':
        assert results[1] == 0
    else:
        assert results[1] == (1 << 63) | (1 << 5)


# ---------------------------------------------------------- iotest 261

def _strip_snapshot_extra_data(path):
    """Rewrite the snapshot table with no extra data in any entry, as
    QEMU before 1.1 wrote version 2 snapshots (qcow2.txt, "Snapshots")."""
    d = bytearray(path.read_bytes())
    nb, off = struct.unpack('>IQ', d[60:72])
    out, p = b'', off
    for _ in range(nb):
        fixed = list(struct.unpack('>QIHHIIQII', d[p:p + 40]))
        id_len, name_len, extra_len = fixed[2], fixed[3], fixed[8]
        strings = d[p + 40 + extra_len:p + 40 + extra_len + id_len + name_len]
        fixed[8] = 0
        e = struct.pack('>QIHHIIQII', *fixed) + strings
        out += e + b'\0' * (-len(e) % 8)
        p += 40 + extra_len + id_len + name_len
        p += -p % 8
    d[off:off + len(out)] = out
    path.write_bytes(bytes(d))


def test_upgrade_gives_snapshots_v3_extra_data(tmp_path):
    """iotest 261: amend compat=1.1 of a version 2 image whose snapshot
    entries have no extra data gives each the 16 bytes version 3 needs:
    qemu-img check accepts the result, and info matches qemu-img's own
    upgrade of the same image."""
    img = tmp_path / 'v.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', img,
         '1M')
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 64k', img)
    qemu('qemu-img', 'snapshot', '-c', 's1', img)
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 2 0 64k', img)
    qemu('qemu-img', 'snapshot', '-c', 's2', img)
    _strip_snapshot_extra_data(img)
    qemu('qemu-img', 'check', img)
    ref = tmp_path / 'q.qcow2'
    ref.write_bytes(img.read_bytes())
    before = snapshot_raw(tmp_path, img, 's1', 'before')
    qemu('qemu-img', 'amend', '-o', 'compat=1.1', ref)

    p = vimg('amend', '-f', 'qcow2', '-o', 'compat=1.1', img)
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'check', img)
    mine, theirs = info_json(img), info_json(ref)
    assert mine['format-specific'] == theirs['format-specific']
    assert mine['snapshots'] == theirs['snapshots']
    assert same_content(before, snapshot_raw(tmp_path, img, 's1', 'after'))
    assert vimg('check', img).returncode == 0


# ---------------------------------------------------------- iotest 287

@pytest.mark.parametrize('cmd', ['info', 'check'])
def test_compression_bit_with_zlib_refused(tmp_path, cmd):
    """iotest 287: the compression-type incompatible bit with compression
    type zlib (0) is invalid: qemu-img refuses to open the image, and so
    does vimg (info and check)."""
    img = tmp_path / 'c.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M')
    poke(img, 72, struct.pack('>Q', header_u64(img, 72) | (1 << 3)))
    q = run(['qemu-img', cmd, img])
    assert q.returncode == 1
    assert 'Compression type incompatible feature bit must not be set' \
        in q.stderr
    p = vimg(cmd, img)
    assert p.returncode == 1, p.stdout
    assert 'Compression type incompatible feature bit must not be set' \
        in p.stderr
    assert str(img) in p.stderr


# ---------------------------------------------------------- iotest 244

def _old_data_file(path, size):
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize('raw', ['on', 'off'])
@pytest.mark.parametrize('old_size', [1 * MiB, 3 * MiB])
def test_create_empties_existing_data_file(tmp_path, raw, old_size):
    """iotest 244: create -o data_file=d.raw (raw or not) empties an
    existing d.raw as qemu-img 7.2 does: the new image reads as zeroes and
    d.raw has the image's size, byte for byte as qemu-img leaves it."""
    outcomes = []
    for tool in ('qemu-img', 'vimg'):
        d = tmp_path / f'{tool}-d.raw'
        img = tmp_path / f'{tool}.qcow2'
        _old_data_file(d, old_size)
        args = ['create', '-q', '-f', 'qcow2', '-o',
                f'data_file={d},data_file_raw={raw}', img, '2M']
        p = run(['qemu-img', *args]) if tool == 'qemu-img' else vimg(*args)
        assert p.returncode == 0, p.stderr
        qemu('qemu-img', 'check', img)
        out = tmp_path / f'{tool}.raw'
        qemu('qemu-img', 'convert', '-O', 'raw', img, out)
        outcomes.append((d.read_bytes(), out.read_bytes()))
    assert outcomes[1] == outcomes[0]
    assert outcomes[1][1] == bytes(2 * MiB)


def test_create_data_file_keep(tmp_path):
    """vimg's own -o data_file_keep=on keeps the bytes of an existing data
    file, so data_file_raw=on wraps a raw disk: qemu-img reads the image
    as that disk.  It is documented in `vimg create -o help`."""
    d = tmp_path / 'd.raw'
    data = _old_data_file(d, 1 * MiB)
    img = tmp_path / 'k.qcow2'
    p = vimg('create', '-q', '-f', 'qcow2', '-o',
             f'data_file={d},data_file_raw=on,data_file_keep=on', img, '2M')
    assert p.returncode == 0, p.stderr
    qemu('qemu-img', 'check', img)
    out = tmp_path / 'k.raw'
    qemu('qemu-img', 'convert', '-O', 'raw', img, out)
    assert out.read_bytes() == data + bytes(1 * MiB)
    assert d.read_bytes()[:1 * MiB] == data
    h = vimg('create', '-f', 'qcow2', '-o', 'help')
    assert 'data_file_keep' in h.stdout
    bad = vimg('create', '-q', '-f', 'qcow2', '-o', 'data_file_keep=on',
               tmp_path / 'n.qcow2', '1M')
    assert bad.returncode == 1 and 'data_file_keep' in bad.stderr


# ------------------------------------------------- item 8: info as qemu

@pytest.mark.parametrize('length', [327680, 200000, 70000, 1000])
def test_info_of_truncated_image(tmp_path, length):
    """Issue 9 item 8: qemu-img info describes a qcow2 file cut short of
    the metadata it points to (tables past the end read as zeroes); vimg
    info prints the same, in JSON and as text."""
    img = tmp_path / 't.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', img, '64M')
    qemu('qemu-io', '-f', 'qcow2', '-c', 'write -P 1 0 1M', img)
    qemu('qemu-img', 'snapshot', '-c', 'snap', img)
    os.truncate(img, length)
    for fmt in ('json', 'human'):
        q = run(['qemu-img', 'info', f'--output={fmt}', img])
        p = vimg('info', f'--output={fmt}', img)
        assert q.returncode == 0, q.stderr
        assert p.returncode == 0, p.stderr
        if fmt == 'json':
            assert json.loads(p.stdout) == json.loads(q.stdout)
        else:
            assert p.stdout == q.stdout


LUKS_VARIANTS = {
    'xts-plain64': [],
    'cbc-essiv': ['encrypt.cipher-alg=aes-128', 'encrypt.cipher-mode=cbc',
                  'encrypt.ivgen-alg=essiv', 'encrypt.ivgen-hash-alg=sha256'],
}


@pytest.fixture(scope='module')
def encrypted_images(tmp_path_factory):
    """qcow2 images encrypted with LUKS (two cipher set-ups) and with the
    legacy AES method, made by qemu-img (short key iteration times)."""
    d = tmp_path_factory.mktemp('encrypted')
    images = {}
    for name, extra in LUKS_VARIANTS.items():
        img = d / f'luks-{name}.qcow2'
        # qemu times its key derivation; on a loaded machine a short
        # iter-time can fail ("Unable to get accurate CPU usage", or a
        # benchmark that overflows): retry with longer ones
        for iter_time in (100, 300, 1000, 2000):
            opts = ','.join(['encrypt.format=luks', 'encrypt.key-secret=s',
                             f'encrypt.iter-time={iter_time}', *extra])
            p = run(['qemu-img', 'create', '-q', '-f', 'qcow2', '--object',
                     'secret,id=s,data=pw', '-o', opts, img, '4M'],
                    timeout=120)
            if p.returncode == 0:
                break
        assert p.returncode == 0, p.stderr
        images[name] = img
    img = d / 'aes.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '--object',
         'secret,id=s,data=pw', '-o', 'encrypt.format=aes,'
         'encrypt.key-secret=s', img, '4M')
    images['aes'] = img
    return images


@pytest.mark.parametrize('kind', ['xts-plain64', 'cbc-essiv', 'aes'])
def test_info_of_encrypted_image(encrypted_images, kind):
    """Issue 9 item 8: qemu-img info describes an encrypted qcow2 without
    its key (encrypted: yes; for LUKS the header: cipher, ivgen, hash,
    uuid, key slots, payload offset); vimg info prints the same."""
    img = encrypted_images[kind]
    q = qemu('qemu-img', 'info', '--output=json', img)
    p = vimg('info', '--output=json', img)
    assert p.returncode == 0, p.stderr
    mine, theirs = json.loads(p.stdout), json.loads(q.stdout)
    assert mine == theirs
    assert mine['encrypted'] is True
    q = qemu('qemu-img', 'info', img)
    p = vimg('info', img)
    assert p.returncode == 0, p.stderr
    assert p.stdout == q.stdout


@pytest.mark.parametrize('kind', ['xts-plain64', 'aes'])
def test_encrypted_data_refused(encrypted_images, kind, tmp_path):
    """Reading or writing encrypted data needs the key (a later issue):
    refused with a message that says so, the image left unchanged."""
    img = encrypted_images[kind]
    before = img.read_bytes()
    for args in (['convert', '-O', 'raw', img, tmp_path / 'o.raw'],
                 ['snapshot', '-c', 's', img],
                 ['resize', img, '8M']):
        p = vimg(*args)
        assert p.returncode == 1, args
        assert 'encrypted' in p.stderr and str(img) in p.stderr, p.stderr
    assert img.read_bytes() == before
