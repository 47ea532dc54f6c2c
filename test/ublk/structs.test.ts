// Encoders and decoders of the ublk control payloads against bytes laid out by hand
// from the C structs in include/uapi/linux/ublk_cmd.h.
import * as assert from 'assert';
import {
  UblkAttr,
  UblkFlag,
  UblkParamType,
  ctrlOp,
  ctrlOpEncoded,
  flagNames,
  ioOpEncoded,
} from '../../src/ublk/constants';
import {
  DEV_INFO_SIZE,
  PARAMS_LAYOUT,
  addDevInfo,
  decodeDevInfo,
  decodeParams,
  encodeDevInfo,
  encodeParams,
} from '../../src/ublk/structs';

/** Little-endian bytes of an unsigned integer. */
function le(value: number | bigint, size: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  for (let i = 0; i < size; i++) {
    out.push(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}

describe('ublk structs', () => {
  describe('ublksrv_ctrl_dev_info', () => {
    // nr_hw_queues u16, queue_depth u16, state u16, pad0 u16, max_io_buf_bytes u32,
    // dev_id u32, ublksrv_pid s32, pad1 u32, flags u64, ublksrv_flags u64,
    // owner_uid u32, owner_gid u32, reserved1 u64, reserved2 u64
    const bytes = Buffer.from([
      ...le(2, 2),
      ...le(128, 2),
      ...le(1, 2),
      ...le(0, 2),
      ...le(524288, 4),
      ...le(7, 4),
      ...le(4242, 4),
      ...le(0, 4),
      ...le(0x42n, 8),
      ...le(0x1122334455667788n, 8),
      ...le(1000, 4),
      ...le(1001, 4),
      ...le(0, 8),
      ...le(0, 8),
    ]);
    const info = {
      nrHwQueues: 2,
      queueDepth: 128,
      state: 1,
      maxIoBufBytes: 524288,
      devId: 7,
      ublksrvPid: 4242,
      flags: 0x42n,
      ublksrvFlags: 0x1122334455667788n,
      ownerUid: 1000,
      ownerGid: 1001,
    };

    it('is 64 bytes', () => {
      assert.strictEqual(bytes.length, DEV_INFO_SIZE);
    });
    it('encodes', () => {
      assert.deepStrictEqual(encodeDevInfo(info), bytes);
    });
    it('decodes', () => {
      assert.deepStrictEqual(decodeDevInfo(bytes), info);
    });
    it('decodes a negative pid (no server)', () => {
      const b = Buffer.from(bytes);
      b.writeInt32LE(-1, 16);
      assert.strictEqual(decodeDevInfo(b).ublksrvPid, -1);
    });
    it('rejects a short buffer', () => {
      assert.throws(() => decodeDevInfo(bytes.subarray(0, 63)), RangeError);
    });
    it('ADD_DEV info asks for an automatic id by default', () => {
      const b = encodeDevInfo(addDevInfo({ nrHwQueues: 1, queueDepth: 64, maxIoBufBytes: 1 << 20, flags: UblkFlag.CMD_IOCTL_ENCODE }));
      assert.deepStrictEqual(
        b,
        Buffer.from([
          ...le(1, 2),
          ...le(64, 2),
          ...le(0, 4),
          ...le(1 << 20, 4),
          ...le(0xffffffff, 4),
          ...le(0, 8),
          ...le(0x40, 8),
          ...le(0, 32),
        ]),
      );
    });
  });

  describe('ublk_params', () => {
    const basic = {
      attrs: UblkAttr.VOLATILE_CACHE | UblkAttr.FUA,
      logicalBsShift: 9,
      physicalBsShift: 12,
      ioOptShift: 12,
      ioMinShift: 9,
      maxSectors: 1024,
      chunkSectors: 0,
      devSectors: 131072n,
      virtBoundaryMask: 0n,
    };
    // attrs u32, logical/physical/io_opt/io_min shifts u8 x4, max_sectors u32,
    // chunk_sectors u32, dev_sectors u64, virt_boundary_mask u64
    const basicBytes = [...le(0x0c, 4), 9, 12, 12, 9, ...le(1024, 4), ...le(0, 4), ...le(131072, 8), ...le(0, 8)];
    const discard = {
      discardAlignment: 0,
      discardGranularity: 4096,
      maxDiscardSectors: 0xffffffff >>> 9,
      maxWriteZeroesSectors: 2048,
      maxDiscardSegments: 1,
    };
    // discard_alignment, discard_granularity, max_discard_sectors,
    // max_write_zeroes_sectors u32; max_discard_segments u16, reserved0 u16
    const discardBytes = [
      ...le(0, 4),
      ...le(4096, 4),
      ...le(0xffffffff >>> 9, 4),
      ...le(2048, 4),
      ...le(1, 2),
      ...le(0, 2),
    ];

    it('has the C layout', () => {
      assert.strictEqual(basicBytes.length, PARAMS_LAYOUT.basic.size);
      assert.strictEqual(discardBytes.length, PARAMS_LAYOUT.discard.size);
      assert.strictEqual(PARAMS_LAYOUT.discard.offset, 8 + 32);
      assert.strictEqual(PARAMS_LAYOUT.devt.offset, 8 + 32 + 20);
      assert.strictEqual(PARAMS_LAYOUT.zoned.offset, 8 + 32 + 20 + 16);
      assert.strictEqual(PARAMS_LAYOUT.dma.offset, 8 + 32 + 20 + 16 + 32);
      // 116 rounded up to the u64 alignment of ublk_param_segment
      assert.strictEqual(PARAMS_LAYOUT.seg.offset, 120);
    });

    it('encodes basic alone: len 40, type BASIC', () => {
      assert.deepStrictEqual(encodeParams({ basic }), Buffer.from([...le(40, 4), ...le(1, 4), ...basicBytes]));
    });

    it('encodes basic + discard: len 60, types BASIC|DISCARD', () => {
      assert.deepStrictEqual(
        encodeParams({ basic, discard }),
        Buffer.from([...le(60, 4), ...le(3, 4), ...basicBytes, ...discardBytes]),
      );
    });

    it('encodes a later section with zeroes for the absent ones before it', () => {
      const b = encodeParams({ basic, dma: { alignment: 511 } });
      assert.strictEqual(b.length, 116);
      assert.strictEqual(b.readUInt32LE(0), 116);
      assert.strictEqual(b.readUInt32LE(4), UblkParamType.BASIC | UblkParamType.DMA_ALIGN);
      assert.deepStrictEqual([...b.subarray(40, 108)], new Array(68).fill(0));
      assert.strictEqual(b.readUInt32LE(108), 511);
    });

    it('decodes what GET_PARAMS returns: header len as last set, DEVT filled in', () => {
      // The kernel echoes the len SET_PARAMS carried (60) but writes its whole struct.
      const devtBytes = [...le(240, 4), ...le(3, 4), ...le(259, 4), ...le(1, 4)];
      const b = Buffer.alloc(152);
      Buffer.from([
        ...le(60, 4),
        ...le(UblkParamType.BASIC | UblkParamType.DISCARD | UblkParamType.DEVT, 4),
        ...basicBytes,
        ...discardBytes,
        ...devtBytes,
      ]).copy(b);
      assert.deepStrictEqual(decodeParams(b), {
        basic,
        discard,
        devt: { charMajor: 240, charMinor: 3, diskMajor: 259, diskMinor: 1 },
      });
    });

    it('skips sections whose bytes are missing', () => {
      const b = Buffer.from([...le(40, 4), ...le(UblkParamType.BASIC | UblkParamType.DISCARD, 4), ...basicBytes]);
      assert.deepStrictEqual(decodeParams(b), { basic });
    });

    it('round-trips zoned and segment', () => {
      const p = {
        basic,
        zoned: { maxOpenZones: 8, maxActiveZones: 16, maxZoneAppendSectors: 256 },
        seg: { segBoundaryMask: 0xfffn, maxSegmentSize: 65536, maxSegments: 128 },
      };
      assert.deepStrictEqual(decodeParams(encodeParams(p)), p);
    });
  });

  describe('opcodes', () => {
    it('ioctl-encodes control commands as _IOR/_IOWR(\'u\', nr, struct ublksrv_ctrl_cmd)', () => {
      assert.strictEqual(ctrlOpEncoded('ADD_DEV'), 0xc0207504);
      assert.strictEqual(ctrlOpEncoded('DEL_DEV'), 0xc0207505);
      assert.strictEqual(ctrlOpEncoded('START_DEV'), 0xc0207506);
      assert.strictEqual(ctrlOpEncoded('STOP_DEV'), 0xc0207507);
      assert.strictEqual(ctrlOpEncoded('SET_PARAMS'), 0xc0207508);
      assert.strictEqual(ctrlOpEncoded('GET_DEV_INFO'), 0x80207502);
      assert.strictEqual(ctrlOpEncoded('GET_PARAMS'), 0x80207509);
      assert.strictEqual(ctrlOpEncoded('END_USER_RECOVERY'), 0xc0207511);
      assert.strictEqual(ctrlOpEncoded('GET_FEATURES'), 0x80207513);
      assert.strictEqual(ctrlOpEncoded('DEL_DEV_ASYNC'), 0x80207514);
    });
    it('uses bare numbers for legacy opcodes, except for commands that never had one', () => {
      assert.strictEqual(ctrlOp('ADD_DEV', false), 0x04);
      assert.strictEqual(ctrlOp('ADD_DEV', true), 0xc0207504);
      assert.strictEqual(ctrlOp('GET_FEATURES', false), 0x80207513);
    });
    it('ioctl-encodes I/O commands as _IOWR(\'u\', nr, struct ublksrv_io_cmd)', () => {
      assert.strictEqual(ioOpEncoded('FETCH_REQ'), 0xc0107520);
      assert.strictEqual(ioOpEncoded('COMMIT_AND_FETCH_REQ'), 0xc0107521);
    });
    it('names flags', () => {
      assert.deepStrictEqual(flagNames(0x1fen | (1n << 40n)), [
        'URING_CMD_COMP_IN_TASK',
        'NEED_GET_DATA',
        'USER_RECOVERY',
        'USER_RECOVERY_REISSUE',
        'UNPRIVILEGED_DEV',
        'CMD_IOCTL_ENCODE',
        'USER_COPY',
        'ZONED',
        'bit40',
      ]);
    });
  });
});
