// One ublk queue as seen from TypeScript: request descriptors by tag, per-tag
// buffers, and completions batched into one native commit per tick. An NBD socket may
// ride on the queue's ring (attachSocket): its requests leave with that commit and its
// replies arrive in the same wake-up as the kernel's requests.
//
// A UblkQueue must stay on the thread that created it (the kernel takes a queue's
// commands only from the task that fetched it); run one per worker_thread for
// several queues in parallel.

import * as fs from 'fs';
import { IO_DESC_SIZE, SECTOR_SHIFT, UBLK_MAX_QUEUE_DEPTH, charDevPath } from './constants';
import { UblkError, toUblkError } from './errors';
import { loadUblk, type NativeQueue, type UblkNative } from '../native/load';

export interface UblkQueueOptions {
  devId: number;
  qid: number;
  /** The device's queue_depth. */
  depth: number;
  /** The device's max_io_buf_bytes: the buffer size of each tag. */
  maxIoBufBytes: number;
  /** From openCharDev(devId); shared by all queues of the process. */
  charFd: number;
  /** The device was added with UBLK_F_CMD_IOCTL_ENCODE. */
  ioctlEncode: boolean;
  /** Requests in flight at most on a socket attached to the queue's ring (0, the default: none). */
  socketSlots?: number;
  /** The device has UBLK_F_AUTO_BUF_REG: zero copy between the requests' pages and the socket (NativeQueueOptions.zeroCopy). */
  zeroCopy?: boolean;
  /** The device also has UBLK_F_USER_COPY (NativeQueueOptions.userCopy). */
  userCopy?: boolean;
  native?: UblkNative;
}

/** Where a socket attached to the queue's ring reports (see NativeQueue.attachSocket). */
export interface UblkSocketSink {
  /** n reply headers arrived, 16 bytes each at the start of the buffer given to attachSocket. */
  replies(n: number): void;
  /** The socket failed (errno, 0: the peer closed); none of its operations is in flight. */
  closed(errno: number): void;
}

export interface UblkQueueHandler {
  /**
   * A request arrived on `tag`: read it with op()/startSector()/nrSectors()/...,
   * its data (WRITE) or destination (READ) is buffer(tag). Call complete(tag, result)
   * exactly once, now or later.
   */
  request(tag: number): void;
  /** Every tag was aborted by the kernel (STOP_DEV, or the device died): close() the queue. */
  stopped?(): void;
  /** The kernel refused a command for `tag` (or the ring failed: tag -1). The tag is lost. */
  error?(err: UblkError, tag: number): void;
}

/** Opens /dev/ublkcN. The kernel allows one opener at a time (EBUSY otherwise): open it once per process. */
export function openCharDev(devId: number): number {
  try {
    return fs.openSync(charDevPath(devId), fs.constants.O_RDWR);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw toUblkError(
      { name: 'Error', message: e.message, errno: Math.abs(e.errno ?? 0), code: e.code ?? '', syscall: `open ${charDevPath(devId)}` },
      { devId },
    );
  }
}

export function closeCharDev(fd: number): void {
  fs.closeSync(fd);
}

const RESOLVED = Promise.resolve();

export class UblkQueue {
  readonly devId: number;
  readonly qid: number;
  readonly depth: number;
  readonly bufBytes: number;
  /** Tag buffers (length bufBytes each). Emptied by close(). */
  readonly buffers: readonly Buffer[];

  private readonly nq: NativeQueue;
  // Descriptors as u32 words, 6 per tag: op_flags, nr_sectors, start_sector lo/hi,
  // addr lo/hi. Read directly: no native call and no BigInt per request.
  private readonly desc: Uint32Array;
  private readonly ready: Uint16Array;
  private readonly pairs: Int32Array;
  // 1 while a tag's request is with JS, so a double or stray complete() is caught.
  private readonly owned: Uint8Array;
  private nPairs = 0;
  private flushQueued = false;
  // data(tag) views, kept while a tag's requests keep the same length.
  private readonly views: Array<Buffer | undefined>;
  private handler: UblkQueueHandler | undefined;
  private sink: UblkSocketSink | null = null;
  /** Requests queued on the socket since the last commit. */
  private sends = 0;
  private state: 'new' | 'running' | 'stopped' | 'closed' = 'new';
  private readonly flushBound = (): void => this.flush();

