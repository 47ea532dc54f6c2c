// Runs the benchmark on this kernel: per store, the devices attached to it (ours, one per
// configuration, and kernel nbd), then every case `runs` times with the devices taking turns,
// so that drift (a neighbour's load, the host's frequency, the store's page cache) hits all.
// With several of ours, only the one measured runs: the others' daemons are parked (stopped)
// meanwhile, as a second ublk daemon beside ours slowed ours by up to 1.5x (issue 15); parked
// rather than detached, so every daemon keeps the JIT warm-up it had.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { packageRoot } from '../native/load';
import type { BenchCase } from './cases';
import { UBLK_CONTROL_PATH, ublkAvailable } from '../ublk';
import { attachNbd, attachUblk, CLIENT_TITLE, type AttachedDevice, type NbdSettings, type UblkSettings, type UblkVariant } from './devices';
import { runFio, type FioOptions } from './fio';
import type { BenchResults, BenchSettings, DeviceInfo, Environment, HostInfo, StoreRun } from './results';
import { startStore, STORE_TITLE, type StoreKind } from './stores';
import { run, runOk, versionOf } from './procs';

export interface RunOptions {
  stores: StoreKind[];
  cases: BenchCase[];
  runs: number;
  fio: FioOptions;
  /** Unrecorded seconds of every case on both devices before the runs (JIT warm-up). */
  warmupSeconds: number;
  sizeBytes: number;
  /** Where `serve` keeps its image. */
  dir: string;
  /** bin/netdisk-ublk.js */
  cli: string;
  /** add's options common to every configuration of ours (queues, depth, max I/O). */
  ublk: UblkSettings;
  /** Our configurations, one device each (at least one). */
  variants: UblkVariant[];
  nbd: NbdSettings;
  /** The store offers TLS with this PSK file and netdisk-ublk connects over nbds://; kernel nbd stays in clear text. */
  tls?: { pskFile: string };
  command: string;
  host?: HostInfo;
  log(msg: string): void;
  /** Called before each measured fio run: where the benchmark is (for a progress line). */
  progress?(p: Progress): void;
}

export interface Progress {
  store: StoreKind;
  caseId: string;
  /** The device's title. */
  client: string;
  run: number;
  runs: number;
  /** Measured fio runs done and in all. */
  done: number;
  total: number;
}

/** What this kernel lacks for the benchmark, or null when it has everything. */
export async function missingPrerequisites(): Promise<string | null> {
  if (!ublkAvailable()) return `this kernel has no ublk (${UBLK_CONTROL_PATH})`;
  if (!fs.existsSync('/sys/block/nbd0') && (await run('modprobe', ['nbd'])).code !== 0) return 'this kernel has no nbd driver';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'bench must run as root (ublk devices, nbd-client)';
  for (const [cmd, args] of [['fio', ['--version']], ['nbd-client', ['--version']], ['nbdkit', ['--version']]] as const) {
    if ((await versionOf(cmd, [...args])) === 'not installed') return `${cmd} is not installed`;
  }
  return null;
}

export async function environment(command: string, host: HostInfo | undefined): Promise<Environment> {
  const cpu = os.cpus()[0]?.model.trim() ?? 'unknown';
  const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  let commit = '';
  try {
    commit = (await runOk('git', ['-C', packageRoot(), 'rev-parse', '--short', 'HEAD'])).trim();
  } catch {
    // not a checkout
  }
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    command,
    kernel: os.release(),
    inVm: process.env.NETDISK_IN_VM === '1',
    cpu,
    cpus: os.cpus().length,
    versions: {
      'netdisk-ublk': `${pkg.version}${commit ? ` (${commit})` : ''}`,
      node: process.version,
      fio: await versionOf('fio', ['--version']),
      'nbd-client': (await versionOf('nbd-client', ['--version'])).replace(/^.*nbd /, ''),
      nbdkit: (await versionOf('nbdkit', ['--version'])).replace(/^nbdkit /, ''),
    },
    load: { start: os.loadavg(), end: [] },
    ...(host ? { host } : {}),
  };
}

async function prefill(dev: AttachedDevice, o: RunOptions): Promise<void> {
  // Every block written once, so reads hit data rather than holes (a hole is cheaper to
  // read from both stores).
  await runOk('fio', ['--name=prefill', `--filename=${dev.path}`, '--ioengine=libaio', '--direct=1', '--rw=write',
    '--bs=1M', '--iodepth=8', `--size=${o.sizeBytes}`]);
}

