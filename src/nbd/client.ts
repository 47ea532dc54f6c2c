// A pipelined NBD client over one connection: any number of requests in flight, matched
// to replies by cookie (see request.ts; the requests live in a RequestTable, the
// connection's own or its owner's). The handshake runs here over a Node socket; then a
// transport (transport.ts) moves the bytes and this class keeps every protocol decision.
import { EventEmitter } from 'events';
import * as net from 'net';
import * as tls from 'tls';
import * as C from './constants';
import * as codec from './codec';
import { ByteQueue } from './byte-queue';
import { clientTlsOptions } from './client-tls';
import { NbdConnectionError, NbdError, NbdHandshakeError, NbdProtocolError, NbdRequestError } from './errors';
import { RequestState, RequestTable, type NbdOp, type NbdRequest, type RequestCallback } from './request';
import { TlsFileError } from './tls-files';
import { RECV_BUFFER_BYTES, StreamTransport } from './stream-transport';
import type { NbdTransport, TransportFactory, TransportOwner } from './transport';
import type { NbdEndpoint, NbdTls } from './uri';

/** Where an export is served: all a connection to it needs (an NBD URI, parsed). */
export type NbdRemote = NbdEndpoint;

export interface ConnectOptions {
  host: string;
  port: number;
  /** Export name; '' (the default) is the server's default export. */
  exportName?: string;
  /** Connect plus handshake must finish within this (default 15 s). */
  handshakeTimeoutMs?: number;
  /** A unix socket path: connect there instead of host:port ('' or absent: TCP). */
  socket?: string;
  /** TLS required (nbds): STARTTLS is the first option, and nothing goes out in clear text if it fails. */
  tls?: NbdTls | null;
  /** The transport of a clear-text connection after its handshake (default: the stream transport). */
  makeTransport?: TransportFactory;
}

export interface ExportInfo {
  name: string;
  size: number;
  flags: number;
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

export type { NbdOp, RequestCallback } from './request';

/**
 * Where a connection's requests come from and where their outcomes go. The connection
 * sends requests of `table` and reports each one it sent exactly once: with the server's
 * reply (null or an NbdRequestError), or with the NbdConnectionError that ended it.
 */
export interface RequestOwner {
  readonly table: RequestTable;
  replied(r: NbdRequest, err: NbdError | null): void;
}

const MAX_OPTION_REPLY_BYTES = 64 * 1024;
// After NBD_OPT_ABORT, how long the server has to close before we do.
const ABORT_LINGER_MS = 1000;

export class NbdClient extends EventEmitter implements TransportOwner {
  readonly info: ExportInfo;
  private readonly transport: NbdTransport;
  private owner: RequestOwner;
  /** Requests sent on this connection and not yet reported to the owner. */
  private inFlight = 0;
  private dead: NbdConnectionError | null = null;
  private closing: Promise<void> | null = null;

  private constructor(transport: NbdTransport, info: ExportInfo) {
    super();
    this.transport = transport;
    this.info = info;
    // On its own, a connection finishes its requests itself; a reconnecting client adopts it.
    const table = new RequestTable();
    this.owner = { table, replied: (r, err) => table.finish(r, err) };
  }

  get size(): number { return this.info.size; }
  get readOnly(): boolean { return (this.info.flags & C.TFLAG_READ_ONLY) !== 0; }
  get canFlush(): boolean { return (this.info.flags & C.TFLAG_SEND_FLUSH) !== 0; }
  get canFua(): boolean { return (this.info.flags & C.TFLAG_SEND_FUA) !== 0; }
  get canTrim(): boolean { return (this.info.flags & C.TFLAG_SEND_TRIM) !== 0; }
  get canZero(): boolean { return (this.info.flags & C.TFLAG_SEND_WRITE_ZEROES) !== 0; }
  get canMultiConn(): boolean { return (this.info.flags & C.TFLAG_CAN_MULTI_CONN) !== 0; }
  get pending(): number { return this.inFlight; }
  get closed(): boolean { return this.dead !== null; }
  /** How this connection's bytes move ('stream' or 'ring'). */
  get transportKind(): string { return this.transport.kind; }

