// Runs every kernel test (*.ktest.js: ublk, the device, kernel nbd) on a real kernel:
// natively when this kernel has ublk and nbd, otherwise in the test VM, once on each kernel.
// Then checks that the kernel log stayed quiet: no warnings, oopses or errors.
import * as assert from 'assert';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import { inVm, repoRoot, runInVm, ublkAvailable, vmCheck } from './helpers/vm';

const KTESTS = "'dist/test/**/*.ktest.js'";
// The device's scenarios again over the ring transport (add --transport ring): a filesystem
// under fio verify, store restarts, black holes, daemon kill -9 + recover, hostile replies
// parsed by the addon. The default (stream) runs everything above.
const RING_KTESTS = ['device/ext4-fio', 'faults/outage', 'faults/hostile-store'].map((t) => `dist/test/${t}.ktest.js`).join(' ');
const MOCHA = `npx mocha --no-config --timeout 900000 --reporter spec ${KTESTS}`
  + ` && echo '  over the ring transport:' && NETDISK_TEST_TRANSPORT=ring npx mocha --no-config --timeout 900000 --reporter spec ${RING_KTESTS}`;

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

// Debian 13's kernel line and the newest 7.x (test/vm/README.md): every kernel test runs
// on each, one boot each, so a failure names the kernel it happened on.
const VM_KERNELS = ['6.12', '7'];
// One boot runs all kernel tests in about 22 min on a loaded 2-core machine; both boots
// must stay inside CI's hour.
const VM_TIMEOUT_SEC = 28 * 60;

describe('kernel tests (ublk, device, kernel nbd) on a real kernel', function () {
  if (inVm()) return; // inside the VM the *.ktest.js files run directly

  if (ublkAvailable() && fs.existsSync('/dev/nbd0')) {
    describe(`on ${os.release()} (this machine's kernel)`, function () {
      this.timeout(VM_TIMEOUT_SEC * 1000);
      it('pass, with a quiet kernel log', async function () {
        const before = await sh('dmesg');
        const r = await shResult(MOCHA);
        const dmesg = (await sh('dmesg')).slice(before.length);
        check(os.release(), r.code, r.out, dmesg);
      });
    });
    return;
  }

  for (const spec of VM_KERNELS) {
    // Resolved when the suite is defined, so the title names the exact kernel.
    const vm = vmCheck(spec);
    describe(`on ${vm.ok ? vm.kernel : spec}`, function () {
      this.timeout((VM_TIMEOUT_SEC + 60) * 1000);
      it('pass, with a quiet kernel log', async function () {
        assert.ok(vm.ok, `no ublk here and the test VM cannot boot ${spec}: ${vm.ok ? '' : vm.reason}`);
        const r = await runInVm(`echo; ${MOCHA}`, { kernel: spec, timeoutSec: VM_TIMEOUT_SEC });
        assert.strictEqual(r.kernel, vm.kernel, `the VM ran ${r.kernel || 'nothing'}, not ${vm.kernel}:\n${r.stderr}`);
        check(r.kernel, r.code, r.stdout + r.stderr, r.dmesg);
      });
    });
  }
});

function check(kernel: string, code: number, out: string, dmesg: string): void {
  process.stdout.write(out.replace(/^/gm, '    | ') + '\n');
  assert.strictEqual(code, 0, `kernel tests failed on ${kernel} (output above)`);
  assert.ok(/passing/.test(out), `mocha reported no passing tests on ${kernel}`);
  assert.deepStrictEqual(badKernelLines(dmesg), [], `${kernel} logged warnings or errors`);
}

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
