// Memory for read replies (header and data in one buffer, which the store reads into and
// the socket sends from).
//
// Small replies are cut from shared slabs: Buffer.allocUnsafe pools only sizes under
// 4 KiB, so each 4 KiB read would get an ArrayBuffer of its own (5 % of the server's CPU
// at QD32 in a profile). A slab is freed with its last reply.
//
// Large replies are reused: a fresh 1 MiB buffer is fresh pages, and faulting in and
// zeroing 256 of them cost about as much as the read itself. A buffer comes back once
// the socket has taken its bytes (the write callback), and is kept for the next reply
// of the same size, up to a bound.
const SLAB_BYTES = 256 * 1024;
const SLAB_MAX_PIECE = 64 * 1024;
const POOL_MAX_BYTES = 64 * 1024 * 1024;

let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
let slabUsed = 0;
const pool = new Map<number, Buffer[]>();
let pooledBytes = 0;

/** A buffer of n bytes; give it back with releaseReplyBuffer once nothing reads it. */
export function takeReplyBuffer(n: number): Buffer {
  if (n <= SLAB_MAX_PIECE) {
    if (slabUsed + n > SLAB_BYTES) {
      slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
      slabUsed = 0;
    }
    const b = slab.subarray(slabUsed, slabUsed + n);
    slabUsed = (slabUsed + n + 7) & ~7; // the next piece 8-byte aligned
    return b;
  }
  const b = pool.get(n)?.pop();
  if (b !== undefined) {
    pooledBytes -= n;
    return b;
  }
  return Buffer.allocUnsafeSlow(n);
}

/** Returns a large buffer for reuse (small ones go with their slab). */
export function releaseReplyBuffer(b: Buffer): void {
  if (b.length <= SLAB_MAX_PIECE || pooledBytes + b.length > POOL_MAX_BYTES) return;
  let list = pool.get(b.length);
  if (list === undefined) {
    list = [];
    pool.set(b.length, list);
  }
  list.push(b);
  pooledBytes += b.length;
}

export const isPooledSize = (n: number): boolean => n > SLAB_MAX_PIECE;
