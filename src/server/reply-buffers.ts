// Memory for read replies (header and data in one buffer, which the store reads into and
// the socket sends from).
//
// Small replies are cut from slabs: Buffer.allocUnsafe pools only sizes under 4 KiB, so
// each 4 KiB read would get an ArrayBuffer of its own (5 % of the server's CPU at QD32 in
// a profile). A slab is freed with its last reply, so each connection cuts from slabs of
// its own: with slabs shared by all, a client that never reads its replies kept alive every
// slab one of its small replies was cut from, while the budgets counted only the reply
// (one 8 MiB READ to fill the socket, then a zero-length READ a millisecond, beside an
// honest 4 KiB reader: serve at 2.5 GiB of RSS in 12 s). Now what a connection pins is
// what it is charged for, plus the one slab it is cutting from (256 KiB, taken on its
// first small reply).
//
// Large replies are reused: a fresh 1 MiB buffer is fresh pages, and faulting in and
// zeroing 256 of them cost about as much as the read itself. A buffer comes back once
// the socket has taken its bytes (the write callback), and is kept for the next reply
// of the same size, up to a bound.
const SLAB_BYTES = 256 * 1024;
const SLAB_MAX_PIECE = 64 * 1024;
const POOL_MAX_BYTES = 64 * 1024 * 1024;

const pool = new Map<number, Buffer[]>();
let pooledBytes = 0;

/** One connection's reply buffers. */
export class ReplyBuffers {
  private slab: Buffer | null = null;
  private slabUsed = 0;

  /** A buffer of n bytes; give it back with releaseReplyBuffer once nothing reads it. */
  take(n: number): Buffer {
    if (n <= SLAB_MAX_PIECE) {
      if (this.slab === null || this.slabUsed + n > SLAB_BYTES) {
        this.slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
        this.slabUsed = 0;
      }
      const b = this.slab.subarray(this.slabUsed, this.slabUsed + n);
      this.slabUsed = (this.slabUsed + n + 7) & ~7; // the next piece 8-byte aligned
      return b;
    }
    const b = pool.get(n)?.pop();
    if (b !== undefined) {
      pooledBytes -= n;
      return b;
    }
    return Buffer.allocUnsafeSlow(n);
  }
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
