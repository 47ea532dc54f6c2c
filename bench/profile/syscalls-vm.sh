#!/usr/bin/env bash
# System calls and CPU per 4 KiB QD1 request of the daemon's queue thread, per transport,
# on a real kernel: one `nbdkit memory` store, our device on each transport in turn (the
# kernel nbd device once, for reference), fio QD1 random reads and writes. For each case:
#  - CPU per request of every thread (from /proc/PID/task/TID/stat over one fio run,
#    divided by the requests fio completed), without any tracer attached;
#  - `strace -c` on the queue thread over a second fio run, each call's count divided by
#    that run's requests (strace slows the thread, not what it calls per request);
#  - with TRACE=1, a few requests' calls in order (`strace -ttt`), to see what one
#    request's wake-ups are.
# strace is used, not perf trace: enabling syscall tracepoints crashed the guest kernel
# (profile-2026-11-27.md). Needs root and a kernel with ublk and nbd: runs itself in the
# test VM otherwise (KERNEL=7 for the newest 7.x).
#
#   bench/profile/syscalls-vm.sh [SECONDS] [TRANSPORT...]     (default 5, ring stream)
#
# CHECKOUTS="DIR..." measures the daemon of each checkout (built) in turn, transport by
# transport, for a before/after in one boot (share the other checkouts into the VM:
# test/vm/run.sh --share DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
shift || true
transports=${*:-ring stream}
if [ ! -e /dev/ublk-control ] && [ "${NETDISK_IN_VM:-}" != 1 ]; then
  echo "syscalls-vm: this kernel has no ublk; profiling inside the test VM" >&2
  shares=()
  for c in ${CHECKOUTS:-}; do [ "$c" = "$PWD" ] || shares+=(--share "$c"); done
  exec test/vm/run.sh --kernel "${KERNEL:-6.12}" --timeout 1200 "${shares[@]}" --env TRACE="${TRACE:-0}" \
    --env CHECKOUTS="${CHECKOUTS:-}" -- bench/profile/syscalls-vm.sh "$secs" "$transports"
fi
checkouts=${CHECKOUTS:-$PWD}
echo "kernel $(uname -r), clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
. bench/profile/store.sh
hz=$(getconf CLK_TCK)
# fio QD1 on $1, $2 (randread|randwrite) for $3 s; prints "requests p50us"
qd1() {
  fio --name=qd1 --filename=$1 --direct=1 --ioengine=libaio --rw=$2 --bs=4k --iodepth=1 \
    --norandommap --randrepeat=0 --time_based --runtime=$3 --lat_percentiles=1 --output-format=json |
    node -e '
    const j = JSON.parse(require("fs").readFileSync(0, "utf8").replace(/^[^{]*/, "")).jobs[0];
    const r = j.read.total_ios > 0 ? j.read : j.write;
    console.log(`${r.total_ios} ${(r.lat_ns.percentile["50.000000"] / 1000).toFixed(0)}`);'
}
cpu() { # $1 requests: per-thread CPU between /tmp/sc-a and /tmp/sc-b
  join /tmp/sc-a /tmp/sc-b | awk -v hz=$hz -v n="$1" '
    { split($1, p, "/"); u = $6 - $3; y = $7 - $4; if (u + y < 2) next;
      k = $2 " (pid " p[3] ")"; U[k] += u; Y[k] += y; tu += u; ty += y }
    END { f = 1e6 / hz / n;
      for (k in U) printf "| %s | %.0f | %.0f |\n", k, U[k] * f, Y[k] * f;
      printf "| **all threads** | **%.0f** | **%.0f** |\n", tu * f, ty * f }' | sort -t'|' -k4 -nr
}
# The queue thread's voluntary context switches: each one is a sleep (a wait for the next
# event in epoll_pwait or io_uring_enter), counted without a tracer.
sleeps() { [ -n "${1:-}" ] && awk '/^voluntary_ctxt_switches/ { print $2 }' /proc/$1/status || echo 0; }
case_run() { # $1 device, $2 rw, $3 queue thread tid or ''
  snap > /tmp/sc-a
  s0=$(sleeps $3)
  qd1 $1 $2 $secs > /tmp/sc-fio
  s1=$(sleeps $3)
  snap > /tmp/sc-b
  read n p50 < /tmp/sc-fio
  echo "### $2: $n requests in $secs s, p50 $p50 us"
  echo
  [ -n "$3" ] && echo "queue thread: $(awk -v a=$s0 -v b=$s1 -v n=$n 'BEGIN { printf "%.2f", (b - a) / n }') sleeps per request (voluntary context switches)" && echo
  echo "| thread | user us/request | system us/request |"
  echo "|---|---:|---:|"
  cpu $n
  echo
  [ -n "$3" ] || return 0
  strace -c -p $3 -o /tmp/sc-strace &
  st=$!
  sleep 1
  qd1 $1 $2 $secs > /tmp/sc-fio
  kill -INT $st; wait $st || true
  read n p50 < /tmp/sc-fio
  echo "strace -c on the queue thread ($n requests, p50 $p50 us under strace): calls per request"
  echo
  echo "| call | per request | errors per request |"
  echo "|---|---:|---:|"
  awk -v n=$n '$1 ~ /^[0-9.]+$/ && NF >= 5 { name = $NF; calls = $4; err = (NF == 6 ? $5 : 0);
    printf "| %s | %.2f | %.2f |\n", name, calls / n, err / n }' /tmp/sc-strace
  echo
  if [ "${TRACE:-0}" = 1 ]; then
    timeout 2 strace -ttt -p $3 -o /tmp/sc-trace 2>/dev/null &
    st=$!
    qd1 $1 $2 2 >/dev/null
    wait $st || true
    echo '```'; sed -n '20,60p' /tmp/sc-trace | cut -c1-150; echo '```'; echo
  fi
}
for t in $transports; do
  for c in $checkouts; do
    B="node $c/bin/netdisk-ublk.js"
    dev=$($B add --remote 127.0.0.1:$port --transport $t)
    echo none > /sys/block/$(basename $dev)/queue/scheduler
    pid=$($B list --json | node -e 'const d = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(d[0].pid)')
    # V8 optimises the daemon slowly under an emulated CPU: warm it up first.
    qd1 $dev randread 15 >/dev/null
    qd1 $dev randwrite 8 >/dev/null
    # The queue thread: the daemon's thread that used the most CPU.
    tid=$(for s in /proc/$pid/task/*/stat; do awk '{ r=$0; sub(/^.*\) /, "", r); split(r, f, " "); print f[12] + f[13], FILENAME }' $s; done |
      sort -nr | head -1 | awk '{ split($2, p, "/"); print p[5] }')
    echo "## $dev, transport $t, $c at $(git -C $c rev-parse --short HEAD 2>/dev/null || echo '?') (daemon $pid, queue thread $tid)"
    echo
    for rw in randread randwrite; do case_run $dev $rw $tid; done
    $B del --all >/dev/null
  done
done
nbd-client 127.0.0.1 $port /dev/nbd0 -N '' -b 512 >/dev/null 2>&1
echo none > /sys/block/nbd0/queue/scheduler
qd1 /dev/nbd0 randread 5 >/dev/null
echo "## /dev/nbd0, kernel nbd"
echo
for rw in randread randwrite; do case_run /dev/nbd0 $rw ''; done
