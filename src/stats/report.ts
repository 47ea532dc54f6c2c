// A stats report: what `netdisk-ublk stats` shows and prints as JSON, computed from two
// readings of a device's counters (device-counters.ts): rates and latency percentiles over
// the interval between them, and the same since the daemon started.
import { errnoName } from '../errno';
import { BUCKETS, percentile } from './histogram';
import { OPS, emptyOps, type DeviceCounters, type OpName } from './device-counters';

export interface OpStats {
  requests: number;
  bytes: number;
  errors: number;
  /** Per second over the section's span. */
  requestsPerS: number;
  mbPerS: number;
  /** Latency in µs from the histogram (NaN -> null in JSON when there were no requests). */
  p50Us: number | null;
  p99Us: number | null;
  p999Us: number | null;
}

export interface Section {
  seconds: number;
  ops: Record<OpName, OpStats>;
}

export interface StatsReport {
  /** Whose: "/dev/ublkb0" and the store's URI, or the served export. */
  name: string;
  detail: string;
  at: string;
  uptimeS: number;
  interval: Section;
  total: Section;
  inFlight: number;
  peakInFlight: number;
  reconnects: number;
  resentRequests: number;
  disconnectedS: number;
  queuesDown: number;
  /** errno name -> failed requests since start. */
  errors: Record<string, number>;
  /** What the other side adds (serve: connections, bytes in flight). */
  extra?: Record<string, number>;
}

/** An empty reading at `at`: the baseline of "since start". */
export function zeroCounters(at: number): DeviceCounters {
  return {
    at, inFlight: 0, peakInFlight: 0, reconnects: 0, resent: 0, disconnectedMs: 0, queuesDown: 0,
    ops: emptyOps(),
    errnos: {},
    hist: new Float64Array(OPS.length * BUCKETS),
  };
}

function section(from: DeviceCounters, to: DeviceCounters): Section {
  const seconds = Math.max(1e-3, (to.at - from.at) / 1000);
  const hist = new Float64Array(BUCKETS);
  const ops = {} as Record<OpName, OpStats>;
  OPS.forEach((name, i) => {
    for (let b = 0; b < BUCKETS; b++) hist[b] = to.hist[i * BUCKETS + b]! - from.hist[i * BUCKETS + b]!;
    const pct = (p: number): number | null => {
      const v = percentile(hist, 0, p);
      return Number.isNaN(v) ? null : v;
    };
    const requests = to.ops[name].count - from.ops[name].count;
    const bytes = to.ops[name].bytes - from.ops[name].bytes;
    ops[name] = {
      requests, bytes, errors: to.ops[name].errors - from.ops[name].errors,
      requestsPerS: requests / seconds, mbPerS: bytes / seconds / 1e6,
      p50Us: pct(50), p99Us: pct(99), p999Us: pct(99.9),
    };
  });
  return { seconds, ops };
}

export function makeReport(name: string, detail: string, start: DeviceCounters, prev: DeviceCounters, cur: DeviceCounters): StatsReport {
  const errors: Record<string, number> = {};
  for (const [e, n] of Object.entries(cur.errnos)) errors[errnoName(Number(e))] = n;
  return {
    name, detail,
    at: new Date(cur.at).toISOString(),
    uptimeS: (cur.at - start.at) / 1000,
    interval: section(prev, cur),
    total: section(start, cur),
    inFlight: cur.inFlight,
    peakInFlight: cur.peakInFlight,
    reconnects: cur.reconnects,
    resentRequests: cur.resent,
    disconnectedS: cur.disconnectedMs / 1000,
    queuesDown: cur.queuesDown,
    errors,
  };
}

const OP_TITLE: Record<OpName, string> = { read: 'read', write: 'write', flush: 'flush', discard: 'discard', write_zeroes: 'write-zeroes' };

/** The compact table `stats` prints (one screen per device). */
export function renderReport(r: StatsReport): string {
  const us = (v: number | null): string => (v === null ? '-' : v >= 10_000 ? `${(v / 1000).toFixed(0)}ms` : `${Math.round(v)}µs`);
  const rows: string[][] = [[
    'op', 'req/s', 'MB/s', 'requests', 'errors', 'p50', 'p99', 'p99.9', '│', 'p50', 'p99', 'p99.9',
  ]];
  for (const op of OPS) {
    const i = r.interval.ops[op];
    const t = r.total.ops[op];
    rows.push([
      OP_TITLE[op], i.requestsPerS.toFixed(0), i.mbPerS.toFixed(1), String(t.requests), String(t.errors),
      us(i.p50Us), us(i.p99Us), us(i.p999Us), '│', us(t.p50Us), us(t.p99Us), us(t.p999Us),
    ]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
  const errs = Object.entries(r.errors).map(([e, n]) => `${e} ${n}`).join(', ') || 'none';
  const extra = r.extra ? Object.entries(r.extra).map(([k, v]) => `${k} ${v}`).join('  ') + '\n' : '';
  return `${r.name}  ${r.detail}  up ${duration(r.uptimeS)}  last ${r.interval.seconds.toFixed(1)} s (latency: last interval │ since start)\n`
    + lines.join('\n') + '\n'
    + `in flight ${r.inFlight} (peak ${r.peakInFlight})  reconnects ${r.reconnects}  resent ${r.resentRequests}  `
    + `disconnected ${r.disconnectedS.toFixed(1)} s${r.queuesDown > 0 ? ` (${r.queuesDown} queue(s) down now)` : ''}  errors: ${errs}\n`
    + extra;
}

/** One line per interval, for --watch when stdout is not a terminal. */
export function renderLine(r: StatsReport): string {
  const i = r.interval.ops;
  const lat = (op: OpName): string => `${op} ${i[op].requestsPerS.toFixed(0)}/s ${i[op].mbPerS.toFixed(1)}MB/s p99 ${i[op].p99Us ?? '-'}us`;
  return `${r.at} ${r.name} ${lat('read')} ${lat('write')} flush ${i.flush.requests} discard ${i.discard.requests} `
    + `write-zeroes ${i.write_zeroes.requests} inflight ${r.inFlight} reconnects ${r.reconnects} errors ${Object.values(r.errors).reduce((a, b) => a + b, 0)}`;
}

function duration(s: number): string {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}
