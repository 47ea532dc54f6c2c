// The stream transport: a connection's bytes through a Node socket (TCP, unix, or TLS over
// either). Requests issued in one tick leave in one writev, made directly on the socket's
// fd (see sendQueued). Read replies land in the request's buffer: small ones are copied out
// of the receive buffer, large ones are read from the socket straight into it (see
// nextReadBuffer).
import * as fs from 'fs';
import type * as net from 'net';
import * as tls from 'tls';
import * as C from './constants';
import { NbdConnectionError } from './errors';
import type { NbdRequest } from './request';
import type { NbdTransport, TransportOwner } from './transport';

/** The receive buffer: the socket's reads land here (outside READ payloads read in place). */
export const RECV_BUFFER_BYTES = 256 * 1024;
// A READ payload with at least this much still to come is read from the socket straight
// into the caller's buffer. Below it, the bytes are copied out of the receive buffer: one
// read() then serves many replies, and a few KiB copy costs less than the read() per
// payload that reading in place takes.
const DIRECT_READ_MIN_BYTES = 64 * 1024;

export class StreamTransport implements NbdTransport {
  readonly kind = 'stream';
  private owner: TransportOwner | null = null;
  /** The descriptor for direct writes; -1: the stream only. */
  private readonly fd: number;
  // Requests sent this tick, written together by sendQueued().
  private readonly outBufs: Buffer[] = [];
  private sendQueuedSoon = false;
  private stopped = false;
  // Reply parser state.
  private readonly hdr = Buffer.allocUnsafe(C.SIMPLE_REPLY_BYTES);
  private hdrGot = 0;
  private payloadReq: NbdRequest | null = null;
  private payloadGot = 0;

  /**
   * sock: the NBD stream (the TCP or unix socket, or the TLS socket over it); raw: the
   * socket under TLS (sock itself without TLS), what abort() resets; recvBuf: the buffer
   * the socket's onread was set up with.
   */
  constructor(private readonly sock: net.Socket, private readonly raw: net.Socket, private readonly recvBuf: Buffer) {
    // Over TLS the stream is the only path: the fd would carry clear text.
    this.fd = sock instanceof tls.TLSSocket ? -1 : socketFd(sock);
    sock.on('error', (err) => this.closed(new NbdConnectionError(`connection error: ${err.message}`, { cause: err })));
    sock.on('close', () => this.closed(new NbdConnectionError('connection closed by the server')));
  }

  attach(owner: TransportOwner): void {
    this.owner = owner;
  }

  send(r: NbdRequest): void {
    if (this.stopped) return;
    this.outBufs.push(r.header);
    if (r.data !== null && r.data.length > 0) this.outBufs.push(r.data);
    if (!this.sendQueuedSoon) {
      this.sendQueuedSoon = true;
      process.nextTick(sendQueuedTick, this);
    }
  }

  /**
   * Sends every request queued since the last call, in order, with one writev on the
   * socket's fd. The stream (net.Socket.write) would take the same system call, but first
   * builds buffering entries, a write request and completion callbacks per batch and per
   * chunk, which cost more than the system call itself on a slow CPU. The fd is written
   * only while the stream holds nothing (so bytes stay in order); whatever the kernel does
   * not take right away (a full socket buffer) goes through the stream, which waits for room.
   */
  sendQueued(): void {
    this.sendQueuedSoon = false;
    const bufs = this.outBufs;
    const n = bufs.length;
    if (n === 0) return;
    if (this.stopped) {
      bufs.length = 0;
      return;
    }
    let written = 0;
    if (this.fd >= 0 && this.sock.writableLength === 0 && !this.sock.destroyed) {
      try {
        written = n === 1 ? fs.writeSync(this.fd, bufs[0] as Buffer) : fs.writevSync(this.fd, bufs);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (e.code !== 'EAGAIN' && e.code !== 'EWOULDBLOCK') {
          bufs.length = 0;
          this.closed(new NbdConnectionError(`connection error: ${e.message}`, { cause: e }));
          this.abort();
          return;
        }
      }
    }
    let i = 0;
    while (i < n && written >= (bufs[i] as Buffer).length) written -= (bufs[i++] as Buffer).length;
    if (i < n) {
      this.sock.cork();
      this.sock.write(written > 0 ? (bufs[i++] as Buffer).subarray(written) : (bufs[i++] as Buffer));
      while (i < n) this.sock.write(bufs[i++] as Buffer);
      this.sock.uncork();
    }
    bufs.length = 0;
  }

