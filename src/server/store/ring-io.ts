// File I/O through an io_uring owned by this thread (NativeFileRing, addon/fileops.cc).
//
// Requests queued during one loop iteration go to the kernel in one io_uring_enter, issued
// from setImmediate: the socket reads of that iteration (32 NBD requests in one segment, or
// several connections' requests) cost one system call for all their file I/O. A page-cached
// read completes inside that call, so its callback runs right there, with no thread hop;
// the rest (reads from disk, and on filesystems without async buffered writes, such as
// ext4, every write) complete through the ring's libuv poll, one JS call per wake-up.
// setImmediate rather than nextTick: a completion that queues more I/O (here a resumed
// short transfer, for other callers a loop) waits for the next iteration instead of
// starving the loop, and measured latency was the same. Short transfers are resumed, a
// read at EOF zero-fills the rest.
import { Done } from './store';
import { EIO, EOPNOTSUPP } from '../../errno';
import { FallocateOp, FileIo, InFlight, errnoError } from './file-io';
import type { FileOpsNative, NativeFileRing } from '../../native/load';

// SQ entries: the most requests one io_uring_enter takes (more are sent in several);
// the addon sizes the CQ at 8x, so requests in flight rarely wait on it.
const RING_ENTRIES = 256;
// (id, res) pairs handed over per submit or wake-up.
const RESULT_PAIRS = 1024;
// Linux's IOV_MAX: a write payload in more chunks than this goes out in several writevs,
// resumed like a short write.
const IOV_MAX = 1024;

const enum Kind {
  Read,
  Write,
  Writev,
  Other,
}

interface Op {
  readonly id: number;
  kind: Kind;
  syscall: string;
  done: Done | null;
  buf: Buffer | null;
  bufOffset: number;
  chunks: Buffer[] | null;
  length: number;
  position: number;
  got: number;
}

export class RingIo implements FileIo {
  readonly engine = 'io_uring';
  private readonly ring: NativeFileRing;
  private readonly results = new Int32Array(2 * RESULT_PAIRS);
  private readonly ops: Op[] = [];
  private readonly free: number[] = [];
  private readonly inFlight = new InFlight();
  private submitQueued = false;
  private closed = false;
  private ringClosed = false;
  private nowait = true;
  // Requests per io_uring_enter, a moving average; and the count queued for the next one.
  private batchAvg = 1;
  private queued = 0;

  /** Throws a NativeErrnoError (syscall 'io_uring_setup') where io_uring is unavailable. */
  constructor(fd: number, ops: FileOpsNative) {
    this.ring = new ops.FileRing(fd, RING_ENTRIES, this.results, (n) => this.deliver(n));
  }

  read(target: Buffer, targetOffset: number, length: number, position: number, done: Done): void {
    if (length === 0) return done(null);
    let got = 0;
    if (this.nowait && !this.submitQueued && this.batchAvg < 1.5 && !this.closed) {
      // While batches are single requests (queue depth 1), a read is first tried at once
      // from the page cache: the reply leaves in the same tick, without the setImmediate
      // and ring round trip (QD1 p50 29 -> 26 us with client and server on one CPU, 80 ->
      // 75 us across CPUs). With deeper queues it would add a system call to batches the
      // ring serves with one (first tried unconditionally: -10 % IOPS at QD32), hence the
      // running average of the batch size.
      const n = this.ring.readNowait(target, targetOffset, length, position);
      if (n === length) return done(null);
      if (n > 0) got = n;
      else if (n === -EOPNOTSUPP) this.nowait = false;
      // Anything else (not cached, EOF, an error) goes through the ring, which reports it.
    }
    const op = this.op(Kind.Read, 'read', done);
    op.buf = target;
    op.bufOffset = targetOffset;
    op.length = length;
    op.position = position;
    op.got = got;
    this.ring.read(op.id, target, targetOffset + got, length - got, position + got);
    this.queueSubmit();
  }

  write(chunks: Buffer[], position: number, done: Done): void {
    let length = 0;
    for (const c of chunks) length += c.length;
    if (length === 0) return done(null);
    if (chunks.length === 1) {
      const c = chunks[0] as Buffer;
      const op = this.op(Kind.Write, 'write', done);
      op.buf = c;
      op.bufOffset = 0;
      op.length = length;
      op.position = position;
      this.ring.write(op.id, c, 0, length, position);
    } else {
      const op = this.op(Kind.Writev, 'writev', done);
      op.chunks = chunks;
      op.length = length;
      op.position = position;
      this.ring.writev(op.id, chunks.length > IOV_MAX ? chunks.slice(0, IOV_MAX) : chunks, position);
    }
    this.queueSubmit();
  }

