# SPDX-License-Identifier: MIT
"""Shared helpers for the CLI test suites (tests/cli/).

Environment:
  VIMG            the vimg binary (default /work/main/build/tools/vimg/vimg)
  VIMG_BUILD_DIR  the meson build root, for tests/tools/* helper programs
                  (default /work/main/build)
  VIMG_CHECK_SELFTEST=1
                  the `check` tests (test_check*.py) run qemu-img in place
                  of `vimg check`, to show that the tests themselves are
                  right: qemu-img must pass its own comparison

qemu-img and qemu-io are the oracle: when they are missing the tests fail,
they never skip.
"""
import os
import shutil
import subprocess

import pytest

VIMG = os.environ.get('VIMG', '/work/main/build/tools/vimg/vimg')
BUILD_DIR = os.environ.get('VIMG_BUILD_DIR', '/work/main/build')
CHECK_SELFTEST = os.environ.get('VIMG_CHECK_SELFTEST', '') not in ('', '0')
# What runs as `vimg check` in test_check*.py.
CHECK_BIN = (shutil.which('qemu-img') or 'qemu-img') if CHECK_SELFTEST else VIMG

# What a sanitizer or a crash leaves on stderr.
SANITIZER_MARKS = ('AddressSanitizer', 'LeakSanitizer', 'runtime error',
                   'UndefinedBehaviorSanitizer', 'ThreadSanitizer')


def run(args, timeout=60, check=False, **kw):
    """Run ARGS, capture text output, fail the test on a hang."""
    try:
        p = subprocess.run([str(a) for a in args], capture_output=True,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f'timed out after {timeout}s: {" ".join(map(str, args))}')
    p.stdout = p.stdout.decode(errors='replace')
    p.stderr = p.stderr.decode(errors='replace')
    if check and p.returncode != 0:
        pytest.fail(f'{" ".join(map(str, args))} exited {p.returncode}:\n'
                    f'{p.stdout}{p.stderr}')
    return p


def qemu(*args, **kw):
    """Run qemu-img/qemu-io; a failure here is a broken test, not vimg's."""
    return run(args, check=True, **kw)


def vimg(*args, **kw):
    return run([VIMG, *args], **kw)


def vimg_check(*args, **kw):
    """`vimg check ARGS`, or `qemu-img check ARGS` under
    VIMG_CHECK_SELFTEST=1."""
    return run([CHECK_BIN, 'check', *args], **kw)


def assert_no_crash(p, what):
    """Exit code 0 or 1 only (not a signal, not an abort), no sanitizer."""
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, f'{what}: {mark} report:\n{p.stderr}'
    assert p.returncode in (0, 1), \
        f'{what}: exit code {p.returncode}\nstderr: {p.stderr}'


@pytest.fixture(scope='session', autouse=True)
def tools_present():
    """The oracle and the binary under test must exist: fail, never skip."""
    for tool in ('qemu-img', 'qemu-io'):
        assert shutil.which(tool), f'{tool} not found (install qemu-utils)'
    if not CHECK_SELFTEST:
        assert os.access(VIMG, os.X_OK), f'vimg binary not found at {VIMG}'