  constructor(opts: UblkQueueOptions) {
    if (!Number.isInteger(opts.depth) || opts.depth < 1 || opts.depth > UBLK_MAX_QUEUE_DEPTH)
      throw new UblkError('UBLK_USAGE', `ublk queue: bad depth ${opts.depth}`);
    this.devId = opts.devId;
    this.qid = opts.qid;
    this.depth = opts.depth;
    this.bufBytes = opts.maxIoBufBytes;
    const native = opts.native ?? loadUblk();
    try {
      this.nq = new native.Queue({
        qid: opts.qid,
        depth: opts.depth,
        bufBytes: opts.maxIoBufBytes,
        charFd: opts.charFd,
        ioctlEncode: opts.ioctlEncode,
        socketSlots: opts.socketSlots ?? 0,
        zeroCopy: opts.zeroCopy ?? false,
        userCopy: opts.userCopy ?? false,
      });
    } catch (err) {
      throw toUblkError(err, { devId: opts.devId, qid: opts.qid });
    }
    this.buffers = this.nq.buffers;
    const d = this.nq.descs;
    this.desc = new Uint32Array(d.buffer, d.byteOffset, (opts.depth * IO_DESC_SIZE) >>> 2);
    this.ready = new Uint16Array(opts.depth);
    this.pairs = new Int32Array(opts.depth * 2);
    this.owned = new Uint8Array(opts.depth);
    this.views = new Array<Buffer | undefined>(opts.depth).fill(undefined);
  }

  /** Fetches every tag and starts serving on this thread's event loop. */
  start(handler: UblkQueueHandler): void {
    if (this.state !== 'new') throw new UblkError('UBLK_USAGE', `ublk queue ${this.qid}: start() in state ${this.state}`);
    this.handler = handler;
    try {
      this.nq.start(
        (count, replies, failure) => this.onEvents(count, replies, failure),
        this.ready,
        () => this.onStopped(),
        (tag, errno) => this.onError(tag, errno),
      );
    } catch (err) {
      throw toUblkError(err, { devId: this.devId, qid: this.qid });
    }
    this.state = 'running';
  }

  get running(): boolean {
    return this.state === 'running';
  }

  // --- request descriptor, by tag (valid between request(tag) and complete(tag)) ---

  /** UBLK_IO_OP_* */
  op(tag: number): number {
    return (this.desc[tag * 6] ?? 0) & 0xff;
  }
  /** UBLK_IO_F_* bits, at their op_flags positions (compare with UblkIoFlag). */
  flags(tag: number): number {
    return ((this.desc[tag * 6] ?? 0) & ~0xff) >>> 0;
  }
  nrSectors(tag: number): number {
    return this.desc[tag * 6 + 1] ?? 0;
  }
  /** In 512-byte sectors; exact up to 2^53. */
  startSector(tag: number): number {
    return (this.desc[tag * 6 + 3] ?? 0) * 0x1_0000_0000 + (this.desc[tag * 6 + 2] ?? 0);
  }
  /** Byte offset on the device. */
  offset(tag: number): number {
    return this.startSector(tag) * (1 << SECTOR_SHIFT);
  }
  /** Byte length of the request. */
  length(tag: number): number {
    return (this.desc[tag * 6 + 1] ?? 0) * (1 << SECTOR_SHIFT);
  }
  /** The tag's whole buffer (bufBytes); the request uses its first length(tag) bytes. */
  buffer(tag: number): Buffer {
    const b = this.buffers[tag];
    if (b === undefined) throw new UblkError('UBLK_USAGE', `ublk queue ${this.qid}: no tag ${tag}`);
    return b;
  }

  /**
   * The request's bytes: the first length(tag) bytes of buffer(tag). The view is reused
   * while the tag's requests have the same length, so steady I/O allocates nothing here.
   */
  data(tag: number): Buffer {
    const len = this.length(tag);
    const v = this.views[tag];
    if (v !== undefined && v.length === len) return v;
    const nv = this.buffer(tag).subarray(0, len);
    this.views[tag] = nv;
    return nv;
  }

