// Wire benchmark: our NBD client against three NBD servers on loopback, each serving the same
// pre-filled image: ours (the CLI's `serve`), `nbdkit file` and `nbd-server`. It measures the
// servers, so the client (ours, pipelined, preallocated buffers) is the same for all.
//
// Cases: the workloads every benchmark runs (src/bench/cases.ts): 4 KiB random read and write
// at queue depth 1 and 32, 1 MiB sequential read and write at queue depth 8. Each case runs
// for --seconds after a --warmup on a fresh connection; the servers take turns case by case
// (the order rotates every round) and the whole set is repeated --rounds times. Reported: the median over rounds of IOPS, MB/s and latency percentiles.
//
//   npm run bench:wire -- [--seconds 5] [--warmup 1] [--rounds 3] [--size 256M] [--dir /tmp]
//                         [--servers ours,nbdkit,nbd-server] [--cases randread-4k-qd1,...] [--out FILE | --no-out]
//                         [--baseline DIR]   (also our server from another built checkout, as "baseline")
//                         [--pin]            (client on CPU 0, servers on the other CPUs)
//                         --servers ours-tls,nbdkit-tls: the same servers requiring TLS (PSK), the
//                         client connecting as for nbds:// (what TLS costs on the wire)
import { spawn } from 'child_process';
import { randomBytes, randomFillSync } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { parseArgs } from 'util';
import { CASES, findCases, isRandom, isWrite, type BenchCase } from '../src/bench/cases';
import { freePort, run, runOk, sleep, stopChild, versionOf, waitForPort } from '../src/bench/procs';
import * as C from '../src/nbd/constants';
import { NbdClient } from '../src/nbd/client';
import { NbdError } from '../src/nbd/errors';
import type { NbdTls } from '../src/nbd/uri';
import { packageRoot } from '../src/native/load';
import { parseSize } from '../src/size';
import { pidAlive } from '../src/device/state';

interface Endpoint {
  port: number;
  exportName: string;
  /** The server requires TLS: the client connects with these settings (nbds://). */
  tls?: NbdTls;
}

const PSK_USER = 'wire-bench';

/** This run's PSK for the TLS servers (psktool's format, in the run's work directory). */
function psk(work: string): NbdTls {
  const file = path.join(work, 'bench.psk');
  if (!fs.existsSync(file)) fs.writeFileSync(file, `${PSK_USER}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return { verifyPeer: true, pskFile: file, username: PSK_USER };
}

interface ServerKind {
  name: string;
  version(): Promise<string>;
  start(image: string, work: string): Promise<RunningServer>;
}

interface RunningServer extends Endpoint {
  stop(): Promise<void>;
}

interface Result {
  iops: number;
  mbps: number;
  p50: number;
  p99: number;
}

// ---- servers ----

/** Our server from the checkout at root (this one, or --baseline's). */
function netdisk(name: string, root: string, tls = false): ServerKind {
  return {
    name,
    version: async () => {
      try {
        const rev = (await runOk('git', ['rev-parse', '--short', 'HEAD'], { cwd: root })).trim();
        // Only what the server runs counts as a modification.
        const dirty = (await runOk('git', ['status', '--porcelain', '--', 'src/server', 'src/nbd', 'src/cli', 'addon/fileops.cc', 'bin', 'binding.gyp'],
          { cwd: root })).trim();
        return `${name}: netdisk-ublk ${rev}${dirty ? ' (modified)' : ''}`;
      } catch {
        return `${name}: netdisk-ublk at ${root}`;
      }
    },
    async start(image, work) {
      const cli = path.join(root, 'bin', 'netdisk-ublk.js');
      const t = tls ? psk(work) : undefined;
      const tlsArgs = t ? ['--tls', 'require', '--tls-psk', t.pskFile as string] : [];
      const child = spawn(...pinned(process.execPath, [cli, 'serve', image, '--listen', '127.0.0.1:0', ...tlsArgs]), {
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, NETDISK_LOG_FORMAT: 'json', NETDISK_LOG_LEVEL: 'info' },
      });
      // The CLI logs {"msg":"serving","listen":"127.0.0.1:PORT"} once it listens.
      const port = await new Promise<number>((resolve, reject) => {
        let text = '';
        const onData = (b: Buffer): void => {
          text += b.toString('utf8');
          const m = /"listen":"[^"]*:(\d+)"/.exec(text);
          if (m) {
            child.stderr?.off('data', onData);
            child.stderr?.resume();
            resolve(Number(m[1]));
          }
        };
        child.stderr?.on('data', onData);
        child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before listening: ${text}`)));
      });
      return { port, exportName: '', ...(t ? { tls: t } : {}), stop: () => stopChild(child) };
    },
  };
}

