#!/usr/bin/env bash
# bench/read.sh - time `vimg convert -O raw` against `qemu-img convert -O raw`.
#
# See bench/README.md.  Environment:
#   BENCH_SIZE    virtual size of every test image (default 4G; K/M/G/T suffixes,
#                 multiple of 1M)
#   BENCH_DIR     work dir for images and outputs (default bench/work)
#   BENCH_REPS    timed repetitions per tool and image (default 3; median taken)
#   BENCH_IMAGES  subset/order of images (default "dense sparse zlib zstd")
#   BENCH_SEED    generator seed (default 0x5eed2024)
#   VIMG          vimg binary (default build/tools/vimg/vimg)
#   VIMG_FLAGS    extra flags for `vimg convert`   (e.g. "-m 2")
#   QEMU_IMG      qemu-img binary (default qemu-img)
#   QEMU_FLAGS    extra flags for `qemu-img convert` (e.g. "-m 16 -W")
#   BENCH_GENERATE_ONLY=1  only generate the images, then exit
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_DIR=${BENCH_DIR:-$here/work}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_IMAGES=${BENCH_IMAGES:-dense sparse zlib zstd}
BENCH_SEED=${BENCH_SEED:-0x5eed2024}
VIMG=${VIMG:-$root/build/tools/vimg/vimg}
VIMG_FLAGS=${VIMG_FLAGS:-}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_FLAGS=${QEMU_FLAGS:-}

die() { echo "read.sh: $*" >&2; exit 2; }
log() { echo "# $*" >&2; }

# ---------------------------------------------------------------- arguments
parse_size() {
    local s=$1 n u
    [[ $s =~ ^([0-9]+)([kKmMgGtT]?)(i?[bB]?)$ ]] || return 1
    n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]}
    case $u in
        k|K) n=$((n << 10)) ;; m|M) n=$((n << 20)) ;;
        g|G) n=$((n << 30)) ;; t|T) n=$((n << 40)) ;;
    esac
    echo "$n"
}
size_bytes=$(parse_size "$BENCH_SIZE") || die "bad BENCH_SIZE '$BENCH_SIZE'"
((size_bytes > 0 && size_bytes % (1 << 20) == 0)) ||
    die "BENCH_SIZE must be a positive multiple of 1M"
[[ $BENCH_REPS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS '$BENCH_REPS'"
for img in $BENCH_IMAGES; do
    case $img in dense|sparse|zlib|zstd) ;; *) die "unknown image '$img'" ;; esac
done
BENCH_GENERATE_ONLY=${BENCH_GENERATE_ONLY:-0}
[[ -x $VIMG || $BENCH_GENERATE_ONLY == 1 ]] || die "vimg binary '$VIMG' not found (set VIMG=...)"
command -v "$QEMU_IMG" >/dev/null || die "qemu-img '$QEMU_IMG' not found"
command -v cc >/dev/null || die "a C compiler (cc) is needed for bench/gen.c"
read -r -a vimg_flags <<<"$VIMG_FLAGS"
read -r -a qemu_flags <<<"$QEMU_FLAGS"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

# ---------------------------------------------------------------- generation
gen_sum=$(sha1sum "$here/gen.c" | cut -c1-12)
imgdir=$BENCH_DIR/img-$size_bytes-$BENCH_SEED
gen=$BENCH_DIR/gen-$gen_sum

if [[ ! -x $gen ]]; then
    cc -O2 -o "$gen.tmp" "$here/gen.c" && mv "$gen.tmp" "$gen"
fi

# Images made by a different gen.c are stale.
if [[ -d $imgdir && "$(cat "$imgdir/GEN_VERSION" 2>/dev/null)" != "$gen_sum" ]]; then
    log "removing images made by an older gen.c: $imgdir"
    rm -rf "$imgdir"
fi
mkdir -p "$imgdir"
echo "$gen_sum" >"$imgdir/GEN_VERSION"

need_src=0
for img in $BENCH_IMAGES; do
    [[ $img != sparse && ! -f $imgdir/$img.qcow2 ]] && need_src=1
done
need_sparse=0
[[ " $BENCH_IMAGES " == *" sparse "* && ! -f $imgdir/sparse.qcow2 ]] && need_sparse=1

if ((need_src || need_sparse)); then
    avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -1)
    want=$((size_bytes * 5))
    ((avail > want)) ||
        log "WARNING: $((avail >> 30)) GiB free in $BENCH_DIR, generation + run may need ~$((want >> 30)) GiB"
fi

