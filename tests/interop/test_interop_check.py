"""vimg check reports what qemu-img check reports on every corpus image.

The images are the valid ones of the interop corpus (including the states
qemu leaves on purpose: lazy-refcounts-dirty, poked-dirty-corrupt), so the
JSON must be equal field for field: the same keys (qemu-img leaves out the
counters that are zero: corruptions, leaks, the *-fixed ones, fragmented-
and compressed-clusters) and the same values.  Damaged images are in
tests/cli/test_check.py.

VIMG_CHECK_SELFTEST=1 runs qemu-img in place of vimg (see
tests/cli/conftest.py), to show that the expectations are qemu-img's.
"""

import json
import os

import pytest

import interop_corpus
from interop_lib import QEMU_IMG, describe, parse_json, run, vimg_path

ALL = interop_corpus.ids()

# Fields in which vimg's JSON may differ from qemu-img's.  Deliberately
# empty: every field derives from the image's bytes ("filename" is the
# same relative path on the same cwd).
ALLOWED_DIFFERENCES = ()


def _check_bin():
    if os.environ.get("VIMG_CHECK_SELFTEST", "") not in ("", "0"):
        return QEMU_IMG
    return vimg_path()


def _vimg_check(image, *args):
    proc = run([_check_bin(), "check", *args, image.path], cwd=image.root)
    assert proc.returncode >= 0, "vimg crashed\n" + describe(proc)
    for mark in ("AddressSanitizer", "LeakSanitizer", "runtime error"):
        assert mark not in proc.stderr, describe(proc)
    return proc


@pytest.mark.parametrize("oracle_image", ALL, indirect=True)
def test_check_json_equals_qemu(oracle_image):
    image = oracle_image
    want = image.oracle("check", "--output=json", image.path)
    got = _vimg_check(image, "--output=json")
    assert got.returncode == want.returncode, (
        "exit code %d, qemu-img %d\nqemu-img: %s\n%s"
        % (got.returncode, want.returncode, want.stdout + want.stderr,
           describe(got)))
    if image.fmt == "raw":
        assert want.returncode == 63
        assert got.stdout.strip() == "", describe(got)
        return
    w, g = parse_json(want, "qemu-img"), parse_json(got, "vimg")
    diffs = ["%s: vimg %s, qemu-img %s" % (k, json.dumps(g.get(k)),
                                           json.dumps(w.get(k)))
             for k in sorted(set(w) | set(g))
             if k not in ALLOWED_DIFFERENCES and w.get(k, None) != g.get(k)]
    assert not diffs, ("vimg check --output=json %s differs from qemu-img:"
                       "\n  %s" % (image.path, "\n  ".join(diffs)))


@pytest.mark.parametrize("oracle_image", ALL, indirect=True)
def test_check_human_exit_code(oracle_image):
    image = oracle_image
    want = image.oracle("check", image.path)
    got = _vimg_check(image)
    assert got.returncode == want.returncode, describe(got)
    assert (got.stdout + got.stderr).strip()
