// A device's settings, in one type with one table of defaults. The command line is parsed
// into a DeviceConfig once (cli/device-args.ts); the daemon stores it as it is in the
// device record (state.ts) and hands it as it is to each queue worker and its reconnecting
// client; `recover` and `add --id` read it back from the record.
import type { NbdRemote } from '../nbd/client';
import { displayUri } from '../nbd/uri';
import type { MetricsAddress } from '../stats/metrics-server';

export interface DeviceConfig {
  /** The NBD export behind the device. */
  remote: NbdRemote;
  /** ublk queues, each with its own thread and connection where the server allows multi-conn. */
  queues: number;
  /** Requests in flight per queue (the device's queue_depth). */
  depth: number;
  /** Largest request in bytes (the device's max_io_buf_bytes). */
  maxIoBufBytes: number;
  /** A request without a reply this long means the connection is stalled: reconnect and resend (0: never). */
  timeoutMs: number;
  /** Requests wait this long for a lost store before failing with EIO (0: fail at once). */
  failAfterMs: number;
  /**
   * How each queue's connection moves its bytes after the handshake: 'stream' (Node's
   * socket) or 'ring' (the queue's own io_uring, beside its ublk commands:
   * src/device/ring-transport.ts). TLS connections always use
   * the stream. Absent in records written before it existed: the stream.
   */
  transport: DataTransport;
  /**
   * 'auto': zero copy wherever the transport and the kernel allow it (src/device/data-path.ts);
   * 'off': copy mode even there, to compare the two on one kernel. Absent in records written
   * before it existed: auto.
   */
  zeroCopy: ZeroCopyMode;
  /**
   * Where the daemon serves Prometheus metrics (add --metrics), as it bound it; absent:
   * nowhere. Kept in the record so that a recovered daemon serves them at the same place.
   */
  metrics?: MetricsAddress;
}

export type DataTransport = 'stream' | 'ring';
export const DATA_TRANSPORTS: readonly DataTransport[] = ['stream', 'ring'];

export type ZeroCopyMode = 'auto' | 'off';
export const ZERO_COPY_MODES: readonly ZeroCopyMode[] = ['auto', 'off'];

/** Everything but where the store is. */
export type DeviceSettings = Omit<DeviceConfig, 'remote'>;

export const DEVICE_DEFAULTS: Readonly<DeviceSettings> = {
  // One queue: measured, a second one does not pay for its CPU (README, bench/results).
  queues: 1,
  depth: 128,
  maxIoBufBytes: 512 * 1024,
  timeoutMs: 30_000,
  failAfterMs: 180_000,
  // The stream: the ring transport passes every kernel test and leads on large I/O on 7.x
  // (zero copy), but is level with the stream at QD1 and QD32 on both kernels and on 6.12
  // overall (README, benchmark), so the long-proven path stays the default.
  transport: 'stream',
  zeroCopy: 'auto',
};

/** Inclusive bounds of each setting. */
export const DEVICE_LIMITS: Readonly<Record<Exclude<keyof DeviceSettings, 'transport' | 'zeroCopy' | 'metrics'>, { min: number; max: number }>> = {
  queues: { min: 1, max: 64 },
  // UBLK_MAX_QUEUE_DEPTH
  depth: { min: 1, max: 4096 },
  // Whole pages; the addon maps at most 32 MiB per tag.
  maxIoBufBytes: { min: 4096, max: 32 * 1024 * 1024 },
  timeoutMs: { min: 0, max: 86_400_000 },
  failAfterMs: { min: 0, max: 7 * 86_400_000 },
};

/** The store's NBD URI, as logs and `list` show it (it holds no secret: see nbd/uri.ts). */
export function remoteAddress(r: NbdRemote): string {
  return displayUri(r);
}
