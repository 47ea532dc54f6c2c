// The contract of the ublk addon (build/Release/ublk.node, addon/module.cc), loaded by
// load.ts; src/ublk is its only importer. Policy lives in TypeScript, the addon only
// talks to the kernel. Failed system calls reject or throw a NativeErrnoError (load.ts).

export interface NativeQueueOptions {
  /** Queue id, 0 ... nr_hw_queues - 1. */
  qid: number;
  /** Tags in this queue (the device's queue_depth). */
  depth: number;
  /** Bytes of buffer per tag: the device's max_io_buf_bytes. */
  bufBytes: number;
  /** An fd of /dev/ublkcN. The device allows one opener, so all queues of a process share it. */
  charFd: number;
  /** Use the ioctl-encoded I/O opcodes (the device has UBLK_F_CMD_IOCTL_ENCODE). */
  ioctlEncode: boolean;
}

/**
 * One ublk queue. It must be created, started, committed and closed on one thread:
 * the kernel accepts a queue's commands only from the task that fetched it.
 */
export interface NativeQueue {
  /** One Buffer per tag over the tag's page-aligned memory; emptied (length 0) by close(). */
  readonly buffers: Buffer[];
  /** The queue's descriptor array, 24 bytes per tag, mapped read-only; emptied by close(). */
  readonly descs: Buffer;
  /**
   * Issues FETCH_REQ for every tag and starts polling the ring on this thread's loop.
   * On each wake-up all completions are reaped; the tags that now hold a request are
   * written to readyTags[0 .. count) and onRequests(count) is called once. Refused
   * commands are reported by onError(tag, errno) (tag -1: the ring fd itself failed).
   * When every tag has been aborted by the kernel (device stopped) or refused,
   * polling stops and onStopped() is called once.
   */
  start(
    onRequests: (count: number) => void,
    readyTags: Uint16Array,
    onStopped: () => void,
    onError: (tag: number, errno: number) => void,
  ): void;
  /**
   * COMMIT_AND_FETCH_REQ for pairs[2i] = tag, pairs[2i+1] = result (bytes done, or
   * -errno), i < count: one SQE each, one io_uring_enter for all. Throws RangeError for
   * a tag that holds no request (the pairs before it are still submitted).
   */
  commit(pairs: Int32Array, count: number): void;
  /** Stops polling, exits the ring, unmaps the descriptors, frees the buffers. Idempotent. */
  close(): void;
}

export interface NativeQueueConstructor {
  new (options: NativeQueueOptions): NativeQueue;
}

export interface NativeRingSocketOptions {
  /** A connected stream socket's fd (TCP or unix), after the NBD handshake. Never closed by the addon. */
  fd: number;
  /** Requests in flight at most: a request's slot (its cookie's low 32 bits) is below this. */
  slots: number;
}

/**
 * An NBD connection's data path on an io_uring of its own (addon/ring-socket.cc, the
 * bytes in addon/nbd-ring.h), polled on the creating thread's loop. It knows the 16-byte
 * simple reply and that a successful READ's reply is followed by the request's length of
 * data; TypeScript decides everything else.
 */
export interface NativeRingSocket {
  /**
   * Starts receiving. Each wake-up, the reply headers that arrived (16 bytes each, a
   * READ's only once its payload is in place) are copied to replies[0 .. 16 * count) and
   * onReplies(count) is called once. A reply naming no request sent here is passed on and
   * ends reception. When the connection fails (errno, or 0: the peer closed it), every
   * operation is cancelled and reaped, then onClosed(errno) is called once.
   */
  start(onReplies: (count: number) => void, replies: Buffer, onClosed: (errno: number) => void): void;
  /**
   * Queues a request for the next flush(): header (28 bytes) and data (WRITE) leave in one
   * sendmsg; into (READ, exactly its length) receives the payload. The Buffers must stay
   * unchanged until the reply is passed on or close() returns. False once the connection failed.
   */
  queue(slot: number, gen: number, header: Buffer, data: Buffer | null, into: Buffer | null): boolean;
  /** Sends what was queued as one linked chain, after the chain in flight if any. */
  flush(): void;
  /** Cancels and reaps every operation in flight, then releases the ring. Idempotent. */
  close(): void;
}

export interface NativeRingSocketConstructor {
  new (options: NativeRingSocketOptions): NativeRingSocket;
}

export interface UblkNative {
  /**
   * One control command on /dev/ublk-control, run on a thread of its own (START_DEV and
   * DEL_DEV block). buf is copied in and, on success, the kernel's output copied back.
   * Resolves with the completion's result (>= 0); rejects with a NativeErrnoError.
   */
  ctrlCommand(op: number, devId: number, queueId: number, data0: bigint, buf: Buffer | null): Promise<number>;
  Queue: NativeQueueConstructor;
  RingSocket: NativeRingSocketConstructor;
}
