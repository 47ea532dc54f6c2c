// The ublk features of the running kernel (GET_FEATURES) and the ones the device uses, as
// the daemon logs them and `list --json` and the device record show them. They differ per
// kernel (6.12 offers 0x1fe, 7.x far more), so the test compares against the kernel's own
// answer and prints it: the CI output then says what each kernel offered.
import * as assert from 'assert';
import * as os from 'os';
import * as path from 'path';
import { UblkCtrl, UblkFlag, flagNames, type FlagSet } from '../../src/ublk';
import {
  assertKernelLogClean, assertNoDevices, daemonLog, deviceSuite, listDevices, markKernelLog, readRecord,
} from './helpers';

describe('device: ublk features (real kernel)', function () {
  this.timeout(300_000);
  const env = deviceSuite();

  it('the daemon log, `list --json` and the record show the kernel\'s features and the device\'s flags', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'features');
    const ctrl = await UblkCtrl.open();
    const features = await ctrl.getFeatures();
    console.log(`      ${os.release()}: GET_FEATURES 0x${features.toString(16)} (${flagNames(features).join(' ')})`);
    const offered: FlagSet = { mask: `0x${features.toString(16)}`, names: flagNames(features) };

    const server = await e.serve(path.join(e.dir, 'features.img'), { size: '16M' });
    const dev = await e.add(server.port);
    const listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.ok(listed, '`list --json` shows the device');
    assert.deepStrictEqual(listed.kernelFeatures, offered, '`list --json` kernelFeatures');
    assert.ok(listed.flags, '`list --json` flags');
    const used = BigInt(listed.flags.mask);
    assert.deepStrictEqual(listed.flags.names, flagNames(used));
    console.log(`      the device uses ${listed.flags.mask} (${listed.flags.names.join(' ')})`);
    // Asked for by the daemon (recovery after its death) and granted by both kernels.
    assert.ok((used & UblkFlag.USER_RECOVERY) !== 0n, 'USER_RECOVERY');
    assert.ok((used & UblkFlag.USER_RECOVERY_REISSUE) !== 0n, 'USER_RECOVERY_REISSUE');
    assert.strictEqual(used & ~features, 0n, 'the device uses nothing the kernel does not offer');
    // Zero copy only ever runs on the ring transport (data-path.ktest.ts); the default is the stream.
    if (process.env.NETDISK_TEST_TRANSPORT !== 'ring') {
      assert.strictEqual(listed.dataPath, 'copy', '`list --json` dataPath of a stream device');
      assert.strictEqual(daemonLog(dev.id).find((l) => l.msg.startsWith('data path:'))?.msg, 'data path: copy');
    }

    const rec = readRecord(dev.id);
    assert.deepStrictEqual(rec?.kernelFeatures, offered, 'the record\'s kernelFeatures');
    assert.deepStrictEqual(rec?.flags, listed.flags, 'the record\'s flags');
    const line = daemonLog(dev.id).find((l) => l.msg.startsWith('ublk features'));
    assert.ok(line, 'the daemon logs the features');
    assert.deepStrictEqual(line.kernelFeatures, offered);
    assert.deepStrictEqual(line.flags, listed.flags);

    await e.del(dev.id);
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });
});