  static connect(opts: ConnectOptions): Promise<NbdClient> {
    const timeoutMs = opts.handshakeTimeoutMs ?? 15000;
    const where = opts.socket ? opts.socket : `${opts.host}:${opts.port}`;
    return new Promise((resolve, reject) => {
      const q = new ByteQueue();
      let waiter: (() => void) | null = null;
      let failure: NbdError | null = null;
      let stream: StreamTransport | null = null;
      const recvBuf = Buffer.allocUnsafe(RECV_BUFFER_BYTES);
      const fail = (e: NbdError): void => {
        failure ??= e;
        const w = waiter;
        waiter = null;
        w?.();
      };
      const received = (b: Buffer): void => {
        q.push(b);
        const w = waiter;
        waiter = null;
        w?.();
      };
      const sock = net.connect({
        ...(opts.socket ? { path: opts.socket } : { host: opts.host, port: opts.port, noDelay: true }),
        onread: {
          // Called after every read for the buffer of the next one.
          buffer: () => (stream ? stream.nextReadBuffer() : recvBuf),
          callback: (n: number, buf: Uint8Array) => {
            if (stream) stream.onBytes(buf as Buffer, n);
            else received(Buffer.from(buf.subarray(0, n))); // handshake only: copy is fine
            return true;
          },
        },
      });
      const io: HandshakeIo = { sock, need: async () => Buffer.alloc(0), startTls: null };
      const timer = setTimeout(() => {
        fail(new NbdConnectionError(`no NBD handshake from ${where} within ${timeoutMs} ms`));
        io.sock.destroy();
        sock.destroy();
      }, timeoutMs);
      const onError = (err: NodeJS.ErrnoException): void => {
        const what = err.code === 'ECONNREFUSED' ? 'connection refused'
          : err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN' ? 'unknown host'
            : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH' ? 'host unreachable'
              : err.code === 'ENOENT' ? 'no such socket'
                : err.message;
        fail(new NbdConnectionError(`cannot connect to ${where}: ${what}`, { cause: err }));
      };
      const onClose = (): void => fail(new NbdHandshakeError(`${where} closed the connection during the NBD handshake`));
      sock.on('error', onError);
      sock.on('close', onClose);

      io.need = async (n: number): Promise<Buffer> => {
        while (q.length < n) {
          if (failure) throw failure;
          await new Promise<void>((r) => { waiter = r; });
        }
        if (failure) throw failure;
        return q.take(n);
      };
      if (opts.tls) {
        const settings = opts.tls;
        io.startTls = async () => {
          // proto.md: after NBD_REP_ACK, "all further data MUST be sent and received over
          // TLS". Bytes already here arrived in clear text: a man in the middle's, not the server's.
          if (q.length !== 0) throw new NbdProtocolError(`${where} sent ${q.length} bytes in clear text after agreeing to TLS`);
          let tlsOpts: tls.ConnectionOptions;
          try {
            tlsOpts = clientTlsOptions(settings, opts.socket ? '' : opts.host);
          } catch (err) {
            if (err instanceof TlsFileError) throw new NbdHandshakeError(err.message);
            throw err;
          }
          const secure = tls.connect({ ...tlsOpts, socket: sock });
          io.sock = secure;
          secure.on('data', (b: Buffer) => (stream ? stream.onChunk(b) : received(b)));
          let tlsError: (err: Error) => void = () => undefined;
          let tlsClose: () => void = () => undefined;
          await new Promise<void>((resolve2, reject2) => {
            tlsError = (err) => reject2(new NbdHandshakeError(`${where}: TLS handshake failed: ${tlsReason(err, settings)}`));
            tlsClose = () => reject2(new NbdHandshakeError(`${where} closed the connection during the TLS handshake`));
            secure.once('secureConnect', () => resolve2());
            secure.on('error', tlsError);
            secure.on('close', tlsClose);
          });
          secure.off('error', tlsError);
          secure.off('close', tlsClose);
          secure.on('error', onError);
          secure.on('close', onClose);
        };
      }

      handshake(io, opts.exportName ?? '', where).then(
        (info) => {
          clearTimeout(timer);
          if (q.length !== 0) throw new NbdProtocolError(`${where} sent ${q.length} unexpected bytes after the handshake`);
          for (const s of new Set([sock, io.sock])) {
            s.off('error', onError);
            s.off('close', onClose);
          }
          let t: NbdTransport;
          if (opts.makeTransport !== undefined && io.sock === sock) {
            // Bytes that still arrive through the socket's own reads (none, from a server
            // that keeps to the protocol) are left unread in the handshake's queue.
            t = opts.makeTransport(sock);
          } else {
            stream = new StreamTransport(io.sock, sock, recvBuf);
            t = stream;
          }
          const client = new NbdClient(t, info);
          t.attach(client);
          resolve(client);
        },
      ).catch((err: unknown) => {
        clearTimeout(timer);
        if (err instanceof NbdHandshakeError && err.replyType !== undefined && !io.sock.destroyed) {
          // The server refused with an error reply: proto.md "Termination of the session
          // during option haggling" has the client end with a soft disconnect, NBD_OPT_ABORT
          // (a MUST after NBD_REP_ERR_SHUTDOWN). The server then closes; if it does not, we do.
          io.sock.end(codec.encodeOption(C.Opt.ABORT, Buffer.alloc(0)));
          setTimeout(() => {
            io.sock.destroy();
            sock.destroy();
          }, ABORT_LINGER_MS).unref();
        } else {
          io.sock.destroy();
          sock.destroy();
        }
        // The handshake's own error says more than the socket event behind it (a refused
        // EXPORT_NAME is seen as a close, and rethrown naming the export).
        reject(err instanceof NbdError ? err : failure ?? (err instanceof Error ? err : new Error(String(err))));
      });
    });
  }

