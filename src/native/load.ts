// The one place native addons are loaded (build/Release/<name>.node in the package). Each
// addon's contract is the declaration beside this file; commands load what they need at
// start-up, so a missing or broken build is one clear error there, never a throw from a
// socket or queue handler later. Works in worker threads too: the addons are
// context-aware and each thread gets its own instance.
import * as fs from 'fs';
import * as path from 'path';
import type { FileOpsNative } from './fileops.d';
import type { SdNotifyNative } from './sdnotify.d';
import type { UblkNative } from './ublk.d';

/** How the addons report a failed system call (addon/errors.h). */
export interface NativeErrnoError extends Error {
  /** Positive errno, e.g. 28 for ENOSPC. */
  errno: number;
  /** errno name, e.g. 'ENOSPC' (src/errno.ts names them the same way). */
  code: string;
  /** What failed: 'io_uring_setup', 'open /dev/ublk-control', 'mmap /dev/ublkc', ... */
  syscall: string;
}

export function isNativeErrnoError(err: unknown, syscall?: string): err is NativeErrnoError {
  const e = err as Partial<NativeErrnoError> | null;
  return err instanceof Error && typeof e?.errno === 'number' && typeof e.code === 'string'
    && typeof e.syscall === 'string' && (syscall === undefined || e.syscall === syscall);
}

/** A build/Release addon that is missing or does not load. */
export class AddonLoadError extends Error {
  readonly code = 'EADDON';
  constructor(readonly addon: string, readonly file: string, cause: unknown) {
    super(`cannot load the ${addon} addon (${file}): ${firstLine(cause)}; run "npm run build:addon"`, { cause });
    this.name = 'AddonLoadError';
  }
}

let root: string | undefined;

/** The installed package: the nearest directory above this file whose package.json is ours. */
export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: unknown }).name === 'netdisk-ublk') {
          root = dir;
          return dir;
        }
      } catch {
        // unreadable or not JSON: not ours, keep walking up
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`netdisk-ublk: package root not found above ${__dirname}`);
    dir = up;
  }
}

const loaded = new Map<string, unknown>();

function loadAddon<T>(name: string): T {
  let addon = loaded.get(name) as T | undefined;
  if (addon === undefined) {
    const file = path.join(packageRoot(), 'build', 'Release', `${name}.node`);
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      addon = require(file) as T;
    } catch (err) {
      throw new AddonLoadError(name, file, err);
    }
    loaded.set(name, addon);
  }
  return addon;
}

/** The ublk addon: control commands and queues (src/ublk). */
export function loadUblk(): UblkNative {
  return loadAddon<UblkNative>('ublk');
}

/** The fileops addon: a file's io_uring and pool fallocate (src/server). */
export function loadFileOps(): FileOpsNative {
  return loadAddon<FileOpsNative>('fileops');
}

/** The sdnotify addon: one datagram to systemd's notification socket (src/systemd.ts). */
export function loadSdNotify(): SdNotifyNative {
  return loadAddon<SdNotifyNative>('sdnotify');
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}

export type { FileOpsNative, NativeFileRing } from './fileops.d';
export type { SdNotifyNative } from './sdnotify.d';
export type { NativeQueue, NativeQueueConstructor, NativeQueueOptions, UblkNative } from './ublk.d';
