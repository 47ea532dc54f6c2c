// The kernel's own NBD driver on the very store a ublk device uses: what one client wrote
// through the server, the other reads, in both directions. Two independent client stacks
// agreeing on the bytes is what "the store is a plain NBD export" means in practice.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import {
  MiB, assertKernelLogClean, assertNoDevices, deviceSuite, markKernelLog, ok, sha256,
} from './helpers';

const EXPORT_BYTES = 64 * MiB;

/** The first /dev/nbdN nobody has connected (sysfs shows a pid for connected ones). */
function freeNbd(): string {
  for (let i = 0; fs.existsSync(`/dev/nbd${i}`); i++) {
    if (!fs.existsSync(`/sys/block/nbd${i}/pid`)) return `/dev/nbd${i}`;
  }
  throw new Error('no free /dev/nbdN: is the nbd module loaded?');
}

describe('device: kernel nbd on the same store (real kernel)', function () {
  this.timeout(900_000);
  const env = deviceSuite();

  it('files written through ublk are read through nbd, and the other way round', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'nbd');
    const NBD = freeNbd();

    const image = path.join(e.dir, 'shared.img');
    const server = await e.serve(image, { size: '64M', name: 'shared' });
    let dev = await e.add(server.port, ['--export', 'shared']);
    assert.strictEqual(dev.export, 'shared');

    await ok('mkfs.ext4', ['-q', '-F', dev.device], { timeoutMs: 300_000 });
    const ublkMnt = e.mountPoint('ublk');
    await e.mount(dev.device, ublkMnt);
    const viaUblk: Record<string, Buffer> = {
      'hello.txt': Buffer.from('hello from /dev/ublkb\n'),
      'blob.bin': randomBytes(2 * MiB + 777),
    };
    for (const [n, d] of Object.entries(viaUblk)) fs.writeFileSync(path.join(ublkMnt, n), d);
    // Unmounting writes everything back to the server; the ublk device itself stays live.
    await e.umount(ublkMnt);

    // While the ublk device is still attached: nbd0 on the same export, read-only.
    const nbdMnt = e.mountPoint('nbd');
    const attach = await e.nbdAttach(NBD, server.port, 'shared');
    assert.match(attach.stdout + attach.stderr, new RegExp(`Connected ${NBD}`));
    assert.strictEqual((await ok('blockdev', ['--getsize64', NBD])).stdout.trim(), String(EXPORT_BYTES));
    await e.mount(NBD, nbdMnt, ['-o', 'ro,noload']);
    for (const [n, d] of Object.entries(viaUblk)) {
      assert.strictEqual(sha256(fs.readFileSync(path.join(nbdMnt, n))), sha256(d), `${n} through nbd`);
    }
    await e.umount(nbdMnt);
    await e.nbdDetach(NBD);

    // Without the ublk device: nbd0 read-write writes a file, then ublk reads it.
    await e.del(dev.id);
    await e.nbdAttach(NBD, server.port, 'shared');
    await e.mount(NBD, nbdMnt);
    const viaNbd = randomBytes(MiB + 4321);
    fs.writeFileSync(path.join(nbdMnt, 'from-nbd.bin'), viaNbd);
    await e.umount(nbdMnt);
    await e.nbdDetach(NBD);

    dev = await e.add(server.port, ['--export', 'shared']);
    await e.mount(dev.device, ublkMnt, ['-o', 'ro']);
    assert.strictEqual(sha256(fs.readFileSync(path.join(ublkMnt, 'from-nbd.bin'))), sha256(viaNbd), 'from-nbd.bin through ublk');
    for (const [n, d] of Object.entries(viaUblk)) {
      assert.strictEqual(sha256(fs.readFileSync(path.join(ublkMnt, n))), sha256(d), `${n} through ublk again`);
    }
    await e.umount(ublkMnt);
    await e.del(dev.id);
    await assertNoDevices();
    await ok('e2fsck', ['-f', '-n', image], { timeoutMs: 300_000 });
    await assertKernelLogClean(mark);
  });
});
