// The Prometheus text exposition format (version 0.0.4) of a device's or a store's
// counters: netdisk_ublk_* names, a `device` or `export` label on every sample, latency as
// a histogram in seconds. Written directly: the format is a few lines of text, and the
// counters already live in shared memory (device-counters.ts) rather than in a registry.
import { errnoName } from '../errno';
import { BUCKETS, countBelow } from './histogram';
import { OPS, type DeviceCounters } from './device-counters';

/** Histogram bounds in seconds: 50 µs .. 30 s, the span between a cached read and fail-after. */
const LE_SECONDS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/**
 * The metrics of one device or export. `label` is ['device', '0'] or ['export', 'name'];
 * `gauges` adds what only one side has (serve: connections), each [name, help, value].
 */
export function renderMetrics(label: [string, string], c: DeviceCounters,
  gauges: Array<[string, string, number]> = []): string {
  const L = `${label[0]}="${labelValue(label[1])}"`;
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, samples: Array<[string, number]>): void => {
    out.push(`# HELP netdisk_ublk_${name} ${help}`, `# TYPE netdisk_ublk_${name} ${type}`);
    for (const [labels, v] of samples) out.push(`netdisk_ublk_${name}{${L}${labels}} ${Number.isFinite(v) ? v : 0}`);
  };
  metric('requests_total', 'counter', 'Requests completed, by operation.', OPS.map((op) => [`,op="${op}"`, c.ops[op].count]));
  metric('bytes_total', 'counter', 'Bytes read or written by completed requests, by operation.',
    OPS.filter((op) => op === 'read' || op === 'write').map((op) => [`,op="${op}"`, c.ops[op].bytes]));
  metric('request_errors_total', 'counter', 'Requests that failed, by errno.',
    Object.entries(c.errnos).map(([e, n]) => [`,errno="${errnoName(Number(e))}"`, n]));
  metric('requests_in_flight', 'gauge', 'Requests in flight now.', [['', c.inFlight]]);
  metric('requests_in_flight_peak', 'gauge', 'The most requests in flight at once since start (summed over queues).', [['', c.peakInFlight]]);
  metric('reconnects_total', 'counter', 'Connections to the store lost and made again.', [['', c.reconnects]]);
  metric('resent_requests_total', 'counter', 'Requests sent again on a new connection.', [['', c.resent]]);
  metric('disconnected_seconds_total', 'counter', 'Time spent without a connection to the store (per queue, added).', [['', c.disconnectedMs / 1000]]);
  for (const [name, help, v] of gauges) metric(name, 'gauge', help, [['', v]]);
  out.push('# HELP netdisk_ublk_request_duration_seconds Request latency, by operation (bucket edges within 3 %).',
    '# TYPE netdisk_ublk_request_duration_seconds histogram');
  OPS.forEach((op, i) => {
    const off = i * BUCKETS;
    let sum = 0;
    for (let b = 0; b < BUCKETS; b++) sum += c.hist[off + b]!;
    for (const le of LE_SECONDS) {
      out.push(`netdisk_ublk_request_duration_seconds_bucket{${L},op="${op}",le="${le}"} ${countBelow(c.hist, off, le * 1e6)}`);
    }
    out.push(`netdisk_ublk_request_duration_seconds_bucket{${L},op="${op}",le="+Inf"} ${sum}`);
    out.push(`netdisk_ublk_request_duration_seconds_sum{${L},op="${op}"} ${c.ops[op].latencyUs / 1e6}`);
    out.push(`netdisk_ublk_request_duration_seconds_count{${L},op="${op}"} ${sum}`);
  });
  return out.join('\n') + '\n';
}
