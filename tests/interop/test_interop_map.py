"""vimg map prints qemu-img map's block status, in JSON and for humans."""

import pytest

import interop_corpus
from interop_lib import MiB, map_differences, parse_json, text_diff

ALL = interop_corpus.ids()


def _map(image, *opts):
    """Run both tools; the exit codes must agree.  Returns both results."""
    want = image.oracle("map", *opts, image.path)
    got = image.vimg("map", *opts, image.path, ok=(0, 1, 2))
    assert got.returncode == want.returncode, (
        "vimg map %s %s: exit code %d, qemu-img's %d\n"
        "qemu-img stderr: %s\nvimg stderr: %s"
        % (" ".join(opts), image.path, got.returncode, want.returncode,
           want.stderr.strip(), got.stderr.strip()))
    return want, got


def _check_json(image, opts):
    want, got = _map(image, "--output=json", *opts)
    assert want.returncode == 0, want.stderr
    diffs = map_differences(parse_json(want, "qemu-img"),
                            parse_json(got, "vimg"))
    assert not diffs, "vimg map --output=json %s %s:\n%s" % (
        " ".join(opts), image.path, "\n".join(diffs))


def _check_human(image, opts):
    # qemu-img refuses human output for compressed (and encrypted) clusters
    # with exit code 1 after printing the lines before them; both the lines
    # and the exit code must match.
    want, got = _map(image, *opts)
    assert got.stdout == want.stdout, "vimg map %s %s:\n%s" % (
        " ".join(opts), image.path, text_diff(want.stdout, got.stdout))


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_map_json(image):
    _check_json(image, ())


@pytest.mark.parametrize("image", ALL, indirect=True)
def test_map_human(image):
    _check_human(image, ())


RANGES = [
    ("unaligned", ["--start-offset=100000", "--max-length=300000"]),
    ("one-byte", ["--start-offset=%d" % (3 * MiB), "--max-length=1"]),
    ("from-1M+1", ["--start-offset=%d" % (MiB + 1)]),
    ("length-0", ["--max-length=0"]),
    ("past-end", ["--start-offset=64M"]),
    ("suffixes", ["--start-offset=1k", "--max-length=2M"]),
]
RANGE_IMAGES = ["compat-1.1", "chain3-mixed", "extl2-64k", "odd-size",
                "prealloc-metadata", "zero-over-backing", "data-file"]


@pytest.mark.parametrize("range_", [r[1] for r in RANGES],
                         ids=[r[0] for r in RANGES])
@pytest.mark.parametrize("image", RANGE_IMAGES, indirect=True)
def test_map_range_json(image, range_):
    _check_json(image, range_)


@pytest.mark.parametrize("range_", [r[1] for r in RANGES],
                         ids=[r[0] for r in RANGES])
@pytest.mark.parametrize("image", RANGE_IMAGES, indirect=True)
def test_map_range_human(image, range_):
    _check_human(image, range_)


@pytest.mark.parametrize("image", ["compat-1.1", "chain3-mixed", "raw"],
                         indirect=True)
def test_map_explicit_format(image):
    _check_json(image, ("-f", image.fmt))
