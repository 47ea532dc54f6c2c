// One errno module for every layer: names from numbers (EOPNOTSUPP, never ENOTSUP), numbers
// from what Node's fs, the addons and NBD replies carry.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DetailedError, EIO, EOPNOTSUPP, detailOf, errnoName, errnoOf } from '../src/errno';
import { NBD_ENOTSUP } from '../src/nbd/constants';
import { NbdRequestError } from '../src/nbd/errors';

describe('errno', () => {
  it('names numbers as the kernel does: 95 is EOPNOTSUPP', () => {
    assert.strictEqual(errnoName(5), 'EIO');
    assert.strictEqual(errnoName(2), 'ENOENT');
    assert.strictEqual(errnoName(95), 'EOPNOTSUPP');
    assert.strictEqual(errnoName(-28), 'ENOSPC');
    assert.strictEqual(errnoName(4000), 'E4000');
    assert.strictEqual(EIO, 5);
    assert.strictEqual(EOPNOTSUPP, 95);
  });

  it('reads the errno of a real fs error (negative errno), of an addon error (positive) and of a bare code', () => {
    let fsErr: unknown;
    try {
      fs.openSync(path.join(os.tmpdir(), `netdisk-no-such-file-${process.pid}`), 'r');
    } catch (err) {
      fsErr = err;
    }
    assert.strictEqual(errnoOf(fsErr), 2);
    assert.strictEqual(errnoOf({ errno: 28, code: 'ENOSPC', syscall: 'write' }), 28);
    assert.strictEqual(errnoOf({ code: 'ENOTSUP' }), 95, 'Node\'s ENOTSUP is EOPNOTSUPP');
    assert.strictEqual(errnoOf({ code: 'EOPNOTSUPP' }), 95);
    assert.strictEqual(errnoOf({ code: 'NBD_CONNECTION' }), undefined);
    assert.strictEqual(errnoOf(new Error('no errno')), undefined);
    assert.strictEqual(errnoOf(null), undefined);
  });

  it('an NBD error reply is named by the same module; an errno outside the spec reads as EINVAL', () => {
    const e = new NbdRequestError(NBD_ENOTSUP, 'TRIM');
    assert.strictEqual(e.errno, 95);
    assert.strictEqual(e.message, 'TRIM failed: EOPNOTSUPP');
    const odd = new NbdRequestError(13, 'READ');
    assert.strictEqual(odd.errno, 22);
    assert.strictEqual(odd.message, 'READ failed: EINVAL (server sent 13)');
  });

  it('a reported failure keeps the code, errno and cause beneath it', () => {
    const below = Object.assign(new Error('io_uring_setup: operation not permitted'), { errno: 1, code: 'EPERM', syscall: 'io_uring_setup' });
    class Outer extends DetailedError {}
    const outer = new Outer('cannot start', detailOf(below));
    assert.strictEqual(outer.name, 'Outer');
    assert.strictEqual(outer.code, 'EPERM');
    assert.strictEqual(outer.errno, 1);
    assert.strictEqual(outer.cause, below);
    const top = new DetailedError('add: cannot start', detailOf(outer));
    assert.strictEqual(top.code, 'EPERM');
    assert.strictEqual(top.errno, 1);
    assert.strictEqual(top.cause, outer);
  });
});
