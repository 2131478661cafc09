"""vimg convert -O raw reads every corpus image exactly as qemu-img does."""

import pytest

import interop_corpus
from interop_lib import QEMU_IMG, extents, first_difference, run_checked, vimg

# "big" images have virtual sizes of TiBs: info, map and compare only
ALL = interop_corpus.ids(without_tags={"big"})
SPARSE = [None, "0", "3k", "64k"]


def _sparse_id(s):
    return "S-default" if s is None else "S-" + s


def _convert(image, scratch, sparse=None, extra=()):
    out = scratch / "out.raw"
    args = ["convert", *extra, "-O", "raw"]
    if sparse is not None:
        args += ["-S", sparse]
    image.vimg(*args, image.path, str(out))
    return out


@pytest.mark.parametrize("sparse", SPARSE, ids=_sparse_id)
@pytest.mark.parametrize("image", ALL, indirect=True)
def test_convert_raw_bytes(image, sparse, scratch):
    """Output is byte-identical to qemu-img convert -O raw [-S ...]."""
    out = _convert(image, scratch, sparse)
    diff = first_difference(image.ref_raw(sparse), out)
    assert diff is None, "vimg convert -O raw%s %s: %s" % (
        "" if sparse is None else " -S " + sparse, image.path, diff)


@pytest.mark.parametrize("sparse", SPARSE, ids=_sparse_id)
@pytest.mark.parametrize("image", ALL, indirect=True)
def test_convert_raw_sparseness(image, sparse, scratch):
    """-S means what it means for qemu-img: with -S 0 the output is fully
    allocated; otherwise the same ranges are left as holes (compared as
    SEEK_DATA/SEEK_HOLE extents of the two output files)."""
    out = _convert(image, scratch, sparse)
    want, got = extents(image.ref_raw(sparse)), extents(out)
    assert got == want, (
        "vimg convert -O raw%s %s: data extents (offset, length) differ\n"
        "qemu-img: %s\nvimg:     %s" % (
            "" if sparse is None else " -S " + sparse, image.path,
            want[:20], got[:20]))


@pytest.mark.parametrize("image", ["compat-1.1", "chain3-mixed", "raw",
                                   "zstd-convert", "odd-size"],
                         indirect=True)
def test_convert_explicit_format_and_progress(image, scratch):
    """-f FMT and -p do not change the output."""
    out = _convert(image, scratch, extra=("-p", "-f", image.fmt))
    diff = first_difference(image.ref_raw(), out)
    assert diff is None, "vimg convert -p -f %s -O raw %s: %s" % (
        image.fmt, image.path, diff)


@pytest.mark.parametrize("image", ["compat-1.1", "raw-odd-size"],
                         indirect=True)
def test_convert_overwrites_existing_output(image, scratch):
    """An existing, larger output file is replaced, as qemu-img does."""
    out = scratch / "out.raw"
    out.write_bytes(b"\xa5" * (9 * 1024 * 1024 + 17))
    image.vimg("convert", "-O", "raw", image.path, str(out))
    diff = first_difference(image.ref_raw(), out)
    assert diff is None, "vimg convert -O raw %s onto an existing file: %s" % (
        image.path, diff)


@pytest.mark.parametrize("ids", [("compat-1.1", "odd-size"),
                                 ("raw-odd-size", "chain3-mixed", "zstd-io")],
                         ids=lambda t: "+".join(t))
def test_convert_several_inputs(corpus, vimg_bin, ids, scratch):
    """Several inputs are concatenated, as by qemu-img convert."""
    images = [corpus.get(i) for i in ids]
    root = images[0].root
    paths = [i.path for i in images]
    want, got = scratch / "want.raw", scratch / "got.raw"
    run_checked([QEMU_IMG, "convert", "-O", "raw", *paths, want], cwd=root)
    vimg("convert", "-O", "raw", *paths, str(got), cwd=root)
    diff = first_difference(want, got)
    assert diff is None, "vimg convert -O raw %s: %s" % (" ".join(paths), diff)
