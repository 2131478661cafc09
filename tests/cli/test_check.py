# SPDX-License-Identifier: MIT
"""`vimg check` against `qemu-img check` on damaged qcow2 images.

The corpus: images made by qemu-img and qemu-io (data in several L2
tables, optionally a snapshot), then broken by a patch from
check_images.py, in several variants (cluster sizes 512 B and 64 KiB,
refcount_bits 1 and 16, compat 0.10, extended L2, lazy refcounts).

For each damaged image:
  - `check --output=json`: same exit code and the same JSON as qemu-img
    (every field qemu-img prints, and no field it leaves out, since qemu
    omits the counters that are zero); `check` (human) the same exit code
    and some output; `check -q` the same exit code and nothing on stdout;
  - repair: `vimg check -r all` on one copy, `qemu-img check -r all` on
    another: the same exit code and remaining counts, then a fresh
    `qemu-img check` gives the same verdict (exit code, corruptions,
    leaks, check-errors) on both copies, the dirty and corrupt header bits
    agree, and `qemu-img convert -O raw` of both copies gives the same
    result (both fail, or the same bytes).  The same with `-r leaks`.

Run with VIMG_CHECK_SELFTEST=1 to put qemu-img in place of vimg: every
test must then pass, which shows the expectations are qemu-img's.
"""
import json
import shutil

import pytest

import check_images as ci
from conftest import qemu, run, vimg_check

SIZE = '4M'

# name: create options.  'snap' bases add an internal snapshot and then
# write again, so clusters with refcount 2 and 1 both exist.
VARIANTS = {
    'c64k': 'cluster_size=64k',
    'c512': 'cluster_size=512',
    'v2': 'compat=0.10',
    'rc1': 'refcount_bits=1',
    'extl2': 'extended_l2=on,cluster_size=64k',
    'lazy': 'lazy_refcounts=on',
    'lazy512': 'lazy_refcounts=on,cluster_size=512',
}

# Fields of the JSON report that may differ from qemu-img's, with why.
# Only when the check could not complete (check-errors > 0, exit code 1):
# qemu counts one check error per cluster whose refcount it cannot read
# and leaves image-end-offset at whatever it had reached; a checker that
# stops at the first unreadable refcount block is as right.  Both must
# still report check errors.
ALLOWED_WHEN_INCOMPLETE = ('check-errors', 'image-end-offset',
                           'allocated-clusters', 'fragmented-clusters')
# After a repair the files differ (different names; a rebuilt refcount
# structure may be placed elsewhere), so the post-repair comparison is on
# the verdict only: exit code, corruptions, leaks, check-errors.
VERDICT = ('corruptions', 'leaks', 'check-errors')


# --- the cases ---------------------------------------------------------------
# (id, variant, snapshot?, patch, options)
# options: 'repair': 'same' (default) the repaired copies must get the
#          same verdict; 'no-worse': qemu-img's repair itself fails (exit
#          1, I/O error), vimg's may do better but not worse.
# compat=0.10 (no feature bits, no zero flag, refcount_order implied): the
# cases where the version could matter
V2_CASES = ('leak-appended', 'double-reference', 'l2-entry-past-eof',
            'l2-entry-unaligned', 'copied-missing', 'copied-set-on-shared',
            'reftable-entry-zero', 'refblock-entry-zero-l2',
            'snapshot-l1-unaligned', 'refblock-unaligned', 'clean-snapshot')


