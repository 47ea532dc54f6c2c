// The device's shape and its space-management requests, checked on the server's image:
// the size the kernel sees is the export's, discard punches holes, write-zeroes zeroes.
// Images live in the guest's tmpfs, which supports hole punching (SEEK_HOLE shows them).
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import {
  MiB, allocatedBytes, assertKernelLogClean, deviceSuite, isAllocated, isHole, isZero, listDevices, markKernelLog, ok,
  readAt, readDevice, run, writeAt, type DeviceEnv,
} from './helpers';

const SECTOR = 512;

describe('device: size and discard (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();

  describe('size', () => {
    // 10M; a whole number of sectors but not of 4 KiB pages; not even a whole number of sectors.
    const cases: Array<{ name: string; bytes: number; device: number }> = [
      { name: '10M', bytes: 10 * MiB, device: 10 * MiB },
      { name: '10M + 3 sectors', bytes: 10 * MiB + 3 * SECTOR, device: 10 * MiB + 3 * SECTOR },
      // The kernel addresses whole sectors: the last 100 bytes cannot be exposed.
      { name: '10M + 100 bytes', bytes: 10 * MiB + 100, device: 10 * MiB },
    ];
    for (const c of cases) {
      it(`the device of a ${c.name} export is ${c.device} bytes, its last sector the image's`, async function () {
        const e = env();
        const mark = markKernelLog(this.test?.fullTitle() ?? 'size');
        const image = path.join(e.dir, 'sized.img');
        fs.writeFileSync(image, '');
        fs.truncateSync(image, c.bytes);
        const tail = randomBytes(SECTOR);
        writeAt(image, c.device - SECTOR, tail);
        const server = await e.serve(image, { size: String(c.bytes) });
        const dev = await e.add(server.port);
        assert.strictEqual(dev.size, c.device, 'add --json size');
        assert.strictEqual((await ok('blockdev', ['--getsize64', dev.device])).stdout.trim(), String(c.device));
        const sectors = Number(fs.readFileSync(`/sys/block/ublkb${dev.id}/size`, 'utf8'));
        assert.strictEqual(sectors * SECTOR, c.device, 'sysfs size');
        const listed = (await listDevices()).find((d) => d.id === dev.id);
        assert.strictEqual(listed?.size, c.device, '`list --json` size');
        // The last sector is reachable and holds the image's bytes.
        const last = await readDevice(dev.device, c.device - SECTOR, SECTOR, e.dir);
        assert.ok(last.equals(tail), 'last sector read through the device');
        // One past the end is not.
        const past = await run('dd', [`if=${dev.device}`, 'of=/dev/null', `bs=${SECTOR}`, `skip=${c.device / SECTOR}`, 'count=1', 'iflag=direct', 'status=none']);
        assert.ok(past.code === 0 && past.stderr === '', `reading past the end gives EOF, not an error: ${past.stderr}`);
        await e.del(dev.id);
        await assertKernelLogClean(mark);
      });
    }
  });

  describe('discard and write zeroes', () => {
    const IMAGE_BYTES = 16 * MiB;

    /** A fully allocated image of random data, served, with a device on it. */
    async function setup(e: DeviceEnv): Promise<{ image: string; orig: Buffer; device: string; id: number; logs: () => Array<{ level: number; msg: string }> }> {
      const image = path.join(e.dir, 'full.img');
      const orig = randomBytes(IMAGE_BYTES);
      fs.writeFileSync(image, orig);
      assert.ok(allocatedBytes(image) >= IMAGE_BYTES, 'the image starts fully allocated');
      const server = await e.serve(image);
      const dev = await e.add(server.port);
      return { image, orig, device: dev.device, id: dev.id, logs: () => server.logs() };
    }

    /** The range reads zeros on the image and through the device; its neighbours are untouched. */
    async function assertZeroed(e: DeviceEnv, s: { image: string; orig: Buffer; device: string }, off: number, len: number): Promise<void> {
      assert.ok(isZero(readAt(s.image, off, len)), 'the range reads zeros on the server image');
      assert.ok(isZero(await readDevice(s.device, off, len, e.dir)), 'the range reads zeros through the device');
      const before = readAt(s.image, off - 4096, 4096);
      const after = readAt(s.image, off + len, 4096);
      assert.ok(before.equals(s.orig.subarray(off - 4096, off)), 'the block before the range is untouched');
      assert.ok(after.equals(s.orig.subarray(off + len, off + len + 4096)), 'the block after the range is untouched');
    }

    it('blkdiscard punches a hole in the server image; the range reads zeros', async function () {
      const e = env();
      const mark = markKernelLog(this.test?.fullTitle() ?? 'discard');
      const s = await setup(e);
      const off = 4 * MiB;
      const len = 2 * MiB;
      assert.ok(await isAllocated(s.image, off, len));
      const allocated = allocatedBytes(s.image);
      await ok('blkdiscard', ['-o', String(off), '-l', String(len), s.device], { timeoutMs: 60_000 });
      assert.ok(await isHole(s.image, off, len), 'SEEK_HOLE finds the discarded range a hole');
      assert.ok(allocatedBytes(s.image) <= allocated - len, `allocation shrank by the range: ${allocated} -> ${allocatedBytes(s.image)}`);
      await assertZeroed(e, s, off, len);
      await e.del(s.id);
      await assertKernelLogClean(mark);
    });

    it('fallocate --punch-hole on the device (WRITE_ZEROES, holes allowed) punches the image', async function () {
      const e = env();
      const mark = markKernelLog(this.test?.fullTitle() ?? 'punch');
      const s = await setup(e);
      const off = 8 * MiB;
      const len = MiB;
      const allocated = allocatedBytes(s.image);
      await ok('fallocate', ['--punch-hole', '-o', String(off), '-l', String(len), s.device], { timeoutMs: 60_000 });
      assert.ok(await isHole(s.image, off, len), 'the zeroed range is a hole');
      assert.ok(allocatedBytes(s.image) <= allocated - len, 'allocation shrank by the range');
      await assertZeroed(e, s, off, len);
      await e.del(s.id);
      await assertKernelLogClean(mark);
    });

    it('blkdiscard -z (WRITE_ZEROES, no unmap) zeroes the range and keeps it allocated', async function () {
      const e = env();
      const mark = markKernelLog(this.test?.fullTitle() ?? 'zeroout');
      const s = await setup(e);
      const off = 10 * MiB;
      const len = MiB;
      const r = await run('blkdiscard', ['-z', '-o', String(off), '-l', String(len), s.device], { timeoutMs: 60_000 });
      assert.strictEqual(r.code, 0, `blkdiscard -z failed: ${r.stderr}`);
      await assertZeroed(e, s, off, len);
      // NBD_CMD_FLAG_NO_HOLE: the server must leave the range provisioned.
      assert.ok(await isAllocated(s.image, off, len), 'the range stays allocated');
      // The kernel falls back to writing zero pages when WRITE_ZEROES fails, so the bytes
      // alone would not show a failed request: the server's log and the kernel's do.
      const problems = s.logs().filter((l) => l.level >= 40);
      assert.deepStrictEqual(problems, [], 'the server logged warnings or errors');
      await e.del(s.id);
      await assertKernelLogClean(mark);
    });
  });
});
