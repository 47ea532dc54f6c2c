// One client connection of the NBD server: fixed-newstyle handshake, then transmission.
// Bytes are parsed as they arrive (any split is fine); requests run concurrently against
// the store and replies go out as each finishes, so they may leave out of order.
// A malformed stream closes this connection only; a refused request gets an error reply.
import { Duplex } from 'stream';
import { Socket } from 'net';
import * as C from '../nbd/constants';
import * as codec from '../nbd/codec';
import { ByteQueue } from '../nbd/byte-queue';
import { Logger } from '../log';
import { isPooledSize, releaseReplyBuffer, takeReplyBuffer } from './reply-buffers';
import { Store } from './store';
import { ServerTls, startServerTls } from './tls';
import { ExportLimits, toNbdErrno, validateRequest } from './validate';

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
  /** Requests in flight before the connection stops reading (back-pressure). */
  maxInFlight?: number;
  /** TLS offered (on) or required (require); absent: NBD_OPT_STARTTLS is refused. */
  tls?: ServerTls;
}

const enum State {
  ClientFlags,
  OptionHeader,
  OptionData,
  StartTls,
  RequestHeader,
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
  private inFlight = 0;
  private paused = false;
  private draining = false;
  private corked = false;
  private secure = false;
  private readonly maxInFlight: number;
  private readonly log: Logger;
  readonly closed: Promise<void>;

  constructor(private sock: Duplex, private readonly opts: ConnectionOptions) {
    this.log = opts.log;
    this.maxInFlight = opts.maxInFlight ?? 256;
    this.closed = new Promise((resolve) => sock.once('close', () => resolve()));
    this.attach(sock);
    sock.write(codec.encodeGreeting(HANDSHAKE_FLAGS));
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

  /** Server shutdown: no new requests, in-flight ones finish and are answered, then close. */
  shutdown(): Promise<void> {
    this.draining = true;
    if (this.state !== State.RequestHeader && this.state !== State.RequestPayload) {
      this.sock.destroy();
    } else {
      this.sock.pause();
      this.paused = true;
      this.state = State.Closing;
      this.endWhenIdle();
    }
    return this.closed;
  }

  private pump(): void {
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
          if (h.type === C.Cmd.WRITE) {
            // The payload must be read to stay in step even if the write is refused; one
            // larger than the protocol's maximum is not worth buffering.
            if (h.length > C.MAX_PAYLOAD_BYTES) return this.fail(`write of ${h.length} bytes exceeds the maximum payload`);
            this.request = h;
            this.state = State.RequestPayload;
            break;
          }
          this.dispatch(h, null);
          break;
        }
        case State.RequestPayload: {
          const h = this.request as codec.RequestHeader;
          if (this.q.length < h.length) return;
          const payload = this.q.takeChunks(h.length);
          this.request = undefined;
          this.state = State.RequestHeader;
          this.dispatch(h, payload);
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
        this.sock.write(codec.encodeExportNameReply(exp.store.size, transmissionFlags(exp.store), this.noZeroes));
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
    this.sock.write(codec.encodeOptionReply(option, type, body));
  }

  private enterTransmission(exp: Export): void {
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

  private dispatch(h: codec.RequestHeader, payload: Buffer[] | null): void {
    const store = (this.exp as Export).store;
    if (h.type === C.Cmd.DISC) {
      this.state = State.Closing;
      this.endWhenIdle();
      return;
    }
    if (this.draining) return this.sendError(h, C.NBD_ESHUTDOWN);
    const errno = validateRequest(h.type, h.flags, h.offset, h.length, this.limits as ExportLimits);
    if (errno !== 0) return this.sendError(h, errno);
    this.inFlight++;
    if (this.inFlight >= this.maxInFlight && !this.paused) {
      this.paused = true;
      this.sock.pause();
    }
    const fua = (h.flags & C.CMD_FLAG_FUA) !== 0;
    const done = (err: Error | null): void => this.finish(h, err, null);
    switch (h.type) {
      case C.Cmd.READ: {
        const out = takeReplyBuffer(C.SIMPLE_REPLY_BYTES + h.length);
        store.read(out, C.SIMPLE_REPLY_BYTES, h.length, h.offset, (err) => this.finish(h, err, out));
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

  private finish(h: codec.RequestHeader, err: Error | null, readBuf: Buffer | null): void {
    this.inFlight--;
    if (err) {
      this.log.warn({ err, cmd: C.CMD_NAMES[h.type], offset: h.offset, length: h.length }, 'store error');
      this.sendError(h, toNbdErrno(err));
      if (readBuf) releaseReplyBuffer(readBuf);
    } else if (readBuf) {
      codec.writeSimpleReplyHeader(readBuf, 0, 0, h.cookieHi, h.cookieLo);
      this.send(readBuf);
    } else {
      const b = Buffer.allocUnsafe(C.SIMPLE_REPLY_BYTES);
      codec.writeSimpleReplyHeader(b, 0, 0, h.cookieHi, h.cookieLo);
      this.send(b);
    }
    if (this.state === State.Closing) return this.endWhenIdle();
    if (this.paused && this.inFlight < this.maxInFlight / 2) {
      this.paused = false;
      this.sock.resume();
      this.pump();
    }
  }

  private sendError(h: codec.RequestHeader, errno: number): void {
    const b = Buffer.allocUnsafe(C.SIMPLE_REPLY_BYTES);
    codec.writeSimpleReplyHeader(b, 0, errno, h.cookieHi, h.cookieLo);
    this.send(b);
  }

  /**
   * Replies of one tick leave in one writev: the socket is corked until the tick's end.
   * A large read reply's buffer goes back to the pool once the socket has taken it.
   */
  private send(b: Buffer): void {
    if (this.sock.destroyed || this.sock.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(uncork, this);
    }
    if (isPooledSize(b.length)) this.sock.write(b, () => releaseReplyBuffer(b));
    else this.sock.write(b);
  }

  /** From nextTick (see send). */
  flushReplies(): void {
    this.corked = false;
    this.sock.uncork();
  }

  private endWhenIdle(): void {
    if (this.inFlight !== 0 || this.sock.writableEnded) return;
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
    this.q.clear();
    this.sock.destroy();
  }
}

function uncork(c: ServerConnection): void {
  c.flushReplies();
}
