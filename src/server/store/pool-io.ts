// File I/O on the libuv pool (Node's fs), for hosts where io_uring is unavailable
// (kernel.io_uring_disabled, a container's seccomp filter). Each request costs a hop to a
// pool thread and back; see ring-io.ts for the fast engine.
import * as fs from 'fs';
import { Done } from './store';
import { FallocateOp, FileIo, InFlight } from './file-io';
import type { FileOpsNative } from '../../native/load';

export class PoolIo implements FileIo {
  readonly engine = 'threadpool';
  private readonly inFlight = new InFlight();

  constructor(private readonly fd: number, private readonly ops: FileOpsNative) {}

  read(target: Buffer, targetOffset: number, length: number, position: number, done: Done): void {
    if (length === 0) return done(null);
    const end = this.track(done);
    const step = (got: number): void => {
      fs.read(this.fd, target, targetOffset + got, length - got, position + got, (err, n) => {
        if (err) return end(err);
        if (n === 0) {
          // The file ends here (it shrank under us): the rest reads as zeros, as a hole would.
          target.fill(0, targetOffset + got, targetOffset + length);
          return end(null);
        }
        if (got + n < length) return step(got + n);
        end(null);
      });
    };
    step(0);
  }

  write(chunks: Buffer[], position: number, done: Done): void {
    const end = this.track(done);
    const step = (rest: Buffer[], at: number): void => {
      fs.writev(this.fd, rest, at, (err, n) => {
        if (err) return end(err);
        let total = 0;
        for (const c of rest) total += c.length;
        if (n < total) return step(dropBytes(rest, n), at + n);
        end(null);
      });
    };
    step(chunks, position);
  }

  fdatasync(done: Done): void {
    const end = this.track(done);
    fs.fdatasync(this.fd, (err) => end(err));
  }

  fallocate(op: FallocateOp, offset: number, length: number, done: Done): void {
    const end = this.track(done);
    this.ops[op](this.fd, offset, length).then(() => end(null), (err: Error) => end(err));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.inFlight.whenIdle(resolve));
  }

  private track(done: Done): Done {
    this.inFlight.begin();
    return (err) => this.inFlight.end(done, err);
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
