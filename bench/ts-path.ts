// The TypeScript part of the ublk path without a ublk kernel: the daemon's QueueService,
// UblkQueue and NBD client, driven by the fake kernel queue (test/helpers/fake-kernel-
// queue.ts) against `nbdkit memory` on loopback in another process. Reports the CPU time
// of this process per request: the JavaScript plus the socket system calls it makes.
// `netdisk-ublk bench` runs it (--json) for its report; bench/profile/*.sh run it under perf.
//
//   node dist/bench/ts-path.js [--seconds 1] [--slices 7] [--cases ID,...] [--where TEXT] [--json]
import { performance } from 'perf_hooks';
import { parseArgs } from 'util';
import { CASES, findCases, isRandom, isWrite, type BenchCase } from '../src/bench/cases';
import { sleep } from '../src/bench/procs';
import type { TsPathReport, TsPathResult } from '../src/bench/results';
import { startStore } from '../src/bench/stores';
import { DATA_TRANSPORTS, DEVICE_DEFAULTS, type DataTransport } from '../src/device/config';
import { zeroQueueRing } from '../test/helpers/zero-ring';
import { UblkQueue } from '../src/ublk/queue';
import { QueueService } from '../src/device/queue-service';
import { silentLogger } from '../src/log';
import { ReconnectingClient } from '../src/nbd/reconnecting-client';
import { UblkIoOp } from '../src/ublk/constants';
import { FakeKernelQueue } from '../test/helpers/fake-kernel-queue';
import { newQueueCounters, QueueCounters } from '../src/stats/device-counters';

const STORE_BYTES = 256 * 2 ** 20;

/**
 * Plays the kernel for one workload: every tag starts with a request; each commit hands the
 * tag a new one, delivered from a macrotask (as the ring's poll callback would), all that
 * a tick committed in one wake-up. Kept cheap: its own work counts in the CPU measured.
 */
class Workload {
  completed = 0;
  stopAt = Infinity;
  private seed = 12345;
  private next = 0;
  private scheduled = false;
  private readonly blocks: number;
  private readonly op: number;
  private readonly random: boolean;
  private readonly deliverBound = (): void => {
    this.scheduled = false;
    this.k.deliver();
  };

  constructor(private readonly k: FakeKernelQueue, private readonly c: BenchCase, devBytes: number) {
    this.blocks = Math.floor(devBytes / c.blockBytes);
    this.op = isWrite(c) ? UblkIoOp.WRITE : UblkIoOp.READ;
    this.random = isRandom(c);
    k.record = false;
    k.onCommit = (tag) => {
      this.completed++;
      if (this.completed + this.c.depth <= this.stopAt) this.issue(tag);
    };
    for (let t = 0; t < c.depth; t++) this.issue(t);
  }

  private issue(tag: number): void {
    let block: number;
    if (this.random) {
      this.seed = (this.seed * 1103515245 + 12345) >>> 0;
      block = this.seed % this.blocks;
    } else {
      block = this.next;
      this.next = (this.next + 1) % this.blocks;
    }
    this.k.request(tag, this.op, (block * this.c.blockBytes) / 512, this.c.blockBytes / 512);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.deliverBound);
    }
  }
}

/**
 * Runs one case for `slices` slices of `seconds` each after a warm-up, and reports the
 * median slice: on a shared machine a neighbour's burst inflates a slice's CPU time (cache
 * misses, preemption), and the median keeps one such slice from skewing the figure.
 */
export async function measureTsPath(host: string, port: number, c: BenchCase, seconds: number, slices = 5,
  transport: DataTransport = DEVICE_DEFAULTS.transport): Promise<TsPathResult> {
  const client = await ReconnectingClient.connect({
    host, port, exportName: '', timeoutMs: DEVICE_DEFAULTS.timeoutMs, failAfterMs: DEVICE_DEFAULTS.failAfterMs,
    makeTransport: transport === 'ring' ? zeroQueueRing(c.depth) : undefined,
  });
  let kernel: FakeKernelQueue | undefined;
  const q = new UblkQueue({
    devId: 0, qid: 0, depth: c.depth, maxIoBufBytes: Math.max(c.blockBytes, 4096), charFd: -1, ioctlEncode: true,
    native: FakeKernelQueue.native((fake) => { kernel = fake; }),
  });
  const svc = new QueueService(q, client, silentLogger, new QueueCounters(newQueueCounters(), c.depth));
  svc.start();
  const w = new Workload(kernel as FakeKernelQueue, c, client.info.size);
  // Warm-up: the JIT compiles the hot path before the clock starts.
  await sleep(Math.max(500, seconds * 200));
  const perSlice: Array<{ n: number; secs: number; cpuUs: number }> = [];
  for (let i = 0; i < slices; i++) {
    const c0 = w.completed;
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(seconds * 1000);
    const cpu = process.cpuUsage(cpu0);
    perSlice.push({ n: w.completed - c0, secs: (performance.now() - t0) / 1000, cpuUs: cpu.user + cpu.system });
  }
  w.stopAt = w.completed;
  while (client.pending > 0) await sleep(5);
  (kernel as FakeKernelQueue).stop();
  await svc.stopped;
  await client.close();
  perSlice.sort((a, b) => a.cpuUs / a.n - b.cpuUs / b.n);
  const mid = perSlice[perSlice.length >> 1] as { n: number; secs: number; cpuUs: number };
  const best = perSlice[0] as { n: number; secs: number; cpuUs: number };
  return {
    name: c.title,
    requests: mid.n,
    seconds: mid.secs,
    iops: mid.n / mid.secs,
    cpuUsPerRequest: mid.cpuUs / mid.n,
    minCpuUsPerRequest: best.cpuUs / best.n,
  };
}

/** The cases against a fresh `nbdkit memory` on loopback. */
export async function measureTsPathSuite(o: {
  seconds: number; slices: number; where: string; cases: readonly BenchCase[]; transport?: DataTransport;
}): Promise<TsPathReport> {
  const store = await startStore('nbdkit', { sizeBytes: STORE_BYTES, dir: '', cli: '' });
  try {
    const results: TsPathResult[] = [];
    for (const c of o.cases) results.push(await measureTsPath(store.host, store.port, c, o.seconds, o.slices, o.transport));
    return { where: o.where, server: `nbdkit memory ${STORE_BYTES / 2 ** 20}M`, results };
  } finally {
    await store.stop();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '1' },
      slices: { type: 'string', default: '7' },
      cases: { type: 'string' },
      where: { type: 'string', default: 'natively' },
      json: { type: 'boolean', default: false },
      transport: { type: 'string', default: DEVICE_DEFAULTS.transport },
    },
  });
  const transport = values.transport as DataTransport;
  if (!DATA_TRANSPORTS.includes(transport)) throw new Error(`--transport must be one of ${DATA_TRANSPORTS.join(', ')}`);
  const cases = values.cases === undefined ? CASES : findCases(values.cases.split(',').map((s) => s.trim()));
  const report = await measureTsPathSuite({ seconds: Number(values.seconds), slices: Number(values.slices), where: values.where, cases, transport });
  if (values.json) {
    process.stdout.write(JSON.stringify(report) + '\n');
    return;
  }
  for (const r of report.results) {
    process.stdout.write(`${r.name} (${transport} transport): ${r.iops.toFixed(0)} IOPS, ${r.cpuUsPerRequest.toFixed(1)} us of CPU per request (least ${r.minCpuUsPerRequest.toFixed(1)})\n`);
  }
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`ts-path: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
