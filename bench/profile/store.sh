# Sourced by the profile scripts, from the package root, once they run where ublk is: the
# CLI ($B), an `nbdkit memory` store on $port that goes away with the script (its devices
# detached first), and snap: every thread's CPU time so far, one line each (task path,
# name, utime, stime in clock ticks), from one awk so the snapshot itself costs little.
B="node bin/netdisk-ublk.js"
port=10899
nbdkit -f --exit-with-parent -p $port -i 127.0.0.1 memory 256M &
kit=$!
cleanup() {
  set +e
  nbd-client -d /dev/nbd0 >/dev/null 2>&1
  $B del --all >/dev/null 2>&1
  kill $kit 2>/dev/null
}
trap cleanup EXIT
sleep 1
snap() { awk '{ c=$0; sub(/^[^(]*\(/, "", c); sub(/\).*/, "", c); gsub(/ /, "_", c);
  r=$0; sub(/^.*\) /, "", r); split(r, f, " "); print FILENAME, c, f[12], f[13] }' /proc/[0-9]*/task/[0-9]*/stat 2>/dev/null | sort; }