function nbdkitKind(tls: boolean): ServerKind {
  return {
    name: tls ? 'nbdkit-tls' : 'nbdkit',
    version: () => versionOf('nbdkit', ['--version']),
    async start(image, work) {
      const port = await freePort();
      const t = tls ? psk(work) : undefined;
      const tlsArgs = t ? ['--tls=require', `--tls-psk=${t.pskFile as string}`] : [];
      const child = spawn(...pinned('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), ...tlsArgs, 'file', image]), {
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      await waitForPort('127.0.0.1', port, 5000, child);
      return { port, exportName: '', ...(t ? { tls: t } : {}), stop: () => stopChild(child) };
    },
  };
}
const nbdkit = nbdkitKind(false);

const nbdServer: ServerKind = {
  name: 'nbd-server',
  version: async () => {
    // nbd-server -V prints to stderr and exits non-zero on some versions.
    const r = await run('nbd-server', ['-V']);
    const text = r.stdout + r.stderr;
    return (text.split('\n').find((l) => /version/i.test(l)) ?? text).trim().split('\n')[0]?.replace(/^This is /, '') ?? 'unknown';
  },
  async start(image, work) {
    const port = await freePort();
    const conf = path.join(work, 'nbd-server.conf');
    const pidFile = path.join(work, 'nbd-server.pid');
    // nbd-server(5): [generic] holds server-wide settings, each other section is an export.
    // It daemonizes (-d would serve a single connection), so the PID file is how it is stopped.
    fs.writeFileSync(conf, [
      '[generic]',
      `port = ${port}`,
      'listenaddr = 127.0.0.1',
      'allowlist = false',
      '[bench]',
      `exportname = ${image}`,
      'flush = true',
      'fua = true',
      'trim = true',
      '',
    ].join('\n'));
    fs.rmSync(pidFile, { force: true });
    await runOk(...pinned('nbd-server', ['-C', conf, '-p', pidFile]));
    await waitForPort('127.0.0.1', port, 5000);
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    return {
      port,
      exportName: 'bench',
      stop: async () => {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // already gone
        }
        for (let i = 0; i < 50 && pidAlive(pid); i++) await sleep(20);
      },
    };
  },
};

// With --pin, the servers run on CPUs 1.. and the client on CPU 0 (see main).
let serverCpus: string | null = null;

/** The command, under taskset when the servers are pinned (children inherit the mask). */
function pinned(file: string, args: string[]): [string, string[]] {
  return serverCpus === null ? [file, args] : ['taskset', ['-c', serverCpus, file, ...args]];
}

const SERVERS: ServerKind[] = [netdisk('ours', packageRoot()), nbdkit, nbdServer];
// Chosen by name only (--servers): the clear-text servers are the default comparison.
const TLS_SERVERS: ServerKind[] = [netdisk('ours-tls', packageRoot(), true), nbdkitKind(true)];

// ---- one case against one server ----

async function runCase(ep: Endpoint, c: BenchCase, imageBytes: number, warmupMs: number, measureMs: number): Promise<Result> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port: ep.port, exportName: ep.exportName, tls: ep.tls ?? null });
  try {
    return await drive(client, c, imageBytes, warmupMs, measureMs);
  } finally {
    await client.close();
  }
}

