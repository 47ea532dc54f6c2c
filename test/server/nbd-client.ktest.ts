// The kernel's own NBD client (nbd-client + the nbd driver) against our server: handshake,
// size, direct I/O both ways, discard and zeroing, a read-only export, clean disconnect.
// Needs the nbd module and root: runs in the test VM, e.g.
//   test/vm/run.sh -- npx mocha --no-config --timeout 600000 dist/test/server/nbd-client.ktest.js
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import { cleanupAfterEach, runOk, run } from '../helpers/procs';
import { makeImage, MiB, readAt, tempDir } from '../helpers/images';
import { requirePeer } from '../helpers/peers';
import { serveImage } from '../helpers/serve';

const SIZE = 32 * MiB;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits until the nbd device reports `bytes` (0 after a disconnect). */
async function waitForSize(dev: string, bytes: number): Promise<void> {
  const sysfs = `/sys/block/${dev.replace('/dev/', '')}/size`;
  for (let i = 0; i < 500; i++) {
    if (Number(fs.readFileSync(sysfs, 'utf8').trim()) * 512 === bytes) return;
    await sleep(20);
  }
  throw new Error(`${dev} never reached ${bytes} bytes (sysfs says ${fs.readFileSync(sysfs, 'utf8').trim()} sectors)`);
}

async function dd(args: string[]): Promise<Buffer> {
  return (await runOk('dd', [...args, 'status=none'])).stdout;
}

describe('kernel nbd-client against our server', function () {
  const cleanup = cleanupAfterEach();
  let nbdClient = '';

  before(function () {
    nbdClient = requirePeer('nbd-client');
    assert.ok(fs.existsSync('/dev/nbd0'), 'no /dev/nbd0: run this under test/vm/run.sh (the nbd module)');
  });

  /** Attaches dev to the server; detaches at cleanup if the test did not. */
  async function attach(dev: string, port: number, name: string | undefined, extra: string[] = []): Promise<void> {
    const args = ['127.0.0.1', String(port), dev, '-b', '4096', ...(name === undefined ? [] : ['-N', name]), ...extra];
    await runOk(nbdClient, args);
    cleanup.add(async () => {
      if (Number(fs.readFileSync(`/sys/block/${dev.replace('/dev/', '')}/size`, 'utf8').trim()) !== 0) {
        await run(nbdClient, ['-d', dev]);
      }
    });
  }

  it('attaches a named export, does direct I/O, discard and zeroing, and disconnects cleanly', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', SIZE, 'random');
    const srv = await serveImage(cleanup, image, { name: 'kdisk' });
    const dev = '/dev/nbd0';
    await attach(dev, srv.port, 'kdisk');
    await waitForSize(dev, SIZE);
    assert.strictEqual((await runOk('blockdev', ['--getsize64', dev])).stdout.toString().trim(), String(SIZE));
    assert.strictEqual((await runOk('blockdev', ['--getro', dev])).stdout.toString().trim(), '0');

    // Reads through the kernel see the image.
    const head = await dd([`if=${dev}`, 'iflag=direct', 'bs=1M', 'count=2']);
    assert.ok(head.equals(readAt(image, 0, 2 * MiB)), 'direct read differs from the image');
    const tail = await dd([`if=${dev}`, 'iflag=direct', 'bs=4096', `skip=${SIZE / 4096 - 1}`, 'count=1']);
    assert.ok(tail.equals(readAt(image, SIZE - 4096, 4096)));

    // Writes through the kernel land in the image.
    const data = randomBytes(3 * MiB);
    const src = `${dir}/data.bin`;
    fs.writeFileSync(src, data);
    await dd([`if=${src}`, `of=${dev}`, 'oflag=direct', 'bs=1M', 'seek=5', 'conv=fsync']);
    assert.ok(readAt(image, 5 * MiB, 3 * MiB).equals(data), 'direct write did not reach the image');
    const back = await dd([`if=${dev}`, 'iflag=direct', 'bs=1M', 'skip=5', 'count=3']);
    assert.ok(back.equals(data));

    // Discard (NBD_CMD_TRIM) and zeroing (NBD_CMD_WRITE_ZEROES) read back as zeros.
    await runOk('blkdiscard', ['-o', String(10 * MiB), '-l', String(MiB), dev]);
    await runOk('blkdiscard', ['-z', '-o', String(12 * MiB), '-l', String(MiB), dev]);
    for (const off of [10 * MiB, 12 * MiB]) {
      const z = await dd([`if=${dev}`, 'iflag=direct', 'bs=1M', `skip=${off / MiB}`, 'count=1']);
      assert.ok(z.equals(Buffer.alloc(MiB)), `range at ${off} not zero through the device`);
      assert.ok(readAt(image, off, MiB).equals(Buffer.alloc(MiB)), `range at ${off} not zero in the image`);
    }
    await runOk('sync', []);

    await runOk(nbdClient, ['-d', dev]);
    await waitForSize(dev, 0);
    assert.strictEqual(srv.child.done, false, 'the server died with the disconnect');
    assert.deepStrictEqual(await srv.stop(), { code: 0, signal: null });
    assert.ok(readAt(image, 5 * MiB, 3 * MiB).equals(data));
  });

  it('attaches the default export without -N, and a read-only export as a read-only device', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 8 * MiB, 'random');
    const rw = await serveImage(cleanup, image);
    await attach('/dev/nbd1', rw.port, undefined);
    await waitForSize('/dev/nbd1', 8 * MiB);
    const first = await dd(['if=/dev/nbd1', 'iflag=direct', 'bs=1M', 'count=1']);
    assert.ok(first.equals(readAt(image, 0, MiB)));
    await runOk(nbdClient, ['-d', '/dev/nbd1']);
    await waitForSize('/dev/nbd1', 0);
    assert.strictEqual((await rw.stop()).code, 0);

    const ro = await serveImage(cleanup, image, { readOnly: true, name: 'ro' });
    await attach('/dev/nbd2', ro.port, 'ro');
    await waitForSize('/dev/nbd2', 8 * MiB);
    assert.strictEqual((await runOk('blockdev', ['--getro', '/dev/nbd2'])).stdout.toString().trim(), '1');
    const again = await dd(['if=/dev/nbd2', 'iflag=direct', 'bs=1M', 'count=1', 'skip=7']);
    assert.ok(again.equals(readAt(image, 7 * MiB, MiB)));
    await runOk(nbdClient, ['-d', '/dev/nbd2']);
    await waitForSize('/dev/nbd2', 0);
    assert.strictEqual((await ro.stop()).code, 0);
  });
});
