// Smoke test of the qemu harness: one boot, checked against facts only the real kernel
// and the shares can produce.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inVm, repoRoot, runInVm, vmCheck, vmScript, type VmResult } from '../helpers/vm';

function facts(stdout: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) m.set(line.slice(0, i), line.slice(i + 1));
  }
  return m;
}

describe('test/vm harness', function () {
  // A boot takes ~7 s on an idle 2-core machine, but another VM may hold the lock.
  this.timeout(20 * 60 * 1000);

  let kernel = '';
  let share = '';
  let probe = '';
  let result: VmResult;
  let got: Map<string, string>;

  before(async function () {
    const check = vmCheck();
    if (!check.ok) {
      // Inside the VM there is no nested VM; anywhere else a missing harness is a failure,
      // not a skip: the kernel tests depend on it.
      if (inVm()) this.skip();
      throw new Error(`the test VM cannot start here: ${check.reason}`);
    }
    kernel = check.kernel;
    share = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-vm-share-'));
    probe = `.vm/probe-${crypto.randomBytes(6).toString('hex')}`;
    fs.mkdirSync(path.join(repoRoot(), '.vm'), { recursive: true });

    // Each line is key=value; a failing probe prints nothing for its key.
    const script = [
      'echo "kernel=$(uname -r)"',
      'echo "pwd=$(pwd)"',
      'echo "in_vm=$NETDISK_IN_VM"',
      'echo "custom=$CUSTOM_VAR"',
      '[ -c /dev/ublk-control ] && echo ublk_control=yes',
      '[ -b /dev/nbd0 ] && echo nbd0=yes',
      `echo "node=$(node -e 'process.stdout.write(String(6 * 7))')"`,
      `echo from-guest > ${probe} && echo repo_write=yes`,
      `echo shared-ok > '${share}/from-guest.txt' && echo share_write=yes`,
      'grep -qw ext4 /proc/filesystems && echo fs_ext4=yes',
      'grep -qw vfat /proc/filesystems && echo fs_vfat=yes',
      // A real mount through the loop driver exercises ext4/vfat beyond their registration.
      'mkdir -p /tmp/m && truncate -s 32M /tmp/e.img && mkfs.ext4 -q -F /tmp/e.img &&' +
        ' mount -o loop /tmp/e.img /tmp/m && echo x > /tmp/m/f && umount /tmp/m && echo ext4_mount=yes',
      'truncate -s 32M /tmp/v.img && mkfs.vfat /tmp/v.img >/dev/null &&' +
        ' mount -o loop /tmp/v.img /tmp/m && echo x > /tmp/m/f && umount /tmp/m && echo vfat_mount=yes',
      'echo to-stderr >&2',
      'exit 3',
    ].join('\n');
    result = await runInVm(script, { shares: [share], env: { CUSTOM_VAR: 'a b' } });
    got = facts(result.stdout);
  });

  after(function () {
    if (share) fs.rmSync(share, { recursive: true, force: true });
    if (probe) fs.rmSync(path.join(repoRoot(), probe), { force: true });
  });

  it('propagates the exit code and both output streams', function () {
    assert.strictEqual(result.code, 3, `stderr: ${result.stderr}`);
    assert.match(result.stderr, /^to-stderr$/m);
  });

  it('boots the backports kernel, not the host one, and says so', function () {
    assert.strictEqual(got.get('kernel'), kernel);
    assert.strictEqual(result.kernel, kernel);
    assert.notStrictEqual(got.get('kernel'), os.release());
    assert.match(result.dmesg, new RegExp(`Linux version ${kernel.replace(/[.+]/g, '\\$&')}`));
  });

  it('has the ublk and nbd drivers', function () {
    assert.strictEqual(got.get('ublk_control'), 'yes');
    assert.strictEqual(got.get('nbd0'), 'yes');
  });

  it('runs node in the repository with the harness environment', function () {
    assert.strictEqual(got.get('node'), '42');
    assert.strictEqual(got.get('pwd'), repoRoot());
    assert.strictEqual(got.get('in_vm'), '1');
    assert.strictEqual(got.get('custom'), 'a b');
  });

  it('writes through to the repository and to --share directories', function () {
    assert.strictEqual(got.get('repo_write'), 'yes');
    assert.strictEqual(fs.readFileSync(path.join(repoRoot(), probe), 'utf8'), 'from-guest\n');
    assert.strictEqual(got.get('share_write'), 'yes');
    assert.strictEqual(fs.readFileSync(path.join(share, 'from-guest.txt'), 'utf8'), 'shared-ok\n');
  });

  it('has working ext4 and vfat', function () {
    assert.strictEqual(got.get('fs_ext4'), 'yes');
    assert.strictEqual(got.get('fs_vfat'), 'yes');
    assert.strictEqual(got.get('ext4_mount'), 'yes', result.stderr);
    assert.strictEqual(got.get('vfat_mount'), 'yes', result.stderr);
  });
});

