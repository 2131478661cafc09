#!/usr/bin/env bash
# bench/convert.sh - time `vimg convert -O qcow2` (and raw -> raw) against
# qemu-img on real data; then bench/compress.sh, if there, for the
# compressed outputs.
#
# See bench/README.md.  Environment: as read.sh (bench/lib.sh), and
#   BENCH_CASES     default "raw-qcow2 qcow2-qcow2"; also raw-raw, raw-zlib,
#                   raw-zstd (convert -c)
#   BENCH_STATES    page-cache states (default "new replace uncached"; all
#                   but new only for raw-qcow2 and raw-raw of BENCH_STATE_SETS)
#   BENCH_STATE_SETS  data sets with every page-cache state (default "bin")
# Prints a markdown table on stdout; details on stderr.  Exit status 0 only
# if every vimg output passed qemu-img check and compare.
set -euo pipefail

bench_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=convert.sh
# shellcheck source=bench/lib.sh
. "$bench_here/lib.sh"
bench_setup
BENCH_CASES=${BENCH_CASES:-raw-qcow2 qcow2-qcow2}
BENCH_STATE_SETS=${BENCH_STATE_SETS:-bin}
for c in $BENCH_CASES; do
    case $c in raw-qcow2|qcow2-qcow2|raw-raw|raw-zlib|raw-zstd) ;; *) die "unknown case '$c'" ;; esac
done
prepare_sets

for c in $BENCH_CASES; do
    case $c in
        raw-qcow2)   sform=raw   sfmt=raw   ofmt=qcow2 args=(-O qcow2) ;;
        qcow2-qcow2) sform=qcow2 sfmt=qcow2 ofmt=qcow2 args=(-O qcow2) ;;
        raw-raw)     sform=raw   sfmt=raw   ofmt=raw   args=(-O raw) ;;
        raw-zlib)    sform=raw   sfmt=raw   ofmt=qcow2 args=(-c -O qcow2 -o compression_type=zlib) ;;
        raw-zstd)    sform=raw   sfmt=raw   ofmt=qcow2 args=(-c -O qcow2 -o compression_type=zstd) ;;
    esac
    for set in $BENCH_SETS; do
        for state in $BENCH_STATES; do
            if [[ $state != new ]]; then
                [[ $c == raw-qcow2 || $c == raw-raw ]] || continue
                [[ " $BENCH_STATE_SETS " == *" $set "* ]] || continue
            fi
            bench_case "$sform -> ${c#*-}" "$set" "$state" "$(image_of "$set" "$sform")" \
                "$sfmt" "$ofmt" "${args[@]}"
        done
    done
done
bench_table "convert to qcow2 and raw -> raw: vimg and qemu-img (bench/convert.sh)"

# The compressed outputs' sizes and times, per data set (bench/compress.sh).
if [ -x "$bench_here/compress.sh" ]; then
    export BENCH_DIR BENCH_SIZE BENCH_REPS BENCH_SETS VIMG VIMG_FLAGS QEMU_IMG QEMU_FLAGS
    "$bench_here/compress.sh" || status=1
fi
exit "$status"
