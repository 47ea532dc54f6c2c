// The two block devices under test, attached to the same store: netdisk-ublk's /dev/ublkbN
// (through the CLI, as a user would) and the kernel nbd driver's /dev/nbdN (through
// nbd-client). Both get the `none` scheduler, so neither is measured through a different
// elevator. A run may measure several configurations of ours (transports, zero copy), one
// device each; between its turns a device's daemon can be parked (stopped), so that only
// one ublk daemon runs while fio measures.
import * as fs from 'fs';
import * as path from 'path';
import { run, runOk, sleep } from './procs';
import { DEVICE_DEFAULTS, type DeviceSettings } from '../device/config';

export type ClientKind = 'ublk' | 'nbd';

export const CLIENT_TITLE: Record<ClientKind, string> = {
  ublk: 'netdisk-ublk',
  nbd: 'kernel nbd',
};

/** What the block layer says about a device: the settings that shape a comparison. */
export interface QueueSettings {
  logicalBlock: number;
  maxSectorsKb: number;
  nrRequests: number;
  hwQueues: number;
  scheduler: string;
  writeCache: string;
}

export interface AttachedDevice {
  kind: ClientKind;
  /** Its key in the results (UblkVariant.key, or 'nbd'). */
  key: string;
  path: string;
  settings: QueueSettings;
  /** netdisk-ublk's data path (`list --json`'s dataPath). */
  dataPath?: string;
  /** How it was attached, for the report. */
  command: string;
  /** netdisk-ublk's transport (add's default when not given). */
  transport?: DeviceSettings['transport'];
  /** Stops its daemon (SIGSTOP) until resume(): it takes no CPU while another device is measured. */
  park?(): void;
  resume?(): void;
  detach(): Promise<void>;
}

/** Options for `netdisk-ublk add`; unset ones take add's defaults. */
export type UblkSettings = Partial<Pick<DeviceSettings, 'queues' | 'depth' | 'maxIoBufBytes' | 'transport' | 'zeroCopy'>>;

/** One configuration of netdisk-ublk a run measures: its key in the results, and add's options. */
export interface UblkVariant {
  key: string;
  settings: UblkSettings;
}

export interface NbdSettings {
  connections: number;
  blockSize: number;
}

/** PSK identity of the benchmark's TLS connections. */
export const BENCH_PSK_USER = 'netdisk-bench';

export async function attachUblk(cli: string, host: string, port: number, v: UblkVariant, tls?: { pskFile: string }): Promise<AttachedDevice> {
  const s = v.settings;
  const remote = tls ? `nbds://${BENCH_PSK_USER}@${host}:${port}/?tls-psk-file=${tls.pskFile}` : `${host}:${port}`;
  const args = ['add', '--remote', remote,
    ...(s.queues !== undefined ? ['--queues', String(s.queues)] : []),
    ...(s.depth !== undefined ? ['--depth', String(s.depth)] : []),
    ...(s.maxIoBufBytes !== undefined ? ['--max-io', String(s.maxIoBufBytes)] : []),
    ...(s.transport !== undefined ? ['--transport', s.transport] : []),
    ...(s.zeroCopy !== undefined ? ['--zero-copy', s.zeroCopy] : []),
    '--json'];
  const out = await runOk(process.execPath, [cli, ...args]);
  const info = JSON.parse(out.trim().split('\n')[0] ?? '{}') as { id: number; device: string };
  const dev = info.device;
  await setScheduler(dev);
  const listed = (JSON.parse(await runOk(process.execPath, [cli, 'list', '--json'])) as Array<{ id: number; dataPath: string | null; pid: number | null }>)
    .find((d) => d.id === info.id);
  const pid = listed?.pid ?? null;
  const signal = (sig: NodeJS.Signals): void => {
    if (pid === null) throw new Error(`${dev}: \`list --json\` names no daemon to ${sig === 'SIGSTOP' ? 'park' : 'resume'}`);
    process.kill(pid, sig);
  };
  return {
    kind: 'ublk',
    key: v.key,
    path: dev,
    transport: s.transport ?? DEVICE_DEFAULTS.transport,
    settings: readSettings(dev),
    ...(listed?.dataPath ? { dataPath: listed.dataPath } : {}),
    command: `netdisk-ublk ${args.join(' ').replace(`${host}:${port}`, `${host}:PORT`).replace(tls?.pskFile ?? '\0', 'PSKFILE')}`,
    park: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    async detach() {
      // A parked daemon could not answer del's stop.
      try {
        if (pid !== null) process.kill(pid, 'SIGCONT');
      } catch {
        // gone already: del says what is left
      }
      await runOk(process.execPath, [cli, 'del', String(info.id)]);
    },
  };
}

export async function attachNbd(host: string, port: number, s: NbdSettings): Promise<AttachedDevice> {
  if (!fs.existsSync('/sys/block/nbd0')) await run('modprobe', ['nbd']);
  const dev = freeNbd();
  const args = [host, String(port), dev, '-N', '', '-b', String(s.blockSize), ...(s.connections > 1 ? ['-C', String(s.connections)] : [])];
  await runOk('nbd-client', args);
  const name = path.basename(dev);
  const deadline = Date.now() + 10000;
  while (Number(readSys(name, 'size') || '0') === 0) {
    if (Date.now() > deadline) throw new Error(`${dev} has no size 10 s after nbd-client connected it`);
    await sleep(50);
  }
  await setScheduler(dev);
  return {
    kind: 'nbd',
    key: 'nbd',
    path: dev,
    settings: readSettings(dev),
    command: `nbd-client ${args.map((a) => (a === '' ? "''" : a)).join(' ').replace(` ${port} `, ' PORT ')}`,
    async detach() {
      await runOk('nbd-client', ['-d', dev]);
    },
  };
}

function freeNbd(): string {
  for (let i = 0; fs.existsSync(`/sys/block/nbd${i}`); i++) {
    // A connected nbd device has a pid file (the netlink owner) or a non-zero size.
    if (!fs.existsSync(`/sys/block/nbd${i}/pid`) && Number(readSys(`nbd${i}`, 'size') || '0') === 0) return `/dev/nbd${i}`;
  }
  throw new Error('no free /dev/nbdN (is the nbd module loaded?)');
}

function readSys(name: string, rel: string): string {
  try {
    return fs.readFileSync(`/sys/block/${name}/${rel}`, 'utf8').trim();
  } catch {
    return '';
  }
}

async function setScheduler(dev: string): Promise<void> {
  const file = `/sys/block/${path.basename(dev)}/queue/scheduler`;
  // udev may still be settling the new disk; retry briefly.
  for (let i = 0; ; i++) {
    try {
      fs.writeFileSync(file, 'none');
      return;
    } catch (err) {
      if (i >= 20) throw new Error(`cannot set the scheduler of ${dev}: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}

export function readSettings(dev: string): QueueSettings {
  const name = path.basename(dev);
  let hwQueues = 0;
  try {
    hwQueues = fs.readdirSync(`/sys/block/${name}/mq`).length;
  } catch {
    // not blk-mq
  }
  const sched = /\[(\S+)\]/.exec(readSys(name, 'queue/scheduler'));
  return {
    logicalBlock: Number(readSys(name, 'queue/logical_block_size')),
    maxSectorsKb: Number(readSys(name, 'queue/max_sectors_kb')),
    nrRequests: Number(readSys(name, 'queue/nr_requests')),
    hwQueues,
    scheduler: sched?.[1] ?? readSys(name, 'queue/scheduler'),
    writeCache: readSys(name, 'queue/write_cache'),
  };
}
