# bench/lib.sh - shared by read.sh, convert.sh and corpus.sh (sourced, not run).
# shellcheck shell=bash disable=SC2154,SC2034
#
# A script sets `script` (its name, for messages) and sources this file;
# bench_setup reads the environment common to all of them (see
# bench/README.md), bench_case times one workload, bench_table prints the
# markdown table.

die() { echo "$script: $*" >&2; exit 2; }
log() { echo "# $*" >&2; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }

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

# BENCH_DIR (default /work/bench-data if it exists, else bench/work),
# BENCH_SIZE -> $size_bytes, QEMU_IMG.
bench_dirs() {
    local here_lib
    here_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    if [[ -z ${BENCH_DIR:-} ]]; then
        if [[ -d /work/bench-data ]]; then BENCH_DIR=/work/bench-data; else BENCH_DIR=$here_lib/work; fi
    fi
    mkdir -p "$BENCH_DIR"
    BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
    BENCH_SIZE=${BENCH_SIZE:-4G}
    size_bytes=$(parse_size "$BENCH_SIZE") || die "bad BENCH_SIZE '$BENCH_SIZE'"
    ((size_bytes > 0 && size_bytes % (1 << 20) == 0)) ||
        die "BENCH_SIZE must be a positive multiple of 1M"
    QEMU_IMG=${QEMU_IMG:-qemu-img}
    command -v "$QEMU_IMG" >/dev/null || die "qemu-img '$QEMU_IMG' not found"
}

# Everything the timing scripts share: directories, sizes, tools, reps,
# data sets, page-cache states.
bench_setup() {
    local root_lib
    root_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    bench_dirs
    BENCH_REPS=${BENCH_REPS:-3}
    BENCH_SEED=${BENCH_SEED:-0x5eed2024}
    BENCH_SETS=${BENCH_SETS:-bin ext4 gen}
    BENCH_STATES=${BENCH_STATES:-new replace uncached}
    VIMG=${VIMG:-$root_lib/build/tools/vimg/vimg}
    VIMG_FLAGS=${VIMG_FLAGS:-}
    QEMU_FLAGS=${QEMU_FLAGS:-}
    [[ $BENCH_REPS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_REPS '$BENCH_REPS'"
    for s in $BENCH_SETS; do
        case $s in bin|ext4|gen) ;; *) die "unknown data set '$s'" ;; esac
    done
    for s in $BENCH_STATES; do
        case $s in new|replace|uncached) ;; *) die "unknown page-cache state '$s'" ;; esac
    done
    [[ -x $VIMG ]] || die "vimg binary '$VIMG' not found (set VIMG=...)"
    read -r -a vimg_flags <<<"$VIMG_FLAGS"
    read -r -a qemu_flags <<<"$QEMU_FLAGS"
    timesf=$BENCH_DIR/.times.$$
    out_q=$BENCH_DIR/out.qemu-img.$$
    out_v=$BENCH_DIR/out.vimg.$$
    errlog=$BENCH_DIR/last-error.$$.log
    trap 'rm -f "$out_q" "$out_v" "$timesf" "$errlog"' EXIT
    rows=() problems=() status=0 skipped_uncached=0
    run_t0=$EPOCHREALTIME
    load_start=$(cut -d' ' -f1-3 /proc/loadavg)
}

