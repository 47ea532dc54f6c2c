// One table of NBD requests, shared by a client and every connection it makes: a request
// is booked once, when submitted, and moves pending -> sent -> done (freed). A connection
// only speaks the protocol: it sends a pending request (pending -> sent), matches a reply
// to it by cookie, and hands the outcome to the table's owner, who finishes the request or,
// when the connection is lost, puts it back to pending for the next connection (undici's
// queue does the same with its running requests).
//
// The cookie is the request's index in the table (low 32 bits) and a generation bumped on
// every reuse of that index (high 32 bits), so a stale or forged reply cannot complete the
// wrong request.
import * as C from './constants';
import type { NbdError } from './errors';

/** Completion of one request: err is null on success. */
export type RequestCallback<T> = (err: NbdError | null, ctx: T) => void;

/** What a request asks of the server. */
export interface NbdOp {
  /** An NBD_CMD_* value. */
  type: number;
  /** NBD_CMD_FLAG_* bits (default 0). */
  flags?: number;
  offset?: number;
  length?: number;
  /** WRITE: the payload, sent as it is (it must not change until the callback). */
  data?: Buffer | null;
  /** READ: where the data lands, at intoOffset. */
  into?: Buffer | null;
  intoOffset?: number;
}

export const enum RequestState {
  /** In the table, not on any connection. */
  Pending,
  /** Written to a connection (owner: `conn`), no reply yet. */
  Sent,
  /** Finished: the slot is free for reuse. */
  Done,
}

export class NbdRequest {
  /** Cookie low half: the slot in the table. */
  readonly idx: number;
  /** Cookie high half: bumped on every reuse of the slot. */
  gen = 0;
  state = RequestState.Done;
  /** Submission order: resends and failures go oldest first. */
  seq = 0;
  type = 0;
  flags = 0;
  offset = 0;
  length = 0;
  data: Buffer | null = null;
  into: Buffer | null = null;
  intoOffset = 0;
  /** The connection it was sent on (while Sent). */
  conn: object | null = null;
  /** The owner's clock when it was sent (the reconnecting client's timeout ticks). */
  sentAt = 0;
  ctx: unknown = null;
  cb: RequestCallback<unknown> | null = null;
  /** Its NBD request header, written once per send. */
  readonly header = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);

  constructor(idx: number) {
    this.idx = idx;
  }
}

export class RequestTable {
  private readonly slots: NbdRequest[] = [];
  private readonly free: number[] = [];
  private live = 0;
  private seq = 0;

  /** Requests submitted and not yet finished (pending or sent). */
  get size(): number { return this.live; }

  /** Books a new pending request. */
  add<T>(op: NbdOp, ctx: T, cb: RequestCallback<T>): NbdRequest {
    let idx = this.free.pop();
    if (idx === undefined) {
      idx = this.slots.length;
      this.slots.push(new NbdRequest(idx));
    }
    const r = this.slots[idx] as NbdRequest;
    r.gen = (r.gen + 1) >>> 0;
    r.state = RequestState.Pending;
    r.seq = this.seq++;
    r.type = op.type;
    r.flags = op.flags ?? 0;
    r.offset = op.offset ?? 0;
    r.length = op.length ?? 0;
    r.data = op.data ?? null;
    r.into = op.into ?? null;
    r.intoOffset = op.intoOffset ?? 0;
    r.conn = null;
    r.ctx = ctx;
    r.cb = cb as RequestCallback<unknown>;
    this.live++;
    return r;
  }

  /** The sent request a reply's cookie names, if any. */
  sent(gen: number, idx: number): NbdRequest | undefined {
    const r = this.slots[idx];
    return r !== undefined && r.state === RequestState.Sent && r.gen === gen ? r : undefined;
  }

  /** Done: frees the slot, then runs the callback (once). */
  finish(r: NbdRequest, err: NbdError | null): void {
    if (r.state === RequestState.Done) return;
    const cb = r.cb as RequestCallback<unknown>;
    const ctx = r.ctx;
    r.state = RequestState.Done;
    r.cb = null;
    r.ctx = null;
    r.data = null;
    r.into = null;
    r.conn = null;
    this.live--;
    this.free.push(r.idx);
    cb(err, ctx);
  }

  /** Live requests matching `pick`, oldest first: a snapshot, safe to finish or resend while walking it. */
  list(pick: (r: NbdRequest) => boolean): NbdRequest[] {
    const out: NbdRequest[] = [];
    for (const r of this.slots) if (r.state !== RequestState.Done && pick(r)) out.push(r);
    return out.sort((a, b) => a.seq - b.seq);
  }

  /** Whether any live request matches (no snapshot: for the timeout scan). */
  some(pick: (r: NbdRequest) => boolean): boolean {
    for (const r of this.slots) if (r.state !== RequestState.Done && pick(r)) return true;
    return false;
  }
}
