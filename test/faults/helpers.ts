// Fault scenarios on the real kernel: a store that dies and comes back, a network that
// stops moving bytes, a daemon killed with -9, while fio writes and verifies through the
// device. The same harness drives the kernel's nbd client (reliability.ts), so the two
// can be compared scenario by scenario.
//
// Everything runs asynchronously in this process: the fault proxy and the fake stores live
// here, and a block device stuck in the kernel must only ever stall a child process.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  CLI, HOST, MiB, cli, cliOk, daemonLog, expectingKernelErrors, freePort, ok, requireKernel, run, sleep, start, ublkNodes, waitFor,
  type RunResult, type Running,
} from '../device/helpers';
import { FakeNbdServer } from '../helpers/fake-nbd';
import { patternBuffer } from '../helpers/images';
import { addTransportArgs } from '../helpers/transports';

// The workload every fault scenario shares (the CI tests and the reliability table alike).
/** The store's size. */
export const STORE_SIZE = '64M';
/** fio writes this much through the device, then verifies it. */
export const FIO_BYTES = 32 * MiB;
/** A floor on fio's write phase, so that the fault always lands in the middle of it. */
export const FIO_RATE = '3m';
/** The fault starts once fio has written this much. */
export const FAULT_AT = 6 * MiB;

// ---------------------------------------------------------------- timeline

/** Timestamped events of one scenario, printed as seconds since its start. */
export class Timeline {
  readonly t0 = Date.now();
  readonly events: Array<{ t: number; what: string }> = [];

  mark(what: string, t = Date.now()): void {
    this.events.push({ t, what });
  }

  /** Seconds since the start, one decimal. */
  at(t: number): string {
    return `+${((t - this.t0) / 1000).toFixed(1)} s`;
  }

  text(indent = '      '): string {
    return [...this.events].sort((a, b) => a.t - b.t).map((e) => `${indent}${this.at(e.t).padStart(8)}  ${e.what}`).join('\n');
  }
}

// ---------------------------------------------------------------- fio

export interface FioProgress {
  t: number;
  written: number;
  read: number;
}

export interface FioOutcome {
  code: number | null;
  timedOut: boolean;
  /** fio's own error (an errno), 0 when none. */
  error: number;
  written: number;
  verified: number;
  ms: number;
  stderr: string;
}

export interface FioRun {
  readonly began: number;
  readonly progress: FioProgress[];
  readonly done: Promise<FioOutcome>;
  readonly finished: boolean;
  /** Resolves once fio has written at least this many bytes (fails if it ends first). */
  written(bytes: number, limitMs?: number): Promise<number>;
  kill(): void;
}

export interface FioOptions {
  size: number;
  bs?: string;
  iodepth?: number;
  /** A floor on the duration: fio writes at most this many bytes a second. */
  rate?: string;
  timeoutMs: number;
  extra?: string[];
}

/**
 * fio writing `file` sequentially with crc32c checksums in every block, then reading it all
 * back and checking them (verify_fatal: the first bad block ends it). Progress snapshots
 * come every second (JSON status), each with a timestamp.
 */
export function startFio(file: string, o: FioOptions): FioRun {
  const args = [
    '--name=netdisk-fault', `--filename=${file}`, `--size=${o.size}`, '--rw=write', `--bs=${o.bs ?? '128k'}`,
    '--ioengine=libaio', `--iodepth=${o.iodepth ?? 8}`, '--direct=1', '--verify=crc32c', '--do_verify=1',
    '--verify_fatal=1', '--verify_state_save=0', '--output-format=json', '--status-interval=1', ...(o.rate ? [`--rate=${o.rate}`] : []), ...(o.extra ?? []),
  ];
  const began = Date.now();
  const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const pid = child.pid ?? -1;
  const progress: FioProgress[] = [];
  let stdout = '';
  let scanned = 0;
  let stderr = '';
  let finished = false;
  let timedOut = false;
  let last: { error: number; written: number; read: number } = { error: 0, written: 0, read: 0 };
  const waiters: Array<() => void> = [];
  const wake = (): void => { for (const w of waiters.splice(0)) w(); };
  const parse = (): void => {
    // Each status report is one JSON document whose closing brace starts a line.
    for (;;) {
      const end = stdout.indexOf('\n}\n', scanned);
      if (end < 0) return;
      const doc = stdout.slice(stdout.indexOf('{', scanned), end + 2);
      scanned = end + 3;
      try {
        const j = JSON.parse(doc) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> };
        const job = j.jobs[0];
        if (job) {
          last = { error: job.error, written: job.write.io_bytes, read: job.read.io_bytes };
          progress.push({ t: Date.now(), written: last.written, read: last.read });
          wake();
        }
      } catch {
        // a partial or garbled report: the next one will do
      }
    }
  };
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
    parse();
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const killGroup = (): void => {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, o.timeoutMs);
  const done = new Promise<FioOutcome>((resolve) => {
    child.once('close', (code) => {
      clearTimeout(timer);
      finished = true;
      parse();
      wake();
      resolve({ code, timedOut, error: last.error, written: last.written, verified: last.read, ms: Date.now() - began, stderr });
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      finished = true;
      wake();
      resolve({ code: null, timedOut, error: -1, written: 0, verified: 0, ms: Date.now() - began, stderr: e.message });
    });
  });
  return {
    began,
    progress,
    done,
    get finished() { return finished; },
    written: async (bytes: number, limitMs = 300_000) => {
      const until = Date.now() + limitMs;
      while (last.written < bytes) {
        if (finished) throw new Error(`fio ended after writing ${last.written} bytes, before ${bytes}:\n${stderr}`);
        if (Date.now() > until) throw new Error(`fio wrote only ${last.written} of ${bytes} bytes in ${limitMs} ms`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 1000);
        });
      }
      return Date.now();
    },
    kill: killGroup,
  };
}

