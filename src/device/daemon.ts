// The device daemon: one ublk device backed by an NBD export. Adds and configures the
// device (or re-attaches to one whose daemon died), runs one worker thread per queue, each
// with its own connection, starts the device, and on SIGTERM/SIGINT stops it, lets
// in-flight requests finish and deletes it.
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { NbdClient, type ExportInfo } from '../nbd/client';
import * as N from '../nbd/constants';
import { NbdError } from '../nbd/errors';
import { Logger } from '../log';
import { DetailedError, detailOf } from '../errno';
import { AddonLoadError } from '../native/load';
import {
  UBLK_CONTROL_PATH, UblkCtrl, UblkError, UblkFlag, UblkState, blockDevPath, closeCharDev, flagNames, flagSet, openCharDev, type DevInfo,
} from '../ublk';
import { newQueueCounters, readCounters, type DeviceCounters } from '../stats/device-counters';
import { deviceGeometry, unsupportedConstraints } from './capabilities';
import { remoteAddress, type DeviceConfig } from './config';
import { ZERO_COPY_FLAGS, chooseDataPath, dataPathOf, zeroCopyConflict, type DataPathChoice } from './data-path';
import type { QueueWorkerCommand, QueueWorkerData, QueueWorkerMessage } from './queue-worker';
import { readRecord, removeRecord, writeRecord, type DeviceRecord } from './state';

/** Marks our devices in dev_info.ublksrv_flags (opaque to the kernel), so `list` can tell them apart. */
export const NETDISK_MARK = 0x4e44_4b00n; // "NDK\0"

export interface DaemonOptions {
  config: DeviceConfig;
  /** The device id to claim (add --id) or re-attach (recover). */
  id?: number;
  log: Logger;
  logFile?: string;
  /** A queue's connection to the store was lost, came back or gave up (for systemd's STATUS=). */
  onLinkChange?: (text: string) => void;
}

export interface ReadyInfo {
  id: number;
  device: string;
  size: number;
  queues: number;
  depth: number;
  remote: string;
  export: string;
  pid: number;
  recovered: boolean;
}

/** Why the daemon cannot serve the device, for the user; what caused it stays attached. */
export class DaemonError extends DetailedError {}

interface QueueWorker {
  worker: Worker;
  exited: Promise<number>;
}

// A daemon killed with -9 leaves the device waiting (QUIESCED) instead of failing its I/O;
// `recover` or a restarted daemon picks it up. REISSUE hands requests the dead daemon held
// to the new one: safe here because NBD writes are idempotent.
const RECOVERY_FLAGS = UblkFlag.USER_RECOVERY | UblkFlag.USER_RECOVERY_REISSUE;

export class DeviceDaemon {
  private ctrl: UblkCtrl | undefined;
  private devId = -1;
  private charFd = -1;
  private workers: QueueWorker[] = [];
  /** Each queue's counters, shared with its worker thread (stats/device-counters.ts). */
  private queueCounters: SharedArrayBuffer[] = [];
  private stopping: Promise<void> | undefined;
  private readonly log: Logger;
  /** What the device runs with: the command line's, or the record's when re-attaching. */
  private config: DeviceConfig;
  /** start()'s choice of data path, for the log line that names it. */
  private dataPathChoice: DataPathChoice | undefined;
  private doneResolve!: () => void;
  /** Resolves when the daemon must end on its own (a queue worker died). */
  readonly done: Promise<void>;
  exitCode = 0;

  constructor(private readonly opts: DaemonOptions) {
    this.log = opts.log;
    this.config = opts.config;
    this.done = new Promise((r) => { this.doneResolve = r; });
  }

  /**
   * `add --id N` restarted after its daemon died (systemd's Restart=): when device N is ours
   * and waiting for a daemon, re-attach to it instead of failing with "exists".
   */
  async startOrRecover(): Promise<ReadyInfo> {
    if (this.opts.id !== undefined) {
      await this.preflight();
      const dev = await (this.ctrl as UblkCtrl).getDevInfo(this.opts.id).catch(() => undefined);
      if (dev && dev.ublksrvFlags === NETDISK_MARK && (dev.state === UblkState.QUIESCED || dev.state === UblkState.FAIL_IO)) {
        this.log.info({ dev: this.opts.id }, 'device is waiting for a daemon: recovering it');
        // The settings it was created with, but the metrics address this daemon listens on.
        const recorded = readRecord(this.opts.id)?.config;
        if (recorded) this.config = { ...recorded, metrics: this.config.metrics };
        return this.recover(this.opts.id);
      }
    }
    return this.start();
  }

