#!/usr/bin/env bash
# bench/convert.sh - time `vimg convert -O qcow2` against `qemu-img convert -O qcow2`.
#
# See bench/README.md ("Convert benchmark").  Environment (shared with read.sh):
#   BENCH_SIZE    virtual size of the source image (default 4G; K/M/G/T suffixes,
#                 multiple of 1M)
#   BENCH_DIR     work dir for images and outputs (default bench/work)
#   BENCH_REPS    timed repetitions per tool, uncompressed cases (default 3; median)
#   BENCH_REPS_COMPRESSED  the same for the compressed cases (default 1)
#   BENCH_CASES   subset/order of cases
#                 (default "raw-qcow2 qcow2-qcow2 raw-zlib raw-zstd")
#   BENCH_SEED    generator seed (default 0x5eed2024)
#   VIMG          vimg binary (default build/tools/vimg/vimg)
#   VIMG_FLAGS    extra flags for `vimg convert`   (e.g. "-m 2")
#   QEMU_IMG      qemu-img binary (default qemu-img)
#   QEMU_FLAGS    extra flags for `qemu-img convert` (e.g. "-m 16 -W")
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

BENCH_SIZE=${BENCH_SIZE:-4G}
BENCH_DIR=${BENCH_DIR:-$here/work}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_REPS_COMPRESSED=${BENCH_REPS_COMPRESSED:-1}
BENCH_CASES=${BENCH_CASES:-raw-qcow2 qcow2-qcow2 raw-zlib raw-zstd}
BENCH_SEED=${BENCH_SEED:-0x5eed2024}
VIMG=${VIMG:-$root/build/tools/vimg/vimg}
VIMG_FLAGS=${VIMG_FLAGS:-}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_FLAGS=${QEMU_FLAGS:-}

die() { echo "convert.sh: $*" >&2; exit 2; }
log() { echo "# $*" >&2; }
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }

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
[[ $BENCH_REPS_COMPRESSED =~ ^[1-9][0-9]*$ ]] ||
    die "bad BENCH_REPS_COMPRESSED '$BENCH_REPS_COMPRESSED'"
for c in $BENCH_CASES; do
    case $c in raw-qcow2|qcow2-qcow2|raw-zlib|raw-zstd) ;; *) die "unknown case '$c'" ;; esac
