// The NBD client's transports, for tests that run the same scenarios over each.
import type { TransportFactory } from '../../src/nbd/transport';
import { ringTransport } from '../../src/device/ring-transport';

export interface TransportCase {
  name: 'stream' | 'ring';
  /** ConnectOptions.makeTransport: undefined for the default (stream). */
  make: TransportFactory | undefined;
}

export const TRANSPORTS: readonly TransportCase[] = [
  { name: 'stream', make: undefined },
  // Room for the most requests any test keeps in flight (256).
  { name: 'ring', make: ringTransport(512) },
];
