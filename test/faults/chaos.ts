// A chaos soak on the real kernel: fio writes and verifies (crc32c) files on ext4 on the
// device, round after round, while faults drawn from a seed hit it at random times: the
// store killed (-9) and restarted 0-15 s later, the network black-holed for 1-20 s, the
// store's replies delayed by up to 2 s, the daemon killed (-9) and brought back with
// `recover`, several of them at once. After every fault fio must still run with no error;
// at the end the last round verifies, the filesystem is unmounted, the device deleted and
// e2fsck -fn must find the store's image clean.
//
// test/faults/chaos.ktest.ts runs a short schedule in CI; a long one, in the test VM:
//
//   npm run chaos -- --minutes 30 --seed 42 [--kernel 6.12|7]
//
// (NETDISK_VM_KERNEL picks the kernel too; NETDISK_VM_LOCK a VM lock of its own.) Run
// natively where the kernel has ublk, otherwise it boots the test VM and runs itself there.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { assertKernelLogClean, cli, listDevices, markKernelLog, pidAlive, waitFor } from '../device/helpers';
import { FaultProxy } from '../helpers/fault-proxy';
import { inVm, repoRoot, ublkAvailable, vmScript } from '../helpers/vm';
import {
  FaultEnv, MiB, addDevice, daemonSaid, mib, mounted, sleep, startFio, umountDelFsck, type FioOutcome, type FioRun, type Store,
} from './helpers';

export type FaultKind = 'store-kill' | 'blackhole' | 'slow' | 'daemon-kill';
export const FAULT_KINDS: FaultKind[] = ['store-kill', 'blackhole', 'slow', 'daemon-kill'];

/** The store's size and what each fio round writes, then verifies. */
const STORE_SIZE = '128M';
const ROUND_BYTES = 32 * MiB;
/** A request without a reply for this long means a stalled connection: longer than the slowest reply a fault makes (2 s). */
const DEVICE_TIMEOUT_S = 10;
/** recover tried this often in a row at most (a second apart; the longest outage a schedule makes is well under a minute). */
const RECOVER_ATTEMPTS = 60;
/** A round of fio (32 MiB written and read back) ends within this, whatever the faults. */
const ROUND_LIMIT_MS = 20 * 60_000;

export interface ChaosOptions {
  seed: number;
  /** Faults start during this long; then the last round finishes. */
  faultMs: number;
  log?: (line: string) => void;
}

export interface ChaosSummary {
  seed: number;
  faultMs: number;
  totalMs: number;
  faults: Record<FaultKind, number>;
  /** Faults that began while another was still on. */
  overlapping: number;
  /** The most faults on at the same time. */
  maxAtOnce: number;
  rounds: number;
  bytesWritten: number;
  bytesVerified: number;
  /** The longest time fio's byte counts stood still, and the faults on during it. */
  longestPauseMs: number;
  longestPauseDuring: string;
  recoverAttempts: number;
  errors: string[];
  fsck: string;
  kernelLog: string;
}

/** mulberry32: a small seeded generator, so that a schedule can be run again. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs fio rounds on mnt until told to stop; every round must end with code 0 and all its bytes verified. */
class FioRounds {
  rounds = 0;
  written = 0;
  verified = 0;
  readonly errors: string[] = [];
  /** Times at which the bytes fio had moved grew. */
  private readonly moved: number[] = [];
  private current: FioRun | null = null;
  private stopping = false;
  private failed = false;
  readonly done: Promise<void>;

  constructor(private readonly mnt: string, private readonly log: (s: string) => void) {
    this.done = this.loop().catch((err: unknown) => {
      this.failed = true;
      this.errors.push(`fio rounds: ${(err as Error).message}`);
    });
  }

  get running(): boolean {
    return this.current !== null && !this.current.finished;
  }

  stop(): void {
    this.stopping = true;
  }

  /** The longest gap between two moments fio's byte counts grew (up to `until`). */
  longestPause(until: number): { ms: number; from: number } {
    let best = { ms: 0, from: 0 };
    const ts = [...this.moved, until];
    for (let i = 1; i < ts.length; i++) {
      const gap = (ts[i] as number) - (ts[i - 1] as number);
      if (gap > best.ms) best = { ms: gap, from: ts[i - 1] as number };
    }
    return best;
  }

