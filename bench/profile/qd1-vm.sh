#!/usr/bin/env bash
# Where the CPU time of one 4 KiB QD1 read goes on the whole path, on a real kernel: fio
# runs QD1 random reads on netdisk-ublk's device and on the kernel nbd device, both
# attached to one `nbdkit memory` store, and the CPU time every thread used in the window
# (user and system, from /proc/PID/task/TID/stat) is divided by the requests fio completed.
# At QD1 a request is one chain of work from fio to the store and back, so these add up to
# what one request costs, thread by thread. Then the TypeScript part alone (no ublk: the
# bench's stand-in for the kernel side, against the same store) measures its own CPU time
# per request, and fio's nbd engine (libnbd, C) gives a userspace client to compare with.
# Sampling profilers are no use here: perf's cpu-clock samples in the emulated guest land
# almost only in the idle task, and enabling tracepoints can crash the guest kernel.
# Needs root and a kernel with ublk and nbd: runs itself in the test VM otherwise.
#
#   bench/profile/qd1-vm.sh [SECONDS]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
if [ ! -e /dev/ublk-control ] && [ "${NETDISK_IN_VM:-}" != 1 ]; then
  echo "qd1-vm: this kernel has no ublk; profiling inside the test VM" >&2
  exec test/vm/run.sh --timeout 1800 -- bench/profile/qd1-vm.sh "$secs"
fi
. bench/profile/store.sh
echo
dev=$($B add --remote 127.0.0.1:$port)
nbd-client 127.0.0.1 $port /dev/nbd0 -N '' -b 512 >/dev/null 2>&1
for d in $dev /dev/nbd0; do echo none > /sys/block/$(basename $d)/queue/scheduler; done
hz=$(getconf CLK_TCK)
qd1() {
  fio --name=qd1 --filename=$1 --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=1 \
    --norandommap --randrepeat=0 --time_based --runtime=$2 --lat_percentiles=1 --output-format=json
}
summary() { node -e '
  const j = JSON.parse(require("fs").readFileSync(0, "utf8").replace(/^[^{]*/, "")).jobs[0], r = j.read;
  console.log(`${r.iops.toFixed(0)} ${(r.lat_ns.percentile["50.000000"] / 1000).toFixed(0)}`);'; }
# V8 optimises the daemon slowly under an emulated CPU: warm it up first.
qd1 $dev 40 >/dev/null
for d in $dev /dev/nbd0; do
  snap > /tmp/qd1-a
  qd1 $d $secs | summary > /tmp/qd1-fio   # (no <(...): the VM's /dev has no fd links)
  read iops p50 < /tmp/qd1-fio
  snap > /tmp/qd1-b
  echo "## $(basename $d): 4 KiB random read QD1, $iops IOPS, p50 $p50 us"
  echo
  echo "| thread | user us/request | system us/request |"
  echo "|---|---:|---:|"
  join /tmp/qd1-a /tmp/qd1-b | awk -v hz=$hz -v n="$iops" -v s=$secs '
    { split($1, p, "/"); u = $6 - $3; y = $7 - $4; if (u + y < 2) next;
      k = $2 " (pid " p[3] ")"; U[k] += u; Y[k] += y; tu += u; ty += y }
    END { f = 1e6 / hz / (n * s);
      for (k in U) printf "| %s | %.0f | %.0f |\n", k, U[k] * f, Y[k] * f;
      printf "| **all threads** | **%.0f** | **%.0f** |\n", tu * f, ty * f }' | sort -t'|' -k4 -nr
  echo
done
echo "## the TypeScript part alone, no ublk (bench's stand-in for the kernel side)"
echo
node dist/bench/ts-path.js --json --seconds 3 --slices 3 --where vm \
  --cases randread-4k-qd1,randwrite-4k-qd1,randread-4k-qd32,randwrite-4k-qd32 | node -e '
  const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
  console.log("| case | IOPS | CPU us/request (median slice) | least |\n|---|---:|---:|---:|");
  for (const x of r.results)
    console.log(`| ${x.name} | ${x.iops.toFixed(0)} | ${x.cpuUsPerRequest.toFixed(0)} | ${x.minCpuUsPerRequest.toFixed(0)} |`);'
echo
echo "## fio's nbd engine (libnbd), no block device"
echo
fio --name=x --ioengine=nbd --uri=nbd://127.0.0.1:$port/ --rw=randread --bs=4k --iodepth=1 --time_based --runtime=$secs \
  --size=256M --output-format=json 2>/dev/null | node -e '
  const j = JSON.parse(require("fs").readFileSync(0, "utf8").replace(/^[^{]*/, "")).jobs[0], r = j.read;
  const cpu = (j.usr_cpu + j.sys_cpu) / 100 * 1e6 / r.iops;
  console.log(`${r.iops.toFixed(0)} IOPS, p50 ${(r.clat_ns.percentile["50.000000"] / 1000).toFixed(0)} us, fio CPU ${cpu.toFixed(0)} us/request`);'