# Make (or find) the images of every data set in BENCH_SETS: bin and ext4
# from corpus.sh (in $corpus_dir), gen from gen.c (in $gen_dir).
prepare_sets() {
    local corpus_sets=${BENCH_SETS//gen/}
    if [[ -n ${corpus_sets// /} ]]; then
        corpus_dir=$(BENCH_DIR=$BENCH_DIR BENCH_SIZE=$BENCH_SIZE QEMU_IMG=$QEMU_IMG \
            CORPUS_SETS="$corpus_sets" bash "$bench_here/corpus.sh") || die "corpus.sh failed"
    fi
    [[ " $BENCH_SETS " != *" gen "* ]] || gen_images
}

# The image of data set SET in form FORM: raw, qcow2, zlib or zstd (both
# compressed qcow2), and for gen also sparse (qcow2, every other MiB a hole).
image_of() {
    local set=$1 form=$2
    if [[ $set == gen ]]; then
        case $form in
            raw) echo "$gen_dir/dense.raw" ;;
            qcow2) echo "$gen_dir/dense.qcow2" ;;
            *) echo "$gen_dir/$form.qcow2" ;;
        esac
        return
    fi
    case $form in
        raw|qcow2) echo "$corpus_dir/$set.$form" ;;
        *) echo "$corpus_dir/$set.$form.qcow2" ;;
    esac
}

# The generated data set (bench/gen.c) in $gen_dir: dense.qcow2,
# sparse.qcow2, zlib.qcow2, zstd.qcow2 and dense.raw, made once.
gen_images() {
    command -v cc >/dev/null || die "a C compiler (cc) is needed for bench/gen.c"
    local sum gen src t0=$EPOCHREALTIME name
    sum=$(sha1sum "$bench_here/gen.c" | cut -c1-12)
    gen_dir=$BENCH_DIR/img-$size_bytes-$BENCH_SEED
    gen=$BENCH_DIR/gen-$sum
    [[ -x $gen ]] || { cc -O2 -o "$gen.tmp" "$bench_here/gen.c" && mv "$gen.tmp" "$gen"; }
    if [[ -d $gen_dir && "$(cat "$gen_dir/GEN_VERSION" 2>/dev/null)" != "$sum" ]]; then
        log "removing images made by an older gen.c: $gen_dir"
        rm -rf "$gen_dir"
    fi
    mkdir -p "$gen_dir"
    echo "$sum" >"$gen_dir/GEN_VERSION"
    src=$gen_dir/dense.raw
    if [[ ! -f $src ]]; then
        "$gen" "$src.tmp" "$size_bytes" dense "$BENCH_SEED" && mv "$src.tmp" "$src"
    fi
    for name in dense zlib zstd; do
        [[ -f $gen_dir/$name.qcow2 ]] && continue
        rm -f "$gen_dir/$name.qcow2.tmp"
        case $name in
            dense) "$QEMU_IMG" convert -f raw -O qcow2 "$src" "$gen_dir/$name.qcow2.tmp" ;;
            *) "$QEMU_IMG" convert -W -m 8 -c -f raw -O qcow2 -o compression_type=$name \
                   "$src" "$gen_dir/$name.qcow2.tmp" ;;
        esac
        mv "$gen_dir/$name.qcow2.tmp" "$gen_dir/$name.qcow2"
    done
    if [[ ! -f $gen_dir/sparse.qcow2 ]]; then
        # every other 1 MiB chunk is a hole
        "$gen" "$gen_dir/sparse.raw" "$size_bytes" sparse "$BENCH_SEED"
        rm -f "$gen_dir/sparse.qcow2.tmp"
        "$QEMU_IMG" convert -f raw -O qcow2 "$gen_dir/sparse.raw" "$gen_dir/sparse.qcow2.tmp"
        mv "$gen_dir/sparse.qcow2.tmp" "$gen_dir/sparse.qcow2"
        rm -f "$gen_dir/sparse.raw"
    fi
    log "generated data set ready in $gen_dir ($(since "$t0") s)"
}

# $child_cpu: CPU seconds (user+sys) of the waited-for children of this
# shell so far (`times` must run in this shell, not in $(...)).
get_child_cpu() {
    times >"$timesf"
    child_cpu=$(awk 'NR == 2 { s = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
        printf "%.3f", s }' "$timesf")
}

# Can this shell drop the page cache?
can_drop_caches() { [[ $(id -u) == 0 && -w /proc/sys/vm/drop_caches ]]; }

