// A FIFO of received chunks. Takes whole messages out of a byte stream however the
// stream was split, copying only when a message spans chunks.

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already consumed from chunks[0]
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
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
  }

  private advance(n: number): void {
    this.head += n;
    this.length -= n;
    const c = this.chunks[0];
    if (c !== undefined && this.head === c.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
