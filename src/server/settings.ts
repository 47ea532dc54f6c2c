// The server's settings and their defaults, in one place; `serve` flags override them.
// Together they bound what a client can make the server hold: memory in bytes (the
// connection and server budgets), connections, and how long a handshake may take.
import { MAX_PAYLOAD_BYTES } from '../nbd/constants';

const MiB = 1024 * 1024;

export interface ServerSettings {
  /** Connections served at once; one more is closed as soon as it is accepted. */
  maxConnections: number;
  /** A client that has not reached transmission by then is disconnected. */
  handshakeTimeoutMs: number;
  /** Requests one connection runs against the store at once. */
  maxInFlight: number;
  /**
   * Bytes one connection may hold: write payloads being received or written, read
   * buffers being filled, replies the socket has not taken yet. At the budget the
   * connection stops reading until its replies drain, so a client that does not read its
   * replies stalls only itself. A request larger than the budget runs alone.
   */
  connectionBytes: number;
  /** The same, summed over every connection. */
  serverBytes: number;
  /**
   * What a connection may hold even while the server's budget is spent by others, so a
   * client of small requests goes on while greedy ones wait.
   */
  reserveBytes: number;
}

export const SERVER_DEFAULTS: Readonly<ServerSettings> = Object.freeze({
  // qemu-nbd's --shared is 1 and nbdkit's is unlimited; 64 leaves room for many devices of
  // several queues each while keeping maxConnections x reserveBytes small.
  maxConnections: 64,
  // qemu-nbd's handshake limit.
  handshakeTimeoutMs: 10_000,
  maxInFlight: 256,
  // One request of the largest payload; our device keeps depth x max-io in flight per
  // queue (128 x 512 KiB by default = 64 MiB), and half of it is enough to keep the
  // socket busy.
  connectionBytes: MAX_PAYLOAD_BYTES,
  // 8 connections at their budget; with the reserves and the reply-buffer pool the server
  // stays under 512 MiB of RSS (bench/hostile-load.ts).
  serverBytes: 256 * MiB,
  // A device queue's worth of 4 x 512 KiB requests, or hundreds of 4 KiB ones.
  reserveBytes: 2 * MiB,
});

/** The defaults with the given settings (those not undefined) in their place. */
export function serverSettings(over: Partial<ServerSettings> = {}): ServerSettings {
  const s: ServerSettings = { ...SERVER_DEFAULTS };
  for (const [k, v] of Object.entries(over) as [keyof ServerSettings, number | undefined][]) {
    if (v !== undefined) s[k] = v;
  }
  return s;
}