/** Adds fio's progress to a timeline: one line every `everyMs`, plus the first and the last. */
export function markFioProgress(tl: Timeline, fio: FioRun, everyMs = 2000): void {
  let lastT = 0;
  const ps = fio.progress;
  for (const [i, p] of ps.entries()) {
    const prev = ps[i - 1];
    const stalled = prev !== undefined && prev.written === p.written && prev.read === p.read;
    const next = ps[i + 1];
    const resumes = next !== undefined && (next.written !== p.written || next.read !== p.read) && stalled;
    if (i === 0 || i === ps.length - 1 || p.t - lastT >= everyMs || resumes) {
      const what = p.read > 0 ? `verified ${mib(p.read)}` : `written ${mib(p.written)}`;
      tl.mark(`fio: ${what}${stalled ? ' (no progress for a second)' : ''}`, p.t);
      lastT = p.t;
    }
  }
}

export function mib(n: number): string {
  return `${(n / MiB).toFixed(n % MiB === 0 ? 0 : 1)} MiB`;
}

// ---------------------------------------------------------------- the store

export interface Store {
  readonly image: string;
  readonly port: number;
  readonly alive: boolean;
  /** stderr of every run of `serve` so far, with how each ended. */
  log(): string;
  /** kill -9: no goodbye, no flush. */
  kill9(): Promise<void>;
  /** A new `serve` of the same image on the same port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * `serve IMAGE --listen 127.0.0.1:PORT` (a fixed port, so a restarted store is found again);
 * `args` go last (another --listen there wins: a unix socket is found again too).
 */
export async function serveStore(image: string, size: string, port?: number, args: string[] = []): Promise<Store> {
  const p = port ?? await freePort();
  let proc: Running | undefined;
  const runs: Running[] = [];
  const launch = async (): Promise<void> => {
    const r = start(process.execPath, [CLI, 'serve', image, '--size', size, '--listen', `${HOST}:${p}`, ...args], {
      timeoutMs: 3_600_000, env: { ...process.env, NETDISK_LOG_FORMAT: 'json' },
    });
    proc = r;
    runs.push(r);
    void r.result.then((x) => { ended.set(r, `exit ${x.code ?? x.signal}`); });
    await waitFor('serve to listen', () => r.done || r.stderr().includes('"serving"'), 60_000, 50);
    if (r.done) throw new Error(`serve exited:\n${r.stderr()}`);
  };
  await launch();
  const stopWith = async (sig: NodeJS.Signals): Promise<void> => {
    const r = proc;
    if (!r || r.done) return;
    r.signal(sig);
    const t = setTimeout(() => r.signal('SIGKILL'), 20_000);
    await r.result;
    clearTimeout(t);
  };
  const ended = new Map<Running, string>();
  return {
    image,
    port: p,
    get alive() { return proc !== undefined && !proc.done; },
    log: () => runs.map((r, i) => `--- serve run ${i + 1} (${ended.get(r) ?? 'running'}):\n${r.stderr()}`).join('\n'),
    kill9: () => stopWith('SIGKILL'),
    restart: launch,
    stop: () => stopWith('SIGTERM'),
  };
}

// ---------------------------------------------------------------- devices

export interface Device {
  id: number;
  device: string;
  size: number;
  pid: number;
}

/** `add --remote 127.0.0.1:PORT`, or --remote as given (a URI). */
export async function addDevice(remote: number | string, extra: string[] = []): Promise<Device> {
  const r = await cliOk(['add', '--remote', typeof remote === 'number' ? `${HOST}:${remote}` : remote, '--json', ...addTransportArgs(), ...extra], { timeoutMs: 120_000 });
  const info = JSON.parse(r.stdout.trim().split('\n').pop() as string) as Device;
  await waitFor(`${info.device} to appear`, () => fs.existsSync(info.device), 10_000, 50);
  return info;
}

/** Whether the daemon of device id has logged a line whose message matches. */
export function daemonSaid(id: number, msg: RegExp): boolean {
  return daemonLog(id).some((l) => msg.test(l.msg));
}

/** The daemon's log lines about the store's connection (all of them with `all`), for a timeline. */
export function markDaemonLog(tl: Timeline, id: number, since = 0, all = false): void {
  for (const l of daemonLog(id)) {
    if (l.time < since) continue;
    if (all || /store|recover|live|queue worker/.test(l.msg)) {
      const extra = ['reason', 'downMs', 'resent', 'failed', 'attempts', 'err', 'q', 'code', 'signal'].filter((k) => l[k] !== undefined).map((k) => `${k}=${String(l[k])}`);
      tl.mark(`daemon: ${l.msg}${extra.length ? ` (${extra.join(', ')})` : ''}`, l.time);
    }
  }
}

/** One device on a scripted store, for a suite; filled in by the suite's before(). */
export interface ScriptedDevice {
  store: FakeNbdServer;
  dev: Device;
  /** A directory of the suite's own for scratch files. */
  scratch: string;
}

/**
 * Mocha hooks for a suite on one device backed by a scripted store (test/helpers/fake-nbd.ts)
 * holding `size` bytes of pattern `seed`, added with `addArgs`: before() starts both, after()
 * deletes every device and checks that the store's own scripts never failed.
 */
export function scriptedStoreDevice(size: number, seed: number, addArgs: string[]): ScriptedDevice {
  const s = {} as ScriptedDevice;
  before(async function () {
    requireKernel(this);
    assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk devices exist before the test');
    s.scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-scripted-'));
    s.store = await FakeNbdServer.start(size);
    patternBuffer(size, seed).copy(s.store.disk);
    s.dev = await addDevice(s.store.port, addArgs);
  });
  after(async function () {
    const r = await cli(['del', '--all'], { timeoutMs: 120_000 });
    await s.store?.close();
    if (s.scratch) fs.rmSync(s.scratch, { recursive: true, force: true });
    assert.strictEqual(r.code, 0, `del --all failed: ${r.stderr}`);
    assert.deepStrictEqual(s.store?.errors ?? [], [], 'the scripted store failed');
  });
  return s;
}

export function mounted(dir: string): { rw: boolean } | undefined {
  const line = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[1] === dir);
  if (!line) return undefined;
  return { rw: (line.split(' ')[3] ?? '').split(',').includes('rw') };
}

