// Device scenarios on the real kernel, driven the way a user drives the product: the CLI
// (`node bin/netdisk-ublk.js serve|add|del|list`) in child processes, and the system's own
// tools (mkfs, mount, fio, nbd-client, blkdiscard, mtools) on the device it creates.
//
// Every command runs asynchronously under a time limit: a hung device must fail the test
// that hit it, not hang the run. Everything a test creates (servers, devices, mounts, nbd
// attachments, temp directories) is undone after it, whatever happened.
import { UBLK_CONTROL_PATH } from '../../src/ublk/constants';
import { ublkAvailable } from '../../src/ublk/ctrl';
import * as assert from 'assert';
import { spawn, SpawnOptions } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import type { ReadyInfo } from '../../src/device/daemon';
import type { DeviceView } from '../../src/device/inventory';
import { pidAlive } from '../../src/device/state';
import { MiB, allocatedBytes, dataExtents, isAllocated, isHole, readAt, sha256 } from '../helpers/images';
import { HOST, freePort } from '../helpers/net';
import { repoRoot } from '../helpers/vm';
import { addTransportArgs } from '../helpers/transports';

export { HOST, MiB, allocatedBytes, dataExtents, freePort, isAllocated, isHole, pidAlive, readAt, sha256 };


export const CLI = path.join(repoRoot(), 'bin', 'netdisk-ublk.js');
export const RUN_DIR = '/run/netdisk-ublk';

// ---------------------------------------------------------------- processes

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the time limit killed it. */
  timedOut: boolean;
  ms: number;
}

export interface RunOptions {
  /** Kill (SIGKILL, whole process group) after this long; the result says timedOut. */
  timeoutMs?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** A child started with start(): still running, can be waited for or signalled. */
export interface Running {
  readonly pid: number;
  readonly done: boolean;
  /** Resolves when it has exited (never rejects; a spawn failure is code null + stderr). */
  readonly result: Promise<RunResult>;
  stdout(): string;
  stderr(): string;
  signal(sig: NodeJS.Signals): void;
}

const liveGroups = new Set<number>();
process.on('exit', () => {
  for (const pgid of liveGroups) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

const DEFAULT_TIMEOUT_MS = 120_000;

/**
 * Starts a command in its own process group (so a time limit kills everything it forked,
 * e.g. fio's job processes) with piped output.
 */
export function start(cmd: string, args: string[], opts: RunOptions = {}): Running {
  const began = Date.now();
  const so: SpawnOptions = { stdio: ['pipe', 'pipe', 'pipe'], detached: true, env: opts.env ?? process.env };
  if (opts.cwd !== undefined) so.cwd = opts.cwd;
  const child = spawn(cmd, args, so);
  const pid = child.pid ?? -1;
  if (pid > 0) liveGroups.add(pid);
  let out = '';
  let err = '';
  let done = false;
  let timedOut = false;
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
  child.stdin?.on('error', () => undefined);
  child.stdin?.end(opts.input);
  const limit = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, limit);
  const result = new Promise<RunResult>((resolve) => {
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      liveGroups.delete(pid);
      resolve({ code, signal, stdout: out, stderr: err, timedOut, ms: Date.now() - began });
    };
    child.once('error', (e) => {
      err += `cannot run ${cmd}: ${e.message}\n`;
      finish(null, null);
    });
    child.once('close', finish);
  });
  return {
    pid,
    get done() { return done; },
    result,
    stdout: () => out,
    stderr: () => err,
    signal: (sig) => {
      if (!done) child.kill(sig);
    },
  };
}

/** Runs a command to its end (or its time limit). */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return start(cmd, args, opts).result;
}

function describeRun(cmd: string, args: string[], r: RunResult): string {
  const how = r.timedOut ? `timed out after ${r.ms} ms` : `exited ${r.code ?? r.signal}`;
  return `${[cmd, ...args].join(' ')} ${how}\n--- stderr:\n${r.stderr}--- stdout:\n${r.stdout}`;
}

/** run(), failing unless it exits 0 in time. */
export async function ok(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0 || r.timedOut) throw new Error(describeRun(cmd, args, r));
  return r;
}

/** The product's CLI, as `node bin/netdisk-ublk.js ARGS`. */
export function cli(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], opts);
}

