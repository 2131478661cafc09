# SPDX-License-Identifier: MIT
"""vimg rebase against qemu-img rebase on copies of the same chains: the
rebased image has the same guest content, allocation and backing fields
(qemu-img info) as qemu's, and is clean; errors exit like qemu-img's and
name the problem; a rebase killed at any moment leaves an image free of
corruption with its guest content intact."""
import random
import shutil
import signal
import subprocess
import time

import pytest

from chains import (assert_same_images, backing_fields, build, check_clean,
                    check_no_corruption, copy_chain, layers, norm_map)
from conftest import VIMG, run


def other_image(d):
    """An unrelated image to rebase onto, larger than most tops."""
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=8k',
         d / 'other.qcow2', '5M'], check=True)
    run(['qemu-io', '-c', 'write -P 1 0 1M', '-c', 'write -P 11 2M 1M',
         '-c', 'write -z 3M 512k', d / 'other.qcow2'], check=True)


CASES = [
    # (chain, args); names are relative to the top's directory
    ('qcow2-3', ['-b', 'base.qcow2', '-F', 'qcow2']),
    ('qcow2-3', ['-b', 'other.qcow2', '-F', 'qcow2']),
    ('qcow2-3', ['-b', '']),
    ('qcow2-3', ['-u', '-b', 'base.qcow2', '-F', 'qcow2']),
    ('qcow2-3', ['-u', '-b', 'nothere.qcow2', '-F', 'qcow2']),
    ('qcow2-3', ['-u', '-b', '']),
    ('qcow2-3', ['-u']),
    ('raw-base', ['-b', 'base.raw', '-F', 'raw']),
    ('raw-base', ['-b', 'base.raw', '-F', 'qcow2', '-u']),
    ('raw-base', ['-b', '', '-p']),
    ('v2-lazy', ['-b', 'base.qcow2', '-F', 'qcow2']),
    ('v2-lazy', ['-b', 'other.qcow2', '-F', 'qcow2']),
    ('extl2-snap', ['-b', 'other.qcow2', '-F', 'qcow2']),
    ('extl2-snap', ['-b', '']),
]


@pytest.mark.parametrize('chain,args', CASES,
                         ids=[f'{c}{"".join(a)}' for c, a in CASES])
def test_rebase_like_qemu(tmp_path, chain, args):
    ours, theirs = tmp_path / 'ours', tmp_path / 'theirs'
    ours.mkdir()
    build(ours, chain)
    other_image(ours)
    copy_chain(ours, theirs, chain)
    shutil.copy(ours / 'other.qcow2', theirs / 'other.qcow2')
    top = layers(chain)[-1][0]
    p = run([VIMG, 'rebase', *args, top], cwd=ours)
    q = run(['qemu-img', 'rebase', *args, top], cwd=theirs)
    assert q.returncode == 0, q.stderr
    assert p.returncode == 0, p.stderr
    assert p.stdout == ''
    assert backing_fields(ours / top) == backing_fields(theirs / top)
    if '-u' in args:
        # only the header changed, as qemu's
        assert (ours / top).read_bytes() == (theirs / top).read_bytes()
        return
    assert_same_images(ours, theirs, chain)
    # and the content did not change: compare with the chain before
    ref = tmp_path / 'ref'
    ref.mkdir()
    build(ref, chain)
    c = run(['qemu-img', 'compare', ours / top, ref / top])
    assert c.returncode == 0, c.stdout


def test_rebase_standalone_onto_backing(tmp_path):
    """An image without a backing file gets one: the old content is zeroes
    where it does not allocate, so the new backing file's data is masked."""
    for d in ('ours', 'theirs'):
        (tmp_path / d).mkdir()
        other_image(tmp_path / d)
        run(['qemu-img', 'create', '-q', '-f', 'qcow2', tmp_path / d / 'x.qcow2',
             '4M'], check=True)
        run(['qemu-io', '-c', 'write -P 3 1M 64k', tmp_path / d / 'x.qcow2'],
            check=True)
    p = run([VIMG, 'rebase', '-b', 'other.qcow2', '-F', 'qcow2', 'x.qcow2'],
            cwd=tmp_path / 'ours')
    assert p.returncode == 0, p.stderr
    run(['qemu-img', 'rebase', '-b', 'other.qcow2', '-F', 'qcow2', 'x.qcow2'],
        cwd=tmp_path / 'theirs', check=True)
    a, b = tmp_path / 'ours' / 'x.qcow2', tmp_path / 'theirs' / 'x.qcow2'
    assert run(['qemu-img', 'compare', a, b]).returncode == 0
    assert norm_map(a, 'qcow2') == norm_map(b, 'qcow2')
    assert backing_fields(a) == backing_fields(b)
    check_clean(a)