  private async loop(): Promise<void> {
    this.moved.push(Date.now());
    while (!this.stopping && !this.failed) {
      const file = path.join(this.mnt, `fio-${this.rounds % 2}.dat`);
      // Asynchronously: this process holds the proxy the device's I/O goes through, so a
      // synchronous call into the filesystem would wait on itself.
      await fs.promises.rm(file, { force: true });
      const fio = startFio(file, { size: ROUND_BYTES, timeoutMs: ROUND_LIMIT_MS });
      this.current = fio;
      let last = 0;
      let seen = 0;
      const watch = setInterval(() => {
        for (; seen < fio.progress.length; seen++) {
          const p = fio.progress[seen] as { t: number; written: number; read: number };
          if (p.written + p.read > last) {
            last = p.written + p.read;
            this.moved.push(p.t);
          }
        }
      }, 500);
      const out: FioOutcome = await fio.done;
      clearInterval(watch);
      this.moved.push(Date.now());
      this.rounds++;
      this.written += out.written;
      this.verified += out.verified;
      const bad = out.timedOut ? `hung (no end within ${ROUND_LIMIT_MS / 60000} min)`
        : out.code !== 0 || out.error !== 0 ? `exit ${out.code}, error ${out.error}: ${out.stderr.trim().split('\n').slice(-3).join(' | ')}`
          : out.verified !== ROUND_BYTES ? `verified ${out.verified} of ${ROUND_BYTES} bytes` : '';
      this.log(`fio round ${this.rounds}: ${mib(out.written)} written, ${mib(out.verified)} verified in ${(out.ms / 1000).toFixed(0)} s${bad ? `: FAILED, ${bad}` : ''}`);
      if (bad) {
        this.failed = true;
        this.errors.push(`fio round ${this.rounds} ${bad}`);
      }
    }
  }
}

