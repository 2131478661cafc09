#!/usr/bin/env bash
# bench/compress.sh - `vimg convert -c` against `qemu-img convert -c` on
# real data: time (min / median / max over interleaved runs), CPU time,
# and the output sizes of both with their difference in percent.
#
# See bench/README.md ("Compressed output").  Environment: as convert.sh
# (bench/lib.sh: BENCH_DIR, BENCH_SIZE for the ext4 image, BENCH_REPS,
# VIMG, VIMG_FLAGS, QEMU_IMG, QEMU_FLAGS), and
#   COMPRESS_SIZE   size of the bin and text samples (default 256M)
#   COMPRESS_SETS   data sets (default "bin text ext4")
#   COMPRESS_CASES  default "zlib zstd zlib-fast": zlib and zstd at both
#                   tools' defaults; zlib-fast is vimg at
#                   -o compression_level=$COMPRESS_FAST_LEVEL (default 2)
#                   against qemu-img's default
# Both tools run with -W (out-of-order writes, as qemu-img needs to use
# its compression threads).  Prints a markdown table on stdout, details on
# stderr.  Exit status 0 only if every vimg output passed qemu-img check
# and compare.
set -euo pipefail

bench_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=compress.sh
# shellcheck source=bench/lib.sh
. "$bench_here/lib.sh"
bench_setup
COMPRESS_SIZE=${COMPRESS_SIZE:-256M}
COMPRESS_SETS=${COMPRESS_SETS:-bin text ext4}
COMPRESS_CASES=${COMPRESS_CASES:-zlib zstd zlib-fast}
COMPRESS_FAST_LEVEL=${COMPRESS_FAST_LEVEL:-2}
sample=$(parse_size "$COMPRESS_SIZE") || die "bad COMPRESS_SIZE '$COMPRESS_SIZE'"
((sample > 0 && sample % (1 << 20) == 0)) || die "COMPRESS_SIZE must be a positive multiple of 1M"
for s in $COMPRESS_SETS; do
    case $s in bin|text|ext4) ;; *) die "unknown data set '$s'" ;; esac
done
for c in $COMPRESS_CASES; do
    case $c in zlib|zstd|zlib-fast) ;; *) die "unknown case '$c'" ;; esac
done

sample_dir=$BENCH_DIR/compress-$sample
mkdir -p "$sample_dir"

# FILE.once repeated to exactly $sample bytes into FILE.
fill_to_sample() {
    local file=$1 once=$1.once
    [[ -s $once ]] || die "no data for $file"
    rm -f "$file.tmp"
    while [[ $(stat -c %s "$file.tmp" 2>/dev/null || echo 0) -lt $sample ]]; do
        cat "$once" >>"$file.tmp"
    done
    truncate -s "$sample" "$file.tmp"
    rm -f "$once"
    mv "$file.tmp" "$file"
}

# bin: /usr/bin and /usr/lib file contents in path order (as corpus.sh);
# text: documentation and man pages, uncompressed, in path order.
make_sample() {
    local set=$1 out=$sample_dir/$1.raw t0=$EPOCHREALTIME
    [[ -f $out ]] && return 0
    case $set in
        bin)
            find /usr/bin /usr/lib -type f -size +0 -print0 2>/dev/null | LC_ALL=C sort -z |
                xargs -0 cat 2>/dev/null | head -c "$sample" >"$out.once" || true ;;
        text)
            {
                find /usr/share/doc -type f ! -name '*.gz' -print0 | LC_ALL=C sort -z |
                    xargs -0 cat 2>/dev/null
                find /usr/share/man /usr/share/doc -type f -name '*.gz' -print0 |
                    LC_ALL=C sort -z | xargs -0 zcat -f 2>/dev/null
            } | head -c "$sample" >"$out.once" || true ;;
    esac
    fill_to_sample "$out"
    log "made $out in $(since "$t0") s"
}

source_of() {
    case $1 in
        ext4) echo "$corpus_dir/ext4.raw" ;;
        *) echo "$sample_dir/$1.raw" ;;
    esac
}

if [[ " $COMPRESS_SETS " == *" ext4 "* ]]; then
    corpus_dir=$(BENCH_DIR=$BENCH_DIR BENCH_SIZE=$BENCH_SIZE QEMU_IMG=$QEMU_IMG \
        CORPUS_SETS=ext4 bash "$bench_here/corpus.sh") || die "corpus.sh failed"
fi
for set in $COMPRESS_SETS; do
    [[ $set == ext4 ]] || make_sample "$set"
done