# prepare STATE OUT FILL: make OUT's page-cache state before a timed run.
#   new       OUT removed, everything written back (sync)
#   replace   OUT is a just-written file of FILL's bytes (dirty in the page cache)
#   uncached  OUT removed, sync, and the whole page cache dropped (the source too)
prepare() {
    local state=$1 out=$2 fill=$3
    rm -f "$out"
    sync
    case $state in
        replace) cat "$fill" >"$out" ;;
        uncached) echo 3 >/proc/sys/vm/drop_caches ;;
    esac
}

# run TOOL SRC OUT ARGS...: time `convert ARGS SRC OUT`; sets $elapsed and
# $cpu; returns the tool's status.
run() {
    local tool=$1 src=$2 out=$3 t0 t1 c0 rc=0
    shift 3
    get_child_cpu; c0=$child_cpu
    t0=$EPOCHREALTIME
    if [[ $tool == qemu ]]; then
        "$QEMU_IMG" convert "${qemu_flags[@]}" "$@" "$src" "$out" 2>"$errlog" || rc=$?
    else
        "$VIMG" convert "${vimg_flags[@]}" "$@" "$src" "$out" 2>"$errlog" || rc=$?
    fi
    t1=$EPOCHREALTIME
    get_child_cpu
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    cpu=$(awk -v a="$c0" -v b="$child_cpu" 'BEGIN{printf "%.2f", b-a}')
    return "$rc"
}

# validate OUT OFMT SRC SFMT: vimg's OUT is a good copy of SRC: a raw one
# the same bytes as qemu-img's output of the same run ($out_q, made first
# in repetition 1), a qcow2 one clean for qemu-img check and equal to SRC
# for qemu-img compare.  Else prints why and returns 1.
validate() {
    local out=$1 ofmt=$2 src=$3 sfmt=$4 o rc=0
    if [[ $ofmt == raw && -f $out_q ]]; then
        o=$(cmp "$out_q" "$out" 2>&1) || { echo "differs from qemu-img's output: $o"; return 1; }
        return 0
    fi
    if [[ $ofmt == qcow2 ]]; then
        o=$("$QEMU_IMG" check -f qcow2 "$out" 2>&1) || { echo "qemu-img check: $o" | head -c 300; return 1; }
    fi
    o=$("$QEMU_IMG" compare -f "$sfmt" -F "$ofmt" "$src" "$out" 2>&1) || rc=$?
    if ((rc != 0)); then
        echo "qemu-img compare exit $rc: $o" | tr '\n' ' ' | head -c 300
        return 1
    fi
}

stats() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{
    m = NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2
    printf "%.2f / %.2f / %.2f", v[1], m, v[NR] }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{
    printf "%.3f", NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2 }'; }
mib_alloc() { du -k "$1" | awk '{printf "%.0f", $1/1024}'; }