done
[[ -n ${BENCH_CASES// /} ]] || die "BENCH_CASES is empty"
[[ -x $VIMG ]] || die "vimg binary '$VIMG' not found (set VIMG=...)"
command -v "$QEMU_IMG" >/dev/null || die "qemu-img '$QEMU_IMG' not found"
read -r -a vimg_flags <<<"$VIMG_FLAGS"
read -r -a qemu_flags <<<"$QEMU_FLAGS"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

# ---------------------------------------------------------------- source images
# read.sh owns generation: it makes (or reuses) dense.qcow2 in the same
# image directory, and wipes that directory when gen.c changes, which also
# removes the raw copy kept here.
BENCH_GENERATE_ONLY=1 BENCH_IMAGES=dense BENCH_SIZE=$BENCH_SIZE \
    BENCH_DIR=$BENCH_DIR BENCH_SEED=$BENCH_SEED QEMU_IMG=$QEMU_IMG \
    "$here/read.sh" || die "image generation (read.sh) failed"
gen_sum=$(sha1sum "$here/gen.c" | cut -c1-12)
imgdir=$BENCH_DIR/img-$size_bytes-$BENCH_SEED
src_qcow2=$imgdir/dense.qcow2
src_raw=$imgdir/dense.raw
[[ -f $src_qcow2 && "$(cat "$imgdir/GEN_VERSION")" == "$gen_sum" ]] ||
    die "read.sh did not produce $src_qcow2"

need_raw=0
for c in $BENCH_CASES; do [[ $c == raw-* ]] && need_raw=1; done
avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -1)
want=$((size_bytes * 2))
((need_raw)) && [[ ! -f $src_raw ]] && want=$((want + size_bytes))
((avail > want)) ||
    log "WARNING: $((avail >> 30)) GiB free in $BENCH_DIR, the run may need ~$((want >> 30)) GiB"
if ((need_raw)) && [[ ! -f $src_raw ]]; then
    # Same bytes as dense.qcow2 (and as gen's output): every 4 KiB block is
    # non-zero, so the raw file is fully allocated.
    t0=$EPOCHREALTIME
    rm -f "$src_raw.tmp"
    "$QEMU_IMG" convert -f qcow2 -O raw "$src_qcow2" "$src_raw.tmp"
    mv "$src_raw.tmp" "$src_raw"
    log "generated $src_raw in $(secs_since "$t0") s"
fi

# ---------------------------------------------------------------- timing
out_q=$BENCH_DIR/out.qemu-img.qcow2
out_v=$BENCH_DIR/out.vimg.qcow2
err_q=$BENCH_DIR/last-error.qemu-img.log
err_v=$BENCH_DIR/last-error.vimg.log
timesf=$BENCH_DIR/.times
cleanup() { rm -f "$out_q" "$out_v"; }
trap 'cleanup; rm -f "$timesf"' EXIT

# Sets $child_cpu to the CPU seconds (user+sys) used so far by waited-for
# children of this shell (`times` must run in this shell, not in $(...)).
get_child_cpu() {
    times >"$timesf"
    child_cpu=$(awk 'NR == 2 { s = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
        printf "%.3f", s }' "$timesf")
}

# Per case: source file, its format, convert arguments (same for both tools),
# expected compression type of the output ("" = uncompressed).
case_setup() {
    case $1 in
        raw-qcow2)   src=$src_raw   sfmt=raw   cargs=(-O qcow2)    ctype="" ;;
        qcow2-qcow2) src=$src_qcow2 sfmt=qcow2 cargs=(-O qcow2)    ctype="" ;;
        raw-zlib)    src=$src_raw   sfmt=raw   cargs=(-c -O qcow2) ctype=zlib ;;
        raw-zstd)    src=$src_raw   sfmt=raw   cargs=(-c -O qcow2 -o compression_type=zstd)
                     ctype=zstd ;;
    esac
}

# run TOOL OUT -> sets $elapsed and $cpu (seconds); returns the tool's status.
# Uses $src and $cargs from case_setup.
run() {
    local tool=$1 out=$2 t0 t1 c0 c1 rc=0
    rm -f "$out"
    sync
    get_child_cpu; c0=$child_cpu
    if [[ $tool == qemu ]]; then
        t0=$EPOCHREALTIME
        "$QEMU_IMG" convert "${qemu_flags[@]}" "${cargs[@]}" "$src" "$out" 2>"$err_q" || rc=$?
        t1=$EPOCHREALTIME
    else
        t0=$EPOCHREALTIME
        "$VIMG" convert "${vimg_flags[@]}" "${cargs[@]}" "$src" "$out" 2>"$err_v" || rc=$?
        t1=$EPOCHREALTIME
    fi
    get_child_cpu; c1=$child_cpu
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}')
    return "$rc"
}

# validate NAME OUT -> 0 if OUT passes `qemu-img check`, has the expected
# compression type and compares identical to $src; else appends to $verr.
validate() {
    local name=$1 out=$2 o rc t
    rc=0; o=$("$QEMU_IMG" check -f qcow2 "$out" 2>&1) || rc=$?
    if ((rc != 0)); then
        verr+="$name: qemu-img check exit $rc: $(tr '\n' ' ' <<<"$o" | head -c 300); "
        return 1
    fi
    log "$c: $name: check: $(grep -E 'allocated' <<<"$o" || true)"
    t=$("$QEMU_IMG" info -f qcow2 --output=json "$out" |
        sed -n 's/.*"compression-type": *"\([a-z0-9]*\)".*/\1/p')
    if [[ -n $ctype && $t != "$ctype" ]]; then
        verr+="$name: compression type '$t', expected '$ctype'; "
        return 1
    fi
    rc=0; o=$("$QEMU_IMG" compare -f "$sfmt" -F qcow2 "$src" "$out" 2>&1) || rc=$?
    if ((rc != 0)) || [[ $o != *"Images are identical."* ]]; then
        verr+="$name: qemu-img compare exit $rc: $(tr '\n' ' ' <<<"$o" | head -c 300); "
        return 1
    fi
    return 0
}

