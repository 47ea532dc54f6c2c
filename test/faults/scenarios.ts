// One fault scenario, run the same way whatever the block device's client is: our ublk
// device or the kernel's nbd client (with nbd-client's options), on the same store
// (`serve`), with ext4 on the device and fio writing then verifying a file on it while the
// fault happens. Nothing is asserted here: an Observation records what a user would have
// seen (fio's errors, a hang, the filesystem's state, whether the device could be removed,
// what fsck says), for the ktests to assert on and for reliability.ts to tabulate.
import * as fs from 'fs';
import * as path from 'path';
import {
  HOST, cli, kernelLogSince, markKernelLog, ok, pidAlive, run, sleep, waitFor, type RunResult,
} from '../device/helpers';
import { errnoName } from '../../src/errno';
import { FaultProxy } from '../helpers/fault-proxy';
import {
  FAULT_AT, FIO_BYTES, FIO_RATE, FaultEnv, STORE_SIZE, Timeline, addDevice, markDaemonLog, markFioProgress, mib, mounted, startFio,
  type FioOutcome,
} from './helpers';

export type ClientKind = 'ublk' | 'nbd' | 'nbd-persist' | 'nbd-ioctl-persist';

export const CLIENT_TITLES: Record<ClientKind, string> = {
  ublk: 'netdisk-ublk',
  nbd: 'nbd-client',
  'nbd-persist': 'nbd-client -persist',
  'nbd-ioctl-persist': 'nbd-client -nonetlink -persist',
};

export type FaultKind = 'store-restart' | 'blackhole' | 'blackhole-timeout' | 'store-gone' | 'client-kill';

export const FAULT_TITLES: Record<FaultKind, string> = {
  'store-restart': 'store killed (-9), restarted 5 s later',
  blackhole: 'network black hole for 10 s',
  'blackhole-timeout': 'network black hole for 10 s, with a 5 s request timeout (`--timeout 5`, `-timeout 5`)',
  'store-gone': 'store killed (-9) for good (netdisk-ublk with `--fail-after 15`)',
  'client-kill': 'client process killed (-9), then restarted',
};

export interface ScenarioOptions {
  /** Where nbd devices come from: each run takes a fresh /dev/nbdN (a wedged one stays wedged). */
  nbdIndex?: number;
  /** How long fio may go on after the fault has ended before it counts as hung. */
  hangAfterMs?: number;
  /** ublk's --fail-after in the store-gone scenario. */
  ublkFailAfterS?: number;
  log?: (line: string) => void;
}

export interface Observation {
  client: ClientKind;
  fault: FaultKind;
  /** The client's command line options, as run. */
  settings: string;
  applicable: boolean;
  why?: string;
  fio?: FioOutcome;
  fioHung: boolean;
  /** From the start of the fault to fio's end, when fio ended with an error. */
  errorAfterMs?: number;
  /** From the start of the fault until fio made progress again (undefined: it never did). */
  pauseMs?: number;
  /** From the store's kill until it listened again (store-restart). */
  storeDownMs?: number;
  mountAtEnd: 'rw' | 'ro' | 'unmounted';
  fsErrors: string[];
  ioErrors: number;
  kernelNotes: string[];
  umount: string;
  detach: string;
  fsck: string;
  timeline: Timeline;
}


interface Attached {
  dev: string;
  settings: string;
  /** The process a user would see as "the client" (ublk daemon; nbd-client when it stays). */
  pid(): number | undefined;
  /** Restarts the client after its process was killed; false when there is nothing to restart. */
  restart(): Promise<boolean>;
  detach(): Promise<RunResult>;
}

async function attachUblk(port: number, extra: string[]): Promise<Attached> {
  const d = await addDevice(port, extra);
  let pid = d.pid;
  return {
    dev: d.device,
    settings: extra.join(' '),
    pid: () => pid,
    restart: async () => {
      const r = await cli(['recover', String(d.id), '--json'], { timeoutMs: 120_000 });
      if (r.code !== 0) return false;
      pid = (JSON.parse(r.stdout.trim().split('\n').pop() as string) as { pid: number }).pid;
      // The killed daemon's log is what tells why it died: the new one must not replace it.
      const before = path.join(process.env['NETDISK_RUN_DIR'] ?? '/run/netdisk-ublk', `${d.id}.log.1`);
      if (!fs.readFileSync(before, 'utf8').includes('"device live"'))
        throw new Error(`${before} does not hold the killed daemon's log`);
      return true;
    },
    detach: () => cli(['del', String(d.id)], { timeoutMs: 120_000 }),
  };
}

