// Which data path a device runs: 'copy' (the kernel copies each request's data into and
// out of the queue's tag buffers) or 'zero copy' (UBLK_F_AUTO_BUF_REG: the queue's ring
// sends and receives the request's own pages, addon/nbd-ring.h). Zero copy needs the ring
// transport on a clear-text connection: only a socket on the queue's own ring reaches the
// registered pages, and TLS keeps the stream transport, which reads the tag buffers.
// `--zero-copy off` keeps copy mode where zero copy would run, so that one kernel can
// measure both.
import type { DataTransport, DeviceConfig } from './config';
import { UblkFlag, zeroCopySupport } from '../ublk';

export type DataPath = 'copy' | 'zero copy';

export const ZERO_COPY_OFF_REASON = 'turned off by --zero-copy off';

/**
 * The flags of a zero-copy device: AUTO_BUF_REG makes each request's pages a fixed buffer
 * of the queue's ring; USER_COPY beside it lets the ring receive many small READ replies at
 * once into a staging buffer and pwrite their payloads into the requests' pages, where a
 * payload received in place costs a receive per reply (addon/nbd-ring.h).
 */
export const ZERO_COPY_FLAGS = UblkFlag.AUTO_BUF_REG | UblkFlag.USER_COPY;

export interface DataPathChoice {
  path: DataPath;
  /** Why, for the log line that names the path. */
  reason: string;
}

/** The data path a new device takes: zero copy wherever the config and the kernel allow it. */
export function chooseDataPath(config: DeviceConfig, features: bigint | null): DataPathChoice {
  const conflict = zeroCopyConflict(config);
  if (conflict !== null) return { path: 'copy', reason: conflict };
  // Records written before the setting existed have none: auto.
  if (config.zeroCopy === 'off') return { path: 'copy', reason: ZERO_COPY_OFF_REASON };
  const s = zeroCopySupport(features);
  if (!s.ok) return { path: 'copy', reason: s.reason };
  return { path: 'zero copy', reason: 'UBLK_F_AUTO_BUF_REG and io_uring send/receive from registered buffers' };
}

/** Whether a connection on this transport can reach the registered pages (TLS aside). */
export function transportCanZeroCopy(t: DataTransport): boolean {
  return t === 'ring';
}

/** Why a device cannot run in zero copy with this config; null: it can. */
export function zeroCopyConflict(config: DeviceConfig): string | null {
  if (!transportCanZeroCopy(config.transport ?? 'stream')) return `the ${config.transport ?? 'stream'} transport`;
  if (config.remote.tls) return 'TLS keeps the stream transport';
  return null;
}

/** The data path of a device added with these UBLK_F_* flags. */
export function dataPathOf(flags: bigint): DataPath {
  return (flags & UblkFlag.AUTO_BUF_REG) !== 0n ? 'zero copy' : 'copy';
}
