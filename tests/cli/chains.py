# SPDX-License-Identifier: MIT
"""Backing chains for the commit and rebase tests (tests/cli/), built with
qemu-img and qemu-io, and the ways to compare what vimg and qemu-img make
of two copies of one chain."""
import json
import shutil

from conftest import run

# Layers bottom to top: (file, format, create options, size or None for
# the backing file's size, qemu-io commands).  Each layer's backing file
# is the layer below it.  Contents overlap so that every layer masks some
# of the one below, with data and with zero clusters.
CHAINS = {
    # three qcow2 layers, the top one larger than the others
    'qcow2-3': [
        ('base.qcow2', 'qcow2', 'cluster_size=4k', '4M',
         ['write -c -P 5 3M 128k', 'write -P 1 0 3M',
          'write -P 1 3200k 896k']),
        ('mid.qcow2', 'qcow2', 'cluster_size=4k', None,
         ['write -P 2 64k 192k', 'write -z 512k 64k', 'write -z 1M 4k',
          'write -P 6 2M 8k']),
        ('top.qcow2', 'qcow2', 'cluster_size=4k', '6M',
         ['write -P 3 96k 64k', 'write -z 1536k 128k', 'write -z 2M 4k',
          'write -P 4 5M 4k', 'write -P 7 4095k 2k']),
    ],
    # raw at the bottom, qcow2 with other cluster sizes above, the top
    # smaller than its backing file
    'raw-base': [
        ('base.raw', 'raw', '', '3M',
         ['write -P 1 0 3M', 'write -z 1M 256k']),
        ('mid.qcow2', 'qcow2', 'cluster_size=64k', None,
         ['write -P 2 0 128k', 'write -z 256k 64k', 'write -P 8 2M 64k']),
        ('top.qcow2', 'qcow2', 'cluster_size=512', '2M',
         ['write -P 3 1k 3k', 'write -z 128k 64k', 'write -P 4 1100k 1k',
          'write -z 1600k 256k']),
    ],
    # a compat 0.10 base (no zero clusters), lazy refcounts, a short image
    # in the middle
    'v2-lazy': [
        ('base.qcow2', 'qcow2', 'compat=0.10,cluster_size=16k', '2M',
         ['write -P 1 0 2M']),
        ('mid.qcow2', 'qcow2', 'lazy_refcounts=on', '1M',
         ['write -P 2 0 512k', 'write -z 64k 64k']),
        ('top.qcow2', 'qcow2', 'lazy_refcounts=on,cluster_size=4k', '3M',
         ['write -P 3 4k 8k', 'write -z 256k 64k', 'write -P 4 2M 64k']),
    ],
    # extended L2 top over a 2 MiB-cluster base, with a snapshot in top
    'extl2-snap': [
        ('base.qcow2', 'qcow2', 'cluster_size=2M', '8M',
         ['write -P 1 0 8M']),
        ('top.qcow2', 'qcow2', 'extended_l2=on,cluster_size=64k', None,
         ['write -P 3 8k 4k', 'write -z 1M 2M', 'write -P 4 6M 100k']),
    ],
}


def build(d, chain, snapshot_top=False):
    """Create CHAIN in directory D; returns the top image's path."""
    below = None
    for name, fmt, opts, size, cmds in CHAINS[chain]:
        path = d / name
        args = ['qemu-img', 'create', '-q', '-f', fmt]
        if opts:
            args += ['-o', opts]
        if below:
            args += ['-b', below[0], '-F', below[1]]
        args.append(path)
        if size:
            args.append(size)
        run(args, check=True)
        io = ['qemu-io', '-f', fmt]
        for c in cmds:
            io += ['-c', c]
        run(io + [path], check=True)
        below = (name, fmt)
    if snapshot_top or chain == 'extl2-snap':
        top = d / CHAINS[chain][-1][0]
        run(['qemu-img', 'snapshot', '-c', 'snap', top], check=True)
        run(['qemu-io', '-c', 'write -P 9 7M 64k', top], check=True)
    return d / CHAINS[chain][-1][0]


def layers(chain):
    return [(name, fmt) for name, fmt, *_ in CHAINS[chain]]


def copy_chain(src, dst, chain):
    dst.mkdir(exist_ok=True)
    for name, _ in layers(chain):
        shutil.copy(src / name, dst / name)


def norm_map(path, fmt):
    """qemu-img map without host offsets, adjacent equal extents merged."""
    p = run(['qemu-img', 'map', '-f', fmt, '--output=json', path],
            check=True)
    out = []
    for e in json.loads(p.stdout):
        e.pop('offset', None)
        e.pop('compressed', None)
        if out and all(out[-1][k] == e[k] for k in e
                       if k not in ('start', 'length')) and \
                out[-1]['start'] + out[-1]['length'] == e['start']:
            out[-1]['length'] += e['length']
        else:
            out.append(e)
    return out


def check_clean(path):
    """qemu-img check: no corruption, no leak."""
    c = run(['qemu-img', 'check', '--output=json', path])
    assert c.returncode == 0, f'{path}: {c.stdout}{c.stderr}'
    report = json.loads(c.stdout)
    assert report.get('corruptions', 0) == 0, report
    assert report.get('leaks', 0) == 0, report


def check_no_corruption(path):
    """qemu-img check after a crash: leaks allowed, nothing else."""
    c = run(['qemu-img', 'check', '--output=json', path])
    assert c.returncode in (0, 3), f'{path}: {c.stdout}{c.stderr}'
    report = json.loads(c.stdout)
    assert report.get('corruptions', 0) == 0, report
    assert report.get('check-errors', 0) == 0, report


def assert_same_images(ours, theirs, chain):
    """Every layer of CHAIN in OURS has the guest content of the one in
    THEIRS (each read through its own chain), the same allocation, and the
    qcow2 ones are clean."""
    for name, fmt in layers(chain):
        a, b = ours / name, theirs / name
        c = run(['qemu-img', 'compare', '-f', fmt, '-F', fmt, a, b])
        assert c.returncode == 0, f'{name}: {c.stdout}{c.stderr}'
        assert norm_map(a, fmt) == norm_map(b, fmt), name
        if fmt == 'qcow2':
            check_clean(a)


def backing_fields(path):
    info = json.loads(run(['qemu-img', 'info', '--output=json', path],
                          check=True).stdout)
    out = {k: v for k, v in info.items() if 'backing' in k}
    # the full name differs by the image's directory only
    full = out.get('full-backing-filename')
    if full and full.startswith(f'{path.parent}/'):
        out['full-backing-filename'] = full[len(f'{path.parent}/'):]
    return out