export async function cliOk(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await cli(args, opts);
  if (r.code !== 0 || r.timedOut) throw new Error(describeRun('netdisk-ublk', args, r));
  return r;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it holds; fails with `what` after limitMs. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, limitMs: number, everyMs = 100): Promise<number> {
  const began = Date.now();
  for (;;) {
    if (await cond()) return Date.now() - began;
    if (Date.now() - began > limitMs) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------- files

export function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** A file of `size` bytes of random data, written out (every block allocated). */
export function randomFile(file: string, size: number): Buffer {
  const data = randomBytes(size);
  fs.writeFileSync(file, data);
  return data;
}

/**
 * Reads a device range with O_DIRECT (dd into a scratch file), so the answer comes from the
 * device, not from the page cache.
 */
export async function readDevice(dev: string, offset: number, length: number, scratch: string): Promise<Buffer> {
  assert.ok(offset % 512 === 0 && length % 512 === 0, 'readDevice wants sector-aligned ranges');
  // The largest block that divides both: one 512-byte request per sector took over a minute
  // for 2 MiB on a loaded machine under the emulated CPU.
  let bs = 512;
  while (bs < 1024 * 1024 && offset % (bs * 2) === 0 && length % (bs * 2) === 0) bs *= 2;
  const out = path.join(scratch, `read-${process.pid}-${Date.now()}.bin`);
  try {
    await ok('dd', [`if=${dev}`, `of=${out}`, `bs=${bs}`, `skip=${offset / bs}`, `count=${length / bs}`, 'iflag=direct', 'status=none'], { timeoutMs: 180_000 });
    return fs.readFileSync(out);
  } finally {
    fs.rmSync(out, { force: true });
  }
}

export function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

// ---------------------------------------------------------------- kernel log

/** Kernel log lines that mean something went wrong. */
export const BAD_KERNEL_LOG = /WARNING|BUG|Oops|Call Trace|[Ee]rror|blocked for more than|hung_task|not properly unmounted|corrupt|(ublk|nbd).*fail/;

/**
 * Marks the kernel log (a line written to /dev/kmsg) so that later only the lines logged
 * after it are looked at; the marker also labels the scenario in the guest's dmesg.
 */
export function markKernelLog(title: string): string {
  const tag = `netdisk-test ${randomBytes(4).toString('hex')}`;
  fs.writeFileSync('/dev/kmsg', `${tag}: ${title.replace(/\s+/g, ' ').slice(0, 200)}\n`);
  return tag;
}

/** Kernel log lines after the marker. */
export async function kernelLogSince(tag: string): Promise<string[]> {
  const lines = (await ok('dmesg', [], { timeoutMs: 30_000 })).stdout.split('\n');
  let i = -1;
  for (let j = lines.length - 1; j >= 0; j--) {
    if ((lines[j] as string).includes(tag)) {
      i = j;
      break;
    }
  }
  // A marker that scrolled out of the ring buffer: look at everything there is.
  return lines.slice(i + 1).filter((l) => l.trim() !== '');
}

/** Fails with the offending lines when the kernel complained since the marker (`allow` excepted). */
export async function assertKernelLogClean(tag: string, allow?: RegExp): Promise<void> {
  // Lines tests write themselves (markers, "expected errors" brackets) are not the kernel's.
  const bad = (await kernelLogSince(tag))
    .filter((l) => !l.includes('netdisk-test') && BAD_KERNEL_LOG.test(l) && !(allow && allow.test(l)));
  assert.deepStrictEqual(bad, [], 'the kernel log shows problems');
}

/**
 * Runs fn with the kernel log bracketed as "errors expected here" (test/kernel.test.ts
 * leaves those lines out of its check): a scenario that makes I/O fail on purpose makes
 * the kernel say so.
 */
export async function expectingKernelErrors<T>(why: string, fn: () => Promise<T>): Promise<T> {
  fs.writeFileSync('/dev/kmsg', `netdisk-test: expected errors begin: ${why}\n`);
  try {
    return await fn();
  } finally {
    fs.writeFileSync('/dev/kmsg', 'netdisk-test: expected errors end\n');
  }
}

// ---------------------------------------------------------------- devices

/**
 * A private run directory (NETDISK_RUN_DIR) for each test of the calling suite, so a CLI
 * test never touches the host's /run/netdisk-ublk. Returns the current one and its env.
 */
export function privateRunDir(): () => { dir: string; env: NodeJS.ProcessEnv } {
  let cur = { dir: '', env: {} as NodeJS.ProcessEnv };
  beforeEach(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-run-'));
    cur = { dir, env: { ...process.env, NETDISK_RUN_DIR: dir } };
  });
  afterEach(() => fs.rmSync(cur.dir, { recursive: true, force: true }));
  return () => cur;
}

/** A pino JSON log line of the server or a daemon. */
export type LogLine = { time: number; level: number; msg: string; [k: string]: unknown };

/** What `add --json` and `recover --json` print. */
export type DeviceInfo = ReadyInfo;

/** One entry of `list --json`. */
export type ListEntry = DeviceView;

/** ublk nodes in /dev (ublk-control, ublkbN, ublkcN). */
export function ublkNodes(): string[] {
  return fs.readdirSync('/dev').filter((n) => n.startsWith('ublk')).sort();
}

export async function listDevices(): Promise<ListEntry[]> {
  const r = await cliOk(['list', '--json'], { timeoutMs: 60_000 });
  return JSON.parse(r.stdout) as ListEntry[];
}

export function records(): string[] {
  try {
    return fs.readdirSync(RUN_DIR).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
}

export function readRecord(id: number): { id: number; pid: number; [k: string]: unknown } | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(RUN_DIR, `${id}.json`), 'utf8')) as { id: number; pid: number };
  } catch {
    return undefined;
  }
}

