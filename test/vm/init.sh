#!/bin/busybox sh
# /init of the test VM's initramfs (busybox sh, PID 1).
#
# Loads the modules packed by build-initramfs.sh, mounts the host's / read-only over
# virtio-9p as the new root, overlays the writable bits a test needs (tmpfs, the shares),
# runs the job written by run.sh chrooted, stores its results in the "ctl" share and
# powers off. Results go to files, never to the console: the serial line is slow and
# may drop output.

/bin/busybox --install -s /bin
export PATH=/bin

R=/newroot
# Large messages cut the number of 9p round trips, which are expensive under TCG.
P9="trans=virtio,version=9p2000.L,msize=512000"
CTL_OK=0

log() {
	echo "netdisk-vm-init: $*" >/dev/console
}

# Records why the VM could not run the job, so the host can say so, then stops the VM.
die() {
	log "FATAL: $*"
	if [ "$CTL_OK" = 1 ]; then
		echo "$*" >>/ctl/init-error
		dmesg >/ctl/dmesg 2>/dev/null
		sync
	fi
	poweroff_now
}

poweroff_now() {
	sync
	poweroff -f
	# Reached only if ACPI power-off did not work; qemu runs with -no-reboot.
	echo o >/proc/sysrq-trigger
	sleep 5
	reboot -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Load order was fixed on the host from modules.dep and modules.softdep. A module that
# fails to load is reported; only the 9p ones are fatal (checked by the mounts below).
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m" 2>/tmp-insmod.err || log "insmod $m failed: $(cat /tmp-insmod.err)"
done </lib/modules/order

mkdir -p /ctl "$R"
# The control share is never cached: the host reads it after the VM is gone, and the
# job script must be read exactly as the host wrote it.
mount -t 9p -o "$P9,cache=none" ctl /ctl || die "cannot mount the ctl share"
CTL_OK=1
[ -f /ctl/job.sh ] || die "no job.sh in the ctl share"

# The host root never changes under the VM's feet while a job runs, so loose caching is
# safe and makes loading node and node_modules much faster.
mount -t 9p -o "ro,$P9,cache=loose" hostroot "$R" || die "cannot mount the host root"

mount -t proc proc "$R/proc" || die "cannot mount proc"
mount -t sysfs sysfs "$R/sys" || die "cannot mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || die "cannot mount devtmpfs"
mount -t debugfs debugfs "$R/sys/kernel/debug" 2>/dev/null
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
# devtmpfs has no /dev/fd; bash process substitution and many scripts need it.
ln -sfn /proc/self/fd "$R/dev/fd"
ln -sfn /proc/self/fd/0 "$R/dev/stdin"
ln -sfn /proc/self/fd/1 "$R/dev/stdout"
ln -sfn /proc/self/fd/2 "$R/dev/stderr"

# Writable scratch space. Only directories that exist on the host can be mount points
# (the root is read-only). /mnt is covered only when empty on the host, so nothing
# installed there disappears.
for d in /tmp /var/tmp; do
	[ -d "$R$d" ] && mount -t tmpfs -o mode=1777 tmpfs "$R$d"
done
[ -d "$R/run" ] && mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mkdir -p "$R/run/lock" && chmod 1777 "$R/run/lock"
if [ -d "$R/mnt" ] && [ -z "$(ls -A "$R/mnt" 2>/dev/null)" ]; then
	mount -t tmpfs -o mode=0755 tmpfs "$R/mnt"
fi

# Read-write shares at their host paths, after the tmpfs mounts (a checkout under /tmp
# must not be hidden by them). run.sh lists parents before children.
# cache=loose (metadata and data cached, writeback) is safe because the host does not
# touch the shares while the VM runs and reads them only after the final sync; it makes
# node's module resolution (thousands of stats) about twice as fast as cache=mmap.
while read -r tag path; do
	[ -n "$tag" ] || continue
	mkdir -p "$R$path" 2>/dev/null
	mount -t 9p -o "$P9,cache=loose" "$tag" "$R$path" || die "cannot mount share $path"
done </ctl/shares

# A kernel that is not installed on the host brings its own module tree (run.sh names it):
# shown at /lib/modules so modprobe in the guest finds it. It hides the host's trees, which
# are of no use to this kernel.
if [ -s /ctl/modules ]; then
	mods=$R/lib/modules
	[ -L "$R/lib" ] && mods=$R/usr/lib/modules # merged /usr: /lib -> usr/lib
	mount --bind "$R$(cat /ctl/modules)" "$mods" || die "cannot bind the kernel's modules"
fi
uname -r >/ctl/uname

mkdir -p "$R/run/netdisk-vm"
mount --bind /ctl "$R/run/netdisk-vm" || die "cannot bind the ctl share"
mkdir -p "$R/run/netdisk-vm-home"

hostname netdisk-vm
ip link set lo up

# The kernel log streamed as it is written, so a job that hangs the VM until the host's
# timeout still leaves its kernel messages behind (run.sh converts this on timeout).
cat /dev/kmsg >/ctl/kmsg 2>/dev/null &
kmsg_pid=$!

# env -i: nothing of the kernel's or this shell's environment leaks into the job; job.sh
# sets everything the job sees.
env -i /bin/chroot "$R" /bin/bash /run/netdisk-vm/job.sh \
	</dev/null >/ctl/stdout 2>/ctl/stderr
rc=$?

kill "$kmsg_pid" 2>/dev/null
dmesg >/ctl/dmesg 2>/dev/null
# rc is written last: its presence tells the host that everything else is complete.
echo "$rc" >/ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
poweroff_now
