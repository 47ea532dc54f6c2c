// QEMU's NBD client (qemu-io over nbd://) against our server: patterned writes read back
// with -P verification and checked in the image file, discard leaving a hole, and write
// zeroes with and without permission to unmap (qemu sends NBD_CMD_FLAG_NO_HOLE unless -u).
import * as assert from 'assert';
import * as fs from 'fs';
import { NbdClient } from '../../src/nbd/client';
import { cleanupAfterEach } from '../helpers/procs';
import { allocatedBytes, isHole, KiB, makeImage, MiB, readAt, tempDir } from '../helpers/images';
import { qemuIo, requirePeer } from '../helpers/peers';
import { serveImage, Served } from '../helpers/serve';

/** Runs qemu-io commands and fails on any error or failed pattern check in its output. */
async function qio(srv: Served, cmds: string[]): Promise<string> {
  const r = await qemuIo(srv.uri(), cmds);
  const out = r.stdout.toString() + r.stderr;
  assert.strictEqual(r.code, 0, `qemu-io failed:\n${out}`);
  assert.doesNotMatch(out, /verification failed|failed:|error/i, `qemu-io reported a failure:\n${out}`);
  return out;
}

// A hole punched in the middle of an extent splits it, and the filesystem may allocate a
// block for the extent tree: allocation can drop by a little less than the hole's size.
const METADATA_SLACK = 64 * KiB;

