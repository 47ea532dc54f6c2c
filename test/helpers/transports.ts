// The NBD client's transports, for tests that run the same scenarios over each.
import type { TransportFactory } from '../../src/nbd/transport';
import { zeroQueueRing } from './zero-ring';

export interface TransportCase {
  name: 'stream' | 'ring';
  /** ConnectOptions.makeTransport: undefined for the default (stream). */
  make: TransportFactory | undefined;
}

export const TRANSPORTS: readonly TransportCase[] = [
  { name: 'stream', make: undefined },
  // Room for the most requests any test keeps in flight (256).
  { name: 'ring', make: zeroQueueRing(512) },
];

/**
 * Extra `add` arguments for the kernel tests: NETDISK_TEST_TRANSPORT=ring runs every device
 * they add over the ring transport (unset: add's default).
 */
export function addTransportArgs(): string[] {
  const t = process.env.NETDISK_TEST_TRANSPORT;
  if (t === undefined || t === '') return [];
  if (!TRANSPORTS.some((c) => c.name === t)) throw new Error(`NETDISK_TEST_TRANSPORT: no transport "${t}"`);
  return ['--transport', t];
}
