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
const MAX_LOGICAL_BLOCK = 4096;
// NBD lengths are 32-bit; keep discard and write-zeroes requests well inside that.
const MAX_RANGE_SECTORS = (2 ** 31) / SECTOR;

function log2(n: number): number {
  return 31 - Math.clz32(n);
}

/** The logical block must cover the server's minimum block size (ublk accepts 512..4096). */
function logicalBlockFor(minBlock: number): number {
  return Math.min(MAX_LOGICAL_BLOCK, Math.max(SECTOR, 2 ** Math.ceil(log2(Math.max(1, minBlock)))));
}

/**
 * Why the device cannot keep to the export's size constraints, or null. proto.md "Size
 * constraints": a client that asked for NBD_INFO_BLOCK_SIZE (ours does) MUST abide by them,
 * and a ublk device's logical block is 512 to 4096 bytes.
 */
export function unsupportedConstraints(exp: ExportCaps): string | null {
  if (exp.minBlock > MAX_LOGICAL_BLOCK) {
    return `the export's minimum block size is ${exp.minBlock} bytes, larger than the ${MAX_LOGICAL_BLOCK}-byte blocks a ublk device can have`;
  }
  const logicalBlock = logicalBlockFor(exp.minBlock);
  if (exp.maxPayload < logicalBlock) {
    return `the export's maximum payload (${exp.maxPayload} bytes) is smaller than one ${logicalBlock}-byte block`;
  }
  return null;
}

export function deviceGeometry(exp: ExportCaps, maxIoBufBytes: number): DeviceGeometry {
  const logicalBlock = logicalBlockFor(exp.minBlock);
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
