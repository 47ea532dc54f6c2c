// Per-device records under /run/netdisk-ublk/<id>.json (the convention ublksrv uses under
// /run/ublksrvd): what `list` shows and what re-attaching a device needs. /run is a tmpfs,
// so records vanish at reboot, like the devices themselves. The stats sockets live there
// too: a device's by its id, a store's (serve) by the address it listens on.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import type { ExportInfo } from '../nbd/client';
import type { FlagSet } from '../ublk';
import type { DeviceConfig } from './config';

export interface DeviceRecord {
  id: number;
  /** The device's settings as the daemon runs it (queues, depth and max I/O as the kernel granted them). */
  config: DeviceConfig;
  /** Bytes exposed by the device. */
  size: number;
  /**
   * The export the device was made from (size, flags, block sizes): a recovering daemon
   * starts from it without the store, and every connection must find the same. Absent in
   * records written before it was kept: recover then asks the store first.
   */
  export?: ExportInfo;
  pid: number;
  created: string;
  logFile?: string;
  /** UBLK_F_* the device runs with, as the kernel granted them at ADD_DEV. */
  flags?: FlagSet;
  /** UBLK_F_* the kernel offers (GET_FEATURES); absent on kernels without GET_FEATURES. */
  kernelFeatures?: FlagSet;
  /** Why the device runs its data path (data-path.ts), as the daemon logged it; absent in older records. */
  dataPathReason?: string;
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

/**
 * serve's stats socket unless --stats-socket names one: serve-ADDRESS.stats.sock, the listen
 * address with anything but letters, digits, dots and dashes as '_'. No two live servers
 * share an address; a name too long for a unix socket (sun_path: 108 bytes) is a hash.
 */
export function serveStatsSocketPath(listen: string): string {
  const name = `serve-${listen.replace(/[^A-Za-z0-9.-]/g, '_')}.stats.sock`;
  const p = path.join(runDir(), name);
  if (Buffer.byteLength(p) < 100) return p;
  return path.join(runDir(), `serve-${createHash('sha256').update(listen).digest('hex').slice(0, 16)}.stats.sock`);
}

/** The stats sockets of every device with a record and of every server, for `stats` without an ID. */
export function statsSocketPaths(): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(runDir());
  } catch {
    // no run directory: nothing runs
  }
  const servers = names.filter((n) => /^serve-.*\.stats\.sock$/.test(n)).sort().map((n) => path.join(runDir(), n));
  return [...recordIds().map(statsSocketPath), ...servers];
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