mib() { [[ -n $1 ]] && awk -v b="$1" 'BEGIN{printf "%.1f", b/2^20}' || echo -; }
cr() { [[ -n $1 ]] && awk -v b="$1" -v s="$size_bytes" 'BEGIN{printf "%.3f", b/s}' || echo -; }
# check_output NAME OUT CMD SIZE: validate OUT (made by CMD), log its size;
# on failure record a problem with a reproducer and return 1.
check_output() {
    local name=$1 out=$2 cmd=$3 size=$4 t0=$EPOCHREALTIME
    verr=""
    if validate "$name" "$out"; then
        log "$c: $name: passes qemu-img check${ctype:+, compression type $ctype}," \
            "compares identical to the source"
    else
        echo "convert.sh: $c: validation failed: $verr" >&2
        echo "  reproduce: $cmd ${cargs[*]} $src /tmp/out.qcow2 &&" \
             "$QEMU_IMG check /tmp/out.qcow2 &&" \
             "$QEMU_IMG info /tmp/out.qcow2 | grep 'compression type' &&" \
             "$QEMU_IMG compare -f $sfmt -F qcow2 $src /tmp/out.qcow2" >&2
        problems+=("$c: $verr")
        status=1
    fi
    log "$c: $name: output $size bytes ($(du -h "$out" | cut -f1) allocated)," \
        "output size / virtual size $(cr "$size") [validation $(secs_since "$t0") s]"
    [[ -z $verr ]]
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{
    if (NR % 2) printf "%.3f", v[(NR+1)/2]; else printf "%.3f", (v[NR/2]+v[NR/2+1])/2 }'; }

{
    echo "# vimg:     $VIMG ${VIMG_FLAGS:+(flags: $VIMG_FLAGS)}"
    echo "# qemu-img: $("$QEMU_IMG" --version | head -1) ${QEMU_FLAGS:+(flags: $QEMU_FLAGS)}"
    echo "# size:     $BENCH_SIZE ($size_bytes bytes), reps: $BENCH_REPS" \
         "(compressed: $BENCH_REPS_COMPRESSED) (median), cpus: $(nproc)"
    echo "# images:   $imgdir"
    echo "# loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}
load1=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load1" 'BEGIN{exit !(l > 0.5)}'; then
    log "WARNING: load average $load1 before the run: other processes compete for the CPUs, expect noisy numbers"
fi

status=0
rows=() problems=()
run_t0=$EPOCHREALTIME
for c in $BENCH_CASES; do
    case_setup "$c"
    case_t0=$EPOCHREALTIME
    reps=$BENCH_REPS
    [[ -n $ctype ]] && reps=$BENCH_REPS_COMPRESSED
    log "$c: source $src ($(du -h "$src" | cut -f1) on disk), args: ${cargs[*]}, reps: $reps"

    # Warm-up: pull the whole input into the page cache.
    cat "$src" >/dev/null

    # Timed passes, interleaved; order alternates each rep (q,v / v,q / ...).
    # In rep 1 each output is validated (untimed) and measured right after
    # its run, then deleted, so every timed run starts with only the source
    # in the work dir; later reps just delete their output.
    tq=() tv=() cq=() cv=() note="" sq="" sv=""
    for ((rep = 1; rep <= reps; rep++)); do
        if ((rep % 2)); then order="qemu vimg"; else order="vimg qemu"; fi
        for tool in $order; do
            if [[ $tool == qemu ]]; then
                if ! run qemu "$out_q"; then
                    cat "$err_q" >&2
                    die "qemu-img failed: $QEMU_IMG convert $QEMU_FLAGS ${cargs[*]} $src $out_q"
                fi
                tq+=("$elapsed") cq+=("$cpu")
                if ((rep == 1)); then
                    sq=$(stat -c %s "$out_q")
                    check_output qemu-img "$out_q" "$QEMU_IMG convert $QEMU_FLAGS" "$sq" || true
                fi
                rm -f "$out_q"
            else
                [[ -n $note ]] && continue
                rc=0; run vimg "$out_v" || rc=$?
                if ((rc != 0)); then
                    echo "convert.sh: vimg failed (exit $rc) in rep $rep, case $c:" >&2
                    cat "$err_v" >&2
                    echo "  reproduce: $VIMG convert $VIMG_FLAGS ${cargs[*]} $src /tmp/out.qcow2" >&2
                    note="VIMG-FAIL"; status=1; rm -f "$out_v"
                    problems+=("$c: vimg exit $rc in rep $rep: $(head -c 300 "$err_v" | tr '\n' ' ')")
                    continue
                fi
                tv+=("$elapsed") cv+=("$cpu")
                if ((rep == 1)); then
                    sv=$(stat -c %s "$out_v")
                    check_output vimg "$out_v" "$VIMG convert $VIMG_FLAGS" "$sv" || note=INVALID
                fi
                rm -f "$out_v"
            fi
        done
    done
    cleanup
    log "$c: qemu-img times: ${tq[*]}  (CPU s: ${cq[*]})"
    log "$c: vimg     times: ${tv[*]:-}  (CPU s: ${cv[*]:-})"
    log "$c: case took $(secs_since "$case_t0") s"

    mq=$(median "${tq[@]}") mcq=$(median "${cq[@]}")
    sizes="$(mib "$sq")|$(mib "$sv")|$(cr "$sq")|$(cr "$sv")"
    if ((${#tv[@]} == 0)); then
        rows+=("$c|$mq|-|$(awk -v s="$size_bytes" -v t="$mq" 'BEGIN{printf "%.2f", s/t/2^30}')|-|$note|$mcq|-|$sizes")
    else
        mv=$(median "${tv[@]}") mcv=$(median "${cv[@]}")
        r=$(awk -v s="$size_bytes" -v q="$mq" -v v="$mv" 'BEGIN{printf "%.2f|%.2f|%.2f", s/q/2^30, s/v/2^30, q/v}')
        # A vimg result that failed validation still shows its time, flagged.
        [[ -n $note ]] && r="${r%|*}|$note"
        rows+=("$c|$mq|$mv|$r|$mcq|$mcv|$sizes")
    fi
done

echo
fmt='%-12s %11s %9s %14s %11s %8s %13s %9s %13s %9s %14s %10s\n'
# shellcheck disable=SC2059  # $fmt is our own format string
printf "$fmt" case qemu-img_s vimg_s qemu-img_GiB/s vimg_GiB/s ratio qemu-img_cpu vimg_cpu \
    qemu-img_MiB vimg_MiB qemu-img_o/v vimg_o/v
for r in "${rows[@]}"; do
    IFS='|' read -r a b d e f g h i j k l m <<<"$r"
    # shellcheck disable=SC2059
    printf "$fmt" "$a" "$b" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$k" "$l" "$m"
done
echo "# ratio = qemu-img time / vimg time (>1: vimg faster); GiB/s = virtual size / wall time"
echo "# *_s = median wall seconds; *_cpu = median user+sys CPU seconds of the same runs"
echo "# *_MiB = output file size; *_o/v = output file size / virtual size (rep 1)"
echo "# loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg); total $(secs_since "$run_t0") s"
for p in "${problems[@]}"; do echo "# PROBLEM: $p"; done
exit "$status"