  /**
   * Hands this connection's requests to `owner` (a reconnecting client: one table across
   * its connections). Only before the first request.
   */
  adopt(owner: RequestOwner): void {
    if (this.inFlight > 0 || this.owner.table.size > 0) throw new Error('adopt() after requests were sent');
    this.owner = owner;
  }

  /**
   * Sends one request on its own (no reconnecting owner). For READ, `into` receives the
   * data at `intoOffset`; for WRITE, `data` is sent as is (it must not change until the
   * callback). The callback runs once.
   */
  submit<T>(op: NbdOp, ctx: T, cb: RequestCallback<T>): void {
    if (this.closing && !this.dead) {
      queueMicrotask(() => cb(new NbdConnectionError('client is closing'), ctx));
      return;
    }
    this.send(this.owner.table.add(op, ctx, cb));
  }

  /**
   * Sends a pending request of the owner's table (pending -> sent). On a dead connection it
   * is reported back at once with the error that ended it.
   */
  send(r: NbdRequest): void {
    r.state = RequestState.Sent;
    r.conn = this;
    if (this.dead) {
      const err = this.dead;
      const gen = r.gen;
      queueMicrotask(() => {
        if (r.gen === gen && r.state === RequestState.Sent && r.conn === this) this.owner.replied(r, err);
      });
      return;
    }
    this.inFlight++;
    codec.writeRequestHeader(r.header, r.flags, r.type, r.gen, r.idx, r.offset, r.length);
    this.transport.send(r);
  }

  read(offset: number, length: number, into?: Buffer, intoOffset = 0): Promise<Buffer> {
    const target = into ?? Buffer.allocUnsafe(length);
    return new Promise((resolve, reject) => {
      this.submit({ type: C.Cmd.READ, offset, length, into: target, intoOffset }, null,
        (err) => (err ? reject(err) : resolve(target)));
    });
  }