// ---------------------------------------------------------------- one scenario's environment

/** What a scenario created, undone in reverse by cleanup(), whatever happened. */
export class FaultEnv {
  readonly dir: string;
  private readonly undo: Array<{ what: string; step: () => Promise<unknown> }> = [];

  constructor(readonly title: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-fault-'));
  }

  defer(what: string, step: () => Promise<unknown>): void {
    this.undo.push({ what, step });
  }

  async store(size: string, port?: number, args: string[] = []): Promise<Store> {
    const s = await serveStore(path.join(this.dir, 'store.img'), size, port, args);
    this.defer('stop the store', () => s.stop());
    return s;
  }

  async mkfsMount(dev: string): Promise<string> {
    await ok('mkfs.ext4', ['-q', '-F', dev], { timeoutMs: 300_000 });
    const mnt = path.join(this.dir, 'mnt');
    fs.mkdirSync(mnt, { recursive: true });
    await ok('mount', [dev, mnt], { timeoutMs: 120_000 });
    this.defer(`umount ${mnt}`, async () => {
      if (!mounted(mnt)) return;
      const r = await run('umount', [mnt], { timeoutMs: 120_000 });
      if (r.code !== 0) await run('umount', ['-l', mnt], { timeoutMs: 60_000 });
    });
    return mnt;
  }

