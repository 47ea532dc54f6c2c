// errno numbers and names, once for every layer: the addons' errors (addon/errors.h names
// them the same way), the server's store, the NBD client and the device's completions.
// Numbers are Linux's (os.constants.errno). One rule: ENOTSUP and EOPNOTSUPP are one value
// on Linux, and it is named EOPNOTSUPP, as the kernel names it (libuv and Node say ENOTSUP).
// A leaf: it imports nothing of ours, so src/nbd may use it too.
import { constants } from 'os';
import { getSystemErrorName } from 'util';

export const {
  EPERM, ENOENT, EINTR, EIO, EAGAIN, ENOMEM, EACCES, EBUSY, EEXIST, ENODEV, EINVAL, EFBIG, ENOSPC, EROFS, EDQUOT,
  EOVERFLOW, EOPNOTSUPP,
} = constants.errno;

/** 'ENOENT' for 2, 'EOPNOTSUPP' for 95; 'E<n>' for a number Node does not know. */
export function errnoName(errno: number): string {
  if (errno === EOPNOTSUPP) return 'EOPNOTSUPP';
  const n = Math.abs(errno);
  let name = '';
  try {
    name = getSystemErrorName(-n); // 'Unknown system error -N' for numbers libuv does not know
  } catch {
    // not an errno at all (0)
  }
  return /^E[A-Z0-9]+$/.test(name) ? name : `E${n}`;
}

/**
 * The positive errno an error carries: its numeric `errno` (Node's fs gives it negative,
 * the addons positive), else its errno-named `code`; undefined when it has neither.
 */
export function errnoOf(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const { errno, code } = err as { errno?: unknown; code?: unknown };
  if (typeof errno === 'number' && Number.isInteger(errno) && errno !== 0) return Math.abs(errno);
  if (typeof code === 'string') {
    if (code === 'ENOTSUP') return EOPNOTSUPP;
    const n = (constants.errno as Record<string, number | undefined>)[code];
    if (n !== undefined) return n;
  }
  return undefined;
}

/** What a failure reported further up keeps of the one below it. */
export interface FailureDetail {
  cause?: unknown;
  /** A stable code: 'UBLK_PERMISSION', 'NBD_CONNECTION', 'EACCES', ... */
  code?: string;
  /** The errno the kernel or the peer gave, positive. */
  errno?: number;
}

/** An error with a message for the user that keeps the code, errno and cause beneath it. */
export class DetailedError extends Error {
  readonly code: string | undefined;
  readonly errno: number | undefined;
  constructor(message: string, detail: FailureDetail = {}) {
    super(message, detail.cause === undefined ? undefined : { cause: detail.cause });
    this.name = new.target.name;
    this.code = detail.code;
    this.errno = detail.errno;
  }
}

/** The detail to keep of any error: itself as cause, its code and errno when it has them. */
export function detailOf(err: unknown): FailureDetail {
  const code = (err as { code?: unknown } | null)?.code;
  const errno = errnoOf(err);
  return { cause: err, ...(typeof code === 'string' ? { code } : {}), ...(errno === undefined ? {} : { errno }) };
}
