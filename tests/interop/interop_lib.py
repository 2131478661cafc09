"""Helpers shared by the interop tests: running programs, comparing files,
JSON and block layouts.  The fixtures live in conftest.py."""

import json
import os
import shutil
import subprocess
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VIMG = REPO / "build" / "tools" / "vimg" / "vimg"

# The oracle.  Never skip when it is missing: resolve to a name that fails
# loudly when run.
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"

TIMEOUT = 120

# The same environment for both tools.  A fixed, non-UTC time zone makes
# snapshot dates in human "info" output depend on using local time as
# qemu-img does; the C locale fixes number formatting.
ENV = dict(os.environ, LC_ALL="C", LANG="C", TZ="IST-5:30")


def vimg_path():
    return os.environ.get("VIMG") or str(DEFAULT_VIMG)


def _describe(argv, cwd, proc):
    rc = proc.returncode
    how = "killed by signal %d" % -rc if rc < 0 else "exit code %d" % rc
    return ("command: %s\ncwd: %s\n%s\n--- stdout ---\n%s\n--- stderr ---\n%s"
            % (" ".join(map(str, argv)), cwd, how,
               _clip(proc.stdout), _clip(proc.stderr)))


def _clip(text, limit=4000):
    if text is None:
        return ""
    return text if len(text) <= limit else text[:limit] + "\n[... clipped]"


def run(argv, cwd=None, timeout=TIMEOUT):
    """Run ARGV and return the CompletedProcess (text mode, never raises on
    exit status).  A hang is a failure, not a skip."""
    argv = [str(a) for a in argv]
    try:
        # bytes, decoded here: text mode would turn progress bars' "\r"
        # into "\n"
        proc = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True,
                              timeout=timeout)
        proc.stdout = proc.stdout.decode("utf-8", "surrogateescape")
        proc.stderr = proc.stderr.decode("utf-8", "surrogateescape")
        return proc
    except subprocess.TimeoutExpired as e:
        raise AssertionError("timed out after %ss: %s (cwd %s)"
                             % (timeout, " ".join(argv), cwd)) from e
    except FileNotFoundError as e:
        raise AssertionError("cannot run %s: %s" % (argv[0], e)) from e


def run_checked(argv, cwd=None, ok=(0,), timeout=TIMEOUT):
    """Run ARGV; raise AssertionError (with stdout and stderr) unless the
    exit status is in OK.  Negative statuses are signals."""
    proc = run(argv, cwd=cwd, timeout=timeout)
    if proc.returncode not in ok:
        raise AssertionError("unexpected status (wanted %s)\n%s"
                             % (ok, _describe(argv, cwd, proc)))
    return proc


def vimg(*args, cwd=None, ok=(0,)):
    """Run the vimg CLI; raise with its stderr on an unexpected status.  A
    crash (signal) is always unexpected."""
    return run_checked([vimg_path(), *args], cwd=cwd, ok=ok)


def qemu_img(*args, cwd=None, ok=(0,)):
    return run_checked([QEMU_IMG, *args], cwd=cwd, ok=ok)


def describe(proc):
    """Short text for assertion messages."""
    return _describe(proc.args, "", proc)


# ---------------------------------------------------------------------------
# Files


def first_difference(a, b, chunk=1 << 20):
    """None if files A and B have the same bytes, else a description of
    the first difference."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            ba, bb = fa.read(chunk), fb.read(chunk)
            if ba != bb:
                n = min(len(ba), len(bb))
                i = next((i for i in range(n) if ba[i] != bb[i]), n)
                if i < n:
                    return ("first difference at offset %d (0x%x): "
                            "expected 0x%02x, got 0x%02x (sizes: expected "
                            "%d, got %d)" % (off + i, off + i, ba[i], bb[i],
                                             sa, sb))
                return ("sizes differ: expected %d, got %d (common prefix "
                        "identical)" % (sa, sb))
            if not ba:
                return None
            off += len(ba)


def extents(path):
    """Data extents (offset, length) of PATH per SEEK_DATA/SEEK_HOLE."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                data = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole - data))
            off = hole
    finally:
        os.close(fd)
    return out


def flip_byte(src, dst, offset):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def first_nonzero(path, chunk=1 << 20):
    with open(path, "rb") as f:
        off = 0
        while True:
            buf = f.read(chunk)
            if not buf:
                return None
            stripped = buf.lstrip(b"\0")
            if stripped:
                return off + len(buf) - len(stripped)
            off += len(buf)


# ---------------------------------------------------------------------------
# JSON


def parse_json(proc, what):
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError("%s: stdout is not JSON (%s)\n%s"
                             % (what, e, describe(proc))) from e


def _path_matches(path, pattern):
    """PATTERN is a dotted path; "[*]" matches any list index."""
    import fnmatch
    return fnmatch.fnmatchcase(path, pattern.replace("[*]", "[[]*[]]"))


def json_differences(expected, got, allowed=(), path=""):
    """Differences between EXPECTED (qemu-img) and GOT (vimg) as a list of
    strings, over the fields both have; paths matching an ALLOWED pattern
    are skipped.  Missing fields are reported by json_missing()."""
    if any(_path_matches(path, p) for p in allowed):
        return []
    if isinstance(expected, dict) and isinstance(got, dict):
        out = []
        for k in expected:
            if k in got:
                sub = "%s.%s" % (path, k) if path else k
                out += json_differences(expected[k], got[k], allowed, sub)
        return out
    if isinstance(expected, list) and isinstance(got, list):
        out = []
        if len(expected) != len(got):
            out.append("%s: list length: expected %d, got %d"
                       % (path or "<top>", len(expected), len(got)))
        for i, (e, g) in enumerate(zip(expected, got)):
            out += json_differences(e, g, allowed, "%s[%d]" % (path, i))
        return out
    if type(expected) != type(got) or expected != got:
        return ["%s: expected %s, got %s"
                % (path or "<top>", json.dumps(expected), json.dumps(got))]
    return []


def json_missing(expected, got, allowed=(), path=""):
    """Fields that qemu-img prints and vimg does not."""
    if any(_path_matches(path, p) for p in allowed):
        return []
    out = []
    if isinstance(expected, dict) and isinstance(got, dict):
        for k in expected:
            sub = "%s.%s" % (path, k) if path else k
            if k not in got:
                if not any(_path_matches(sub, p) for p in allowed):
                    out.append("%s (qemu-img: %s)"
                               % (sub, json.dumps(expected[k])))
            else:
                out += json_missing(expected[k], got[k], allowed, sub)
    elif isinstance(expected, list) and isinstance(got, list):
        for i, (e, g) in enumerate(zip(expected, got)):
            out += json_missing(e, g, allowed, "%s[%d]" % (path, i))
    return out


def map_differences(expected, got, limit=8):
    """Entry-by-entry differences between two parsed "map" JSON lists."""
    out = []
    if len(expected) != len(got):
        out.append("number of entries: expected %d, got %d"
                   % (len(expected), len(got)))
    for i in range(max(len(expected), len(got))):
        e = expected[i] if i < len(expected) else None
        g = got[i] if i < len(got) else None
        if e != g:
            out.append("entry %d:\n    expected %s\n    got      %s"
                       % (i, json.dumps(e, sort_keys=True),
                          json.dumps(g, sort_keys=True)))
            if len(out) > limit:
                out.append("...")
                break
    return out


def text_diff(expected, got, what="stdout"):
    import difflib
    return "".join(difflib.unified_diff(
        expected.splitlines(True), got.splitlines(True),
        "qemu-img " + what, "vimg " + what))
