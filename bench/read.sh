#!/usr/bin/env bash
# bench/read.sh - time `vimg convert -O raw` against `qemu-img convert -O raw`
# (reading qcow2: dense, compressed, sparse) on real data.
#
# See bench/README.md.  Environment (shared with convert.sh, see bench/lib.sh):
#   BENCH_SIZE      virtual size of every image (default 4G; multiple of 1M)
#   BENCH_DIR       images and outputs (default /work/bench-data if it exists,
#                   else bench/work)
#   BENCH_REPS      timed runs per tool and row, interleaved (default 3)
#   BENCH_SETS      data sets (default "bin ext4 gen"; see corpus.sh, gen.c)
#   BENCH_WORKLOADS source images (default "dense zlib zstd sparse"; sparse is
#                   gen's only)
#   BENCH_STATES    page-cache states (default "new replace uncached"; all
#                   but new only for the dense workload of BENCH_STATE_SETS)
#   BENCH_STATE_SETS  data sets with every page-cache state (default "bin")
#   BENCH_SEED      gen.c's seed (default 0x5eed2024)
#   VIMG, VIMG_FLAGS, QEMU_IMG, QEMU_FLAGS   the tools and extra convert flags
# Prints a markdown table on stdout; details on stderr.  Exit status 0 only
# if every vimg output was right.
set -euo pipefail

bench_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=read.sh
# shellcheck source=bench/lib.sh
. "$bench_here/lib.sh"
bench_setup
BENCH_WORKLOADS=${BENCH_WORKLOADS:-dense zlib zstd sparse}
BENCH_STATE_SETS=${BENCH_STATE_SETS:-bin}
for w in $BENCH_WORKLOADS; do
    case $w in dense|zlib|zstd|sparse) ;; *) die "unknown workload '$w'" ;; esac
done
prepare_sets

for w in $BENCH_WORKLOADS; do
    for set in $BENCH_SETS; do
        [[ $w == sparse && $set != gen ]] && continue
        form=$w
        [[ $w == dense ]] && form=qcow2
        for state in $BENCH_STATES; do
            if [[ $state != new ]]; then
                [[ $w == dense && " $BENCH_STATE_SETS " == *" $set "* ]] || continue
            fi
            bench_case "$w qcow2 -> raw" "$set" "$state" "$(image_of "$set" "$form")" \
                qcow2 raw -O raw
        done
    done
done
bench_table "convert to raw: vimg and qemu-img (bench/read.sh)"
exit "$status"