function nbdArgs(kind: ClientKind, timeoutS: number | undefined): string[] {
  const a: string[] = [];
  if (timeoutS !== undefined) a.push('-timeout', String(timeoutS));
  if (kind === 'nbd-persist' || kind === 'nbd-ioctl-persist') a.push('-persist');
  if (kind === 'nbd-ioctl-persist') a.push('-nonetlink');
  return a;
}

/** The nbd-client process still serving dev (ioctl mode keeps one), if any. */
async function nbdClientPid(dev: string): Promise<number | undefined> {
  const r = await run('pgrep', ['-f', `nbd-client .*${dev}( |$)`], { timeoutMs: 10_000 });
  const pids = r.stdout.split('\n').map(Number).filter((p) => p > 0);
  return pids[0];
}

async function attachNbd(env: FaultEnv, kind: ClientKind, port: number, index: number, timeoutS?: number): Promise<Attached> {
  const dev = `/dev/nbd${index}`;
  const extra = nbdArgs(kind, timeoutS);
  const args = [HOST, String(port), dev, '-N', '', ...extra];
  const timeoutArgs = timeoutS === undefined ? '' : `-timeout ${timeoutS}`;
  await ok('nbd-client', args, { timeoutMs: 60_000 });
  env.defer(`disconnect ${dev}`, () => bounded(run('nbd-client', ['-d', dev], { timeoutMs: 60_000 }), 70_000));
  await waitFor(`${dev} to connect`, () => fs.existsSync(`/sys/block/nbd${index}/pid`), 30_000, 50);
  await waitFor(`${dev} to have its size`, () => Number(fs.readFileSync(`/sys/block/nbd${index}/size`, 'utf8')) > 0, 30_000, 50);
  return {
    dev,
    settings: timeoutArgs,
    pid: () => undefined,
    restart: async () => {
      // What an admin would do: run the same command again (it fails if the device is busy).
      const r = await run('nbd-client', args, { timeoutMs: 60_000 });
      return r.code === 0;
    },
    detach: () => run('nbd-client', ['-d', dev], { timeoutMs: 60_000 }),
  };
}

const FS_ERROR = /EXT4-fs (error|warning)|Remounting filesystem read-only|shut ?down|Aborting journal|journal commit I\/O error/i;
const IO_ERROR = /I\/O error|error, dev/;
const NOTE = /nbd\d+: |ublk|block nbd|Buffer I\/O error/;
const ROUTINE = /mounted filesystem|unmounting filesystem|detected capacity change/;

