// Which requests the server refuses, and with which errno (proto.md "Error values",
// "Request message requirements"). Pure: a refused request gets an error reply and the
// connection goes on.
import * as E from '../errno';
import * as C from '../nbd/constants';

export interface ExportLimits {
  size: number;
  readOnly: boolean;
  canTrim: boolean;
  canZero: boolean;
  /** NBD_FLAG_SEND_FUA was advertised. */
  sendFua: boolean;
  maxPayload: number;
}

// Flags each command takes besides FUA.
const ALLOWED_FLAGS: Record<number, number> = {
  [C.Cmd.READ]: 0,
  [C.Cmd.WRITE]: 0,
  [C.Cmd.FLUSH]: 0,
  [C.Cmd.TRIM]: 0,
  [C.Cmd.WRITE_ZEROES]: C.CMD_FLAG_NO_HOLE,
  [C.Cmd.DISC]: 0,
};

/** 0 when the request may run, else the NBD errno to reply with. */
export function validateRequest(type: number, flags: number, offset: number, length: number, lim: ExportLimits): number {
  const allowed = ALLOWED_FLAGS[type];
  if (allowed === undefined) return C.NBD_EINVAL; // CACHE, BLOCK_STATUS, unknown: not advertised
  const writes = type === C.Cmd.WRITE || type === C.Cmd.TRIM || type === C.Cmd.WRITE_ZEROES;
  // Before the flags: a read-only export advertises no FUA, and a write to it is EPERM.
  if (writes && lim.readOnly) return C.NBD_EPERM;
  // proto.md "Command flags": with NBD_FLAG_SEND_FUA negotiated the server MUST accept FUA
  // on every command (clients are known to set it on READ and FLUSH); on commands that
  // write nothing it is ignored.
  const fua = lim.sendFua ? C.CMD_FLAG_FUA : 0;
  if ((flags & ~(allowed | fua)) !== 0) return C.NBD_EINVAL;
  switch (type) {
    case C.Cmd.READ:
      if (length > lim.maxPayload) return C.NBD_EOVERFLOW;
      return offset + length > lim.size ? C.NBD_EINVAL : 0;
    case C.Cmd.FLUSH:
      return offset !== 0 || length !== 0 ? C.NBD_EINVAL : 0;
    case C.Cmd.TRIM:
      if (!lim.canTrim) return C.NBD_EINVAL;
      // proto.md "Error values": EINVAL for a read or trim past the end, ENOSPC for a write.
      return offset + length > lim.size ? C.NBD_EINVAL : 0;
    case C.Cmd.WRITE:
    case C.Cmd.WRITE_ZEROES:
      if (type === C.Cmd.WRITE_ZEROES && !lim.canZero) return C.NBD_EINVAL;
      if (type === C.Cmd.WRITE && length > lim.maxPayload) return C.NBD_EOVERFLOW;
      return offset + length > lim.size ? C.NBD_ENOSPC : 0;
    default:
      return 0;
  }
}

/** Narrows an fs error to the errnos NBD carries (proto.md: EDQUOT and EFBIG become ENOSPC). */
export function toNbdErrno(err: Error): number {
  switch (E.errnoOf(err)) {
    case E.EPERM:
    case E.EACCES:
    case E.EROFS:
      return C.NBD_EPERM;
    case E.ENOSPC:
    case E.EDQUOT:
    case E.EFBIG:
      return C.NBD_ENOSPC;
    case E.ENOMEM:
      return C.NBD_ENOMEM;
    case E.EINVAL:
      return C.NBD_EINVAL;
    case E.EOPNOTSUPP:
      return C.NBD_ENOTSUP;
    default:
      return C.NBD_EIO;
  }
}
