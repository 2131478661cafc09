"""vimg info prints what qemu-img info prints, in JSON and for humans."""

import pytest

import interop_corpus
from interop_lib import (QEMU_IMG, json_differences, json_missing,
                         parse_json, run_checked, text_diff, vimg)

ALL = interop_corpus.ids()
BACKING = interop_corpus.ids(with_tags={"backing"})

# Fields (dotted paths, "[*]" for any list index) in which vimg's JSON may
# differ from qemu-img's.  Deliberately empty: every field of qemu-img 7.2's
# info output for these images derives from the image files' bytes or from
# stat() of the same files ("actual-size" is st_blocks * 512 of the file
# both tools open; "filename" and "full-backing-filename" are built from the
# same relative path given on the same cwd; snapshot dates are stored in the
# image), so a difference is a bug, not noise.  Add an entry only with a
# comment explaining why the two tools cannot agree.
ALLOWED_DIFFERENCES = []


def _info(image, *opts):
    want = image.oracle("info", *opts, image.path)
    assert want.returncode == 0, want.stderr
    got = image.vimg("info", *opts, image.path)
    return want, got


def _check_json(want, got, what):
    diffs = json_differences(want, got, ALLOWED_DIFFERENCES)
    assert not diffs, "%s: fields differ from qemu-img:\n  %s" % (
        what, "\n  ".join(diffs))


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_info_json_shared_fields_equal(image):
    want, got = _info(image, "--output=json")
    _check_json(parse_json(want, "qemu-img"), parse_json(got, "vimg"),
                "vimg info --output=json " + image.path)


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_info_json_has_every_qemu_field(image):
    want, got = _info(image, "--output=json")
    missing = json_missing(parse_json(want, "qemu-img"),
                           parse_json(got, "vimg"), ALLOWED_DIFFERENCES)
    assert not missing, ("vimg info --output=json %s lacks fields that "
                         "qemu-img prints:\n  %s"
                         % (image.path, "\n  ".join(missing)))


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_info_json_backing_chain(image):
    """--backing-chain prints a list, one object per image of the chain
    (one element for an image without backing file)."""
    want, got = _info(image, "--output=json", "--backing-chain")
    want, got = parse_json(want, "qemu-img"), parse_json(got, "vimg")
    assert isinstance(got, list), "vimg printed %r, not a list" % (got,)
    assert len(got) == len(want), (
        "chain length: expected %d (%s), got %d (%s)"
        % (len(want), [w.get("filename") for w in want], len(got),
           [g.get("filename") if isinstance(g, dict) else g for g in got]))
    _check_json(want, got,
                "vimg info --output=json --backing-chain " + image.path)
    missing = json_missing(want, got, ALLOWED_DIFFERENCES)
    assert not missing, "missing fields:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_info_human(image):
    want, got = _info(image)
    assert got.stdout == want.stdout, (
        "vimg info %s differs from qemu-img:\n%s"
        % (image.path, text_diff(want.stdout, got.stdout)))


@pytest.mark.parametrize("image", BACKING, indirect=True)
def test_info_human_backing_chain(image):
    want, got = _info(image, "--backing-chain")
    assert got.stdout == want.stdout, (
        "vimg info --backing-chain %s differs from qemu-img:\n%s"
        % (image.path, text_diff(want.stdout, got.stdout)))


@pytest.mark.parametrize("image", ["compat-1.1", "raw", "chain3-mixed"],
                         indirect=True)
def test_info_json_explicit_format(image):
    want, got = _info(image, "-f", image.fmt, "--output=json")
    want, got = parse_json(want, "qemu-img"), parse_json(got, "vimg")
    _check_json(want, got, "vimg info -f %s --output=json %s"
                % (image.fmt, image.path))
    assert not json_missing(want, got, ALLOWED_DIFFERENCES)


@pytest.mark.parametrize("how", ["absolute-path", "image-dir"])
@pytest.mark.parametrize("image", ["chain3-mixed", "chain3-qcow2",
                                   "data-file"], indirect=True)
def test_info_json_backing_chain_other_cwd(image, how, scratch):
    """Relative backing names resolve against the image's directory, not
    the cwd: open the chain by absolute path from an unrelated directory,
    and by bare file name from the image's own directory."""
    if how == "absolute-path":
        cwd, path = scratch, str(image.abspath)
    else:
        cwd, path = image.abspath.parent, image.abspath.name
    args = ["info", "--output=json", "--backing-chain", path]
    want = parse_json(run_checked([QEMU_IMG, *args], cwd=cwd), "qemu-img")
    got = parse_json(vimg(*args, cwd=cwd), "vimg")
    assert isinstance(got, list) and len(got) == len(want), got
    _check_json(want, got, "(cwd %s) vimg %s" % (cwd, " ".join(args)))
    missing = json_missing(want, got, ALLOWED_DIFFERENCES)
    assert not missing, "missing fields:\n  " + "\n  ".join(missing)