def _cases():
    common = [
        ('leak-appended', False, ci.leak_appended(5)),
        ('leak-dropped-l2-entry', False, ci.leak_dropped_l2_entry),
        ('double-reference', False, ci.double_reference),
        ('l2-entry-past-eof', False, ci.l2_entry_past_eof),
        ('l2-entry-unaligned', False, ci.l2_entry_unaligned),
        ('l2-table-over-reftable', False, ci.l2_overlaps_reftable),
        ('copied-missing', False, ci.copied_missing),
        ('copied-missing-l1', False, ci.copied_missing_l1),
        ('reftable-entry-zero', False, ci.reftable_entry_zero),
        ('reftable-entry-at-l1', False, ci.reftable_entry_at_l1),
        ('refblock-entry-zero-data', False, ci.refblock_entry_zero),
        ('refblock-entry-zero-l2', False, ci.refblock_entry_zero_l2),
        ('l2-reserved-bits', False, ci.l2_reserved_bits),
        ('l1-reserved-bits', False, ci.l1_reserved_bits),
        ('truncated', False, ci.truncate_last_clusters(2)),
        ('copied-set-on-shared', True, ci.copied_set_on_shared),
        ('snapshot-l1-unaligned', True, ci.snapshot_l1_unaligned),
        ('snapshot-l1-past-eof', True, ci.snapshot_l1_past_eof),
        ('corrupt-bit', False, ci.set_incompat(ci.INCOMPAT_CORRUPT)),
        ('refblock-unaligned', False, ci.refblock_unaligned),
        ('clean', False, lambda q: None),
        ('clean-snapshot', True, lambda q: None),
    ]
    out = []
    for name, snap, patch in common:
        out.append((name, 'c64k', snap, patch))
        if name not in ('l2-entry-unaligned', 'refblock-unaligned'):
            # 512-byte clusters: every offset field bit is cluster aligned
            out.append((name, 'c512', snap, patch))
        if name in V2_CASES:
            out.append((name, 'v2', snap, patch))
    # refcount_bits=1: no snapshots (a refcount of 2 does not fit); a
    # double reference is a refcount overflow
    for name in ('leak-appended', 'double-reference', 'reftable-entry-zero',
                 'refblock-entry-zero-data', 'l2-reserved-bits',
                 'copied-missing', 'clean'):
        out.append((name, 'rc1', False, dict((n, p) for n, _, p in
                                             common)[name]))
    for name in ('leak-appended', 'double-reference', 'l2-entry-past-eof',
                 'copied-missing', 'refblock-entry-zero-data',
                 'l2-reserved-bits', 'clean'):
        out.append((name, 'extl2', False, dict((n, p) for n, _, p in
                                               common)[name]))
    out.append(('extl2-alloc-and-zero', 'extl2', False,
                ci.extl2_alloc_and_zero))
    out.append(('lazy-dirty', 'lazy', False, ci.lazy_dirty))
    out.append(('lazy-dirty', 'lazy512', False, ci.lazy_dirty))
    out.append(('lazy-dirty-clean', 'lazy', False,
                ci.set_incompat(ci.INCOMPAT_DIRTY)))
    return {f'{name}-{variant}': (variant, snap, patch)
            for name, variant, snap, patch in out}


CASES = _cases()
# qemu-img's own repair fails on these (I/O error, exit 1)
REPAIR_NO_WORSE = {'refblock-unaligned-c64k', 'refblock-unaligned-v2'}
LEAK_CASES = [c for c in CASES if c.startswith(('leak-', 'double-ref'))]


# --- building ---------------------------------------------------------------

@pytest.fixture(scope='module')
def bases(tmp_path_factory):
    """Undamaged base images, made once per (variant, snapshot)."""
    d = tmp_path_factory.mktemp('check-bases')
    made = {}

    def get(variant, snap):
        key = (variant, snap)
        if key not in made:
            p = d / f'{variant}{"-snap" if snap else ""}.qcow2'
            qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
                 VARIANTS[variant], p, SIZE)
            # several L2 tables with 512-byte clusters (64 entries each)
            qemu('qemu-io', '-c', 'write -P 0x11 0 256k',
                 '-c', 'write -P 0x22 1M 64k', '-c', 'write -P 0x33 3M 4k', p)
            if snap:
                qemu('qemu-img', 'snapshot', '-c', 's1', p)
                qemu('qemu-io', '-c', 'write -P 0x44 64k 64k',
                     '-c', 'write -P 0x55 2M 8k', p)
            made[key] = p
        return made[key]
    return get


def damaged(bases, tmp_path, case, name='img.qcow2'):
    variant, snap, patch = CASES[case]
    p = tmp_path / name
    shutil.copy(bases(variant, snap), p)
    q = ci.Qcow2(p)
    patch(q)
    q.save()
    return p


# --- comparing -----------------------------------------------------------------

def report(p, what):
    assert_sane(p, what)
    try:
        return json.loads(p.stdout)
    except ValueError:
        pytest.fail(f'{what}: stdout is not JSON (exit {p.returncode}):\n'
                    f'{p.stdout}\nstderr: {p.stderr}')


def assert_sane(p, what):
    """No crash, no sanitizer report, one of check's exit codes."""
    assert_no_crash_codes(p, what, (0, 1, 2, 3, 63))


