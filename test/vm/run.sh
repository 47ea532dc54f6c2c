#!/usr/bin/env bash
# Runs one command inside a throwaway qemu VM booted with a real (Debian backports)
# kernel that has ublk_drv and nbd, for hosts whose own kernel lacks them.
# See test/vm/README.md.
#
#   test/vm/run.sh [--kernel 6.12|7|VERSION] [--share DIR]... [--timeout SECONDS] [--mem MB]
#                  [--cwd DIR] [--env NAME=VALUE]... -- COMMAND...
#   test/vm/run.sh --check
#
# Exit status: the command's, 124 if the VM timed out, 125 if the harness failed.
set -uo pipefail

readonly E_TIMEOUT=124 E_HARNESS=125

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
cache=$repo/.vm
lockfile=${NETDISK_VM_LOCK:-/tmp/netdisk-ublk-vm.lock}
# shellcheck source=kernels.sh
. "$here/kernels.sh"

fail() {
	echo "netdisk-vm: $*" >&2
	exit "$E_HARNESS"
}

usage() {
	cat <<'EOF'
usage: test/vm/run.sh [options] -- COMMAND...
       test/vm/run.sh --check
Runs COMMAND (joined with spaces, by bash -c) in a qemu VM with the ublk/nbd kernel.
  --kernel SPEC     6.12 (the default: Debian 13's line, bookworm-backports), 7 (the newest
                    7.x from trixie-backports, fetched by setup), or an exact version
  --share DIR       also share DIR read-write at its own path (repeatable)
  --timeout SEC     kill the VM after SEC seconds, exit 124 (default 1800)
  --mem MB          guest memory (default 2048)
  --cwd DIR         working directory of COMMAND (default: the repository)
  --env NAME=VALUE  export NAME=VALUE to COMMAND (repeatable)
  --check           only check that the VM can be started here
Environment: NETDISK_VM_DMESG=FILE receives the guest's kernel log;
NETDISK_VM_KERNEL=SPEC picks a kernel as --kernel does; NETDISK_VM_ACCEL (default tcg);
NETDISK_VM_SMP (default 2); NETDISK_VM_LOCK (default /tmp/netdisk-ublk-vm.lock);
NETDISK_VM_BOOT_RETRIES (default 1): boots again when the kernel dies before the command;
NETDISK_VM_APPEND: more kernel parameters.
EOF
}

shares=()
envs=()
timeout_s=${NETDISK_VM_TIMEOUT:-1800}
mem=${NETDISK_VM_MEM:-2048}
smp=${NETDISK_VM_SMP:-2}
accel=${NETDISK_VM_ACCEL:-tcg}
cpu=${NETDISK_VM_CPU:-max}
append=${NETDISK_VM_APPEND:-}
retries=${NETDISK_VM_BOOT_RETRIES:-1}
cwd=$repo
check_only=0
kernel_spec=${NETDISK_VM_KERNEL:-}

need_arg() { [ $# -ge 2 ] || fail "$1 needs an argument"; }
while [ $# -gt 0 ]; do
	case $1 in
	--kernel) need_arg "$@"; kernel_spec=$2; shift 2 ;;
	--kernel=*) kernel_spec=${1#*=}; shift ;;
	--share) need_arg "$@"; shares+=("$2"); shift 2 ;;
	--share=*) shares+=("${1#*=}"); shift ;;
	--timeout) need_arg "$@"; timeout_s=$2; shift 2 ;;
	--timeout=*) timeout_s=${1#*=}; shift ;;
	--mem) need_arg "$@"; mem=$2; shift 2 ;;
	--mem=*) mem=${1#*=}; shift ;;
	--cwd) need_arg "$@"; cwd=$2; shift 2 ;;
	--cwd=*) cwd=${1#*=}; shift ;;
	--env) need_arg "$@"; envs+=("$2"); shift 2 ;;
	--env=*) envs+=("${1#*=}"); shift ;;
	--check) check_only=1; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) usage >&2; fail "unknown option: $1" ;;
	esac
done

