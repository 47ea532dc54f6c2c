// The ring transport: a clear-text NBD connection's data path on io_uring (the addon's
// RingSocket, addon/nbd-ring.h). Each tick's requests leave as one linked chain of sendmsg
// SQEs; replies arrive once per ring wake-up, a READ's payload already in its destination.
// The connection (src/nbd/client.ts) keeps every protocol decision: this only moves bytes.
import type * as net from 'net';
import * as C from '../nbd/constants';
import { NbdConnectionError } from '../nbd/errors';
import type { NbdRequest } from '../nbd/request';
import { resetSocket, socketFd } from '../nbd/stream-transport';
import type { NbdTransport, TransportFactory, TransportOwner } from '../nbd/transport';
import { errnoName } from '../errno';
import { loadUblk, type NativeRingSocket, type UblkNative } from '../native/load';

export class RingTransport implements NbdTransport {
  readonly kind = 'ring';
  private owner: TransportOwner | null = null;
  private readonly ring: NativeRingSocket;
  private readonly replies: Buffer;
  private flushSoon = false;
  /** The ring is stopped. */
  private done = false;
  /** The connection heard of the end (once). */
  private reported = false;

  /** sock: connected, handshake done, clear text; slots: requests in flight at most (their table index is below it). */
  constructor(private readonly sock: net.Socket, slots: number, native: UblkNative = loadUblk()) {
    const fd = socketFd(sock);
    if (fd < 0) throw new NbdConnectionError('the ring transport needs the socket\'s descriptor');
    // From here on only the ring reads the socket: Node's reads stop.
    sock.pause();
    this.ring = new native.RingSocket({ fd, slots });
    this.replies = Buffer.alloc((slots + 1) * C.SIMPLE_REPLY_BYTES);
    // Node's own view of the socket can still fail it (it is never read or written by Node
    // meanwhile, so this is rare): the connection ends the same way.
    sock.on('error', (err) => this.closed(new NbdConnectionError(`connection error: ${err.message}`, { cause: err })));
    sock.on('close', () => this.closed(new NbdConnectionError('connection closed')));
  }

  attach(owner: TransportOwner): void {
    this.owner = owner;
    this.ring.start((n) => this.onReplies(n), this.replies, (errno) => this.onRingClosed(errno));
  }

  send(r: NbdRequest): void {
    if (this.done) return;
    const into = r.type === C.Cmd.READ && r.into !== null && r.length > 0
      ? r.into.subarray(r.intoOffset, r.intoOffset + r.length) : null;
    this.ring.queue(r.idx, r.gen, r.header, r.data !== null && r.data.length > 0 ? r.data : null, into);
    if (!this.flushSoon) {
      this.flushSoon = true;
      process.nextTick(flushTick, this);
    }
  }

  flush(): void {
    this.flushSoon = false;
    if (!this.done) this.ring.flush();
  }

  async end(last: Buffer): Promise<void> {
    // The ring stops and Node's socket sends the NBD_CMD_DISC and sees the close. From
    // close() nothing is in flight. After an NBD_ESHUTDOWN reply (softDisconnect) requests
    // may be: their I/O is cancelled, so they fail with the connection (a reconnecting
    // client resends them) rather than having their replies read as the stream transport does.
    this.stop();
    const sock = this.sock;
    sock.end(last);
    sock.resume();
    await new Promise<void>((r) => (sock.destroyed ? r() : sock.once('close', () => r())));
  }

  abort(): void {
    this.stop();
    resetSocket(this.sock);
  }

  private onReplies(n: number): void {
    const owner = this.owner;
    if (owner === null) return;
    for (let i = 0; i < n && !this.done; i++) {
      const r = owner.onReplyHeader(this.replies, i * C.SIMPLE_REPLY_BYTES);
      // The addon passes a READ's header on only once its payload is in place.
      if (r !== null) owner.onPayload(r);
    }
  }

  private onRingClosed(errno: number): void {
    const err = errno === 0 ? new NbdConnectionError('connection closed by the server')
      : new NbdConnectionError(`connection error: ${errnoName(errno)}`);
    this.closed(err);
    resetSocket(this.sock);
  }

  /** The ring stops, with nothing of ours left in flight (close() cancels and reaps). */
  private stop(): void {
    if (this.done) return;
    this.done = true;
    this.ring.close();
  }

  private closed(err: NbdConnectionError): void {
    this.stop();
    if (this.reported) return;
    this.reported = true;
    this.owner?.onClosed(err);
  }
}

function flushTick(t: RingTransport): void {
  t.flush();
}

/** The ring transport for connections of at most `slots` requests in flight. */
export function ringTransport(slots: number, native?: UblkNative): TransportFactory {
  return (sock) => new RingTransport(sock, slots, native);
}
