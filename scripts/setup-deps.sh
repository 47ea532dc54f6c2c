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
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=../test/vm/kernels.sh
. "$here/../test/vm/kernels.sh"

# The Debian mirror this machine's apt uses for its own suite: the URIs of deb822 stanzas
# (/etc/apt/sources.list.d/*.sources) and of one-line entries (sources.list, *.list) whose
# suites include $codename. Other suites are fetched from the same mirror.
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v want="$codename" 'BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[ \t]*#/) continue
          if (match($i, /^[A-Za-z-]+:/)) {
            key = tolower(substr($i, 1, RLENGTH - 1)); val = substr($i, RLENGTH + 1)
            if (key == "types") types = val; else if (key == "uris") uris = val
            else if (key == "suites") suites = val; else if (key == "enabled") enabled = val
          }
        }
        if (enabled ~ /no/ || (" " types " ") !~ /[ \t]deb[ \t]/) next
        if ((" " suites " ") !~ ("[ \t]" want "[ \t]")) next
        n = split(uris, u, /[ \t]+/)
        for (i = 1; i <= n; i++) if (u[i] != "") print u[i]
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v want="$codename" '$1 == "deb" && $3 == want { print $2 }'
  done
}
mirror=$(debian_mirror | head -n1)
if [ -z "$mirror" ]; then
  echo "setup-deps: no apt source for ${codename} in /etc/apt/sources.list or /etc/apt/sources.list.d/; cannot tell which Debian mirror to use" >&2
  exit 1
fi
mirror=${mirror%/}

# The test VM boots Debian's backports kernel, which ships ublk_drv and nbd.
if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb ${mirror} ${codename}-backports main" > /etc/apt/sources.list.d/netdisk-backports.list
fi

pkgs=(
  build-essential python3 liburing-dev pkg-config
  nbdkit nbd-server nbd-client libnbd-bin python3-libnbd qemu-utils fio
  dosfstools mtools e2fsprogs util-linux
  gnutls-bin openssl strace
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

# The test VM also boots the newest 7.x from trixie-backports. Its packages are downloaded
# with an apt configuration of our own (source list, package lists, cache) and extracted
# into $NETDISK_KERNELS_DIR: installing them on a bookworm host would pull in trixie's
# linux-base. debian-archive-keyring holds trixie's archive keys, so the index is verified
# as any other.
fetch_backports_kernel() {
  local suite=trixie-backports keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  local state=$NETDISK_KERNELS_DIR/.apt ver dest tmp p
  mkdir -p "$state/lists/partial" "$state/archives/partial"
  echo "deb [signed-by=${keyring}] ${mirror} ${suite} main" >"$state/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=-
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache::Archives=$state/archives"
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  if ! apt-get "${apt[@]}" -qq update; then
    if [ -n "$(kernel_pick 7)" ]; then
      echo "setup-deps: warning: cannot reach ${suite}; keeping $(kernel_pick 7 | cut -d' ' -f1)" >&2
      return 0
    fi
    echo "setup-deps: cannot read ${suite} from ${mirror}" >&2
    return 1
  fi
  # Since 6.19.6 an image is linux-binary-VER (vmlinuz), linux-modules-VER and
  # linux-base-VER (config, System.map); the generic flavour ends in +debNN-amd64.
  ver=$(apt-cache "${apt[@]}" search --names-only '^linux-binary-[0-9]' | awk '{ print $1 }' |
    sed -n 's/^linux-binary-\([0-9][0-9.]*+deb[0-9]*-amd64\)$/\1/p' |
    while read -r v; do
      [ "$(printf '%s\n' 7 "$(kernel_upstream "$v")" | sort -V | head -n1)" = 7 ] || continue
      kernel_known_bad "$v" || echo "$v"
    done | sort -V | tail -n1)
  if [ -z "$ver" ]; then
    echo "setup-deps: no 7.x linux-binary-*-amd64 in ${suite}" >&2
    return 1
  fi
  dest=$NETDISK_KERNELS_DIR/$ver
  if [ -f "$dest/lib/modules/$ver/modules.dep" ] && [ -r "$dest/lib/modules/$ver/vmlinuz" ]; then
    return 0
  fi
  echo "setup-deps: fetching kernel $ver from ${suite} into $dest"
  tmp=$NETDISK_KERNELS_DIR/.fetch-$ver
  rm -rf "$tmp" "$dest"
  mkdir -p "$tmp/debs" "$tmp/root"
  # apt downloads as _apt where it can write.
  ! id _apt >/dev/null 2>&1 || chown _apt "$tmp/debs"
  (cd "$tmp/debs" && apt-get "${apt[@]}" -qq download "linux-binary-$ver" "linux-modules-$ver" "linux-base-$ver")
  for p in "$tmp"/debs/*.deb; do dpkg-deb -x "$p" "$tmp/root"; done
  [ -e "$tmp/root/lib" ] || ln -s usr/lib "$tmp/root/lib"
  [ -r "$tmp/root/lib/modules/$ver/vmlinuz" ] || { echo "setup-deps: no vmlinuz in linux-binary-$ver" >&2; return 1; }
  depmod -b "$tmp/root" "$ver"
  mv "$tmp/root" "$dest"
  rm -rf "$tmp"
  # Versions roll: an older 7.x is only disk space now.
  for p in "$NETDISK_KERNELS_DIR"/7.*; do
    [ -d "$p" ] && [ "$p" != "$dest" ] && rm -rf "$p"
  done
  return 0
}
fetch_backports_kernel

echo "setup-deps: ok"