  fdatasync(done: Done): void {
    const op = this.op(Kind.Other, 'fdatasync', done);
    this.ring.fdatasync(op.id);
    this.queueSubmit();
  }

  fallocate(which: FallocateOp, offset: number, length: number, done: Done): void {
    const op = this.op(Kind.Other, 'fallocate', done);
    this.ring[which](op.id, offset, length);
    this.queueSubmit();
  }

  close(): Promise<void> {
    this.closed = true;
    return new Promise((resolve) => {
      const finish = (): void => {
        this.ringClosed = true;
        this.ring.close();
        resolve();
      };
      this.inFlight.whenIdle(finish);
    });
  }

  private op(kind: Kind, syscall: string, done: Done): Op {
    if (this.closed) throw new Error('file store is closed');
    let id = this.free.pop();
    if (id === undefined) {
      id = this.ops.length;
      this.ops.push({ id, kind, syscall, done: null, buf: null, bufOffset: 0, chunks: null, length: 0, position: 0, got: 0 });
    }
    const op = this.ops[id] as Op;
    op.kind = kind;
    op.syscall = syscall;
    op.done = done;
    op.got = 0;
    this.inFlight.begin();
    return op;
  }

  private queueSubmit(): void {
    this.queued++;
    if (this.submitQueued) return;
    this.submitQueued = true;
    setImmediate(submitNow, this);
  }

  /** Runs from setImmediate: one io_uring_enter for the iteration's requests. */
  submit(): void {
    this.submitQueued = false;
    if (this.ringClosed) return;
    this.batchAvg = 0.75 * this.batchAvg + 0.25 * this.queued;
    this.queued = 0;
    const n = this.ring.submit();
    if (n > 0) this.deliver(n);
  }

  private deliver(n: number): void {
    const r = this.results;
    for (let i = 0; i < n; i++) {
      const op = this.ops[r[2 * i] as number] as Op;
      this.complete(op, r[2 * i + 1] as number);
    }
  }

  private complete(op: Op, res: number): void {
    if (res < 0) return this.finish(op, errnoError(-res, op.syscall));
    switch (op.kind) {
      case Kind.Read: {
        const buf = op.buf as Buffer;
        if (res === 0) {
          // The file ends here (it shrank under us): the rest reads as zeros, as a hole would.
          buf.fill(0, op.bufOffset + op.got, op.bufOffset + op.length);
          return this.finish(op, null);
        }
        op.got += res;
        if (op.got < op.length) {
          this.ring.read(op.id, buf, op.bufOffset + op.got, op.length - op.got, op.position + op.got);
          return this.queueSubmit();
        }
        return this.finish(op, null);
      }
      case Kind.Write:
      case Kind.Writev:
        // A write that moves nothing would repeat forever; the kernel reports real
        // failures as errors, so this is one.
        if (res === 0) return this.finish(op, errnoError(EIO, op.syscall));
        op.got += res;
        if (op.got < op.length) {
          this.resumeWrite(op);
          return this.queueSubmit();
        }
        return this.finish(op, null);
      default:
        return this.finish(op, null);
    }
  }

  private resumeWrite(op: Op): void {
    if (op.kind === Kind.Write) {
      this.ring.write(op.id, op.buf as Buffer, op.bufOffset + op.got, op.length - op.got, op.position + op.got);
      return;
    }
    // Drop the chunks written so far; the first left may start mid-way.
    let skip = op.got;
    const rest: Buffer[] = [];
    for (const c of op.chunks as Buffer[]) {
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      rest.push(skip > 0 ? c.subarray(skip) : c);
      skip = 0;
      if (rest.length === IOV_MAX) break;
    }
    this.ring.writev(op.id, rest, op.position + op.got);
  }

  private finish(op: Op, err: Error | null): void {
    const done = op.done as Done;
    op.done = null;
    op.buf = null;
    op.chunks = null;
    this.free.push(op.id);
    this.inFlight.end(done, err);
  }
}

function submitNow(io: RingIo): void {
  io.submit();
}
