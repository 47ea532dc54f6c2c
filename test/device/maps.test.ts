// The device's pure maps, on the host: ublk request -> NBD command and flags (ops.ts), NBD
// export -> ublk parameters (capabilities.ts). Expected values are written out from the
// specs (proto.md, ublk_cmd.h), not computed by the code under test.
import * as assert from 'assert';
import { deviceGeometry, type ExportCaps } from '../../src/device/capabilities';
import { nbdCommand, nbdFlags } from '../../src/device/ops';
import * as N from '../../src/nbd/constants';
import { UblkAttr, UblkIoFlag, UblkIoOp } from '../../src/ublk/constants';

const GiB = 2 ** 30;

function caps(over: Partial<ExportCaps> = {}): ExportCaps {
  return { size: GiB, flags: N.TFLAG_HAS_FLAGS, minBlock: 1, preferredBlock: 4096, maxPayload: 32 * 2 ** 20, ...over };
}

describe('device: ublk op -> NBD command', () => {
  it('maps the five ops NBD has, and nothing else', () => {
    // proto.md: READ 0, WRITE 1, FLUSH 3, TRIM 4, WRITE_ZEROES 6.
    assert.deepStrictEqual(
      [UblkIoOp.READ, UblkIoOp.WRITE, UblkIoOp.FLUSH, UblkIoOp.DISCARD, UblkIoOp.WRITE_ZEROES].map(nbdCommand),
      [0, 1, 3, 4, 6]);
    for (const op of [UblkIoOp.WRITE_SAME, UblkIoOp.ZONE_OPEN, UblkIoOp.ZONE_APPEND, UblkIoOp.ZONE_RESET, 255]) {
      assert.strictEqual(nbdCommand(op), -1, `op ${op}`);
    }
  });

  it('FUA only where the export takes it and never on FLUSH; NOUNMAP is NO_HOLE on WRITE_ZEROES only', () => {
    const fuaExport = N.TFLAG_SEND_FUA | N.TFLAG_SEND_FLUSH;
    assert.strictEqual(nbdFlags(UblkIoOp.WRITE, UblkIoFlag.FUA, fuaExport), 1);
    assert.strictEqual(nbdFlags(UblkIoOp.WRITE, UblkIoFlag.FUA, N.TFLAG_SEND_FLUSH), 0);
    assert.strictEqual(nbdFlags(UblkIoOp.FLUSH, UblkIoFlag.FUA, fuaExport), 0);
    assert.strictEqual(nbdFlags(UblkIoOp.WRITE, 0, fuaExport), 0);
    assert.strictEqual(nbdFlags(UblkIoOp.WRITE_ZEROES, UblkIoFlag.NOUNMAP, 0), 2);
    assert.strictEqual(nbdFlags(UblkIoOp.WRITE_ZEROES, UblkIoFlag.NOUNMAP | UblkIoFlag.FUA, fuaExport), 3);
    assert.strictEqual(nbdFlags(UblkIoOp.DISCARD, UblkIoFlag.NOUNMAP, 0), 0);
    assert.strictEqual(nbdFlags(UblkIoOp.READ, UblkIoFlag.FAILFAST_DEV | UblkIoFlag.META, fuaExport), 0);
  });
});

describe('device: NBD export -> ublk parameters', () => {
  it('a plain writable export: 512-byte logical blocks, 4K physical, no cache, no discard', () => {
    const g = deviceGeometry(caps(), 512 * 1024);
    assert.strictEqual(g.logicalBlock, 512);
    assert.strictEqual(g.deviceBytes, GiB);
    assert.deepStrictEqual(g.params.basic, {
      attrs: 0, logicalBsShift: 9, physicalBsShift: 12, ioOptShift: 12, ioMinShift: 9, maxSectors: 1024, chunkSectors: 0,
      devSectors: BigInt(GiB / 512), virtBoundaryMask: 0n,
    });
    assert.strictEqual(g.params.discard, undefined);
  });

  it('flush, FUA, trim, zeroes and rotational become attributes and discard limits', () => {
    const all = N.TFLAG_SEND_FLUSH | N.TFLAG_SEND_FUA | N.TFLAG_SEND_TRIM | N.TFLAG_SEND_WRITE_ZEROES | N.TFLAG_ROTATIONAL;
    const g = deviceGeometry(caps({ flags: all }), 512 * 1024);
    assert.strictEqual(g.params.basic?.attrs, UblkAttr.VOLATILE_CACHE | UblkAttr.FUA | UblkAttr.ROTATIONAL);
    assert.deepStrictEqual(g.params.discard, {
      discardAlignment: 0, discardGranularity: 4096, maxDiscardSectors: 2 ** 22, maxWriteZeroesSectors: 2 ** 22, maxDiscardSegments: 1,
    });
    // FUA without FLUSH is not advertised: the kernel sends FUA only to a device with a volatile cache.
    assert.strictEqual(deviceGeometry(caps({ flags: N.TFLAG_SEND_FUA }), 512 * 1024).params.basic?.attrs, 0);
  });

  it('a read-only export is read-only and gets neither discard nor write zeroes', () => {
    const g = deviceGeometry(caps({ flags: N.TFLAG_READ_ONLY | N.TFLAG_SEND_TRIM | N.TFLAG_SEND_WRITE_ZEROES }), 512 * 1024);
    assert.strictEqual(g.params.basic?.attrs, UblkAttr.READ_ONLY);
    assert.strictEqual(g.params.discard, undefined);
  });

  it('block sizes: the logical block is the server\'s minimum (a power of two, proto.md) within 512..4096; the tail is not exposed', () => {
    assert.strictEqual(deviceGeometry(caps({ minBlock: 2048 }), 512 * 1024).logicalBlock, 2048);
    assert.strictEqual(deviceGeometry(caps({ minBlock: 1 }), 512 * 1024).logicalBlock, 512);
    const g = deviceGeometry(caps({ minBlock: 8192, preferredBlock: 65536, size: 10_000 }), 512 * 1024);
    assert.strictEqual(g.logicalBlock, 4096);
    assert.strictEqual(g.params.basic?.physicalBsShift, 12);
    assert.strictEqual(g.deviceBytes, 8192);
    assert.strictEqual(g.params.basic?.devSectors, 16n);
    assert.strictEqual(deviceGeometry(caps({ size: 511 }), 4096).deviceBytes, 0);
  });

  it('the largest request is the smaller of max I/O and the server\'s max payload, in whole logical blocks', () => {
    assert.strictEqual(deviceGeometry(caps({ maxPayload: 65536 }), 512 * 1024).params.basic?.maxSectors, 128);
    assert.strictEqual(deviceGeometry(caps(), 4096).params.basic?.maxSectors, 8);
    assert.strictEqual(deviceGeometry(caps({ minBlock: 4096, maxPayload: 10_000 }), 512 * 1024).params.basic?.maxSectors, 16);
  });
});
