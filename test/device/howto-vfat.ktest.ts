// The classic network-block-device how-to, end to end: a 1.44 MB floppy image formatted
// on the server, used through /dev/ublkbN as a vfat filesystem, and the files found on
// the server's image afterwards with mtools, which never goes near the device.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { assertKernelLogClean, assertNoDevices, deviceSuite, markKernelLog, ok, sha256 } from './helpers';

const FLOPPY_BYTES = 1440 * 1024;

describe('device: the 1.44 MB vfat how-to (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();

  it('files copied onto the mounted device are on the server image, byte for byte', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'vfat');
    const image = path.join(e.dir, 'floppy.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, FLOPPY_BYTES);
    await ok('mkfs.vfat', ['-n', 'NETDISK', image], { timeoutMs: 60_000 });

    const server = await e.serve(image, { size: '1440K' });
    const dev = await e.add(server.port);
    assert.strictEqual(dev.size, FLOPPY_BYTES, 'add reports the export size');
    assert.strictEqual((await ok('blockdev', ['--getsize64', dev.device])).stdout.trim(), String(FLOPPY_BYTES));

    // The files a user would copy: some text, a binary that spans many clusters, a subdirectory.
    const src = path.join(e.dir, 'src');
    fs.mkdirSync(path.join(src, 'docs'), { recursive: true });
    const files: Record<string, Buffer> = {
      'readme.txt': Buffer.from('netdisk-ublk: a network block device in userspace\n'.repeat(20)),
      'random.bin': randomBytes(700 * 1024),
      'docs/notes.txt': Buffer.from(`written through ${dev.device} at ${new Date().toISOString()}\n`),
    };
    for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(src, name), data);

    const mnt = e.mountPoint();
    await e.mount(dev.device, mnt, ['-t', 'vfat']);
    await ok('cp', ['-r', path.join(src, 'readme.txt'), path.join(src, 'random.bin'), path.join(src, 'docs'), mnt]);
    await e.umount(mnt);
    await e.del(dev.id);
    await assertNoDevices();

    // Now only the server's image is left: read it with mtools, no kernel involved.
    const mtoolsEnv = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
    const listing = (await ok('mdir', ['-i', image, '-/', '-b', '::'], { env: mtoolsEnv })).stdout;
    for (const name of Object.keys(files)) {
      assert.ok(listing.includes(`::/${name}`), `mdir lists ${name}:\n${listing}`);
    }
    for (const [name, data] of Object.entries(files)) {
      const out = path.join(e.dir, `out-${name.replace(/\//g, '_')}`);
      await ok('mcopy', ['-n', '-i', image, `::${name}`, out], { env: mtoolsEnv });
      const got = fs.readFileSync(out);
      assert.strictEqual(got.length, data.length, `${name}: size on the server image`);
      assert.strictEqual(sha256(got), sha256(data), `${name}: content on the server image`);
    }
    // And the filesystem the kernel left behind is consistent.
    await ok('fsck.vfat', ['-n', image], { timeoutMs: 60_000 });
    await assertKernelLogClean(mark);
  });
});
