// One ublk queue served over one NBD connection: each request the kernel hands over
// becomes one NBD request on the pipelined socket, and its reply completes the tag.
// Everything a wake-up reaps is submitted in the same tick, so it leaves in one writev;
// completions of a tick are committed in one io_uring submit (UblkQueue batches them).
import type { ReconnectingClient } from '../nbd/reconnecting-client';
import * as N from '../nbd/constants';
import { NbdError, NbdRequestError } from '../nbd/errors';
import { UblkIoOp, type UblkQueue } from '../ublk';
import { Logger } from '../log';
import { EIO, EOPNOTSUPP } from '../errno';
import type { QueueCounters } from '../stats/device-counters';
import { nbdCommand, nbdFlags } from './ops';

/** ublk op -> its slot in the counters (stats/device-counters.ts OPS); only ops nbdCommand maps. */
const COUNTED_OP: Record<number, number> = {
  [UblkIoOp.READ]: 0, [UblkIoOp.WRITE]: 1, [UblkIoOp.FLUSH]: 2, [UblkIoOp.DISCARD]: 3, [UblkIoOp.WRITE_ZEROES]: 4,
};

export class QueueService {
  private readonly exportFlags: number;
  private stoppedResolve!: () => void;
  /** Resolves once the kernel aborted every tag (the device is stopping). */
  readonly stopped: Promise<void>;
  private readonly onDone: (err: NbdError | null, tag: number) => void;

  /** q: the queue, not yet started (its ring may already carry the client's connection). */
  constructor(private readonly q: UblkQueue, private readonly client: ReconnectingClient, private readonly log: Logger,
    private readonly counters: QueueCounters) {
    this.exportFlags = client.info.flags;
    this.stopped = new Promise((r) => { this.stoppedResolve = r; });
    // One closure for all requests: the tag travels as the request's context.
    this.onDone = (err, tag) => {
      if (err === null) {
        const op = q.op(tag);
        const bytes = op === UblkIoOp.READ || op === UblkIoOp.WRITE ? q.length(tag) : 0;
        this.counters.end(tag, bytes, 0);
        q.complete(tag, bytes);
        return;
      }
      // A refused request keeps its errno (ENOSPC stays "no space"); a lost connection is EIO.
      const errno = err instanceof NbdRequestError ? err.errno : EIO;
      this.counters.end(tag, 0, errno);
      this.log.debug({ err, tag, op: q.op(tag), offset: q.offset(tag), length: q.length(tag) }, 'request failed');
      q.complete(tag, -errno);
    };
  }

  start(): void {
    this.q.start({
      request: (tag) => this.request(tag),
      stopped: () => {
        this.q.close();
        this.stoppedResolve();
      },
      error: (err, tag) => this.log.error({ err, tag }, 'ublk queue error'),
    });
  }

  private request(tag: number): void {
    const q = this.q;
    const op = q.op(tag);
    const cmd = nbdCommand(op);
    if (cmd < 0) {
      q.complete(tag, -EOPNOTSUPP);
      return;
    }
    const flags = nbdFlags(op, q.flags(tag), this.exportFlags);
    this.counters.begin(tag, COUNTED_OP[op] as number);
    switch (cmd) {
      case N.Cmd.READ: {
        const len = q.length(tag);
        this.client.submit({ type: cmd, flags, offset: q.offset(tag), length: len, into: q.buffer(tag) }, tag, this.onDone);
        return;
      }
      case N.Cmd.WRITE: {
        // A view of the tag's buffer, not a copy: the kernel keeps the data there until commit.
        const data = q.data(tag);
        this.client.submit({ type: cmd, flags, offset: q.offset(tag), length: data.length, data }, tag, this.onDone);
        return;
      }
      case N.Cmd.FLUSH:
        // The kernel sends FLUSH with start_sector all ones: offset and length are not used.
        this.client.submit({ type: cmd }, tag, this.onDone);
        return;
      default:
        this.client.submit({ type: cmd, flags, offset: q.offset(tag), length: q.length(tag) }, tag, this.onDone);
    }
  }
}