/** Runs one fault scenario with one client and records what happened. */
export async function runScenario(client: ClientKind, fault: FaultKind, o: ScenarioOptions = {}): Promise<Observation> {
  const log = o.log ?? (() => undefined);
  const tl = new Timeline();
  const obs: Observation = {
    client, fault, settings: '', applicable: true, fioHung: false, mountAtEnd: 'unmounted', fsErrors: [],
    ioErrors: 0, kernelNotes: [], umount: '', detach: '', fsck: '', timeline: tl,
  };
  if (fault === 'client-kill' && (client === 'nbd' || client === 'nbd-persist')) {
    obs.applicable = false;
    obs.why = 'nbd-client configures the device over netlink and exits: no client process is left to kill';
    return obs;
  }
  const env = new FaultEnv(`${client} ${fault}`);
  const mark = markKernelLog(`reliability: ${client}, ${fault}`);
  const hangAfterMs = o.hangAfterMs ?? 90_000;
  try {
    const store = await env.store(STORE_SIZE);
    const viaProxy = fault === 'blackhole' || fault === 'blackhole-timeout';
    let proxy: FaultProxy | undefined;
    if (viaProxy) {
      proxy = await FaultProxy.start({ port: store.port });
      const p = proxy;
      env.defer('close the proxy', () => p.close());
    }
    const port = proxy?.port ?? store.port;
    const timeoutS = fault === 'blackhole-timeout' ? 5 : undefined;
    let a: Attached;
    if (client === 'ublk') {
      const extra: string[] = [];
      if (timeoutS !== undefined) extra.push('--timeout', String(timeoutS));
      if (fault === 'store-gone') extra.push('--fail-after', String(o.ublkFailAfterS ?? 15));
      a = await attachUblk(port, extra);
    } else {
      a = await attachNbd(env, client, port, o.nbdIndex ?? 0, timeoutS);
    }
    obs.settings = a.settings;
    const mnt = await env.mkfsMount(a.dev);
    const fio = startFio(path.join(mnt, 'fio.dat'), { size: FIO_BYTES, rate: FIO_RATE, timeoutMs: 3_600_000 });
    tl.mark(`fio started on ext4 on ${a.dev}${a.settings ? ` (${a.settings})` : ''}: write ${mib(FIO_BYTES)}, then verify`, fio.began);
    await fio.written(FAULT_AT);
    const faultAt = Date.now();
    let faultEnd = faultAt;
    switch (fault) {
      case 'store-restart':
        await store.kill9();
        tl.mark('store killed (kill -9)');
        await sleep(5000);
        await store.restart();
        obs.storeDownMs = Date.now() - faultAt;
        tl.mark('store restarted (listening again)');
        break;
      case 'blackhole':
      case 'blackhole-timeout':
        (proxy as FaultProxy).blackhole();
        tl.mark('network black hole');
        await sleep(10_000);
        (proxy as FaultProxy).forward();
        tl.mark('network back');
        break;
      case 'store-gone':
        await store.kill9();
        tl.mark('store killed (kill -9), for good');
        break;
      case 'client-kill': {
        const pid = a.pid() ?? await nbdClientPid(a.dev);
        if (pid === undefined) {
          tl.mark('no client process found to kill');
          break;
        }
        process.kill(pid, 'SIGKILL');
        tl.mark(`client process ${pid} killed (kill -9)`);
        await waitFor('the client to die', () => !pidAlive(pid), 30_000, 20);
        await sleep(3000);
        const restarted = await a.restart();
        tl.mark(restarted ? 'client restarted' : 'client restart failed');
        break;
      }
    }
    faultEnd = Date.now();
    // fio either ends, or counts as hung once it has made no progress for hangAfterMs
    // since the fault ended.
    const value = (i: number): number => (fio.progress[i]?.written ?? 0) + (fio.progress[i]?.read ?? 0);
    const lastChange = (): number => {
      let t = faultEnd;
      for (let i = 1; i < fio.progress.length; i++) if (value(i) !== value(i - 1)) t = Math.max(t, fio.progress[i]?.t ?? 0);
      return t;
    };
    while (!fio.finished) {
      if (Date.now() - lastChange() > hangAfterMs) {
        obs.fioHung = true;
        tl.mark(`fio: no progress for ${Math.round(hangAfterMs / 1000)} s after the fault ended: counted as hung, killed`);
        fio.kill();
        break;
      }
      await sleep(500);
    }
    const out = await Promise.race([fio.done, sleep(10_000).then(() => undefined)]);
    if (out) {
      obs.fio = out;
      tl.mark(`fio ended: exit ${out.code}, error ${out.error}, ${mib(out.written)} written, ${mib(out.verified)} verified`);
      if (out.code !== 0 && !obs.fioHung) obs.errorAfterMs = fio.began + out.ms - faultAt;
    } else {
      tl.mark('fio did not die after SIGKILL (stuck in the kernel)');
    }
    markFioProgress(tl, fio);
    obs.pauseMs = pauseAfter(fio.progress.map((p) => ({ t: p.t, v: p.written + p.read })), faultAt);
    const m = mounted(mnt);
    obs.mountAtEnd = m === undefined ? 'unmounted' : m.rw ? 'rw' : 'ro';
    if (client === 'ublk') {
      const id = Number(a.dev.replace('/dev/ublkb', ''));
      markDaemonLog(tl, id, tl.t0);
    }
    const um = await bounded(run('umount', [mnt], { timeoutMs: 60_000 }), 70_000);
    obs.umount = um === undefined || um.timedOut ? 'hangs (killed after 60 s)' : um.code === 0 ? 'ok' : `fails: ${um.stderr.trim().split('\n')[0] ?? ''}`;
    tl.mark(`umount: ${obs.umount}`);
    if (um?.code !== 0) await bounded(run('umount', ['-l', mnt], { timeoutMs: 30_000 }), 40_000);
    const det = await bounded(a.detach(), 70_000);
    obs.detach = det === undefined || det.timedOut ? 'hangs (killed after 60 s)' : det.code === 0 ? `ok (${(det.ms / 1000).toFixed(1)} s)` : `fails: ${det.stderr.trim().split('\n')[0] ?? ''}`;
    tl.mark(`${client === 'ublk' ? 'del' : 'nbd-client -d'}: ${obs.detach}`);
    await store.stop();
    const fsck = await run('e2fsck', ['-f', '-n', store.image], { timeoutMs: 300_000 });
    obs.fsck = fsck.code === 0 ? 'clean' : `errors (e2fsck exit ${fsck.code})`;
    tl.mark(`e2fsck -fn on the store's image: ${obs.fsck}`);
    const klog = await kernelLogSince(mark);
    obs.fsErrors = klog.filter((l) => FS_ERROR.test(l));
    obs.ioErrors = klog.filter((l) => IO_ERROR.test(l)).length;
    obs.kernelNotes = klog.filter((l) => (NOTE.test(l) || FS_ERROR.test(l)) && !ROUTINE.test(l)).slice(0, 12);
  } catch (err) {
    tl.mark(`harness error: ${(err as Error).message}`);
    obs.why = `harness error: ${(err as Error).message}`;
  } finally {
    await env.cleanup().catch((err: unknown) => log(`cleanup: ${(err as Error).message}`));
  }
  return obs;
}

