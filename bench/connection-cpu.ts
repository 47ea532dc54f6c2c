// Connection CPU benchmark: what the server's ServerConnection costs per request in its own
// JavaScript (parsing, admission against the byte budgets, replies, counters), with the
// network, the store and the kernel left out: an in-memory socket that takes every write at
// once, and a store that completes a batch of requests on the next setImmediate, as the
// io_uring engine does. Each round sends a case's queue depth of requests in one chunk and
// waits for every reply; CPU time (process.cpuUsage) over --requests requests.
//
// The wire benchmark's numbers move by 20 % and more from round to round on a shared 2-CPU
// host; this one resolves tens of ns per request, which is the size of what the server's
// own code changes. With --baseline DIR, another built checkout's connection runs beside
// ours, alternating round by round, each as its `serve` runs it (with the stats counters
// where that checkout has them).
//
//   node dist/bench/connection-cpu.js [--cases randwrite-4k-qd32,...] [--requests N] [--rounds R]
//                                     [--baseline DIR] [--out FILE]
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Duplex } from 'stream';
import { parseArgs } from 'util';
import { CASES, findCases, isWrite, type BenchCase } from '../src/bench/cases';
import { runOk } from '../src/bench/procs';
import * as C from '../src/nbd/constants';
import * as codec from '../src/nbd/codec';
import { packageRoot } from '../src/native/load';
import { silentLogger } from '../src/log';
import type { ConnectionOptions, ServerConnection } from '../src/server/connection';
import type { Done, Store } from '../src/server/store/store';
import type { QueueCounters } from '../src/stats/device-counters';

type ConnectionClass = new (sock: Duplex, opts: ConnectionOptions) => ServerConnection;

/** Takes every write at once; hands what the server wrote to onBytes. */
class MemorySocket extends Duplex {
  constructor(private readonly onBytes: (n: number) => void) {
    super({ allowHalfOpen: true });
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.onBytes(chunk.length);
    cb();
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    let n = 0;
    for (const c of chunks) n += c.chunk.length;
    this.onBytes(n);
    cb();
  }
}

/** Completes each batch of requests together on the next turn of the loop; reads leave the buffer as it is. */
function instantStore(): Store {
  let pending: Done[] = [];
  const flush = (): void => {
    const p = pending;
    pending = [];
    for (const done of p) done(null);
  };
  const later = (done: Done): void => {
    if (pending.length === 0) setImmediate(flush);
    pending.push(done);
  };
  return {
    size: 1 << 30, readOnly: false, canTrim: true, canZero: true,
    read: (_t, _to, _len, _off, done) => later(done),
    write: (_chunks, _off, _fua, done) => later(done),
    flush: later,
    trim: (_o, _l, _f, done) => later(done),
    writeZeroes: (_o, _l, _n, _f, done) => later(done),
    close: () => Promise.resolve(),
  };
}

interface Side {
  name: string;
  root: string;
  run(requests: number): Promise<void>;
}

/** One connection of the checkout at root, past its handshake, driven with case c. */
async function side(name: string, root: string, c: BenchCase): Promise<Side> {
  /* eslint-disable @typescript-eslint/no-require-imports -- another checkout's build, found at run time */
  const conn = require(path.join(root, 'dist/src/server/connection.js')) as { ServerConnection: ConnectionClass };
  let counters: QueueCounters | undefined;
  const countersJs = path.join(root, 'dist/src/stats/device-counters.js');
  if (fs.existsSync(countersJs)) {
    const m = require(countersJs) as typeof import('../src/stats/device-counters');
    counters = new m.QueueCounters(m.newQueueCounters());
  }
  /* eslint-enable @typescript-eslint/no-require-imports */
  let got = 0;
  let want = 0;
  let wake: (() => void) | null = null;
  const sock = new MemorySocket((n) => {
    got += n;
    if (wake !== null && got >= want) {
      const w = wake;
      wake = null;
      w();
    }
  });
  const store = instantStore();
  new conn.ServerConnection(sock, { lookup: () => ({ name: '', store }), list: () => [], log: silentLogger, counters });
  sock.push(Buffer.concat([codec.encodeClientFlags(C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES), codec.encodeOption(C.Opt.EXPORT_NAME)]));
  await new Promise((r) => setImmediate(r));

  // The case's queue depth of requests in one chunk, as one socket read would bring them.
  const write = isWrite(c);
  const one = C.REQUEST_HEADER_BYTES + (write ? c.blockBytes : 0);
  const batch = Buffer.alloc(one * c.depth);
  for (let i = 0; i < c.depth; i++) {
    codec.writeRequestHeader(batch.subarray(i * one), 0, write ? C.Cmd.WRITE : C.Cmd.READ, 0, i, i * c.blockBytes, c.blockBytes);
  }
  const replyBytes = c.depth * (C.SIMPLE_REPLY_BYTES + (write ? 0 : c.blockBytes));
  return {
    name,
    root,
    async run(requests) {
      for (let done = 0; done < requests; done += c.depth) {
        want = got + replyBytes;
        const replied = new Promise<void>((r) => { wake = r; });
        sock.push(batch);
        await replied;
      }
    },
  };
}