  /** Creates the device; resolves once /dev/ublkbN is live. On failure nothing is left behind. */
  async start(): Promise<ReadyInfo> {
    const c = this.config;
    await this.preflight();
    const info = await this.probe();
    let queues = c.queues;
    if (queues > 1 && (info.flags & N.TFLAG_CAN_MULTI_CONN) === 0) {
      this.log.warn({ queues }, 'the server does not advertise multi-conn: using one queue and one connection');
      queues = 1;
    }
    const unsupported = unsupportedConstraints(info);
    if (unsupported !== null) throw new DaemonError(`export "${c.remote.exportName}" on ${this.remote}: ${unsupported}`);
    const geo = deviceGeometry(info, c.maxIoBufBytes);
    if (geo.deviceBytes === 0) throw new DaemonError(`export "${c.remote.exportName}" on ${this.remote} is smaller than one block (${info.size} bytes)`);
    if (geo.deviceBytes !== info.size) {
      this.log.warn({ size: info.size, deviceBytes: geo.deviceBytes }, 'export size is not a whole number of blocks: the tail is not exposed');
    }
    const ctrl = this.ctrl as UblkCtrl;
    this.dataPathChoice = chooseDataPath(c, ctrl.features);
    const flags = (ctrl.features === null ? RECOVERY_FLAGS : RECOVERY_FLAGS & ctrl.features)
      | (this.dataPathChoice.path === 'zero copy' ? ZERO_COPY_FLAGS : 0n);
    try {
      const dev = await ctrl.addDev({
        id: this.opts.id ?? -1, queues, depth: c.depth, maxIoBufBytes: c.maxIoBufBytes, flags, ublksrvFlags: NETDISK_MARK,
      });
      this.devId = dev.devId;
      this.log.info({ dev: dev.devId, flags: flagNames(dev.flags), queues: dev.nrHwQueues, depth: dev.queueDepth }, 'ublk device added');
      await ctrl.setParams(this.devId, geo.params);
      await this.runQueues(dev, info, geo.deviceBytes);
      await ctrl.startDev(this.devId);
    } catch (err) {
      await this.teardown(false);
      throw this.describe(err);
    }
    return this.live(geo.deviceBytes, false);
  }

