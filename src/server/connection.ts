// One client connection of the NBD server: fixed-newstyle handshake, then transmission.
// Bytes are parsed as they arrive (any split is fine); requests run concurrently against
// the store and replies go out as each finishes, so they may leave out of order.
// A malformed stream closes this connection only; a refused request gets an error reply.
// What a connection holds is bounded in bytes (ServerSettings): each request is admitted
// against the connection's and the server's budgets before it is read further, and every
// byte handed to the socket counts until the socket has taken it.
import { Duplex } from 'stream';
import { Socket } from 'net';
import * as C from '../nbd/constants';
import * as codec from '../nbd/codec';
import { ByteQueue } from '../nbd/byte-queue';
import { Logger } from '../log';
import { ByteBudget } from './byte-budget';
import { isPooledSize, releaseReplyBuffer, ReplyBuffers } from './reply-buffers';
import { ServerSettings, serverSettings } from './settings';
import { Store } from './store/store';
import { ServerTls, startServerTls } from './tls';
import { ExportLimits, toNbdErrno, validateRequest } from './validate';
import type { QueueCounters } from '../stats/device-counters';

export interface Export {
  name: string;
  description?: string;
  store: Store;
}

export interface ConnectionOptions {
  /** Looks an export up by the name a client asked for ('' is the default export). */
  lookup(name: string): Export | undefined;
  list(): Export[];
  log: Logger;
  settings?: ServerSettings;
  /** The server's budget shared by its connections (one of its own when absent). */
  budget?: ByteBudget;
  /** TLS offered (on) or required (require); absent: NBD_OPT_STARTTLS is refused. */
  tls?: ServerTls;
  /** Counts every request that reaches the store, with its latency (stats, metrics). */
  counters?: QueueCounters;
}

/** NBD command -> its slot in the counters (stats/device-counters.ts OPS). */
const COUNTED_OP: Record<number, number> = {
  [C.Cmd.READ]: 0, [C.Cmd.WRITE]: 1, [C.Cmd.FLUSH]: 2, [C.Cmd.TRIM]: 3, [C.Cmd.WRITE_ZEROES]: 4,
};

const enum State {
  ClientFlags,
  OptionHeader,
  OptionData,
  StartTls,
  RequestHeader,
  /** A request header waits for room in the budgets. */
  RequestAdmit,
  RequestPayload,
  Closing,
}

const HANDSHAKE_FLAGS = C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES;
const KNOWN_CLIENT_FLAGS = C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES;
// Advertised in NBD_INFO_BLOCK_SIZE: the store works at byte granularity; 4 KiB is the page
// size, so smaller writes cost a read-modify-write in the page cache.
const MIN_BLOCK = 1;
const PREFERRED_BLOCK = 4096;
// On shutdown, how long a client has to close its side once every reply has been sent.
const SHUTDOWN_LINGER_MS = 5000;
// What a reply in the socket's queue costs besides its bytes: the Buffer object, the
// stream's queue entry and ours. Counted so that a client sending small requests it never
// reads the replies of is bounded too (measured on node 20: 258 bytes of RSS per 16-byte
// reply queued on a socket whose peer does not read, 166 of them JS heap).
const REPLY_OVERHEAD_BYTES = 256;
const REPLY_COST = C.SIMPLE_REPLY_BYTES + REPLY_OVERHEAD_BYTES;
// Replies without data (writes, flushes, trims, zeroes, errors) of one tick are gathered
// and leave as one buffer: one socket write, one charge and one write callback per tick
// instead of a buffer, a write and a callback per reply. With one clock read per tick for
// the counters (parsedAt), this took the connection's own CPU per 4 KiB write at QD32 from
// 673 to 504 ns (bench/connection-cpu.ts). Room for maxInFlight's default of replies; more
// in one tick leave in several buffers.
const GATHERED_REPLIES = 256;

