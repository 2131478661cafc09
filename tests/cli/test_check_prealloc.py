# SPDX-License-Identifier: MIT
"""`vimg check` of a large metadata-preallocated qcow2 image in bounded
memory.

The exact check keeps two bytes per host cluster; a clean image without
snapshots is checked from runs of clusters instead (qcow2-check-fast.c),
so the memory of checking a 512 GiB preallocated image (8 Mi clusters: 16
MiB of counters) is that of checking a 16 GiB one.  The images are written
here in a second (qemu-img create takes longer), laid out as a
preallocating writer would: header, refcount table, L1 table, refcount
blocks, L2 tables, then every data cluster (never written: the file is
sparse).  qemu-img check is the oracle for the counts; peak memory comes
from GNU time, as a difference of two runs; nothing is timed.
"""
import json
import os
import struct
from array import array

from conftest import CHECK_BIN, qemu, run, vimg_check

CLUSTER = 65536
L2_ENTRIES = CLUSTER // 8
REFBLOCK_ENTRIES = CLUSTER // 2  # 16-bit refcounts
COPIED = 1 << 63


def be64_array(values):
    a = array('Q', values)
    if struct.pack('=Q', 1) != struct.pack('>Q', 1):
        a.byteswap()
    return a.tobytes()


def write_prealloc(path, guest_bytes):
    """A clean qcow2 v3 image of GUEST_BYTES, every cluster preallocated."""
    n_data = guest_bytes // CLUSTER
    n_l2 = -(-n_data // L2_ENTRIES)
    l1_clusters = -(-n_l2 * 8 // CLUSTER)
    n_rb = 1
    while True:
        total = 2 + l1_clusters + n_rb + n_l2 + n_data
        need = -(-total // REFBLOCK_ENTRIES)
        if need <= n_rb:
            break
        n_rb = need
    assert n_rb <= CLUSTER // 8  # one refcount table cluster
    l1_at, rb_at = 2, 2 + l1_clusters
    l2_at = rb_at + n_rb
    data_at = l2_at + n_l2
    with open(path, 'wb') as f:
        header = struct.pack('>IIQIIQIIQQIIQQQQII', 0x514649fb, 3, 0, 0, 16,
                             guest_bytes, 0, n_l2, l1_at * CLUSTER,
                             CLUSTER, 1, 0, 0, 0, 0, 0, 4, 104)
        f.write(header)
        f.seek(CLUSTER)
        f.write(be64_array((rb_at + i) * CLUSTER for i in range(n_rb)))
        f.seek(l1_at * CLUSTER)
        f.write(be64_array((l2_at + i) * CLUSTER | COPIED
                           for i in range(n_l2)))
        f.seek(rb_at * CLUSTER)
        f.write(b'\0\1' * total)
        f.seek(l2_at * CLUSTER)
        f.write(be64_array((data_at + i) * CLUSTER | COPIED
                           for i in range(n_data)))
        f.truncate(total * CLUSTER)
    return rb_at, total


def check_rss(path, tmp_path):
    """`vimg check PATH`'s report and its peak RSS in KiB, from GNU time
    (a child of a small process: a child forked by this Python process
    would start with Python's peak in its ru_maxrss)."""
    rss = tmp_path / 'rss'
    # meson test sets MALLOC_PERTURB_, which makes malloc write every byte
    # it hands out: memory reserved but never touched (the L2 cache made
    # at open, unused by check) would count as resident
    env = {k: v for k, v in os.environ.items() if k != 'MALLOC_PERTURB_'}
    p = run(['/usr/bin/time', '-f', '%M', '-o', rss, CHECK_BIN, 'check',
             '--output=json', path], timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), int(rss.read_text().split()[-1])


def qemu_json(path):
    return json.loads(qemu('qemu-img', 'check', '--output=json', path,
                           timeout=120).stdout)


def test_large_prealloc_checks_in_bounded_memory(tmp_path):
    small, big = tmp_path / 'small.qcow2', tmp_path / 'big.qcow2'
    write_prealloc(small, 16 << 30)
    write_prealloc(big, 512 << 30)
    rep, rss_small = check_rss(small, tmp_path)
    assert rep == qemu_json(small)
    rep, rss_big = check_rss(big, tmp_path)
    assert rep == qemu_json(big)
    assert rep['allocated-clusters'] == (512 << 30) // CLUSTER
    # the exact check would need 16 MiB more for 8 Mi clusters
    assert rss_big - rss_small < 6 * 1024, (rss_small, rss_big)


def test_large_prealloc_with_a_leak_reports_exactly(tmp_path):
    """A refcount one too high in a large preallocated image: the fast
    check gives up and the exact one reports what qemu-img reports."""
    img = tmp_path / 'leak.qcow2'
    rb_at, total = write_prealloc(img, 64 << 30)
    with open(img, 'r+b') as f:
        f.seek(rb_at * CLUSTER + 2 * (total // 2))
        f.write(b'\0\2')
    p = vimg_check('--output=json', img)
    q = run(['qemu-img', 'check', '--output=json', img], timeout=120)
    # a leak, and a COPIED flag that no longer fits the refcount
    assert (p.returncode, q.returncode) == (2, 2), p.stderr
    assert json.loads(p.stdout) == json.loads(q.stdout)
    assert 'Leaked cluster' in p.stderr
