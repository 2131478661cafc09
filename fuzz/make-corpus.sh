#!/bin/sh
# SPDX-License-Identifier: MIT
# make-corpus.sh: regenerate the seed corpus of fuzz-open (fuzz/corpus/
# fuzz-open/) from images made by qemu-img and qemu-io, plus damaged copies
# of them (qcow2-poke.py) and a few built byte by byte (extended L2 entries,
# which qemu-img only makes with 16 KiB clusters, too big for a seed).
#
#   fuzz/make-corpus.sh [OUTDIR]
#
# Seeds stay small (each <= 64 KiB, the corpus < 2 MiB): small virtual
# sizes, 512-byte and 4 KiB clusters.  Inputs the fuzzer found (crashes,
# hangs) live in the same directory as crash-*/timeout-*/leak-*; this script
# leaves them alone.  Snapshot dates are pinned, so a rerun reproduces the
# committed files.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus/fuzz-open}
poke="/usr/bin/python3 $here/qcow2-poke.py"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
# Regenerate only what this script owns.
find "$out" -maxdepth 1 -type f \( -name 'good-*' -o -name 'bad-*' \) -delete

qimg() { qemu-img "$@" >/dev/null; }
qio() { f=$1; shift; qemu-io -f qcow2 "$@" "$f" >/dev/null; }

# good NAME SIZE OPTIONS: create $tmp/NAME.qcow2
new() { qimg create -f qcow2 -o "$3" "$tmp/$1.qcow2" "$2"; }
keep() { cp "$tmp/$1.qcow2" "$out/good-$1.qcow2"; }

# Random bytes, reproducible: the same on every run.
head -c 65536 /dev/zero | openssl enc -aes-128-ctr -nosalt \
    -pass pass:vimg-corpus -pbkdf2 2>/dev/null > "$tmp/random" ||
    /usr/bin/python3 -c 'import random,sys; r=random.Random(1);
sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(65536)))' \
    > "$tmp/random"
head -c 4096 "$tmp/random" > "$tmp/r4k"
head -c 1536 "$tmp/random" | tail -c 1000 > "$tmp/r1000"

# --- good images -----------------------------------------------------------
new empty-c512 64k cluster_size=512
keep empty-c512

# 512-byte clusters: data, zero clusters, a discard, an unaligned write
new data-c512 64k cluster_size=512
qio "$tmp/data-c512.qcow2" -c 'write -P 0x11 0 1536' -c 'write -z 4k 2k' \
    -c 'write -s '"$tmp/r1000"' 9000 1000' -c 'write -P 0x22 60k 4k' \
    -c 'discard 60k 1k' -c 'write -P 0x33 32k 512'
keep data-c512

new data-c4k 256k cluster_size=4k
qio "$tmp/data-c4k.qcow2" -c 'write -s '"$tmp/r4k"' 0 4k' \
    -c 'write -P 0x44 12k 6k' -c 'write -z 64k 8k' -c 'write -P 0x55 252k 4k'
keep data-c4k

# compat=0.10 (version 2): no zero clusters, no feature bits
new v2-c4k 128k cluster_size=4k,compat=0.10
qio "$tmp/v2-c4k.qcow2" -c 'write -P 0x66 4k 8k' -c 'write -P 0x77 124k 4k'
keep v2-c4k

new v2-c512 16k cluster_size=512,compat=0.10
qio "$tmp/v2-c512.qcow2" -c 'write -P 0x68 0 1k' -c 'write -c -P 0x69 2k 512'
keep v2-c512

# compressed clusters, zlib and zstd, mixed with normal ones
new zlib-c512 32k cluster_size=512,compression_type=zlib
qio "$tmp/zlib-c512.qcow2" -c 'write -c -P 0x12 0 512' \
    -c 'write -c -s '"$tmp/r4k"' 1k 512' -c 'write -P 0x13 4k 1k'
keep zlib-c512