[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || fail "--timeout must be a positive number of seconds"
[[ $mem =~ ^[1-9][0-9]*$ ]] || fail "--mem must be a positive number of MB"
[[ $smp =~ ^[1-9][0-9]*$ ]] || fail "NETDISK_VM_SMP must be a positive number"
[[ $retries =~ ^[0-9]+$ ]] || fail "NETDISK_VM_BOOT_RETRIES must be a number (0 or more)"
for kv in "${envs[@]}"; do
	[[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || fail "--env wants NAME=VALUE, got: $kv"
done
if [ "$check_only" = 0 ] && [ $# -eq 0 ]; then
	usage >&2
	fail "no command given"
fi
command_str="$*"

[[ $kernel_spec =~ ^[0-9A-Za-z.+~_-]*$ ]] || fail "--kernel: not a kernel version: $kernel_spec"
if kernel_known_bad "$kernel_spec"; then
	fail "kernel $kernel_spec is known to oops in ublk's ADD_DEV; pick another"
fi
kline=$(kernel_pick "$kernel_spec")
if [ -z "$kline" ]; then
	fail "no kernel matching '${kernel_spec:-the installed 6.12+}' (have: $(kernel_list | cut -d' ' -f1 | paste -sd' ')); run scripts/setup-deps.sh"
fi
read -r kver vmlinuz modbase <<<"$kline"
[ -r "$vmlinuz" ] || fail "cannot read $vmlinuz"
for tool in qemu-system-x86_64 timeout flock cpio gzip xz modprobe; do
	command -v "$tool" >/dev/null || fail "$tool not found; run scripts/setup-deps.sh"
done
[ -x /bin/busybox ] || fail "/bin/busybox not found; run scripts/setup-deps.sh"
if [ "$check_only" = 1 ]; then
	echo "netdisk-vm: ok (kernel $kver)"
	exit 0
fi

# qemu -fsdev/-device values are comma separated; a literal comma is written twice.
qesc() { printf '%s' "${1//,/,,}"; }

cwd=$(realpath -m -- "$cwd")
share_paths=("$repo")
for s in "${shares[@]}"; do
	[ -d "$s" ] || fail "--share $s: not a directory"
	share_paths+=("$(realpath -e -- "$s")")
done
for p in "${share_paths[@]}" "$cwd"; do
	[[ $p != *$'\n'* ]] || fail "paths with newlines are not supported: $p"
done
# Parents before children so a nested share is mounted on top of its parent; duplicates
# are dropped.
mapfile -t share_paths < <(printf '%s\n' "${share_paths[@]}" | awk '{ print length($0) "\t" $0 }' | sort -n -k1,1 -s | cut -f2- | awk '!seen[$0]++')

mkdir -p "$cache" || fail "cannot create $cache"

# One VM at a time on this machine: wait for the lock, tell the user once if we wait.
exec 9>>"$lockfile" || fail "cannot open lock file $lockfile"
if ! flock -n 9; then
	echo "netdisk-vm: waiting for another VM to finish (lock $lockfile)" >&2
	flock 9 || fail "cannot lock $lockfile"
fi

# Rebuilt when the kernel (its modules.dep), the busybox binary or the two scripts that
# define the image change.
initrd=$cache/initramfs-$kver.cpio.gz
key=$({
	echo "$kver"
	sha256sum "${modbase%/}/lib/modules/$kver/modules.dep" /bin/busybox "$here/init.sh" "$here/build-initramfs.sh" | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)
if [ ! -f "$initrd" ] || [ "$(cat "$initrd.key" 2>/dev/null)" != "$key" ]; then
	"$here/build-initramfs.sh" "$kver" "$initrd" "$modbase" || fail "building the initramfs failed"
	echo "$key" >"$initrd.key"
fi

ctl=$(mktemp -d "${TMPDIR:-/tmp}/netdisk-vm.XXXXXX") || fail "mktemp failed"
qpid=""
cleanup() {
	[ -z "$qpid" ] || kill "$qpid" 2>/dev/null
	rm -rf "$ctl"
}
trap cleanup EXIT
# A caller killing run.sh (mocha timeout, ^C) must not leave qemu behind; timeout(1)
# passes the signal on to qemu.
trap 'cleanup; trap - EXIT; exit 130' INT
trap 'cleanup; trap - EXIT; exit 143' TERM HUP

{
	echo '# Generated by test/vm/run.sh; runs chrooted in the guest.'
	echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
	echo 'export HOME=/run/netdisk-vm-home LANG=C.UTF-8 NETDISK_IN_VM=1'
	for kv in "${envs[@]}"; do
		printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
	done
	printf 'cd -- %q || { echo "netdisk-vm: cannot cd to %q in the guest" >&2; exit %d; }\n' "$cwd" "$cwd" "$E_HARNESS"
	printf 'exec /bin/bash -c %q\n' "$command_str"
} >"$ctl/job.sh"

fsargs=(
	-fsdev "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap"
	-device virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot
	-fsdev "local,id=fsctl,path=$(qesc "$ctl"),security_model=none"
	-device virtio-9p-pci,fsdev=fsctl,mount_tag=ctl
)
: >"$ctl/shares"
# A kernel outside the host's /lib/modules: the guest sees its tree there (modprobe, modinfo).
[ "$modbase" = / ] || printf '%s\n' "$modbase/lib/modules" >"$ctl/modules"
i=0
for p in "${share_paths[@]}"; do
	fsargs+=(
		-fsdev "local,id=fs$i,path=$(qesc "$p"),security_model=none,multidevs=remap"
		-device "virtio-9p-pci,fsdev=fs$i,mount_tag=share$i"
	)
	printf 'share%d %s\n' "$i" "$p" >>"$ctl/shares"
	i=$((i + 1))
done

console=$cache/console.log
# Under TCG a kernel can, rarely, die in its own boot before /init runs the command: an
# "Oops: int3" where a static key was being patched while the other vCPU ran that code
# (seen once with 7.3.4, in sched_clock_cpu as sched_clock was marked stable). Nothing of
# the command has run then, so booting again is safe; it is said on stderr, with the
# console lines that show why. A kernel that dies once the command has started is never
# booted again: that is the test's failure to report.
boots=$((1 + retries))
boot=1
while :; do
	started=$(date +%s)
	timeout -k 10 "$timeout_s" qemu-system-x86_64 \
		-machine "accel=$accel" -cpu "$cpu" -smp "$smp" -m "$mem" \
		-nographic -no-reboot -nic none \
		-device virtio-rng-pci \
		-kernel "$vmlinuz" -initrd "$initrd" \
		-append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=5 mitigations=off${append:+ $append}" \
		"${fsargs[@]}" \
		</dev/null >"$console" 2>&1 &
	qpid=$!
	wait "$qpid"
	qrc=$?
	qpid=""
	elapsed=$(($(date +%s) - started))
	# /init writes uname just before it starts the command: without it the command never ran.
	if [ "$boot" -ge "$boots" ] || [ "$qrc" = 124 ] || [ "$qrc" = 137 ] ||
		[ -e "$ctl/uname" ] || [ -e "$ctl/init-error" ] || [ -e "$ctl/rc" ] ||
		! grep -qE 'Kernel panic|Oops|BUG:' "$console"; then
		break
	fi
	cp "$console" "$cache/console-failed-boot.log"
	echo "netdisk-vm: the kernel died during its boot, before the command ran (${elapsed}s); booting again ($((boot + 1)) of $boots). Console of the failed boot: $cache/console-failed-boot.log" >&2
	grep -m 3 -E 'Kernel panic|Oops|BUG:|RIP:' "$console" | sed 's/^/  | /' >&2
	rm -f "$ctl/kmsg" "$ctl/dmesg"
	boot=$((boot + 1))
done

[ -f "$ctl/stdout" ] && cat "$ctl/stdout"
[ -f "$ctl/stderr" ] && cat "$ctl/stderr" >&2
# Which kernel ran, as the guest's uname -r says; callers (test/helpers/vm.ts) read it here.
[ -s "$ctl/uname" ] && echo "netdisk-vm: ran on kernel $(cat "$ctl/uname")" >&2
# The final dmesg when the job ended normally, else what the streamed /dev/kmsg caught,
# reformatted from its "prio,seq,usec,flags;text" records to dmesg's "[sec] text".
if [ ! -f "$ctl/dmesg" ] && [ -f "$ctl/kmsg" ]; then
	awk '/^[0-9]/ {
		i = index($0, ";"); split(substr($0, 1, i - 1), h, ",")
		printf "[%5d.%06d] %s\n", h[3] / 1000000, h[3] % 1000000, substr($0, i + 1)
	}' "$ctl/kmsg" >"$ctl/dmesg"
fi
if [ -n "${NETDISK_VM_DMESG:-}" ] && [ -f "$ctl/dmesg" ]; then
	cp "$ctl/dmesg" "$NETDISK_VM_DMESG" || echo "netdisk-vm: cannot write $NETDISK_VM_DMESG" >&2
fi
kernel_tail() {
	[ -s "$ctl/dmesg" ] || return 0
	echo "netdisk-vm: last kernel messages:" >&2
	tail -n 15 "$ctl/dmesg" | sed 's/^/  | /' >&2
}

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "netdisk-vm: timed out after ${timeout_s}s; VM killed (console: $console)" >&2
	kernel_tail
	exit "$E_TIMEOUT"
fi
if [ -f "$ctl/init-error" ]; then
	echo "netdisk-vm: the VM could not run the command: $(cat "$ctl/init-error")" >&2
	exit "$E_HARNESS"
fi
if [ ! -f "$ctl/rc" ]; then
	echo "netdisk-vm: the VM stopped without reporting an exit code (qemu status $qrc, ${elapsed}s); last console lines from $console:" >&2
	tail -n 30 "$console" | sed 's/^/  | /' >&2
	kernel_tail
	exit "$E_HARNESS"
fi
rc=$(cat "$ctl/rc")
[[ $rc =~ ^[0-9]+$ ]] || fail "bad exit code from the VM: $rc"
exit "$rc"
