#!/usr/bin/env bash
# bench/corpus.sh - build (once) the real-data images the benchmarks use.
#
# See bench/README.md ("Data sets").  Environment:
#   BENCH_SIZE   virtual size of every image (default 4G; K/M/G suffix, multiple of 1M)
#   BENCH_DIR    cache directory (default /work/bench-data if it exists, else bench/work)
#   QEMU_IMG     qemu-img binary (default qemu-img)
#   CORPUS_SETS  data sets to build (default "bin ext4")
#
# Data sets, each of BENCH_SIZE bytes, in $BENCH_DIR/corpus-<bytes>/:
#   bin   1 GiB of /usr/bin and /usr/lib file contents (sorted by path,
#         concatenated), repeated to BENCH_SIZE (cut when smaller)
#   ext4  `mke2fs -t ext4 -d /usr/share` of a BENCH_SIZE file, as a VM disk
#         holds a file system (sparse where the file system is free)
# and for each NAME: NAME.raw, NAME.qcow2 (qemu-img convert -O qcow2, defaults),
# NAME.zlib.qcow2 and NAME.zstd.qcow2 (qemu-img convert -c, that compression type).
# Prints the directory on stdout.  Files are made under a .tmp name and
# renamed, so an interrupted run leaves nothing half made.
set -euo pipefail

bench_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=corpus.sh
# shellcheck source=bench/lib.sh
. "$bench_here/lib.sh"
bench_dirs
CORPUS_SETS=${CORPUS_SETS:-bin ext4}
size=$size_bytes
for s in $CORPUS_SETS; do
    case $s in bin|ext4) ;; *) die "unknown data set '$s'" ;; esac
done

dir=$BENCH_DIR/corpus-$size
mkdir -p "$dir"
base=$BENCH_DIR/corpus-bin-1g.raw   # shared by every size

# The 1 GiB base of the bin set: regular files only, in path order.
make_base() {
    [[ -f $base ]] && return 0
    local t0=$EPOCHREALTIME
    find /usr/bin /usr/lib -type f -size +0 -print0 2>/dev/null | LC_ALL=C sort -z |
        xargs -0 cat 2>/dev/null | head -c $((1 << 30)) >"$base.tmp" || true
    [[ $(stat -c %s "$base.tmp") -eq $((1 << 30)) ]] ||
        die "/usr/bin and /usr/lib hold less than 1 GiB"
    mv "$base.tmp" "$base"
    log "made $base in $(since "$t0") s"
}

make_bin_raw() {
    local out=$dir/bin.raw t0=$EPOCHREALTIME left
    [[ -f $out ]] && return 0
    make_base
    rm -f "$out.tmp"
    left=$size
    while ((left > 0)); do
        if ((left >= (1 << 30))); then cat "$base"; else head -c "$left" "$base"; fi
        left=$((left - (1 << 30)))
    done >"$out.tmp"
    mv "$out.tmp" "$out"
    log "made $out in $(since "$t0") s"
}

make_ext4_raw() {
    local out=$dir/ext4.raw t0=$EPOCHREALTIME
    [[ -f $out ]] && return 0
    command -v mke2fs >/dev/null || die "mke2fs (e2fsprogs) is needed for the ext4 data set"
    rm -f "$out.tmp"
    truncate -s "$size" "$out.tmp"
    # fixed UUID and hash seed: the same image on every machine with the same /usr/share
    E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -U 5eed2024-0000-4000-8000-000000000001 \
        -E hash_seed=5eed2024-0000-4000-8000-000000000002 -d /usr/share "$out.tmp" ||
        die "mke2fs -d /usr/share failed (the ext4 set needs BENCH_SIZE of about 2G or more: /usr/share holds ~1 GiB)"
    mv "$out.tmp" "$out"
    log "made $out in $(since "$t0") s ($(du -h "$out" | cut -f1) allocated)"
}

make_qcow2() {   # NAME SUFFIX qemu-img convert args...
    local name=$1 suffix=$2 out t0=$EPOCHREALTIME
    shift 2
    out=$dir/$name$suffix.qcow2
    [[ -f $out ]] && return 0
    rm -f "$out.tmp"
    "$QEMU_IMG" convert -f raw -O qcow2 "$@" "$dir/$name.raw" "$out.tmp"
    mv "$out.tmp" "$out"
    log "made $out in $(since "$t0") s"
}

for s in $CORPUS_SETS; do
    "make_${s}_raw"
    make_qcow2 "$s" ""
    # -W -m 8: qemu-img compresses on every core, generation only
    make_qcow2 "$s" .zlib -W -m 8 -c -o compression_type=zlib
    make_qcow2 "$s" .zstd -W -m 8 -c -o compression_type=zstd
done
echo "$dir"
