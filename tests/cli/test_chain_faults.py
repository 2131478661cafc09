# SPDX-License-Identifier: MIT
"""Fault injection for commit and rebase: the Nth write (or flush) of the
overlay and every one after it fail, N = 1, 2, ... until none fires.  The
command fails, every image stays free of corruption, and the overlay's
guest content is what it was.  (SIGKILL tests are in test_commit.py and
test_rebase.py.)"""
import os
import shutil
import struct

import pytest

from chains import build
from conftest import VIMG, run

FAULTY = os.path.join(os.path.dirname(VIMG), 'vimg-faulty')


def raw_content(img, tmp, name):
    out = tmp / f'{name}.raw'
    run(['qemu-img', 'convert', '-O', 'raw', img, out], check=True)
    return out.read_bytes()


def no_corruption(img):
    """qemu-img check finds no corruption (leaks allowed); a dirty image
    (an operation cut short) must end clean after check -r all."""
    if struct.unpack('>Q', img.read_bytes()[72:80])[0] & 1:
        run(['qemu-img', 'check', '-q', '-r', 'all', img])
    p = run(['qemu-img', 'check', img])
    assert p.returncode in (0, 3), p.stdout + p.stderr


OPS = {
    'commit': ['commit'],
    'rebase': ['rebase', '-b', 'other.qcow2', '-F', 'qcow2'],
    'rebase-u': ['rebase', '-u', '-b', 'other.qcow2', '-F', 'qcow2'],
    'rebase-standalone': ['rebase', '-b', ''],
}


@pytest.mark.parametrize('kind', ['w', 'f'])
@pytest.mark.parametrize('op', list(OPS))
def test_fault_injection(tmp_path, op, kind):
    tpl = tmp_path / 'tpl'
    tpl.mkdir()
    build(tpl, 'qcow2-3')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', tpl / 'other.qcow2',
         '4M'], check=True)
    run(['qemu-io', '-c', 'write -P 9 0 4M', tpl / 'other.qcow2'],
        check=True)
    want = [raw_content(tpl / 'top.qcow2', tmp_path, 'want')]
    if op == 'rebase-u':
        # -u does not keep the content: the old name or the new one
        d = tmp_path / 'done'
        shutil.copytree(tpl, d)
        run([VIMG, *OPS[op], d / 'top.qcow2'], check=True)
        want.append(raw_content(d / 'top.qcow2', tmp_path, 'want'))
    fired_once = False
    for n in [*range(1, 30), *range(30, 100000, 41)]:
        d = tmp_path / f'n{kind}{n}'
        shutil.copytree(tpl, d)
        p = run([FAULTY, *OPS[op], d / 'top.qcow2'],
                env={**os.environ, 'VIMG_FAULT': f'{kind}{n}'})
        if 'vimg-faulty: 0 faults' in p.stderr:
            assert p.returncode == 0, p.stderr
            shutil.rmtree(d)
            break
        fired_once = True
        assert p.returncode == 1, f'{kind}{n}: the fault was not reported'
        for f in ('base.qcow2', 'mid.qcow2', 'top.qcow2', 'other.qcow2'):
            no_corruption(d / f)
        got = raw_content(d / 'top.qcow2', tmp_path, 'got')
        assert got in want, f'{kind}{n}: the overlay changed'
        shutil.rmtree(d)
    else:
        pytest.fail('the fault kept firing')
    assert fired_once
