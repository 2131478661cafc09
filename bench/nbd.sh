#!/bin/bash
# SPDX-License-Identifier: MIT
# bench/nbd.sh: serving an image over NBD, vimg serve against qemu-nbd (and
# nbdkit's file plugin on the same data as a raw file, the ceiling), with
# fio's nbd engine and nbdcopy, in one run; and vimg mount (FUSE) read
# sequentially against the NBD path.  See bench/README.md.
#
#   bash bench/nbd.sh                 # 1 GiB image, 3 interleaved runs
#   NBD_SIZE=256M NBD_REPS=1 NBD_RUNTIME=2 bash bench/nbd.sh   # smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

VIMG=${VIMG:-$PWD/build/tools/vimg/vimg}
SIZE=${NBD_SIZE:-1G}
REPS=${NBD_REPS:-3}
RUNTIME=${NBD_RUNTIME:-5}
DIR=${BENCH_DIR:-$PWD/bench/work}/nbd
mkdir -p "$DIR"
for t in fio nbdkit qemu-nbd nbdcopy qemu-img; do
    command -v "$t" >/dev/null || { echo "bench/nbd.sh: $t not found" >&2; exit 1; }
done
[ -x "$VIMG" ] || { echo "bench/nbd.sh: no vimg at $VIMG (meson compile -C build)" >&2; exit 1; }

# The data: binaries from /usr (real data, as a VM disk holds them),
# repeated to SIZE, as a raw file and as a qcow2 made by qemu-img.
bytes=$(numfmt --from=iec "$SIZE")
if [ ! -s "$DIR/data.qcow2" ] || [ "$(stat -c %s "$DIR/data.raw" 2>/dev/null)" != "$bytes" ]; then
    echo "# making $SIZE of /usr/bin + /usr/lib data in $DIR" >&2
    { find /usr/bin /usr/lib -type f -size +16k 2>/dev/null | sort | head -4000 |
        xargs cat 2>/dev/null | head -c 256M >"$DIR/seed"; } || true
    : >"$DIR/data.raw"
    while [ "$(stat -c %s "$DIR/data.raw")" -lt "$bytes" ]; do
        cat "$DIR/seed" >>"$DIR/data.raw"
    done
    truncate -s "$bytes" "$DIR/data.raw"
    rm -f "$DIR/seed"
    qemu-img convert -O qcow2 "$DIR/data.raw" "$DIR/data.qcow2"
fi
qemu-img create -q -f qcow2 "$DIR/empty.qcow2" "$SIZE"

SOCK=$DIR/nbd.sock
PID=
start() { # start SERVER IMAGE: serve IMAGE on $SOCK with SERVER
    rm -f "$SOCK" "$SOCK.pid"
    case $1 in
    vimg) "$VIMG" serve -t -e 0 -k "$SOCK" --pid-file "$SOCK.pid" -f qcow2 "$2" & ;;
    qemu-nbd) qemu-nbd -t -e 0 -k "$SOCK" --pid-file "$SOCK.pid" -f qcow2 "$2" & ;;
    nbdkit-file) nbdkit -f -U "$SOCK" -P "$SOCK.pid" file "$2" & ;;
    esac
    PID=$!
    for _ in $(seq 500); do [ -s "$SOCK.pid" ] && return; sleep 0.01; done
    echo "bench/nbd.sh: $1 did not start" >&2; exit 1
}
stop() { [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; [ -z "$PID" ] || wait "$PID" 2>/dev/null || true; PID=; }
trap 'stop; fusermount3 -u "$DIR/mnt" 2>/dev/null || true' EXIT

# fio RW BS DEPTH: one number, IOPS (4k) or MiB/s (1M)
fio_run() {
    local out
    out=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$SOCK" \
        --rw="$1" --bs="$2" --iodepth="$3" --runtime="$RUNTIME" --time_based \
        --size="$SIZE" --output-format=json 2>/dev/null)
    python3 -c '
import json, sys
s = sys.stdin.read()
j = json.loads(s[s.index("{"):])["jobs"][0]
k = "read" if j["read"]["io_bytes"] else "write"
print("%.0f" % (j[k]["iops"] if sys.argv[1] == "4k" else j[k]["bw_bytes"] / 2**20))
' "$2" <<<"$out"
}

# One measurement: WORKLOAD SERVER -> number (higher is better)
measure() {
    local w=$1 s=$2 img=$DIR/data.qcow2 t0 t1
    [ "$s" = nbdkit-file ] && img=$DIR/data.raw
    case $w in
    randwrite-*)
        if [ "$s" = nbdkit-file ]; then cp --sparse=always "$DIR/data.raw" "$DIR/w.img"
        else cp "$DIR/empty.qcow2" "$DIR/w.img"; fi
        img=$DIR/w.img ;;
    esac
    start "$s" "$img"
    case $w in
    randread-qd1) fio_run randread 4k 1 ;;
    randread-qd32) fio_run randread 4k 32 ;;
    randwrite-qd1) fio_run randwrite 4k 1 ;;
    randwrite-qd32) fio_run randwrite 4k 32 ;;
    seqread-1m) fio_run read 1M 8 ;;
    nbdcopy)
        t0=$(date +%s.%N)
        nbdcopy "nbd+unix:///?socket=$SOCK" null:
        t1=$(date +%s.%N)
        python3 -c "print('%.0f' % ($bytes / 2**20 / ($t1 - $t0)))" ;;
    esac
    stop
}