function filled(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

describe('server: qemu-io', function () {
  const cleanup = cleanupAfterEach();
  before(() => requirePeer('qemu-io'));

  it('writes patterns at aligned and odd offsets, reads them back verified, and they reach the image', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 8 * MiB, 'zero');
    const srv = await serveImage(cleanup, image);
    const writes: Array<[number, number, number]> = [
      [0x11, 0, 4 * KiB],
      [0x22, 64 * KiB, 1 * MiB],
      [0x33, 12345, 6789], // neither offset nor length sector-aligned (we advertise min block 1)
      [0x44, 8 * MiB - 512, 512], // the last sector
      [0x55, 3 * MiB + 1, 1], // one byte
    ];
    await qio(srv, writes.map(([p, o, l]) => `write -P 0x${p.toString(16)} ${o} ${l}`));
    // Read back in a second qemu-io process (a new connection), pattern-checked.
    await qio(srv, writes.map(([p, o, l]) => `read -P 0x${p.toString(16)} ${o} ${l}`));
    // Around the writes the image still holds zeros.
    await qio(srv, ['read -P 0 4096 8249', 'read -P 0 19134 46402', 'read -P 0 3145728 1', 'read -P 0 3145730 4096']);
    for (const [p, o, l] of writes) assert.deepStrictEqual(readAt(image, o, l), filled(l, p), `image at ${o}+${l}`);
  });

  it('a pattern check that should fail does fail (the harness sees mismatches)', async function () {
    const dir = tempDir(cleanup);
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', 1 * MiB, 'zero'));
    const r = await qemuIo(srv.uri(), ['write -P 0x66 0 4096', 'read -P 0x67 0 4096']);
    assert.match(r.stdout.toString(), /Pattern verification failed at offset 0/);
  });

  it('FUA writes and flush succeed and the data is in the image', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 2 * MiB, 'zero');
    const srv = await serveImage(cleanup, image);
    await qio(srv, ['write -f -P 0x77 0 64k', 'aio_write -P 0x78 1M 64k', 'aio_flush', 'flush', 'read -P 0x77 0 64k']);
    assert.deepStrictEqual(readAt(image, 0, 64 * KiB), filled(64 * KiB, 0x77));
    assert.deepStrictEqual(readAt(image, MiB, 64 * KiB), filled(64 * KiB, 0x78));
  });

  it('discard leaves a hole in the image that reads as zeros', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 8 * MiB, 'random');
    const srv = await serveImage(cleanup, image);
    const before = allocatedBytes(image);
    assert.ok(!(await isHole(image, 2 * MiB, 2 * MiB)), 'the image should start fully allocated');
    await qio(srv, ['discard 2M 2M', 'read -P 0 2M 2M']);
    assert.ok(await isHole(image, 2 * MiB, 2 * MiB), 'no hole where the discard was');
    assert.ok(allocatedBytes(image) <= before - 2 * MiB + METADATA_SLACK, `allocation went from ${before} to ${allocatedBytes(image)}`);
    assert.deepStrictEqual(readAt(image, 2 * MiB, 2 * MiB), Buffer.alloc(2 * MiB));
    // Only the discarded range changed.
    assert.ok(!(await isHole(image, 0, 2 * MiB)));
    assert.ok(!(await isHole(image, 4 * MiB, 4 * MiB)));
  });

  it('write zeroes with -u may punch a hole; without -u (NO_HOLE) it keeps the blocks', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 8 * MiB, 'random');
    const srv = await serveImage(cleanup, image);
    const full = allocatedBytes(image);

    await qio(srv, ['write -z 1M 1M', 'read -P 0 1M 1M']);
    assert.deepStrictEqual(readAt(image, MiB, MiB), Buffer.alloc(MiB));
    // Zeroed in place: the range keeps its allocation (it may become unwritten extents,
    // which SEEK_HOLE can report as holes, so st_blocks is the measure).
    assert.ok(allocatedBytes(image) >= full, `NO_HOLE zeroing freed blocks: ${full} -> ${allocatedBytes(image)}`);

    await qio(srv, ['write -z -u 4M 2M', 'read -P 0 4M 2M']);
    assert.deepStrictEqual(readAt(image, 4 * MiB, 2 * MiB), Buffer.alloc(2 * MiB));
    assert.ok(await isHole(image, 4 * MiB, 2 * MiB), 'write zeroes with unmap allowed left no hole');
    assert.ok(allocatedBytes(image) <= full - 2 * MiB + METADATA_SLACK, `allocation went from ${full} to ${allocatedBytes(image)}`);

    // An unaligned zero range: partial blocks at both ends are zeroed too.
    await qio(srv, ['write -P 0x99 7M 64k', 'write -z -u 7340033 65534', 'read -P 0x99 7M 1', 'read -P 0 7340033 65534',
      'read -P 0x99 7405567 1']);
  });

  it('on tmpfs, which has hole punching but no FALLOC_FL_ZERO_RANGE, every zeroing still zeros', async function () {
    // The kernel's nbd driver sends BLKZEROOUT as WRITE_ZEROES with NO_HOLE and, unlike
    // qemu, does not fall back to writing zeros itself when the server refuses; the test VM
    // keeps its images on tmpfs. Our own client, which also does not fall back, stands in.
    const TMPFS_MAGIC = 0x01021994;
    assert.strictEqual(fs.statfsSync('/dev/shm').type, TMPFS_MAGIC, '/dev/shm is not a tmpfs here');
    const dir = fs.mkdtempSync('/dev/shm/netdisk-test-');
    cleanup.add(() => fs.rmSync(dir, { recursive: true, force: true }));
    const image = makeImage(dir, 'disk.img', 4 * MiB, 'random');
    const srv = await serveImage(cleanup, image);
    const c = await NbdClient.connect({ host: srv.host, port: srv.port });
    cleanup.add(() => c.destroy());
    await c.writeZeroes(0, MiB, { noHole: true });
    await c.writeZeroes(MiB, MiB);
    await c.trim(2 * MiB, MiB);
    await c.writeZeroes(3 * MiB, 4097, { noHole: true, fua: true });
    await c.writeZeroes(3200000, 3, { noHole: true });
    const zeroed = 3 * MiB + 4097;
    assert.ok((await c.read(0, zeroed)).equals(Buffer.alloc(zeroed)));
    assert.ok((await c.read(3200000, 3)).equals(Buffer.alloc(3)));
    await c.close();
    assert.ok(readAt(image, 0, zeroed).equals(Buffer.alloc(zeroed)));
    // qemu's view agrees.
    await qio(srv, ['read -P 0 0 3M', 'read -P 0 3M 4097', 'read -P 0 3200000 3']);
  });
});
