"""VHDX writes: a random workload (tests/tools/workload) on dynamic, fixed
and differencing VHDX matches a raw model, qemu-img checks the result
clean and reads it identically; SIGKILL at random points and failed
writes/flushes leave images whose log replays (vimg in memory, qemu-img
with check -r all) to a state where every flushed write reads back."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BUILD_DIR, VIMG, run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
import vhdx_tool  # noqa: E402

WORKLOAD = os.path.join(BUILD_DIR, "tests", "tools", "workload")
WRITER = os.path.join(BUILD_DIR, "tests", "tools", "crash-writer")
MiB = 1 << 20


def ok(args, **kw):
    p = run([str(a) for a in args], **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def make(tmp, kind, size=16 * MiB):
    """A KIND image and its raw model."""
    img, model = tmp / (kind + ".vhdx"), tmp / (kind + ".raw")
    opts = {"dynamic": "block_size=1M",
            "fixed": "subformat=fixed,block_size=1M",
            "fixed-nozero": "subformat=fixed,block_size=2M,"
                            "block_state_zero=off",
            "dynamic-8m": ""}
    if kind in opts:
        ok([VIMG, "create", "-q", "-f", "vhdx", "-o", opts[kind] or
            "block_size=0", img, size])
        with open(model, "wb") as f:
            f.truncate(size)
        return img, model
    # differencing over a vhdx or qcow2 parent holding data
    with open(model, "wb") as f:
        f.write(os.urandom(size))
    pfmt = "qcow2" if kind == "diff-qcow2" else "vhdx"
    parent = tmp / ("parent." + pfmt)
    ok(["qemu-img", "convert", "-f", "raw", "-O", pfmt, model, parent])
    opts = "block_size=1M"
    if kind == "diff-qcow2":
        opts += ",logical_sector_size=4096"
    ok([VIMG, "create", "-q", "-f", "vhdx", "-o", opts, "-b", parent.name,
        "-F", pfmt, img])
    if kind == "diff-partial":
        # a partially present block that the workload's writes promote
        data = os.urandom(MiB)
        vhdx_tool.store_block(img, 3, data, sectors=[0, 7, 8, 300])
        with open(model, "r+b") as f:
            for s in (0, 7, 8, 300):
                f.seek(3 * MiB + 512 * s)
                f.write(data[512 * s:512 * (s + 1)])
    return img, model


@pytest.mark.parametrize("kind", ["dynamic", "dynamic-8m", "fixed",
                                  "fixed-nozero", "diff-vhdx", "diff-qcow2",
                                  "diff-partial"])
def test_workload_matches_model(tmp_path, kind):
    img, model = make(tmp_path, kind)
    p = ok([WORKLOAD, "-n", "300", "-s", "11", "-f", "vhdx", img, model],
           timeout=300)
    assert "all match" in p.stdout, p.stdout
    ok([VIMG, "compare", img, model])
    if not kind.startswith("diff"):
        # qemu-img reads it identically and checks it clean (it refuses
        # differencing VHDX)
        ok(["qemu-img", "check", img])
        ok(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", img, model])


def test_convert_to_vhdx_reads_in_qemu(tmp_path):
    img, model = make(tmp_path, "diff-vhdx")
    out = tmp_path / "out.vhdx"
    ok([VIMG, "convert", "-O", "vhdx", "-o", "block_size=1M", img, out])
    ok(["qemu-img", "check", out])
    ok(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", out, model])


def last_flush(stdout):
    k = 0
    for line in stdout.splitlines():
        if line.startswith("flushed "):
            k = int(line.split()[1])
    return k


def replayed_clean(tmp_path, img, seed, k):
    """vimg reads the flushed writes (replaying in memory), and so does a
    copy qemu-img repaired; qemu-img checks that copy clean."""
    v = run([WRITER, "verify", str(img), seed, str(k)])
    assert v.returncode == 0, v.stderr
    copy = tmp_path / "replayed.vhdx"
    shutil.copy(img, copy)
    r = run(["qemu-img", "check", "-r", "all", str(copy)])
    assert r.returncode == 0, r.stdout + r.stderr
    ok(["qemu-img", "check", copy])
    v = run([WRITER, "verify", str(copy), seed, str(k)])
    assert v.returncode == 0, v.stderr


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_sigkill_at_random_points(tmp_path, kind):
    tpl, _ = make(tmp_path, kind)
    rnd = random.Random(kind)
    for attempt in range(4):
        img = tmp_path / ("run%d.vhdx" % attempt)
        shutil.copy(tpl, img)
        seed = str(attempt + 1)
        p = subprocess.Popen([WRITER, "run", str(img), seed],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=60)
        replayed_clean(tmp_path, img, seed, last_flush(out.decode()))
        img.unlink()


@pytest.mark.parametrize("what", ["w", "f"])
def test_fault_injection(tmp_path, what):
    tpl, _ = make(tmp_path, "dynamic")
    fired = 0
    for n in list(range(1, 12)) + list(range(12, 400, 71)):
        img = tmp_path / "f.vhdx"
        shutil.copy(tpl, img)
        p = run([WRITER, "run", str(img), "3", "%s%d" % (what, n)],
                timeout=120)
        assert p.returncode in (0, 2), p.stderr
        if p.returncode == 2:
            break
        fired += 1
        replayed_clean(tmp_path, img, "3", last_flush(p.stdout))
    assert fired > 5, "too few fault points were reached"
