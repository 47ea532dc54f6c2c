// The TypeScript part of the ublk path without a ublk kernel: the daemon's QueueService,
// UblkQueue and NBD client, driven by a stand-in for the addon's queue that plays the
// kernel, against a real NBD server on loopback in another process. Reports the CPU time of
// this process per request: the JavaScript plus the socket system calls it makes.
import { spawn } from 'child_process';
import { performance } from 'perf_hooks';
import { DEVICE_DEFAULTS } from '../device/config';
import { QueueService } from '../device/queue-service';
import { silentLogger } from '../log';
import { ReconnectingClient } from '../nbd/reconnecting-client';
import { IO_DESC_SIZE, UblkIoOp } from '../ublk/constants';
import type { NativeQueue, UblkNative } from '../native/load';
import { freePort, stopChild, waitForPort } from './procs';

export interface TsPathCase {
  name: string;
  write: boolean;
  random: boolean;
  blockBytes: number;
  depth: number;
}

export interface TsPathResult {
  name: string;
  requests: number;
  seconds: number;
  iops: number;
  /** CPU time (user + system) of this process per request, in microseconds: median slice. */
  cpuUsPerRequest: number;
  /** The same, least loaded slice. */
  minCpuUsPerRequest: number;
}

/**
 * Plays the kernel: hands requests to the queue from a macrotask (as the ring's poll
 * callback would), and re-issues a request on each committed tag. Kept cheap, since its
 * own work counts in the CPU time measured.
 */
class FakeKernelQueue implements NativeQueue {
  readonly buffers: Buffer[];
  readonly descs: Buffer;
  private readonly desc32: Uint32Array;
  private onRequests: ((n: number) => void) | undefined;
  private onStopped: (() => void) | undefined;
  private ready: Uint16Array | undefined;
  private readonly pending: Uint16Array;
  private nPending = 0;
  private scheduled = false;
  completed = 0;
  stopAt = Infinity;
  private seed = 12345;
  private next = 0;

  constructor(depth: number, bufBytes: number, private readonly c: TsPathCase, private readonly devBytes: number) {
    this.pending = new Uint16Array(depth);
    this.buffers = [];
    for (let i = 0; i < depth; i++) this.buffers.push(Buffer.alloc(bufBytes));
    this.descs = Buffer.alloc(depth * IO_DESC_SIZE);
    this.desc32 = new Uint32Array(this.descs.buffer, this.descs.byteOffset, (depth * IO_DESC_SIZE) / 4);
  }

  start(onRequests: (count: number) => void, readyTags: Uint16Array, onStopped: () => void): void {
    this.onRequests = onRequests;
    this.onStopped = onStopped;
    this.ready = readyTags;
    for (let t = 0; t < this.c.depth; t++) this.pending[this.nPending++] = t;
    this.schedule();
  }

  commit(pairs: Int32Array, count: number): void {
    for (let i = 0; i < count; i++) {
      this.completed++;
      if (this.completed + this.c.depth <= this.stopAt) this.pending[this.nPending++] = pairs[2 * i] as number;
    }
    if (this.nPending > 0) this.schedule();
  }

  close(): void {}

  /** As the kernel does once the device stops: every tag is aborted. */
  stop(): void {
    this.onStopped?.();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.deliverBound);
  }

  private readonly deliverBound = (): void => this.deliver();

  private deliver(): void {
    this.scheduled = false;
    const ready = this.ready as Uint16Array;
    const blocks = Math.floor(this.devBytes / this.c.blockBytes);
    const n = this.nPending;
    for (let i = 0; i < n; i++) {
      const tag = this.pending[i] as number;
      let block: number;
      if (this.c.random) {
        this.seed = (this.seed * 1103515245 + 12345) >>> 0;
        block = this.seed % blocks;
      } else {
        block = this.next;
        this.next = (this.next + 1) % blocks;
      }
      const sector = (block * this.c.blockBytes) / 512;
      const w = tag * 6;
      this.desc32[w] = this.c.write ? UblkIoOp.WRITE : UblkIoOp.READ;
      this.desc32[w + 1] = this.c.blockBytes / 512;
      this.desc32[w + 2] = sector >>> 0;
      this.desc32[w + 3] = 0;
      ready[i] = tag;
    }
    this.nPending = 0;
    (this.onRequests as (n: number) => void)(n);
  }
}