/** Runs one seeded chaos schedule on a device of its own; cleans up whatever happens. */
export async function runChaos(o: ChaosOptions): Promise<ChaosSummary> {
  const t0 = Date.now();
  const stamp = (): string => `+${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s`;
  const log = (s: string): void => (o.log ?? ((l) => process.stdout.write(`${l}\n`)))(`${stamp()}  ${s}`);
  const rand = prng(o.seed);
  const between = (lo: number, hi: number): number => lo + rand() * (hi - lo);
  const env = new FaultEnv(`chaos seed ${o.seed}`);
  const errors: string[] = [];
  const faults: Record<FaultKind, number> = { 'store-kill': 0, blackhole: 0, slow: 0, 'daemon-kill': 0 };
  const active = new Set<FaultKind>();
  const activeLog: Array<{ from: number; to: number; kind: FaultKind }> = [];
  let overlapping = 0;
  let maxAtOnce = 0;
  let recoverAttempts = 0;
  const mark = markKernelLog(`chaos seed ${o.seed}`);
  let fsck = 'not run';
  let kernelLog = 'not checked';
  let rounds: FioRounds | undefined;
  try {
    const store: Store = await env.store(STORE_SIZE);
    const proxy = await FaultProxy.start({ port: store.port });
    env.defer('close the proxy', () => proxy.close());
    let dev = await addDevice(proxy.port, ['--timeout', String(DEVICE_TIMEOUT_S)]);
    let daemonPid = dev.pid;
    /** The slow store's delay while it is on. */
    let slowMs: number | null = null;
    const mnt = await env.mkfsMount(dev.device);
    log(`seed ${o.seed}: ext4 on ${dev.device} (store ${STORE_SIZE} behind a fault proxy, --timeout ${DEVICE_TIMEOUT_S}); fio rounds of ${mib(ROUND_BYTES)} written then verified (crc32c); faults for ${(o.faultMs / 1000).toFixed(0)} s`);
    const fio = new FioRounds(mnt, log);
    rounds = fio;

    /** After each fault: fio still running (or between clean rounds), nothing failed, the pieces alive. */
    const check = (after: string): void => {
      for (const e of fio.errors.splice(0)) errors.push(`${e} (after ${after})`);
      if (!active.has('store-kill') && !store.alive) errors.push(`the store died by itself (after ${after}):\n${store.log()}`);
      if (!active.has('daemon-kill') && !pidAlive(daemonPid)) errors.push(`the daemon (pid ${daemonPid}) died by itself (after ${after})`);
    };

    const inject = async (kind: FaultKind): Promise<string> => {
      switch (kind) {
        case 'store-kill': {
          const downMs = between(0, 15_000);
          await store.kill9();
          log(`store killed (-9); restart in ${(downMs / 1000).toFixed(1)} s`);
          await sleep(downMs);
          await store.restart();
          return 'store restarted';
        }
        case 'blackhole': {
          const ms = between(1000, 20_000);
          proxy.blackhole();
          log(`network black hole for ${(ms / 1000).toFixed(1)} s`);
          await sleep(ms);
          // A slow store that began before the hole is still slow after it.
          if (slowMs !== null) proxy.delay(slowMs, true);
          else proxy.forward();
          return 'network back';
        }
        case 'slow': {
          const delay = Math.round(between(0, 2000));
          const ms = between(5000, 30_000);
          slowMs = delay;
          proxy.delay(delay, true);
          log(`store slowed: replies delayed ${delay} ms, for ${(ms / 1000).toFixed(1)} s`);
          await sleep(ms);
          slowMs = null;
          // A black hole that began meanwhile owns the proxy's mode: it lifts it itself.
          if (proxy.currentMode === 'delay') proxy.forward();
          return 'store at full speed';
        }
        case 'daemon-kill': {
          const waitMs = between(0, 5000);
          process.kill(daemonPid, 'SIGKILL');
          log(`daemon (pid ${daemonPid}) killed (-9); recover in ${(waitMs / 1000).toFixed(1)} s`);
          await waitFor('the daemon to die', () => !pidAlive(daemonPid), 30_000, 20);
          await sleep(waitMs);
          // recover takes the device at once, whether or not the store is reachable (the
          // queues connect in the background, as they reconnect, within the device's
          // fail-after); should it fail, it is tried again, as an operator or systemd would.
          for (let attempt = 1; ; attempt++) {
            recoverAttempts++;
            const r = await cli(['recover', String(dev.id), '--json'], { timeoutMs: 600_000 });
            if (r.code === 0) {
              daemonPid = (JSON.parse(r.stdout.trim().split('\n').pop() as string) as { pid: number }).pid;
              dev = { ...dev, pid: daemonPid };
              return `recovered (new daemon pid ${daemonPid}${attempt > 1 ? `, attempt ${attempt}` : ''})`;
            }
            log(`recover attempt ${attempt} failed: ${r.stderr.trim().split('\n').pop() ?? ''}`);
            if (attempt >= RECOVER_ATTEMPTS) throw new Error(`recover failed ${attempt} times; the last: ${r.stderr.trim()}`);
            await sleep(1000);
          }
        }
      }
    };

    const running = new Set<Promise<void>>();
    const faultEnd = Date.now() + o.faultMs;
    while (Date.now() < faultEnd && errors.length === 0) {
      await sleep(between(0, 15_000));
      if (Date.now() >= faultEnd) break;
      // One fault of a kind at a time; the black hole and the slow store share the proxy.
      const free = FAULT_KINDS.filter((k) => !active.has(k) && !(k === 'slow' && active.has('blackhole')));
      if (free.length === 0) continue;
      const kind = free[Math.floor(rand() * free.length)] as FaultKind;
      if (active.size > 0) overlapping++;
      active.add(kind);
      maxAtOnce = Math.max(maxAtOnce, active.size);
      faults[kind]++;
      const from = Date.now();
      const p = inject(kind).then((what) => {
        active.delete(kind);
        activeLog.push({ from, to: Date.now(), kind });
        log(`${what}; fio ${fio.running ? 'running' : 'between rounds'}, ${fio.rounds} rounds done`);
        check(kind);
      }, (err: unknown) => {
        active.delete(kind);
        errors.push(`${kind}: ${(err as Error).message}`);
      }).finally(() => running.delete(p));
      running.add(p);
    }
    await Promise.all([...running]);
    log(`faults over (${Object.entries(faults).map(([k, n]) => `${k} ${n}`).join(', ')}); the last round finishes`);
    fio.stop();
    await fio.done;
    check('the last round');
    if (!daemonSaid(dev.id, /device live|reconnected to the store/)) errors.push('the daemon never logged a reconnect');
    const live = (await listDevices()).find((d) => d.id === dev.id);
    if (live?.state !== 'live') errors.push(`device ${dev.id} is ${live?.state ?? 'gone'} at the end`);
    if (!mounted(mnt)?.rw) errors.push('the filesystem is no longer mounted read-write');
    if (errors.length === 0) {
      const r = await umountDelFsck(mnt, dev.id, store.image);
      fsck = `clean (e2fsck -fn exit ${r.code}: ${r.stdout.trim().split('\n').pop() ?? ''})`;
    }
    try {
      await assertKernelLogClean(mark);
      kernelLog = 'quiet';
    } catch (err) {
      kernelLog = (err as Error).message;
      errors.push(`kernel log: ${kernelLog}`);
    }
    const end = Date.now();
    const pause = fio.longestPause(end);
    const during = activeLog.filter((a) => a.from < pause.from + pause.ms && a.to > pause.from).map((a) => a.kind);
    return {
      seed: o.seed, faultMs: o.faultMs, totalMs: end - t0, faults, overlapping, maxAtOnce, rounds: fio.rounds,
      bytesWritten: fio.written, bytesVerified: fio.verified, longestPauseMs: pause.ms,
      longestPauseDuring: during.length > 0 ? [...new Set(during)].join(' + ') : 'no fault', recoverAttempts, errors, fsck, kernelLog,
    };
  } finally {
    rounds?.stop();
    await env.cleanup();
  }
}

