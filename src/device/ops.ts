// ublk request -> NBD command, in one place. Pure.
import * as N from '../nbd/constants';
import { UblkIoFlag, UblkIoOp } from '../ublk';

/** The NBD command for a ublk op, or -1 when there is none (answered -EOPNOTSUPP). */
export function nbdCommand(op: number): number {
  switch (op) {
    case UblkIoOp.READ: return N.Cmd.READ;
    case UblkIoOp.WRITE: return N.Cmd.WRITE;
    case UblkIoOp.FLUSH: return N.Cmd.FLUSH;
    case UblkIoOp.DISCARD: return N.Cmd.TRIM;
    case UblkIoOp.WRITE_ZEROES: return N.Cmd.WRITE_ZEROES;
    default: return -1;
  }
}

/** NBD command flags for a ublk request's flags. */
export function nbdFlags(op: number, ublkFlags: number, exportFlags: number): number {
  let f = 0;
  if ((ublkFlags & UblkIoFlag.FUA) !== 0 && (exportFlags & N.TFLAG_SEND_FUA) !== 0 && op !== UblkIoOp.FLUSH) {
    f |= N.CMD_FLAG_FUA;
  }
  if (op === UblkIoOp.WRITE_ZEROES && (ublkFlags & UblkIoFlag.NOUNMAP) !== 0) f |= N.CMD_FLAG_NO_HOLE;
  return f;
}
