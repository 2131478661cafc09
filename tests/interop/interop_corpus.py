"""The interop corpus: images made by qemu-img / qemu-io (the oracle).

Each recipe builds one image in its own directory under the session corpus
root.  Every command (ours and qemu-img's) later runs with the corpus root as
its current directory and names the image by a path relative to it, e.g.
"chain3-mixed/sub/top.qcow2".  Backing files are created with names
relative to the image's own directory, so an implementation that resolves
them against the cwd fails.  (qemu-img 7.2 resolves a relative external
data file name against the cwd instead; see "data-file-relative".)

Recipes are plain functions registered with @recipe; the corpus ids are the
pytest ids.  Keep images a few MiB so the whole suite stays fast.
"""

import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, FrozenSet

from interop_lib import KiB, MiB, run_checked, QEMU_IMG, QEMU_IO

SIZE = 4 * MiB          # default virtual size
MIX_SIZE = 4 * MiB      # size of the mixed-content source file


@dataclass(frozen=True)
class Recipe:
    id: str
    build: Callable[["Builder"], None]
    image: str                      # path relative to the recipe directory
    fmt: str = "qcow2"
    tags: FrozenSet[str] = frozenset()
    doc: str = ""


RECIPES: Dict[str, Recipe] = {}


def recipe(id, image="img.qcow2", fmt="qcow2", tags=()):
    def deco(fn):
        assert id not in RECIPES, id
        RECIPES[id] = Recipe(id, fn, image, fmt, frozenset(tags),
                             (fn.__doc__ or "").strip())
        return fn
    return deco


def ids(*, with_tags=(), without_tags=()):
    """Corpus ids having all of WITH_TAGS and none of WITHOUT_TAGS."""
    return [r.id for r in RECIPES.values()
            if set(with_tags) <= r.tags and not (set(without_tags) & r.tags)]


# ---------------------------------------------------------------------------
# Deterministic, non-trivial data