export function summaryText(s: ChaosSummary): string {
  return [
    `chaos soak, seed ${s.seed}: ${(s.faultMs / 60000).toFixed(1)} min of faults, ${(s.totalMs / 60000).toFixed(1)} min in all`,
    `  faults:         ${FAULT_KINDS.map((k) => `${k} ${s.faults[k]}`).join(', ')} (${FAULT_KINDS.reduce((n, k) => n + s.faults[k], 0)} in all; ${s.overlapping} began while another was on, up to ${s.maxAtOnce} at once)`,
    `  recover runs:   ${s.recoverAttempts}`,
    `  fio:            ${s.rounds} rounds, ${mib(s.bytesWritten)} written and ${mib(s.bytesVerified)} verified (crc32c)`,
    `  longest pause:  ${(s.longestPauseMs / 1000).toFixed(1)} s without fio progress (during: ${s.longestPauseDuring})`,
    `  errors:         ${s.errors.length}${s.errors.map((e) => `\n    - ${e}`).join('')}`,
    `  fsck:           ${s.fsck}`,
    `  kernel log:     ${s.kernelLog}`,
  ].join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '2' },
      seed: { type: 'string' },
      kernel: { type: 'string' },
    },
  });
  const minutes = Number(values.minutes);
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
  if (!(minutes > 0) || !Number.isInteger(seed)) {
    process.stderr.write('usage: npm run chaos -- [--minutes N] [--seed S] [--kernel 6.12|7|VERSION]\n');
    return 2;
  }
  if (!ublkAvailable() && !inVm()) {
    // Into the test VM, with time for the last round and the checks after the faults.
    const kernel = values.kernel ?? process.env.NETDISK_VM_KERNEL ?? '6.12';
    const timeout = Math.ceil(minutes * 60 + 1200);
    process.stderr.write(`chaos: no ublk here; running in the test VM (kernel ${kernel}, seed ${seed}, ${minutes} min); output comes when it ends\n`);
    const r = spawnSync(vmScript(), ['--kernel', kernel, '--timeout', String(timeout), '--',
      'node', path.join('dist', 'test', 'faults', 'chaos.js'), '--minutes', String(minutes), '--seed', String(seed)],
    { cwd: repoRoot(), stdio: 'inherit' });
    return r.status ?? 1;
  }
  if (!fs.existsSync('/dev/ublk-control')) throw new Error('no /dev/ublk-control on this kernel');
  process.stdout.write(`chaos: kernel ${os.release()}\n`);
  const s = await runChaos({ seed, faultMs: minutes * 60_000 });
  process.stdout.write(`\n${summaryText(s)}\n`);
  return s.errors.length === 0 ? 0 : 1;
}

if (require.main === module) {
  main().then((code) => process.exit(code), (err: unknown) => {
    process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
