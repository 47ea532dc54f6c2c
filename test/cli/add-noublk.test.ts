// `add` on a kernel without the ublk driver (this project's development and CI hosts):
// the user is told how to load it, the exit code is 1, and nothing is left behind. On a
// host that does have /dev/ublk-control the same command must get past that check and
// fail for the reason that applies there (the closed port, or not being root).
import * as assert from 'assert';
import * as fs from 'fs';
import { ublkAvailable } from '../../src/ublk/ctrl';
import { CLI, HOST, freePort, privateRunDir, run } from '../device/helpers';

describe('cli: add without the ublk driver', function () {
  this.timeout(120_000);
  const runDir = privateRunDir();

  it('exits 1 with a message that names the driver, and leaves nothing behind', async () => {
    const port = await freePort();
    const r = await run(process.execPath, [CLI, 'add', '--remote', `${HOST}:${port}`], { env: runDir().env, timeoutMs: 60_000 });
    assert.ok(!r.timedOut, 'add hung');
    assert.strictEqual(r.code, 1, `exit code (stderr: ${r.stderr})`);
    assert.strictEqual(r.stdout, '');
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
    if (!ublkAvailable()) {
      assert.match(r.stderr, /modprobe ublk_drv/);
    } else {
      // Native ublk: the driver check passes; the failure is the closed port or privileges.
      assert.doesNotMatch(r.stderr, /modprobe/);
      assert.match(r.stderr, /connection refused|root/);
    }
    // No state record and no log of a daemon that never served.
    assert.deepStrictEqual(fs.readdirSync(runDir().dir), []);
  });

  it('a PSK file every user can read gets a warning naming it, not its content', async () => {
    const port = await freePort();
    const psk = `${runDir().dir}.psk`;
    fs.writeFileSync(psk, 'alice:00112233445566778899aabbccddeeff\n', { mode: 0o644 });
    fs.chmodSync(psk, 0o644);
    try {
      const r = await run(process.execPath, [CLI, 'add', '--remote', `nbds://alice@${HOST}:${port}/?tls-psk-file=${psk}`],
        { env: runDir().env, timeoutMs: 60_000 });
      assert.match(r.stderr, new RegExp(`^netdisk-ublk add: warning: ${psk} is readable by every user`, 'm'));
      assert.doesNotMatch(r.stderr, /00112233/);
      assert.strictEqual(r.code, 1);
    } finally {
      fs.rmSync(psk, { force: true });
    }
  });

  it('list still works (records only) and shows nothing', async function () {
    // With the driver present, list also shows the kernel's devices, which this test does not own.
    if (ublkAvailable()) this.skip();
    const r = await run(process.execPath, [CLI, 'list', '--json'], { env: runDir().env, timeoutMs: 60_000 });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.deepStrictEqual(JSON.parse(r.stdout), []);
  });
});