stats() { # numbers... -> "min median max"
    printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%s %s %s", a[1], a[int((NR+1)/2)], a[NR]}'
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), image $SIZE of /usr binaries (qcow2 by qemu-img), $REPS runs of ${RUNTIME}s"
echo
echo "| workload | unit | vimg serve min/med/max | qemu-nbd min/med/max | nbdkit file (raw) med | vimg / qemu-nbd | vimg / nbdkit-file |"
echo "|---|---|---|---|---|---|---|"
for w in randread-qd1 randread-qd32 randwrite-qd1 randwrite-qd32 seqread-1m nbdcopy; do
    declare -a V=() Q=() F=()
    for r in $(seq "$REPS"); do
        # interleaved, alternating who goes first
        if [ $((r % 2)) = 1 ]; then order="vimg qemu-nbd nbdkit-file"; else order="nbdkit-file qemu-nbd vimg"; fi
        for s in $order; do
            n=$(measure "$w" "$s")
            case $s in vimg) V+=("$n") ;; qemu-nbd) Q+=("$n") ;; nbdkit-file) F+=("$n") ;; esac
        done
    done
    read -r vmin vmed vmax <<<"$(stats "${V[@]}")"
    read -r qmin qmed qmax <<<"$(stats "${Q[@]}")"
    read -r _ fmed _ <<<"$(stats "${F[@]}")"
    unit=IOPS; case $w in seqread-1m|nbdcopy) unit=MiB/s ;; esac
    printf '| %s | %s | %s / %s / %s | %s / %s / %s | %s | %.2fx | %.2f |\n' "$w" "$unit" \
        "$vmin" "$vmed" "$vmax" "$qmin" "$qmed" "$qmax" "$fmed" \
        "$(echo "$vmed / $qmed" | bc -l)" "$(echo "$vmed / $fmed" | bc -l)"
done

# FUSE: sequential read of the mounted disk against nbdcopy of the same
# image over NBD (both to /dev/null, page cache of the image warm).
if [ -e /dev/fuse ]; then
    declare -a M=() N=()
    for r in $(seq "$REPS"); do
        rm -f "$DIR/mnt"
        "$VIMG" mount -r -f qcow2 "$DIR/data.qcow2" "$DIR/mnt"
        t0=$(date +%s.%N); dd if="$DIR/mnt" of=/dev/null bs=1M status=none; t1=$(date +%s.%N)
        fusermount3 -u "$DIR/mnt"
        M+=("$(python3 -c "print('%.0f' % ($bytes / 2**20 / ($t1 - $t0)))")")
        N+=("$(measure nbdcopy vimg)")
    done
    read -r mmin mmed mmax <<<"$(stats "${M[@]}")"
    read -r nmin nmed nmax <<<"$(stats "${N[@]}")"
    echo
    echo "| FUSE read (dd bs=1M) | unit | vimg mount min/med/max | NBD path (vimg serve + nbdcopy) min/med/max | mount / NBD |"
    echo "|---|---|---|---|---|"
    printf '| seq read | MiB/s | %s / %s / %s | %s / %s / %s | %.2f |\n' "$mmin" "$mmed" "$mmax" \
        "$nmin" "$nmed" "$nmax" "$(echo "$mmed / $nmed" | bc -l)"
else
    echo "# no /dev/fuse: FUSE row skipped"
fi
