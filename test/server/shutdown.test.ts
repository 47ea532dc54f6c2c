// Stopping the server with requests in flight: it exits 0, and every write it
// acknowledged is in the image. Unacknowledged ones may or may not be; they fail at the
// client with ESHUTDOWN or a closed connection, never with a success.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import { NbdClient } from '../../src/nbd/client';
import { NbdError, NbdRequestError } from '../../src/nbd/errors';
import { NBD_ESHUTDOWN } from '../../src/nbd/constants';
import { cleanupAfterEach } from '../helpers/procs';
import { KiB, makeImage, MiB, readAt, tempDir } from '../helpers/images';
import { serveImage } from '../helpers/serve';

describe('server: shutdown', function () {
  const cleanup = cleanupAfterEach();

  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    it(`${sig} while writes are in flight: exit 0, every acknowledged write is in the image`, async function () {
      const dir = tempDir(cleanup);
      const W = 128 * KiB;
      const N = 512; // 64 MiB of writes: far more than one reply's worth of time
      const image = makeImage(dir, 'disk.img', N * W, 'zero');
      const srv = await serveImage(cleanup, image);
      const c = await NbdClient.connect({ host: srv.host, port: srv.port });
      cleanup.add(() => c.destroy());

      const data = Array.from({ length: N }, () => randomBytes(W));
      const acked: boolean[] = new Array<boolean>(N).fill(false);
      const failures: NbdError[] = [];
      let signalled = false;
      const all = data.map((d, k) => c.write(k * W, d).then(
        () => {
          acked[k] = true;
          if (!signalled) {
            signalled = true;
            srv.child.proc.kill(sig);
          }
        },
        (err: NbdError) => {
          failures.push(err);
        },
      ));
      await Promise.all(all);
      const exit = await srv.child.exited;
      assert.deepStrictEqual(exit, { code: 0, signal: null }, `server exit; stderr:\n${srv.child.stderr()}`);

      const nAcked = acked.filter(Boolean).length;
      assert.ok(nAcked >= 1);
      assert.strictEqual(nAcked + failures.length, N, 'every request settled exactly once');
      for (const e of failures) {
        const ok = e.code === 'NBD_CONNECTION' || (e instanceof NbdRequestError && e.errno === NBD_ESHUTDOWN);
        assert.ok(ok, `unexpected failure: ${e.code} ${e.message}`);
      }
      for (let k = 0; k < N; k++) {
        if (!acked[k]) continue;
        assert.ok(readAt(image, k * W, W).equals(data[k]!), `acknowledged write ${k} is not in the image`);
      }
      const msgs = srv.logs().map((l) => l.msg);
      assert.ok(msgs.includes('shutting down') && msgs.includes('stopped'), `log: ${msgs.join(', ')}`);
    });
  }

  it('SIGTERM with idle and half-handshaken clients: exit 0, the clients see the connection close', async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 1 * MiB, 'zero');
    const srv = await serveImage(cleanup, image);
    const idle = await NbdClient.connect({ host: srv.host, port: srv.port });
    cleanup.add(() => idle.destroy());
    await idle.write(0, Buffer.alloc(4096, 0xaa));
    const net = await import('net');
    const raw = net.connect({ host: srv.host, port: srv.port });
    cleanup.add(() => raw.destroy());
    await new Promise((r) => raw.once('data', r)); // greeting only, then nothing
    const rawClosed = new Promise((r) => raw.once('close', r));
    const idleClosed = new Promise((r) => idle.once('close', r));
    assert.deepStrictEqual(await srv.stop('SIGTERM'), { code: 0, signal: null });
    await Promise.all([rawClosed, idleClosed]);
    await assert.rejects(idle.read(0, 512), (e: NbdError) => e.code === 'NBD_CONNECTION');
    assert.ok(fs.readFileSync(image).subarray(0, 4096).equals(Buffer.alloc(4096, 0xaa)));
    // Exit 0 alone would also come from an event loop that ran dry mid-shutdown.
    assert.ok(srv.logs().some((l) => l.msg === 'stopped'), 'no "stopped" log line');
  });
});
