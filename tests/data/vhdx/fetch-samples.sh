#!/bin/sh
# Fetch the VHDX sample images Hyper-V made for QEMU's iotests
# (tests/qemu-iotests/sample_images/*.vhdx.bz2 in QEMU's source) into DEST
# (default: tests/data/vhdx/samples, which git ignores).  They come with no
# licence of their own, so they fall under QEMU's GPL-2.0-or-later and are
# not copied into vimg's MIT tree: `make check` fetches Debian bookworm's
# qemu source package through apt, with a private source list, once.
set -e
dest=${1:-$(dirname "$0")/samples}
names="iotest-dirtylog-10G-4M.vhdx iotest-dynamic-1G.vhdx test-disk2vhd.vhdx"
missing=0
for n in $names; do
    [ -s "$dest/$n.bz2" ] || missing=1
done
[ $missing = 0 ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/parts" "$tmp/src"
echo 'deb-src http://deb.debian.org/debian bookworm main' >"$tmp/sources.list"
set -- -o "Dir::Etc::SourceList=$tmp/sources.list" \
    -o "Dir::Etc::SourceParts=$tmp/parts" -o "Dir::State::Lists=$tmp/lists" \
    -o "APT::Sandbox::User=root"
echo "fetching the VHDX sample images (Debian's qemu source package)"
apt-get "$@" update -qq
(cd "$tmp/src" && apt-get "$@" source --download-only -qq qemu)
tar -xJf "$tmp"/src/qemu_*.orig.tar.xz -C "$tmp/src" --wildcards \
    '*/tests/qemu-iotests/sample_images/*.vhdx.bz2'
mkdir -p "$dest"
for n in $names; do
    cp "$tmp"/src/qemu-*/tests/qemu-iotests/sample_images/"$n".bz2 "$dest/"
done
