# SPDX-License-Identifier: MIT
"""vimg commit against qemu-img commit on copies of the same chains: every
image has the same guest content and allocation as qemu's, the qcow2 ones
are clean; errors exit like qemu-img's and name the problem; a commit
killed at any moment leaves images free of corruption and the overlay's
guest content intact."""
import random
import shutil
import signal
import subprocess
import time

import pytest

from chains import (assert_same_images, build, check_clean,
                    check_no_corruption,
                    copy_chain, layers)
from conftest import VIMG, run

CASES = [
    # (chain, args); -b names are relative to the top's directory
    ('qcow2-3', []),
    ('qcow2-3', ['-d']),
    ('qcow2-3', ['-b', 'mid.qcow2']),
    ('qcow2-3', ['-b', 'base.qcow2']),
    ('raw-base', []),
    ('raw-base', ['-b', 'base.raw']),
    ('v2-lazy', []),
    ('v2-lazy', ['-b', 'base.qcow2']),
    ('extl2-snap', []),
    ('extl2-snap', ['-d', '-p']),
]


@pytest.mark.parametrize('chain,args', CASES,
                         ids=[f'{c}{"".join(a)}' for c, a in CASES])
def test_commit_like_qemu(tmp_path, chain, args):
    ours, theirs = tmp_path / 'ours', tmp_path / 'theirs'
    ours.mkdir()
    build(ours, chain)
    copy_chain(ours, theirs, chain)
    top = layers(chain)[-1][0]
    p = run([VIMG, 'commit', *args, top], cwd=ours)
    q = run(['qemu-img', 'commit', *args, top], cwd=theirs)
    assert q.returncode == 0, q.stderr
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'Image committed.\n'
    assert_same_images(ours, theirs, chain)


def test_commit_quiet_and_threads(tmp_path):
    build(tmp_path, 'qcow2-3')
    ref = tmp_path / 'ref'
    copy_chain(tmp_path, ref, 'qcow2-3')
    p = run([VIMG, 'commit', '-q', '-t', 'unsafe', tmp_path / 'top.qcow2'])
    assert p.returncode == 0 and p.stdout == '' and p.stderr == ''
    c = run(['qemu-img', 'compare', tmp_path / 'top.qcow2',
             ref / 'top.qcow2'])
    assert c.returncode == 0, c.stdout


def test_commit_zeroes_into_v2_with_backing(tmp_path):
    """qemu-img fails here ("Block job failed: Operation not supported":
    a compat 0.10 image cannot store zero clusters over a backing file);
    vimg writes zero data instead."""
    build(tmp_path, 'qcow2-3')
    ref = tmp_path / 'ref'
    copy_chain(tmp_path, ref, 'qcow2-3')
    run(['qemu-img', 'amend', '-f', 'qcow2', '-o', 'compat=0.10',
         tmp_path / 'mid.qcow2'], check=True)
    p = run([VIMG, 'commit', tmp_path / 'top.qcow2'])
    assert p.returncode == 0, p.stderr
    c = run(['qemu-img', 'compare', tmp_path / 'top.qcow2',
             ref / 'top.qcow2'])
    assert c.returncode == 0, c.stdout
    check_clean(tmp_path / 'mid.qcow2')
    check_clean(tmp_path / 'top.qcow2')


def errors_of(tmp_path, args, cwd):
    p = run([VIMG, 'commit', *args], cwd=cwd)
    q = run(['qemu-img', 'commit', *args], cwd=cwd)
    assert p.returncode == q.returncode, (p.stderr, q.stderr)
    return p, q


def test_commit_errors(tmp_path):
    build(tmp_path, 'qcow2-3')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', tmp_path / 'lone.qcow2',
         '1M'], check=True)
    (tmp_path / 'lone.raw').write_bytes(b'\0' * 65536)
    before = {n: (tmp_path / n).read_bytes() for n, _ in layers('qcow2-3')}

    p, _ = errors_of(tmp_path, ['lone.qcow2'], tmp_path)
    assert p.returncode == 1
    assert 'Image does not have a backing file' in p.stderr
    p, _ = errors_of(tmp_path, ['-f', 'raw', 'lone.raw'], tmp_path)
    assert 'Image does not have a backing file' in p.stderr
    p, _ = errors_of(tmp_path, ['-b', 'nothere.qcow2', 'top.qcow2'], tmp_path)
    assert p.returncode == 1
    assert "Did not find 'nothere.qcow2' in the backing chain of " \
           "'top.qcow2'" in p.stderr
    p, _ = errors_of(tmp_path, ['-b', 'top.qcow2', 'top.qcow2'], tmp_path)
    assert "Did not find 'top.qcow2'" in p.stderr
    p, _ = errors_of(tmp_path, ['nofile.qcow2'], tmp_path)
    assert "Could not open 'nofile.qcow2'" in p.stderr
    p, _ = errors_of(tmp_path, [], tmp_path)
    assert 'Expecting one image file name' in p.stderr
    p, _ = errors_of(tmp_path, ['-t', 'foo', 'top.qcow2'], tmp_path)
    assert 'Invalid cache option: foo' in p.stderr
    for n, data in before.items():
        assert (tmp_path / n).read_bytes() == data, n


def test_commit_base_by_absolute_path(tmp_path):
    build(tmp_path, 'qcow2-3')
    sub = tmp_path / 'elsewhere'
    sub.mkdir()
    p = run([VIMG, 'commit', '-b', tmp_path / 'base.qcow2',
             tmp_path / 'top.qcow2'], cwd=sub)
    assert p.returncode == 0, p.stderr
    # relative to the top's directory, not to the working directory
    p = run([VIMG, 'commit', '-b', 'base.qcow2', tmp_path / 'top.qcow2'],
            cwd=sub)
    assert p.returncode == 0, p.stderr


def big_chain(d):
    """A chain where commit takes a while: 48 MiB of scattered data."""
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         d / 'base.qcow2', '64M'], check=True)
    run(['qemu-io', '-c', 'write -P 1 0 64M', d / 'base.qcow2'], check=True)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k',
         '-b', 'base.qcow2', '-F', 'qcow2', d / 'top.qcow2', '80M'],
        check=True)
    cmds = []
    for i in range(0, 80, 2):
        cmds += ['-c', f'write -P {i + 2} {i}M 1536k']
        cmds += ['-c', f'write -z {i}M 8k']
    run(['qemu-io', *cmds, d / 'top.qcow2'], check=True)


def test_commit_sigkill(tmp_path):
    tpl = tmp_path / 'tpl'
    tpl.mkdir()
    big_chain(tpl)
    rnd = random.Random(5)
    for attempt in range(6):
        d = tmp_path / f'run{attempt}'
        d.mkdir()
        for n in ('base.qcow2', 'top.qcow2'):
            shutil.copy(tpl / n, d / n)
        args = [VIMG, 'commit', d / 'top.qcow2']
        proc = subprocess.Popen([str(a) for a in args],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        for n in ('base.qcow2', 'top.qcow2'):
            check_no_corruption(d / n)
        # the overlay reads the same at every stage: what is already in
        # the base is what the overlay had there
        c = run(['qemu-img', 'compare', d / 'top.qcow2', tpl / 'top.qcow2'])
        assert c.returncode == 0, f'attempt {attempt}: {c.stdout}'