# bench_case WORKLOAD SET STATE SRC SFMT OFMT ARGS...: time both tools
# converting SRC (format SFMT) with ARGS (the same for both; the output
# format is OFMT), BENCH_REPS times each, interleaved (q,v / v,q / ...),
# in page-cache state STATE; add a table row.  With STATE new, each
# tool's first output is validated (untimed) and its allocated size kept.
bench_case() {
    local workload=$1 set=$2 state=$3 src=$4 sfmt=$5 ofmt=$6 fill t0=$EPOCHREALTIME
    shift 6
    local tq=() tv=() cq=() cv=() aq=- av=- note="" rep tool why order
    if [[ $state == uncached ]] && ! can_drop_caches; then
        log "$workload, $set, $state: skipped (dropping the page cache needs root)"
        skipped_uncached=1
        return 0
    fi
    fill=$(image_of "$set" raw)
    [[ $state == uncached ]] || cat "$src" >/dev/null   # warm source
    for ((rep = 1; rep <= BENCH_REPS; rep++)); do
        if ((rep % 2)); then order="qemu vimg"; else order="vimg qemu"; fi
        for tool in $order; do
            local out=$out_q
            [[ $tool == vimg ]] && out=$out_v
            [[ $tool == vimg && -n $note ]] && continue
            prepare "$state" "$out" "$fill"
            if ! run "$tool" "$src" "$out" "$@"; then
                if [[ $tool == qemu ]]; then
                    cat "$errlog" >&2
                    die "qemu-img failed: $QEMU_IMG convert $QEMU_FLAGS $* $src OUT"
                fi
                note=VIMG-FAIL status=1
                problems+=("$workload, $set, $state: vimg failed in rep $rep: $(head -c 300 "$errlog" | tr '\n' ' ')")
                echo "  reproduce: $VIMG convert $VIMG_FLAGS $* $src /tmp/out" >&2
                continue
            fi
            if [[ $tool == qemu ]]; then tq+=("$elapsed") cq+=("$cpu"); else tv+=("$elapsed") cv+=("$cpu"); fi
            if ((rep == 1)) && [[ $state == new ]]; then
                if [[ $tool == qemu ]]; then aq=$(mib_alloc "$out"); else av=$(mib_alloc "$out"); fi
                if [[ $tool == vimg ]] && ! why=$(validate "$out" "$ofmt" "$src" "$sfmt"); then
                    note=INVALID status=1
                    problems+=("$workload, $set: vimg's output is wrong: $why")
                    echo "  reproduce: $VIMG convert $VIMG_FLAGS $* $src /tmp/out" >&2
                fi
            fi
        done
    done
    rm -f "$out_q" "$out_v"
    log "$workload, $set, $state: qemu-img ${tq[*]} s (CPU ${cq[*]}); vimg ${tv[*]:-} s (CPU ${cv[*]:-}); case $(since "$t0") s"
    local ratio=$note
    if [[ -z $note ]]; then
        ratio=$(awk -v q="$(median "${tq[@]}")" -v v="$(median "${tv[@]}")" 'BEGIN{printf "%.2fx", q/v}')
    fi
    local vs=- vc=-
    ((${#tv[@]})) && vs=$(stats "${tv[@]}") vc=$(median "${cv[@]}")
    rows+=("| $workload | $set | $state | $(stats "${tq[@]}") | $vs | **$ratio** | $(median "${cq[@]}") / $vc | $aq / $av |")
}

# bench_table TITLE: the markdown table of every row, with the date and the
# machine, ready for the README.
bench_table() {
    local cpu_model mem fs vrev
    cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2/2^20}' /proc/meminfo)
    fs=$(df -T "$BENCH_DIR" | awk 'NR == 2 {print $2 " on " $1}')
    vrev=$(git -C "$bench_here" describe --always --dirty 2>/dev/null || echo unknown)
    echo
    echo "### $1"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); ${cpu_model:-unknown CPU}, $(nproc) CPUs, $mem RAM," \
         "$fs, Linux $(uname -r); $("$QEMU_IMG" --version | head -1 | sed 's/ (.*//');" \
         "vimg $vrev${VIMG_FLAGS:+ (flags: $VIMG_FLAGS)}${QEMU_FLAGS:+, qemu-img flags: $QEMU_FLAGS};" \
         "$BENCH_SIZE images, $BENCH_REPS interleaved runs per tool; load average $load_start at start," \
         "$(cut -d' ' -f1-3 /proc/loadavg) at end; $(since "$run_t0") s in all."
    echo
    echo "| workload | data | page cache | qemu-img s (min / median / max) | vimg s (min / median / max) | speed-up | CPU s, median (qemu-img / vimg) | allocated MiB (qemu-img / vimg) |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "speed-up = qemu-img median / vimg median (above 1: vimg is faster)." \
         "Page cache: new = new output, source cached; replace = the output replaces a" \
         "just-written $BENCH_SIZE file still in the page cache; uncached = page cache dropped" \
         "before each run (source read from disk)."
    ((skipped_uncached)) && echo "The uncached rows were skipped: dropping the page cache needs root."
    for p in "${problems[@]}"; do echo "PROBLEM: $p"; done
    return 0
}
