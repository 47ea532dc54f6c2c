// Which netdisk-ublk devices exist: the kernel's view (GET_DEV_INFO for each
// /sys/class/ublk-char/ublkcN) joined with our records under /run/netdisk-ublk.
import * as fs from 'fs';
import { UblkCtrl, UblkState, blockDevPath, flagSet, type DevInfo, type FlagSet } from '../ublk';
import { remoteAddress } from './config';
import { dataPathOf, type DataPath } from './data-path';
import { NETDISK_MARK } from './daemon';
import { pidAlive, readRecord, recordIds, type DeviceRecord } from './state';

export interface DeviceView {
  id: number;
  device: string;
  remote: string | null;
  export: string | null;
  size: number | null;
  queues: number | null;
  depth: number | null;
  pid: number | null;
  /** live, quiesced, dead, fail_io; 'gone' when only our record is left. */
  state: string;
  daemonAlive: boolean;
  /** UBLK_F_* the device runs with (the kernel's GET_DEV_INFO, else our record). */
  flags: FlagSet | null;
  /** 'zero copy' when the device has UBLK_F_AUTO_BUF_REG, else 'copy' (data-path.ts); null: flags unknown. */
  dataPath: DataPath | null;
  /** Why (e.g. 'turned off by --zero-copy off'), as the daemon logged it; null: not recorded. */
  dataPathReason: string | null;
  /** UBLK_F_* this kernel offers (GET_FEATURES), else what the record kept. */
  kernelFeatures: FlagSet | null;
}

const STATE_NAMES: Record<number, string> = {
  [UblkState.DEAD]: 'dead', [UblkState.LIVE]: 'live', [UblkState.QUIESCED]: 'quiesced', [UblkState.FAIL_IO]: 'fail_io',
};

export function kernelDeviceIds(): number[] {
  try {
    return fs.readdirSync('/sys/class/ublk-char')
      .flatMap((n) => (/^ublkc\d+$/.test(n) ? [Number(n.slice(5))] : []))
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

export async function devInfo(ctrl: UblkCtrl, id: number): Promise<DevInfo | undefined> {
  try {
    return await ctrl.getDevInfo(id);
  } catch {
    return undefined;
  }
}

/** Our devices: those the kernel has with our mark, plus records whose device is gone. */
export async function inventory(ctrl: UblkCtrl | undefined): Promise<DeviceView[]> {
  const views = new Map<number, DeviceView>();
  if (ctrl) {
    for (const id of kernelDeviceIds()) {
      const info = await devInfo(ctrl, id);
      const rec = readRecord(id);
      if (!info || (info.ublksrvFlags !== NETDISK_MARK && !rec)) continue;
      views.set(id, view(id, info, rec, ctrl.features));
    }
  }
  for (const id of recordIds()) {
    if (views.has(id)) continue;
    views.set(id, view(id, undefined, readRecord(id), ctrl?.features ?? null));
  }
  return [...views.values()].sort((a, b) => a.id - b.id);
}

function view(id: number, info: DevInfo | undefined, rec: DeviceRecord | undefined, features: bigint | null): DeviceView {
  const pid = info && info.ublksrvPid > 0 ? info.ublksrvPid : rec?.pid ?? null;
  const flags = info ? flagSet(info.flags) : rec?.flags ?? null;
  return {
    id,
    device: blockDevPath(id),
    remote: rec ? remoteAddress(rec.config.remote) : null,
    export: rec?.config.remote.exportName ?? null,
    size: rec?.size ?? null,
    queues: info?.nrHwQueues ?? rec?.config.queues ?? null,
    depth: info?.queueDepth ?? rec?.config.depth ?? null,
    pid,
    state: info ? STATE_NAMES[info.state] ?? `state${info.state}` : 'gone',
    daemonAlive: pid !== null && pidAlive(pid),
    flags,
    dataPath: flags ? dataPathOf(BigInt(flags.mask)) : null,
    dataPathReason: rec?.dataPathReason ?? null,
    kernelFeatures: features !== null ? flagSet(features) : rec?.kernelFeatures ?? null,
  };
}
