"""Inputs qemu-img refuses (or barely accepts): vimg must give the same exit
codes (info/map/convert: 1 on error; compare: 2), and the same stdout where
qemu-img succeeds.  Error messages (stderr) are not compared.

Not here on purpose: qcow2 metadata pointing past the end of the file.
qemu-img reads zeros there; vimg's design (DESIGN.md, "Durability and
safety") fails with -EIO instead, so that lost data is never silent."""

import shutil
import struct

import pytest

from interop_corpus import poke_header
from interop_lib import QEMU_IMG, run, run_checked, vimg, text_diff


def _mk_missing_backing(d):
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "b.qcow2", "1M"],
                cwd=d)
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "b.qcow2",
                 "-F", "qcow2", "img.qcow2"], cwd=d)
    (d / "b.qcow2").unlink()


def _mk_qcow2(d, size="1M", opts="cluster_size=4k"):
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", opts,
                 "img.qcow2", size], cwd=d)
    run_checked(["qemu-io", "-c", "write -P 0x5a 0 256k", "img.qcow2"],
                cwd=d)


def _mk_unknown_incompat(d):
    _mk_qcow2(d)
    poke_header(d / "img.qcow2", incompatible=1 << 40)


def _mk_version4(d):
    _mk_qcow2(d)
    poke_header(d / "img.qcow2", version=4)


def _mk_bad_cluster_bits(d):
    _mk_qcow2(d)
    with open(d / "img.qcow2", "r+b") as f:
        f.seek(20)
        f.write(struct.pack(">I", 8))


def _mk_empty(d):
    (d / "img.qcow2").write_bytes(b"")


def _mk_text(d):
    (d / "img.qcow2").write_bytes(b"hello, world\n")


def _mk_missing_backing_depth2(d):
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
                cwd=d)
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "a.qcow2",
                 "-F", "qcow2", "b.qcow2"], cwd=d)
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "b.qcow2",
                 "-F", "qcow2", "img.qcow2"], cwd=d)
    (d / "a.qcow2").unlink()


def _mk_wrong_backing_fmt(d):
    """A qcow2 backing file declared as raw: qemu-img reads its bytes."""
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "b.qcow2", "1M"],
                cwd=d)
    run_checked([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "b.qcow2",
                 "-F", "raw", "-o", "cluster_size=4k", "img.qcow2", "1M"],
                cwd=d)


CASES = {
    "missing-file": (lambda d: None, []),
    "missing-backing": (_mk_missing_backing, []),
    "missing-backing-depth2": (_mk_missing_backing_depth2, []),
    "wrong-backing-format": (_mk_wrong_backing_fmt, []),
    "unknown-format": (_mk_qcow2, ["-f", "bogus"]),
    "raw-forced-qcow2": (_mk_text, ["-f", "qcow2"]),
    "qcow2-forced-raw": (_mk_qcow2, ["-f", "raw"]),
    "unknown-incompatible-bit": (_mk_unknown_incompat, []),
    "version-4": (_mk_version4, []),
    "cluster-bits-8": (_mk_bad_cluster_bits, []),
    "empty-file": (_mk_empty, []),
    "text-file": (_mk_text, []),
}

COMMANDS = {
    "info": ["info"],
    "info-json": ["info", "--output=json"],
    "info-chain-json": ["info", "--output=json", "--backing-chain"],
    "map": ["map"],
    "map-json": ["map", "--output=json"],
    "convert": ["convert", "-O", "raw"],
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    for name, (make, _) in CASES.items():
        d = root / name
        d.mkdir()
        make(d)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_error_exit_codes(cases, vimg_bin, case, command, tmp_path):
    d = cases / case
    opts = CASES[case][1]
    cmd = COMMANDS[command]
    args = [cmd[0], *opts, *cmd[1:], "img.qcow2"]
    if cmd[0] == "convert":
        want_args = args + [str(tmp_path / "want.raw")]
        got_args = args + [str(tmp_path / "got.raw")]
    else:
        want_args = got_args = args
    want = run([QEMU_IMG, *want_args], cwd=d)
    got = vimg(*got_args, cwd=d, ok=(0, 1, 2))
    assert got.returncode == want.returncode, (
        "vimg %s (%s): exit code %d, qemu-img's %d\nqemu-img stderr: %s\n"
        "vimg stderr: %s" % (" ".join(got_args), case, got.returncode,
                             want.returncode, want.stderr.strip(),
                             got.stderr.strip()))
    assert got.stdout == want.stdout, "vimg %s (%s):\n%s" % (
        " ".join(got_args), case, text_diff(want.stdout, got.stdout))
    if cmd[0] == "convert" and want.returncode == 0:
        assert ((tmp_path / "got.raw").read_bytes()
                == (tmp_path / "want.raw").read_bytes())


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_error_compare_exit_codes(cases, vimg_bin, case):
    """compare reports open errors with exit code 2."""
    opts = CASES[case][1]
    args = ["compare", *opts, "img.qcow2", "img.qcow2"]
    d = cases / case
    want = run([QEMU_IMG, *args], cwd=d)
    got = vimg(*args, cwd=d, ok=(0, 1, 2))
    assert got.returncode == want.returncode, (
        "vimg %s (%s): exit code %d, qemu-img's %d\nqemu-img: %s%s\n"
        "vimg: %s%s" % (" ".join(args), case, got.returncode,
                        want.returncode, want.stdout, want.stderr.strip(),
                        got.stdout, got.stderr.strip()))
    if want.returncode != 2:
        assert got.stdout == want.stdout