new zlib-c4k 64k cluster_size=4k,compression_type=zlib
qio "$tmp/zlib-c4k.qcow2" -c 'write -c -P 0x14 0 4k' \
    -c 'write -c -P 0x15 8k 4k' -c 'write -P 0x16 16k 4k' \
    -c 'write -c -s '"$tmp/r4k"' 20k 4k'
keep zlib-c4k

new zstd-c4k 64k cluster_size=4k,compression_type=zstd
qio "$tmp/zstd-c4k.qcow2" -c 'write -c -P 0x17 0 4k' \
    -c 'write -c -P 0x18 8k 4k' -c 'write -P 0x19 16k 4k' \
    -c 'write -c -s '"$tmp/r4k"' 24k 4k'
keep zstd-c4k

new zstd-c512 16k cluster_size=512,compression_type=zstd
qio "$tmp/zstd-c512.qcow2" -c 'write -c -P 0x1a 0 512' \
    -c 'write -c -P 0x1b 1k 512'
keep zstd-c512

# internal snapshots, with copy-on-write after them
new snap-c4k 64k cluster_size=4k
qio "$tmp/snap-c4k.qcow2" -c 'write -P 0x21 0 8k'
qimg snapshot -c first "$tmp/snap-c4k.qcow2"
qio "$tmp/snap-c4k.qcow2" -c 'write -P 0x22 4k 8k'
qimg snapshot -c second "$tmp/snap-c4k.qcow2"
qio "$tmp/snap-c4k.qcow2" -c 'write -z 0 4k'
keep snap-c4k

new snap-c512 8k cluster_size=512
qio "$tmp/snap-c512.qcow2" -c 'write -P 0x25 0 1k'
qimg snapshot -c one "$tmp/snap-c512.qcow2"
qio "$tmp/snap-c512.qcow2" -c 'write -P 0x26 512 1k'
qimg snapshot -c two "$tmp/snap-c512.qcow2"
keep snap-c512

new snap-v2-c512 8k cluster_size=512,compat=0.10
qio "$tmp/snap-v2-c512.qcow2" -c 'write -P 0x23 0 1k'
qimg snapshot -c s "$tmp/snap-v2-c512.qcow2"
qio "$tmp/snap-v2-c512.qcow2" -c 'write -P 0x24 512 1k'
keep snap-v2-c512

# persistent dirty bitmaps (one with dirty bits, one disabled)
new bitmap-c512 64k cluster_size=512
qimg bitmap --add "$tmp/bitmap-c512.qcow2" b0
qimg bitmap --add -g 8k "$tmp/bitmap-c512.qcow2" b1
qio "$tmp/bitmap-c512.qcow2" -c 'write -P 0x31 0 12k' -c 'write -P 0x32 40k 4k'
qimg bitmap --disable "$tmp/bitmap-c512.qcow2" b1
keep bitmap-c512

# refcount widths and lazy refcounts; a dirty image from a simulated crash
new refbits1-c512 16k cluster_size=512,refcount_bits=1
qio "$tmp/refbits1-c512.qcow2" -c 'write -P 0x41 0 2k'
keep refbits1-c512

new refbits64-c512 16k cluster_size=512,refcount_bits=64
qio "$tmp/refbits64-c512.qcow2" -c 'write -P 0x42 1k 2k'
keep refbits64-c512

new lazy-dirty-c4k 64k cluster_size=4k,lazy_refcounts=on
qemu-io -f qcow2 -c 'write -P 0x43 0 8k' -c abort \
    "$tmp/lazy-dirty-c4k.qcow2" >/dev/null 2>&1 || true
keep lazy-dirty-c4k

