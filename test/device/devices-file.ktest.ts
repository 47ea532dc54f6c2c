// Devices at boot from one file: `add --all-from FILE` brings up every listed device with
// the id and settings its line gives, and leaves a device that is already live alone, so
// running it twice (a second boot unit, a retry) is harmless.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { HOST, assertKernelLogClean, cli, deviceSuite, listDevices, markKernelLog } from './helpers';

describe('device: the devices file (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();

  it('add --all-from brings up each listed device as listed; again, it leaves them be', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'devices-file');
    const a = await e.serve(path.join(e.dir, 'a.img'), { size: '16M' });
    const b = await e.serve(path.join(e.dir, 'b.img'), { size: '8M', name: 'bee' });
    const file = path.join(e.dir, 'devices');
    fs.writeFileSync(file, [
      '# test devices',
      `3  ${HOST}:${a.port}                 depth=32,timeout=5`,
      `5  nbd://${HOST}:${b.port}/bee`,
      '',
    ].join('\n'));
    const r = await cli(['add', '--all-from', file], { timeoutMs: 240_000 });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.strictEqual(r.stdout, '/dev/ublkb3\n/dev/ublkb5\n');
    const devs = await listDevices();
    assert.deepStrictEqual(devs.map((d) => [d.id, d.state, d.size, d.depth, d.export]),
      [[3, 'live', 16 << 20, 32, ''], [5, 'live', 8 << 20, 128, 'bee']]);
    assert.ok(fs.existsSync('/dev/ublkb3') && fs.existsSync('/dev/ublkb5'));

    const again = await cli(['add', '--all-from', file], { timeoutMs: 120_000 });
    assert.strictEqual(again.code, 0, again.stderr);
    assert.strictEqual(again.stdout, '');
    assert.match(again.stderr, new RegExp(`device 3 \\(${file.replace(/[/.]/g, '\\$&')}:2\\) is already live`));
    assert.match(again.stderr, /device 5 \(.*:3\) is already live/);
    await e.del(3);
    await e.del(5);
    await assertKernelLogClean(mark);
  });
});
