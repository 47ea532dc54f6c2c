#!/usr/bin/env bash
# Where the CPU time of the TypeScript part of one 4 KiB QD1 read goes, natively: perf
# samples the bench's stand-in for the kernel side driving QueueService, UblkQueue and the
# NBD client against `nbdkit memory` on loopback, with V8's frames named (--perf-basic-prof).
# Prints the split by binary and the heaviest call paths, inclusive.
#
#   bench/profile/ts-native.sh [CASE] [SECONDS]   (default: "4 KiB random read, QD1", 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
case=${1:-4 KiB random read, QD1}
secs=${2:-2}
data=$(mktemp /tmp/netdisk-ts-native.XXXXXX)
trap 'rm -f "$data" /tmp/perf-*.map' EXIT
perf record -q -g -F 4999 -o "$data" -- node --perf-basic-prof -e '
  const t = require("./dist/src/bench/ts-path.js"), p = require("./dist/src/bench/procs.js");
  (async () => {
    const port = await p.freePort();
    const kit = require("child_process").spawn("nbdkit", ["-f", "--exit-with-parent", "-p", String(port), "-i", "127.0.0.1", "memory", "256M"]);
    await p.waitForPort("127.0.0.1", port, 10000, kit);
    const r = await t.measureTsPath("127.0.0.1", port, t.TS_PATH_CASES.find((c) => c.name === process.argv[1]), Number(process.argv[2]), 5);
    console.log(`${r.name}: ${r.iops.toFixed(0)} IOPS, ${r.cpuUsPerRequest.toFixed(1)} us of CPU per request`);
    kit.kill();
  })();' "$case" "$secs"
echo
echo "By binary (self time of the node process):"
perf report -i "$data" --stdio --no-children --comm node --sort dso -g none 2>/dev/null | grep '%' | head -6
echo
echo "Inclusive, the steps of the path:"
perf report -i "$data" --stdio --children --comm node --sort sym -g none 2>/dev/null | grep '%' |
  grep -E 'do_syscall_64|tcp_sendmsg$|tcp_recvmsg$|net_rx_action|ksys_write|ksys_read|do_epoll_wait|uv__io_poll|InternalCallbackScope::Close|JS:\*|uv__read$|OnStreamRead$' | head -24