/** The run's result, or undefined when even its kill did not end it (a process stuck in the kernel). */
async function bounded(p: Promise<RunResult>, ms: number): Promise<RunResult | undefined> {
  return Promise.race([p, sleep(ms).then(() => undefined)]);
}

/** From `from` until the first progress report that shows more done than at `from`. */
function pauseAfter(ps: Array<{ t: number; v: number }>, from: number): number | undefined {
  let before = 0;
  for (const p of ps) if (p.t <= from) before = p.v;
  const next = ps.find((p) => p.t > from && p.v > before);
  return next === undefined ? undefined : next.t - from;
}

/** What the user saw, in a few words, for the README's table. */
export function summary(o: Observation): string {
  if (!o.applicable) return `n/a: ${o.why ?? ''}`;
  if (o.why && !o.fio && !o.fioHung) return o.why;
  const parts: string[] = [];
  const f = o.fio;
  const down = o.storeDownMs === undefined ? '' : ` (store down ${(o.storeDownMs / 1000).toFixed(0)} s)`;
  if (o.fioHung) parts.push(`**hangs**: a request never completes, fio is stuck (unkillable) until \`${o.client === 'ublk' ? 'del' : 'nbd-client -d'}\``);
  else if (f && f.code === 0 && f.verified === FIO_BYTES) parts.push(`no errors: I/O paused ${((o.pauseMs ?? 0) / 1000).toFixed(0)} s${down}, fio verified every block`);
  else if (f) parts.push(`**${errnoName(f.error)}** ${o.errorAfterMs !== undefined ? `${(o.errorAfterMs / 1000).toFixed(0)} s after the fault` : ''}${down}`.trim());
  if (o.fsErrors.some((l) => /read-only|Aborting journal|shut ?down/i.test(l))) parts.push('ext4 journal aborted (read-only)');
  else if (o.fsErrors.length > 0) parts.push('ext4 errors');
  else if (o.mountAtEnd === 'rw') parts.push('ext4 fine');
  if (o.umount !== 'ok') parts.push(o.umount.includes('busy') ? 'umount: busy' : `umount ${o.umount}`);
  if (!o.detach.startsWith('ok')) parts.push(`removing the device ${o.detach}`);
  parts.push(`fsck ${o.fsck}`);
  return parts.join('; ');
}
