// An NBD client that rides out connection loss. Its requests live in one table
// (request.ts) shared by every connection it makes; requests without a reply are kept: a
// lost connection (socket error, EOF, a protocol violation, ESHUTDOWN, or no reply within
// the request timeout) is reconnected with backoff, the export is checked to be the same
// (size and flags: a different export must not receive these writes), and every request
// without a reply is sent again in its original order, with its flags. Callers see a pause.
// Only after `failAfterMs` of disconnection do waiting and new requests fail; reconnecting
// goes on, and once the store is back requests are served again. A client can also start
// disconnected, from an export it already knows (connectInBackground): its first
// connection is then made by the same loop, with the same backoff and fail-after.
//
// Re-sending is safe because NBD requests are idempotent: a write that reached the store
// before the connection broke writes the same bytes again; FLUSH covers every write
// acknowledged before it, on whatever connection (the server's multi-conn guarantee, or a
// single connection).
import { EventEmitter } from 'events';
import { NbdClient, type ConnectOptions, type ExportInfo, type RequestOwner } from './client';
import * as C from './constants';
import { NbdConnectionError, NbdError, NbdRequestError } from './errors';
import { RequestState, RequestTable, type NbdOp, type NbdRequest, type RequestCallback } from './request';

export interface ReconnectOptions extends ConnectOptions {
  /** A request without a reply for this long means the connection is stalled (0: never). */
  timeoutMs: number;
  /** While disconnected this long, requests fail instead of waiting (0: at once). */
  failAfterMs: number;
  /** The export must match this (size and flags) on every connection. */
  expect?: ExportInfo;
  /** Backoff between attempts: first and largest delay. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface DisconnectEvent { reason: string; pending: number }
export interface ReconnectEvent { downMs: number; attempts: number; resent: number }
/** The first connection of a client that started disconnected. */
export interface ConnectEvent { waitedMs: number; attempts: number; sent: number }

const enum State { Connected, Reconnecting, Failed, Closed }

const TICK_MS = 500;

/** Backoff between attempts to reach a lost store, doubling from min to max (ms). */
const RECONNECT_BACKOFF_MS = { min: 100, max: 2000 } as const;

/** Options of a connection that the reconnect path never waits on for long. */
const HANDSHAKE_TIMEOUT_MS = 10_000;

export class ReconnectingClient extends EventEmitter {
  /** The current connection; null until the first one of a client started disconnected. */
  private client: NbdClient | null;
  private readonly opts: ReconnectOptions;
  private readonly expect: ExportInfo;
  private state = State.Connected;
  private readonly table = new RequestTable();
  /** What each connection reports to: this client's table and reply policy. */
  private readonly owner: RequestOwner;
  /** Timer ticks: a request's sentAt, for the request timeout. */
  private tick = 0;
  private downSince = 0;
  private failTimer: NodeJS.Timeout | undefined;
  private readonly ticker: NodeJS.Timeout;
  private shuttingDown = false;

  private constructor(client: NbdClient | null, opts: ReconnectOptions, expect: ExportInfo) {
    super();
    this.client = client;
    this.opts = opts;
    this.expect = expect;
    this.owner = { table: this.table, replied: (r, err) => this.replied(r, err) };
    if (client) {
      client.adopt(this.owner);
      this.watch(client);
    } else {
      this.state = State.Reconnecting;
      this.downSince = Date.now();
      // A timer even at 0 ms: the caller listens for 'give-up' once this returns.
      this.armFailAfter();
      void this.reconnectLoop();
    }
    const timeoutTicks = Math.ceil(opts.timeoutMs / TICK_MS);
    this.ticker = setInterval(() => {
      this.tick++;
      if (timeoutTicks > 0 && this.state === State.Connected) this.checkTimeouts(timeoutTicks);
    }, TICK_MS);
    this.ticker.unref();
  }

