#!/usr/bin/env bash
# Where the CPU time of the TypeScript part of one 4 KiB QD1 read goes, natively: perf
# samples bench/ts-path.ts (the fake kernel queue of test/helpers driving QueueService,
# UblkQueue and the NBD client) against `nbdkit memory` on loopback, with V8's frames named
# (--perf-basic-prof).
# Prints the split by binary and the heaviest call paths, inclusive.
#
#   bench/profile/ts-native.sh [CASE] [SECONDS]   (default: randread-4k-qd1, 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
case=${1:-randread-4k-qd1}
secs=${2:-2}
data=$(mktemp /tmp/netdisk-ts-native.XXXXXX)
trap 'rm -f "$data" /tmp/perf-*.map' EXIT
perf record -q -g -F 4999 -o "$data" -- node --perf-basic-prof dist/bench/ts-path.js --cases "$case" --seconds "$secs" --slices 5
echo
echo "By binary (self time of the node process):"
perf report -i "$data" --stdio --no-children --comm node --sort dso -g none 2>/dev/null | grep '%' | head -6
echo
echo "Inclusive, the steps of the path:"
perf report -i "$data" --stdio --children --comm node --sort sym -g none 2>/dev/null | grep '%' |
  grep -E 'do_syscall_64|tcp_sendmsg$|tcp_recvmsg$|net_rx_action|ksys_write|ksys_read|do_epoll_wait|uv__io_poll|InternalCallbackScope::Close|JS:\*|uv__read$|OnStreamRead$' | head -24
