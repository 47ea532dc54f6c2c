// UblkError: every failure src/ublk reports, with a stable code to branch on and
// the errno the kernel gave.

import * as E from '../errno';
import { UBLK_CONTROL_PATH } from './constants';

export type UblkErrorCode =
  /** /dev/ublk-control does not exist: ublk_drv is not loaded (or not built). */
  | 'UBLK_NO_DRIVER'
  /** Not allowed: CAP_SYS_ADMIN missing, device node permissions, or io_uring disabled by sysctl. */
  | 'UBLK_PERMISSION'
  /** No device with that id (ENODEV from a control command). */
  | 'UBLK_NO_DEVICE'
  /** The id is taken, or the device is already started. */
  | 'UBLK_EXISTS'
  /** The device or its char device is in use, or the state forbids the command. */
  | 'UBLK_BUSY'
  /** The kernel rejected the arguments (EINVAL). */
  | 'UBLK_INVALID'
  /** The kernel does not know the command or feature (EOPNOTSUPP). */
  | 'UBLK_UNSUPPORTED'
  /** A blocking command was interrupted (EINTR). */
  | 'UBLK_INTERRUPTED'
  /** Misuse of this API (a programming error, not a kernel answer). */
  | 'UBLK_USAGE'
  /** Any other system error. */
  | 'UBLK_SYSTEM';

export interface UblkErrorContext {
  /** The control command, e.g. 'ADD_DEV'. */
  command?: string;
  devId?: number;
  qid?: number;
}

export class UblkError extends Error {
  override readonly name = 'UblkError';
  readonly code: UblkErrorCode;
  /** Positive errno, 0 when no system call failed. */
  readonly errno: number;
  /** errno name ('ENOENT'), '' when errno is 0. */
  readonly errnoCode: string;
  /** What failed at the system level ('open /dev/ublk-control', 'io_uring_cmd', ...). */
  readonly syscall: string;
  readonly command: string | undefined;
  readonly devId: number | undefined;
  readonly qid: number | undefined;

  constructor(
    code: UblkErrorCode,
    message: string,
    opts: UblkErrorContext & { errno?: number; syscall?: string; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.errno = opts.errno ?? 0;
    this.errnoCode = this.errno > 0 ? E.errnoName(this.errno) : '';
    this.syscall = opts.syscall ?? '';
    this.command = opts.command;
    this.devId = opts.devId;
    this.qid = opts.qid;
  }
}

/** The UblkErrorCode a kernel errno stands for, given what was being done. */
export function codeForErrno(errno: number, syscall: string): UblkErrorCode {
  if (errno === E.ENOENT && syscall.startsWith(`open ${UBLK_CONTROL_PATH}`)) return 'UBLK_NO_DRIVER';
  switch (errno) {
    case E.EPERM:
    case E.EACCES:
      return 'UBLK_PERMISSION';
    case E.ENODEV:
      return 'UBLK_NO_DEVICE';
    case E.EEXIST:
      return 'UBLK_EXISTS';
    case E.EBUSY:
      return 'UBLK_BUSY';
    case E.EINVAL:
      return 'UBLK_INVALID';
    case E.EOPNOTSUPP:
      return 'UBLK_UNSUPPORTED';
    case E.EINTR:
      return 'UBLK_INTERRUPTED';
    default:
      return 'UBLK_SYSTEM';
  }
}

function describe(code: UblkErrorCode, syscall: string): string {
  switch (code) {
    case 'UBLK_NO_DRIVER':
      return `${UBLK_CONTROL_PATH} is missing: load the ublk_drv module (modprobe ublk_drv)`;
    case 'UBLK_PERMISSION':
      return syscall === 'io_uring_setup'
        ? 'io_uring is not allowed for this process (see the kernel.io_uring_disabled sysctl)'
        : 'permission denied: ublk needs root (CAP_SYS_ADMIN)';
    default:
      return '';
  }
}

/** The addon's errors (and Node's system errors) carry a numeric errno and a syscall. */
function isNativeErrno(err: unknown): err is { errno: number; syscall: string } {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as { errno?: unknown }).errno === 'number' &&
    typeof (err as { syscall?: unknown }).syscall === 'string'
  );
}

/** Wraps an error from the addon (or anything else) in a UblkError. */
export function toUblkError(err: unknown, ctx: UblkErrorContext = {}): UblkError {
  if (err instanceof UblkError) return err;
  const where = [ctx.command, ctx.devId === undefined ? undefined : `dev ${ctx.devId}`, ctx.qid === undefined ? undefined : `queue ${ctx.qid}`]
    .filter((s) => s !== undefined)
    .join(' ');
  const prefix = where === '' ? 'ublk' : `ublk ${where}`;
  if (isNativeErrno(err)) {
    const errno = Math.abs(err.errno);
    const code = codeForErrno(errno, err.syscall);
    const hint = describe(code, err.syscall);
    const msg = `${prefix}: ${err.syscall}: ${E.errnoName(errno)}${hint === '' ? '' : ` (${hint})`}`;
    return new UblkError(code, msg, { ...ctx, errno, syscall: err.syscall, cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new UblkError('UBLK_SYSTEM', `${prefix}: ${message}`, { ...ctx, cause: err });
}