# compress_case SET CASE: BENCH_REPS interleaved runs of each tool; a row.
compress_case() {
    local set=$1 c=$2 src t0=$EPOCHREALTIME rep tool order why note=""
    local tq=() tv=() cq=() cv=() sq=- sv=- label
    local qargs=(-W -c -f raw -O qcow2) vargs=(-W -c -f raw -O qcow2)
    src=$(source_of "$set")
    case $c in
        zlib) qargs+=(-o compression_type=zlib) vargs+=(-o compression_type=zlib) label=zlib ;;
        zstd) qargs+=(-o compression_type=zstd) vargs+=(-o compression_type=zstd) label=zstd ;;
        zlib-fast)
            qargs+=(-o compression_type=zlib)
            vargs+=(-o "compression_type=zlib,compression_level=$COMPRESS_FAST_LEVEL")
            label="zlib (vimg compression_level=$COMPRESS_FAST_LEVEL)" ;;
    esac
    cat "$src" >/dev/null # warm the source
    for ((rep = 1; rep <= BENCH_REPS; rep++)); do
        if ((rep % 2)); then order="qemu vimg"; else order="vimg qemu"; fi
        for tool in $order; do
            local out=$out_q args=("${qargs[@]}")
            [[ $tool == vimg ]] && out=$out_v args=("${vargs[@]}")
            [[ $tool == vimg && -n $note ]] && continue
            prepare new "$out" "$src"
            if ! run "$tool" "$src" "$out" "${args[@]}"; then
                if [[ $tool == qemu ]]; then
                    cat "$errlog" >&2
                    die "qemu-img failed: $QEMU_IMG convert ${args[*]} $src OUT"
                fi
                note=VIMG-FAIL status=1
                problems+=("$set, $label: vimg failed: $(head -c 300 "$errlog" | tr '\n' ' ')")
                continue
            fi
            if [[ $tool == qemu ]]; then tq+=("$elapsed") cq+=("$cpu"); else tv+=("$elapsed") cv+=("$cpu"); fi
            ((rep == 1)) || continue
            if [[ $tool == qemu ]]; then
                sq=$(stat -c %s "$out")
            else
                sv=$(stat -c %s "$out")
                if ! why=$(validate "$out" qcow2 "$src" raw); then
                    note=INVALID status=1
                    problems+=("$set, $label: vimg's output is wrong: $why")
                    echo "  reproduce: $VIMG convert ${args[*]} $src /tmp/out" >&2
                fi
            fi
        done
    done
    rm -f "$out_q" "$out_v"
    log "$set, $label: qemu-img ${tq[*]} s (CPU ${cq[*]}); vimg ${tv[*]:-} s (CPU ${cv[*]:-}); case $(since "$t0") s"
    local ratio=$note vs=- vc=- diff=-
    if [[ -z $note ]]; then
        ratio=$(awk -v q="$(median "${tq[@]}")" -v v="$(median "${tv[@]}")" 'BEGIN{printf "%.2fx", q/v}')
        diff=$(awk -v q="$sq" -v v="$sv" 'BEGIN{printf "%+.2f%%", (v-q)*100/q}')
        vs=$(stats "${tv[@]}") vc=$(median "${cv[@]}")
    fi
    local sizes
    sizes=$(awk -v q="$sq" -v v="$sv" 'BEGIN{
        printf "%.1f / %s", q / 1048576, v == "-" ? "-" : sprintf("%.1f", v / 1048576) }')
    rows+=("| $set | $label | $(stats "${tq[@]}") | $vs | **$ratio** | $(median "${cq[@]}") / $vc | $sizes | **$diff** |")
}

for set in $COMPRESS_SETS; do
    for c in $COMPRESS_CASES; do
        compress_case "$set" "$c"
    done
done

cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "### Compressed output: vimg convert -c and qemu-img convert -c (bench/compress.sh)"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'); ${cpu_model:-unknown CPU}, $(nproc) CPUs;" \
     "$("$QEMU_IMG" --version | head -1 | sed 's/ (.*//');" \
     "vimg $(git -C "$bench_here" describe --always --dirty 2>/dev/null || echo unknown);" \
     "bin and text: $COMPRESS_SIZE samples, ext4: the $BENCH_SIZE image of /usr/share;" \
     "both tools with -W, 64 KiB clusters; $BENCH_REPS interleaved runs per tool;" \
     "load average $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end; $(since "$run_t0") s in all."
echo
echo "| data | compression | qemu-img s (min / median / max) | vimg s (min / median / max) | speed-up | CPU s, median (qemu-img / vimg) | output MiB (qemu-img / vimg) | vimg's size vs qemu-img's |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "speed-up = qemu-img median / vimg median (above 1: vimg is faster); sizes are the" \
     "output files' (first run); a negative difference: vimg's output is smaller."
for p in "${problems[@]}"; do echo "PROBLEM: $p"; done
exit "$status"