function drive(client: NbdClient, c: BenchCase, imageBytes: number, warmupMs: number, measureMs: number): Promise<Result> {
  const blocks = Math.floor(imageBytes / c.blockBytes);
  const write = isWrite(c);
  const type = write ? C.Cmd.WRITE : C.Cmd.READ;
  // One buffer per slot, allocated before the clock starts; write data is random so the
  // servers cannot shortcut zeros.
  const bufs: Buffer[] = [];
  for (let i = 0; i < c.depth; i++) {
    const b = Buffer.allocUnsafe(c.blockBytes);
    if (write) randomFillSync(b);
    bufs.push(b);
  }
  const started = new Float64Array(c.depth);
  let lat = new Float64Array(1 << 16);
  let nLat = 0;
  let rng = 0x9e3779b9;
  let seq = 0;
  const nextOffset = (): number => {
    if (!isRandom(c)) {
      const off = seq * c.blockBytes;
      seq = (seq + 1) % blocks;
      return off;
    }
    // xorshift32: cheap and allocation-free; its bias is irrelevant at these block counts.
    rng ^= rng << 13;
    rng ^= rng >>> 17;
    rng ^= rng << 5;
    return ((rng >>> 0) % blocks) * c.blockBytes;
  };

  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const measureFrom = t0 + warmupMs;
    const stopAt = measureFrom + measureMs;
    let inFlight = 0;
    let failed: Error | null = null;
    let bytes = 0;

    const issue = (slot: number): void => {
      inFlight++;
      started[slot] = performance.now();
      const b = bufs[slot] as Buffer;
      if (write) client.submit({ type, offset: nextOffset(), length: c.blockBytes, data: b }, slot, onDone);
      else client.submit({ type, offset: nextOffset(), length: c.blockBytes, into: b }, slot, onDone);
    };
    const onDone = (err: NbdError | null, slot: number): void => {
      inFlight--;
      const now = performance.now();
      if (err) failed ??= err;
      else if (now >= measureFrom && now < stopAt) {
        if (nLat === lat.length) {
          const bigger = new Float64Array(lat.length * 2);
          bigger.set(lat);
          lat = bigger;
        }
        lat[nLat++] = now - (started[slot] as number);
        bytes += c.blockBytes;
      }
      if (!failed && now < stopAt) return issue(slot);
      if (inFlight === 0) finish();
    };
    const finish = (): void => {
      if (failed) return reject(failed);
      const sorted = lat.subarray(0, nLat).sort();
      const seconds = measureMs / 1000;
      resolve({
        iops: nLat / seconds,
        mbps: bytes / seconds / 1e6,
        p50: percentile(sorted, 0.5) * 1000,
        p99: percentile(sorted, 0.99) * 1000,
      });
    };
    for (let i = 0; i < c.depth; i++) issue(i);
  });
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

