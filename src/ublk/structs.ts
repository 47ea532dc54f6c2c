// Pure encoders/decoders for the control-command payloads: struct
// ublksrv_ctrl_dev_info (ADD_DEV, GET_DEV_INFO) and struct ublk_params
// (SET_PARAMS, GET_PARAMS). Little-endian, as on every architecture ublk runs on
// that we build for; offsets follow the C layout of ublk_cmd.h.

import { UBLK_DEV_ID_AUTO, UblkParamType } from './constants';

/** struct ublksrv_ctrl_dev_info. */
export interface DevInfo {
  nrHwQueues: number;
  queueDepth: number;
  state: number;
  maxIoBufBytes: number;
  devId: number;
  /** -1 when no server is attached. */
  ublksrvPid: number;
  flags: bigint;
  /** Opaque to the kernel; ours to use. */
  ublksrvFlags: bigint;
  ownerUid: number;
  ownerGid: number;
}

export const DEV_INFO_SIZE = 64;

export function encodeDevInfo(info: DevInfo): Buffer {
  const b = Buffer.alloc(DEV_INFO_SIZE);
  b.writeUInt16LE(info.nrHwQueues, 0);
  b.writeUInt16LE(info.queueDepth, 2);
  b.writeUInt16LE(info.state, 4);
  // 6: pad0
  b.writeUInt32LE(info.maxIoBufBytes, 8);
  b.writeUInt32LE(info.devId, 12);
  b.writeInt32LE(info.ublksrvPid, 16);
  // 20: pad1
  b.writeBigUInt64LE(info.flags, 24);
  b.writeBigUInt64LE(info.ublksrvFlags, 32);
  b.writeUInt32LE(info.ownerUid, 40);
  b.writeUInt32LE(info.ownerGid, 44);
  // 48, 56: reserved1, reserved2
  return b;
}

export function decodeDevInfo(b: Buffer): DevInfo {
  if (b.length < DEV_INFO_SIZE) throw new RangeError(`dev_info needs ${DEV_INFO_SIZE} bytes, got ${b.length}`);
  return {
    nrHwQueues: b.readUInt16LE(0),
    queueDepth: b.readUInt16LE(2),
    state: b.readUInt16LE(4),
    maxIoBufBytes: b.readUInt32LE(8),
    devId: b.readUInt32LE(12),
    ublksrvPid: b.readInt32LE(16),
    flags: b.readBigUInt64LE(24),
    ublksrvFlags: b.readBigUInt64LE(32),
    ownerUid: b.readUInt32LE(40),
    ownerGid: b.readUInt32LE(44),
  };
}

/** The dev_info ADD_DEV sends: what we ask for; the kernel writes back what it granted. */
export function addDevInfo(opts: {
  devId?: number;
  nrHwQueues: number;
  queueDepth: number;
  maxIoBufBytes: number;
  flags: bigint;
  ublksrvFlags?: bigint;
}): DevInfo {
  return {
    nrHwQueues: opts.nrHwQueues,
    queueDepth: opts.queueDepth,
    state: 0,
    maxIoBufBytes: opts.maxIoBufBytes,
    devId: opts.devId ?? UBLK_DEV_ID_AUTO,
    ublksrvPid: 0,
    flags: opts.flags,
    ublksrvFlags: opts.ublksrvFlags ?? 0n,
    ownerUid: 0,
    ownerGid: 0,
  };
}

/** struct ublk_param_basic (32 bytes). Sector counts are in 512-byte units. */
export interface ParamBasic {
  /** UBLK_ATTR_* */
  attrs: number;
  logicalBsShift: number;
  physicalBsShift: number;
  ioOptShift: number;
  ioMinShift: number;
  maxSectors: number;
  chunkSectors: number;
  devSectors: bigint;
  virtBoundaryMask: bigint;
}

/** struct ublk_param_discard (20 bytes). */
export interface ParamDiscard {
  discardAlignment: number;
  discardGranularity: number;
  maxDiscardSectors: number;
  maxWriteZeroesSectors: number;
  /** The driver supports exactly 1 when discard is enabled. */
  maxDiscardSegments: number;
}

