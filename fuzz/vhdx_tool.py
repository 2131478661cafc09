#!/usr/bin/python3
"""VHDX helpers for the fuzz corpus and the tests: CRC-32C, rewriting a
header, writing log entries ([MS-VHDX] 2.3) into an image, and the
fuzz-vhdx input encoding (a sparse image as records).

  vhdx_tool.py corpus OUTDIR   build fuzz/corpus/fuzz-vhdx from qemu-img
                               images and hand-made logs
"""

import os
import struct
import subprocess
import sys
import tempfile
import uuid

_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)

SECTOR = 4096
MiB = 1 << 20


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    t = _TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _with_crc(buf, off=4):
    buf = bytearray(buf)
    buf[off:off + 4] = b"\0\0\0\0"
    struct.pack_into("<I", buf, off, crc32c(bytes(buf)))
    return bytes(buf)


def read_header(f):
    """The current header: (offset, seq, bytes)."""
    best = None
    for off in (64 << 10, 128 << 10):
        f.seek(off)
        h = f.read(SECTOR)
        if h[:4] != b"head":
            continue
        seq = struct.unpack_from("<Q", h, 8)[0]
        if best is None or seq > best[1]:
            best = (off, seq, h)
    return best


def set_log_guid(f, guid):
    """Write both headers with log GUID GUID (16 bytes), sequence numbers
    above the current one."""
    _, seq, h = read_header(f)
    h = bytearray(h)
    h[48:64] = guid
    for i, off in enumerate((64 << 10, 128 << 10)):
        struct.pack_into("<Q", h, 8, seq + 1 + i)
        f.seek(off)
        f.write(_with_crc(h))


def log_region(f):
    _, _, h = read_header(f)
    length, offset = struct.unpack_from("<IQ", h, 68)
    return offset, length


def make_entry(seq, tail, guid, writes, flushed, last):
    """One log entry: WRITES is a list of (file offset, 4096 bytes) or
    (file offset, length, None) for a zero descriptor."""
    descs = []
    data = []
    for w in writes:
        if w[-1] is None:
            descs.append(struct.pack("<4sIQQQ", b"zero", 0, w[1], w[0], seq))
        else:
            off, payload = w
            assert len(payload) == SECTOR
            descs.append(struct.pack("<4s4s8sQQ", b"desc", payload[4092:],
                                     payload[:8], off, seq))
            data.append(struct.pack("<4sI", b"data", seq >> 32)
                        + payload[8:4092]
                        + struct.pack("<I", seq & 0xFFFFFFFF))
    head_len = 64 + 32 * len(descs)
    head_sectors = (head_len + SECTOR - 1) // SECTOR
    length = (head_sectors + len(data)) * SECTOR
    hdr = struct.pack("<4sIIIQII16sQQ", b"loge", 0, length, tail, seq,
                      len(descs), 0, guid, flushed, last)
    body = (hdr + b"".join(descs)).ljust(head_sectors * SECTOR, b"\0")
    return _with_crc(body + b"".join(data))


def write_ring(f, log_off, log_len, pos, entry):
    """ENTRY at POS of the log ring (wrapping)."""
    for i in range(0, len(entry), SECTOR):
        f.seek(log_off + (pos + i) % log_len)
        f.write(entry[i:i + SECTOR])
    return (pos + len(entry)) % log_len


def to_records(path, flags, limit=32 * MiB):
    """The fuzz-vhdx input for the file at PATH: FLAGS byte, LE32 file
    size, then (LE32 offset, LE16 length, bytes) for every non-zero 4 KiB
    sector."""
    size = min(os.path.getsize(path), limit)
    out = [struct.pack("<BI", flags, size)]
    with open(path, "rb") as f:
        for off in range(0, size, SECTOR):
            f.seek(off)
            s = f.read(SECTOR)
            if s.strip(b"\0"):
                out.append(struct.pack("<IH", off, len(s)) + s)
    return b"".join(out)


def _qemu(*args):
    subprocess.run(["qemu-img", *args], check=True, stdout=subprocess.DEVNULL)