async function revision(root: string): Promise<string> {
  try {
    const rev = (await runOk('git', ['rev-parse', '--short', 'HEAD'], { cwd: root })).trim();
    const dirty = (await runOk('git', ['status', '--porcelain', '--', 'src/server', 'src/nbd', 'src/stats'], { cwd: root })).trim();
    return `netdisk-ublk ${rev}${dirty ? ' (modified)' : ''}`;
  } catch {
    return `netdisk-ublk at ${root}`;
  }
}

const median = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      cases: { type: 'string', default: CASES.map((c) => c.id).join(',') },
      requests: { type: 'string', default: '200000' },
      rounds: { type: 'string', default: '7' },
      baseline: { type: 'string' },
      out: { type: 'string' },
    },
  });
  const requests = Number(values.requests);
  const rounds = Number(values.rounds);
  const roots: [string, string][] = [['ours', packageRoot()]];
  if (values.baseline !== undefined) roots.push(['baseline', path.resolve(values.baseline)]);
  const cases = findCases(values.cases.split(',').filter(Boolean));
  const loadBefore = os.loadavg();
  const rows: string[] = [];
  for (const c of cases) {
    const sides = await Promise.all(roots.map(([name, root]) => side(name, root, c)));
    // Warm-up: until the JIT has settled on both.
    for (const s of sides) await s.run(Math.min(requests, 50_000));
    const ns = new Map<string, number[]>(sides.map((s) => [s.name, []]));
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < sides.length; k++) {
        const s = sides[(k + r) % sides.length] as Side;
        const before = process.cpuUsage();
        await s.run(requests);
        const used = process.cpuUsage(before);
        (ns.get(s.name) as number[]).push(((used.user + used.system) * 1000) / requests);
      }
    }
    const ours = median(ns.get('ours') as number[]);
    const base = ns.has('baseline') ? median(ns.get('baseline') as number[]) : NaN;
    const line = `| ${c.id} | ${ours.toFixed(0)} | ${Number.isNaN(base) ? '-' : base.toFixed(0)} | ` +
      `${Number.isNaN(base) ? '-' : (ours / base).toFixed(2) + 'x'} | ${(ns.get('ours') as number[]).map((x) => x.toFixed(0)).join(', ')} | ` +
      `${ns.has('baseline') ? (ns.get('baseline') as number[]).map((x) => x.toFixed(0)).join(', ') : '-'} |`;
    rows.push(line);
    process.stderr.write(`${line}\n`);
  }
  const table = [
    '| case | ours ns/request | baseline ns/request | ours / baseline | ours per round | baseline per round |',
    '|---|---:|---:|---:|---|---|',
    ...rows,
  ].join('\n');
  process.stdout.write(table + '\n');
  if (values.out !== undefined) {
    const argv = process.argv.slice(2).join(' ');
    const versions = await Promise.all(roots.map(async ([name, root]) => `${name}: ${await revision(root)}`));
    fs.writeFileSync(values.out, [
      `# Connection CPU benchmark, ${new Date().toISOString().slice(0, 10)}`,
      '',
      `Command: \`node ${path.relative(packageRoot(), process.argv[1] as string)}${argv ? ' ' + argv : ''}\``,
      '',
      `- ${versions.join('; ')}; node ${process.version}`,
      `- kernel ${os.release()}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}); load average (1/5/15 min) before ` +
        `${loadBefore.map((l) => l.toFixed(2)).join(' ')}, after ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`,
      `- CPU time of the benchmark process per request (ns), ${requests} requests per round, ${rounds} rounds, alternating; medians over rounds.` +
        ' The socket and the store cost nothing here, so this is the connection\'s own code (and node\'s streams under it)',
      '',
      table,
      '',
    ].join('\n'));
    process.stderr.write(`wrote ${values.out}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`connection-cpu: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
