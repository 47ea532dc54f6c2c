// `bench --transport LIST --zero-copy LIST`: which configurations of ours one run measures,
// and the mistakes refused (exit 2) before anything is attached.
import * as assert from 'assert';
import { benchVariants } from '../../src/cli/bench';
import { UsageError } from '../../src/cli/errors';
import { CLI, run } from '../device/helpers';

describe('cli: bench --transport and --zero-copy lists', function () {
  this.timeout(60_000);

  it('one configuration keeps the key "ublk" and passes only what was given', () => {
    assert.deepStrictEqual(benchVariants(undefined, undefined), [{ key: 'ublk', settings: {} }]);
    assert.deepStrictEqual(benchVariants('ring', undefined), [{ key: 'ublk', settings: { transport: 'ring' } }]);
    assert.deepStrictEqual(benchVariants('ring', 'off'), [{ key: 'ublk', settings: { transport: 'ring', zeroCopy: 'off' } }]);
    assert.deepStrictEqual(benchVariants(undefined, 'off'), [{ key: 'ublk', settings: { zeroCopy: 'off' } }]);
  });

  it('a list makes a device per transport, and per zero-copy setting where it can matter, in the order given', () => {
    assert.deepStrictEqual(benchVariants('ring,stream', undefined), [
      { key: 'ublk-ring', settings: { transport: 'ring' } },
      { key: 'ublk-stream', settings: { transport: 'stream' } },
    ]);
    assert.deepStrictEqual(benchVariants('ring', 'auto,off'), [
      { key: 'ublk-zero-copy-auto', settings: { transport: 'ring', zeroCopy: 'auto' } },
      { key: 'ublk-zero-copy-off', settings: { transport: 'ring', zeroCopy: 'off' } },
    ]);
    // The stream transport always copies: it runs once, with the first setting.
    assert.deepStrictEqual(benchVariants('stream, ring', 'auto,off'), [
      { key: 'ublk-stream', settings: { transport: 'stream', zeroCopy: 'auto' } },
      { key: 'ublk-ring-zero-copy-auto', settings: { transport: 'ring', zeroCopy: 'auto' } },
      { key: 'ublk-ring-zero-copy-off', settings: { transport: 'ring', zeroCopy: 'off' } },
    ]);
  });

  it('refuses unknown, repeated and pointless values', () => {
    const refused = (t: string | undefined, z: string | undefined, re: RegExp): void => {
      assert.throws(() => benchVariants(t, z), (e: Error) => e instanceof UsageError && re.test(e.message), `${t} ${z}`);
    };
    refused('ring,tcp', undefined, /^--transport must be one of stream, ring, not "tcp"$/);
    refused('ring,', undefined, /^--transport must be one of stream, ring, not ""$/);
    refused(undefined, 'auto,on', /^--zero-copy must be one of auto, off, not "on"$/);
    refused('ring,ring', undefined, /^bench: --transport lists "ring" twice$/);
    refused('ring', 'off,off', /^bench: --zero-copy lists "off" twice$/);
    refused(undefined, 'auto,off', /^bench: --zero-copy auto,off compares nothing on the stream transport \(only ring can run zero copy\): add --transport ring$/);
    refused('stream', 'auto,off', /compares nothing on the stream transport/);
  });

  it('the command line: a bad list is exit 2 with the message, nothing measured', async () => {
    const r = await run(process.execPath, [CLI, 'bench', '--transport', 'ring,stream,ring', '--no-out', '--no-ts-path'], { timeoutMs: 30_000 });
    assert.strictEqual(r.code, 2, `exit code (stderr: ${r.stderr})`);
    assert.strictEqual(r.stdout, '');
    assert.match(r.stderr, /^netdisk-ublk bench: --transport lists "ring" twice$/m);
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
  });
});