def _with_data(d, name, size, opts):
    raw = os.path.join(d, name + ".raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        for off in (0, 1536 * 1024, size - 8192):
            f.seek(off)
            f.write(bytes((i * 7 + off) & 0xFF for i in range(4096)))
    img = os.path.join(d, name + ".vhdx")
    _qemu("convert", "-f", "raw", "-O", "vhdx", "-o", opts, raw, img)
    return img


def regions(f):
    """{'bat': (offset, length), 'meta': ...} from region table 1."""
    f.seek(192 << 10)
    t = f.read(64 << 10)
    out = {}
    for i in range(struct.unpack_from("<I", t, 8)[0]):
        e = t[16 + 32 * i:48 + 32 * i]
        g = str(uuid.UUID(bytes_le=e[:16]))
        name = {"2dc27766-f623-4200-9d64-115e9bfd4a08": "bat",
                "8b7ca206-4790-4b9a-b8fe-575f050f886e": "meta"}.get(g)
        if name:
            out[name] = struct.unpack_from("<QI", e, 16)
    return out


def block_offset(f, i):
    """The host offset of BAT entry I (no state check)."""
    f.seek(regions(f)["bat"][0] + 8 * i)
    return struct.unpack("<Q", f.read(8))[0] & ~0xFFFFF


def add_log(img, start, entries):
    """Give IMG a dirty log whose entries (WRITES, TORN) start at ring
    position START; WRITES name offsets as ("block", N, delta) for N's
    host offset plus DELTA, ("bat", delta) for the BAT plus DELTA; a torn
    entry gets a bad checksum (and is not replayed)."""
    guid = uuid.uuid4().bytes_le
    with open(img, "r+b") as f:
        log_off, log_len = log_region(f)
        size = os.fstat(f.fileno()).st_size
        pos = start
        seq = 7
        for writes, torn in entries:
            resolved = []
            for w in writes:
                where, rest = w[0], w[1:]
                if where[0] == "block":
                    off = block_offset(f, where[1]) + where[2]
                else:
                    off = regions(f)["bat"][0] + where[1]
                resolved.append((off, *rest))
            e = bytearray(make_entry(seq, start, guid, resolved, size, size))
            if torn:
                e[-1] ^= 1
            pos = write_ring(f, log_off, log_len, pos, e)
            seq += 1
        set_log_guid(f, guid)


def _metadata(f):
    """(block size, logical sector size, has parent) of the image."""
    off = regions(f)["meta"][0]
    f.seek(off)
    t = f.read(64 << 10)
    want = {"caa16737-fa36-4d43-b3b6-33f0aa44e76b": "params",
            "8141bf1d-a96f-4709-ba47-f233a8faab5f": "sector"}
    got = {}
    for i in range(struct.unpack_from("<H", t, 10)[0]):
        e = t[32 + 32 * i:64 + 32 * i]
        name = want.get(str(uuid.UUID(bytes_le=e[:16])))
        if name:
            f.seek(off + struct.unpack_from("<I", e, 16)[0])
            got[name] = f.read(8)
    bs, flags = struct.unpack("<II", got["params"])
    return bs, struct.unpack("<I", got["sector"][:4])[0], bool(flags & 2)


def store_block(img, block, data, sectors=None):
    """Store DATA (the whole block) as payload block BLOCK of IMG at the
    end of the file: fully present, or with SECTORS (a list of logical
    sector numbers within the block) partially present through the
    chunk's sector bitmap (allocated when missing)."""
    with open(img, "r+b") as f:
        bs, lss, _ = _metadata(f)
        ratio = (1 << 23) * lss // bs
        bat = regions(f)["bat"][0]
        end = (os.fstat(f.fileno()).st_size + MiB - 1) // MiB * MiB
        f.seek(end)
        f.write(data)
        state = 6
        if sectors is not None:
            state = 7
            sb_index = (block // ratio) * (ratio + 1) + ratio
            f.seek(bat + 8 * sb_index)
            sb = struct.unpack("<Q", f.read(8))[0]
            if sb & 7 != 6:
                sb = ((end + len(data) + MiB - 1) // MiB * MiB)
                f.seek(sb + MiB - 1)
                f.write(b"\0")
                f.seek(bat + 8 * sb_index)
                f.write(struct.pack("<Q", sb | 6))
            sb &= ~0xFFFFF
            first = (block % ratio) * (bs // lss)
            for s in sectors:
                bit = first + s
                f.seek(sb + bit // 8)
                byte = f.read(1)[0]
                f.seek(sb + bit // 8)
                f.write(bytes([byte | 1 << (bit % 8)]))
        f.seek(bat + 8 * (block + block // ratio))
        f.write(struct.pack("<Q", end | state))


PATTERN = bytes(range(256)) * 16
# name -> (ring start, entries)
LOGS = {
    "log-one": (0, [([(("block", 0, 4096), PATTERN)], False)]),
    # the first entry wraps around the end of the ring; the second zeroes
    # the BAT's first sector (every block then reads as zeroes)
    "log-wrap": (MiB - SECTOR, [([(("block", 0, 0), PATTERN)], False),
                                ([(("bat", 0), SECTOR, None)], False)]),
    "log-torn": (SECTOR, [([(("block", 0, 0), PATTERN)], False),
                          ([(("bat", 0), SECTOR, None)], True)]),
}


def corpus(outdir):
    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        seeds = {
            "dyn-1m": _with_data(d, "a", 6 * MiB, "block_size=1M"),
            "fixed-1m": _with_data(d, "b", 3 * MiB,
                                   "subformat=fixed,block_size=1M"),
            "dyn-nozero": _with_data(d, "c", 5 * MiB,
                                     "block_size=4M,block_state_zero=off"),
        }
        for name, (start, entries) in LOGS.items():
            img = _with_data(d, name, 6 * MiB, "block_size=1M")
            add_log(img, start, entries)
            seeds[name] = img
        for name, img in seeds.items():
            with open(os.path.join(outdir, name), "wb") as f:
                f.write(to_records(img, 3))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "corpus":
        corpus(sys.argv[2])
    else:
        sys.exit(__doc__)