gen_t0=$EPOCHREALTIME
src=$imgdir/src.raw
if ((need_src)); then
    t0=$EPOCHREALTIME
    "$gen" "$src.tmp" "$size_bytes" dense "$BENCH_SEED"
    mv "$src.tmp" "$src"
    log "generated $src in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
fi

make_qcow2() {   # name, qemu-img convert args (before SRC DST)...
    local name=$1 dst=$imgdir/$1.qcow2 t0; shift
    [[ -f $dst ]] && return 0
    [[ " $BENCH_IMAGES " == *" $name "* ]] || return 0
    t0=$EPOCHREALTIME
    rm -f "$dst.tmp"
    "$QEMU_IMG" convert "$@" "$src" "$dst.tmp"
    mv "$dst.tmp" "$dst"
    log "generated $dst in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
}
if ((need_src)); then
    make_qcow2 dense -O qcow2
    # -W -m 8 lets qemu-img compress on both cores (~2x faster generation).
    make_qcow2 zlib -W -m 8 -c -O qcow2 -o compression_type=zlib
    make_qcow2 zstd -W -m 8 -c -O qcow2 -o compression_type=zstd
    rm -f "$src"
fi
if ((need_sparse)); then
    t0=$EPOCHREALTIME
    # Every other 1 MiB chunk is a hole; qemu-img leaves holes unallocated.
    "$gen" "$imgdir/sparse.raw" "$size_bytes" sparse "$BENCH_SEED"
    rm -f "$imgdir/sparse.qcow2.tmp"
    "$QEMU_IMG" convert -O qcow2 "$imgdir/sparse.raw" "$imgdir/sparse.qcow2.tmp"
    mv "$imgdir/sparse.qcow2.tmp" "$imgdir/sparse.qcow2"
    rm -f "$imgdir/sparse.raw"
    log "generated $imgdir/sparse.qcow2 in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
fi
if ((need_src || need_sparse)); then
    log "image generation took $(awk -v a="$gen_t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"
fi

((BENCH_GENERATE_ONLY == 1)) && exit 0

# ---------------------------------------------------------------- timing
out_q=$BENCH_DIR/out.qemu-img.raw
out_v=$BENCH_DIR/out.vimg.raw
errlog=$BENCH_DIR/last-error.log
cleanup() { rm -f "$out_q" "$out_v" "$BENCH_DIR/.times"; }
trap cleanup EXIT

# Sets $child_cpu to the CPU seconds (user+sys) used so far by waited-for
# children of this shell (the `times` builtin must run in this shell, not in
# a $(...) subshell, whose counters would be its own).
timesf=$BENCH_DIR/.times
get_child_cpu() {
    times >"$timesf"
    # second line: "XmY.YYYs XmY.YYYs" (children user, sys)
    child_cpu=$(awk 'NR == 2 { s = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
        printf "%.3f", s }' "$timesf")
}

# run TOOL IMG OUT -> sets $elapsed and $cpu (seconds); returns the tool's status
run() {
    local tool=$1 img=$2 out=$3 t0 t1 c0 c1 rc=0
    rm -f "$out"
    sync
    get_child_cpu; c0=$child_cpu
    if [[ $tool == qemu ]]; then
        t0=$EPOCHREALTIME
        "$QEMU_IMG" convert "${qemu_flags[@]}" -O raw "$img" "$out" 2>"$errlog" || rc=$?
        t1=$EPOCHREALTIME
    else
        t0=$EPOCHREALTIME
        "$VIMG" convert "${vimg_flags[@]}" -O raw "$img" "$out" 2>"$errlog" || rc=$?
        t1=$EPOCHREALTIME
    fi
    get_child_cpu; c1=$child_cpu
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}')
    return "$rc"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{
    if (NR % 2) printf "%.3f", v[(NR+1)/2]; else printf "%.3f", (v[NR/2]+v[NR/2+1])/2 }'; }

