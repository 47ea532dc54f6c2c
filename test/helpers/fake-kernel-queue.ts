// A stand-in for the ublk addon's queue (NativeQueue, src/native/ublk.d.ts) that plays the
// kernel on the host: a test (or the TypeScript-path benchmark, bench/ts-path.ts) writes
// request descriptors, hands them over in one wake-up as the ring's poll callback would,
// and sees each commit as the kernel would receive it. It keeps the addon's rules: a
// commit of a tag that holds no request throws a RangeError, close() empties the buffers.
import { EOPNOTSUPP } from '../../src/errno';
import { IO_DESC_SIZE } from '../../src/ublk/constants';
import type { NativeQueue, NativeQueueOptions, UblkNative } from '../../src/native/load';

export class FakeKernelQueue implements NativeQueue {
  buffers: Buffer[];
  descs: Buffer;
  readonly depth: number;
  /** Every commit() as it arrived: one array of [tag, result] pairs per call (while record is set). */
  readonly commits: Array<Array<[number, number]>> = [];
  /** Off for the benchmark, whose CPU time would include the recording. */
  record = true;
  /** Called for each committed pair, after it is recorded (the benchmark re-issues from here). */
  onCommit: ((tag: number, result: number) => void) | undefined;
  closed = false;
  private readonly desc32: Uint32Array;
  private readonly pending: Uint16Array;
  private nPending = 0;
  private readonly owned: Uint8Array;
  private onRequests: ((count: number, replies: number, socketFailure: number) => void) | undefined;
  private ready: Uint16Array | undefined;
  private onStopped: (() => void) | undefined;
  private onError: ((tag: number, errno: number) => void) | undefined;

  constructor(opts: Pick<NativeQueueOptions, 'depth' | 'bufBytes'>) {
    this.depth = opts.depth;
    this.buffers = [];
    for (let i = 0; i < opts.depth; i++) this.buffers.push(Buffer.alloc(opts.bufBytes));
    this.descs = Buffer.alloc(opts.depth * IO_DESC_SIZE);
    this.desc32 = new Uint32Array(this.descs.buffer, this.descs.byteOffset, (opts.depth * IO_DESC_SIZE) / 4);
    this.pending = new Uint16Array(opts.depth);
    this.owned = new Uint8Array(opts.depth);
  }

  /** An addon whose Queue constructor builds fakes; each one created is passed to created. */
  static native(created: (q: FakeKernelQueue) => void = () => undefined): UblkNative {
    return {
      ctrlCommand: () => Promise.reject(new Error('the fake kernel has no control device')),
      // No ublk here: no pages to register, so no zero copy.
      probeFixedBufferIo: () => EOPNOTSUPP,
      Queue: class {
        constructor(o: NativeQueueOptions) {
          const q = new FakeKernelQueue(o);
          created(q);
          return q;
        }
      } as unknown as UblkNative['Queue'],
    };
  }

  get started(): boolean {
    return this.onRequests !== undefined;
  }

  start(onRequests: (count: number, replies: number, socketFailure: number) => void, readyTags: Uint16Array, onStopped: () => void,
    onError: (tag: number, errno: number) => void): void {
    this.onRequests = onRequests;
    this.ready = readyTags;
    this.onStopped = onStopped;
    this.onError = onError;
  }

  /**
   * Writes tag's descriptor (ublksrv_io_desc: op_flags, nr_sectors, start_sector) and queues
   * it for the next deliver(). flags are UBLK_IO_F_* bits.
   */
  request(tag: number, op: number, startSector: number, nrSectors: number, flags = 0): void {
    if (this.owned[tag] === 1) throw new Error(`fake kernel: tag ${tag} already holds a request`);
    const w = tag * 6;
    this.desc32[w] = (op | flags) >>> 0;
    this.desc32[w + 1] = nrSectors;
    this.desc32[w + 2] = startSector >>> 0;
    this.desc32[w + 3] = Math.floor(startSector / 0x1_0000_0000);
    this.pending[this.nPending++] = tag;
  }

  /** One wake-up: every queued request in one onRequests call. Returns how many. */
  deliver(): number {
    const n = this.nPending;
    if (n === 0) return 0;
    const ready = this.ready as Uint16Array;
    for (let i = 0; i < n; i++) {
      const tag = this.pending[i] as number;
      ready[i] = tag;
      this.owned[tag] = 1;
    }
    this.nPending = 0;
    this.onRequests?.(n, 0, -1);
    return n;
  }

  commit(pairs: Int32Array, count: number): void {
    const batch: Array<[number, number]> | undefined = this.record ? [] : undefined;
    if (batch !== undefined) this.commits.push(batch);
    for (let i = 0; i < count; i++) {
      const tag = pairs[2 * i] as number;
      const result = pairs[2 * i + 1] as number;
      if (this.owned[tag] !== 1) throw new RangeError('commit of a tag that holds no request');
      this.owned[tag] = 0;
      batch?.push([tag, result]);
      this.onCommit?.(tag, result);
    }
  }

  /** As the kernel does at STOP_DEV once every tag is aborted. */
  stop(): void {
    this.onStopped?.();
  }

  /** A command the kernel refused on tag (errno positive). */
  refuse(tag: number, errno: number): void {
    this.onError?.(tag, errno);
  }

  attachSocket(): void {
    throw new Error('the fake kernel has no ring for a socket');
  }

  sendRequest(): boolean {
    return false;
  }

  detachSocket(): void {
    // No socket can have been attached.
  }

  close(): void {
    this.closed = true;
    this.buffers = [];
    this.descs = Buffer.alloc(0);
  }
}