  /** The first connection: failures here are reported, not retried (the caller decides). */
  static async connect(opts: ReconnectOptions): Promise<ReconnectingClient> {
    const client = await NbdClient.connect(opts);
    if (opts.expect) {
      const diff = exportDiff(opts.expect, client.info);
      if (diff) {
        client.destroy();
        throw new NbdConnectionError(diff);
      }
    }
    return new ReconnectingClient(client, opts, opts.expect ?? client.info);
  }

  /**
   * A client that starts disconnected from an export it already knows (what an earlier
   * connection found): it takes requests at once, and connects in the background exactly as
   * it reconnects (backoff, the export checked against `expect`, fail-after counted from
   * now). Emits 'connect' (ConnectEvent) once the first connection serves.
   */
  static connectInBackground(opts: ReconnectOptions & { expect: ExportInfo }): ReconnectingClient {
    return new ReconnectingClient(null, opts, opts.expect);
  }

  get info(): ExportInfo { return this.expect; }
  get connected(): boolean { return this.state === State.Connected; }
  get pending(): number { return this.table.size; }
  /** How the current connection moves its bytes ('stream' or 'ring'; 'none' before the first). */
  get transportKind(): string { return this.client?.transportKind ?? 'none'; }

  /**
   * Submits one request (see NbdClient.submit for `op`); the callback runs once, after the
   * reply, or with an NbdConnectionError once the store has been unreachable for failAfterMs.
   */
  submit<T>(op: NbdOp, ctx: T, cb: RequestCallback<T>): void {
    if (this.state === State.Closed || this.state === State.Failed) {
      const err = new NbdConnectionError(this.state === State.Closed ? 'client closed' : 'the store is unreachable');
      queueMicrotask(() => cb(err, ctx));
      return;
    }
    const r = this.table.add(op, ctx, cb);
    if (this.state === State.Connected) this.send(r);
  }

  /**
   * The owner is going away: requests still wait for a live connection to finish, but
   * nothing waits for a reconnect any more (waiting and later ones fail at once).
   */
  shutdown(): void {
    this.shuttingDown = true;
    if (this.state === State.Reconnecting) this.giveUp('shutting down while the store is unreachable');
  }

  /** Waits for pending requests (failing them if disconnected), then disconnects cleanly. */
  async close(): Promise<void> {
    this.shutdown();
    while (this.table.size > 0 && this.state === State.Connected) await new Promise((r) => setTimeout(r, 10));
    this.state = State.Closed;
    this.failAll(new NbdConnectionError('client closed'));
    clearInterval(this.ticker);
    if (this.failTimer) clearTimeout(this.failTimer);
    await this.client?.close().catch(() => undefined);
    this.client?.destroy();
  }

  private send(r: NbdRequest): void {
    r.sentAt = this.tick;
    // Only while connected, so there is a connection.
    (this.client as NbdClient).send(r);
  }

  private replied(r: NbdRequest, err: NbdError | null): void {
    if (r.state === RequestState.Done) return;
    if (err === null || (err instanceof NbdRequestError && err.errno !== C.NBD_ESHUTDOWN)) {
      this.table.finish(r, err);
      return;
    }
    // The connection failed under this request, or the server is shutting down (ESHUTDOWN:
    // the spec asks the client to disconnect): back to pending, for the next connection.
    r.state = RequestState.Pending;
    r.conn = null;
    if (this.state === State.Connected) this.lost(err.message);
    else if (this.state !== State.Reconnecting) this.table.finish(r, err);
  }

  private watch(client: NbdClient): void {
    client.once('close', (err: Error) => {
      if (client === this.client && this.state === State.Connected) this.lost(err.message);
    });
  }

  private checkTimeouts(timeoutTicks: number): void {
    // A request sent during tick t has waited between (n - 1) and n ticks at tick t + n:
    // only more than timeoutTicks ticks guarantees the full timeout.
    if (this.table.some((r) => r.state === RequestState.Sent && this.tick - r.sentAt > timeoutTicks)) {
      this.lost(`no reply within ${this.opts.timeoutMs} ms`);
    }
  }

