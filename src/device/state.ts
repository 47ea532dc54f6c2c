// Per-device records under /run/netdisk-ublk/<id>.json (the convention ublksrv uses under
// /run/ublksrvd): what `list` shows and what re-attaching a device needs. /run is a tmpfs,
// so records vanish at reboot, like the devices themselves.
import * as fs from 'fs';
import * as path from 'path';
import type { FlagSet } from '../ublk';
import type { DeviceConfig } from './config';

export interface DeviceRecord {
  id: number;
  /** The device's settings as the daemon runs it (queues, depth and max I/O as the kernel granted them). */
  config: DeviceConfig;
  /** Bytes exposed by the device. */
  size: number;
  pid: number;
  created: string;
  logFile?: string;
  /** UBLK_F_* the device runs with, as the kernel granted them at ADD_DEV. */
  flags?: FlagSet;
  /** UBLK_F_* the kernel offers (GET_FEATURES); absent on kernels without GET_FEATURES. */
  kernelFeatures?: FlagSet;
}

export function runDir(): string {
  return process.env.NETDISK_RUN_DIR ?? '/run/netdisk-ublk';
}

export function recordPath(id: number): string {
  return path.join(runDir(), `${id}.json`);
}

/** The daemon's stats socket (stats/stats-socket.ts): what `netdisk-ublk stats ID` reads. */
export function statsSocketPath(id: number): string {
  return path.join(runDir(), `${id}.stats.sock`);
}

export function writeRecord(rec: DeviceRecord): void {
  fs.mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const file = recordPath(rec.id);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(rec, null, 2) + '\n', { mode: 0o644 });
  fs.renameSync(tmp, file); // atomic: a reader never sees half a record
}

export function readRecord(id: number): DeviceRecord | undefined {
  try {
    const rec = JSON.parse(fs.readFileSync(recordPath(id), 'utf8')) as Partial<DeviceRecord>;
    // A record without a config is not one this version wrote: nothing in it can be trusted.
    return typeof rec.config === 'object' && rec.config !== null ? rec as DeviceRecord : undefined;
  } catch {
    return undefined;
  }
}

export function removeRecord(id: number): void {
  fs.rmSync(recordPath(id), { force: true });
}

export function recordIds(): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(runDir());
  } catch {
    return [];
  }
  return names.flatMap((n) => (/^\d+\.json$/.test(n) ? [Number(n.slice(0, -5))] : [])).sort((a, b) => a - b);
}

/** Whether a process with this pid exists (signal 0 probes without sending). */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
