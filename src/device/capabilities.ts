// What the block device advertises, derived from what the NBD export offers: one place
// maps NBD transmission flags and block sizes onto ublk parameters. Pure.
import * as N from '../nbd/constants';
import { UblkAttr, type UblkParams } from '../ublk';

export interface ExportCaps {
  size: number;
  flags: number;
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

export interface DeviceGeometry {
  params: UblkParams;
  /** Bytes of the export the device exposes (whole logical blocks). */
  deviceBytes: number;
  logicalBlock: number;
}

const SECTOR = 512;
// NBD lengths are 32-bit; keep discard and write-zeroes requests well inside that.
const MAX_RANGE_SECTORS = (2 ** 31) / SECTOR;

function log2(n: number): number {
  return 31 - Math.clz32(n);
}

export function deviceGeometry(exp: ExportCaps, maxIoBufBytes: number): DeviceGeometry {
  // The logical block must cover the server's minimum block size (ublk accepts 512..4096).
  const logicalBlock = Math.min(4096, Math.max(SECTOR, 2 ** Math.ceil(log2(Math.max(1, exp.minBlock)))));
  const physicalBlock = Math.max(logicalBlock, Math.min(4096, 2 ** log2(Math.max(SECTOR, exp.preferredBlock))));
  const maxBytes = Math.min(maxIoBufBytes, exp.maxPayload);
  const maxSectors = Math.floor(maxBytes / logicalBlock) * (logicalBlock / SECTOR);
  const deviceBytes = Math.floor(exp.size / logicalBlock) * logicalBlock;
  const readOnly = (exp.flags & N.TFLAG_READ_ONLY) !== 0;
  let attrs = 0;
  if (readOnly) attrs |= UblkAttr.READ_ONLY;
  if ((exp.flags & N.TFLAG_ROTATIONAL) !== 0) attrs |= UblkAttr.ROTATIONAL;
  // The kernel sends FLUSH only to a device with a volatile cache, and FUA only with both.
  if ((exp.flags & N.TFLAG_SEND_FLUSH) !== 0) {
    attrs |= UblkAttr.VOLATILE_CACHE;
    if ((exp.flags & N.TFLAG_SEND_FUA) !== 0) attrs |= UblkAttr.FUA;
  }
  const params: UblkParams = {
    basic: {
      attrs,
      logicalBsShift: log2(logicalBlock),
      physicalBsShift: log2(physicalBlock),
      ioOptShift: log2(physicalBlock),
      ioMinShift: log2(logicalBlock),
      maxSectors,
      chunkSectors: 0,
      devSectors: BigInt(deviceBytes / SECTOR),
      virtBoundaryMask: 0n,
    },
  };
  const trim = !readOnly && (exp.flags & N.TFLAG_SEND_TRIM) !== 0;
  const zero = !readOnly && (exp.flags & N.TFLAG_SEND_WRITE_ZEROES) !== 0;
  if (trim || zero) {
    params.discard = {
      discardAlignment: 0,
      discardGranularity: physicalBlock,
      maxDiscardSectors: trim ? MAX_RANGE_SECTORS : 0,
      maxWriteZeroesSectors: zero ? MAX_RANGE_SECTORS : 0,
      maxDiscardSegments: 1, // the only value ublk accepts
    };
  }
  return { params, deviceBytes, logicalBlock };
}
