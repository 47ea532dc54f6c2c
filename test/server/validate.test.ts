// validateRequest and toNbdErrno on the host: which request gets which errno (proto.md
// "Request message requirements", "Error values"), and how a store's failure is narrowed to
// the errnos NBD carries.
import * as assert from 'assert';
import { validateRequest, toNbdErrno, type ExportLimits } from '../../src/server/validate';
import { Cmd } from '../../src/nbd/constants';

// proto.md "Error values"
const EPERM = 1;
const EIO = 5;
const ENOMEM = 12;
const EINVAL = 22;
const ENOSPC = 28;
const EOVERFLOW = 75;
const ENOTSUP = 95;
const FUA = 1;
const NO_HOLE = 2;

const rw: ExportLimits = { size: 1 << 20, readOnly: false, canTrim: true, canZero: true, sendFua: true, maxPayload: 65536 };
const ro: ExportLimits = { ...rw, readOnly: true, canTrim: false, canZero: false, sendFua: false };

describe('server: validateRequest', () => {
  it('accepts requests inside the export, up to its last byte', () => {
    assert.strictEqual(validateRequest(Cmd.READ, 0, 0, 65536, rw), 0);
    assert.strictEqual(validateRequest(Cmd.WRITE, FUA, (1 << 20) - 4096, 4096, rw), 0);
    assert.strictEqual(validateRequest(Cmd.TRIM, 0, 0, 1 << 20, rw), 0);
    assert.strictEqual(validateRequest(Cmd.WRITE_ZEROES, NO_HOLE | FUA, 4096, 4096, rw), 0);
    assert.strictEqual(validateRequest(Cmd.FLUSH, 0, 0, 0, rw), 0);
    assert.strictEqual(validateRequest(Cmd.DISC, 0, 0, 0, rw), 0);
  });

  it('past the end: EINVAL for reads and trims, ENOSPC for writes', () => {
    assert.strictEqual(validateRequest(Cmd.READ, 0, (1 << 20) - 512, 1024, rw), EINVAL);
    assert.strictEqual(validateRequest(Cmd.TRIM, 0, 1 << 20, 1, rw), EINVAL);
    assert.strictEqual(validateRequest(Cmd.WRITE, 0, (1 << 20) - 512, 1024, rw), ENOSPC);
    assert.strictEqual(validateRequest(Cmd.WRITE_ZEROES, 0, 1 << 20, 4096, rw), ENOSPC);
  });

  it('payloads over the maximum are EOVERFLOW; FLUSH with a range is EINVAL', () => {
    assert.strictEqual(validateRequest(Cmd.READ, 0, 0, 65537, rw), EOVERFLOW);
    assert.strictEqual(validateRequest(Cmd.WRITE, 0, 0, 65537, rw), EOVERFLOW);
    assert.strictEqual(validateRequest(Cmd.FLUSH, 0, 0, 4096, rw), EINVAL);
  });

  it('flags: FUA on any command once SEND_FUA is advertised, NO_HOLE only on WRITE_ZEROES, nothing else', () => {
    assert.strictEqual(validateRequest(Cmd.READ, FUA, 0, 512, rw), 0);
    assert.strictEqual(validateRequest(Cmd.FLUSH, FUA, 0, 0, rw), 0);
    assert.strictEqual(validateRequest(Cmd.READ, FUA, 0, 512, { ...rw, sendFua: false }), EINVAL);
    assert.strictEqual(validateRequest(Cmd.WRITE, NO_HOLE, 0, 512, rw), EINVAL);
    assert.strictEqual(validateRequest(Cmd.READ, 1 << 15, 0, 512, rw), EINVAL);
  });

  it('commands not advertised are EINVAL; writes to a read-only export are EPERM, before their flags are looked at', () => {
    assert.strictEqual(validateRequest(Cmd.CACHE, 0, 0, 512, rw), EINVAL);
    assert.strictEqual(validateRequest(Cmd.BLOCK_STATUS, 0, 0, 512, rw), EINVAL);
    assert.strictEqual(validateRequest(99, 0, 0, 512, rw), EINVAL);
    assert.strictEqual(validateRequest(Cmd.TRIM, 0, 0, 512, { ...rw, canTrim: false }), EINVAL);
    assert.strictEqual(validateRequest(Cmd.WRITE_ZEROES, 0, 0, 512, { ...rw, canZero: false }), EINVAL);
    assert.strictEqual(validateRequest(Cmd.WRITE, FUA, 0, 512, ro), EPERM);
    assert.strictEqual(validateRequest(Cmd.TRIM, 0, 0, 512, ro), EPERM);
    assert.strictEqual(validateRequest(Cmd.WRITE_ZEROES, NO_HOLE, 0, 512, ro), EPERM);
    assert.strictEqual(validateRequest(Cmd.READ, 0, 0, 512, ro), 0);
  });
});

describe('server: toNbdErrno', () => {
  const fail = (code: string, errno?: number): Error => Object.assign(new Error(code), { code, ...(errno === undefined ? {} : { errno }) });

  it('narrows store failures to the errnos NBD carries', () => {
    assert.strictEqual(toNbdErrno(fail('EACCES', -13)), EPERM);
    assert.strictEqual(toNbdErrno(fail('EROFS', -30)), EPERM);
    assert.strictEqual(toNbdErrno(fail('EDQUOT', -122)), ENOSPC);
    assert.strictEqual(toNbdErrno(fail('EFBIG', -27)), ENOSPC);
    assert.strictEqual(toNbdErrno(fail('ENOMEM', -12)), ENOMEM);
    assert.strictEqual(toNbdErrno(fail('EINVAL', -22)), EINVAL);
    assert.strictEqual(toNbdErrno(fail('EBADF', -9)), EIO);
    assert.strictEqual(toNbdErrno(new Error('no errno at all')), EIO);
  });

  it('ENOTSUP from Node\'s fs and EOPNOTSUPP from the addon are the same errno', () => {
    assert.strictEqual(toNbdErrno(fail('ENOTSUP', -95)), ENOTSUP);
    assert.strictEqual(toNbdErrno(fail('EOPNOTSUPP', 95)), ENOTSUP);
    assert.strictEqual(toNbdErrno(fail('ENOTSUP')), ENOTSUP);
  });
});
