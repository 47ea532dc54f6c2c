// The chaos soak (chaos.ts) on a short seeded schedule: two minutes of faults drawn from the
// seed (store kill -9 and restart, network black holes, a slow store, daemon kill -9 and
// recover, overlapping), fio verifying on ext4 throughout; no error, a clean e2fsck and a
// quiet kernel log. NETDISK_CHAOS_SEED runs another schedule.
import * as assert from 'assert';
import { requireKernel, ublkNodes } from '../device/helpers';
import { runChaos, summaryText } from './chaos';

const SEED = Number(process.env.NETDISK_CHAOS_SEED ?? 11);
const FAULT_MS = 120_000;

describe('faults: a seeded chaos schedule under fio on ext4 (real kernel)', function () {
  this.timeout(900_000);

  before(function () {
    requireKernel(this);
  });

  it(`seed ${SEED}, ${FAULT_MS / 60_000} min of faults: fio never fails, every round verifies, e2fsck -fn is clean`, async function () {
    assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk devices exist before the test');
    const s = await runChaos({ seed: SEED, faultMs: FAULT_MS, log: (l) => process.stdout.write(`      ${l}\n`) });
    process.stdout.write(`${summaryText(s).replace(/^/gm, '      ')}\n`);
    assert.deepStrictEqual(s.errors, []);
    assert.ok(Object.values(s.faults).reduce((a, b) => a + b, 0) > 0, 'no fault was drawn');
    assert.ok(s.rounds > 0, 'no fio round ended');
    assert.strictEqual(s.bytesVerified, s.bytesWritten, 'fio verified every byte it wrote');
    assert.match(s.fsck, /^clean/);
  });
});