def assert_no_crash_codes(p, what, codes):
    for mark in ('AddressSanitizer', 'LeakSanitizer', 'runtime error',
                 'UndefinedBehaviorSanitizer'):
        assert mark not in p.stderr, f'{what}: {mark}:\n{p.stderr}'
    assert p.returncode in codes, \
        f'{what}: exit code {p.returncode}\nstderr: {p.stderr[-2000:]}'


def json_diff(want, got, ignore=()):
    out = []
    for k in sorted(set(want) | set(got)):
        if k in ignore:
            continue
        if k not in got:
            out.append(f'{k}: missing (qemu-img: {want[k]!r})')
        elif k not in want:
            out.append(f'{k}: {got[k]!r}, qemu-img does not print it')
        elif want[k] != got[k]:
            out.append(f'{k}: {got[k]!r}, qemu-img: {want[k]!r}')
    return out


def compare_reports(want_p, got_p, what, ignore=()):
    want = report(want_p, 'qemu-img ' + what)
    got = report(got_p, 'vimg ' + what)
    assert got_p.returncode == want_p.returncode, (
        f'{what}: exit code {got_p.returncode}, qemu-img '
        f'{want_p.returncode}\nvimg: {json.dumps(got)}\n'
        f'qemu-img: {json.dumps(want)}\nvimg stderr: {got_p.stderr[-2000:]}')
    ignore = set(ignore)
    if want.get('check-errors', 0) > 0:
        assert got.get('check-errors', 0) > 0, \
            f'{what}: qemu-img has check errors, vimg none: {got}'
        ignore |= set(ALLOWED_WHEN_INCOMPLETE)
    diffs = json_diff(want, got, ignore)
    assert not diffs, (f'{what}: JSON differs from qemu-img:\n  '
                       + '\n  '.join(diffs) + f'\nvimg stderr: '
                       f'{got_p.stderr[-2000:]}')
    return want, got


def verdict(path):
    """qemu-img check's verdict on PATH."""
    p = run(['qemu-img', 'check', '--output=json', path])
    assert p.returncode >= 0, p.stderr
    try:
        r = json.loads(p.stdout)
    except ValueError:          # could not even open it
        return (p.returncode, 'unreadable', p.stderr.strip()[:200])
    return (p.returncode,) + tuple(r.get(k, 0) for k in VERDICT)


def header_bits(path):
    q = ci.Qcow2(path)
    if q['version'] < 3:
        return 0
    return q['incompatible_features'] & (ci.INCOMPAT_DIRTY
                                         | ci.INCOMPAT_CORRUPT)


def guest_data(path, out):
    """(exit code, bytes) of qemu-img convert -O raw PATH."""
    p = run(['qemu-img', 'convert', '-O', 'raw', path, out])
    data = out.read_bytes() if p.returncode == 0 else None
    out.unlink(missing_ok=True)
    return p.returncode, data


# --- the tests ---------------------------------------------------------------

@pytest.mark.parametrize('case', sorted(CASES))
def test_check_like_qemu(bases, tmp_path, case):
    """--output=json, human and -q: what qemu-img says, file untouched."""
    img = damaged(bases, tmp_path, case)
    before = img.read_bytes()
    want = run(['qemu-img', 'check', '--output=json', img])
    got = vimg_check('--output=json', img)
    compare_reports(want, got, f'check --output=json ({case})')

    got = vimg_check(img)
    assert_sane(got, f'vimg check {case}')
    assert got.returncode == want.returncode, (
        f'human: exit code {got.returncode}, qemu-img {want.returncode}\n'
        f'{got.stdout}{got.stderr}')
    assert (got.stdout + got.stderr).strip(), 'no output at all'
    if want.returncode in (2, 3):
        # the problem is named: corrupt / leak / error, as qemu-img says
        assert any(w in (got.stdout + got.stderr).lower()
                   for w in ('error', 'corrupt', 'leak')), got.stdout

    q = vimg_check('-q', img)
    assert_sane(q, f'vimg check -q {case}')
    assert q.returncode == want.returncode, q.stderr
    assert q.stdout == '', f'-q printed on stdout:\n{q.stdout}'
    assert img.read_bytes() == before, 'check without -r changed the file'


