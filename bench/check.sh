#!/usr/bin/env bash
# bench/check.sh - time `vimg check` against `qemu-img check`.
#
# See bench/README.md ("Check benchmark").  Environment:
#   BENCH_DIR      work dir for images (default bench/work)
#   BENCH_REPS     timed repetitions per tool, scrambled image (default 3; median)
#   BENCH_REPS_SHORT  the same for the fast prealloc-100g case (default 9)
#   BENCH_CASES    subset/order of cases (default "scrambled prealloc-100g")
#   BENCH_CLUSTERS guest clusters of 512 bytes in the scrambled image
#                  (default 1048576: 512 MiB virtual)
#   BENCH_SEED     permutation seed (default 0x5eed2024)
#   VIMG           vimg binary (default build/tools/vimg/vimg)
#   VIMG_FLAGS     extra flags for `vimg check`
#   QEMU_IMG       qemu-img binary (default qemu-img)
#   QEMU_FLAGS     extra flags for `qemu-img check`
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

BENCH_DIR=${BENCH_DIR:-$here/work}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_REPS_SHORT=${BENCH_REPS_SHORT:-9}
BENCH_CASES=${BENCH_CASES:-scrambled prealloc-100g}
BENCH_CLUSTERS=${BENCH_CLUSTERS:-1048576}
BENCH_SEED=${BENCH_SEED:-0x5eed2024}
VIMG=${VIMG:-$root/build/tools/vimg/vimg}
VIMG_FLAGS=${VIMG_FLAGS:-}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_FLAGS=${QEMU_FLAGS:-}

die() { echo "check.sh: $*" >&2; exit 2; }
log() { echo "# $*" >&2; }
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }

# ---------------------------------------------------------------- arguments
[[ $BENCH_REPS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS '$BENCH_REPS'"
[[ $BENCH_REPS_SHORT =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS_SHORT '$BENCH_REPS_SHORT'"
[[ $BENCH_CLUSTERS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_CLUSTERS '$BENCH_CLUSTERS'"
for c in $BENCH_CASES; do
    case $c in scrambled|prealloc-100g) ;; *) die "unknown case '$c'" ;; esac
done
[[ -n ${BENCH_CASES// /} ]] || die "BENCH_CASES is empty"
[[ -x $VIMG ]] || die "vimg binary '$VIMG' not found (set VIMG=...)"
command -v "$QEMU_IMG" >/dev/null || die "qemu-img '$QEMU_IMG' not found"
command -v cc >/dev/null || die "a C compiler (cc) is needed for bench/check-gen.c"
command -v python3 >/dev/null || die "python3 is needed to compare the JSON reports"
# GNU time gives the peak resident set size (%M)
if [[ ! -x /usr/bin/time ]]; then
    "$root/scripts/install-deps.sh" time || die "/usr/bin/time missing (apt-get install time)"
fi
read -r -a vimg_flags <<<"$VIMG_FLAGS"
read -r -a qemu_flags <<<"$QEMU_FLAGS"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

# ---------------------------------------------------------------- images
gen_sum=$(sha1sum "$here/check-gen.c" | cut -c1-12)
gen=$BENCH_DIR/check-gen-$gen_sum
imgdir=$BENCH_DIR/check-$BENCH_CLUSTERS-$BENCH_SEED
[[ -x $gen ]] || { cc -O2 -o "$gen.tmp" "$here/check-gen.c" && mv "$gen.tmp" "$gen"; }
# Images made by a different check-gen.c are stale.
if [[ -d $imgdir && "$(cat "$imgdir/GEN_VERSION" 2>/dev/null)" != "$gen_sum" ]]; then
    log "check-gen.c changed: removing old images in $imgdir"
    rm -rf "$imgdir"
fi
mkdir -p "$imgdir"
echo "$gen_sum" >"$imgdir/GEN_VERSION"

image_of() {
    case $1 in
        scrambled)     echo "$imgdir/scrambled.qcow2" ;;
        prealloc-100g) echo "$BENCH_DIR/prealloc-100g.qcow2" ;;
    esac
}

for c in $BENCH_CASES; do
    f=$(image_of "$c")
    [[ -f $f ]] && continue
    t0=$EPOCHREALTIME
    rm -f "$f.tmp"
    case $c in
        scrambled)
            # ~1M clusters of 512 bytes written in a random order: L2
            # tables, refcount blocks and data interleave (see check-gen.c)
            "$gen" "$f.tmp" $((BENCH_CLUSTERS * 512)) 9 "$BENCH_SEED" ;;
        prealloc-100g)
            "$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata "$f.tmp" 100G ;;
    esac
    mv "$f.tmp" "$f"
    log "generated $f in $(secs_since "$t0") s"
done

# ---------------------------------------------------------------- timing
out=$BENCH_DIR/check-out
tf=$BENCH_DIR/.check-time
err_q=$BENCH_DIR/last-error.qemu-img.log
err_v=$BENCH_DIR/last-error.vimg.log
trap 'rm -f "$out.qemu" "$out.vimg" "$tf"' EXIT

# run TOOL IMG [ARGS...] -> sets $elapsed (wall s), $cpu (user+sys s),
# $rss (peak resident KiB); stdout to $out.TOOL; returns the tool's status
run() {
    local tool=$1 img=$2 t0 t1 rc=0 bin; shift 2
    if [[ $tool == qemu ]]; then
        t0=$EPOCHREALTIME
        /usr/bin/time -f '%M %U %S' -o "$tf" \
            "$QEMU_IMG" check "${qemu_flags[@]}" "$@" "$img" >"$out.qemu" 2>"$err_q" || rc=$?
        t1=$EPOCHREALTIME
    else
        t0=$EPOCHREALTIME
        /usr/bin/time -f '%M %U %S' -o "$tf" \
            "$VIMG" check "${vimg_flags[@]}" "$@" "$img" >"$out.vimg" 2>"$err_v" || rc=$?
        t1=$EPOCHREALTIME
    fi
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    # the last line: time prints "Command exited with non-zero status" first
    read -r rss u s < <(tail -1 "$tf")
    cpu=$(awk -v u="$u" -v s="$s" 'BEGIN{printf "%.2f", u+s}')
    return "$rc"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{
    if (NR % 2) printf "%.3f", v[(NR+1)/2]; else printf "%.3f", (v[NR/2]+v[NR/2+1])/2 }'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

{
    echo "# vimg:     $VIMG ${VIMG_FLAGS:+(flags: $VIMG_FLAGS)}"
    echo "# qemu-img: $("$QEMU_IMG" --version | head -1) ${QEMU_FLAGS:+(flags: $QEMU_FLAGS)}"
    echo "# reps:     $BENCH_REPS (scrambled), $BENCH_REPS_SHORT (prealloc-100g), median; cpus: $(nproc)"
    echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN{exit !(l > 0.5)}'; then
    log "WARNING: load average $load1 before the run: other processes compete for the CPUs, expect noisy numbers"
fi

status=0
rows=() problems=()
for c in $BENCH_CASES; do
    f=$(image_of "$c")
    reps=$BENCH_REPS
    [[ $c == prealloc-100g ]] && reps=$BENCH_REPS_SHORT
    log "$c: $f: $(stat -c %s "$f") bytes, $(du -h "$f" | cut -f1) allocated"
    # Warm-up: the scrambled image's metadata is spread over the whole
    # file, so read all of it (the 100 GiB preallocated one is sparse and
    # its metadata is read by the untimed pass below).
    [[ $c == scrambled ]] && cat "$f" >/dev/null

    # Untimed correctness pass: both exit 0 with the same JSON report.
    note=""
    if ! run qemu "$f" --output=json; then
        echo "check.sh: qemu-img check failed on $f:" >&2; cat "$err_q" >&2
        rows+=("$c|-|-|QEMU-FAIL|-|-|-|-"); status=1
        problems+=("$c: qemu-img check exit $?: $(head -c 300 "$err_q" | tr '\n' ' ')")
        continue
    fi
    log "$c: qemu-img check: $(tr -d ' \n' <"$out.qemu")"
    rc=0; run vimg "$f" --output=json || rc=$?
    if ((rc != 0)); then
        echo "check.sh: vimg check failed (exit $rc) on $f:" >&2; head -20 "$err_v" >&2
        echo "  reproduce: $VIMG check $VIMG_FLAGS $f" >&2
        note=VIMG-FAIL; status=1
        problems+=("$c: vimg exit $rc: $(head -c 300 "$err_v" | tr '\n' ' ')")
    elif ! python3 -c 'import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
sys.exit(a != b)' "$out.qemu" "$out.vimg" 2>/dev/null; then
        echo "check.sh: MISMATCH on $f: qemu-img: $(tr -d ' \n' <"$out.qemu")" \
             "vimg: $(tr -d ' \n' <"$out.vimg")" >&2
        echo "  reproduce: $VIMG check --output=json $f; $QEMU_IMG check --output=json $f" >&2
        note=MISMATCH; status=1
        problems+=("$c: vimg check --output=json differs from qemu-img's")
    else
        log "$c: JSON reports identical"
    fi

    # Timed passes, interleaved; the order alternates each rep.
    tq=() tv=() cq=() cv=() mq=() mv=()
    for ((rep = 1; rep <= reps; rep++)); do
        if ((rep % 2)); then order="qemu vimg"; else order="vimg qemu"; fi
        for tool in $order; do
            [[ $tool == vimg && $note == VIMG-FAIL ]] && continue
            if [[ $tool == qemu ]]; then
                run qemu "$f" || { cat "$err_q" >&2; die "qemu-img check failed on $f"; }
                tq+=("$elapsed") cq+=("$cpu") mq+=("$rss")
            else
                if ! run vimg "$f"; then
                    echo "check.sh: vimg failed in rep $rep on $f:" >&2; head -20 "$err_v" >&2
                    note=VIMG-FAIL; status=1
                    problems+=("$c: vimg failed in timed rep $rep")
                    continue
                fi
                tv+=("$elapsed") cv+=("$cpu") mv+=("$rss")
            fi
        done
    done
    log "$c: qemu-img times: ${tq[*]}  (CPU s: ${cq[*]}; peak KiB: ${mq[*]})"
    log "$c: vimg     times: ${tv[*]:-}  (CPU s: ${cv[*]:-}; peak KiB: ${mv[*]:-})"
    q=$(median "${tq[@]}")
    if ((${#tv[@]} == 0)); then
        rows+=("$c|$q|-|${note:-VIMG-FAIL}|$(mib "$(max "${mq[@]}")")|-|$(median "${cq[@]}")|-")
        continue
    fi
    v=$(median "${tv[@]}")
    ratio=$(awk -v q="$q" -v v="$v" 'BEGIN{printf "%.2f", q/v}')
    [[ -n $note ]] && ratio="$ratio($note)"
    rows+=("$c|$q|$v|$ratio|$(mib "$(max "${mq[@]}")")|$(mib "$(max "${mv[@]}")")|$(median "${cq[@]}")|$(median "${cv[@]}")")
done

echo
printf '%-14s %11s %9s %8s %13s %10s %12s %9s\n' case qemu-img_s vimg_s ratio \
    qemu-img_MiB vimg_MiB qemu-img_cpu vimg_cpu
for r in "${rows[@]}"; do
    IFS='|' read -r a b c d e f g h <<<"$r"
    printf '%-14s %11s %9s %8s %13s %10s %12s %9s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h"
done
echo "# ratio = qemu-img time / vimg time (>1: vimg faster); *_s = median wall seconds"
echo "# *_MiB = peak resident memory (max over the runs, GNU time %M); *_cpu = median user+sys s"
echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${problems[@]}"; do echo "# PROBLEM: $p"; done
exit "$status"
