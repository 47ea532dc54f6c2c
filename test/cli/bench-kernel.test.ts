// `bench --kernel` picks the test VM's kernel; one it cannot boot is refused before anything
// is measured, with test/vm/run.sh's reason and no stack trace.
import * as assert from 'assert';
import { CLI, run } from '../device/helpers';
import { inVm } from '../helpers/vm';

describe('cli: bench --kernel with a kernel the test VM cannot boot', function () {
  this.timeout(120_000);
  before(function () {
    if (inVm()) this.skip(); // --kernel is the host's choice; the VM never boots another
  });

  const cases: Array<[string, RegExp]> = [
    ['9', /^netdisk-ublk bench: no kernel matching '9' \(have: [^)]*\); run scripts\/setup-deps\.sh$/m],
    ['6.18.5', /^netdisk-ublk bench: kernel 6\.18\.5 is known to oops in ublk's ADD_DEV; pick another$/m],
  ];
  for (const [spec, message] of cases) {
    it(`bench --kernel ${spec}`, async () => {
      const r = await run(process.execPath, [CLI, 'bench', '--kernel', spec, '--no-out', '--no-ts-path'], { timeoutMs: 60_000 });
      assert.ok(!r.timedOut, 'bench hung');
      assert.strictEqual(r.code, 1, `exit code (stderr: ${r.stderr})`);
      assert.strictEqual(r.stdout, '');
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
    });
  }
});
