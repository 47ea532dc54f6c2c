// One fio run against one block device, and the numbers taken from its JSON output.
//
// Latency is fio's total latency (lat_ns: submission plus completion), not clat: the kernel
// nbd client sends on the socket inside the submit call, so completion latency alone would
// leave out a large share of its cost (see /work/shared/research/peer-baseline.md).
import { spawn } from 'child_process';
import type { BenchCase, Metric } from './cases';

export interface FioOptions {
  seconds: number;
  rampSeconds: number;
}

export type Sample = Record<Metric, number>;

export function fioArgs(device: string, c: BenchCase, o: FioOptions): string[] {
  return [
    `--name=${c.id}`,
    `--filename=${device}`,
    '--ioengine=libaio',
    '--direct=1',
    `--rw=${c.rw}`,
    `--bs=${c.blockBytes}`,
    `--iodepth=${c.depth}`,
    '--numjobs=1',
    '--time_based',
    `--runtime=${o.seconds}`,
    ...(o.rampSeconds > 0 ? [`--ramp_time=${o.rampSeconds}`] : []),
    // Random offsets may repeat (no random map): cheaper for fio, identical for both devices.
    '--norandommap',
    '--randrepeat=0',
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--output-format=json',
  ];
}

interface FioDir {
  io_bytes: number;
  iops: number;
  bw_bytes: number;
  lat_ns: { percentile?: Record<string, number>; mean: number };
}

interface FioJson {
  jobs: Array<{ read: FioDir; write: FioDir; error: number }>;
}

/** The numbers of one run; latencies in microseconds. */
export function parseFio(text: string, c: BenchCase): Sample {
  // fio may print warnings before the JSON document.
  const start = text.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON: ${text.slice(0, 200)}`);
  const j = JSON.parse(text.slice(start)) as FioJson;
  const job = j.jobs[0];
  if (!job) throw new Error('fio JSON without jobs');
  if (job.error !== 0) throw new Error(`fio job failed with error ${job.error}`);
  const d = c.rw === 'randread' || c.rw === 'read' ? job.read : job.write;
  if (d.io_bytes === 0) throw new Error('fio did no I/O');
  const pct = d.lat_ns.percentile ?? {};
  const p = (k: string): number => (pct[k] ?? NaN) / 1000;
  return {
    p50: p('50.000000'),
    p99: p('99.000000'),
    'p99.9': p('99.900000'),
    iops: d.iops,
    mbps: d.bw_bytes / 1e6,
  };
}

export function runFio(device: string, c: BenchCase, o: FioOptions): Promise<Sample> {
  const args = fioArgs(device, c, o);
  return new Promise((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) {
        reject(new Error(`fio ${args.join(' ')} exited with ${code}: ${err.trim() || out.slice(0, 500)}`));
        return;
      }
      try {
        resolve(parseFio(out, c));
      } catch (e) {
        reject(new Error(`fio on ${device}: ${(e as Error).message}`));
      }
    });
  });
}
