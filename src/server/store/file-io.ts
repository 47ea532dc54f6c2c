// File I/O as the file store needs it, with two engines: RingIo (io_uring, ring-io.ts) and,
// where io_uring is unavailable, PoolIo (Node's fs on the libuv pool, pool-io.ts).
import { errnoName } from '../../errno';
import { Done } from './store';

export type FallocateOp = 'punchHole' | 'zeroRange';

export interface FileIo {
  readonly engine: 'io_uring' | 'threadpool';
  /** Reads length bytes at position into target[targetOffset..]; what lies past EOF reads as zeros. */
  read(target: Buffer, targetOffset: number, length: number, position: number, done: Done): void;
  /** Writes the chunks back to back at position, completely. */
  write(chunks: Buffer[], position: number, done: Done): void;
  /** fdatasync: every write completed before this call becomes durable. */
  fdatasync(done: Done): void;
  fallocate(op: FallocateOp, offset: number, length: number, done: Done): void;
  /** Waits for requests in flight, then releases the engine (not the fd). */
  close(): Promise<void>;
}

/** A failed file operation: errno and code as Node's fs reports them. */
export class FileIoError extends Error implements NodeJS.ErrnoException {
  constructor(readonly errno: number, readonly code: string, readonly syscall: string) {
    super(`${syscall}: ${code}`);
    this.name = 'FileIoError';
  }
}

export function errnoError(errno: number, syscall: string): FileIoError {
  return new FileIoError(errno, errnoName(errno), syscall);
}

/** Requests in flight in an engine, so that close() can wait for the last one. */
export class InFlight {
  private n = 0;
  private onIdle: (() => void) | null = null;

  begin(): void {
    this.n++;
  }

  /** One request is done: its callback runs, then, if it was the last, whoever waits in whenIdle. */
  end(done: Done, err: Error | null): void {
    this.n--;
    done(err);
    if (this.n === 0 && this.onIdle !== null) {
      const idle = this.onIdle;
      this.onIdle = null;
      idle();
    }
  }

  /** Runs fn once nothing is in flight: now, or when the last request ends. */
  whenIdle(fn: () => void): void {
    if (this.n === 0) fn();
    else this.onIdle = fn;
  }
}
