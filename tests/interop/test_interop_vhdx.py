"""VHDX read against qemu-img 7.2 and libvhdi's vhdiinfo.

Every VHDX variant qemu-img can create (subformat fixed/dynamic, block
sizes 1, 4, 32 and 256 MiB, log sizes, block_state_zero on/off, an odd
virtual size) and the Hyper-V sample images of QEMU's iotests
(tests/data/vhdx/fetch-samples.sh, run by `make check`'s deps step and
here when they are missing) must read back byte-identical to qemu-img's
`convert -O raw`, show qemu-img's info JSON fields, map data to true host
offsets, and agree with vhdiinfo.  The dirty-log sample reads, read-only,
as qemu-img reads it after `qemu-img check -r all` on a copy, without a
byte of the file changing; a read-write open replays the log durably.
"""

import bz2
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from interop_lib import (QEMU_IMG, json_differences, json_missing,
                         parse_json, run_checked, vimg)

HERE = Path(__file__).resolve().parent
SAMPLES_DIR = HERE.parent / "data" / "vhdx" / "samples"
FETCH = HERE.parent / "data" / "vhdx" / "fetch-samples.sh"
SAMPLES = ["iotest-dynamic-1G.vhdx", "test-disk2vhd.vhdx",
           "iotest-dirtylog-10G-4M.vhdx"]
DIRTY = "iotest-dirtylog-10G-4M.vhdx"
MiB = 1 << 20

# (id, virtual size, qemu-img -o options)
VARIANTS = [
    ("dyn-1m", 9 * MiB, "subformat=dynamic,block_size=1M"),
    ("dyn-4m-log2m", 13 * MiB, "block_size=4M,log_size=2M"),
    ("dyn-32m-nozero", 40 * MiB, "block_size=32M,block_state_zero=off"),
    ("dyn-256m", 20 * MiB, "block_size=256M"),
    ("dyn-odd", 5000192, ""),
    ("fixed-1m", 6 * MiB, "subformat=fixed,block_size=1M"),
    ("fixed-4m-nozero", 9 * MiB + 512,
     "subformat=fixed,block_size=4M,block_state_zero=off"),
]


def _pattern(path, size):
    """Random data in some ranges, zeroes elsewhere, a hole at the end."""
    rnd = bytes(os.urandom(1 << 16))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 1536 * 1024, 3 * MiB + 4096, size - 70000):
            if 0 <= off < size:
                f.seek(off)
                f.write(rnd[:min(len(rnd), size - off)])


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_raw(tmp, image, ref_image=None, limit=None):
    """vimg convert -O raw IMAGE equals qemu-img's of REF_IMAGE (IMAGE);
    with LIMIT, the first LIMIT bytes only, and vimg maps nothing but
    zeroes after them (qemu would read gigabytes of unallocated blocks)."""
    got, want = tmp / "vimg.raw", tmp / "qemu.raw"
    ref = str(ref_image or image)
    vimg("convert", "-O", "raw", str(image), str(got))
    if limit:
        os.truncate(got, limit)
        ref = ("driver=raw,size=%d,file.driver=vhdx,file.file.driver=file,"
               "file.file.filename=%s" % (limit, ref))
        extents = json.loads(vimg("map", "--output=json", str(image)).stdout)
        assert all(e["zero"] for e in extents
                   if e["start"] + e["length"] > limit), extents
    run_checked([QEMU_IMG, "convert", "-O", "raw"]
                + (["--image-opts"] if limit else []) + [ref, str(want)])
    same = _sha(got) == _sha(want)
    got.unlink()
    want.unlink()
    assert same, "%s reads differently in vimg and qemu-img" % image


def _info_agrees(image):
    want = parse_json(run_checked([QEMU_IMG, "info", "--output=json",
                                   str(image)], cwd=image.parent), "qemu-img")
    got = parse_json(vimg("info", "--output=json", str(image),
                          cwd=image.parent), "vimg")
    assert not json_differences(want, got), json_differences(want, got)
    assert not json_missing(want, got), json_missing(want, got)
    return got


def _vhdiinfo_agrees(image, info):
    out = run_checked(["vhdiinfo", str(image)]).stdout
    size = int(re.search(r"Media size\s*:.*\((\d+) bytes\)", out).group(1))
    kind = re.search(r"Disk type\s*:\s*(\w+)", out).group(1).lower()
    sector = int(re.search(r"Bytes per sector\s*:\s*(\d+)", out).group(1))
    ident = re.search(r"Identifier\s*:\s*([0-9a-f-]+)", out).group(1)
    spec = info["format-specific"]["data"]
    assert size == info["virtual-size"]
    assert kind == spec["subformat"]
    assert sector == spec["logical-sector-size"]
    assert ident == spec["data-write-guid"]