# backing file names (not opened from memory, but parsed)
new base 64k cluster_size=4k
new overlay-c4k 64k cluster_size=4k,backing_file=base.qcow2,backing_fmt=qcow2
qio "$tmp/overlay-c4k.qcow2" -c 'write -P 0x51 4k 4k'
keep overlay-c4k
# a raw backing file, version 2
qimg create -f qcow2 -u -b base.raw -F raw -o cluster_size=512,compat=0.10 \
    "$tmp/overlay-v2-c512.qcow2" 8k
keep overlay-v2-c512

# external data file (the data file is missing when opened from memory)
(cd "$tmp" && qimg create -f qcow2 -o cluster_size=4k,data_file=ext.raw \
    datafile-c4k.qcow2 64k)
(cd "$tmp" && qio datafile-c4k.qcow2 -c 'write -P 0x61 0 8k')
keep datafile-c4k
(cd "$tmp" && qimg create -f qcow2 \
    -o cluster_size=4k,data_file=ext2.raw,data_file_raw=on \
    datafile-raw-c4k.qcow2 64k)
keep datafile-raw-c4k

# legacy AES encryption (reads fail without a key, but the header parses)
qimg create -f qcow2 --object secret,id=s0,data=vimg \
    -o cluster_size=4k,encrypt.format=aes,encrypt.key-secret=s0 \
    "$tmp/aes-c4k.qcow2" 64k
qemu-io --object secret,id=s0,data=vimg -c 'write -P 0x71 0 4k' \
    --image-opts driver=qcow2,file.filename="$tmp/aes-c4k.qcow2",encrypt.key-secret=s0 \
    >/dev/null
keep aes-c4k

# a large virtual size with little data (high L1 indexes)
new huge-c4k 2G cluster_size=4k
qio "$tmp/huge-c4k.qcow2" -c "write -P 0x81 0 4k" -c "write -P 0x82 2047M 4k"
keep huge-c4k