/** struct ublk_param_devt (16 bytes): read-only, filled in by GET_PARAMS. */
export interface ParamDevt {
  charMajor: number;
  charMinor: number;
  diskMajor: number;
  diskMinor: number;
}

/** struct ublk_param_zoned (32 bytes). */
export interface ParamZoned {
  maxOpenZones: number;
  maxActiveZones: number;
  maxZoneAppendSectors: number;
}

/** struct ublk_param_dma_align (8 bytes; Linux >= 6.15). */
export interface ParamDmaAlign {
  alignment: number;
}

/** struct ublk_param_segment (16 bytes; Linux >= 6.15). */
export interface ParamSegment {
  segBoundaryMask: bigint;
  maxSegmentSize: number;
  maxSegments: number;
}

/** struct ublk_params: each present section sets its UBLK_PARAM_TYPE_* bit. */
export interface UblkParams {
  basic?: ParamBasic;
  discard?: ParamDiscard;
  devt?: ParamDevt;
  zoned?: ParamZoned;
  dma?: ParamDmaAlign;
  seg?: ParamSegment;
}

/** Byte offsets of the sections in struct ublk_params (C alignment included). */
export const PARAMS_LAYOUT = {
  header: { offset: 0, size: 8 },
  basic: { offset: 8, size: 32 },
  discard: { offset: 40, size: 20 },
  devt: { offset: 60, size: 16 },
  zoned: { offset: 76, size: 32 },
  dma: { offset: 108, size: 8 },
  // ublk_param_segment holds a u64, so it starts on an 8-byte boundary.
  seg: { offset: 120, size: 16 },
} as const;

/** The whole struct as this code knows it (integrity, 7.0+, included). */
export const PARAMS_MAX_SIZE = 152;

type Section = Exclude<keyof typeof PARAMS_LAYOUT, 'header'>;
const SECTION_TYPE: Record<Section, number> = {
  basic: UblkParamType.BASIC,
  discard: UblkParamType.DISCARD,
  devt: UblkParamType.DEVT,
  zoned: UblkParamType.ZONED,
  dma: UblkParamType.DMA_ALIGN,
  seg: UblkParamType.SEGMENT,
};
const SECTIONS = Object.keys(SECTION_TYPE) as Section[];

/**
 * Encodes the present sections. `len` covers up to the end of the last present
 * section: the kernel copies that many bytes and clamps it to its own struct, so a
 * shorter struct is fine for older and newer kernels alike.
 */
export function encodeParams(p: UblkParams): Buffer {
  let types = 0;
  let len: number = PARAMS_LAYOUT.header.size;
  for (const s of SECTIONS) {
    if (p[s] === undefined) continue;
    types |= SECTION_TYPE[s];
    len = Math.max(len, PARAMS_LAYOUT[s].offset + PARAMS_LAYOUT[s].size);
  }
  const b = Buffer.alloc(len);
  b.writeUInt32LE(len, 0);
  b.writeUInt32LE(types, 4);
  if (p.basic) {
    const o = PARAMS_LAYOUT.basic.offset;
    b.writeUInt32LE(p.basic.attrs, o);
    b.writeUInt8(p.basic.logicalBsShift, o + 4);
    b.writeUInt8(p.basic.physicalBsShift, o + 5);
    b.writeUInt8(p.basic.ioOptShift, o + 6);
    b.writeUInt8(p.basic.ioMinShift, o + 7);
    b.writeUInt32LE(p.basic.maxSectors, o + 8);
    b.writeUInt32LE(p.basic.chunkSectors, o + 12);
    b.writeBigUInt64LE(p.basic.devSectors, o + 16);
    b.writeBigUInt64LE(p.basic.virtBoundaryMask, o + 24);
  }
  if (p.discard) {
    const o = PARAMS_LAYOUT.discard.offset;
    b.writeUInt32LE(p.discard.discardAlignment, o);
    b.writeUInt32LE(p.discard.discardGranularity, o + 4);
    b.writeUInt32LE(p.discard.maxDiscardSectors, o + 8);
    b.writeUInt32LE(p.discard.maxWriteZeroesSectors, o + 12);
    b.writeUInt16LE(p.discard.maxDiscardSegments, o + 16);
  }
  if (p.devt) {
    const o = PARAMS_LAYOUT.devt.offset;
    b.writeUInt32LE(p.devt.charMajor, o);
    b.writeUInt32LE(p.devt.charMinor, o + 4);
    b.writeUInt32LE(p.devt.diskMajor, o + 8);
    b.writeUInt32LE(p.devt.diskMinor, o + 12);
  }
  if (p.zoned) {
    const o = PARAMS_LAYOUT.zoned.offset;
    b.writeUInt32LE(p.zoned.maxOpenZones, o);
    b.writeUInt32LE(p.zoned.maxActiveZones, o + 4);
    b.writeUInt32LE(p.zoned.maxZoneAppendSectors, o + 8);
  }
  if (p.dma) {
    b.writeUInt32LE(p.dma.alignment, PARAMS_LAYOUT.dma.offset);
  }
  if (p.seg) {
    const o = PARAMS_LAYOUT.seg.offset;
    b.writeBigUInt64LE(p.seg.segBoundaryMask, o);
    b.writeUInt32LE(p.seg.maxSegmentSize, o + 8);
    b.writeUInt16LE(p.seg.maxSegments, o + 12);
  }
  return b;
}

