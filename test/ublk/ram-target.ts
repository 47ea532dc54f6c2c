// A RAM-backed ublk target for the kernel tests: a Buffer is the disk. Used on the
// test's own thread (device.ktest.ts) and in worker threads (ram-queue-worker.ts).
import { EIO, EOPNOTSUPP } from '../../src/errno';
import { UblkIoOp, UblkIoFlag } from '../../src/ublk/constants';
import type { UblkQueue, UblkQueueHandler } from '../../src/ublk/queue';

export interface RamStats {
  reads: number;
  writes: number;
  flushes: number;
  fua: number;
  discards: Array<[offset: number, length: number]>;
  writeZeroes: Array<[offset: number, length: number]>;
  other: number;
  /** Largest number of requests handed over by one wake-up. */
  maxBatch: number;
}

export function newStats(): RamStats {
  return { reads: 0, writes: 0, flushes: 0, fua: 0, discards: [], writeZeroes: [], other: 0, maxBatch: 0 };
}

/** Serves `q` from `disk`; every request is completed synchronously. */
export function ramHandler(q: UblkQueue, disk: Buffer, stats: RamStats, onStopped: () => void): UblkQueueHandler {
  let batch = 0;
  return {
    request(tag: number): void {
      // Requests of one wake-up arrive back to back, before any microtask runs.
      if (batch++ === 0) {
        queueMicrotask(() => {
          stats.maxBatch = Math.max(stats.maxBatch, batch);
          batch = 0;
        });
      }
      const op = q.op(tag);
      if ((q.flags(tag) & UblkIoFlag.FUA) !== 0) stats.fua++;
      if (op === UblkIoOp.FLUSH) {
        // A flush has no range: the block layer leaves its start sector at -1
        // (all ones) and its length at 0.
        stats.flushes++;
        q.complete(tag, 0);
        return;
      }
      const off = q.offset(tag);
      const len = q.length(tag);
      if (off + len > disk.length) {
        q.complete(tag, -EIO);
        return;
      }
      switch (op) {
        case UblkIoOp.READ:
          stats.reads++;
          disk.copy(q.buffer(tag), 0, off, off + len);
          q.complete(tag, len);
          return;
        case UblkIoOp.WRITE:
          stats.writes++;
          q.buffer(tag).copy(disk, off, 0, len);
          q.complete(tag, len);
          return;
        case UblkIoOp.DISCARD:
          stats.discards.push([off, len]);
          disk.fill(0, off, off + len);
          q.complete(tag, 0);
          return;
        case UblkIoOp.WRITE_ZEROES:
          stats.writeZeroes.push([off, len]);
          disk.fill(0, off, off + len);
          q.complete(tag, 0);
          return;
        default:
          stats.other++;
          q.complete(tag, -EOPNOTSUPP);
      }
    },
    stopped: onStopped,
    error(err, tag): void {
      throw new Error(`queue ${q.qid} tag ${tag}: ${err.message}`);
    },
  };
}