def _map_offsets_true(image, raw):
    """Every data extent's host offset holds the extent's bytes."""
    extents = json.loads(vimg("map", "--output=json", str(image)).stdout)
    with open(image, "rb") as img, open(raw, "rb") as ref:
        for e in extents:
            if not e["data"]:
                assert e["zero"], e
                continue
            n = min(e["length"], 1 << 18)
            img.seek(e["offset"])
            ref.seek(e["start"])
            assert img.read(n) == ref.read(n), e


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    d = tmp_path_factory.mktemp("vhdx-variants")
    out = {}
    for vid, size, opts in VARIANTS:
        raw = d / (vid + ".raw")
        _pattern(raw, size)
        img = d / (vid + ".vhdx")
        args = [QEMU_IMG, "convert", "-f", "raw", "-O", "vhdx"]
        if opts:
            args += ["-o", opts]
        run_checked(args + [str(raw), str(img)])
        out[vid] = (img, raw)
    yield out
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("vid", [v[0] for v in VARIANTS])
def test_qemu_variant_reads_info_map(variants, vid, tmp_path):
    img, raw = variants[vid]
    _same_raw(tmp_path, img)
    vimg("compare", str(img), str(raw))
    info = _info_agrees(img)
    _vhdiinfo_agrees(img, info)
    _map_offsets_true(img, raw)


def test_qemu_empty_images(tmp_path):
    for opts in ("subformat=dynamic", "subformat=fixed,block_state_zero=off",
                 "block_size=32M,log_size=4M"):
        img = tmp_path / "e.vhdx"
        run_checked([QEMU_IMG, "create", "-f", "vhdx", "-o", opts, str(img),
                     "7M"])
        _same_raw(tmp_path, img)
        _info_agrees(img)
        img.unlink()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    if not all((SAMPLES_DIR / (n + ".bz2")).is_file() for n in SAMPLES):
        subprocess.run([str(FETCH), str(SAMPLES_DIR)], check=True)
    d = tmp_path_factory.mktemp("vhdx-samples")
    for n in SAMPLES:
        with bz2.open(SAMPLES_DIR / (n + ".bz2")) as src, \
                open(d / n, "wb") as dst:
            shutil.copyfileobj(src, dst)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("name,limit", [(SAMPLES[0], 128 * MiB),
                                        (SAMPLES[1], None)])
def test_hyperv_sample(samples, name, limit, tmp_path):
    img = samples / name
    _same_raw(tmp_path, img, limit=limit)
    info = _info_agrees(img)
    _vhdiinfo_agrees(img, info)


def test_dirty_log_read_only_replays_in_memory(samples, tmp_path):
    img = samples / DIRTY
    before = _sha(img)
    # qemu refuses a read-only open; its answer after a repair of a copy
    repaired = tmp_path / "repaired.vhdx"
    shutil.copyfile(img, repaired)
    run_checked([QEMU_IMG, "check", "-r", "all", str(repaired)], ok=(0, 1))
    _same_raw(tmp_path, img, repaired, limit=64 * MiB)
    info = json.loads(vimg("info", "--output=json", str(img)).stdout)
    assert info["format-specific"]["data"]["log-replayed"] is True
    vimg("map", "--output=json", str(img))
    assert _sha(img) == before, "a read-only open changed the file"


def test_dirty_log_read_write_replays_durably(samples, tmp_path):
    build = Path(os.environ.get("VIMG_BUILD_DIR",
                                HERE.parents[1] / "build"))
    copy = tmp_path / "copy.vhdx"
    repaired = tmp_path / "repaired.vhdx"
    shutil.copyfile(samples / DIRTY, copy)
    shutil.copyfile(samples / DIRTY, repaired)
    run_checked([QEMU_IMG, "check", "-r", "all", str(repaired)], ok=(0, 1))
    subprocess.run([str(build / "tests" / "tools" / "hold-image"), "-w",
                    "-f", "vhdx", str(copy)], stdin=subprocess.DEVNULL,
                   check=True, timeout=60)
    # qemu now opens it read-only: the log is gone and the data is there
    run_checked([QEMU_IMG, "check", str(copy)])
    _same_raw(tmp_path, copy, repaired, limit=64 * MiB)
    info = json.loads(vimg("info", "--output=json", str(copy)).stdout)
    assert info["format-specific"]["data"]["log-replayed"] is False


def test_probe_and_refusals(variants, tmp_path):
    img, _ = variants["dyn-1m"]
    info = json.loads(vimg("info", "--output=json", str(img)).stdout)
    assert info["format"] == "vhdx"
    # a damaged header 1 falls back to header 2; both damaged is an error
    bad = tmp_path / "bad.vhdx"
    shutil.copyfile(img, bad)
    with open(bad, "r+b") as f:
        f.seek(64 * 1024 + 100)
        f.write(b"\xff")
    _same_raw(tmp_path, bad, img)
    with open(bad, "r+b") as f:
        f.seek(128 * 1024 + 100)
        f.write(b"\xff")
    proc = vimg("info", str(bad), ok=(1,))
    assert "header" in proc.stderr, proc.stderr
