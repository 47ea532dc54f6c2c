// A FIFO of received chunks. Takes whole messages out of a byte stream however the
// stream was split, copying only when a message spans chunks.
//
// Small chunks are copied together into a tail buffer of our own: a peer that sends its
// bytes a few per TCP segment (a payload trickling in) would otherwise cost a Buffer per
// segment, hundreds of times the bytes themselves (measured on node 20: about 200 bytes of
// JS heap per chunk a socket delivers, whatever its size, plus its own allocation).
const COALESCE_MAX_BYTES = 1024;
const TAIL_BYTES = 16 * 1024;

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already consumed from chunks[0]
  length = 0;
  private tail: Buffer | null = null;
  private tailUsed = 0;
  /** Where the last element of chunks starts in tail, when that element is a view of it. */
  private tailView = -1;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.length += chunk.length;
    if (chunk.length > COALESCE_MAX_BYTES) {
      this.chunks.push(chunk);
      this.tailView = -1;
      return;
    }
    if (this.tail === null || this.tailUsed + chunk.length > this.tail.length) {
      this.tail = Buffer.allocUnsafe(TAIL_BYTES);
      this.tailUsed = 0;
      this.tailView = -1;
    }
    chunk.copy(this.tail, this.tailUsed);
    this.tailUsed += chunk.length;
    // Bytes already handed out as views are never written again: the view only grows.
    const view = this.tail.subarray(this.tailView < 0 ? this.tailUsed - chunk.length : this.tailView, this.tailUsed);
    if (this.tailView < 0) {
      this.tailView = this.tailUsed - chunk.length;
      this.chunks.push(view);
    } else {
      this.chunks[this.chunks.length - 1] = view;
    }
  }

  /** Chunks held (what memory they cost beyond their bytes). */
  get chunkCount(): number {
    return this.chunks.length;
  }

  /** Takes n bytes: a view when they sit in one chunk, a copy otherwise. */
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError(`take(${n}) with ${this.length} buffered`);
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyOut(out, 0, n);
    return out;
  }

  /** Takes n bytes as views over the received chunks (no copy), e.g. a write payload. */
  takeChunks(n: number): Buffer[] {
    if (n > this.length) throw new RangeError(`takeChunks(${n}) with ${this.length} buffered`);
    const out: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      const avail = c.length - this.head;
      const k = Math.min(avail, left);
      out.push(c.subarray(this.head, this.head + k));
      this.advance(k);
      left -= k;
    }
    return out;
  }

  /** Copies n bytes into target at offset and drops them. */
  copyOut(target: Buffer, offset: number, n: number): void {
    if (n > this.length) throw new RangeError(`copyOut(${n}) with ${this.length} buffered`);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length - this.head, n - done);
      c.copy(target, offset + done, this.head, this.head + k);
      this.advance(k);
      done += k;
    }
  }

  /** Drops n bytes (a payload being skipped). */
  skip(n: number): void {
    if (n > this.length) throw new RangeError(`skip(${n}) with ${this.length} buffered`);
    let left = n;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length - this.head, left);
      this.advance(k);
      left -= k;
    }
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
    this.tailView = -1;
  }

  private advance(n: number): void {
    this.head += n;
    this.length -= n;
    const c = this.chunks[0];
    if (c !== undefined && this.head === c.length) {
      this.chunks.shift();
      this.head = 0;
      // The tail's view was consumed: the next small chunk starts a new one.
      if (this.chunks.length === 0) this.tailView = -1;
    }
  }
}