def mixed_data(size, seed=1):
    """Data that exercises compression: per 64 KiB chunk, every fourth chunk
    is random (incompressible, so qemu stores that cluster uncompressed);
    the others mix 4 KiB blocks of random bytes, text, zeros and ramps."""
    rng = random.Random(seed)
    out = bytearray()
    chunk = 64 * KiB
    for c in range(size // chunk):
        if c % 4 == 3:
            out += rng.randbytes(chunk)
            continue
        for b in range(chunk // (4 * KiB)):
            kind = (c * 7 + b) % 5
            if kind == 0:
                out += rng.randbytes(4 * KiB)
            elif kind == 1:
                line = b"vimg interop chunk %d block %d\n" % (c, b)
                out += (line * (4 * KiB // len(line) + 1))[:4 * KiB]
            elif kind == 2:
                out += bytes(4 * KiB)
            elif kind == 3:
                out += bytes((i + c + b) & 0xFF for i in range(4 * KiB))
            else:
                out += rng.randbytes(2 * KiB) + bytes(2 * KiB)
    out += rng.randbytes(size - len(out))
    return bytes(out)


# ---------------------------------------------------------------------------
# Builder: runs the oracle tools inside a recipe directory


class Builder:
    def __init__(self, dir: Path, shared: Path):
        self.dir = dir
        self.shared = shared       # holds mix.bin, shared by all recipes

    @property
    def mix(self):
        """Absolute path of the mixed-content file (for qemu-io write -s)."""
        return str(self.shared / "mix.bin")

    def path(self, name):
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def qemu_img(self, *args, cwd="."):
        run_checked([QEMU_IMG, *map(str, args)], cwd=self.dir / cwd)

    def create(self, name, size, fmt="qcow2", opts=None, backing=None,
               backing_fmt=None):
        """qemu-img create, run in NAME's directory so that a relative
        BACKING name is stored verbatim."""
        p = self.path(name)
        args = ["create", "-q", "-f", fmt]
        if opts:
            args += ["-o", opts]
        if backing:
            args += ["-b", backing, "-F", backing_fmt]
        args += [p.name, str(size)]
        run_checked([QEMU_IMG, *args], cwd=p.parent)

    def io(self, name, *cmds, fmt="qcow2", killed=False):
        """Run qemu-io commands on NAME.  With KILLED the last command is
        expected to kill qemu-io (sigraise 9), leaving the image as a crash
        would."""
        p = self.dir / name
        argv = [QEMU_IO, "-f", fmt]
        for c in cmds:
            argv += ["-c", c.format(mix=self.mix)]
        argv.append(p.name)
        run_checked(argv, cwd=p.parent, ok=(-9,) if killed else (0,))

    def write_bytes(self, name, data):
        self.path(name).write_bytes(data)


def std_writes(size=SIZE, cluster=64 * KiB, compressed=True, zero=True):
    """Patterned writes at several offsets: whole clusters, partial
    clusters, an unaligned range, mixed content, zero writes (plain and
    unmapping) inside and over data, a discard, the image tail, and
    compressed clusters."""
    cmds = []
    if compressed:
        # first: compressed writes need clusters that are not allocated
        base = 2 * MiB
        cmds += [
            "write -c -P 0x31 %d %d" % (base, cluster),
            "write -c -s {mix} %d %d" % (base + 2 * cluster, cluster),
        ]
    cmds += [
        "write -P 0x11 0 64k",
        "write -P 0x22 100k 3k",
        "write -P 0x23 300001 777",
        "write -s {mix} 512k 192k",
        "write -P 0x24 1M 256k",
        "discard 1152k 64k",
        "write -P 0x25 %d 1k" % (size - KiB),
    ]
    if zero:
        cmds += [
            "write -z 200k 8k",
            "write -z 1088k 64k",
            "write -z -u 1216k 32k",
            "write -z 520k 1k",
        ]
    return cmds


# ---------------------------------------------------------------------------
# Recipes


@recipe("empty")
def _empty(b):
    """A fresh image with no data."""
    b.create("img.qcow2", SIZE)


@recipe("raw", image="img.raw", fmt="raw")
def _raw(b):
    """A sparse raw image (the base format of chains)."""
    b.create("img.raw", SIZE, fmt="raw")
    b.io("img.raw", *std_writes(compressed=False), fmt="raw")


@recipe("compat-0.10", tags={"compressed", "v2"})
def _compat010(b):
    """Version 2 header: zero writes fall back to explicit zeros."""
    b.create("img.qcow2", SIZE, opts="compat=0.10")
    b.io("img.qcow2", *std_writes())


@recipe("compat-1.1", tags={"compressed"})
def _compat11(b):
    """Version 3 header, 64 KiB clusters (qemu-img's defaults)."""
    b.create("img.qcow2", SIZE, opts="compat=1.1")
    b.io("img.qcow2", *std_writes())


def _cluster_recipe(cs, size):
    @recipe("cluster-%s" % cs, tags={"compressed"})
    def _build(b):
        b.create("img.qcow2", size, opts="cluster_size=%s" % cs)
        b.io("img.qcow2", *std_writes(size, _parse_size(cs)))
    _build.__doc__ = "cluster_size=%s" % cs


def _parse_size(s):
    units = {"k": KiB, "M": MiB}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


for _cs, _size in [("512", SIZE), ("4k", SIZE), ("2M", 10 * MiB)]:
    _cluster_recipe(_cs, _size)


def _refcount_recipe(bits):
    @recipe("refcount-%d" % bits, tags={"compressed"})
    def _build(b):
        b.create("img.qcow2", SIZE,
                 opts="refcount_bits=%d,cluster_size=4k" % bits)
        b.io("img.qcow2", *std_writes(cluster=4 * KiB))
    _build.__doc__ = "refcount_bits=%d, 4 KiB clusters" % bits


for _bits in (1, 2, 4, 8, 16, 32, 64):
    _refcount_recipe(_bits)


@recipe("lazy-refcounts", tags={"compressed"})
def _lazy(b):
    """lazy_refcounts=on, closed cleanly."""
    b.create("img.qcow2", SIZE, opts="lazy_refcounts=on")
    b.io("img.qcow2", *std_writes())


@recipe("lazy-refcounts-dirty", tags={"compressed"})
def _lazy_dirty(b):
    """lazy_refcounts=on, qemu-io killed after writing: dirty bit set."""
    b.create("img.qcow2", SIZE, opts="lazy_refcounts=on,cluster_size=4k")
    b.io("img.qcow2", *std_writes(cluster=4 * KiB), "flush", "sigraise 9",
         killed=True)


def _extl2_writes(cluster, sub, base=0):
    """Writes smaller than a subcluster and zero writes of exactly one
    subcluster, in allocated and unallocated clusters, from offset BASE."""
    c = cluster
    cmds = [
        (0x41, 0, max(sub // 4, 1)),                   # < one subcluster
        (0x42, sub + 100, max(sub // 8, 1)),           # inside subcluster 1
        (0x43, c, c),                                  # a full cluster
        ("z", c + sub, sub),                           # one zero subcluster
        ("zu", c + 3 * sub, sub),                      # unmap one subcluster
        ("z", 3 * c + 5 * sub, sub),                   # zero, unallocated
        (0x44, 4 * c + 7 * sub + 1, 3),                # 3 bytes
        ("c", 6 * c, c),                               # compressed cluster
        ("d", c + 8 * sub, 8 * sub),                   # discard
    ]
    out = []
    for kind, off, length in cmds:
        off += base
        if kind == "z":
            out.append("write -z %d %d" % (off, length))
        elif kind == "zu":
            out.append("write -z -u %d %d" % (off, length))
        elif kind == "c":
            out.append("write -c -P 0x45 %d %d" % (off, length))
        elif kind == "d":
            out.append("discard %d %d" % (off, length))
        else:
            out.append("write -P 0x%x %d %d" % (kind, off, length))
    return out


def _extl2_recipe(cs, size):
    cluster = _parse_size(cs)

    @recipe("extl2-%s" % cs, tags={"compressed"})
    def _build(b):
        b.create("img.qcow2", size, opts="extended_l2=on,cluster_size=%s" % cs)
        b.io("img.qcow2", *_extl2_writes(cluster, cluster // 32, 2 * MiB),
             *std_writes(size, cluster, compressed=False))
    _build.__doc__ = "extended_l2=on, cluster_size=%s" % cs


for _cs, _size in [("16k", SIZE), ("64k", SIZE), ("2M", 18 * MiB)]:
    _extl2_recipe(_cs, _size)


@recipe("extl2-backing", image="top.qcow2", tags={"backing"})
def _extl2_backing(b):
    """extended_l2 overlay over a fully written qcow2: unallocated
    subclusters read from the backing file, zero subclusters hide it."""
    b.create("base.qcow2", SIZE)
    b.io("base.qcow2", "write -P 0x0b 0 4M", "write -s {mix} 1M 1M")
    b.create("top.qcow2", SIZE, opts="extended_l2=on",
             backing="base.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", *_extl2_writes(64 * KiB, 2 * KiB))


def _compress_io_recipe(ctype):
    @recipe("%s-io" % ctype, tags={"compressed"})
    def _build(b):
        b.create("img.qcow2", SIZE, opts="compression_type=%s" % ctype)
        cmds = ["write -c -s {mix} %d 64k" % (i * 64 * KiB)
                for i in range(0, 48, 3)]
        cmds += ["write -c -P 0x61 3M 128k", "write -P 0x62 3200k 7k"]
        b.io("img.qcow2", *cmds, *std_writes(compressed=False))
    _build.__doc__ = "write -c with compression_type=%s" % ctype


for _ct in ("zlib", "zstd"):
    _compress_io_recipe(_ct)


def _compress_convert_recipe(name, opts, size):
    @recipe(name, tags={"compressed"})
    def _build(b):
        b.write_bytes("src.raw", mixed_data(size, seed=len(name)))
        b.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts,
                   "src.raw", "img.qcow2")
    _build.__doc__ = "qemu-img convert -c -o %s" % opts


for _name, _opts, _size in [
        ("zlib-convert", "compression_type=zlib", SIZE),
        ("zstd-convert", "compression_type=zstd", SIZE),
        ("zlib-convert-512", "compression_type=zlib,cluster_size=512", SIZE),
        ("zstd-convert-2M", "compression_type=zstd,cluster_size=2M", 8 * MiB),
        ("zlib-convert-v2", "compat=0.10", SIZE)]:
    _compress_convert_recipe(_name, _opts, _size)


@recipe("data-file", tags={"data-file"})
def _data_file(b):
    """External data file (absolute name), 4 KiB clusters."""
    b.create("img.qcow2", SIZE,
             opts="data_file=%s,cluster_size=4k" % (b.dir / "img.data"))
    b.io("img.qcow2", *std_writes(compressed=False))


@recipe("data-file-raw", tags={"data-file"})
def _data_file_raw(b):
    """External data file (absolute name) with data_file_raw=on."""
    b.create("img.qcow2", SIZE,
             opts="data_file=%s,data_file_raw=on" % (b.dir / "img.data"))
    b.io("img.qcow2", *std_writes(compressed=False))


@recipe("data-file-relative", tags={"data-file"})
def _data_file_relative(b):
    """External data file with a relative name.  qemu-img 7.2 opens the
    data file by that name as given, relative to the *current directory*
    (unlike backing files, which are relative to the image), so the image
    is created from the corpus root, where all commands run."""
    root = b.dir.parent
    name = "%s/img.data" % b.dir.name
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
                 "data_file=%s,cluster_size=4k" % name,
                 "%s/img.qcow2" % b.dir.name, str(SIZE)], cwd=root)
    argv = [QEMU_IO, "-f", "qcow2"]
    for c in std_writes(compressed=False):
        argv += ["-c", c.format(mix=b.mix)]
    run_checked(argv + ["%s/img.qcow2" % b.dir.name], cwd=root)


def _prealloc_recipe(mode):
    @recipe("prealloc-%s" % mode)
    def _build(b):
        b.create("img.qcow2", SIZE, opts="preallocation=%s" % mode)
        b.io("img.qcow2", *std_writes(compressed=False))
    _build.__doc__ = "preallocation=%s" % mode


for _mode in ("metadata", "falloc", "full"):
    _prealloc_recipe(_mode)


def _zero_over_backing(b, compat):
    b.create("base.qcow2", SIZE, opts="cluster_size=4k")
    b.io("base.qcow2", "write -P 0x0b 0 4M", "write -s {mix} 2M 1M")
    b.create("top.qcow2", SIZE, opts="compat=%s" % compat,
             backing="base.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2",
         "write -z 64k 128k",            # whole clusters: zero clusters
         "write -z 300100 1000",         # partial cluster over backing
         "write -z -u 1M 64k",
         "write -P 0x66 1088k 4k",
         "write -z 1088k 64k",           # zero over own data
         "discard 2M 64k",
         "write -z 3M 1M")               # up to the end


@recipe("zero-over-backing", image="top.qcow2", tags={"backing"})
def _zob3(b):
    """v3 overlay with zero writes over backing data."""
    _zero_over_backing(b, "1.1")


@recipe("zero-over-backing-v2", image="top.qcow2", tags={"backing", "v2"})
def _zob2(b):
    """compat=0.10 overlay: zero writes over backing data become data."""
    _zero_over_backing(b, "0.10")


@recipe("chain3-mixed", image="sub/top.qcow2", tags={"backing", "chain"})
def _chain3_mixed(b):
    """qcow2 (sub/top, 6M, backing ../mid.qcow2) over qcow2 (mid, 4k
    clusters, backing base.raw) over raw."""
    b.create("base.raw", SIZE, fmt="raw")
    b.io("base.raw", "write -P 0xa1 0 1M", "write -s {mix} 2M 512k",
         "write -P 0xa2 3M 5k", fmt="raw")
    b.create("mid.qcow2", SIZE, opts="cluster_size=4k",
             backing="base.raw", backing_fmt="raw")
    b.io("mid.qcow2", "write -P 0xb1 512k 1M", "write -z 2M 64k",
         "write -P 0xb2 3000001 10000")
    b.create("sub/top.qcow2", 6 * MiB, backing="../mid.qcow2",
             backing_fmt="qcow2")
    b.io("sub/top.qcow2", "write -P 0xc1 1M 4k", "write -z 2100k 20k",
         "write -P 0xc2 5M 4k", "write -P 0xc3 4190000 10000")


@recipe("chain3-qcow2", image="top.qcow2",
        tags={"backing", "chain", "compressed"})
def _chain3_qcow2(b):
    """qcow2 (4k clusters, 4M) over extended_l2 qcow2 (3M+512) over a
    compat=0.10 qcow2 with compressed clusters (4M)."""
    b.create("base.qcow2", SIZE, opts="compat=0.10")
    b.io("base.qcow2", "write -c -s {mix} 1M 1M", "write -c -P 0xa3 3M 64k",
         "write -P 0xa1 0 1M", "write -P 0xa1 2M 1M")
    b.create("mid.qcow2", 3 * MiB + 512, opts="extended_l2=on",
             backing="base.qcow2", backing_fmt="qcow2")
    b.io("mid.qcow2", *_extl2_writes(64 * KiB, 2 * KiB),
         "write -P 0xb3 %d 512" % (3 * MiB))
    b.create("top.qcow2", SIZE, opts="cluster_size=4k",
             backing="mid.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0xc1 8k 4k", "write -z 1M 8k",
         "write -P 0xc2 %d 8k" % (3 * MiB - 2 * KiB), "discard 16k 4k")


@recipe("overlay-larger", image="top.qcow2", tags={"backing"})
def _overlay_larger(b):
    """4M overlay over a 2M+512 backing file: the tail reads as zeros,
    also in a cluster that straddles the backing file's end."""
    b.create("base.qcow2", 2 * MiB + 512)
    b.io("base.qcow2", "write -P 0x71 0 %d" % (2 * MiB + 512))
    b.create("top.qcow2", SIZE, backing="base.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0x72 %d 4k" % (2 * MiB - KiB),
         "write -P 0x73 3M 4k")


@recipe("overlay-smaller", image="top.qcow2", tags={"backing"})
def _overlay_smaller(b):
    """1M+512 overlay over a 4M backing file."""
    b.create("base.qcow2", SIZE)
    b.io("base.qcow2", "write -P 0x74 0 4M")
    b.create("top.qcow2", MiB + 512, backing="base.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0x75 64k 1k", "write -z 512k 64k")


def _snapshots(b, opts):
    b.create("img.qcow2", SIZE, opts=opts)
    b.io("img.qcow2", "write -P 0x11 0 1M", "write -c -P 0x12 2M 64k")
    b.qemu_img("snapshot", "-c", "snap1", "img.qcow2")
    b.io("img.qcow2", "write -P 0x22 512k 1M", "write -P 0x23 2M 4k")
    b.qemu_img("snapshot", "-c", "second snapshot", "img.qcow2")
    b.io("img.qcow2", "write -z 0 64k", "write -P 0x33 3M 64k",
         "discard 1M 64k")


@recipe("snapshots", tags={"compressed", "snapshots"})
def _snaps3(b):
    """Two internal snapshots, data written between and after them."""
    _snapshots(b, "compat=1.1")


@recipe("snapshots-v2", tags={"compressed", "snapshots", "v2"})
def _snaps2(b):
    """Internal snapshots in a compat=0.10 image (no extra data)."""
    _snapshots(b, "compat=0.10")


@recipe("bitmaps")
def _bitmaps(b):
    """Persistent bitmaps: an enabled one and a disabled one."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", "write -P 0x11 0 1M")
    b.qemu_img("bitmap", "--add", "img.qcow2", "b0")
    b.qemu_img("bitmap", "--add", "-g", "128k", "img.qcow2", "b1")
    b.qemu_img("bitmap", "--disable", "img.qcow2", "b1")
    b.io("img.qcow2", "write -P 0x22 3M 64k", "write -z 0 64k")


@recipe("bitmaps-in-use")
def _bitmaps_in_use(b):
    """A bitmap left "in-use" by a qemu-io that was killed."""
    b.create("img.qcow2", SIZE)
    b.qemu_img("bitmap", "--add", "img.qcow2", "b0")
    b.io("img.qcow2", "write -P 0x22 3M 64k", "flush", "sigraise 9",
         killed=True)


@recipe("odd-size", tags={"compressed"})
def _odd_size(b):
    """Virtual size 1 MiB + 512; data and a compressed partial cluster at
    the tail."""
    b.create("img.qcow2", MiB + 512)
    b.io("img.qcow2", "write -P 0x51 0 4k", "write -P 0x52 5000 3000",
         "write -c -P 0x53 960k 64k", "write -c -P 0x54 1M 512")


@recipe("raw-odd-size", image="img.raw", fmt="raw")
def _raw_odd_size(b):
    """A raw file of 1000001 bytes (not a multiple of 512), with a hole."""
    data = mixed_data(MiB, seed=7)
    with open(b.path("img.raw"), "wb") as f:
        f.write(data[:300 * KiB])
        f.seek(1000001 - 1000)
        f.write(data[-1000:])


@recipe("backing-raw-odd-size", image="top.qcow2", tags={"backing"})
def _backing_raw_odd(b):
    """qcow2 over a raw file of 1000001 bytes: the overlay is rounded up to
    512 bytes, the backing file's last partial sector reads as zeros."""
    _raw_odd_size(b)
    b.create("top.qcow2", 1000448, opts="cluster_size=4k",
             backing="img.raw", backing_fmt="raw")
    b.io("top.qcow2", "write -P 0x81 8k 4k", "write -P 0x82 %d 512"
         % (1000448 - 512), "write -z 200k 4k")


@recipe("backing-absolute", image="top/top.qcow2", tags={"backing"})
def _backing_absolute(b):
    """The backing file named by an absolute path, in another directory."""
    b.create("base/base.qcow2", SIZE)
    b.io("base/base.qcow2", "write -P 0x91 0 2M", "write -s {mix} 1M 512k")
    b.create("top/top.qcow2", SIZE, backing=str(b.dir / "base/base.qcow2"),
             backing_fmt="qcow2")
    b.io("top/top.qcow2", "write -P 0x92 64k 64k", "write -z 1M 64k")


@recipe("backing-odd-name", image="dir with space/top.qcow2",
        tags={"backing"})
def _backing_odd_name(b):
    """Backing and overlay names with spaces, UTF-8 and '#'."""
    b.create("dir with space/base image \u00fc #1.qcow2", SIZE)
    b.io("dir with space/base image \u00fc #1.qcow2", "write -P 0x93 0 1M")
    b.create("dir with space/top.qcow2", SIZE,
             backing="base image \u00fc #1.qcow2", backing_fmt="qcow2")
    b.io("dir with space/top.qcow2", "write -P 0x94 512k 4k")


@recipe("resize-grow-c512")
def _resize_grow(b):
    """Grown with qemu-img resize: 512-byte clusters make the L1 table
    outgrow its cluster and move."""
    b.create("img.qcow2", 2 * MiB, opts="cluster_size=512")
    b.io("img.qcow2", "write -P 0xa1 0 2M", "write -z 64k 4k")
    b.qemu_img("resize", "img.qcow2", "+4M")
    b.io("img.qcow2", "write -P 0xa2 5M 64k", "write -P 0xa3 %d 512"
         % (6 * MiB - 512))


@recipe("resize-shrink", tags={"compressed"})
def _resize_shrink(b):
    """Shrunk with qemu-img resize --shrink to 2M+512."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", "write -c -P 0xa4 2M 64k", "write -P 0xa5 0 4M")
    b.qemu_img("resize", "--shrink", "img.qcow2", str(2 * MiB + 512))


@recipe("amend-compat-0.10", tags={"v2"})
def _amend_compat(b):
    """v3 image with zero clusters, amended to compat=0.10."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", *std_writes(compressed=False))
    b.qemu_img("amend", "-o", "compat=0.10", "img.qcow2")


@recipe("amend-refcount-bits", tags={"compressed"})
def _amend_refbits(b):
    """refcount_bits changed from 16 to 64 and then 2 by qemu-img amend
    (new refcount structures, old ones freed)."""
    b.create("img.qcow2", SIZE, opts="cluster_size=4k")
    b.io("img.qcow2", *std_writes(cluster=4 * KiB))
    b.qemu_img("amend", "-o", "refcount_bits=64", "img.qcow2")
    b.qemu_img("amend", "-o", "refcount_bits=2", "img.qcow2")


@recipe("snapshot-applied", tags={"snapshots"})
def _snapshot_applied(b):
    """Snapshot reverted to (snapshot -a) and another deleted (-d): the
    active L1/L2 entries lose their COPIED flags."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", "write -P 0x11 0 2M")
    b.qemu_img("snapshot", "-c", "s1", "img.qcow2")
    b.io("img.qcow2", "write -P 0x22 1M 2M")
    b.qemu_img("snapshot", "-c", "s2", "img.qcow2")
    b.io("img.qcow2", "write -P 0x33 0 64k")
    b.qemu_img("snapshot", "-c", "s3", "img.qcow2")
    b.qemu_img("snapshot", "-a", "s1", "img.qcow2")
    b.qemu_img("snapshot", "-d", "s2", "img.qcow2")
    b.io("img.qcow2", "write -P 0x44 3M 4k")


@recipe("committed-chain", image="top.qcow2", tags={"backing", "chain"})
def _committed(b):
    """A three-image chain after qemu-img commit of the top into the middle
    (the top is emptied)."""
    b.create("base.qcow2", SIZE)
    b.io("base.qcow2", "write -P 0xd1 0 4M")
    b.create("mid.qcow2", SIZE, backing="base.qcow2", backing_fmt="qcow2")
    b.io("mid.qcow2", "write -P 0xd2 1M 1M")
    b.create("top.qcow2", SIZE, backing="mid.qcow2", backing_fmt="qcow2")
    b.io("top.qcow2", "write -P 0xd3 1536k 1M", "write -z 0 64k")
    b.qemu_img("commit", "-q", "top.qcow2")
    b.io("top.qcow2", "write -P 0xd4 3M 4k")


@recipe("convert-plain")
def _convert_plain(b):
    """qemu-img convert -O qcow2 (no compression) of mixed data."""
    b.write_bytes("src.raw", mixed_data(SIZE, seed=3))
    b.qemu_img("convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k",
               "src.raw", "img.qcow2")


@recipe("data-file-extl2", tags={"data-file"})
def _data_file_extl2(b):
    """External data file and extended L2 entries together."""
    b.create("img.qcow2", SIZE, opts="data_file=%s,extended_l2=on"
             % (b.dir / "img.data"))
    b.io("img.qcow2", *[c for c in _extl2_writes(64 * KiB, 2 * KiB)
                        if "-c" not in c.split()],
         *std_writes(compressed=False))


@recipe("extl2-prealloc-metadata")
def _extl2_prealloc(b):
    """extended_l2=on with preallocation=metadata."""
    b.create("img.qcow2", SIZE, opts="extended_l2=on,preallocation=metadata")
    b.io("img.qcow2", *std_writes(compressed=False))


# ---------------------------------------------------------------------------
# Header pokes: states qemu produces itself (corrupt and dirty bits) or must
# tolerate (unknown compatible/autoclear bits and header extensions).

def poke_header(path, **fields):
    """Set v3 header fields: incompatible, compatible, autoclear (OR-ed
    in), version (replaced)."""
    offsets = {"version": (4, ">I"), "incompatible": (72, ">Q"),
               "compatible": (80, ">Q"), "autoclear": (88, ">Q")}
    with open(path, "r+b") as f:
        for name, value in fields.items():
            off, fmt = offsets[name]
            f.seek(off)
            old = struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            f.seek(off)
            f.write(struct.pack(fmt, value if name == "version"
                                else old | value))


def add_header_extension(path, ext_type, data):
    """Insert a header extension before the end-of-extensions marker of a
    qcow2 v3 image without a backing file (whose name would follow the
    extensions)."""
    with open(path, "r+b") as f:
        hdr = f.read(4096)
        assert struct.unpack(">Q", hdr[8:16])[0] == 0, "has a backing file"
        off = struct.unpack(">I", hdr[100:104])[0]
        while True:
            t, n = struct.unpack(">II", hdr[off:off + 8])
            if t == 0:
                break
            off += 8 + (n + 7) // 8 * 8
        ext = struct.pack(">II", ext_type, len(data)) + data
        ext += bytes(-len(ext) % 8) + bytes(8)      # padding, end marker
        assert off + len(ext) <= 4096
        f.seek(off)
        f.write(ext)


@recipe("poked-dirty-corrupt", tags={"compressed"})
def _poked_dirty_corrupt(b):
    """Dirty and corrupt bits set (as qemu sets them on a crash with lazy
    refcounts and on detecting corruption): read-only opens still work."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", *std_writes())
    poke_header(b.dir / "img.qcow2", incompatible=0x3)


@recipe("poked-unknown-ext", tags={"compressed"})
def _poked_unknown(b):
    """Unknown compatible and autoclear feature bits and an unknown header
    extension: all must be ignored by a reader."""
    b.create("img.qcow2", SIZE)
    b.io("img.qcow2", *std_writes())
    poke_header(b.dir / "img.qcow2", compatible=1 << 63, autoclear=1 << 62)
    add_header_extension(b.dir / "img.qcow2", 0x76696D67, b"vimg interop")


@recipe("big-sparse", tags={"big"})
def _big_sparse(b):
    """Virtual size 1 TiB + 196608 + 512 with data at 0, 600 GiB and past
    1 TiB (info, map and strict self-compare only)."""
    b.create("img.qcow2", (1 << 40) + 3 * 65536 + 512)
    b.io("img.qcow2", "write -P 0xe1 0 64k", "write -P 0xe2 %d 4k" % (600 << 30),
         "write -c -P 0xe3 %d 64k" % (1 << 40), "write -z %d 64k" % (2 << 30))


@recipe("huge-2M-cluster", tags={"big"})
def _huge(b):
    """Virtual size 1 PiB with 2 MiB clusters: a 4 MiB L1 table.  (At
    1 EiB qemu-img's own map takes minutes.)"""
    b.create("img.qcow2", 1 << 50, opts="cluster_size=2M")
    b.io("img.qcow2", "write -P 0xe4 0 64k",
         "write -P 0xe5 %d 4k" % ((1 << 50) - 4096))


@recipe("size-1000k")
def _size_1000k(b):
    """Virtual size 1000 KiB ("0.977 MiB" in human output)."""
    b.create("img.qcow2", 1000 * KiB, opts="cluster_size=4k")
    b.io("img.qcow2", "write -s {mix} 0 1000k", "write -z 500k 12k")