# Extended L2 entries: qemu-img needs >= 16 KiB clusters, whose images are
# too big for a seed, so build them: header (with a zlib-compressed cluster
# in its cluster's tail), a refcount table without refcount blocks (only
# check and writes read refcounts), the L1 table, the L2 table: 64 KiB.
# Variant "b" adds a normal cluster with allocated subclusters; it points
# at the (all zero) refcount table cluster, harmless for reading.
/usr/bin/python3 - "$out" <<'EOF'
import struct, sys, zlib
out = sys.argv[1]
cb, cs = 14, 1 << 14
def build(name, normal):
    img = bytearray(4 * cs)
    hdr = struct.pack('>4sIQIIQIIQQIIQQQQII', b'QFI\xfb', 3, 0, 0, cb,
                      16 * cs, 0, 1, 2 * cs, cs, 1, 0, 0,
                      1 << 4, 0, 0, 4, 112)
    img[0:len(hdr)] = hdr          # compression_type 0 (zlib) at 104
    data = bytes((i * 7 + i // 512) & 0xff for i in range(cs))
    c = zlib.compressobj(6, zlib.DEFLATED, -12)
    comp = c.compress(data) + c.flush()
    coff = 4096
    img[coff:coff + len(comp)] = comp
    sectors = (coff + len(comp) - 1) // 512 - coff // 512
    x = 62 - (cb - 8)
    l1, l2 = 2 * cs, 3 * cs
    struct.pack_into('>Q', img, l1, (1 << 63) | l2)
    def l2e(i, entry, bitmap):
        struct.pack_into('>QQ', img, l2 + 16 * i, entry, bitmap)
    l2e(0, (1 << 62) | (sectors << x) | coff, 0)           # compressed
    l2e(1, 0, 0xffffffff << 32)                            # all zero
    l2e(2, 0, 0x0000ffff << 32)                            # half zero
    if normal:
        l2e(3, (1 << 63) | cs, (0x00f00000 << 32) | 0x00000ff0)
    with open(f'{out}/good-{name}.qcow2', 'wb') as f:
        f.write(img)
build('extl2-a-c16k', False)
build('extl2-b-c16k', True)
EOF

# Snapshot dates are "now": pin them so regenerating changes nothing.
for f in "$out"/good-snap-*.qcow2; do
    /usr/bin/python3 - "$f" <<'PY'
import struct, sys
path = sys.argv[1]
d = bytearray(open(path, 'rb').read())
n, off = struct.unpack_from('>I', d, 60)[0], struct.unpack_from('>Q', d, 64)[0]
for _ in range(n):        # spec "Snapshot table": fixed part is 40 bytes
    id_len, name_len = struct.unpack_from('>HH', d, off + 12)
    extra = struct.unpack_from('>I', d, off + 36)[0]
    struct.pack_into('>II', d, off + 16, 1700000000, 0)
    off += (40 + extra + id_len + name_len + 7) // 8 * 8
open(path, 'wb').write(d)
PY
done

# --- damaged images ----------------------------------------------------------
# bad NAME FROM POKE-ARGS...: a copy of good-FROM with bytes poked in
bad() {
    name=$1; from=$2; shift 2
    cp "$out/good-$from.qcow2" "$out/bad-$name.qcow2"
    $poke "$out/bad-$name.qcow2" "$@"
}
: > "$out/bad-empty"
head -c 4 "$out/good-data-c4k.qcow2" > "$out/bad-magic-only"
bad trunc-71 data-c512 truncate 71
bad trunc-hdr data-c512 truncate header_length
bad trunc-half data-c4k truncate eof//2
bad trunc-l2 zlib-c512 truncate l1+8
bad magic data-c4k magic 0x514649fc
bad version1 data-c512 version 1
bad version4 data-c512 version 4
bad cbits8 data-c512 cluster_bits 8
bad cbits22 data-c512 cluster_bits 22
bad cbits63 data-c512 cluster_bits 63
bad size-huge data-c512 size '1<<63'
bad size-small-l1 data-c512 size '1<<40'
bad crypt2 data-c512 crypt_method 2
bad l1size-0 data-c512 l1_size 0
bad l1size-huge data-c512 l1_size 0x7fffffff
bad l1off-unaligned data-c4k l1_table_offset l1+8
bad l1off-eof data-c512 l1_table_offset 'eof+cs*16'
bad l1off-zero data-c512 l1_table_offset 0
bad l1-eof data-c4k 'l1[0]' '(1<<63)|(eof+cs*1024)'
bad l1-unaligned data-c512 'l1[0]' 'old+8'
bad l1-header data-c512 'l1[0]' '(1<<63)|cs'
bad l1-reserved data-c512 'l1[0]' 'old|(1<<56)'
bad l2-eof data-c4k l2data '(1<<63)|(eof+cs*16)'
bad l2-unaligned data-c512 l2data 'old+512'
bad l2-reserved data-c512 l2data 'old|2'
bad l2-points-l1 data-c512 l2data '(1<<63)|l1'
bad l2-eof-c512 data-c512 l2data '(1<<63)|(eof+4096)'
bad comp-eof zlib-c4k l2comp.offset 'eof+cs'
bad comp-sectors zlib-c4k l2comp.sectors 'old+1000'
bad comp-sectors-max zlib-c512 l2comp.sectors '-1'
bad comp-offset0 zlib-c512 l2comp.offset 0
bad comp-garbage zlib-c4k at:comp+2:8 0x0123456789abcdef
bad comp-garbage-zstd zstd-c512 at:comp:4 0x12345678
bad zstd-eof zstd-c4k l2comp.offset 'eof+1'
bad zstd-sectors zstd-c512 l2comp.sectors 'old+3'
bad comp-c512-eof zlib-c512 l2comp.offset 'eof-100'
bad reftable-eof data-c4k refcount_table_offset 'eof+cs*4'
bad reftable-unaligned data-c512 refcount_table_offset 'old+16'
bad reftable-huge data-c512 refcount_table_clusters 0xffffffff
bad reftable-entry-eof data-c512 'reftable[0]' 'eof+cs*8'
bad refcount-order7 data-c512 refcount_order 7
bad backing-eof overlay-c4k backing_file_offset 'eof+100'
bad backing-huge overlay-c4k backing_file_size 0xffffffff
bad backing-nobacking data-c512 backing_file_offset 200 backing_file_size 16
bad incompat5 data-c512 incompatible_features 'old|(1<<5)'
bad incompat63 data-c512 incompatible_features 'old|(1<<63)'
bad corrupt-bit data-c512 incompatible_features 'old|2'
bad dirty-bit data-c512 incompatible_features 'old|1'
bad datafile-bit data-c512 incompatible_features 'old|4'
bad extl2-bit data-c512 incompatible_features 'old|16'
bad comptype-bit zstd-c512 incompatible_features 'old&~8'
bad comptype2 zstd-c512 compression_type 2
bad autoclear data-c512 autoclear_features 0xffffffffffffffff
bad hdrlen-0 data-c512 header_length 0
bad hdrlen-huge data-c512 header_length 0xfffffff0
bad hdrlen-odd data-c512 header_length 105
bad ext-len-huge data-c512 at:116:4 0xfffffff0
bad snap-count-huge snap-c512 nb_snapshots 0x7fffffff
bad snap-off-eof snap-c512 snapshots_offset 'eof+cs'
bad snap-off-unaligned snap-c512 snapshots_offset 'old+1'
bad bitmap-autoclear-off bitmap-c512 autoclear_features 0
bad v2-ext-type v2-c4k at:72:4 0x6803f857
bad extl2-comp-bitmap extl2-a-c16k at:$((3 * 16384 + 8)):8 1
bad extl2-alloc-and-zero extl2-b-c16k at:$((3 * 16384 + 56)):8 \
    0x00f0000000f00000
bad extl2-off0-alloc extl2-a-c16k at:$((3 * 16384 + 24)):8 0xff

# Snapshot table entries: the first entry's L1 size and extra data size
snap=$(/usr/bin/python3 -c 'import struct,sys
d=open(sys.argv[1],"rb").read(); print(struct.unpack(">Q", d[64:72])[0])' \
    "$out/good-snap-c512.qcow2")
bad snap-l1size-huge snap-c512 at:$((snap + 8)):4 0x7fffffff
bad snap-l1off-eof snap-c512 at:$((snap)):8 'eof+4096'
bad snap-extra-huge snap-c512 at:$((snap + 36)):4 0xffffffff
bad snap-name-huge snap-c512 at:$((snap + 14)):2 0xffff
bad snap-id-huge snap-c512 at:$((snap + 12)):2 0xffff

# Header extensions qemu-img 7.2 does not write for these images: a
# feature name table, an unknown extension (to be ignored), a LUKS crypto
# extension (header pointing past the end of the file).
feat() { printf '%02x%02x%s' "$1" "$2" "$(printf '%s' "$3" | od -An -tx1 |
    tr -d ' \n')"; printf '%0*d' $(( (46 - ${#3}) * 2 )) 0; }
cp "$out/good-data-c512.qcow2" "$out/good-features-c512.qcow2"
$poke "$out/good-features-c512.qcow2" ext "6803f857:$(feat 0 0 dirty bit)$(
    feat 0 1 corrupt bit)$(feat 1 0 lazy refcounts)$(feat 2 0 bitmaps)"
cp "$out/good-data-c512.qcow2" "$out/good-unknown-ext-c512.qcow2"
$poke "$out/good-unknown-ext-c512.qcow2" ext 12345678:0102030405
bad crypto-luks-ext data-c512 crypt_method 2 \
    ext 0537be77:0000000000010000$(printf '%016x' 4096)

n=$(find "$out" -maxdepth 1 -type f | wc -l)
echo "make-corpus: $n files in $out ($(du -sk "$out" | cut -f1) KiB)"