  async cleanup(): Promise<void> {
    const errors: string[] = [];
    // A step stuck in the kernel (umount of a dead device) must not stop the others.
    const bound = (p: Promise<unknown>, ms: number): Promise<unknown> =>
      Promise.race([p, sleep(ms).then(() => { throw new Error(`still running after ${ms / 1000} s`); })]);
    for (const u of this.undo.splice(0).reverse()) {
      try {
        await bound(Promise.resolve().then(u.step), 150_000);
      } catch (err) {
        errors.push(`${u.what}: ${(err as Error).message}`);
      }
    }
    const r = await cli(['del', '--all'], { timeoutMs: 180_000 });
    if (r.code !== 0) errors.push(`del --all exited ${r.code}: ${r.stderr}`);
    fs.rmSync(this.dir, { recursive: true, force: true });
    const left = ublkNodes().filter((n) => n !== 'ublk-control');
    if (left.length > 0) errors.push(`devices left after cleanup: ${left.join(' ')}`);
    if (errors.length > 0) throw new Error(`cleanup of "${this.title}":\n${errors.join('\n')}`);
  }
}

/**
 * fio writes FIO_BYTES to a file on the filesystem at mnt and verifies them, while the store
 * is killed (-9) mid-write and restarted `downMs` later on the same address; the timeline
 * gets the fault, fio's progress and the daemon's log. Resolves with fio's outcome.
 */
export async function fioThroughStoreRestart(tl: Timeline, store: Store, dev: Device, mnt: string, downMs: number, over = ''): Promise<FioOutcome> {
  const fio = startFio(path.join(mnt, 'fio.dat'), { size: FIO_BYTES, rate: FIO_RATE, timeoutMs: 400_000 });
  tl.mark(`fio started on ext4 on ${dev.device}${over}: write ${mib(FIO_BYTES)} (crc32c in every block), then verify`, fio.began);
  await fio.written(FAULT_AT);
  await store.kill9();
  tl.mark('store killed (kill -9)');
  await sleep(downMs);
  await store.restart();
  tl.mark('store restarted on the same address');
  const out = await fio.done;
  tl.mark(`fio ended: exit ${out.code}, error ${out.error}, ${mib(out.written)} written, ${mib(out.verified)} verified`);
  markFioProgress(tl, fio);
  markDaemonLog(tl, dev.id, tl.t0);
  return out;
}

/** Unmounts, deletes the device and checks the filesystem on the store's image. */
export async function umountDelFsck(mnt: string, devId: number, image: string): Promise<RunResult> {
  await ok('umount', [mnt], { timeoutMs: 180_000 });
  await cliOk(['del', String(devId)], { timeoutMs: 120_000 });
  assert.ok(!fs.existsSync(`/dev/ublkb${devId}`), 'the device is still there after del');
  const fsck = await run('e2fsck', ['-f', '-n', image], { timeoutMs: 300_000 });
  assert.strictEqual(fsck.code, 0, `e2fsck -fn found problems (exit ${fsck.code}):\n${fsck.stdout}${fsck.stderr}`);
  return fsck;
}

export { MiB, daemonLog, expectingKernelErrors, sleep };

/** Reads a device range with one O_DIRECT dd request (offset and length multiples of 4 KiB). */
export async function readDirect(dev: string, offset: number, length: number, scratch: string): Promise<{ data: Buffer; r: RunResult }> {
  assert.ok(offset % 4096 === 0 && length % 4096 === 0);
  const out = path.join(scratch, `read-${Date.now()}-${Math.random().toString(16).slice(2)}.bin`);
  try {
    const r = await run('dd', [`if=${dev}`, `of=${out}`, `bs=${length}`, `skip=${offset}`, 'count=1', 'iflag=direct,skip_bytes', 'status=none'],
      { timeoutMs: 120_000 });
    const data = fs.existsSync(out) ? fs.readFileSync(out) : Buffer.alloc(0);
    return { data, r };
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** Writes data at offset with one O_DIRECT dd request. */
export async function writeDirect(dev: string, offset: number, data: Buffer, scratch: string): Promise<RunResult> {
  assert.ok(offset % 4096 === 0 && data.length % 4096 === 0);
  const src = path.join(scratch, `write-${Date.now()}-${Math.random().toString(16).slice(2)}.bin`);
  fs.writeFileSync(src, data);
  try {
    return await run('dd', [`if=${src}`, `of=${dev}`, `bs=${data.length}`, `seek=${offset}`, 'count=1', 'oflag=direct,seek_bytes', 'conv=notrunc', 'status=none'],
      { timeoutMs: 120_000 });
  } finally {
    fs.rmSync(src, { force: true });
  }
}
