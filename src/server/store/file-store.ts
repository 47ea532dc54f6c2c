// An image file as an NBD store. All connections share one fd, so a write acknowledged on
// one connection is visible to every other and one fdatasync covers them all: that is what
// lets the server advertise NBD_FLAG_CAN_MULTI_CONN. The I/O itself is a FileIo engine.
import * as fs from 'fs';
import { Done, Store } from './store';
import { FallocateOp, FileIo } from './file-io';
import { PoolIo } from './pool-io';
import { RingIo } from './ring-io';
import { EOPNOTSUPP, errnoOf } from '../../errno';
import { isNativeErrnoError, loadFileOps, type AddonLoadError, type FileOpsNative } from '../../native/load';
import { silentLogger, type Logger } from '../../log';

const ZERO_CHUNK_BYTES = 1024 * 1024;

export interface FileStoreOptions {
  /** Create the image if missing, or grow it (sparse) to this size. */
  size?: number;
  readOnly?: boolean;
  /**
   * How file I/O is done: 'io_uring' (the default where the kernel allows it) or
   * 'threadpool' (Node's fs). 'auto' picks io_uring and falls back.
   */
  io?: 'auto' | 'io_uring' | 'threadpool';
  /** Where 'auto' says why it fell back to the thread pool. */
  log?: Logger;
}

export class FileStoreError extends Error {
  constructor(message: string, readonly code: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'FileStoreError';
  }
}

export class FileStore implements Store {
  readonly canTrim: boolean;
  readonly canZero = true;
  private closed = false;

  private constructor(readonly path: string, private readonly fd: number, readonly size: number, readonly readOnly: boolean,
    private readonly io: FileIo) {
    this.canTrim = !readOnly;
  }

  /** 'io_uring' or 'threadpool': how this store reaches its file. */
  get engine(): FileIo['engine'] {
    return this.io.engine;
  }

  static open(path: string, opts: FileStoreOptions = {}): FileStore {
    const readOnly = opts.readOnly ?? false;
    // Both engines need the addon (the pool one for fallocate): load it before anything
    // else, so a missing build fails here and not on the first TRIM.
    let ops: FileOpsNative;
    try {
      ops = loadFileOps();
    } catch (err) {
      throw new FileStoreError((err as Error).message, (err as AddonLoadError).code, { cause: err });
    }
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
      return new FileStore(path, fd, size, readOnly, openIo(fd, ops, opts.io ?? 'auto', opts.log ?? silentLogger));
    } catch (err) {
      fs.closeSync(fd);
      throw err instanceof FileStoreError ? err : describe(err, path);
    }
  }

  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void {
    this.io.read(target, targetOffset, length, offset, done);
  }

  write(chunks: Buffer[], offset: number, fua: boolean, done: Done): void {
    this.io.write(chunks, offset, fua ? (err) => (err ? done(err) : this.io.fdatasync(done)) : done);
  }

  flush(done: Done): void {
    this.io.fdatasync(done);
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
    if (!this.readOnly) await new Promise<void>((res) => this.io.fdatasync(() => res()));
    await this.io.close();
    await new Promise<void>((res) => fs.close(this.fd, () => res()));
  }

  private fallocate(op: FallocateOp, offset: number, length: number, fua: boolean, done: Done): void {
    if (length === 0) return done(null);
    this.io.fallocate(op, offset, length, (err) => {
      if (!err) return fua ? this.io.fdatasync(done) : done(null);
      // Some filesystems lack hole punching, and tmpfs lacks FALLOC_FL_ZERO_RANGE: the
      // client is still owed zeros, so write them out.
      if (errnoOf(err) === EOPNOTSUPP) return this.writeZeros(offset, length, fua, done);
      done(err);
    });
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

/**
 * The io_uring engine where the kernel allows it, else (with 'auto') the libuv pool. Only
 * the kernel refusing io_uring_setup (EPERM or EACCES under seccomp or
 * kernel.io_uring_disabled, ENOSYS on old kernels, ENOMEM over RLIMIT_MEMLOCK) is a reason
 * to fall back; anything else is an error.
 */
function openIo(fd: number, ops: FileOpsNative, want: 'auto' | 'io_uring' | 'threadpool', log: Logger): FileIo {
  if (want === 'threadpool') return new PoolIo(fd, ops);
  try {
    return new RingIo(fd, ops);
  } catch (err) {
    if (!isNativeErrnoError(err, 'io_uring_setup')) throw err;
    if (want === 'io_uring') throw new FileStoreError(`io_uring is unavailable: ${err.message}`, err.code, { cause: err });
    log.warn({ errno: err.code }, `io_uring is unavailable (io_uring_setup: ${err.code}): file I/O runs on the thread pool`);
    return new PoolIo(fd, ops);
  }
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