def test_rebase_relative_to_image_dir(tmp_path):
    build(tmp_path, 'qcow2-3')
    sub = tmp_path / 'elsewhere'
    sub.mkdir()
    p = run([VIMG, 'rebase', '-b', 'base.qcow2', '-F', 'qcow2',
             tmp_path / 'top.qcow2'], cwd=sub)
    assert p.returncode == 0, p.stderr
    assert backing_fields(tmp_path / 'top.qcow2')['backing-filename'] == \
        'base.qcow2'


def test_rebase_errors(tmp_path):
    tpl = tmp_path / 'tpl'
    tpl.mkdir()
    build(tpl, 'qcow2-3')
    (tpl / 'lone.raw').write_bytes(b'\0' * 65536)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512',
         tpl / 'small.qcow2', '1M'], check=True)
    names = [n for n, _ in layers('qcow2-3')] + ['small.qcow2', 'lone.raw']
    long_name = 'a' * 1100
    cases = [
        # qemu-img copies data before it refuses; vimg refuses first
        (['-b', 'base.qcow2', 'top.qcow2'], 'backing format must be specified'),
        (['-u', '-b', 'base.qcow2', 'top.qcow2'],
         'backing format must be specified'),
        (['top.qcow2'], 'Must specify backing file (-b) or use unsafe mode'),
        (['-F', 'qcow2', 'top.qcow2'], 'Must specify backing file (-b)'),
        (['-b', 'base.qcow2', '-F', 'foo', 'top.qcow2'],
         "Invalid format name: 'foo'"),
        (['-u', '-b', 'base.qcow2', '-F', 'foo', 'top.qcow2'],
         "Invalid format name: 'foo'"),
        (['-b', 'nothere.qcow2', '-F', 'qcow2', 'top.qcow2'],
         "Could not open new backing file 'nothere.qcow2'"),
        (['-f', 'raw', '-b', 'base.qcow2', '-F', 'qcow2', 'lone.raw'],
         "Could not change the backing file to 'base.qcow2': Operation not "
         "supported"),
        (['-u', '-b', long_name, '-F', 'qcow2', 'top.qcow2'],
         f"Could not change the backing file to '{long_name}'"),
        (['-u', '-b', 'a' * 450, '-F', 'qcow2', 'small.qcow2'],
         'No space left in the file header'),
        (['-t', 'foo', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'],
         'Invalid cache option: foo'),
        ([], 'Expecting one image file name'),
    ]
    for k, (args, msg) in enumerate(cases):
        ours, theirs = tmp_path / f'v{k}', tmp_path / f'q{k}'
        for d in (ours, theirs):
            d.mkdir()
            for n in names:
                shutil.copy(tpl / n, d / n)
        p = run([VIMG, 'rebase', *args], cwd=ours)
        q = run(['qemu-img', 'rebase', *args], cwd=theirs)
        assert p.returncode == q.returncode == 1, (args, p.stderr, q.stderr)
        assert msg in p.stderr, (args, p.stderr)
        for n in names:
            assert (ours / n).read_bytes() == (tpl / n).read_bytes(), \
                (args, n)


def big_chain(d):
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         d / 'base.qcow2', '64M'], check=True)
    run(['qemu-io', '-c', 'write -P 1 0 64M', d / 'base.qcow2'], check=True)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         '-b', 'base.qcow2', '-F', 'qcow2', d / 'top.qcow2', '80M'],
        check=True)
    run(['qemu-io', '-c', 'write -P 3 0 1M', '-c', 'write -z 4M 1M',
         d / 'top.qcow2'], check=True)


def test_rebase_sigkill(tmp_path):
    """Killed while copying or while switching the header, the image
    reads the same through whichever backing file its header names."""
    tpl = tmp_path / 'tpl'
    tpl.mkdir()
    big_chain(tpl)
    rnd = random.Random(7)
    for attempt in range(6):
        d = tmp_path / f'run{attempt}'
        d.mkdir()
        for n in ('base.qcow2', 'top.qcow2'):
            shutil.copy(tpl / n, d / n)
        proc = subprocess.Popen([VIMG, 'rebase', '-b', '', str(d /
                                                              'top.qcow2')],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        check_no_corruption(d / 'top.qcow2')
        c = run(['qemu-img', 'compare', d / 'top.qcow2', tpl / 'top.qcow2'])
        assert c.returncode == 0, f'attempt {attempt}: {c.stdout}'