/** The daemon's JSON log lines ([] before it has a log); a line still being written is skipped. */
export function daemonLog(id: number): LogLine[] {
  let text = '';
  try {
    text = fs.readFileSync(path.join(RUN_DIR, `${id}.log`), 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').flatMap((l) => {
    if (!l.startsWith('{')) return [];
    try {
      return [JSON.parse(l) as LogLine];
    } catch {
      return [];
    }
  });
}

/** Nothing of ours is left: only ublk-control in /dev, `list` empty, no state records. */
export async function assertNoDevices(): Promise<void> {
  assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk nodes left in /dev');
  assert.deepStrictEqual(await listDevices(), [], '`list --json` still shows devices');
  assert.deepStrictEqual(records(), [], `state records left in ${RUN_DIR}`);
}

/** Waits for the block device node (devtmpfs creates it; there is no udev to wait for). */
async function waitForNode(dev: string): Promise<void> {
  await waitFor(`${dev} to appear`, () => fs.existsSync(dev), 10_000, 50);
}

// ---------------------------------------------------------------- the environment of one test

export interface Server {
  readonly port: number;
  readonly image: string;
  readonly proc: Running;
  /** The server's JSON log lines so far. */
  logs(): LogLine[];
  stop(): Promise<RunResult>;
}

export interface ServeOptions {
  size?: string;
  name?: string;
  readOnly?: boolean;
}

/**
 * What one test created, undone in reverse order by cleanup(): mounts, nbd attachments,
 * devices (`del --all`), servers, temp directories.
 */
export class DeviceEnv {
  readonly dir: string;
  private readonly undo: Array<{ what: string; step: () => Promise<unknown> }> = [];
  private readonly servers: Server[] = [];

  constructor(readonly title: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-dev-'));
  }

  /** Serves `image` with `serve IMAGE --listen 127.0.0.1:0`, port read from its "serving" log line. */
  async serve(image: string, opts: ServeOptions = {}): Promise<Server> {
    const args = ['serve', image, '--listen', `${HOST}:0`];
    if (opts.size !== undefined) args.push('--size', opts.size);
    if (opts.name !== undefined) args.push('--name', opts.name);
    if (opts.readOnly) args.push('--read-only');
    // The server lives as long as the test, however long that is; cleanup() stops it.
    const proc = start(process.execPath, [CLI, ...args], {
      timeoutMs: 3_600_000, env: { ...process.env, NETDISK_LOG_FORMAT: 'json' },
    });
    const logs = (): LogLine[] => proc.stderr().split('\n').flatMap((l) => {
      if (!l.startsWith('{')) return [];
      try {
        return [JSON.parse(l) as LogLine];
      } catch {
        return [];
      }
    });
    const stop = async (): Promise<RunResult> => {
      proc.signal('SIGTERM');
      const t = setTimeout(() => proc.signal('SIGKILL'), 20_000);
      const r = await proc.result;
      clearTimeout(t);
      return r;
    };
    try {
      await waitFor('the server to log "serving"', () => proc.done || logs().some((l) => l.msg === 'serving'), 60_000, 50);
    } catch (err) {
      await stop();
      throw err;
    }
    const serving = logs().find((l) => l.msg === 'serving');
    if (!serving) throw new Error(`serve exited before serving:\n${proc.stderr()}`);
    const listen = String(serving.listen);
    const port = Number(listen.slice(listen.lastIndexOf(':') + 1));
    assert.ok(port > 0, `no port in ${JSON.stringify(serving)}`);
    const s: Server = { port, image, proc, logs, stop };
    this.servers.push(s);
    return s;
  }

  /** `add --remote 127.0.0.1:PORT --json [extra]`: the device, once the CLI says it is live. */
  async add(port: number, extra: string[] = []): Promise<DeviceInfo> {
    const r = await cliOk(['add', '--remote', `${HOST}:${port}`, '--json', ...addTransportArgs(), ...extra], { timeoutMs: 120_000 });
    const info = JSON.parse(r.stdout.trim().split('\n').pop() as string) as DeviceInfo;
    assert.strictEqual(info.device, `/dev/ublkb${info.id}`);
    await waitForNode(info.device);
    return info;
  }

