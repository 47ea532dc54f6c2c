// The ring transport: a clear-text NBD connection's data path on the ublk queue's own
// io_uring (UblkQueue.attachSocket, addon/queue.cc with addon/nbd-ring.h). A tick's
// requests leave as one linked chain of sendmsg SQEs, submitted with the tick's commits in
// one io_uring_enter; replies arrive in the same wake-up (and JS call) as the kernel's
// requests, a READ's payload already in its destination (the tag's buffer).
//
// Where NBD knowledge lives: the connection (src/nbd/client.ts) keeps every protocol
// decision (cookies, matching, errors, timeouts, reconnects); this file only moves bytes;
// the addon knows the 16-byte simple reply and that a successful READ's reply is followed
// by its length of data, so that the payload lands in place without a JS round trip.
import type * as net from 'net';
import * as C from '../nbd/constants';
import { NbdConnectionError } from '../nbd/errors';
import type { NbdRequest } from '../nbd/request';
import { resetSocket, socketFd } from '../nbd/stream-transport';
import type { NbdTransport, TransportFactory, TransportOwner } from '../nbd/transport';
import { errnoName } from '../errno';
import type { UblkSocketSink } from '../ublk';

/** A ring that can carry one socket at a time: UblkQueue. */
export interface SocketRing {
  attachSocket(fd: number, replies: Buffer, sink: UblkSocketSink): void;
  sendRequest(slot: number, gen: number, header: Buffer, data: Buffer | null, into: Buffer | null): boolean;
  detachSocket(): void;
}

export class RingTransport implements NbdTransport, UblkSocketSink {
  readonly kind = 'ring';
  private owner: TransportOwner | null = null;
  private readonly replyBuf: Buffer;
  /** The ring no longer carries the socket. */
  private done = false;
  /** The connection heard of the end (once). */
  private reported = false;

  /**
   * sock: connected, handshake done, clear text; ring: carries at most `slots` requests
   * in flight (their table index is below it); released: called once the ring let go.
   */
  constructor(private readonly sock: net.Socket, private readonly ring: SocketRing, slots: number,
    private readonly released: () => void = () => undefined) {
    const fd = socketFd(sock);
    if (fd < 0) throw new NbdConnectionError('the ring transport needs the socket\'s descriptor');
    // From here on only the ring reads the socket: Node's reads stop.
    sock.pause();
    this.replyBuf = Buffer.alloc((slots + 1) * C.SIMPLE_REPLY_BYTES);
    // Node's own view of the socket can still fail it (it is never read or written by Node
    // meanwhile, so this is rare): the connection ends the same way.
    sock.on('error', (err) => this.closedWith(new NbdConnectionError(`connection error: ${err.message}`, { cause: err })));
    sock.on('close', () => this.closedWith(new NbdConnectionError('connection closed')));
  }

  attach(owner: TransportOwner): void {
    this.owner = owner;
    try {
      this.ring.attachSocket(socketFd(this.sock), this.replyBuf, this);
    } catch (err) {
      this.done = true;
      this.released();
      throw new NbdConnectionError(`cannot drive the connection on the queue's ring: ${(err as Error).message}`, { cause: err });
    }
  }

  send(r: NbdRequest): void {
    if (this.done) return;
    const into = r.type === C.Cmd.READ && r.into !== null && r.length > 0
      ? r.into.subarray(r.intoOffset, r.intoOffset + r.length) : null;
    // False once the socket failed: the failure is on its way to closed().
    this.ring.sendRequest(r.idx, r.gen, r.header, r.data !== null && r.data.length > 0 ? r.data : null, into);
  }

  async end(last: Buffer): Promise<void> {
    // The ring lets go and Node's socket sends the NBD_CMD_DISC and sees the close. From
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

  /** UblkSocketSink: n reply headers are at the start of replyBuf. */
  replies(n: number): void {
    const owner = this.owner;
    if (owner === null) return;
    for (let i = 0; i < n && !this.done; i++) {
      const r = owner.onReplyHeader(this.replyBuf, i * C.SIMPLE_REPLY_BYTES);
      // The addon passes a READ's header on only once its payload is in place.
      if (r !== null) owner.onPayload(r);
    }
  }

  /** UblkSocketSink: the socket failed; nothing of it is in flight any more. */
  closed(errno: number): void {
    const err = errno === 0 ? new NbdConnectionError('connection closed by the server')
      : new NbdConnectionError(`connection error: ${errnoName(errno)}`);
    this.closedWith(err);
    resetSocket(this.sock);
  }

  /** The ring lets go of the socket, with nothing of ours left in flight (detach cancels and reaps). */
  private stop(): void {
    if (this.done) return;
    this.done = true;
    this.ring.detachSocket();
    this.released();
  }

  private closedWith(err: NbdConnectionError): void {
    this.stop();
    if (this.reported) return;
    this.reported = true;
    this.owner?.onClosed(err);
  }
}

/** The ring transport on `ring` (a UblkQueue made with socketSlots = slots), one connection at a time. */
export function ringTransport(ring: SocketRing, slots: number): TransportFactory {
  return (sock) => new RingTransport(sock, ring, slots);
}
