"""vimg compare agrees with qemu-img compare: exit code (0 identical,
1 different, 2 error) and the messages on stdout."""

import json

import pytest

import interop_corpus
from interop_lib import first_nonzero, flip_byte, run_checked, QEMU_IMG

ALL = interop_corpus.ids()
# "big" images have virtual sizes of TiBs: no raw conversion
SMALL = interop_corpus.ids(without_tags={"big"})
BACKING = interop_corpus.ids(with_tags={"backing"})
MODES = [(), ("-s",)]
MODE_IDS = ["normal", "strict"]


def _progress_tail(text):
    """With -p, the messages without the progress updates: qemu-img draws
    "    (x/100%)\r" on stdout and ends with a blank line; vimg draws its bar
    on stderr.  Keep the lines that are neither."""
    lines = text.replace("\r", "\n").splitlines()
    return [l for l in lines if l.strip() and not l.strip().endswith("/100%)")]


def _compare(image, *args, progress=False):
    """Run qemu-img compare ARGS and vimg compare ARGS in the corpus root;
    the exit codes and stdout must agree."""
    want = image.oracle("compare", *args)
    assert want.returncode in (0, 1, 2), want.stderr
    got = image.vimg("compare", *args, ok=(0, 1, 2))
    cmd = "compare " + " ".join(args)
    assert got.returncode == want.returncode, (
        "vimg %s: exit code %d, qemu-img's %d\nqemu-img stdout: %r\n"
        "vimg stdout: %r\nvimg stderr: %r"
        % (cmd, got.returncode, want.returncode, want.stdout, got.stdout,
           got.stderr))
    if want.returncode != 2:        # error messages go to stderr, prefixed
        w, g = want.stdout, got.stdout
        if progress:
            w, g = _progress_tail(w), _progress_tail(g)
            # vimg's bar is on stderr and must have reached 100%
            assert "100.0%" in got.stderr, got.stderr
        assert g == w, "vimg %s: stdout %r, qemu-img's %r" % (cmd, g, w)
    return want.returncode


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("image", SMALL, indirect=True)
def test_compare_with_raw_conversion(image, mode):
    """The image against qemu-img's raw conversion of it: identical
    (in strict mode, block status may differ)."""
    rc = _compare(image, *mode, image.path, str(image.ref_raw()))
    if not mode:
        assert rc == 0


def _flip_offset(image, where):
    size = image.virtual_size
    if where == "last-byte":
        return size - 1
    nz = first_nonzero(image.ref_raw())
    return size // 2 + 123 if nz is None else min(nz + 777, size - 1)


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("where", ["in-data", "last-byte"])
@pytest.mark.parametrize("image", SMALL, indirect=True)
def test_compare_with_flipped_byte(image, where, mode, scratch):
    """One byte of the raw conversion flipped: "Content mismatch at offset
    N!" (N as qemu-img computes it) and exit code 1."""
    flipped = scratch / "flipped.raw"
    flip_byte(image.ref_raw(), flipped, _flip_offset(image, where))
    rc = _compare(image, *mode, image.path, str(flipped))
    assert rc == 1


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_compare_with_itself_strict(image):
    assert _compare(image, "-s", image.path, image.path) == 0


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("image", ["compat-1.1", "extl2-64k", "chain3-mixed",
                                   "zstd-io", "prealloc-metadata",
                                   "snapshots", "odd-size"],
                         indirect=True)
def test_compare_with_qcow2_copy(image, mode, scratch):
    """Against qemu-img convert -O qcow2 of the image: same content,
    different allocation (which strict mode reports)."""
    copy = scratch / "copy.qcow2"
    run_checked([QEMU_IMG, "convert", "-O", "qcow2", image.path, copy],
                cwd=image.root)
    assert _compare(image, *mode, image.path, str(copy)) in (0, 1)


@pytest.mark.parametrize("image", ["compat-1.1", "chain3-mixed", "raw",
                                   "extl2-16k"], indirect=True)
def test_compare_explicit_formats(image, scratch):
    """-f and -F name the formats of the two images."""
    ref = str(image.ref_raw())
    assert _compare(image, "-f", image.fmt, "-F", "raw", image.path, ref) == 0
    flipped = scratch / "flipped.raw"
    flip_byte(ref, flipped, _flip_offset(image, "in-data"))
    assert _compare(image, "-f", image.fmt, "-F", "raw", image.path,
                    str(flipped)) == 1


@pytest.mark.parametrize("image", ["compat-1.1", "chain3-mixed"],
                         indirect=True)
def test_compare_progress(image, scratch):
    """-p: same exit code and the same final message after the progress
    updates."""
    ref = str(image.ref_raw())
    assert _compare(image, "-p", image.path, ref, progress=True) == 0
    flipped = scratch / "flipped.raw"
    flip_byte(ref, flipped, _flip_offset(image, "in-data"))
    assert _compare(image, "-p", image.path, str(flipped),
                    progress=True) == 1


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("image", BACKING, indirect=True)
def test_compare_with_backing_file(image, mode):
    """An overlay against its own backing file: different sizes ("Warning:
    Image size mismatch!", or in strict mode "Strict mode: Image size
    mismatch!") and different content."""
    info = json.loads(image.oracle("info", "--output=json",
                                   image.path).stdout)
    backing = info["full-backing-filename"]
    _compare(image, *mode, image.path, backing)
    _compare(image, *mode, backing, image.path)


@pytest.mark.parametrize("image", ["compat-1.1"], indirect=True)
def test_compare_missing_file(image, scratch):
    """An image that cannot be opened is an error: exit code 2."""
    assert _compare(image, image.path, str(scratch / "nonexistent")) == 2
    assert _compare(image, str(scratch / "nonexistent"), image.path) == 2
