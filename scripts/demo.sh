#!/usr/bin/env bash
# The main job, end to end: a store on a sparse image, a ublk device on it, a filesystem,
# some files, then clean-up. Runs natively where the kernel has ublk; elsewhere inside the
# project's test VM (Debian's 6.12 kernel under qemu, see test/vm/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /dev/ublk-control ] && [ "${NETDISK_IN_VM:-}" != 1 ]; then
  echo "demo: this kernel has no ublk (/dev/ublk-control); running the demo inside the test VM" >&2
  exec test/vm/run.sh --timeout 900 -- scripts/demo.sh
fi
echo
B="node bin/netdisk-ublk.js"
work=$(mktemp -d /tmp/netdisk-demo.XXXXXX)
cleanup() {
  set +e
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  $B del --all >/dev/null 2>&1
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n$ %s\n' "$*"; "$@"; }

step $B serve "$work/disk.img" --size 256M --listen 127.0.0.1:10809 2>"$work/serve.log" &
server=$!
for _ in $(seq 50); do grep -q '"serving"' "$work/serve.log" 2>/dev/null && break; sleep 0.2; done
step ls -ls "$work/disk.img"
dev=$($B add --remote 127.0.0.1:10809)
printf '\n$ netdisk-ublk add --remote 127.0.0.1:10809\n%s\n' "$dev"
step $B list
step blockdev --getsize64 "$dev"
step mkfs.ext4 -q "$dev"
mkdir -p "$work/mnt"
step mount "$dev" "$work/mnt"
step cp -r README.md src "$work/mnt/"
step ls -l "$work/mnt"
step df -h "$work/mnt"
step umount "$work/mnt"
step $B del --all
step e2fsck -fn "$work/disk.img"
step ls -ls "$work/disk.img"