  /**
   * Re-attaches to device `id` whose daemon died (state QUIESCED): a new set of queues
   * fetches its tags and the kernel hands them the waiting and re-issued requests. The
   * store need not be reachable: the export comes from the device's record and the queues
   * connect in the background (queue-worker.ts, `recovering`), so the I/O waits at most
   * fail-after, as during any outage.
   */
  async recover(id: number): Promise<ReadyInfo> {
    await this.preflight();
    const ctrl = this.ctrl as UblkCtrl;
    let dev: DevInfo;
    try {
      dev = await ctrl.getDevInfo(id);
    } catch (err) {
      throw this.describe(err);
    }
    if (dev.ublksrvFlags !== NETDISK_MARK) throw new DaemonError(`ublk device ${id} is not a netdisk-ublk device`);
    if ((dev.flags & UblkFlag.USER_RECOVERY) === 0n) throw new DaemonError(`ublk device ${id} was added without user recovery`);
    if (dev.state === UblkState.LIVE) throw new DaemonError(`ublk device ${id} is live: its daemon (pid ${dev.ublksrvPid}) still serves it`);
    if (dev.state !== UblkState.QUIESCED && dev.state !== UblkState.FAIL_IO) {
      throw new DaemonError(`ublk device ${id} cannot be recovered (state ${dev.state}); delete it with "netdisk-ublk del ${id}"`);
    }
    const info = readRecord(id)?.export ?? await this.probe();
    const params = await ctrl.getParams(id);
    const sectors = Number(params.basic?.devSectors ?? 0n);
    const geo = deviceGeometry(info, dev.maxIoBufBytes);
    if (geo.deviceBytes !== sectors * 512) {
      throw new DaemonError(`the export is ${info.size} bytes but device ${id} is ${sectors * 512}: refusing to attach a different disk`);
    }
    this.devId = id;
    try {
      // The old daemon's fd and ring may still be closing: the kernel answers EBUSY until then.
      for (let i = 0; ; i++) {
        try {
          await ctrl.startUserRecovery(id);
          break;
        } catch (err) {
          if (!(err instanceof UblkError && err.code === 'UBLK_BUSY') || i >= 50) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      await this.runQueues(dev, info, geo.deviceBytes, true);
      await ctrl.endUserRecovery(id);
    } catch (err) {
      // Leave the device waiting for another attempt rather than deleting the user's disk.
      this.devId = -1;
      await this.teardown(false);
      throw this.describe(err);
    }
    return this.live(geo.deviceBytes, true);
  }

  /** The device's counters now, all queues summed (stats, metrics). */
  readCounters(): DeviceCounters {
    return readCounters(this.queueCounters);
  }

  /** Stops the device (in-flight requests finish), ends the queues and deletes the device. */
  stop(): Promise<void> {
    this.stopping ??= this.teardown(true);
    return this.stopping;
  }

  private get remote(): string {
    return remoteAddress(this.config.remote);
  }

  private async preflight(): Promise<void> {
    checkHost();
    try {
      this.ctrl = await UblkCtrl.open();
    } catch (err) {
      throw this.describe(err);
    }
  }

  /** Learns the export before anything is created: size and flags decide the device's shape. */
  private async probe(): Promise<ExportInfo> {
    let probe: NbdClient;
    try {
      probe = await NbdClient.connect(this.config.remote);
    } catch (err) {
      const message = err instanceof NbdError ? err.message : `cannot reach ${this.remote}: ${(err as Error).message}`;
      throw new DaemonError(message, detailOf(err));
    }
    const info = probe.info;
    await probe.close().catch(() => undefined);
    return info;
  }

  private async runQueues(dev: DevInfo, info: ExportInfo, deviceBytes: number, recovering = false): Promise<void> {
    const ctrl = this.ctrl as UblkCtrl;
    this.charFd = openCharDev(this.devId);
    // The shape the kernel granted (queues may have been cut to one, see start()).
    this.config = { ...this.config, queues: dev.nrHwQueues, depth: dev.queueDepth, maxIoBufBytes: dev.maxIoBufBytes };
    const old = readRecord(this.devId);
    // What the kernel offers and what this device uses of it: newer kernels offer more
    // (auto buffer registration, batched I/O, ...) and set some flags themselves.
    const flags = flagSet(dev.flags);
    const kernelFeatures = ctrl.features === null ? undefined : flagSet(ctrl.features);
    this.log.info({ dev: this.devId, kernelFeatures: kernelFeatures ?? null, flags }, 'ublk features: the kernel\'s and the device\'s');
    // A device keeps the data path it was added with: a recovering daemon follows its flags.
    const dataPath = dataPathOf(dev.flags);
    const conflict = dataPath === 'zero copy' ? zeroCopyConflict(this.config) : null;
    if (conflict !== null) throw new DaemonError(`ublk device ${this.devId} runs in zero copy, which needs the ring transport on a clear-text connection, not ${conflict}`);
    // A recovering daemon keeps the reason its device was added with.
    const reason = this.dataPathChoice?.reason ?? old?.dataPathReason
      ?? `the device was added ${dataPath === 'zero copy' ? 'with' : 'without'} UBLK_F_AUTO_BUF_REG`;
    this.log.info({ dev: this.devId, dataPath, reason }, `data path: ${dataPath}`);
    const rec: DeviceRecord = {
      id: this.devId, config: this.config, size: deviceBytes, export: info, pid: process.pid, created: old?.created ?? new Date().toISOString(),
      ...(this.opts.logFile ? { logFile: this.opts.logFile } : {}),
      flags, ...(kernelFeatures ? { kernelFeatures } : {}), dataPathReason: reason,
    };
    writeRecord(rec);
    for (let qid = 0; qid < dev.nrHwQueues; qid++) {
      const counters = newQueueCounters();
      this.queueCounters.push(counters);
      this.workers.push(this.spawnQueue({
        devId: this.devId, qid, charFd: this.charFd, ioctlEncode: ctrl.ioctlEncode, expect: info, config: this.config, counters, recovering,
        zeroCopy: dataPath === 'zero copy',
        userCopy: dataPath === 'zero copy' && (dev.flags & UblkFlag.USER_COPY) !== 0n,
      }));
    }
    await Promise.all(this.workers.map((w) => waitStarted(w)));
  }

  private live(deviceBytes: number, recovered: boolean): ReadyInfo {
    const c = this.config;
    this.log.info({ device: blockDevPath(this.devId), size: deviceBytes, remote: this.remote, export: c.remote.exportName, recovered }, 'device live');
    for (const w of this.workers) {
      void w.exited.then((code) => {
        if (!this.stopping) {
          this.log.error({ code }, 'a queue worker exited unexpectedly: stopping the device');
          this.exitCode = 1;
          this.doneResolve();
        }
      });
    }
    return {
      id: this.devId, device: blockDevPath(this.devId), size: deviceBytes, queues: this.workers.length,
      depth: c.depth, remote: this.remote, export: c.remote.exportName, pid: process.pid, recovered,
    };
  }

  private describe(err: unknown): Error {
    if (err instanceof DaemonError) return err;
    if (err instanceof UblkError) {
      const detail = detailOf(err);
      if (err.code === 'UBLK_EXISTS') return new DaemonError(`ublk device ${this.opts.id} already exists`, detail);
      if (err.code === 'UBLK_NO_DEVICE') return new DaemonError(`no ublk device ${err.devId ?? this.opts.id}`, detail);
      return new DaemonError(err.message, detail);
    }
    if (err instanceof AddonLoadError) return new DaemonError(err.message, detailOf(err));
    return err as Error;
  }

  private async teardown(started: boolean): Promise<void> {
    const ctrl = this.ctrl;
    // Requests that wait for a lost store would hold STOP_DEV up until fail-after.
    for (const w of this.workers) w.worker.postMessage({ type: 'shutdown' } satisfies QueueWorkerCommand);
    if (ctrl && this.devId >= 0) {
      // STOP_DEV removes the disk after its in-flight requests complete, then aborts every
      // fetched tag, which ends each queue worker. Also needed before START: it cancels fetches.
      try {
        await ctrl.stopDev(this.devId);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'STOP_DEV failed');
      }
    }
    await Promise.all(this.workers.map(async (w) => {
      const t = setTimeout(() => void w.worker.terminate(), started ? 30000 : 2000);
      await w.exited;
      clearTimeout(t);
    }));
    this.workers = [];
    if (this.charFd >= 0) {
      closeCharDev(this.charFd);
      this.charFd = -1;
    }
    if (ctrl && this.devId >= 0) {
      try {
        await ctrl.delDev(this.devId);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'DEL_DEV failed');
      }
      removeRecord(this.devId);
      if (started) this.log.info({ dev: this.devId }, 'device deleted');
      this.devId = -1;
    }
  }

