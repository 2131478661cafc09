#!/usr/bin/env bash
# bench/check.sh - time `vimg check` against `qemu-img check`.
#
# See bench/README.md ("vimg check benchmark").  Environment:
#   BENCH_DIR      work dir for images (default /work/bench-data if it exists,
#                  else bench/work)
#   BENCH_REPS     timed runs per tool and case (default 3; min/median/max)
#   BENCH_REPS_SHORT  the same for the sub-second cases (default 9)
#   BENCH_CASES    subset/order of cases (default "scrambled prealloc-100g
#                  prealloc-8t corpus")
#   BENCH_CLUSTERS guest clusters of 512 bytes in the scrambled image
#                  (default 1048576: 512 MiB virtual)
#   BENCH_SEED     permutation seed (default 0x5eed2024)
#   BENCH_SIZE     size of the corpus.sh data sets to look for (default 4G)
#   VIMG           vimg binary (default build/tools/vimg/vimg)
#   VIMG_FLAGS     extra flags for `vimg check`
#   QEMU_IMG       qemu-img binary (default qemu-img)
#   QEMU_FLAGS     extra flags for `qemu-img check`
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
bench_here=$here
script=check.sh
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bench_dirs

BENCH_REPS=${BENCH_REPS:-3}
BENCH_REPS_SHORT=${BENCH_REPS_SHORT:-9}
BENCH_CASES=${BENCH_CASES:-scrambled prealloc-100g prealloc-8t corpus}
BENCH_CLUSTERS=${BENCH_CLUSTERS:-1048576}
BENCH_SEED=${BENCH_SEED:-0x5eed2024}
VIMG=${VIMG:-$root/build/tools/vimg/vimg}
VIMG_FLAGS=${VIMG_FLAGS:-}
QEMU_FLAGS=${QEMU_FLAGS:-}
secs_since() { since "$@"; }

# ---------------------------------------------------------------- arguments
[[ $BENCH_REPS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS '$BENCH_REPS'"
[[ $BENCH_REPS_SHORT =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS_SHORT '$BENCH_REPS_SHORT'"
[[ $BENCH_CLUSTERS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_CLUSTERS '$BENCH_CLUSTERS'"
for c in $BENCH_CASES; do
    case $c in scrambled|prealloc-100g|prealloc-8t|corpus) ;; *) die "unknown case '$c'" ;; esac
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
        prealloc-8t)   echo "$BENCH_DIR/prealloc-8t.qcow2" ;;
        ext4|bin)      echo "$BENCH_DIR/corpus-$size_bytes/$1.qcow2" ;;
    esac
}

# corpus: the qcow2 images bench/corpus.sh made (qemu-img convert -O qcow2
# of real data), when they exist; this script does not make them.
cases=()
for c in $BENCH_CASES; do
    if [[ $c != corpus ]]; then cases+=("$c"); continue; fi
    for set in ext4 bin; do
        if [[ -f $(image_of $set) ]]; then
            cases+=("$set")
        else
            log "corpus: no $(image_of $set) (bench/corpus.sh makes it): no $set row"
        fi
    done
done

for c in "${cases[@]}"; do
    [[ $c == ext4 || $c == bin ]] && continue
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
        prealloc-8t)
            # ~1.3 GiB of L2 tables and refcount blocks: 1-4 min, made once
            "$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata "$f.tmp" 8T ;;
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

mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
max() { printf '%s\n' "$@" | sort -g | tail -1; }

describe() {
    case $1 in
        scrambled)     echo "1M fragmented 512 B clusters ($BENCH_CLUSTERS, check-gen)" ;;
        prealloc-100g) echo "100 GiB metadata-preallocated" ;;
        prealloc-8t)   echo "8 TiB metadata-preallocated" ;;
        ext4)          echo "ext4 image of /usr/share ($BENCH_SIZE, qemu-img convert)" ;;
        bin)           echo "/usr/bin + /usr/lib ($BENCH_SIZE, qemu-img convert)" ;;
    esac
}

run_t0=$EPOCHREALTIME
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
load1=${load_start%% *}
if awk -v l="$load1" 'BEGIN{exit !(l > 0.5)}'; then
    log "WARNING: load average $load1 before the run: other processes compete for the CPUs, expect noisy wall times (CPU time and memory hold)"
fi

