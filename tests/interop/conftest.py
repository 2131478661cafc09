"""Fixtures for the interop tests: vimg against qemu-img 7.2 (the oracle).

Run with:   /usr/bin/python3 -m pytest tests/interop
vimg is $VIMG, or build/tools/vimg/vimg in the source tree.  A missing vimg,
qemu-img or qemu-io fails the run; nothing here skips.

The corpus (interop_corpus.py) is built once per session, lazily, image by
image, under a session temporary directory.  Every command runs with that
directory as its cwd and names images by relative paths, so "filename",
"backing-filename" and friends are the same for both tools and relative
backing / data-file names must be resolved against the image's directory.
qemu-img results are cached per image, since several tests need them.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interop_corpus  # noqa: E402
import interop_lib  # noqa: E402
from interop_lib import run, run_checked, QEMU_IMG  # noqa: E402


class Image:
    """One built corpus image."""

    def __init__(self, corpus, recipe):
        self.corpus = corpus
        self.recipe = recipe
        self.id = recipe.id
        self.root = corpus.root              # cwd for every command
        self.path = "%s/%s" % (recipe.id, recipe.image)   # relative to root
        self.fmt = recipe.fmt
        self._oracle = {}
        self._refs = {}

    def __repr__(self):
        return "<Image %s>" % self.path

    @property
    def abspath(self):
        return self.root / self.path

    def has(self, tag):
        return tag in self.recipe.tags

    def oracle(self, *args):
        """qemu-img ARGS (cwd: corpus root), cached; any exit status."""
        key = tuple(args)
        if key not in self._oracle:
            proc = run([QEMU_IMG, *args], cwd=self.root)
            if proc.returncode < 0:
                raise AssertionError("qemu-img crashed\n"
                                     + interop_lib.describe(proc))
            self._oracle[key] = proc
        return self._oracle[key]

    def vimg(self, *args, ok=(0,)):
        """vimg ARGS (cwd: corpus root)."""
        return interop_lib.vimg(*args, cwd=self.root, ok=ok)

    def ref_raw(self, sparse=None):
        """qemu-img convert -O raw [-S SPARSE] of this image (cached)."""
        if sparse not in self._refs:
            out = self.corpus.cache / ("%s.S%s.raw" % (self.id, sparse))
            args = ["convert", "-O", "raw"]
            if sparse is not None:
                args += ["-S", sparse]
            run_checked([QEMU_IMG, *args, self.path, out], cwd=self.root)
            self._refs[sparse] = out
        return self._refs[sparse]

    @property
    def virtual_size(self):
        return os.path.getsize(self.ref_raw())


class Corpus:
    def __init__(self, root):
        self.root = root / "images"
        self.cache = root / "oracle"
        self.shared = root / "shared"
        for d in (self.root, self.cache, self.shared):
            d.mkdir()
        (self.shared / "mix.bin").write_bytes(
            interop_corpus.mixed_data(interop_corpus.MIX_SIZE))
        self._images = {}
        self._failed = {}

    def get(self, id):
        if id in self._failed:
            raise AssertionError("building corpus image %r failed earlier:\n%s"
                                 % (id, self._failed[id]))
        if id not in self._images:
            recipe = interop_corpus.RECIPES[id]
            d = self.root / id
            d.mkdir()
            try:
                recipe.build(interop_corpus.Builder(d, self.shared))
            except AssertionError as e:
                self._failed[id] = str(e)
                raise AssertionError("building corpus image %r failed:\n%s"
                                     % (id, e)) from e
            _settle(d)
            self._images[id] = Image(self, recipe)
        return self._images[id]


def _settle(directory):
    """Read every file of a freshly built image once.  qemu's zero writes
    leave unwritten extents on ext4, and SEEK_HOLE calls them holes only
    while none of their pages is cached: whichever tool reads the file
    first (vimg reads a whole first cluster at open) would change what
    the next one's block status sees.  With the pages cached, qemu-img
    and vimg look at the same file."""
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The corpus, built lazily.  Removed at the end of the session (a few
    hundred MiB with the cached conversions) unless $VIMG_INTEROP_KEEP is
    set, to look at the images after a failure."""
    root = tmp_path_factory.mktemp("interop")
    yield Corpus(root)
    if not os.environ.get("VIMG_INTEROP_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, emptied after the test: the converted images are large."""
    yield tmp_path
    if not os.environ.get("VIMG_INTEROP_KEEP"):
        for p in tmp_path.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()


@pytest.fixture(scope="session")
def vimg_bin():
    """The vimg executable; fail (never skip) if it is missing."""
    path = interop_lib.vimg_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("vimg binary not found at %s (set $VIMG or build it: "
                    "meson setup build && meson compile -C build)" % path)
    return path


@pytest.fixture
def image(request, corpus, vimg_bin):
    """A corpus image; parametrize with indirect=True over corpus ids."""
    return corpus.get(request.param)


@pytest.fixture
def oracle_image(request, corpus):
    """Like image, for tests of the oracle side that do not run vimg."""
    return corpus.get(request.param)
