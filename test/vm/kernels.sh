# Where the test VM's kernels live and how a kernel is picked; sourced by test/vm/run.sh
# and scripts/setup-deps.sh (bash).
#
# Two kinds of kernel:
# - installed on the host by apt (Debian's 6.12 from bookworm-backports): /boot/vmlinuz-VER
#   and /lib/modules/VER;
# - extracted, never installed (trixie-backports' 7.x, whose linux-base would replace the
#   host's): NETDISK_KERNELS_DIR/VER/, a dpkg-deb -x of its linux-binary, linux-modules and
#   linux-base packages, with vmlinuz at usr/lib/modules/VER/vmlinuz, lib -> usr/lib so that
#   depmod -b and modprobe -d find lib/modules/VER.

NETDISK_KERNELS_DIR=${NETDISK_KERNELS_DIR:-/var/cache/netdisk-ublk/kernels}

# ADD_DEV oopses on these (fixed in 6.18.6); never fetched, never picked.
NETDISK_KNOWN_BAD_KERNELS='6.18.4 6.18.5'

# The upstream part of a Debian kernel release: 7.3.4+deb13-amd64 -> 7.3.4.
kernel_upstream() {
	local v=${1%%-*}
	echo "${v%%+*}"
}

kernel_known_bad() {
	local up b
	up=$(kernel_upstream "$1")
	for b in $NETDISK_KNOWN_BAD_KERNELS; do
		[ "$up" = "$b" ] && return 0
	done
	return 1
}

# Every usable kernel, one "VERSION VMLINUZ MODULE_BASE" line each: generic amd64 builds
# (not rt, not cloud), 6.12 or newer, with a modules.dep. MODULE_BASE is what modprobe -d
# takes ("/" for the host's own tree).
kernel_list() {
	local v d
	for d in /lib/modules/*/; do
		v=$(basename "$d")
		kernel_usable "$v" || continue
		[ -r "/boot/vmlinuz-$v" ] && [ -f "/lib/modules/$v/modules.dep" ] || continue
		echo "$v /boot/vmlinuz-$v /"
	done
	for d in "$NETDISK_KERNELS_DIR"/*/; do
		d=${d%/}
		v=$(basename "$d")
		kernel_usable "$v" || continue
		[ -r "$d/lib/modules/$v/vmlinuz" ] && [ -f "$d/lib/modules/$v/modules.dep" ] || continue
		echo "$v $d/lib/modules/$v/vmlinuz $d"
	done
}

kernel_usable() {
	case $1 in *-rt-* | *-cloud-* | *-rt | *-cloud) return 1 ;; esac
	[[ $1 == *-amd64 ]] || return 1
	[ "$(printf '%s\n' 6.12 "$(kernel_upstream "$1")" | sort -V | head -n1)" = 6.12 ] || return 1
	! kernel_known_bad "$1"
}

# The kernel line (as kernel_list prints it) for SPEC: an exact version
# (7.3.4+deb13-amd64), a major.minor (6.12) or a major (7): the newest that matches.
# Empty SPEC: the newest installed on the host (bookworm-backports' 6.12), which is what
# the harness booted before it could boot others. Prints nothing when none matches.
kernel_pick() {
	local spec=$1 line v best=""
	while read -r line; do
		v=${line%% *}
		if [ -z "$spec" ]; then
			[ "${line##* }" = / ] || continue
		elif [ "$v" != "$spec" ]; then
			case $(kernel_upstream "$v"). in "$spec".*) ;; *) continue ;; esac
		fi
		if [ -z "$best" ] || [ "$(printf '%s\n' "${best%% *}" "$v" | sort -V | tail -n1)" = "$v" ]; then
			best=$line
		fi
	done < <(kernel_list)
	[ -z "$best" ] || echo "$best"
}