status=0
rows=() problems=()
for c in "${cases[@]}"; do
    f=$(image_of "$c")
    reps=$BENCH_REPS
    [[ $c == prealloc-100g || $c == ext4 || $c == bin ]] && reps=$BENCH_REPS_SHORT
    log "$c: $f: $(stat -c %s "$f") bytes, $(du -h "$f" | cut -f1) allocated"
    # Warm-up: read what is allocated (the preallocated files are sparse:
    # their metadata is read by the untimed pass below)
    [[ $c == prealloc-* ]] || cat "$f" >/dev/null

    # Untimed correctness pass: the same exit status and JSON report.
    note=""
    rq=0; run qemu "$f" --output=json || rq=$?
    if ((rq != 0 && rq != 3)); then
        echo "check.sh: qemu-img check failed (exit $rq) on $f:" >&2; cat "$err_q" >&2
        rows+=("| $(describe "$c") | - | - | QEMU-FAIL | - | - |"); status=1
        problems+=("$c: qemu-img check exit $rq: $(head -c 300 "$err_q" | tr '\n' ' ')")
        continue
    fi
    log "$c: qemu-img check: $(tr -d ' \n' <"$out.qemu")"
    rc=0; run vimg "$f" --output=json || rc=$?
    if ((rc != rq)); then
        echo "check.sh: vimg check exit $rc, qemu-img $rq, on $f:" >&2; head -20 "$err_v" >&2
        echo "  reproduce: $VIMG check $VIMG_FLAGS $f" >&2
        note=VIMG-FAIL; status=1
        problems+=("$c: vimg exit $rc (qemu-img $rq): $(head -c 300 "$err_v" | tr '\n' ' ')")
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
            rc=0
            if [[ $tool == qemu ]]; then
                run qemu "$f" || rc=$?
                ((rc == rq)) || { cat "$err_q" >&2; die "qemu-img check failed on $f"; }
                tq+=("$elapsed") cq+=("$cpu") mq+=("$rss")
            else
                run vimg "$f" || rc=$?
                if ((rc != rq)); then
                    echo "check.sh: vimg failed in rep $rep on $f:" >&2; head -20 "$err_v" >&2
                    note=VIMG-FAIL; status=1
                    problems+=("$c: vimg exit $rc in timed rep $rep")
                    continue
                fi
                tv+=("$elapsed") cv+=("$cpu") mv+=("$rss")
            fi
        done
    done
    log "$c: qemu-img times: ${tq[*]}  (CPU s: ${cq[*]}; peak KiB: ${mq[*]})"
    log "$c: vimg     times: ${tv[*]:-}  (CPU s: ${cv[*]:-}; peak KiB: ${mv[*]:-})"
    if ((${#tv[@]} == 0)); then
        rows+=("| $(describe "$c") | $(stats "${tq[@]}") | - | **${note:-VIMG-FAIL}** | $(median "${cq[@]}") / - | $(mib "$(max "${mq[@]}")") / - |")
        continue
    fi
    ratio=$(awk -v q="$(median "${tq[@]}")" -v v="$(median "${tv[@]}")" 'BEGIN{printf "%.1fx", q/v}')
    [[ -n $note ]] && ratio="$ratio ($note)"
    rows+=("| $(describe "$c") | $(stats "${tq[@]}") | $(stats "${tv[@]}") | **$ratio** | $(median "${cq[@]}") / $(median "${cv[@]}") | $(mib "$(max "${mq[@]}")") / $(mib "$(max "${mv[@]}")") |")
done

cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo)
vrev=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)
echo
echo "### check"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'); ${cpu_model:-unknown CPU}, $(nproc) CPUs, $mem RAM," \
     "Linux $(uname -r); $("$QEMU_IMG" --version | head -1 | sed 's/ (.*//');" \
     "vimg $vrev${VIMG_FLAGS:+ (flags: $VIMG_FLAGS)}${QEMU_FLAGS:+, qemu-img flags: $QEMU_FLAGS};" \
     "$BENCH_REPS interleaved runs per tool ($BENCH_REPS_SHORT for the sub-second cases), page cache warm;" \
     "load average $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end; $(since "$run_t0") s in all."
echo
echo "| image | qemu-img s (min / median / max) | vimg s (min / median / max) | speed-up | CPU s, median (qemu-img / vimg) | peak RSS MiB (qemu-img / vimg) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "speed-up = qemu-img median wall time / vimg median (above 1: vimg is faster);" \
     "peak RSS = GNU time's maximum resident set size, the largest over the runs." \
     "Both tools gave the same exit status and the same --output=json report on every image."
for p in "${problems[@]}"; do echo "PROBLEM: $p"; done
exit "$status"