export function transmissionFlags(store: Store): number {
  let f = C.TFLAG_HAS_FLAGS | C.TFLAG_SEND_FLUSH | C.TFLAG_CAN_MULTI_CONN;
  if (store.readOnly) return f | C.TFLAG_READ_ONLY;
  f |= C.TFLAG_SEND_FUA;
  if (store.canTrim) f |= C.TFLAG_SEND_TRIM;
  if (store.canZero) f |= C.TFLAG_SEND_WRITE_ZEROES;
  return f;
}

export class ServerConnection {
  private readonly q = new ByteQueue();
  private state = State.ClientFlags;
  private noZeroes = false;
  private exp: Export | undefined;
  private limits: ExportLimits | undefined;
  private option: codec.OptionHeader | undefined;
  private request: codec.RequestHeader | undefined;
  /** What the request being admitted or received is charged. */
  private requestCost = 0;
  private inFlight = 0;
  /** Nothing more is parsed: closing, or shut down. */
  private paused = false;
  /** Not reading: over a budget until bytes come back. */
  private blocked = false;
  private readonly blockLogged = new Set<string>();
  private pumping = false;
  private draining = false;
  /** The socket is corked and the tick's end (endTick) is queued. */
  private corked = false;
  private tickQueued = false;
  /** Data-less replies of this tick (GATHERED_REPLIES), sent at its end; allocated on first use. */
  private gathered: Buffer | null = null;
  private gatheredBytes = 0;
  private readonly replyBuffers = new ReplyBuffers();
  /**
   * performance.now() shared by what happens together, for the counters: requests parsed
   * from the same bytes arrived together, and replies of one tick leave together. One
   * clock read each instead of one per request (a read costs about 45 ns on node 20, as
   * much as the rest of the counting).
   */
  private parsedAt = -1;
  private repliedAt = -1;
  private secure = false;
  /** Bytes charged to this connection (and to the server's budget). */
  private held = 0;
  private gone = false;
  /**
   * Replies handed to the socket and not yet taken, oldest first: a stream calls write
   * callbacks in order. Across STARTTLS too: the clear-text ACK is taken before the client
   * can start the TLS handshake that any later reply waits for.
   */
  private readonly unsent: (Buffer | undefined)[] = [];
  private unsentHead = 0;
  private readonly handshakeTimer: NodeJS.Timeout;
  private readonly settings: ServerSettings;
  private readonly budget: ByteBudget;
  private readonly log: Logger;
  readonly closed: Promise<void>;

  constructor(private sock: Duplex, private readonly opts: ConnectionOptions) {
    this.log = opts.log;
    this.settings = opts.settings ?? serverSettings();
    this.budget = opts.budget ?? new ByteBudget(this.settings.serverBytes);
    this.handshakeTimer = setTimeout(() => {
      this.fail(`handshake not finished within ${this.settings.handshakeTimeoutMs} ms`, 'info');
    }, this.settings.handshakeTimeoutMs).unref();
    this.closed = new Promise((resolve) => sock.once('close', () => {
      this.gone = true;
      clearTimeout(this.handshakeTimer);
      this.budget.cancel(this.wake);
      this.budget.give(this.held);
      this.held = 0;
      resolve();
    }));
    this.attach(sock);
    this.out(codec.encodeGreeting(HANDSHAKE_FLAGS));
  }

  private readonly onError = (err: Error): void => this.log.debug({ err }, 'socket error');

  private readonly onData = (chunk: Buffer): void => {
    // Nothing sent after DISC, ABORT or a shutdown is acted on; it is read only so that
    // the peer's FIN is seen.
    if (this.state === State.Closing) return;
    this.q.push(chunk);
    this.pump();
  };

  private readonly onEnd = (): void => {
    if (this.state !== State.Closing) this.log.debug('client closed its side');
    this.state = State.Closing;
    this.endWhenIdle();
  };

  private attach(sock: Duplex): void {
    sock.on('error', this.onError);
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
  }

