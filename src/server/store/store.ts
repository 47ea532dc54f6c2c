// What the NBD server needs from a backing store. Callback style: one request is one call,
// with no promise allocated on the data path. `done` runs exactly once, possibly before the
// call returns (a read served straight from the page cache).

export type Done = (err: Error | null) => void;

export interface Store {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  /** Reads length bytes at offset into target[targetOffset..]. */
  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void;
  /** Writes the chunks back to back at offset; with fua, durable before done. */
  write(chunks: Buffer[], offset: number, fua: boolean, done: Done): void;
  /** Makes every write that completed before this call durable. */
  flush(done: Done): void;
  trim(offset: number, length: number, fua: boolean, done: Done): void;
  writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean, done: Done): void;
  close(): Promise<void>;
}