// ---- driver ----

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '3' },
      size: { type: 'string', default: '256M' },
      dir: { type: 'string', default: os.tmpdir() },
      servers: { type: 'string', default: SERVERS.map((s) => s.name).join(',') },
      cases: { type: 'string', default: CASES.map((c) => c.id).join(',') },
      out: { type: 'string' },
      'no-out': { type: 'boolean', default: false },
      baseline: { type: 'string' },
      pin: { type: 'boolean', default: false },
    },
  });
  const seconds = Number(values.seconds);
  const warmup = Number(values.warmup);
  const rounds = Number(values.rounds);
  const imageBytes = parseSize(values.size);
  const known = [...SERVERS, ...TLS_SERVERS, ...(values.baseline ? [netdisk('baseline', path.resolve(values.baseline))] : [])];
  const servers = pick(known, values.baseline ? `${values.servers},baseline` : values.servers, 'server');
  const cases = findCases(values.cases.split(',').filter(Boolean));
  const date = new Date().toISOString().slice(0, 10);
  const outFile = values['no-out'] ? null : values.out ?? path.join(packageRoot(), 'bench', 'results', `wire-${date}.md`);

  if (values.pin) {
    // Client and server on separate CPUs, as on separate machines. Unpinned, the scheduler
    // decides per run whether they share a CPU, which moves QD1 latency by a factor of 3 on
    // a small VM and favours servers with many short-lived threads.
    const n = os.cpus().length;
    if (n < 2) throw new Error('--pin needs at least 2 CPUs');
    serverCpus = n === 2 ? '1' : `1-${n - 1}`;
    await runOk('taskset', ['-a', '-p', '-c', '0', String(process.pid)]);
  }
  const work = fs.mkdtempSync(path.join(values.dir, 'wire-bench-'));
  const image = path.join(work, 'image');
  const loadBefore = os.loadavg();
  fillImage(image, imageBytes);
  const running = new Map<string, RunningServer>();
  const results = new Map<string, Result[]>(); // key: case/server
  const loadPerRound: number[] = [];
  try {
    for (const s of servers) running.set(s.name, await s.start(image, work));
    for (let r = 0; r < rounds; r++) {
      loadPerRound.push(os.loadavg()[0] as number);
      for (const c of cases) {
        // Rotate who goes first so no server always follows the same neighbour.
        for (let k = 0; k < servers.length; k++) {
          const s = servers[(k + r) % servers.length] as ServerKind;
          const res = await runCase(running.get(s.name) as RunningServer, c, imageBytes, warmup * 1000, seconds * 1000);
          const key = `${c.id}/${s.name}`;
          results.set(key, [...(results.get(key) ?? []), res]);
          process.stderr.write(`round ${r + 1}/${rounds} ${c.id.padEnd(18)} ${s.name.padEnd(10)} ` +
            `${fmt(res.iops, 0).padStart(8)} IOPS ${fmt(res.mbps, 1).padStart(8)} MB/s ` +
            `p50 ${fmt(res.p50, 1).padStart(7)} us p99 ${fmt(res.p99, 1).padStart(8)} us\n`);
        }
      }
    }
  } finally {
    for (const rs of running.values()) await rs.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const loadAfter = os.loadavg();

  const table = renderTable(cases, servers, results);
  process.stdout.write(table + '\n');
  if (outFile) {
    const argv = process.argv.slice(2).join(' ');
    const command = process.env.npm_lifecycle_event
      ? `npm run ${process.env.npm_lifecycle_event}${argv ? ' -- ' + argv : ''}`
      : `node ${path.relative(packageRoot(), process.argv[1] as string)}${argv ? ' ' + argv : ''}`;
    const doc = [
      `# Wire benchmark, ${date}`,
      '',
      `Command: \`${command}\``,
      '',
      `- ${(await Promise.all(servers.map((s) => s.version()))).join('; ')}; node ${process.version}`,
      `- kernel ${os.release()}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'})`,
      `- load average (1/5/15 min) before ${loadBefore.map((l) => l.toFixed(2)).join(' ')}, after ${loadAfter.map((l) => l.toFixed(2)).join(' ')};` +
        ` 1-min at the start of each round ${loadPerRound.map((l) => l.toFixed(2)).join(', ')}`,
      `- image ${values.size} in ${values.dir} (page-cached, pre-filled with random data), loopback TCP;` +
        ` ${seconds} s per case after ${warmup} s warm-up, ${rounds} rounds, servers alternating; medians over rounds`,
      `- client: our NbdClient (one connection, pipelined, preallocated buffers), in the benchmark process; ` +
        (serverCpus === null ? 'not pinned (the scheduler places client and servers)' : `pinned to CPU 0, servers to CPU ${serverCpus}`),
      '',
      table,
      '',
      ...targetLines(cases, results),
      '',
    ].join('\n');
    fs.mkdirSync(path.dirname(outFile), { recursive: true });
    fs.writeFileSync(outFile, doc);
    process.stderr.write(`wrote ${outFile}\n`);
  }
}

