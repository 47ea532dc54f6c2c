// exportDiff: what makes a reconnected export a different disk (size, or a flag that changes
// what may be sent), and what does not (flags that only describe the server).
import * as assert from 'assert';
import type { ExportInfo } from '../../src/nbd/client';
import * as C from '../../src/nbd/constants';
import { exportDiff } from '../../src/nbd/reconnecting-client';

const base: ExportInfo = {
  name: '', size: 1 << 30, minBlock: 1, preferredBlock: 4096, maxPayload: 32 << 20,
  flags: C.TFLAG_HAS_FLAGS | C.TFLAG_SEND_FLUSH | C.TFLAG_SEND_FUA | C.TFLAG_SEND_TRIM | C.TFLAG_SEND_WRITE_ZEROES,
};

describe('nbd: exportDiff', () => {
  it('the same export is no difference', () => {
    assert.strictEqual(exportDiff(base, { ...base }), null);
  });

  it('another size is', () => {
    assert.strictEqual(exportDiff(base, { ...base, size: base.size + 512 }), `export size changed from ${1 << 30} to ${(1 << 30) + 512} bytes`);
  });

  it('read-only, flush, FUA, trim or write-zeroes appearing or going is', () => {
    for (const f of [C.TFLAG_READ_ONLY, C.TFLAG_SEND_FLUSH, C.TFLAG_SEND_FUA, C.TFLAG_SEND_TRIM, C.TFLAG_SEND_WRITE_ZEROES]) {
      const got = { ...base, flags: base.flags ^ f };
      assert.strictEqual(exportDiff(base, got), `export flags changed from 0x${base.flags.toString(16)} to 0x${got.flags.toString(16)}`);
    }
  });

  it('multi-conn, rotational, cache or block sizes changing is not', () => {
    const got = { ...base, flags: base.flags | C.TFLAG_CAN_MULTI_CONN | C.TFLAG_ROTATIONAL | C.TFLAG_SEND_CACHE, preferredBlock: 65536, maxPayload: 1 << 20 };
    assert.strictEqual(exportDiff(base, got), null);
  });
});