  /** `del ID`, checked: exit 0 and the device gone. */
  async del(id: number): Promise<RunResult> {
    const r = await cliOk(['del', String(id)], { timeoutMs: 120_000 });
    assert.ok(!fs.existsSync(`/dev/ublkb${id}`), `/dev/ublkb${id} still exists after del`);
    return r;
  }

  /** A fresh mount point under the test's directory. */
  mountPoint(name = 'mnt'): string {
    const p = path.join(this.dir, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  }

  async mount(dev: string, dir: string, opts: string[] = []): Promise<void> {
    await ok('mount', [...opts, dev, dir], { timeoutMs: 120_000 });
    this.undo.push({ what: `umount ${dir}`, step: () => this.umountQuiet(dir) });
  }

  async umount(dir: string): Promise<void> {
    await ok('umount', [dir], { timeoutMs: 180_000 });
  }

  private async umountQuiet(dir: string): Promise<void> {
    const mounted = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === dir);
    if (!mounted) return;
    const r = await run('umount', [dir], { timeoutMs: 120_000 });
    // A device that died under the filesystem may refuse a clean unmount.
    if (r.code !== 0) await run('umount', ['-l', dir], { timeoutMs: 60_000 });
  }

  /** Attaches /dev/nbdN to the server with the kernel's nbd driver (nbd-client, NBD_OPT_GO). */
  async nbdAttach(nbd: string, port: number, exportName: string): Promise<RunResult> {
    this.undo.push({ what: `disconnect ${nbd}`, step: () => this.nbdDetach(nbd) });
    return ok('nbd-client', [HOST, String(port), nbd, '-N', exportName], { timeoutMs: 60_000 });
  }

  async nbdDetach(nbd: string): Promise<void> {
    const name = path.basename(nbd);
    if (!fs.existsSync(`/sys/block/${name}/pid`)) return; // not connected
    await ok('nbd-client', ['-d', nbd], { timeoutMs: 60_000 });
    await waitFor(`${nbd} to disconnect`, () => !fs.existsSync(`/sys/block/${name}/pid`), 30_000);
  }

  /** Undoes everything, then checks that no device is left; every step runs even if one fails. */
  async cleanup(): Promise<void> {
    const errors: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${(err as Error).message}`);
      }
    };
    // Mounts and nbd attachments first (they hold devices), then the devices, then servers.
    for (const u of this.undo.splice(0).reverse()) await step(u.what, u.step);
    await step('del --all', async () => {
      const r = await cli(['del', '--all'], { timeoutMs: 180_000 });
      if (r.code !== 0) throw new Error(`del --all exited ${r.code}: ${r.stderr}`);
    });
    for (const s of this.servers.splice(0).reverse()) await step(`stop the server of ${s.image}`, () => s.stop());
    await step('remove the temp directory', async () => fs.rmSync(this.dir, { recursive: true, force: true }));
    const left = ublkNodes().filter((n) => n !== 'ublk-control');
    if (left.length > 0) errors.push(`devices left after cleanup: ${left.join(' ')}`);
    if (errors.length > 0) throw new Error(`cleanup of "${this.title}":\n${errors.join('\n')}`);
  }
}

/** Skips (or, inside the test VM, fails) a suite that cannot run here: it needs ublk and root. */
export function requireKernel(ctx: Mocha.Context): void {
  const missing: string[] = [];
  if (!ublkAvailable()) missing.push(UBLK_CONTROL_PATH);
  if (process.getuid?.() !== 0) missing.push('root');
  if (missing.length === 0) return;
  if (process.env.NETDISK_IN_VM === '1') throw new Error(`missing in the test VM: ${missing.join(', ')}`);
  // A host without ublk (or not root) runs these suites through test/kernel.test.ts in the
  // test VM instead, where a missing piece is the failure above, never a skip.
  ctx.skip();
}

/**
 * Mocha wiring for a suite of device scenarios: a fresh DeviceEnv per test, which must
 * start with no ublk device, and its cleanup after the test. Returns a getter for the
 * current test's environment.
 */
export function deviceSuite(): () => DeviceEnv {
  let env: DeviceEnv | undefined;
  before(function () {
    requireKernel(this);
  });
  beforeEach(function () {
    const title = this.currentTest?.fullTitle() ?? 'device test';
    env = new DeviceEnv(title);
    // A previous run or test may have left something behind: this one starts clean.
    assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk devices exist before the test');
  });
  afterEach(async function () {
    const e = env;
    env = undefined;
    if (e) await e.cleanup();
  });
  return () => {
    if (!env) throw new Error('no device environment outside a test');
    return env;
  };
}

/** A TCP server in this process on 127.0.0.1 that does `onConnection` to each client. */
export async function tcpServer(onConnection: (s: net.Socket) => void): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    onConnection(s);
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0 }, () => resolve((server.address() as net.AddressInfo).port));
  });
  return {
    port,
    close: () => new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
}