  write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    return this.simple(C.Cmd.WRITE, opts.fua ? C.CMD_FLAG_FUA : 0, offset, data.length, data);
  }

  flush(): Promise<void> {
    return this.simple(C.Cmd.FLUSH, 0, 0, 0, null);
  }

  trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    return this.simple(C.Cmd.TRIM, opts.fua ? C.CMD_FLAG_FUA : 0, offset, length, null);
  }

  writeZeroes(offset: number, length: number, opts: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    const flags = (opts.fua ? C.CMD_FLAG_FUA : 0) | (opts.noHole ? C.CMD_FLAG_NO_HOLE : 0);
    return this.simple(C.Cmd.WRITE_ZEROES, flags, offset, length, null);
  }

  /** Waits for in-flight replies, sends NBD_CMD_DISC and closes the socket. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.inFlight > 0 && !this.dead) await new Promise((r) => this.once('idle', r));
      if (!this.dead) {
        const disc = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
        codec.writeRequestHeader(disc, 0, C.Cmd.DISC, 0, 0, 0, 0);
        await this.transport.end(disc);
      }
    })();
    return this.closing;
  }

  /**
   * proto.md "Terminating the transmission phase": a client that receives NBD_ESHUTDOWN
   * MUST initiate a soft disconnect. NBD_CMD_DISC goes out now, after the requests already
   * queued and before anything else (new ones fail); replies still in flight are read.
   */
  private softDisconnect(): void {
    if (this.closing || this.dead) return;
    const disc = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
    codec.writeRequestHeader(disc, 0, C.Cmd.DISC, 0, 0, 0, 0);
    this.closing = this.transport.end(disc);
  }

  /** Drops the connection now (a reset: see StreamTransport.abort()); requests in flight fail with err. */
  destroy(err?: NbdConnectionError): void {
    // The transport first: a ring transport's kernel I/O into request buffers must have
    // stopped before the requests fail and their owners may let go of those buffers.
    this.transport.abort();
    this.kill(err ?? new NbdConnectionError('client destroyed'));
  }

  private simple(type: number, flags: number, offset: number, length: number, data: Buffer | null): Promise<void> {
    return new Promise((resolve, reject) => {
      this.submit({ type, flags, offset, length, data }, null, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** TransportOwner: a reply header; returns the READ whose payload follows. */
  onReplyHeader(h: Buffer, at: number): NbdRequest | null {
    const magic = h.readUInt32BE(at);
    if (magic !== C.SIMPLE_REPLY_MAGIC) {
      const what = magic === C.STRUCTURED_REPLY_MAGIC ? 'a structured reply, which was not negotiated'
        : `bad reply magic 0x${magic.toString(16)}`;
      this.protocolError(what);
      return null;
    }
    const error = h.readUInt32BE(at + 4);
    const gen = h.readUInt32BE(at + 8);
    const idx = h.readUInt32BE(at + 12);
    const s = this.owner.table.sent(gen, idx);
    if (s === undefined || s.conn !== this) {
      this.protocolError(`reply for unknown cookie ${gen}:${idx}`);
      return null;
    }
    if (error !== 0) {
      if (error === C.NBD_ESHUTDOWN) this.softDisconnect();
      this.complete(s, new NbdRequestError(error, C.CMD_NAMES[s.type] ?? `command ${s.type}`));
      return null;
    }
    if (s.type === C.Cmd.READ && s.length > 0) return s;
    this.complete(s, null);
    return null;
  }

  /** TransportOwner: a READ's payload is in place. */
  onPayload(r: NbdRequest): void {
    if (r.state === RequestState.Sent && r.conn === this) this.complete(r, null);
  }

  /** TransportOwner: the connection ended under us. */
  onClosed(err: NbdConnectionError): void {
    this.kill(err);
  }

  /** Reports a request sent here to the owner (once: it leaves this connection). */
  private complete(s: NbdRequest, err: NbdError | null): void {
    s.conn = null;
    this.inFlight--;
    this.owner.replied(s, err);
    if (this.inFlight === 0) this.emit('idle');
  }

  private protocolError(what: string): void {
    const err = new NbdProtocolError(`server broke the protocol: ${what}`);
    this.transport.abort(); // first: see destroy()
    this.kill(new NbdConnectionError(err.message, { cause: err }));
  }

  private kill(err: NbdConnectionError): void {
    if (this.dead) return;
    this.dead = err;
    // A snapshot: the owner may finish, resubmit or resend requests while hearing of each.
    for (const s of this.owner.table.list((r) => r.state === RequestState.Sent && r.conn === this)) {
      if (s.state === RequestState.Sent && s.conn === this) this.complete(s, err);
    }
    this.emit('idle');
    this.emit('close', err);
  }
}

type Need = (n: number) => Promise<Buffer>;

/** OpenSSL's reason without its location ("...:SSL routines:fn:reason:file:line:"), and what a PSK refusal may mean. */
function tlsReason(err: Error, settings: NbdTls): string {
  const m = /SSL routines:[^:]*:([^:]+):/.exec(err.message);
  const reason = m ? (m[1] as string) : err.message;
  // A PSK server that does not know the key just ends the handshake, saying nothing more.
  return settings.pskFile !== undefined ? `${reason} (was our key for this user refused?)` : reason;
}

/** The handshake's side of the connection; STARTTLS swaps sock for the TLS socket. */
interface HandshakeIo {
  sock: net.Socket;
  need: Need;
  /** Set when TLS is required: upgrades sock after the server's ACK to STARTTLS. */
  startTls: (() => Promise<void>) | null;
}

async function handshake(io: HandshakeIo, name: string, where: string): Promise<ExportInfo> {
  const need = io.need;
  let greeting: codec.Greeting;
  try {
    greeting = codec.decodeGreeting(await need(codec.GREETING_BYTES));
  } catch (err) {
    if (err instanceof NbdError) throw err;
    throw new NbdHandshakeError(`${where}: ${(err as Error).message}`);
  }
  const fixed = (greeting.handshakeFlags & C.FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (greeting.handshakeFlags & C.FLAG_NO_ZEROES) !== 0;
  if (io.startTls && !fixed) throw new NbdHandshakeError(`${where} cannot do TLS (no fixed-newstyle negotiation) and nbds requires it`);
  io.sock.write(codec.encodeClientFlags((fixed ? C.FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? C.FLAG_C_NO_ZEROES : 0)));
  if (io.startTls) {
    // STARTTLS first, so that no option (not even the export's name) crosses in clear text
    // (proto.md "Client-side requirements").
    await startTls(io, where);
  }
  if (fixed) {
    const info = await optGo(io.sock, need, name, where);
    if (info) return info;
  }
  // Fallback for servers without NBD_OPT_GO: the older EXPORT_NAME, which enters
  // transmission directly and answers an unknown name by closing the connection.
  io.sock.write(codec.encodeOption(C.Opt.EXPORT_NAME, Buffer.from(name, 'utf8')));
  let reply: Buffer;
  try {
    reply = await need(10 + (noZeroes ? 0 : C.EXPORT_NAME_PADDING));
  } catch (err) {
    if (err instanceof NbdHandshakeError) throw new NbdHandshakeError(`${where} refused export "${name}" (closed the connection)`);
    throw err;
  }
  return { name, size: codec.readU64(reply, 0), flags: reply.readUInt16BE(8), minBlock: 1, preferredBlock: 4096, maxPayload: C.MAX_PAYLOAD_BYTES };
}

/** NBD_OPT_STARTTLS, then the TLS handshake; any answer but ACK ends the connection (no clear-text fallback). */
async function startTls(io: HandshakeIo, where: string): Promise<void> {
  io.sock.write(codec.encodeOption(C.Opt.STARTTLS, Buffer.alloc(0)));
  const h = codec.decodeOptionReplyHeader(await io.need(codec.OPTION_REPLY_HEADER_BYTES));
  if (h.magic !== C.OPTION_REPLY_MAGIC) throw new NbdProtocolError(`${where}: bad option reply magic`);
  if (h.option !== C.Opt.STARTTLS) throw new NbdProtocolError(`${where}: reply to option ${h.option}, expected STARTTLS`);
  if (h.length > MAX_OPTION_REPLY_BYTES) throw new NbdProtocolError(`${where}: option reply of ${h.length} bytes`);
  const data = await io.need(h.length);
  if (h.type !== C.REP_ACK) {
    const msg = data.length > 0 ? `: ${data.toString('utf8')}` : '';
    const what = h.type === C.REP_ERR_UNSUP ? 'does not support TLS' : h.type === C.REP_ERR_POLICY ? 'has TLS off'
      : `refused TLS (reply 0x${h.type.toString(16)})`;
    throw new NbdHandshakeError(`${where} ${what}${msg}; nbds:// never falls back to clear text`, h.type);
  }
  if (!io.startTls) throw new Error('startTls without TLS settings');
  await io.startTls();
}

/** NBD_OPT_GO; null when the server does not support it (ERR_UNSUP). */
async function optGo(sock: net.Socket, need: Need, name: string, where: string): Promise<ExportInfo | null> {
  sock.write(codec.encodeOption(C.Opt.GO, codec.encodeGoData(name, [C.INFO_BLOCK_SIZE])));
  const info: ExportInfo = { name, size: -1, flags: 0, minBlock: 1, preferredBlock: 4096, maxPayload: C.MAX_PAYLOAD_BYTES };
  for (;;) {
    const h = codec.decodeOptionReplyHeader(await need(codec.OPTION_REPLY_HEADER_BYTES));
    if (h.magic !== C.OPTION_REPLY_MAGIC) throw new NbdProtocolError(`${where}: bad option reply magic`);
    if (h.option !== C.Opt.GO) throw new NbdProtocolError(`${where}: reply to option ${h.option}, expected GO`);
    if (h.length > MAX_OPTION_REPLY_BYTES) throw new NbdProtocolError(`${where}: option reply of ${h.length} bytes`);
    const data = await need(h.length);
    if (h.type === C.REP_ACK) {
      if (info.size < 0) throw new NbdProtocolError(`${where}: GO acknowledged without NBD_INFO_EXPORT`);
      return info;
    }
    if (h.type === C.REP_INFO) {
      if (data.length < 2) throw new NbdProtocolError(`${where}: empty NBD_REP_INFO`);
      const t = data.readUInt16BE(0);
      if (t === C.INFO_EXPORT && data.length === 12) {
        info.size = codec.readU64(data, 2);
        info.flags = data.readUInt16BE(10);
      } else if (t === C.INFO_BLOCK_SIZE && data.length === 14) {
        info.minBlock = data.readUInt32BE(2);
        info.preferredBlock = data.readUInt32BE(6);
        info.maxPayload = Math.min(data.readUInt32BE(10), C.MAX_PAYLOAD_BYTES);
      }
      continue; // other info types are optional to understand
    }
    if (h.type === C.REP_ERR_UNSUP) return null;
    const msg = data.length > 0 ? `: ${data.toString('utf8')}` : '';
    if (h.type === C.REP_ERR_UNKNOWN) throw new NbdHandshakeError(`${where} has no export "${name}"${msg}`, h.type);
    if (h.type === C.REP_ERR_TLS_REQD) throw new NbdHandshakeError(`${where} requires TLS: use an nbds:// URI${msg}`, h.type);
    if ((h.type & C.REP_FLAG_ERROR) !== 0) {
      throw new NbdHandshakeError(`${where} refused export "${name}" (error 0x${h.type.toString(16)})${msg}`, h.type);
    }
    throw new NbdProtocolError(`${where}: unexpected option reply type ${h.type}`);
  }
}
