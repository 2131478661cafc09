#!/bin/sh
# A short walkthrough of vimg on a generated image, printing each step.
# Usage: scripts/demo.sh [path/to/vimg]
set -e
VIMG=${1:-build/tools/vimg/vimg}
VIMG=$(cd "$(dirname "$VIMG")" && pwd)/$(basename "$VIMG")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "vimg demo in $dir"
echo "(qemu-img and qemu-io make the images; vimg reads them)"
step qemu-img create -q -f raw base.raw 64M
step qemu-io -f raw -c 'write -P 0xaa 0 4M' base.raw
step qemu-img create -q -f qcow2 -b base.raw -F raw -o compression_type=zstd disk.qcow2 128M
step qemu-io -c 'write -P 0x55 1M 1M' -c 'write -z 2M 512k' -c 'write -c -P 0x33 64M 64k' disk.qcow2
step qemu-img snapshot -c before-upgrade disk.qcow2
step "$VIMG" info disk.qcow2
step "$VIMG" info --backing-chain --output=json disk.qcow2
step "$VIMG" map --output=json disk.qcow2
step "$VIMG" convert -p -O raw disk.qcow2 flat.raw
step "$VIMG" compare disk.qcow2 flat.raw
step qemu-img compare disk.qcow2 flat.raw
step qemu-io -f raw -c 'write -P 0x01 100M 512' flat.raw
set +e
step "$VIMG" compare disk.qcow2 flat.raw
echo "(exit code $?: the images differ)"
set -e
echo
echo "(vimg writes too)"
step "$VIMG" snapshot -c after-demo disk.qcow2
step "$VIMG" snapshot -l disk.qcow2
step "$VIMG" convert -O qcow2 -c -B base.raw -F raw disk.qcow2 small.qcow2
step "$VIMG" measure -O qcow2 disk.qcow2
step "$VIMG" amend -o refcount_bits=64,lazy_refcounts=on disk.qcow2
step "$VIMG" check disk.qcow2
step qemu-img check disk.qcow2
step "$VIMG" commit disk.qcow2
step "$VIMG" compare -f raw -F qcow2 base.raw small.qcow2
echo "(exit code $?)"
echo
echo "demo done"