  end(last: Buffer): Promise<void> {
    this.sendQueued(); // what was queued goes first
    this.sock.end(last);
    return new Promise<void>((r) => (this.sock.destroyed ? r() : this.sock.once('close', () => r())));
  }

  /** Ends the connection now, with a reset (see resetSocket). */
  abort(): void {
    this.stop();
    // Under TLS the reset goes on the socket beneath, before the TLS socket's destroy could
    // end it with a FIN.
    resetSocket(this.raw);
    if (this.sock !== this.raw) this.sock.destroy();
  }

  /**
   * Where the next read from the socket goes: the rest of a large READ payload when one is
   * being received (read in place, no copy), else the receive buffer.
   */
  nextReadBuffer(): Buffer {
    const s = this.payloadReq;
    if (s !== null && s.length - this.payloadGot >= DIRECT_READ_MIN_BYTES) {
      const at = s.intoOffset + this.payloadGot;
      return (s.into as Buffer).subarray(at, at + s.length - this.payloadGot);
    }
    return this.recvBuf;
  }

  /** Bytes decrypted by TLS (the stream's 'data'): no reading in place, each chunk is parsed where it is. */
  onChunk(chunk: Buffer): void {
    this.parse(chunk, chunk.length);
  }

  /** Consumes n bytes read into buf: the receive buffer (reused after this returns) or a READ payload's place. */
  onBytes(buf: Buffer, n: number): void {
    if (buf !== this.recvBuf) {
      // Read in place (nextReadBuffer): the bytes are already where they belong.
      const s = this.payloadReq;
      if (s === null) return; // the connection died meanwhile
      this.payloadGot += n;
      if (this.payloadGot === s.length) {
        this.payloadReq = null;
        this.owner?.onPayload(s);
      }
      return;
    }
    this.parse(buf, n);
  }

  /** Parses n bytes of replies in buf, copying READ payloads to their places. */
  private parse(buf: Buffer, n: number): void {
    const owner = this.owner;
    if (owner === null) return;
    let pos = 0;
    while (pos < n && !this.stopped) {
      const s = this.payloadReq;
      if (s !== null) {
        const k = Math.min(n - pos, s.length - this.payloadGot);
        buf.copy(s.into as Buffer, s.intoOffset + this.payloadGot, pos, pos + k);
        pos += k;
        this.payloadGot += k;
        if (this.payloadGot === s.length) {
          this.payloadReq = null;
          owner.onPayload(s);
        }
        continue;
      }
      if (this.hdrGot === 0 && n - pos >= C.SIMPLE_REPLY_BYTES) {
        // The whole header is in this chunk (the usual case): parse it where it is.
        const at = pos;
        pos += C.SIMPLE_REPLY_BYTES;
        this.header(owner, buf, at);
        continue;
      }
      const k = Math.min(n - pos, C.SIMPLE_REPLY_BYTES - this.hdrGot);
      buf.copy(this.hdr, this.hdrGot, pos, pos + k);
      pos += k;
      this.hdrGot += k;
      if (this.hdrGot < C.SIMPLE_REPLY_BYTES) break;
      this.hdrGot = 0;
      this.header(owner, this.hdr, 0);
    }
  }

  private header(owner: TransportOwner, h: Buffer, at: number): void {
    const r = owner.onReplyHeader(h, at);
    if (r !== null && !this.stopped) {
      this.payloadReq = r;
      this.payloadGot = 0;
    }
  }

  private stop(): void {
    this.stopped = true;
    this.payloadReq = null;
    this.outBufs.length = 0;
  }

  private closed(err: NbdConnectionError): void {
    this.stop();
    this.owner?.onClosed(err);
  }
}

/**
 * The descriptor libuv holds for a connected TCP or unix socket, or -1 (then only the
 * stream can carry the bytes).
 */
export function socketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * Ends an abandoned connection with a reset rather than a FIN. A closed socket's queued
 * bytes stay in the kernel, which keeps retransmitting them: after a network partition
 * heals, writes from a connection given up for stalling could reach the store after newer
 * writes to the same blocks sent over the next connection. A reset discards the queue.
 */
export function resetSocket(raw: net.Socket): void {
  if (raw.destroyed) return;
  // Nothing sent yet, or a unix socket (no reset there), or the write side already ended
  // (DISC sent: libuv cannot reset a socket after its shutdown, and the handle would leak).
  if (raw.connecting || raw.remoteAddress === undefined || raw.writableEnded) raw.destroy();
  else raw.resetAndDestroy();
}

function sendQueuedTick(t: StreamTransport): void {
  t.sendQueued();
}