  /** Server shutdown: in-flight requests finish and are answered, new ones refused, then close. */
  shutdown(): Promise<void> {
    this.draining = true;
    if (this.state === State.OptionHeader || this.state === State.OptionData) {
      // proto.md "Termination of the session during option haggling": a server being shut
      // down SHOULD error further options with NBD_REP_ERR_SHUTDOWN (handleOption), and the
      // client then aborts; one that does not is closed after the linger.
      setTimeout(() => this.sock.destroy(), SHUTDOWN_LINGER_MS).unref();
    } else if (this.exp === undefined || this.state === State.Closing) {
      this.sock.destroy();
    } else {
      // proto.md "Terminating the transmission phase": requests in flight are answered,
      // those received meanwhile get NBD_ESHUTDOWN (dispatch), then the server closes.
      this.closeIfDrained();
    }
    return this.closed;
  }

  private closeIfDrained(): void {
    if (!this.draining || this.inFlight !== 0 || this.state === State.Closing) return;
    this.state = State.Closing;
    this.endWhenIdle();
  }

  private pump(): void {
    // A store that completes inline runs finish() from inside dispatch(); the loop below
    // picks up whatever that changed.
    if (this.pumping) return;
    this.pumping = true;
    this.parsedAt = -1;
    try {
      this.parse();
    } finally {
      this.pumping = false;
    }
  }

