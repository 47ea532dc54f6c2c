// The contract of the fileops addon (build/Release/fileops.node, addon/fileops.cc), loaded
// by load.ts. The addon only talks to the kernel; retries, EOF handling and errors-to-NBD
// live in TypeScript (src/server).

/**
 * An io_uring on one open file, used from the thread that created it (addon/fileops.cc).
 * Each request method queues one request tagged with `id` (0 <= id < 2^20, chosen by the
 * caller, one request per id at a time) and returns at once; submit() sends every queued
 * request in one system call. Each request's outcome comes back as a pair (id, res) in the
 * constructor's `results` array: res is bytes transferred (reads and writes may be short),
 * 0 for the others, or -errno. Pairs come from submit() (its return value counts those
 * that completed during it) or, for requests finished later, from onComplete(count),
 * called once per loop wake-up. Buffers passed in must stay untouched and referenced until
 * their request's result arrives.
 */
export interface NativeFileRing {
  /** Reads length bytes at position into buf[bufOffset..]. */
  read(id: number, buf: Buffer, bufOffset: number, length: number, position: number): void;
  /**
   * preadv2(RWF_NOWAIT) now, on this thread: the bytes read from the page cache (maybe fewer
   * than length) or -errno (-EAGAIN: not cached; -EOPNOTSUPP: not on this filesystem).
   * Never waits for the disk. Not a ring request: no id, no result pair.
   */
  readNowait(buf: Buffer, bufOffset: number, length: number, position: number): number;
  /** Writes buf[bufOffset .. bufOffset + length) at position. */
  write(id: number, buf: Buffer, bufOffset: number, length: number, position: number): void;
  /** Writes the buffers back to back at position (1 to IOV_MAX of them). */
  writev(id: number, bufs: readonly Buffer[], position: number): void;
  /** fdatasync: every write completed before it becomes durable. */
  fdatasync(id: number): void;
  /** fallocate PUNCH_HOLE|KEEP_SIZE: the range reads as zeros and is deallocated. */
  punchHole(id: number, offset: number, length: number): void;
  /** fallocate ZERO_RANGE|KEEP_SIZE: the range reads as zeros and stays allocated. */
  zeroRange(id: number, offset: number, length: number): void;
  /** Submits everything queued; returns how many (id, res) pairs it wrote to results. */
  submit(): number;
  /** Stops polling and exits the ring; the file descriptor stays open. Idempotent. */
  close(): void;
}

export interface FileOpsNative {
  /**
   * Throws a NativeErrnoError (syscall 'io_uring_setup') where io_uring is unavailable:
   * EPERM or EACCES under a seccomp filter or kernel.io_uring_disabled, ENOSYS on old kernels.
   * `results` holds (id, res) pairs, so it must have an even length of at least 2.
   */
  FileRing: new (fd: number, entries: number, results: Int32Array, onComplete: (count: number) => void) => NativeFileRing;
  /** fallocate PUNCH_HOLE|KEEP_SIZE on the libuv pool. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** fallocate ZERO_RANGE|KEEP_SIZE on the libuv pool. */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
}
