// What the device offers the kernel follows what the export offers (proto.md: a client
// MUST NOT use a feature the server did not advertise, and MUST keep to the size
// constraints it asked for). Pure: no device is made.
import * as assert from 'assert';
import { deviceGeometry, unsupportedConstraints, type ExportCaps } from '../../src/device/capabilities';
import * as N from '../../src/nbd/constants';
import { UblkAttr, type UblkParams } from '../../src/ublk';

const MiB = 1024 * 1024;
const ALL = N.TFLAG_HAS_FLAGS | N.TFLAG_SEND_FLUSH | N.TFLAG_SEND_FUA | N.TFLAG_SEND_TRIM | N.TFLAG_SEND_WRITE_ZEROES;

const attrs = (p: UblkParams): number => p.basic?.attrs ?? 0;

function caps(over: Partial<ExportCaps> = {}): ExportCaps {
  return { size: 64 * MiB, flags: ALL, minBlock: 1, preferredBlock: 4096, maxPayload: 32 * MiB, ...over };
}

describe('device capabilities from the export', function () {
  it('no flush, FUA, discard or write-zeroes to the kernel unless the export advertises it', function () {
    const none = deviceGeometry(caps({ flags: N.TFLAG_HAS_FLAGS }), MiB).params;
    assert.strictEqual(attrs(none) & (UblkAttr.VOLATILE_CACHE | UblkAttr.FUA), 0);
    assert.strictEqual(none.discard, undefined);
    // FUA needs a volatile cache (the kernel sends FUA only then), so no flush means no FUA.
    const fuaOnly = deviceGeometry(caps({ flags: N.TFLAG_HAS_FLAGS | N.TFLAG_SEND_FUA }), MiB).params;
    assert.strictEqual(attrs(fuaOnly) & UblkAttr.FUA, 0);
    const trimOnly = deviceGeometry(caps({ flags: N.TFLAG_HAS_FLAGS | N.TFLAG_SEND_TRIM }), MiB).params;
    assert.strictEqual(trimOnly.discard?.maxWriteZeroesSectors, 0);
    assert.ok((trimOnly.discard?.maxDiscardSectors ?? 0) > 0);
    const all = deviceGeometry(caps(), MiB).params;
    assert.strictEqual(attrs(all) & (UblkAttr.VOLATILE_CACHE | UblkAttr.FUA), UblkAttr.VOLATILE_CACHE | UblkAttr.FUA);
    assert.ok((all.discard?.maxWriteZeroesSectors ?? 0) > 0);
    const ro = deviceGeometry(caps({ flags: ALL | N.TFLAG_READ_ONLY }), MiB).params;
    assert.ok((attrs(ro) & UblkAttr.READ_ONLY) !== 0);
    assert.strictEqual(ro.discard, undefined);
  });

  it('requests never exceed the maximum payload, and are whole minimum blocks', function () {
    for (const [minBlock, maxPayload, maxIo] of [[1, 32 * MiB, 512 * 1024], [512, 65536, MiB], [4096, 1 << 20, 4 * MiB], [2048, 10000, MiB]]) {
      const g = deviceGeometry(caps({ minBlock: minBlock as number, maxPayload: maxPayload as number }), maxIo as number);
      const maxBytes = (g.params.basic?.maxSectors ?? 0) * 512;
      assert.ok(maxBytes <= (maxPayload as number) && maxBytes > 0, `max ${maxBytes} for payload ${maxPayload}`);
      assert.ok(g.logicalBlock >= (minBlock as number) && g.logicalBlock % (minBlock as number) === 0);
      assert.strictEqual(maxBytes % g.logicalBlock, 0);
    }
  });

  it('size constraints a ublk device cannot keep are refused with a reason', function () {
    assert.strictEqual(unsupportedConstraints(caps()), null);
    assert.strictEqual(unsupportedConstraints(caps({ minBlock: 4096, maxPayload: 4096 })), null);
    assert.match(unsupportedConstraints(caps({ minBlock: 65536, preferredBlock: 65536 })) ?? '', /minimum block size is 65536/);
    assert.match(unsupportedConstraints(caps({ minBlock: 4096, maxPayload: 2048 })) ?? '', /maximum payload \(2048 bytes\)/);
  });
});