  private lost(reason: string): void {
    if (this.state !== State.Connected) return;
    this.downSince = Date.now();
    const old = this.client as NbdClient;
    if (this.shuttingDown) {
      this.state = State.Failed;
      old.destroy();
      this.failAll(new NbdConnectionError(`connection lost while shutting down: ${reason}`));
      return;
    }
    this.state = State.Reconnecting;
    this.emit('disconnect', { reason, pending: this.table.size } satisfies DisconnectEvent);
    old.destroy(new NbdConnectionError(reason)); // every request on it comes back unsent
    if (this.opts.failAfterMs <= 0) this.giveUp(reason);
    else this.armFailAfter();
    void this.reconnectLoop();
  }

  /** Requests wait for the store for failAfterMs from now, then fail. */
  private armFailAfter(): void {
    const failAfter = this.opts.failAfterMs;
    this.failTimer = setTimeout(() => this.giveUp(`the store has been unreachable for ${failAfter} ms`), failAfter);
  }

  /** Past fail-after: waiting requests fail, new ones fail at once; reconnecting goes on. */
  private giveUp(reason: string): void {
    if (this.state !== State.Reconnecting) return;
    this.state = State.Failed;
    this.emit('give-up', { reason, pending: this.table.size });
    this.failAll(new NbdConnectionError(reason));
  }

  private failAll(err: NbdConnectionError): void {
    for (const r of this.table.list(() => true)) this.table.finish(r, err);
  }

  private async reconnectLoop(): Promise<void> {
    let delay = this.opts.minBackoffMs ?? RECONNECT_BACKOFF_MS.min;
    const maxDelay = this.opts.maxBackoffMs ?? RECONNECT_BACKOFF_MS.max;
    let attempts = 0;
    while (this.state === State.Reconnecting || (this.state === State.Failed && !this.shuttingDown)) {
      attempts++;
      try {
        const c = await NbdClient.connect({ ...this.opts, handshakeTimeoutMs: Math.min(this.opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS) });
        const diff = exportDiff(this.expect, c.info);
        if (diff) {
          c.destroy();
          this.emit('mismatch', { reason: diff });
          throw new NbdConnectionError(diff);
        }
        const now = this.state as State;
        if (now === State.Closed || (now === State.Failed && this.shuttingDown)) {
          c.destroy();
          return;
        }
        c.adopt(this.owner);
        const first = this.client === null;
        this.client = c;
        this.watch(c);
        if (this.failTimer) clearTimeout(this.failTimer);
        this.state = State.Connected;
        // Losing a connection put every request sent on it back to pending (replied()).
        const waiting = this.table.list((r) => r.state === RequestState.Pending);
        for (const r of waiting) this.send(r);
        const downMs = Date.now() - this.downSince;
        if (first) this.emit('connect', { waitedMs: downMs, attempts, sent: waiting.length } satisfies ConnectEvent);
        else this.emit('reconnect', { downMs, attempts, resent: waiting.length } satisfies ReconnectEvent);
        return;
      } catch (err) {
        this.emit('retry', { attempt: attempts, error: (err as Error).message, delayMs: delay });
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, maxDelay);
      }
    }
  }
}

/** Why `got` is not the export `want` (null when it is): a reconnect must find the same disk. */
export function exportDiff(want: ExportInfo, got: ExportInfo): string | null {
  if (want.size !== got.size) return `export size changed from ${want.size} to ${got.size} bytes`;
  const mask = C.TFLAG_READ_ONLY | C.TFLAG_SEND_FLUSH | C.TFLAG_SEND_FUA | C.TFLAG_SEND_TRIM | C.TFLAG_SEND_WRITE_ZEROES;
  if ((want.flags & mask) !== (got.flags & mask)) {
    return `export flags changed from 0x${want.flags.toString(16)} to 0x${got.flags.toString(16)}`;
  }
  return null;
}