export async function runBench(o: RunOptions): Promise<BenchResults> {
  const env = await environment(o.command, o.host);
  const settings: BenchSettings = {
    cases: o.cases.map((c) => c.id),
    runs: o.runs,
    warmupSeconds: o.warmupSeconds,
    seconds: o.fio.seconds,
    rampSeconds: o.fio.rampSeconds,
    sizeBytes: o.sizeBytes,
    ...o.ublk,
    variants: o.variants,
    ...(o.tls ? { tls: 'psk' as const } : {}),
    nbdConnections: o.nbd.connections,
    nbdBlockSize: o.nbd.blockSize,
  };
  const stores: StoreRun[] = [];
  const total = o.stores.length * o.runs * o.cases.length * (o.variants.length + 1);
  let done = 0;
  for (const kind of o.stores) {
    o.log(`store ${STORE_TITLE[kind]}: starting`);
    const store = await startStore(kind, { sizeBytes: o.sizeBytes, dir: o.dir, cli: o.cli, ...(o.tls ? { tls: o.tls } : {}) });
    const devs: AttachedDevice[] = [];
    try {
      for (const v of o.variants) {
        // The one running daemon is the one attaching (and, first, filling the store).
        for (const d of devs) d.park?.();
        const dev = await attachUblk(o.cli, store.host, store.port, { key: v.key, settings: { ...o.ublk, ...v.settings } }, o.tls);
        devs.push(dev);
        if (devs.length === 1) {
          o.log(`  ${dev.path} attached; filling the store`);
          await prefill(dev, o);
        } else {
          o.log(`  ${dev.path} attached`);
        }
      }
      const nbd = await attachNbd(store.host, store.port, o.nbd);
      devs.push(nbd);
      o.log(`  ${nbd.path} attached`);
      const parking = o.variants.length > 1;
      // Only the device measured has a daemon running (kernel nbd has none of ours).
      const measure = async <T>(d: AttachedDevice, f: () => Promise<T>): Promise<T> => {
        if (parking) {
          for (const other of devs) if (other !== d) other.park?.();
          d.resume?.();
        }
        return f();
      };
      if (o.warmupSeconds > 0) {
        // The daemon's JavaScript runs interpreted until V8 has compiled its hot paths;
        // under an emulated CPU that takes tens of seconds, so no run may start cold.
        const per = Math.max(1, Math.round(o.warmupSeconds / o.cases.length));
        o.log(`  warming up: ${per} s of every case on every device`);
        for (const c of o.cases) {
          for (const d of devs) await measure(d, () => runFio(d.path, c, { seconds: per, rampSeconds: 0 }));
        }
      }
      const runRec: StoreRun = { store: kind, command: store.command, devices: {}, samples: {} };
      for (const d of devs) runRec.devices[d.key] = deviceInfo(d, o.variants);
      const keyWidth = Math.max(...devs.map((d) => d.key.length));
      let turn = 0;
      for (let r = 0; r < o.runs; r++) {
        for (const c of o.cases) {
          // Each case starts with the next device: every device goes first, and last, as often.
          const order = devs.map((_, i) => devs[(i + turn) % devs.length] as AttachedDevice);
          turn++;
          for (const d of order) {
            o.progress?.({ store: kind, caseId: c.id, client: (runRec.devices[d.key] as DeviceInfo).title, run: r + 1, runs: o.runs, done: done++, total });
            const s = await measure(d, () => runFio(d.path, c, o.fio));
            const per = (runRec.samples[c.id] ??= {});
            (per[d.key] ??= []).push(s);
            o.log(`  run ${r + 1}/${o.runs} ${c.id.padEnd(17)} ${d.key.padEnd(keyWidth)} ` +
              (c.depth === 1 ? `p50 ${s.p50.toFixed(0)} us, ` : '') +
              (c.blockBytes >= 65536 ? `${s.mbps.toFixed(1)} MB/s` : `${Math.round(s.iops)} IOPS`));
          }
        }
      }
      stores.push(runRec);
    } finally {
      for (const d of devs) {
        await d.detach().catch((err: unknown) => o.log(`  detaching ${d.path}: ${(err as Error).message}`));
      }
      await store.stop();
    }
  }
  env.load.end = os.loadavg();
  return { env, settings, stores };
}

/** What the results keep of a device; with several of ours, each is named by transport and data path. */
function deviceInfo(d: AttachedDevice, variants: UblkVariant[]): DeviceInfo {
  const v = variants.find((x) => x.key === d.key);
  let title = CLIENT_TITLE[d.kind];
  if (d.kind === 'ublk' && variants.length > 1) {
    title += ` ${d.transport ?? '?'}, ${d.dataPath ?? '?'}${v?.settings.zeroCopy === 'off' ? ' (--zero-copy off)' : ''}`;
  }
  return {
    kind: d.kind, title, command: d.command, path: d.path, settings: d.settings,
    ...(d.dataPath ? { dataPath: d.dataPath } : {}),
    ...(d.transport ? { transport: d.transport } : {}),
    ...(v?.settings.zeroCopy ? { zeroCopy: v.settings.zeroCopy } : {}),
  };
}
