// An image file as an NBD store. All connections share one fd, so a write acknowledged on
// one connection is visible to every other and one fdatasync covers them all: that is what
// lets the server advertise NBD_FLAG_CAN_MULTI_CONN.
import * as fs from 'fs';
import { Done, Store } from './store';
import { fileOps } from './fileops';

const ZERO_CHUNK_BYTES = 1024 * 1024;

export interface FileStoreOptions {
  /** Create the image if missing, or grow it (sparse) to this size. */
  size?: number;
  readOnly?: boolean;
}

export class FileStoreError extends Error {
  constructor(message: string, readonly code: string) {
    super(message);
    this.name = 'FileStoreError';
  }
}

export class FileStore implements Store {
  readonly canTrim: boolean;
  readonly canZero = true;
  private closed = false;

  private constructor(readonly path: string, private readonly fd: number, readonly size: number, readonly readOnly: boolean) {
    this.canTrim = !readOnly;
  }

  static open(path: string, opts: FileStoreOptions = {}): FileStore {
    const readOnly = opts.readOnly ?? false;
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw describe(err, path);
    }
    if (st?.isDirectory()) throw new FileStoreError(`image ${path} is a directory`, 'EISDIR');
    if (st && !st.isFile() && !st.isBlockDevice()) throw new FileStoreError(`image ${path} is not a regular file`, 'EINVAL');
    if (!st && opts.size === undefined) {
      throw new FileStoreError(`image ${path} does not exist (give --size to create it)`, 'ENOENT');
    }
    if (!st && readOnly) throw new FileStoreError(`image ${path} does not exist and --read-only cannot create it`, 'ENOENT');
    let fd: number;
    try {
      fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    } catch (err) {
      throw describe(err, path);
    }
    try {
      let size = fs.fstatSync(fd).size;
      if (opts.size !== undefined) {
        if (size > opts.size) {
          throw new FileStoreError(`image ${path} is ${size} bytes, larger than --size ${opts.size}: refusing to shrink it`, 'EINVAL');
        }
        if (size < opts.size) {
          if (readOnly) throw new FileStoreError(`image ${path} is smaller than --size and --read-only cannot grow it`, 'EINVAL');
          fs.ftruncateSync(fd, opts.size); // sparse: no blocks are written
          size = opts.size;
        }
      }
      if (size === 0) throw new FileStoreError(`image ${path} is empty (give --size to grow it)`, 'EINVAL');
      return new FileStore(path, fd, size, readOnly);
    } catch (err) {
      fs.closeSync(fd);
      throw err instanceof FileStoreError ? err : describe(err, path);
    }
  }

  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void {
    const step = (got: number): void => {
      fs.read(this.fd, target, targetOffset + got, length - got, offset + got, (err, n) => {
        if (err) return done(err);
        if (n === 0) {
          // The file shrank under us: what is past its end reads as zeros, as a hole would.
          target.fill(0, targetOffset + got, targetOffset + length);
          return done(null);
        }
        if (got + n < length) return step(got + n);
        done(null);
      });
    };
    if (length === 0) return done(null);
    step(0);
  }

  write(chunks: Buffer[], offset: number, fua: boolean, done: Done): void {
    const finish = fua ? (err: Error | null) => (err ? done(err) : this.flush(done)) : done;
    if (chunks.length === 1) {
      const c = chunks[0] as Buffer;
      const step = (got: number): void => {
        fs.write(this.fd, c, got, c.length - got, offset + got, (err, n) => {
          if (err) return finish(err);
          if (got + n < c.length) return step(got + n);
          finish(null);
        });
      };
      return step(0);
    }
    fs.writev(this.fd, chunks, offset, (err, n) => {
      if (err) return finish(err);
      let total = 0;
      for (const c of chunks) total += c.length;
      if (n < total) return this.write(dropBytes(chunks, n), offset + n, fua, done);
      finish(null);
    });
  }

  flush(done: Done): void {
    fs.fdatasync(this.fd, (err) => done(err));
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.fallocate('punchHole', offset, length, fua, done);
  }

  writeZeroes(offset: number, length: number, noHole: boolean, fua: boolean, done: Done): void {
    this.fallocate(noHole ? 'zeroRange' : 'punchHole', offset, length, fua, done);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.readOnly) await new Promise<void>((res) => fs.fdatasync(this.fd, () => res()));
    await new Promise<void>((res) => fs.close(this.fd, () => res()));
  }

  private fallocate(op: 'punchHole' | 'zeroRange', offset: number, length: number, fua: boolean, done: Done): void {
    if (length === 0) return done(null);
    fileOps()[op](this.fd, offset, length).then(
      () => (fua ? this.flush(done) : done(null)),
      (err: NodeJS.ErrnoException) => {
        // Some filesystems lack hole punching, and tmpfs lacks FALLOC_FL_ZERO_RANGE: the
        // client is still owed zeros, so write them out.
        if (err.code === 'EOPNOTSUPP') return this.writeZeros(offset, length, fua, done);
        done(err);
      },
    );
  }

  /** Writes zeros over the range, one bounded buffer at a time (a request may be 4 GiB). */
  private writeZeros(offset: number, length: number, fua: boolean, done: Done): void {
    const zeros = Buffer.alloc(Math.min(length, ZERO_CHUNK_BYTES));
    const step = (pos: number): void => {
      if (pos === length) return fua ? this.flush(done) : done(null);
      const n = Math.min(zeros.length, length - pos);
      this.write([zeros.subarray(0, n)], offset + pos, false, (err) => (err ? done(err) : step(pos + n)));
    };
    step(0);
  }
}

function dropBytes(chunks: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) {
    if (n >= c.length) {
      n -= c.length;
      continue;
    }
    out.push(n > 0 ? c.subarray(n) : c);
    n = 0;
  }
  return out;
}

function describe(err: unknown, path: string): FileStoreError {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new FileStoreError(`image ${path}: permission denied (${e.code}); use --read-only to serve it read-only`, e.code);
    case 'ENOENT':
      return new FileStoreError(`image ${path}: no such file or directory`, e.code);
    case 'EISDIR':
      return new FileStoreError(`image ${path} is a directory`, e.code);
    default:
      return new FileStoreError(`image ${path}: ${e.message}`, e.code ?? 'EIO');
  }
}