// The 7.x kernel is extracted, not installed: run.sh finds it in the kernel folder and the
// guest's modprobe finds its modules at /lib/modules.
describe('test/vm harness --kernel 7', function () {
  this.timeout(20 * 60 * 1000);

  let kernel = '';
  let result: VmResult;
  let got: Map<string, string>;

  before(async function () {
    const check = vmCheck('7');
    if (!check.ok) {
      // As above: no nested VM inside the VM; anywhere else a missing 7.x is a failure.
      if (inVm()) this.skip();
      throw new Error(`the test VM cannot boot a 7.x kernel here: ${check.reason}`);
    }
    kernel = check.kernel;
    const script = [
      'echo "kernel=$(uname -r)"',
      '[ -c /dev/ublk-control ] && echo ublk_control=yes',
      '[ -b /dev/nbd0 ] && echo nbd0=yes',
      // null_blk is not in the initramfs: modprobe loads it from the kernel's own tree.
      'modprobe null_blk nr_devices=1 && [ -b /dev/nullb0 ] && echo modprobe=yes',
      'echo "modfile=$(modinfo -F filename null_blk)"',
    ].join('\n');
    result = await runInVm(script, { kernel: '7' });
    got = facts(result.stdout);
  });

  it('boots the newest 7.x and says so', function () {
    assert.strictEqual(result.code, 0, result.stderr);
    assert.match(kernel, /^7\./);
    assert.strictEqual(got.get('kernel'), kernel);
    assert.strictEqual(result.kernel, kernel);
  });

  it('has the ublk and nbd drivers, and modprobe loads others from the kernel\'s tree', function () {
    assert.strictEqual(got.get('ublk_control'), 'yes');
    assert.strictEqual(got.get('nbd0'), 'yes');
    assert.strictEqual(got.get('modprobe'), 'yes', result.stderr);
    assert.match(got.get('modfile') ?? '', new RegExp(`^/lib/modules/${kernel.replace(/[.+]/g, '\\$&')}/`));
  });
});

// A kernel that dies in its own boot, before /init runs the command, is booted once more
// (run.sh; an emulation race under TCG can kill a boot); one that dies again is reported.
// An init that does not exist makes every boot die the same way, before the command.
describe('test/vm harness: a kernel that dies during its boot', function () {
  this.timeout(20 * 60 * 1000);

  before(function () {
    if (!vmCheck().ok) {
      // As above: no nested VM inside the VM; anywhere else a missing harness is a failure.
      if (inVm()) this.skip();
      throw new Error('the test VM cannot start here');
    }
  });

  function bootDying(retries: string): { status: number | null; stderr: string } {
    const r = spawnSync(vmScript(), ['--', 'echo the command ran'], {
      encoding: 'utf8',
      env: { ...process.env, NETDISK_VM_APPEND: 'rdinit=/no-such-init', NETDISK_VM_BOOT_RETRIES: retries },
    });
    assert.doesNotMatch(r.stdout, /the command ran/);
    return { status: r.status, stderr: r.stderr };
  }

  it('boots again once, says why, then reports the failure', function () {
    const r = bootDying('1');
    assert.strictEqual(r.status, 125, r.stderr);
    assert.match(r.stderr, /the kernel died during its boot, before the command ran .*booting again \(2 of 2\)/);
    assert.match(r.stderr, /Kernel panic/);
    assert.match(r.stderr, /the VM stopped without reporting an exit code/);
    assert.strictEqual(r.stderr.match(/booting again/g)?.length, 1);
  });

  it('does not boot again with NETDISK_VM_BOOT_RETRIES=0', function () {
    const r = bootDying('0');
    assert.strictEqual(r.status, 125, r.stderr);
    assert.doesNotMatch(r.stderr, /booting again/);
    assert.match(r.stderr, /the VM stopped without reporting an exit code/);
  });
});
