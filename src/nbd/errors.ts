// Error classes with stable codes. Two paths, as in the protocol: a request error
// (the server answered with an errno; the connection lives on) and a connection
// error (socket loss or a protocol violation; every request in flight fails with it).

import { errnoName } from '../errno';
import { NBD_EINVAL, NBD_ERRNOS } from './constants';

export class NbdError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The server replied to one request with a non-zero error. */
export class NbdRequestError extends NbdError {
  /** The errno the server sent (unknown values are read as EINVAL, per the spec). */
  readonly errno: number;
  constructor(errno: number, command: string) {
    const known = NBD_ERRNOS.includes(errno);
    const e = known ? errno : NBD_EINVAL;
    super('NBD_REQUEST_FAILED', `${command} failed: ${errnoName(e)}${known ? '' : ` (server sent ${errno})`}`);
    this.errno = e;
  }
}

/** The connection is gone or unusable; requests that had no reply fail with this. */
export class NbdConnectionError extends NbdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NBD_CONNECTION', message, options);
  }
}

/** The peer broke the protocol (bad magic, unknown cookie, oversized reply...). */
export class NbdProtocolError extends NbdError {
  constructor(message: string) {
    super('NBD_PROTOCOL', message);
  }
}

/** The handshake failed: unknown export, unsupported server, refused option. */
export class NbdHandshakeError extends NbdError {
  constructor(message: string, readonly replyType?: number) {
    super('NBD_HANDSHAKE', message);
  }
}

/** An NBD URI (or HOST[:PORT]) that cannot name a store; the message says what is wrong. */
export class NbdUriError extends NbdError {
  constructor(message: string) {
    super('NBD_URI', message);
  }
}
