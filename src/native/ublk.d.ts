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
  /**
   * Requests in flight at most on an attached NBD socket (a request's slot, its cookie's
   * low 32 bits, is below this); sizes the ring for them. 0 or absent: no socket.
   */
  socketSlots?: number;
  /**
   * The device was added with UBLK_F_AUTO_BUF_REG: each request's pages become this ring's
   * fixed buffer index = tag, and the attached socket sends and receives a request's payload
   * from and into them when its data/into Buffer lies in buffers[tag] (the tag buffers
   * themselves then hold nothing). Needs socketSlots.
   */
  zeroCopy?: boolean;
  /**
   * The device also has UBLK_F_USER_COPY: while no READ larger than 16 KiB is in flight,
   * the socket's replies are received many at a time into a staging buffer and a small READ's
   * payload is written into its request's pages by pwrite on charFd (addon/nbd-ring.h).
   * Needs zeroCopy.
   */
  userCopy?: boolean;
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
   * On each wake-up all completions are reaped, the kernel's and the attached socket's,
   * and onEvents(requests, replies, socketFailure) is called once: the tags that now hold
   * a request are in readyTags[0 .. requests), the NBD reply headers that arrived (16
   * bytes each, a READ's only once its payload is in place) in attachSocket's replies
   * buffer [0 .. 16 * replies); socketFailure is -1, or, once, why the socket failed (an
   * errno, 0: the peer closed), with none of its operations left in flight. Refused
   * commands are reported by onError(tag, errno) (tag -1: the ring fd itself failed).
   * When every tag has been aborted by the kernel (device stopped) or refused,
   * onStopped() is called once, and polling stops unless a socket is attached.
   */
  start(
    onEvents: (requests: number, replies: number, socketFailure: number) => void,
    readyTags: Uint16Array,
    onStopped: () => void,
    onError: (tag: number, errno: number) => void,
  ): void;
  /**
   * COMMIT_AND_FETCH_REQ for pairs[2i] = tag, pairs[2i+1] = result (bytes done, or
   * -errno), i < count, and the socket's queued requests (sendRequest): one SQE each (the
   * requests as one linked sendmsg chain), one io_uring_enter for all. Throws RangeError
   * for a tag that holds no request (the pairs before it are still submitted).
   */
  commit(pairs: Int32Array, count: number): void;
  /**
   * Drives a connected stream socket's NBD transmission on this queue's ring (fd: after
   * the handshake; never closed by the addon). Reply headers reach onEvents through
   * replies ((socketSlots + 1) * 16 bytes). One socket at a time.
   */
  attachSocket(fd: number, replies: Buffer): void;
  /**
   * Queues a request for the next commit(): header (28 bytes) and data (WRITE) leave in
   * one sendmsg; into (READ, exactly its length) receives the payload. The Buffers must
   * stay unchanged until the reply is passed on or detachSocket() returns. False once
   * the socket failed.
   */
  sendRequest(slot: number, gen: number, header: Buffer, data: Buffer | null, into: Buffer | null): boolean;
  /** Cancels and reaps every operation on the socket; the socket is left to its owner. Idempotent. */
  detachSocket(): void;
  /** Stops polling, exits the ring, unmaps the descriptors, frees the buffers. Idempotent. */
  close(): void;
}

export interface NativeQueueConstructor {
  new (options: NativeQueueOptions): NativeQueue;
}

export interface UblkNative {
  /**
   * One control command on /dev/ublk-control, run on a thread of its own (START_DEV and
   * DEL_DEV block). buf is copied in and, on success, the kernel's output copied back.
   * Resolves with the completion's result (>= 0); rejects with a NativeErrnoError.
   */
  ctrlCommand(op: number, devId: number, queueId: number, data0: bigint, buf: Buffer | null): Promise<number>;
  Queue: NativeQueueConstructor;
  /**
   * Sends from and receives into a registered buffer over a socket pair, with plain
   * SEND/RECV and IORING_RECVSEND_FIXED_BUF (Linux 7.2): 0 when both work, else the errno.
   */
  probeFixedBufferIo(): number;
}
