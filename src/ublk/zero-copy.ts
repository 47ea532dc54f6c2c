// Whether this kernel can run a queue in zero copy, asked of the kernel itself, never
// read from a version string: UBLK_F_AUTO_BUF_REG in GET_FEATURES (Linux 6.16: each
// request's pages become a fixed buffer of the queue's ring) and a real send and receive
// from registered buffers with plain SEND/RECV (Linux 7.2), which is how those pages
// reach the NBD socket. Either missing: copy mode.
import { errnoName } from '../errno';
import { UblkFlag } from './constants';
import { loadUblk, type UblkNative } from '../native/load';

export type ZeroCopySupport = { ok: true } | { ok: false; reason: string };

/** features: GET_FEATURES' answer (null: a kernel without it). */
export function zeroCopySupport(features: bigint | null, native: UblkNative = loadUblk()): ZeroCopySupport {
  if (features === null || (features & UblkFlag.AUTO_BUF_REG) === 0n) {
    return { ok: false, reason: 'the kernel\'s ublk has no UBLK_F_AUTO_BUF_REG' };
  }
  const errno = native.probeFixedBufferIo();
  if (errno !== 0) return { ok: false, reason: `io_uring cannot send or receive from registered buffers (${errnoName(errno)})` };
  return { ok: true };
}