function renderTable(cases: BenchCase[], servers: ServerKind[], results: Map<string, Result[]>): string {
  const lines = [
    '| case | server | IOPS | MB/s | p50 us | p99 us | IOPS vs nbdkit | p50 vs nbdkit | IOPS per round | p50 us per round |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|---|',
  ];
  for (const c of cases) {
    const base = results.get(`${c.id}/nbdkit`);
    for (const s of servers) {
      const rs = results.get(`${c.id}/${s.name}`) ?? [];
      const m = medians(rs);
      const b = base ? medians(base) : null;
      lines.push(`| ${c.id} | ${s.name} | ${fmt(m.iops, 0)} | ${fmt(m.mbps, 1)} | ${fmt(m.p50, 1)} | ${fmt(m.p99, 1)} | ` +
        `${b ? (m.iops / b.iops).toFixed(2) + 'x' : '-'} | ${b ? (m.p50 / b.p50).toFixed(2) + 'x' : '-'} | ` +
        `${rs.map((r) => fmt(r.iops, 0)).join(', ')} | ${rs.map((r) => fmt(r.p50, 0)).join(', ')} |`);
    }
  }
  return lines.join('\n');
}

// The server's performance targets: QD32 random-read IOPS >= 0.8x nbdkit's, QD1 p50 <= 1.25x.
function targetLines(cases: BenchCase[], results: Map<string, Result[]>): string[] {
  const get = (c: string, s: string): Result | null => {
    const rs = results.get(`${c}/${s}`);
    return rs && cases.some((x) => x.id === c) ? medians(rs) : null;
  };
  const out: string[] = [];
  const q32 = get('randread-4k-qd32', 'ours');
  const q32k = get('randread-4k-qd32', 'nbdkit');
  if (q32 && q32k) {
    const r = q32.iops / q32k.iops;
    out.push(`- Target QD32 random-read IOPS >= 0.8x nbdkit: ${r.toFixed(2)}x, ${r >= 0.8 ? 'met' : 'not met'}.`);
  }
  const q1 = get('randread-4k-qd1', 'ours');
  const q1k = get('randread-4k-qd1', 'nbdkit');
  if (q1 && q1k) {
    const r = q1.p50 / q1k.p50;
    out.push(`- Target QD1 random-read p50 <= 1.25x nbdkit: ${r.toFixed(2)}x, ${r <= 1.25 ? 'met' : 'not met'}.`);
  }
  return out;
}

function medians(rs: Result[]): Result {
  const med = (f: (r: Result) => number): number => {
    const v = rs.map(f).sort((a, b) => a - b);
    if (v.length === 0) return NaN;
    const mid = v.length >> 1;
    return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
  };
  return { iops: med((r) => r.iops), mbps: med((r) => r.mbps), p50: med((r) => r.p50), p99: med((r) => r.p99) };
}

// ---- helpers ----

function fillImage(file: string, bytes: number): void {
  const chunk = Buffer.allocUnsafe(1 << 20);
  const fd = fs.openSync(file, 'w');
  try {
    for (let off = 0; off < bytes; off += chunk.length) {
      randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function pick<T extends { name: string }>(all: T[], list: string, what: string): T[] {
  return list.split(',').filter(Boolean).map((n) => {
    const found = all.find((x) => x.name === n);
    if (!found) throw new Error(`unknown ${what} "${n}" (known: ${all.map((x) => x.name).join(', ')})`);
    return found;
  });
}

function fmt(n: number, digits: number): string {
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

main().catch((err: unknown) => {
  process.stderr.write(`wire-bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
