// The ublk control plane: device lifecycle over /dev/ublk-control.
//
// Every command goes through one function (command()), which picks the opcode:
// ioctl-encoded when the kernel reports UBLK_F_CMD_IOCTL_ENCODE through
// GET_FEATURES (Linux >= 6.5), legacy numbers otherwise. Commands added after 6.4
// exist only encoded.

import * as fs from 'fs';
import {
  UBLK_CONTROL_PATH,
  UBLK_DEV_ID_AUTO,
  UBLK_FEATURES_LEN,
  UBLK_QUEUE_ID_NONE,
  UblkFlag,
  ctrlOp,
  ctrlOpEncoded,
  type UblkCmdName,
} from './constants';
import { UblkError, toUblkError } from './errors';
import { loadUblk, type UblkNative } from '../native/load';
import {
  DEV_INFO_SIZE,
  PARAMS_MAX_SIZE,
  addDevInfo,
  decodeDevInfo,
  decodeParams,
  encodeDevInfo,
  encodeParams,
  type DevInfo,
  type UblkParams,
} from './structs';

export interface AddDevOptions {
  /** Device id to claim; omitted or -1 lets the kernel pick one. */
  id?: number;
  /** nr_hw_queues; the kernel clamps it to the number of CPUs. */
  queues: number;
  /** queue_depth, 1 ... 4096. */
  depth: number;
  /** Largest request in bytes; the kernel rounds it down to a page. */
  maxIoBufBytes: number;
  /** UBLK_F_* to ask for. CMD_IOCTL_ENCODE is added when the kernel has it. */
  flags?: bigint;
  /** Stored by the kernel, opaque to it. */
  ublksrvFlags?: bigint;
}

/** True when ublk_drv is loaded (the control node exists). */
export function ublkAvailable(): boolean {
  return fs.existsSync(UBLK_CONTROL_PATH);
}

export class UblkCtrl {
  /** GET_FEATURES' answer; null on kernels without it (< 6.5). */
  readonly features: bigint | null;
  /** Control commands use ioctl-encoded opcodes. */
  readonly ioctlEncode: boolean;
  private readonly native: UblkNative;

  private constructor(native: UblkNative, features: bigint | null) {
    this.native = native;
    this.features = features;
    this.ioctlEncode = features !== null && (features & UblkFlag.CMD_IOCTL_ENCODE) !== 0n;
  }

  /**
   * Probes the kernel with GET_FEATURES. Fails with UBLK_NO_DRIVER when ublk_drv is
   * not loaded and UBLK_PERMISSION without CAP_SYS_ADMIN; any other refusal means an
   * older kernel, which gets legacy opcodes.
   */
  static async open(native: UblkNative = loadUblk()): Promise<UblkCtrl> {
    try {
      return new UblkCtrl(native, await queryFeatures(native));
    } catch (err) {
      const e = toUblkError(err, { command: 'GET_FEATURES' });
      if (e.code === 'UBLK_NO_DRIVER' || e.code === 'UBLK_PERMISSION' || e.code === 'UBLK_SYSTEM') throw e;
      return new UblkCtrl(native, null);
    }
  }

  /** UBLK_F_* the running kernel supports (GET_FEATURES, Linux >= 6.5). */
  async getFeatures(): Promise<bigint> {
    try {
      return await queryFeatures(this.native);
    } catch (err) {
      throw toUblkError(err, { command: 'GET_FEATURES' });
    }
  }