/**
 * Runs one case for `slices` slices of `seconds` each after a warm-up, and reports the
 * median slice: on a shared machine a neighbour's burst inflates a slice's CPU time (cache
 * misses, preemption), and the median keeps one such slice from skewing the figure.
 */
export async function measureTsPath(host: string, port: number, c: TsPathCase, seconds: number, slices = 5): Promise<TsPathResult> {
  const client = await ReconnectingClient.connect({ host, port, timeoutMs: DEVICE_DEFAULTS.timeoutMs, failAfterMs: DEVICE_DEFAULTS.failAfterMs });
  const depth = Math.max(c.depth, 1);
  let fake: FakeKernelQueue | undefined;
  const native = {
    Queue: class {
      constructor(o: { depth: number; bufBytes: number }) {
        fake = new FakeKernelQueue(o.depth, o.bufBytes, c, client.info.size);
        return fake;
      }
    },
  } as unknown as UblkNative;
  const svc = new QueueService(
    { devId: 0, qid: 0, depth, maxIoBufBytes: Math.max(c.blockBytes, 4096), charFd: -1, ioctlEncode: true, native },
    client,
    silentLogger,
  );
  const f = fake as unknown as FakeKernelQueue;
  svc.start();
  // Warm-up: the JIT compiles the hot path before the clock starts.
  await sleep(Math.max(500, seconds * 200));
  const perSlice: Array<{ n: number; secs: number; cpuUs: number }> = [];
  for (let i = 0; i < slices; i++) {
    const c0 = f.completed;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const cpu = process.cpuUsage(cpu0);
    perSlice.push({ n: f.completed - c0, secs: (performance.now() - t0) / 1000, cpuUs: cpu.user + cpu.system });
  }
  f.stopAt = f.completed;
  while (client.pending > 0) await sleep(5);
  f.stop();
  await svc.stopped;
  await client.close();
  perSlice.sort((a, b) => a.cpuUs / a.n - b.cpuUs / b.n);
  const mid = perSlice[perSlice.length >> 1] as { n: number; secs: number; cpuUs: number };
  const best = perSlice[0] as { n: number; secs: number; cpuUs: number };
  return {
    name: c.name,
    requests: mid.n,
    seconds: mid.secs,
    iops: mid.n / mid.secs,
    cpuUsPerRequest: mid.cpuUs / mid.n,
    minCpuUsPerRequest: best.cpuUs / best.n,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface TsPathReport {
  where: string;
  server: string;
  results: TsPathResult[];
}

export const TS_PATH_CASES: readonly TsPathCase[] = [
  { name: '4 KiB random read, QD1', write: false, random: true, blockBytes: 4096, depth: 1 },
  { name: '4 KiB random write, QD1', write: true, random: true, blockBytes: 4096, depth: 1 },
  { name: '4 KiB random read, QD32', write: false, random: true, blockBytes: 4096, depth: 32 },
  { name: '4 KiB random write, QD32', write: true, random: true, blockBytes: 4096, depth: 32 },
  { name: '1 MiB sequential read, QD8', write: false, random: false, blockBytes: 1 << 20, depth: 8 },
  { name: '1 MiB sequential write, QD8', write: true, random: false, blockBytes: 1 << 20, depth: 8 },
];

/** Every TS_PATH_CASES case against a fresh `nbdkit memory` on loopback. */
export async function measureTsPathSuite(o: { seconds: number; slices?: number; where: string }): Promise<TsPathReport> {
  const port = await freePort();
  const size = 256 * 2 ** 20;
  const child = spawn('nbdkit', ['-f', '--exit-with-parent', '-p', String(port), '-i', '127.0.0.1', 'memory', String(size)],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) => reject(new Error(`cannot start nbdkit: ${err.message}`)));
  });
  try {
    await waitForPort('127.0.0.1', port, 10000, child);
    const results: TsPathResult[] = [];
    for (const c of TS_PATH_CASES) results.push(await measureTsPath('127.0.0.1', port, c, o.seconds, o.slices ?? 5));
    return { where: o.where, server: `nbdkit memory ${size / 2 ** 20}M`, results };
  } finally {
    await stopChild(child);
  }
}