  private spawnQueue(data: QueueWorkerData): QueueWorker {
    const worker = new Worker(path.join(__dirname, 'queue-worker.js'), { workerData: data });
    const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
    worker.on('error', (err) => this.log.error({ err, q: data.qid }, 'queue worker crashed'));
    worker.on('message', (m: QueueWorkerMessage) => {
      if (m.type === 'link') this.opts.onLinkChange?.(m.text);
    });
    return { worker, exited };
  }
}

/**
 * Whether this process can create ublk devices at all: the driver is loaded and we are
 * root. Throws a DaemonError that tells the user what to do.
 */
export function checkHost(): void {
  if (!fs.existsSync(UBLK_CONTROL_PATH)) {
    throw new DaemonError(`this kernel has no ublk driver (${UBLK_CONTROL_PATH} is missing): load it with "modprobe ublk_drv" (CONFIG_BLK_DEV_UBLK)`,
      { code: 'UBLK_NO_DRIVER' });
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new DaemonError('must run as root: creating ublk devices needs CAP_SYS_ADMIN');
  }
}

function waitStarted(w: QueueWorker): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: QueueWorkerMessage): void => {
      if (m.type === 'started') {
        w.worker.off('message', onMsg);
        resolve();
      } else if (m.type === 'failed') {
        w.worker.off('message', onMsg);
        reject(new DaemonError(m.message));
      }
    };
    w.worker.on('message', onMsg);
    void w.exited.then((code) => reject(new DaemonError(`queue worker exited (${code}) before starting`)));
  });
}

