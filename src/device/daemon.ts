// The device daemon: one ublk device backed by an NBD export. Adds and configures the
// device, runs one worker thread per queue (each with its own connection), starts the
// device, and on SIGTERM/SIGINT stops it, lets in-flight requests finish and deletes it.
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { NbdClient } from '../nbd/client';
import { NbdError } from '../nbd/errors';
import { Logger } from '../log';
import { UblkCtrl, UblkError, blockDevPath, closeCharDev, flagNames, openCharDev } from '../ublk';
import { deviceGeometry, type ExportCaps } from './capabilities';
import type { QueueWorkerCommand, QueueWorkerData, QueueWorkerMessage } from './queue-worker';
import { removeRecord, writeRecord, type DeviceRecord } from './state';

/** Marks our devices in dev_info.ublksrv_flags (opaque to the kernel), so `list` can tell them apart. */
export const NETDISK_MARK = 0x4e44_4b00n; // "NDK\0"

export interface DaemonOptions {
  host: string;
  port: number;
  exportName: string;
  id?: number;
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  /** Request reply timeout (0: none). */
  timeoutMs: number;
  /** How long requests wait for a lost store before failing. */
  failAfterMs: number;
  log: Logger;
  logFile?: string;
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
}

export class DaemonError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'DaemonError';
  }
}

interface QueueWorker {
  worker: Worker;
  exited: Promise<number>;
}

export class DeviceDaemon {
  private ctrl: UblkCtrl | undefined;
  private devId = -1;
  private charFd = -1;
  private workers: QueueWorker[] = [];
  private stopping: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: DaemonOptions) {
    this.log = opts.log;
  }

  /** Brings the device up; resolves once /dev/ublkbN is live. On failure nothing is left behind. */
  async start(): Promise<ReadyInfo> {
    const o = this.opts;
    const remote = `${o.host}:${o.port}`;
    if (!fs.existsSync('/dev/ublk-control')) {
      throw new DaemonError('this kernel has no ublk driver (/dev/ublk-control is missing): load it with "modprobe ublk_drv" (CONFIG_BLK_DEV_UBLK)');
    }
    if (typeof process.getuid === 'function' && process.getuid() !== 0) {
      throw new DaemonError('must run as root: creating ublk devices needs CAP_SYS_ADMIN');
    }
    // Learn the export before creating anything: size and flags decide the device's shape.
    let probe: NbdClient;
    try {
      probe = await NbdClient.connect({ host: o.host, port: o.port, exportName: o.exportName });
    } catch (err) {
      throw new DaemonError(err instanceof NbdError ? err.message : `cannot reach ${remote}: ${(err as Error).message}`);
    }
    const caps: ExportCaps = { ...probe.info };
    await probe.close().catch(() => undefined);
    let queues = o.queues;
    if (queues > 1 && (caps.flags & 0x100) === 0) {
      this.log.warn({ queues }, 'the server does not advertise multi-conn: using one queue and one connection');
      queues = 1;
    }
    const geo = deviceGeometry(caps, o.maxIoBufBytes);
    if (geo.deviceBytes === 0) throw new DaemonError(`export "${o.exportName}" on ${remote} is smaller than one block (${caps.size} bytes)`);
    if (geo.deviceBytes !== caps.size) {
      this.log.warn({ size: caps.size, deviceBytes: geo.deviceBytes }, 'export size is not a whole number of blocks: the tail is not exposed');
    }
    try {
      this.ctrl = await UblkCtrl.open();
      const info = await this.ctrl.addDev({
        id: o.id ?? -1, queues, depth: o.depth, maxIoBufBytes: o.maxIoBufBytes, ublksrvFlags: NETDISK_MARK,
      });
      this.devId = info.devId;
      this.log.info({ dev: info.devId, flags: flagNames(info.flags), queues: info.nrHwQueues, depth: info.queueDepth }, 'ublk device added');
      await this.ctrl.setParams(this.devId, geo.params);
      this.charFd = openCharDev(this.devId);
      const rec: DeviceRecord = {
        id: this.devId, remote, host: o.host, port: o.port, export: o.exportName, size: geo.deviceBytes,
        queues: info.nrHwQueues, depth: info.queueDepth, maxIoBufBytes: info.maxIoBufBytes, pid: process.pid,
        created: new Date().toISOString(), ...(o.logFile ? { logFile: o.logFile } : {}),
      };
      writeRecord(rec);
      for (let qid = 0; qid < info.nrHwQueues; qid++) {
        this.workers.push(this.spawnQueue({
          devId: this.devId, qid, depth: info.queueDepth, maxIoBufBytes: info.maxIoBufBytes, charFd: this.charFd,
          ioctlEncode: this.ctrl.ioctlEncode, host: o.host, port: o.port, exportName: o.exportName, expect: probe.info,
          timeoutMs: o.timeoutMs, failAfterMs: o.failAfterMs,
        }));
      }
      await Promise.all(this.workers.map((w) => waitStarted(w)));
      await this.ctrl.startDev(this.devId);
      this.log.info({ device: blockDevPath(this.devId), size: geo.deviceBytes, remote, export: o.exportName }, 'device live');
      for (const w of this.workers) {
        void w.exited.then((code) => {
          if (!this.stopping) {
            this.log.error({ code }, 'a queue worker exited unexpectedly: stopping the device');
            void this.stop();
          }
        });
      }
      return {
        id: this.devId, device: blockDevPath(this.devId), size: geo.deviceBytes, queues: info.nrHwQueues,
        depth: info.queueDepth, remote, export: o.exportName, pid: process.pid,
      };
    } catch (err) {
      await this.teardown(false);
      if (err instanceof DaemonError) throw err;
      if (err instanceof UblkError) {
        if (err.code === 'UBLK_EXISTS') throw new DaemonError(`ublk device ${o.id} already exists`);
        throw new DaemonError(err.message);
      }
      throw err;
    }
  }

  /** Stops the device (in-flight requests finish), ends the queues and deletes the device. */
  stop(): Promise<void> {
    this.stopping ??= this.teardown(true);
    return this.stopping;
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
    return { worker, exited };
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
