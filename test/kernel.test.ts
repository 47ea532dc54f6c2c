// Runs every kernel test (*.ktest.js: ublk, the device, kernel nbd) on a real kernel:
// natively when this kernel has ublk and nbd, otherwise in one boot of the test VM.
// Then checks that the kernel log stayed quiet: no warnings, oopses or errors.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import { inVm, repoRoot, runInVm, ublkAvailable, vmCheck } from './helpers/vm';

const KTESTS = "'dist/test/**/*.ktest.js'";
const MOCHA = `npx mocha --no-config --timeout 900000 --reporter spec ${KTESTS}`;

// Kernel messages that mean something went wrong. Expected noise (boot messages, "EXT4-fs
// mounted", partition scans) does not match.
// The kernel's own markers are upper case (a boot line says "report a bug" harmlessly).
const BAD_KERNEL_MARKER = /WARNING|BUG|Oops|Call Trace/;
const BAD_KERNEL_LINE = /blocked for more than|I\/O error|error, dev|ublk.*(fail|error)|nbd.*(fail|error)/i;

// A test that makes I/O fail on purpose (a store gone past --fail-after, an error reply)
// brackets it in the kernel log with these lines (test/faults/helpers.ts); the kernel's
// complaints in between are the expected outcome, not a problem.
const EXPECTED_BEGIN = /netdisk-test: expected errors begin/;
const EXPECTED_END = /netdisk-test: expected errors end/;

export function badKernelLines(dmesg: string): string[] {
  let expected = false;
  return dmesg.split('\n').filter((l) => {
    if (EXPECTED_BEGIN.test(l)) expected = true;
    else if (EXPECTED_END.test(l)) expected = false;
    else return !expected && (BAD_KERNEL_MARKER.test(l) || BAD_KERNEL_LINE.test(l)) && !/RAS: Correctable Errors collector/.test(l);
    return false;
  });
}

describe('kernel tests (ublk, device, kernel nbd) on a real kernel', function () {
  this.timeout(50 * 60 * 1000);

  it('pass, with a quiet kernel log', async function () {
    if (inVm()) this.skip(); // inside the VM the *.ktest.js files run directly
    let code: number;
    let out: string;
    let dmesg: string;
    if (ublkAvailable() && fs.existsSync('/dev/nbd0')) {
      const before = await sh('dmesg');
      const r = await shResult(MOCHA);
      code = r.code;
      out = r.out;
      dmesg = (await sh('dmesg')).slice(before.length);
    } else {
      const check = vmCheck();
      assert.ok(check.ok, `no ublk here and the test VM cannot start: ${check.ok ? '' : check.reason}`);
      const r = await runInVm(`echo; ${MOCHA}`, { timeoutSec: 45 * 60 });
      code = r.code;
      out = r.stdout + r.stderr;
      dmesg = r.dmesg;
    }
    process.stdout.write(out.replace(/^/gm, '    | ') + '\n');
    assert.strictEqual(code, 0, 'kernel tests failed (output above)');
    assert.ok(/passing/.test(out), 'mocha reported no passing tests');
    assert.deepStrictEqual(badKernelLines(dmesg), [], 'the kernel logged warnings or errors');
  });
});

function shResult(cmd: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const c = spawn('bash', ['-c', cmd], { cwd: repoRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    c.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    c.on('close', (code) => resolve({ code: code ?? 1, out }));
  });
}

async function sh(cmd: string): Promise<string> {
  return (await shResult(cmd)).out;
}
