#!/usr/bin/env bash
# Installs the Debian packages netdisk-ublk builds with and tests against.
# Idempotent: a second run only checks. Needs root (apt).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-deps: run as root (apt-get needs it)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

# The test VM boots Debian's backports kernel, which ships ublk_drv and nbd.
if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian ${codename}-backports main" > /etc/apt/sources.list.d/netdisk-backports.list
fi

pkgs=(
  build-essential python3 liburing-dev pkg-config
  nbdkit nbd-server nbd-client libnbd-bin python3-libnbd qemu-utils fio
  dosfstools mtools e2fsprogs util-linux
  qemu-system-x86 busybox-static xz-utils cpio kmod iproute2
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

kernel_pkg=$(ls /usr/lib/modules 2>/dev/null | grep -E '^6\.(1[2-9]|[2-9][0-9])\.[0-9]+[^-]*-amd64$' | sort -V | tail -n1 || true)
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  # Take the newest 6.12+ generic (not rt, not cloud) unsigned image that backports offers (versions roll).
  kpkg=$(apt-cache search --names-only '^linux-image-6\.[0-9]+\.[0-9]+[^-]*-amd64-unsigned$' \
    | awk '{print $1}' | grep -E '^linux-image-6\.(1[2-9]|[2-9][0-9])\.' | sort -V | tail -n1)
  if [ -z "$kpkg" ]; then
    echo "setup-deps: no linux-image-6.x-amd64-unsigned found in ${codename}-backports" >&2
    exit 1
  fi
  missing+=("$kpkg")
fi

if [ ${#missing[@]} -gt 0 ]; then
  [ -n "${kpkg:-}" ] || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "setup-deps: ok"
