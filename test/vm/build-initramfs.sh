#!/usr/bin/env bash
# Builds the test VM's initramfs: static busybox, init.sh as /init, and the kernel
# modules the guest needs, decompressed and listed in load order.
#
#   build-initramfs.sh KERNEL_VERSION OUTPUT.cpio.gz [MODULE_BASE]
#
# MODULE_BASE is the directory holding lib/modules/KERNEL_VERSION (modprobe -d): "/" for a
# kernel installed on the host, a private folder for one setup-deps.sh only extracted.
#
# The guest has no access to the host's module tree before its root is mounted, and
# mounting it needs 9p, so every module is packed here and insmod'ed by /init.
set -euo pipefail

kver=${1:?kernel version}
out=${2:?output file}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
base=${3:-/}
moddir=${base%/}/lib/modules/$kver

# Modules /init loads; their dependencies (modules.dep) and soft dependencies
# (modules.softdep, e.g. ext4 wanting crc32c) are added by modprobe below. Names that
# differ between kernels are left to modprobe: "crc32c" is an alias (crc32c_generic on
# 6.12, crc32c-cryptoapi on 7.x), crc16 and jbd2 come with ext4.
required=(9pnet_virtio 9p)
# vfat mounts need nls_ascii too: the kernel default iocharset is "ascii".
wanted=(
	ublk_drv nbd loop
	ext4 vfat fat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8
	crc32c
)

[ -d "$moddir" ] || { echo "build-initramfs: no $moddir" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "build-initramfs: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/netdisk-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,ctl,newroot,lib/modules}
cp /bin/busybox "$work/bin/busybox"
cp "$here/init.sh" "$work/init"
chmod 0755 "$work/init" "$work/bin/busybox"

# Resolves one module to the ordered insmod list. -C /dev/null ignores the host's
# modprobe.d options (e.g. nbd-client's max_part) so the guest gets kernel defaults.
resolve() {
	modprobe -C /dev/null -d "$base" -S "$kver" --show-depends "$1" 2>/dev/null | awk '$1 == "insmod" { print $2 }'
}

declare -A seen=()
order=()
add_module() {
	local name=$1 must=$2 files f
	if modprobe -C /dev/null -d "$base" -S "$kver" --show-depends "$name" 2>/dev/null | grep -q '^builtin '; then
		return 0
	fi
	files=$(resolve "$name")
	if [ -z "$files" ]; then
		if [ "$must" = 1 ]; then
			echo "build-initramfs: module $name not found for $kver" >&2
			exit 1
		fi
		echo "build-initramfs: warning: module $name not found for $kver, skipped" >&2
		return 0
	fi
	for f in $files; do
		[ -z "${seen[$f]:-}" ] || continue
		seen[$f]=1
		order+=("$f")
	done
}
for m in "${required[@]}"; do add_module "$m" 1; done
for m in "${wanted[@]}"; do add_module "$m" 0; done

# Busybox insmod takes plain .ko files only.
: >"$work/lib/modules/order"
for f in "${order[@]}"; do
	base=$(basename "$f")
	case "$base" in
	*.ko.xz) name=${base%.xz}; xz -dc "$f" >"$work/lib/modules/$name" ;;
	*.ko.zst) name=${base%.zst}; zstd -qdc "$f" >"$work/lib/modules/$name" ;;
	*.ko.gz) name=${base%.gz}; gzip -dc "$f" >"$work/lib/modules/$name" ;;
	*.ko) name=$base; cp "$f" "$work/lib/modules/$name" ;;
	*) echo "build-initramfs: unexpected module file $f" >&2; exit 1 ;;
	esac
	echo "$name" >>"$work/lib/modules/order"
done

mkdir -p "$(dirname "$out")"
(cd "$work" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