  /**
   * Completes the request on `tag`: bytes done (READ/WRITE; a short count makes the
   * kernel re-issue the rest), >= 0 for the other ops, or -errno. Completions made
   * in the same tick are committed together, with one system call.
   */
  complete(tag: number, result: number): void {
    if (this.owned[tag] !== 1)
      throw new UblkError('UBLK_USAGE', `ublk queue ${this.qid}: complete(${tag}) without a request on that tag`);
    this.owned[tag] = 0;
    const i = this.nPairs++ * 2;
    this.pairs[i] = tag;
    this.pairs[i + 1] = result;
    this.flushSoon();
  }

  private flushSoon(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    // A microtask: it runs once the callback that completed requests returns (the
    // socket's read callback, a wake-up's replies and requests), so the batch is
    // committed together. A resolved promise's then() is cheaper than queueMicrotask(),
    // which sets up an async resource each time.
    void RESOLVED.then(this.flushBound, undefined);
  }

  /**
   * Drives the connected socket fd on this queue's ring (see NativeQueue.attachSocket);
   * sink hears of its replies, copied to `replies`, and of its end.
   */
  attachSocket(fd: number, replies: Buffer, sink: UblkSocketSink): void {
    if (this.state === 'closed') throw new UblkError('UBLK_USAGE', `ublk queue ${this.qid}: attachSocket() on a closed queue`);
    try {
      this.nq.attachSocket(fd, replies);
    } catch (err) {
      throw toUblkError(err, { devId: this.devId, qid: this.qid });
    }
    this.sink = sink;
  }

  /**
   * Queues a request on the attached socket; it leaves with this tick's commit. False once
   * the socket failed (or none is attached).
   */
  sendRequest(slot: number, gen: number, header: Buffer, data: Buffer | null, into: Buffer | null): boolean {
    if (this.sink === null || this.state === 'closed') return false;
    if (!this.nq.sendRequest(slot, gen, header, data, into)) return false;
    this.sends++;
    this.flushSoon();
    return true;
  }

  /** Stops driving the socket: nothing of it is in flight once this returns. Idempotent. */
  detachSocket(): void {
    this.sink = null;
    this.sends = 0;
    if (this.state !== 'closed') this.nq.detachSocket();
  }

  /** Stops serving and releases the ring, the mappings and the buffers. Idempotent. */
  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.sink = null;
    this.nPairs = 0;
    this.owned.fill(0);
    this.nq.close();
  }

  private flush(): void {
    this.flushQueued = false;
    const n = this.nPairs;
    if ((n === 0 && this.sends === 0) || this.state === 'closed') return;
    this.nPairs = 0;
    this.sends = 0;
    try {
      this.nq.commit(this.pairs, n);
    } catch (err) {
      this.handler?.error?.(toUblkError(err, { devId: this.devId, qid: this.qid }), -1);
    }
  }

  private onEvents(count: number, replies: number, failure: number): void {
    // Replies first: they free the request slots the new requests may need.
    if (replies > 0) this.sink?.replies(replies);
    if (failure >= 0) this.sink?.closed(failure);
    if (count === 0 || this.isClosed()) return;
    const h = this.handler;
    if (h === undefined) return;
    for (let i = 0; i < count; i++) {
      const tag = this.ready[i] ?? 0;
      this.owned[tag] = 1;
    }
    for (let i = 0; i < count; i++) {
      h.request(this.ready[i] ?? 0);
      if (this.state === 'closed') return;
    }
  }

  /** A method, not a field test: a callback above may have closed the queue. */
  private isClosed(): boolean {
    return this.state === 'closed';
  }

  private onStopped(): void {
    if (this.state === 'running') this.state = 'stopped';
    this.handler?.stopped?.();
  }

  private onError(tag: number, errno: number): void {
    const err = toUblkError(
      { name: 'Error', message: '', errno, code: '', syscall: tag < 0 ? 'poll io_uring' : 'io_uring_cmd' },
      { devId: this.devId, qid: this.qid },
    );
    if (this.handler?.error !== undefined) this.handler.error(err, tag);
    else throw err;
  }
}
