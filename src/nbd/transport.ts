// A connection's two halves. The connection (client.ts) speaks the protocol: it books
// requests, matches replies to them by cookie, maps errors, decides when the connection is
// dead. A transport only moves bytes: it sends requests in the order given and cuts the
// received stream into 16-byte simple-reply headers and READ payloads, which it places
// straight into the request's destination. That framing (a header, then for a successful
// READ exactly `length` payload bytes) is all the NBD a transport knows: it is what lets a
// READ's data land in place without a round trip through the connection.
import type * as net from 'net';
import type { NbdConnectionError } from './errors';
import type { NbdRequest } from './request';

/** What a transport reports to its connection. */
export interface TransportOwner {
  /**
   * A reply header is in h at `at` (SIMPLE_REPLY_BYTES long, valid only during the call).
   * Returns the sent READ request whose payload follows (received into r.into at
   * r.intoOffset, r.length bytes), or null when no payload follows.
   */
  onReplyHeader(h: Buffer, at: number): NbdRequest | null;
  /** All of r's READ payload has arrived. */
  onPayload(r: NbdRequest): void;
  /** The transport failed or the peer closed: no more bytes either way. */
  onClosed(err: NbdConnectionError): void;
}

export interface NbdTransport {
  /** How the bytes move, for logs and the benchmark: 'stream' (a Node socket) or 'ring' (io_uring). */
  readonly kind: string;
  /** The connection this transport reports to (once, before any byte is sent). */
  attach(owner: TransportOwner): void;
  /** Queues r's header (r.header, already written) and WRITE payload; a tick's requests leave together, in order. */
  send(r: NbdRequest): void;
  /** Sends `last` (NBD_CMD_DISC), ends the connection cleanly and resolves once it is closed. */
  end(last: Buffer): Promise<void>;
  /** Ends the connection now, with a reset where the transport can (see stream-transport.ts). Queued bytes are dropped. */
  abort(): void;
}

/**
 * Makes the transport of a clear-text connection once its handshake is done (TLS always
 * takes the stream transport). The socket is connected, holds no unread bytes of ours, and
 * stays owned by the transport from here on.
 */
export type TransportFactory = (sock: net.Socket) => NbdTransport;