  /** ADD_DEV: creates /dev/ublkcN. Returns what the kernel granted: id, queues, buffer size, flags. */
  async addDev(opts: AddDevOptions): Promise<DevInfo> {
    const id = opts.id === undefined || opts.id === -1 ? UBLK_DEV_ID_AUTO : opts.id;
    let flags = opts.flags ?? 0n;
    if (this.ioctlEncode) flags |= UblkFlag.CMD_IOCTL_ENCODE;
    const info = addDevInfo({
      devId: id,
      nrHwQueues: opts.queues,
      queueDepth: opts.depth,
      maxIoBufBytes: opts.maxIoBufBytes,
      flags,
      ...(opts.ublksrvFlags === undefined ? {} : { ublksrvFlags: opts.ublksrvFlags }),
    });
    const buf = encodeDevInfo(info);
    // The kernel insists that the command's dev_id equals dev_info.dev_id, and
    // that queue_id is 0xffff.
    await this.command('ADD_DEV', id, 0n, buf);
    return decodeDevInfo(buf);
  }

  /** SET_PARAMS: only before START_DEV (EACCES after). BASIC is required. */
  async setParams(devId: number, params: UblkParams): Promise<void> {
    await this.command('SET_PARAMS', devId, 0n, encodeParams(params));
  }

  /** GET_PARAMS, including the read-only DEVT section (disk numbers once started). */
  async getParams(devId: number): Promise<UblkParams> {
    const buf = Buffer.alloc(PARAMS_MAX_SIZE);
    buf.writeUInt32LE(PARAMS_MAX_SIZE, 0);
    await this.command('GET_PARAMS', devId, 0n, buf);
    return decodeParams(buf);
  }

  /**
   * START_DEV: resolves once every tag of every queue has been fetched and
   * /dev/ublkbN exists. The queues must be started first (they may be started
   * while this is pending, on other threads or on this one: it does not block JS).
   */
  async startDev(devId: number, pid: number = process.pid): Promise<void> {
    await this.command('START_DEV', devId, BigInt(pid));
  }

  /** STOP_DEV: removes /dev/ublkbN; every queue then sees its tags aborted. */
  async stopDev(devId: number): Promise<void> {
    await this.command('STOP_DEV', devId, 0n);
  }

  /** DEL_DEV: removes /dev/ublkcN; waits until every queue has closed and the char device fd is closed. */
  async delDev(devId: number): Promise<void> {
    await this.command('DEL_DEV', devId, 0n);
  }

  async getDevInfo(devId: number): Promise<DevInfo> {
    const buf = Buffer.alloc(DEV_INFO_SIZE);
    await this.command('GET_DEV_INFO', devId, 0n, buf);
    return decodeDevInfo(buf);
  }

  /** START_USER_RECOVERY: after the previous server died and released /dev/ublkcN (USER_RECOVERY devices). */
  async startUserRecovery(devId: number): Promise<void> {
    await this.command('START_USER_RECOVERY', devId, 0n);
  }

  /** END_USER_RECOVERY: waits until the new server fetched every tag, then resumes I/O. */
  async endUserRecovery(devId: number, pid: number = process.pid): Promise<void> {
    await this.command('END_USER_RECOVERY', devId, BigInt(pid));
  }

  /** The single path of every control command. */
  private async command(name: UblkCmdName, devId: number, data0: bigint, buf: Buffer | null = null): Promise<number> {
    if (!Number.isInteger(devId) || devId < 0 || devId > UBLK_DEV_ID_AUTO)
      throw new UblkError('UBLK_USAGE', `ublk ${name}: bad device id ${devId}`, { command: name });
    try {
      return await this.native.ctrlCommand(ctrlOp(name, this.ioctlEncode), devId, UBLK_QUEUE_ID_NONE, data0, buf);
    } catch (err) {
      throw toUblkError(err, { command: name, ...(devId === UBLK_DEV_ID_AUTO ? {} : { devId }) });
    }
  }
}

async function queryFeatures(native: UblkNative): Promise<bigint> {
  const buf = Buffer.alloc(UBLK_FEATURES_LEN);
  // No device is involved; the id is not looked at by kernels that know the command.
  await native.ctrlCommand(ctrlOpEncoded('GET_FEATURES'), UBLK_DEV_ID_AUTO, UBLK_QUEUE_ID_NONE, 0n, buf);
  return buf.readBigUInt64LE(0);
}
