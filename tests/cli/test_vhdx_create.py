"""vimg create -f vhdx: every qemu-img option, differencing disks (-b/-F,
relative and absolute parent paths, a parent of another format) and
4096-byte logical sectors; qemu-img and vhdiinfo read what vimg creates.
Differencing reads (fully and partially present blocks, sector bitmaps)
are checked against a model of parent plus stored sectors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import VIMG, run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
import vhdx_tool  # noqa: E402

MiB = 1 << 20


def vimg(*args, cwd=None):
    p = subprocess.run([VIMG, *map(str, args)], capture_output=True,
                       text=True, cwd=cwd, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def qemu_img(*args):
    p = subprocess.run(["qemu-img", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def vhdiinfo(path):
    out = subprocess.run(["vhdiinfo", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {k.strip(): v.strip() for k, v in
            re.findall(r"^\t([^:\n]+?)\s*:\s*(.*)$", out, re.M)}


def info(path):
    return json.loads(vimg("info", "--output=json", path).stdout)


@pytest.mark.parametrize("opts,size", [
    ("", 10 * MiB),
    ("subformat=fixed,block_size=1M,block_state_zero=off", 5000000),
    ("subformat=fixed,log_size=1500K", 3 * MiB),
    ("block_size=32M,block_state_zero=off,log_size=2M", 40 * MiB),
    ("block_size=256M", 300 * MiB),
])
def test_create_as_qemu(tmp_path, opts, size):
    ours, theirs = tmp_path / "v.vhdx", tmp_path / "q.vhdx"
    args = ["-o", opts] if opts else []
    vimg("create", "-f", "vhdx", *args, ours, size)
    qemu_img("create", "-f", "vhdx", *args, theirs, size)
    qemu_img("check", ours)
    q = json.loads(qemu_img("info", "--output=json", ours).stdout)
    t = json.loads(qemu_img("info", "--output=json", theirs).stdout)
    for k in ("virtual-size", "cluster-size", "format"):
        assert q[k] == t[k], (k, q[k], t[k])
    v = info(ours)
    d = vhdiinfo(ours)
    assert d["Disk type"].lower() == v["format-specific"]["data"]["subformat"]
    assert str(v["virtual-size"]) in d["Media size"]
    # reads as zeroes everywhere, in both tools
    out = tmp_path / "o.raw"
    qemu_img("convert", "-O", "raw", ours, out)
    assert out.read_bytes().count(0) == v["virtual-size"]
    vimg("compare", ours, theirs)


def test_create_refusals(tmp_path):
    img = tmp_path / "x.vhdx"
    for opts, word in (("block_size=3M", "power of two"),
                       ("subformat=foo", "subformat"),
                       ("logical_sector_size=1024", "512 or 4096")):
        p = run([VIMG, "create", "-f", "vhdx", "-o", opts, img, "5M"])
        assert p.returncode == 1 and word in p.stderr, p.stderr


@pytest.fixture
def parent(tmp_path):
    raw = tmp_path / "parent.raw"
    data = bytearray(os.urandom(12 * MiB))
    data[4 * MiB:8 * MiB] = bytes(4 * MiB)
    raw.write_bytes(data)
    img = tmp_path / "parent.vhdx"
    qemu_img("convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M",
             raw, img)
    return img, data


def test_differencing_reads_parent_and_own_sectors(tmp_path, parent):
    pimg, pdata = parent
    child = tmp_path / "child.vhdx"
    vimg("create", "-f", "vhdx", "-o", "block_size=1M", "-b", pimg.name,
         "-F", "vhdx", child)
    v = info(child)
    assert v["backing-filename"] == "parent.vhdx"
    assert v["format-specific"]["data"]["subformat"] == "differencing"
    d = vhdiinfo(child)
    assert d["Disk type"] == "Differential"
    assert d["Parent identifier"] == \
        info(pimg)["format-specific"]["data"]["data-write-guid"]
    vimg("compare", child, pimg)
    # block 2 fully, block 5 partially present (sectors 1, 2, 100..103)
    model = bytearray(pdata)
    full = os.urandom(MiB)
    vhdx_tool.store_block(child, 2, full)
    model[2 * MiB:3 * MiB] = full
    part = os.urandom(MiB)
    sectors = [1, 2, 100, 101, 102, 103]
    vhdx_tool.store_block(child, 5, part, sectors=sectors)
    for s in sectors:
        model[5 * MiB + 512 * s:5 * MiB + 512 * (s + 1)] = \
            part[512 * s:512 * (s + 1)]
    out = tmp_path / "out.raw"
    vimg("convert", "-O", "raw", child, out)
    assert out.read_bytes() == bytes(model)
    # map: block 2 and the present sectors are this file's data
    extents = json.loads(vimg("map", "--output=json", child).stdout)
    own = [(e["start"], e["length"]) for e in extents
           if e["depth"] == 0 and e["data"]]
    assert (2 * MiB, MiB) in own
    assert (5 * MiB + 512, 1024) in own
    assert (5 * MiB + 51200, 2048) in own


def test_differencing_paths_and_any_parent_format(tmp_path, parent):
    pimg, pdata = parent
    sub = tmp_path / "sub"
    sub.mkdir()
    # relative path from another directory
    vimg("create", "-f", "vhdx", "-b", "../parent.vhdx", "-F", "vhdx",
         sub / "rel.vhdx")
    vimg("compare", sub / "rel.vhdx", pimg)
    # moved away from the relative path: the absolute path still finds it
    (sub / "rel.vhdx").rename(tmp_path / "moved.vhdx")
    vimg("compare", tmp_path / "moved.vhdx", pimg)
    # an absolute path
    vimg("create", "-f", "vhdx", "-b", str(pimg), "-F", "vhdx",
         sub / "abs.vhdx")
    vimg("compare", sub / "abs.vhdx", pimg)
    # a qcow2 parent
    q = tmp_path / "parent.qcow2"
    qemu_img("convert", "-O", "qcow2", pimg, q)
    vimg("create", "-f", "vhdx", "-b", q.name, "-F", "qcow2",
         tmp_path / "onq.vhdx")
    vimg("compare", tmp_path / "onq.vhdx", q)
    out = tmp_path / "o.raw"
    vimg("convert", "-O", "raw", tmp_path / "onq.vhdx", out)
    assert out.read_bytes() == bytes(pdata)


def test_logical_sector_4096(tmp_path, parent):
    pimg, pdata = parent
    img = tmp_path / "s.vhdx"
    vimg("create", "-f", "vhdx", "-o",
         "logical_sector_size=4096,block_size=1M", "-b", pimg.name, "-F",
         "vhdx", img)
    assert info(img)["format-specific"]["data"]["logical-sector-size"] == 4096
    assert vhdiinfo(img)["Bytes per sector"] == "4096 bytes"
    # a partially present block at 4096-byte sector granularity
    data = os.urandom(MiB)
    vhdx_tool.store_block(img, 1, data, sectors=[0, 5, 6])
    model = bytearray(pdata)
    for s in (0, 5, 6):
        model[MiB + s * 4096:MiB + (s + 1) * 4096] = \
            data[s * 4096:(s + 1) * 4096]
    out = tmp_path / "o.raw"
    vimg("convert", "-O", "raw", img, out)
    assert out.read_bytes() == bytes(model)
    # a dynamic disk must not have partially present blocks
    dyn = tmp_path / "d.vhdx"
    vimg("create", "-f", "vhdx", "-o", "block_size=1M", dyn, "4M")
    vhdx_tool.store_block(dyn, 1, data, sectors=[0])
    p = run([VIMG, "info", dyn])
    assert p.returncode == 1 and "state 7" in p.stderr, p.stderr