/**
 * Decodes the sections whose type bit is set and whose bytes are present. The
 * header's len is not trusted for bounds: GET_PARAMS echoes the len SET_PARAMS
 * was given, while copying its whole struct.
 */
export function decodeParams(b: Buffer): UblkParams {
  if (b.length < PARAMS_LAYOUT.header.size) throw new RangeError(`ublk_params needs at least 8 bytes, got ${b.length}`);
  const types = b.readUInt32LE(4);
  const has = (s: Section): boolean =>
    (types & SECTION_TYPE[s]) !== 0 && b.length >= PARAMS_LAYOUT[s].offset + PARAMS_LAYOUT[s].size;
  const p: UblkParams = {};
  if (has('basic')) {
    const o = PARAMS_LAYOUT.basic.offset;
    p.basic = {
      attrs: b.readUInt32LE(o),
      logicalBsShift: b.readUInt8(o + 4),
      physicalBsShift: b.readUInt8(o + 5),
      ioOptShift: b.readUInt8(o + 6),
      ioMinShift: b.readUInt8(o + 7),
      maxSectors: b.readUInt32LE(o + 8),
      chunkSectors: b.readUInt32LE(o + 12),
      devSectors: b.readBigUInt64LE(o + 16),
      virtBoundaryMask: b.readBigUInt64LE(o + 24),
    };
  }
  if (has('discard')) {
    const o = PARAMS_LAYOUT.discard.offset;
    p.discard = {
      discardAlignment: b.readUInt32LE(o),
      discardGranularity: b.readUInt32LE(o + 4),
      maxDiscardSectors: b.readUInt32LE(o + 8),
      maxWriteZeroesSectors: b.readUInt32LE(o + 12),
      maxDiscardSegments: b.readUInt16LE(o + 16),
    };
  }
  if (has('devt')) {
    const o = PARAMS_LAYOUT.devt.offset;
    p.devt = {
      charMajor: b.readUInt32LE(o),
      charMinor: b.readUInt32LE(o + 4),
      diskMajor: b.readUInt32LE(o + 8),
      diskMinor: b.readUInt32LE(o + 12),
    };
  }
  if (has('zoned')) {
    const o = PARAMS_LAYOUT.zoned.offset;
    p.zoned = {
      maxOpenZones: b.readUInt32LE(o),
      maxActiveZones: b.readUInt32LE(o + 4),
      maxZoneAppendSectors: b.readUInt32LE(o + 8),
    };
  }
  if (has('dma')) {
    p.dma = { alignment: b.readUInt32LE(PARAMS_LAYOUT.dma.offset) };
  }
  if (has('seg')) {
    const o = PARAMS_LAYOUT.seg.offset;
    p.seg = {
      segBoundaryMask: b.readBigUInt64LE(o),
      maxSegmentSize: b.readUInt32LE(o + 8),
      maxSegments: b.readUInt16LE(o + 12),
    };
  }
  return p;
}