{
    echo "# vimg:     $VIMG ${VIMG_FLAGS:+(flags: $VIMG_FLAGS)}"
    echo "# qemu-img: $("$QEMU_IMG" --version | head -1) ${QEMU_FLAGS:+(flags: $QEMU_FLAGS)}"
    echo "# size:     $BENCH_SIZE ($size_bytes bytes), reps: $BENCH_REPS (median), cpus: $(nproc)"
    echo "# images:   $imgdir"
    echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN{exit !(l > 0.5)}'; then
    log "WARNING: load average $load1 before the run: other processes compete for the CPUs, expect noisy numbers"
fi

status=0
rows=() problems=()
for img in $BENCH_IMAGES; do
    f=$imgdir/$img.qcow2
    log "$img: $(du -h "$f" | cut -f1) on disk ($(stat -c %s "$f") bytes file size)"

    # Warm-up: pull the whole input into the page cache.
    cat "$f" >/dev/null

    # Untimed correctness pass: both outputs must be byte-identical.
    note=""
    if ! run qemu "$f" "$out_q"; then
        echo "read.sh: qemu-img failed on $f:" >&2; cat "$errlog" >&2
        rows+=("$img|-|-|-|-|QEMU-FAIL"); status=1; cleanup
        problems+=("$img: qemu-img failed: $(head -c 300 "$errlog" | tr '\n' ' ')")
        continue
    fi
    rc=0; run vimg "$f" "$out_v" || rc=$?
    if ((rc != 0)); then
        echo "read.sh: vimg failed (exit $rc) on $f:" >&2; cat "$errlog" >&2
        echo "  reproduce: $VIMG convert $VIMG_FLAGS -O raw $f /tmp/out.raw" >&2
        note=VIMG-FAIL; status=1
        problems+=("$img: vimg exit $rc: $(head -c 300 "$errlog" | tr '\n' ' ')")
    elif ! cmpout=$(cmp "$out_q" "$out_v" 2>&1); then
        echo "read.sh: MISMATCH on $f: $cmpout" >&2
        echo "  reproduce: $VIMG convert $VIMG_FLAGS -O raw $f /tmp/v.raw &&" \
             "$QEMU_IMG convert -O raw $f /tmp/q.raw && cmp /tmp/q.raw /tmp/v.raw" >&2
        note=MISMATCH; status=1
        problems+=("$img: output differs from qemu-img: $cmpout")
    else
        log "$img: outputs identical; allocated: qemu-img $(du -h "$out_q" | cut -f1)," \
            "vimg $(du -h "$out_v" | cut -f1)"
    fi
    cleanup

    # Timed passes, interleaved; order alternates each rep (q,v / v,q / ...).
    tq=() tv=() cq=() cv=()
    for ((rep = 1; rep <= BENCH_REPS; rep++)); do
        if ((rep % 2)); then order="qemu vimg"; else order="vimg qemu"; fi
        for tool in $order; do
            [[ $tool == vimg && -n $note ]] && continue
            if [[ $tool == qemu ]]; then
                run qemu "$f" "$out_q" || { cat "$errlog" >&2; die "qemu-img failed on $f"; }
                tq+=("$elapsed") cq+=("$cpu")
            else
                if ! run vimg "$f" "$out_v"; then
                    echo "read.sh: vimg failed in rep $rep on $f:" >&2; cat "$errlog" >&2
                    note=VIMG-FAIL; status=1
                    problems+=("$img: vimg failed in timed rep $rep: $(head -c 300 "$errlog" | tr '\n' ' ')")
                    continue
                fi
                tv+=("$elapsed") cv+=("$cpu")
            fi
            cleanup
        done
    done
    cleanup
    log "$img: qemu-img times: ${tq[*]}  (CPU s: ${cq[*]})"
    log "$img: vimg     times: ${tv[*]:-}  (CPU s: ${cv[*]:-})"
    mcq=$(median "${cq[@]}")

    mq=$(median "${tq[@]}")
    if [[ -n $note ]]; then
        rows+=("$img|$mq|-|$(awk -v s="$size_bytes" -v t="$mq" 'BEGIN{printf "%.2f", s/t/2^30}')|-|$note|$mcq|-")
    else
        mv=$(median "${tv[@]}")
        mcv=$(median "${cv[@]}")
        rows+=("$(awk -v i="$img" -v s="$size_bytes" -v q="$mq" -v v="$mv" 'BEGIN{
            printf "%s|%.3f|%.3f|%.2f|%.2f|%.2f", i, q, v, s/q/2^30, s/v/2^30, q/v }')|$mcq|$mcv")
    fi
done

echo
printf '%-8s %12s %10s %14s %12s %8s %12s %10s\n' image qemu-img_s vimg_s \
    qemu-img_GiB/s vimg_GiB/s ratio qemu-img_cpu vimg_cpu
for r in "${rows[@]}"; do
    IFS='|' read -r a b c d e g h i <<<"$r"
    printf '%-8s %12s %10s %14s %12s %8s %12s %10s\n' "$a" "$b" "$c" "$d" "$e" "$g" "$h" "$i"
done
echo "# ratio = qemu-img time / vimg time (>1: vimg faster); GiB/s = virtual size / wall time"
echo "# *_s = median wall seconds; *_cpu = median user+sys CPU seconds of the same runs"
echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${problems[@]}"; do echo "# PROBLEM: $p"; done
exit "$status"