def _repair(bases, tmp_path, case, mode):
    ours = damaged(bases, tmp_path, case, 'vimg.qcow2')
    theirs = damaged(bases, tmp_path, case, 'qemu.qcow2')
    data_before = guest_data(theirs, tmp_path / 'before.raw')

    want = run(['qemu-img', 'check', '-r', mode, '--output=json', theirs])
    got = vimg_check('-r', mode, '--output=json', ours)
    no_worse = case in REPAIR_NO_WORSE
    what = f'check -r {mode} --output=json ({case})'
    if not no_worse:
        # the report of the repair run: same exit code and remaining
        # counts; leaks-fixed exactly; corruptions-fixed only present or
        # not (qemu counts some repairs twice, e.g. the COPIED flag of an
        # entry fixed in both of its passes)
        w, g = compare_reports(want, got, what, ignore=(
            'filename', 'corruptions-fixed', 'image-end-offset',
            'allocated-clusters', 'fragmented-clusters'))
        assert ('corruptions-fixed' in w) == ('corruptions-fixed' in g), \
            f'{what}: corruptions-fixed: vimg {g}, qemu-img {w}'
    else:
        assert_sane(got, 'vimg ' + what)

    v_ours, v_theirs = verdict(ours), verdict(theirs)
    if no_worse:
        assert v_ours[0] in (0, 3, v_theirs[0]), (v_ours, v_theirs)
        if v_ours[1] != 'unreadable' and v_theirs[1] != 'unreadable':
            assert v_ours[1] <= v_theirs[1], (v_ours, v_theirs)
    else:
        assert v_ours == v_theirs, (
            f'after check -r {mode}: qemu-img check on the copy vimg '
            f'repaired: (exit, corruptions, leaks, check-errors) = {v_ours}; '
            f'on the copy qemu-img repaired: {v_theirs}')
        assert header_bits(ours) == header_bits(theirs), \
            'dirty/corrupt header bits differ after the repair'

    a = guest_data(ours, tmp_path / 'a.raw')
    b = guest_data(theirs, tmp_path / 'b.raw')
    if no_worse:
        if data_before[0] == 0:
            assert a == data_before, 'guest data changed by the repair'
    else:
        assert a[0] == b[0], (f'qemu-img convert exit code on the copy '
                              f'vimg repaired: {a[0]}, on qemu-img\'s: {b[0]}')
        assert a[1] == b[1], 'guest data differs after the repair'


@pytest.mark.parametrize('case', sorted(CASES))
def test_repair_all_like_qemu(bases, tmp_path, case):
    _repair(bases, tmp_path, case, 'all')


@pytest.mark.parametrize('case', sorted(LEAK_CASES))
def test_repair_leaks_like_qemu(bases, tmp_path, case):
    _repair(bases, tmp_path, case, 'leaks')


# --- other formats, errors ------------------------------------------------------

def test_raw_is_not_checkable(tmp_path):
    img = tmp_path / 'r.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', img, '1M')
    for args in ([], ['-f', 'raw'], ['--output=json']):
        want = run(['qemu-img', 'check', *args, img])
        got = vimg_check(*args, img)
        assert_sane(got, 'check on raw')
        assert want.returncode == 63
        assert got.returncode == 63, got.stderr
        assert 'support' in got.stderr.lower(), got.stderr


def test_missing_file(tmp_path):
    img = tmp_path / 'no-such.qcow2'
    for args in ([], ['--output=json'], ['-r', 'all']):
        want = run(['qemu-img', 'check', *args, img])
        got = vimg_check(*args, img)
        assert want.returncode == 1
        assert got.returncode == 1, got.stderr
        assert str(img) in got.stderr, got.stderr
        assert not img.exists(), 'check created the file'


def test_wrong_format_forced(tmp_path):
    """-f qcow2 on a raw file: cannot open, exit 1 (like qemu-img)."""
    img = tmp_path / 'r.raw'
    qemu('qemu-img', 'create', '-q', '-f', 'raw', img, '1M')
    want = run(['qemu-img', 'check', '-f', 'qcow2', img])
    got = vimg_check('-f', 'qcow2', img)
    assert want.returncode == 1
    assert got.returncode == 1, got.stderr
    assert str(img) in got.stderr


def test_bad_repair_mode(bases, tmp_path):
    img = damaged(bases, tmp_path, 'leak-appended-c64k')
    before = img.read_bytes()
    got = vimg_check('-r', 'bogus', img)
    assert got.returncode == 1, got.stderr
    assert img.read_bytes() == before
