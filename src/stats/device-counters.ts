// What a device's queue counts, laid out in one SharedArrayBuffer per queue: the queue's
// worker thread is its only writer (plain stores: one writer, and a reader that sees a
// value a moment late loses nothing), the daemon's main thread reads and sums the queues
// when asked (stats socket, metrics scrape). Nothing crosses threads per request.
import { BUCKETS, bucketOf } from './histogram';

/** The operations counted, in slot order; their names are those of the stats and metrics. */
export const OPS = ['read', 'write', 'flush', 'discard', 'write_zeroes'] as const;
export type OpName = (typeof OPS)[number];

/** errno values counted one by one; anything larger shares the last slot. */
export const ERRNO_SLOTS = 134;

// Slots (Float64: whole numbers stay exact up to 2^53).
const IN_FLIGHT = 0;
const PEAK = 1;
const RECONNECTS = 2;
const RESENT = 3;
/** ms spent disconnected, in outages that ended. */
const DOWN_MS = 4;
/** Date.now() when the current outage began; 0 while connected. */
const DOWN_SINCE = 5;
const OP_BASE = 8;
/** Per op: count, bytes, errors, latency sum (µs). */
const OP_SLOTS = 4;
const ERRNO_BASE = OP_BASE + OPS.length * OP_SLOTS;
const HIST_BASE = ERRNO_BASE + ERRNO_SLOTS;
export const QUEUE_SLOTS = HIST_BASE + OPS.length * BUCKETS;

export function newQueueCounters(): SharedArrayBuffer {
  return new SharedArrayBuffer(QUEUE_SLOTS * Float64Array.BYTES_PER_ELEMENT);
}

/**
 * The worker's side: counts each request at its start and its end. Both together cost
 * about 0.15 µs per request, half of it the two performance.now() calls (5e6 begin/end
 * pairs in a loop, Node 20, this project's 2-core development machine), against 7 to 10 µs
 * of CPU per QD1 request on the TypeScript path (src/bench/ts-path.ts).
 */
export class QueueCounters {
  private readonly a: Float64Array;
  /** When each tag's request began (performance.now(), ms) and which op it is. */
  private readonly began: Float64Array;
  private readonly opOf: Uint8Array;

  constructor(readonly buffer: SharedArrayBuffer, depth = 0) {
    this.a = new Float64Array(buffer);
    this.began = new Float64Array(depth);
    this.opOf = new Uint8Array(depth);
  }

  /** `op` is an index into OPS. */
  begin(tag: number, op: number): void {
    this.began[tag] = this.start();
    this.opOf[tag] = op;
  }

  /** The request on `tag` completed with `bytes` moved, or failed with errno (> 0). */
  end(tag: number, bytes: number, errno: number): void {
    this.record(this.opOf[tag]!, this.began[tag]!, bytes, errno);
  }

  /**
   * A request without a tag (the server's) begins: its start time, for record(). `now`
   * (performance.now()) when the caller shares one clock read among requests that began
   * together.
   */
  start(now = performance.now()): number {
    const a = this.a;
    const n = ++a[IN_FLIGHT]!;
    if (n > a[PEAK]!) a[PEAK] = n;
    return now;
  }

  /** A request of op `op` that start() returned `began` for has ended (at `now`, as in start). */
  record(op: number, began: number, bytes: number, errno: number, now = performance.now()): void {
    const a = this.a;
    const us = (now - began) * 1000;
    a[IN_FLIGHT]!--;
    const o = OP_BASE + op * OP_SLOTS;
    a[o]!++;
    if (errno === 0) {
      a[o + 1]! += bytes;
    } else {
      a[o + 2]!++;
      a[ERRNO_BASE + Math.min(errno, ERRNO_SLOTS - 1)]!++;
    }
    a[o + 3]! += us;
    a[HIST_BASE + op * BUCKETS + bucketOf(us)]!++;
  }

  disconnected(): void {
    if (this.a[DOWN_SINCE] === 0) this.a[DOWN_SINCE] = Date.now();
  }

  /** The outage ended: its time counts as time disconnected. */
  connected(): void {
    const a = this.a;
    if (a[DOWN_SINCE] !== 0) a[DOWN_MS]! += Date.now() - a[DOWN_SINCE]!;
    a[DOWN_SINCE] = 0;
  }

  reconnected(resent: number): void {
    this.connected();
    const a = this.a;
    a[RECONNECTS]!++;
    a[RESENT]! += resent;
  }
}

/** One moment's totals of a device (all its queues), as the reader computes them. */
export interface DeviceCounters {
  /** Date.now() when taken. */
  at: number;
  inFlight: number;
  /** The sum of each queue's highest in-flight count. */
  peakInFlight: number;
  reconnects: number;
  resent: number;
  /** Time spent disconnected, the current outage included (a queue's outage counts once per queue). */
  disconnectedMs: number;
  /** Queues whose connection is down now. */
  queuesDown: number;
  ops: Record<OpName, { count: number; bytes: number; errors: number; latencyUs: number }>;
  /** errno -> failed requests. */
  errnos: Record<number, number>;
  /** Per op, BUCKETS counts of latency (µs buckets, see histogram.ts), back to back in OPS order. */
  hist: Float64Array;
}

/** Sums the queues' counters now. */
export function readCounters(queues: readonly SharedArrayBuffer[]): DeviceCounters {
  const now = Date.now();
  const hist = new Float64Array(OPS.length * BUCKETS);
  const c: DeviceCounters = {
    at: now, inFlight: 0, peakInFlight: 0, reconnects: 0, resent: 0, disconnectedMs: 0, queuesDown: 0,
    ops: emptyOps(),
    errnos: {},
    hist,
  };
  for (const buf of queues) {
    const a = new Float64Array(buf);
    c.inFlight += a[IN_FLIGHT]!;
    c.peakInFlight += a[PEAK]!;
    c.reconnects += a[RECONNECTS]!;
    c.resent += a[RESENT]!;
    c.disconnectedMs += a[DOWN_MS]!;
    if (a[DOWN_SINCE] !== 0) {
      c.queuesDown++;
      c.disconnectedMs += Math.max(0, now - a[DOWN_SINCE]!);
    }
    OPS.forEach((name, i) => {
      const o = OP_BASE + i * OP_SLOTS;
      c.ops[name].count += a[o]!;
      c.ops[name].bytes += a[o + 1]!;
      c.ops[name].errors += a[o + 2]!;
      c.ops[name].latencyUs += a[o + 3]!;
    });
    for (let e = 1; e < ERRNO_SLOTS; e++) if (a[ERRNO_BASE + e]! > 0) c.errnos[e] = (c.errnos[e] ?? 0) + a[ERRNO_BASE + e]!;
    for (let i = 0; i < hist.length; i++) hist[i]! += a[HIST_BASE + i]!;
  }
  return c;
}

export function emptyOps(): DeviceCounters['ops'] {
  return Object.fromEntries(OPS.map((o) => [o, { count: 0, bytes: 0, errors: 0, latencyUs: 0 }])) as DeviceCounters['ops'];
}