  private parse(): void {
    while (!this.paused) {
      switch (this.state) {
        case State.ClientFlags: {
          if (this.q.length < 4) return;
          const flags = this.q.take(4).readUInt32BE(0);
          if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) return this.fail(`unknown client flags 0x${flags.toString(16)}`);
          this.noZeroes = (flags & C.FLAG_C_NO_ZEROES) !== 0;
          this.state = State.OptionHeader;
          break;
        }
        case State.OptionHeader: {
          if (this.q.length < codec.OPTION_HEADER_BYTES) return;
          // Option replies count too: a client that never reads them stops being read.
          if (!this.admit(0)) return;
          const h = codec.decodeOptionHeader(this.q.take(codec.OPTION_HEADER_BYTES));
          if (h.magic !== C.IHAVEOPT) return this.fail('bad option magic');
          if (h.length > C.MAX_OPTION_BYTES) return this.fail(`option ${h.option} claims ${h.length} bytes of data`);
          this.option = h;
          this.state = State.OptionData;
          break;
        }
        case State.OptionData: {
          const h = this.option as codec.OptionHeader;
          if (this.q.length < h.length) return;
          this.handleOption(h.option, this.q.take(h.length));
          break;
        }
        case State.RequestHeader: {
          if (this.q.length < C.REQUEST_HEADER_BYTES) return;
          const h = codec.decodeRequestHeader(this.q.take(C.REQUEST_HEADER_BYTES));
          if (h.magic !== C.REQUEST_MAGIC) return this.fail(`bad request magic 0x${h.magic.toString(16)}`);
          // The payload must be read to stay in step even if the write is refused; one
          // larger than the protocol's maximum is not worth buffering.
          if (h.type === C.Cmd.WRITE && h.length > C.MAX_PAYLOAD_BYTES) {
            return this.fail(`write of ${h.length} bytes exceeds the maximum payload`);
          }
          this.request = h;
          this.state = State.RequestAdmit;
          break;
        }
        case State.RequestAdmit: {
          const h = this.request as codec.RequestHeader;
          // Charged before the payload is read or the read buffer allocated: a write whose
          // payload trickles in holds its budget, not more.
          const cost = costOf(h);
          if (!this.admit(cost)) return;
          this.charge(cost);
          this.requestCost = cost;
          if (h.type === C.Cmd.WRITE) {
            this.state = State.RequestPayload;
            break;
          }
          this.request = undefined;
          this.state = State.RequestHeader;
          this.dispatch(h, null, cost);
          break;
        }
        case State.RequestPayload: {
          const h = this.request as codec.RequestHeader;
          if (this.q.length < h.length) return;
          const payload = this.q.takeChunks(h.length);
          this.request = undefined;
          this.state = State.RequestHeader;
          this.dispatch(h, payload, this.requestCost);
          break;
        }
        case State.StartTls:
          return;
        case State.Closing:
          this.q.clear();
          return;
      }
    }
  }

  private handleOption(option: number, data: Buffer): void {
    this.state = State.OptionHeader;
    if (this.draining && option !== C.Opt.ABORT) {
      // EXPORT_NAME has no error reply: the session ends.
      if (option === C.Opt.EXPORT_NAME) return this.fail('EXPORT_NAME while shutting down', 'info');
      return this.reply(option, C.REP_ERR_SHUTDOWN, 'the server is shutting down');
    }
    if (this.opts.tls?.mode === 'require' && !this.secure && option !== C.Opt.STARTTLS && option !== C.Opt.ABORT) {
      // proto.md "FORCEDTLS mode": every other option is refused until TLS is on, except
      // EXPORT_NAME, which has no error reply: the session ends.
      if (option === C.Opt.EXPORT_NAME) return this.fail('EXPORT_NAME before STARTTLS on a server that requires TLS', 'info');
      return this.reply(option, C.REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
    }
    switch (option) {
      case C.Opt.EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = this.opts.lookup(name);
        // No error reply exists for EXPORT_NAME: the spec says to disconnect.
        if (!exp) return this.fail(`unknown export "${name}" requested with EXPORT_NAME`, 'info');
        this.out(codec.encodeExportNameReply(exp.store.size, transmissionFlags(exp.store), this.noZeroes));
        return this.enterTransmission(exp);
      }
      case C.Opt.ABORT:
        this.reply(option, C.REP_ACK);
        this.state = State.Closing;
        this.sock.end();
        return;
      case C.Opt.LIST:
        if (data.length !== 0) return this.reply(option, C.REP_ERR_INVALID, 'LIST takes no data');
        for (const e of this.opts.list()) this.reply(option, C.REP_SERVER, codec.encodeRepServer(e.name));
        return this.reply(option, C.REP_ACK);
      case C.Opt.INFO:
      case C.Opt.GO: {
        const go = codec.decodeGoData(data);
        if (!go) return this.reply(option, C.REP_ERR_INVALID, 'malformed request');
        const exp = this.opts.lookup(go.name);
        if (!exp) return this.reply(option, C.REP_ERR_UNKNOWN, `unknown export "${go.name}"`);
        this.reply(option, C.REP_INFO, codec.encodeInfoExport(exp.store.size, transmissionFlags(exp.store)));
        if (go.infoRequests.includes(C.INFO_NAME)) this.reply(option, C.REP_INFO, codec.encodeInfoName(exp.name));
        if (go.infoRequests.includes(C.INFO_BLOCK_SIZE)) {
          this.reply(option, C.REP_INFO, codec.encodeInfoBlockSize(MIN_BLOCK, PREFERRED_BLOCK, C.MAX_PAYLOAD_BYTES));
        }
        this.reply(option, C.REP_ACK);
        if (option === C.Opt.GO) this.enterTransmission(exp);
        return;
      }
      case C.Opt.STARTTLS:
        return this.startTls(data);
      default:
        // STRUCTURED_REPLY, meta contexts, extended headers, anything unknown.
        return this.reply(option, C.REP_ERR_UNSUP);
    }
  }

  /** NBD_OPT_STARTTLS (proto.md "TLS support"): the ACK, then a TLS handshake on the same socket. */
  private startTls(data: Buffer): void {
    const cfg = this.opts.tls;
    if (!cfg || !(this.sock instanceof Socket)) return this.reply(C.Opt.STARTTLS, C.REP_ERR_POLICY, 'TLS is off on this server');
    if (this.secure) return this.reply(C.Opt.STARTTLS, C.REP_ERR_INVALID, 'TLS is already on');
    if (data.length !== 0) return this.reply(C.Opt.STARTTLS, C.REP_ERR_INVALID, 'STARTTLS takes no data');
    // The client may send nothing until it has our ACK. Bytes already here were sent in
    // clear text and must not be taken as if they came through TLS (the STARTTLS command
    // injection of CVE-2011-0411).
    if (this.q.length !== 0) return this.fail('data sent after STARTTLS before its reply');
    this.reply(C.Opt.STARTTLS, C.REP_ACK);
    this.state = State.StartTls;
    const raw = this.sock;
    raw.off('data', this.onData);
    raw.off('end', this.onEnd);
    startServerTls(raw, cfg).then((sock) => {
      if (this.state !== State.StartTls) return void sock.destroy(); // shut down meanwhile
      this.sock = sock;
      this.attach(sock);
      sock.once('close', () => raw.destroy());
      this.secure = true;
      // proto.md NBD_OPT_STARTTLS: no negotiation state survives STARTTLS. This server keeps
      // none from options (structured replies and meta contexts are refused), so the options
      // simply start afresh; the client flags belong to the greeting, not to negotiation.
      this.state = State.OptionHeader;
      this.log.debug({ protocol: sock.getProtocol(), cipher: sock.getCipher()?.name, kind: cfg.kind }, 'TLS on');
      this.pump();
    }, (err: Error) => this.fail(`TLS handshake failed: ${err.message}`, 'info'));
  }

  private reply(option: number, type: number, data?: Buffer | string): void {
    const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.out(codec.encodeOptionReply(option, type, body));
  }

  /**
   * Whether a request costing `cost` bytes may go ahead. If not, the connection stops
   * reading (TCP then holds the client back) until bytes come back: its own replies being
   * taken or its requests finishing, or, for the server's budget, anyone's.
   */
  private admit(cost: number): boolean {
    const s = this.settings;
    let over: string | undefined;
    if (this.inFlight >= s.maxInFlight) {
      over = 'requests';
    } else if (this.held !== 0 && this.held + cost > s.connectionBytes) {
      over = 'connection';
    } else if (this.held + cost > s.reserveBytes && this.budget.used !== 0 && !this.budget.fits(cost)) {
      over = 'server';
      this.budget.wait(this.wake, cost);
    }
    if (over === undefined) {
      if (this.blocked) {
        this.blocked = false;
        this.sock.resume();
      }
      return true;
    }
    if (!this.blocked) {
      this.blocked = true;
      this.sock.pause();
    }
    // Once per connection and cause, never per request.
    if (!this.blockLogged.has(over)) {
      this.blockLogged.add(over);
      const fields = { held: this.held, inFlight: this.inFlight, serverHeld: this.budget.used };
      if (over === 'requests') this.log.debug({ ...fields, limit: s.maxInFlight }, 'request limit reached: not reading until requests finish');
      else if (over === 'connection') this.log.info({ ...fields, limit: s.connectionBytes }, 'connection memory budget reached: not reading until its replies drain');
      else this.log.warn({ ...fields, limit: s.serverBytes }, 'server memory budget reached: connection not read until memory comes back');
    }
    return false;
  }

  private charge(n: number): void {
    this.held += n;
    this.budget.take(n);
  }

  private release(n: number): void {
    if (this.gone) return;
    this.held -= n;
    this.budget.give(n);
    if (this.blocked) this.pump();
  }

  /** From the server's budget once bytes came back. */
  private readonly wake = (): void => {
    if (this.blocked && !this.gone) this.pump();
  };

  private enterTransmission(exp: Export): void {
    clearTimeout(this.handshakeTimer);
    this.exp = exp;
    const s = exp.store;
    this.limits = {
      size: s.size, readOnly: s.readOnly, canTrim: s.canTrim, canZero: s.canZero,
      sendFua: (transmissionFlags(s) & C.TFLAG_SEND_FUA) !== 0, maxPayload: C.MAX_PAYLOAD_BYTES,
    };
    this.state = State.RequestHeader;
    if (this.sock instanceof Socket) this.sock.setNoDelay(true);
    this.log.debug({ export: exp.name }, 'transmission');
  }

  private dispatch(h: codec.RequestHeader, payload: Buffer[] | null, cost: number): void {
    const store = (this.exp as Export).store;
    if (h.type === C.Cmd.DISC) {
      this.release(cost);
      this.state = State.Closing;
      this.endWhenIdle();
      return;
    }
    if (this.draining) return this.sendError(h, C.NBD_ESHUTDOWN, cost);
    const errno = validateRequest(h.type, h.flags, h.offset, h.length, this.limits as ExportLimits);
    if (errno !== 0) return this.sendError(h, errno, cost);
    this.inFlight++;
    const counters = this.opts.counters;
    let began = 0;
    if (counters !== undefined) {
      if (this.parsedAt < 0) this.parsedAt = performance.now();
      began = counters.start(this.parsedAt);
    }
    const fua = (h.flags & C.CMD_FLAG_FUA) !== 0;
    const done = (err: Error | null): void => this.finish(h, err, null, cost, began);
    switch (h.type) {
      case C.Cmd.READ: {
        const out = this.replyBuffers.take(C.SIMPLE_REPLY_BYTES + h.length);
        store.read(out, C.SIMPLE_REPLY_BYTES, h.length, h.offset, (err) => this.finish(h, err, out, cost, began));
        return;
      }
      case C.Cmd.WRITE:
        return store.write(payload as Buffer[], h.offset, fua, done);
      case C.Cmd.FLUSH:
        return store.flush(done);
      case C.Cmd.TRIM:
        return store.trim(h.offset, h.length, fua, done);
      case C.Cmd.WRITE_ZEROES:
        return store.writeZeroes(h.offset, h.length, (h.flags & C.CMD_FLAG_NO_HOLE) !== 0, fua, done);
    }
  }

  /** The reply is charged as it is handed to the socket; then the request's charge comes back. */
  private finish(h: codec.RequestHeader, err: Error | null, readBuf: Buffer | null, cost: number, began: number): void {
    this.inFlight--;
    const counters = this.opts.counters;
    if (counters !== undefined) {
      if (this.repliedAt < 0) {
        this.repliedAt = performance.now();
        this.queueTickEnd();
      }
      counters.record(COUNTED_OP[h.type] as number, began, err ? 0 : h.type === C.Cmd.READ || h.type === C.Cmd.WRITE ? h.length : 0,
        err ? toNbdErrno(err) : 0, this.repliedAt);
    }
    if (err) {
      this.log.warn({ err, cmd: C.CMD_NAMES[h.type], offset: h.offset, length: h.length }, 'store error');
      if (readBuf) releaseReplyBuffer(readBuf);
      this.sendError(h, toNbdErrno(err), cost);
    } else if (readBuf !== null) {
      codec.writeSimpleReplyHeader(readBuf, 0, 0, h.cookieHi, h.cookieLo);
      this.send(readBuf);
      this.release(cost);
    } else {
      this.gather(0, h);
      this.release(cost);
    }
    if (this.state === State.Closing) this.endWhenIdle();
    else this.closeIfDrained();
  }

  private sendError(h: codec.RequestHeader, errno: number, cost: number): void {
    this.gather(errno, h);
    this.release(cost);
  }

  /** Replies of one tick leave in one writev: the socket is corked until the tick's end. */
  private send(b: Buffer): void {
    if (!this.corked && !this.sock.destroyed && !this.sock.writableEnded) {
      this.corked = true;
      this.sock.cork();
      this.queueTickEnd();
    }
    this.out(b);
  }

  /**
   * A reply without data, sent with the tick's others at its end. Until then it sits in a
   * buffer of fixed size, so it is charged once it is handed to the socket (out).
   */
  private gather(errno: number, h: codec.RequestHeader): void {
    if (this.sock.destroyed || this.sock.writableEnded) return;
    const b = this.gathered ??= Buffer.allocUnsafe(GATHERED_REPLIES * C.SIMPLE_REPLY_BYTES);
    codec.writeSimpleReplyHeader(b, this.gatheredBytes, errno, h.cookieHi, h.cookieLo);
    this.gatheredBytes += C.SIMPLE_REPLY_BYTES;
    if (this.gatheredBytes === b.length) this.send(this.takeGathered());
    else this.queueTickEnd();
  }

  /**
   * The gathered replies in a buffer of their own: a copy of at most 4 KiB, so that the
   * gathering buffer is free again at once while the socket may hold this one for long.
   * Cut from this connection's own slab: a reply a client never reads keeps what it was
   * cut from alive (reply-buffers.ts).
   */
  private takeGathered(): Buffer {
    const n = this.gatheredBytes;
    this.gatheredBytes = 0;
    const b = this.replyBuffers.take(n);
    const g = this.gathered as Buffer;
    // TypedArray.set: Buffer.copy's argument checks cost more than these few bytes.
    b.set(n === g.length ? g : g.subarray(0, n));
    return b;
  }

  private queueTickEnd(): void {
    if (this.tickQueued) return;
    this.tickQueued = true;
    process.nextTick(endTick, this);
  }

  /**
   * Everything the connection sends goes through here: charged until the socket has taken
   * it (its write callback), and a large read reply's buffer then goes back to the pool.
   */
  private out(b: Buffer): void {
    if (this.sock.destroyed || this.sock.writableEnded) return;
    this.charge(b.length + REPLY_OVERHEAD_BYTES);
    this.unsent.push(b);
    this.sock.write(b, this.written);
  }

  private readonly written = (err?: Error | null): void => {
    const b = this.unsent[this.unsentHead] as Buffer;
    this.unsent[this.unsentHead++] = undefined;
    if (this.unsentHead === this.unsent.length) {
      this.unsent.length = 0;
      this.unsentHead = 0;
    } else if (this.unsentHead >= 1024 && this.unsentHead * 2 >= this.unsent.length) {
      this.unsent.splice(0, this.unsentHead);
      this.unsentHead = 0;
    }
    // After an error the socket is gone and its callbacks may not come in order: the buffer
    // is left to the garbage collector rather than risk pooling one still being sent.
    if (err || this.gone) return;
    if (isPooledSize(b.length)) releaseReplyBuffer(b);
    this.release(b.length + REPLY_OVERHEAD_BYTES);
  };

  /** From nextTick (queueTickEnd): the tick's replies leave. */
  endTick(): void {
    this.tickQueued = false;
    this.repliedAt = -1;
    // Corked, it joins the tick's read replies in one writev.
    if (this.gatheredBytes !== 0) this.out(this.takeGathered());
    if (this.corked) {
      this.corked = false;
      this.sock.uncork();
    }
  }

  private endWhenIdle(): void {
    if (this.inFlight !== 0 || this.sock.writableEnded) return;
    if (this.gatheredBytes !== 0) this.out(this.takeGathered());
    this.sock.end();
    // 'close' needs the peer's FIN, which a paused socket never reads; a paused socket also
    // stops holding the event loop open, so shutdown() would never resolve and the process
    // would simply exit with the stores unflushed.
    this.paused = false;
    this.sock.resume();
    if (this.draining) {
      // A peer that never closes its side must not hold the server's shutdown forever.
      setTimeout(() => this.sock.destroy(), SHUTDOWN_LINGER_MS).unref();
    }
  }

  private fail(reason: string, level: 'warn' | 'info' = 'warn'): void {
    this.log[level]({ reason }, 'closing connection');
    this.state = State.Closing;
    this.paused = true;
    this.blocked = false;
    this.q.clear();
    this.sock.destroy();
  }
}

function endTick(c: ServerConnection): void {
  c.endTick();
}

/** What a request is charged from admission to its reply: its payload or read data, and the reply. */
function costOf(h: codec.RequestHeader): number {
  const data = h.type === C.Cmd.WRITE || (h.type === C.Cmd.READ && h.length <= C.MAX_PAYLOAD_BYTES) ? h.length : 0;
  return data + REPLY_COST;
}
