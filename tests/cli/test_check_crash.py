# SPDX-License-Identifier: MIT
"""`vimg check -r all` killed (SIGKILL) at random moments.

The images need a lot of repair work (512-byte clusters, 4 MiB of data,
thousands of refcount updates or a complete rebuild of the refcount
structure).  One untimed, uninterrupted repair of a copy measures how long
the repair takes (T); then for several seeds the repair of a fresh copy is
killed after a random delay in [0, 1.2 T].  Afterwards:
  - the image still opens (`qemu-img info`) and `qemu-img check` reports
    no more corruptions than before the repair started, and no check
    errors where there were none;
  - the guest data reads back (`qemu-img convert -O raw`) exactly as before
    (only when qemu-img could read it before);
  - running `vimg check -r all` again, uninterrupted, finishes the job:
    `qemu-img check` then gives the verdict it gives on a copy that
    qemu-img itself repaired, and the data is still the same.

VIMG_CHECK_SELFTEST=1 runs qemu-img in place of vimg.
"""
import json
import random
import shutil
import signal
import subprocess
import time

import pytest

import check_images as ci
from conftest import CHECK_BIN, qemu, run

ATTEMPTS = 5


def drop_every_other_entry(q):
    """Thousands of leaks: every other data cluster loses its L2 entry."""
    for i, (off, _) in enumerate(q.data_entries()):
        if i % 2:
            q.put(off, 0)


def double_every_other_entry(q):
    """Two thousand double references (refcount 1, two users) and as many
    leaks; the fix raises refcounts and clears COPIED flags."""
    entries = q.data_entries()
    for i in range(1, len(entries), 4):
        q.put(entries[i][0], entries[i - 1][1])


def reftable_all_zero(q):
    """No refcount block left: every refcount is 0, the repair rebuilds
    the whole refcount structure.  Plus 200 leaked clusters at the end."""
    ci.leak_appended(200)(q)
    for i in range(q['refcount_table_clusters'] * q.cluster_size // 8):
        q.put(q.reftable_off(i), 0)


KINDS = {
    # name: (create options, patch)
    'leaks': ('cluster_size=512', drop_every_other_entry),
    'double': ('cluster_size=512', double_every_other_entry),
    'rebuild': ('cluster_size=512', reftable_all_zero),
    'lazy-dirty': ('cluster_size=512,lazy_refcounts=on', ci.lazy_dirty),
    'rebuild-v2-rc16': ('cluster_size=1k,compat=0.10',
                        ci.many_leaks_and_reftable_zero),
}


def template(d, kind):
    opts, patch = KINDS[kind]
    img = d / f'{kind}.qcow2'
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts, img, '4M')
    qemu('qemu-io', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0xa5 1M 3M',
         img)
    q = ci.Qcow2(img)
    patch(q)
    q.save()
    return img


def report(img):
    p = run(['qemu-img', 'check', '--output=json', img])
    assert p.returncode in (0, 1, 2, 3), p.stderr
    return p.returncode, json.loads(p.stdout)


def guest_data(img, out):
    p = run(['qemu-img', 'convert', '-O', 'raw', img, out])
    data = out.read_bytes() if p.returncode == 0 else None
    out.unlink(missing_ok=True)
    return data


def repair(img, timeout=120):
    p = run([CHECK_BIN, 'check', '-r', 'all', img], timeout=timeout)
    assert p.returncode >= 0, f'repair crashed: {p.stderr[-2000:]}'
    return p


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_killed_repair_does_no_harm(tmp_path, kind):
    tpl = template(tmp_path, kind)
    rc0, before = report(tpl)
    assert before.get('corruptions', 0) + before.get('leaks', 0) > 100, \
        f'not much to repair: {before}'
    data0 = guest_data(tpl, tmp_path / 'd.raw')

    # how a complete repair ends, by qemu-img and by the tool under test
    ref = tmp_path / 'ref.qcow2'
    shutil.copy(tpl, ref)
    run(['qemu-img', 'check', '-r', 'all', ref])
    want_final = report(ref)
    want_final = (want_final[0],) + tuple(
        want_final[1].get(k, 0) for k in ('corruptions', 'leaks'))
    timed = tmp_path / 'timed.qcow2'
    shutil.copy(tpl, timed)
    t0 = time.monotonic()
    repair(timed)
    t_full = time.monotonic() - t0
    print(f'{kind}: full repair {t_full:.3f} s')

    rnd = random.Random(kind)
    for attempt in range(ATTEMPTS):
        img = tmp_path / f'run{attempt}.qcow2'
        shutil.copy(tpl, img)
        delay = rnd.uniform(0, 1.2 * t_full)
        p = subprocess.Popen([CHECK_BIN, 'check', '-r', 'all', str(img)],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        what = (f'{kind}, attempt {attempt}: killed after {delay:.3f} s '
                f'(full repair {t_full:.3f} s, exit {p.returncode})')
        for mark in ('AddressSanitizer', 'runtime error'):
            assert mark.encode() not in err, f'{what}:\n{err.decode()}'

        rc, after = report(img)      # it opens
        assert after.get('corruptions', 0) <= before.get('corruptions', 0), \
            f'{what}: more corruptions than before: {after} vs {before}'
        if not before.get('check-errors', 0):
            assert not after.get('check-errors', 0), f'{what}: {after}'
        if data0 is not None:
            assert guest_data(img, tmp_path / 'd.raw') == data0, \
                f'{what}: guest data changed'

        # an uninterrupted repair afterwards finishes the job
        repair(img)
        rc, final = report(img)
        got_final = (rc, final.get('corruptions', 0), final.get('leaks', 0))
        assert got_final == want_final, (
            f'{what}; then repaired again: qemu-img check says (exit, '
            f'corruptions, leaks) = {got_final}, after qemu-img\'s own '
            f'repair of the same damage: {want_final}')
        if data0 is not None:
            assert guest_data(img, tmp_path / 'd.raw') == data0, \
                f'{what}; then repaired again: guest data changed'
