// The workloads every benchmark runs (the device bench, the wire bench, the TypeScript
// path), and which numbers each one reports.

export type Metric = 'p50' | 'p99' | 'p99.9' | 'iops' | 'mbps';

export interface BenchCase {
  /** Stable identifier, e.g. randread-4k-qd1. */
  id: string;
  /** Heading in the table. */
  title: string;
  /** fio --rw */
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  blockBytes: number;
  depth: number;
  metrics: Metric[];
}

export const CASES: readonly BenchCase[] = [
  { id: 'randread-4k-qd1', title: '4 KiB random read, QD1', rw: 'randread', blockBytes: 4096, depth: 1, metrics: ['p50', 'p99', 'p99.9', 'iops'] },
  { id: 'randwrite-4k-qd1', title: '4 KiB random write, QD1', rw: 'randwrite', blockBytes: 4096, depth: 1, metrics: ['p50', 'p99', 'p99.9', 'iops'] },
  { id: 'randread-4k-qd32', title: '4 KiB random read, QD32', rw: 'randread', blockBytes: 4096, depth: 32, metrics: ['iops', 'p99'] },
  { id: 'randwrite-4k-qd32', title: '4 KiB random write, QD32', rw: 'randwrite', blockBytes: 4096, depth: 32, metrics: ['iops', 'p99'] },
  { id: 'randread-64k-qd8', title: '64 KiB random read, QD8', rw: 'randread', blockBytes: 64 * 1024, depth: 8, metrics: ['mbps', 'iops'] },
  { id: 'randwrite-64k-qd8', title: '64 KiB random write, QD8', rw: 'randwrite', blockBytes: 64 * 1024, depth: 8, metrics: ['mbps', 'iops'] },
  { id: 'read-1m-qd8', title: '1 MiB sequential read, QD8', rw: 'read', blockBytes: 1 << 20, depth: 8, metrics: ['mbps'] },
  { id: 'write-1m-qd8', title: '1 MiB sequential write, QD8', rw: 'write', blockBytes: 1 << 20, depth: 8, metrics: ['mbps'] },
];

export const METRIC_LABEL: Record<Metric, string> = {
  p50: 'p50 latency',
  p99: 'p99 latency',
  'p99.9': 'p99.9 latency',
  iops: 'IOPS',
  mbps: 'MB/s',
};

export function isWrite(c: BenchCase): boolean {
  return c.rw === 'randwrite' || c.rw === 'write';
}

export function isRandom(c: BenchCase): boolean {
  return c.rw === 'randread' || c.rw === 'randwrite';
}

export function findCases(ids: string[]): BenchCase[] {
  return ids.map((id) => {
    const c = CASES.find((k) => k.id === id);
    if (!c) throw new Error(`unknown case "${id}" (known: ${CASES.map((k) => k.id).join(', ')})`);
    return c;
  });
}
