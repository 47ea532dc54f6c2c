// Our client against three independent servers: nbdkit (memory plugin), nbd-server and
// qemu-nbd, over both transports (Node's socket stream and io_uring). The export's flags
// are checked against what libnbd's nbdinfo reads from the same server; data is checked
// against a model of the disk.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import { NbdClient } from '../../src/nbd/client';
import { TRANSPORTS } from '../helpers/transports';
import { NbdConnectionError, NbdError, NbdHandshakeError, NbdRequestError } from '../../src/nbd/errors';
import { Cleanup, cleanupAfterAll } from '../helpers/procs';
import { KiB, makeImage, MiB, tempDir } from '../helpers/images';
import { freePort, HOST } from '../helpers/net';
import { nbdinfoJson, Peer, requirePeer, startNbdkit, startNbdServer, startQemuNbd } from '../helpers/peers';

const SIZE = 64 * MiB;

interface PeerCase {
  name: string;
  binary: string;
  /** Starts the server with one export of SIZE bytes, all zeros. */
  start(cleanup: Cleanup): Promise<Peer>;
}

const PEERS: PeerCase[] = [
  {
    name: 'nbdkit memory',
    binary: 'nbdkit',
    start: (cleanup) => startNbdkit(cleanup, ['memory', String(SIZE)], { exportName: 'mem' }),
  },
  {
    name: 'nbd-server',
    binary: 'nbd-server',
    start: async (cleanup) => {
      const dir = tempDir(cleanup);
      return startNbdServer(cleanup, dir, makeImage(dir, 'disk.img', SIZE), { name: 'disk' });
    },
  },
  {
    name: 'qemu-nbd',
    binary: 'qemu-nbd',
    start: async (cleanup) => {
      const dir = tempDir(cleanup);
      return startQemuNbd(cleanup, makeImage(dir, 'disk.img', SIZE), { name: 'qemu' });
    },
  },
];

function exportName(p: Peer): string {
  return decodeURIComponent(p.uri().split('/').pop() ?? '');
}

for (const tr of TRANSPORTS) for (const pc of PEERS) {
  describe(`client (${tr.name} transport) against ${pc.name}`, function () {
    const cleanup = cleanupAfterAll();
    let peer: Peer;
    let c: NbdClient;
    const model = Buffer.alloc(SIZE);

    before(async function () {
      requirePeer(pc.binary);
      requirePeer('nbdinfo');
      peer = await pc.start(cleanup);
      c = await NbdClient.connect({ host: HOST, port: peer.port, exportName: exportName(peer), makeTransport: tr.make });
      assert.strictEqual(c.transportKind, tr.name);
      cleanup.add(() => c.destroy());
    });

    it('negotiates the size, and the same flags nbdinfo sees', async function () {
      assert.strictEqual(c.size, SIZE);
      assert.strictEqual(c.info.name, exportName(peer));
      const e = (await nbdinfoJson(peer.uri())).exports[0]!;
      assert.deepStrictEqual(
        { ro: c.readOnly, flush: c.canFlush, fua: c.canFua, trim: c.canTrim, zero: c.canZero, multi: c.canMultiConn },
        { ro: e.is_read_only, flush: e.can_flush, fua: e.can_fua, trim: e.can_trim, zero: e.can_zero, multi: e.can_multi_conn },
      );
      assert.strictEqual(c.readOnly, false);
      assert.ok(c.info.minBlock >= 1 && c.info.maxPayload >= 64 * KiB);
    });

    it('writes and reads back, at aligned and odd offsets and sizes', async function () {
      const cases: Array<[number, number]> = [[0, 4096], [SIZE - 512, 512], [MiB + 512, 128 * KiB], [3 * MiB, 4 * MiB]];
      if (c.info.minBlock === 1) cases.push([12345, 6789], [5 * MiB + 1, 1]);
      for (const [off, len] of cases) {
        const d = randomBytes(len);
        d.copy(model, off);
        await c.write(off, d);
      }
      for (const [off, len] of cases) {
        assert.ok((await c.read(off, len)).equals(model.subarray(off, off + len)), `read ${off}+${len}`);
      }
      // Into a caller's buffer, at an offset, leaving the rest alone.
      const into = Buffer.alloc(8192, 0x5a);
      await c.read(0, 4096, into, 2048);
      assert.ok(into.subarray(2048, 6144).equals(model.subarray(0, 4096)));
      assert.ok(into.subarray(0, 2048).equals(Buffer.alloc(2048, 0x5a)) && into.subarray(6144).equals(Buffer.alloc(2048, 0x5a)));
    });

    it('flush, and FUA writes', async function () {
      assert.ok(c.canFlush && c.canFua);
      const d = randomBytes(64 * KiB);
      d.copy(model, 8 * MiB);
      await c.write(8 * MiB, d, { fua: true });
      await c.flush();
      assert.ok((await c.read(8 * MiB, 64 * KiB)).equals(d));
    });

    it('write zeroes, with and without NO_HOLE, reads back zeros', async function () {
      assert.ok(c.canZero);
      const d = randomBytes(2 * MiB);
      await c.write(10 * MiB, d);
      await c.writeZeroes(10 * MiB, MiB);
      await c.writeZeroes(11 * MiB + 4096, 64 * KiB, { noHole: true });
      await c.writeZeroes(11 * MiB + 512 * KiB, 4096, { fua: true });
      const want = Buffer.from(d);
      want.fill(0, 0, MiB);
      want.fill(0, MiB + 4096, MiB + 4096 + 64 * KiB);
      want.fill(0, MiB + 512 * KiB, MiB + 512 * KiB + 4096);
      want.copy(model, 10 * MiB);
      assert.ok((await c.read(10 * MiB, 2 * MiB)).equals(want));
    });

    it('trim succeeds and the rest of the disk is untouched', async function () {
      assert.ok(c.canTrim);
      const d = randomBytes(MiB);
      await c.write(20 * MiB, d);
      await c.trim(20 * MiB + 256 * KiB, 512 * KiB);
      // After a trim the spec leaves the range's contents undefined; around it they are not.
      const got = await c.read(20 * MiB, MiB);
      assert.ok(got.subarray(0, 256 * KiB).equals(d.subarray(0, 256 * KiB)));
      assert.ok(got.subarray(768 * KiB).equals(d.subarray(768 * KiB)));
      // Pin the model: zero the trimmed range.
      await c.writeZeroes(20 * MiB + 256 * KiB, 512 * KiB);
      d.fill(0, 256 * KiB, 768 * KiB);
      d.copy(model, 20 * MiB);
    });

    it('256 requests in flight, replies matched to their requests', async function () {
      const base = 32 * MiB;
      const S = 64 * KiB;
      const ops: Array<Promise<unknown>> = [];
      let peak = 0;
      for (let k = 0; k < 256; k++) {
        const off = base + (k >> 1) * S;
        if (k % 2 === 0) {
          const d = randomBytes(S);
          d.copy(model, off);
          ops.push(c.write(off, d));
        } else {
          // Reads go to the first 16 MiB, written by earlier tests and not by this batch: NBD
          // does not order requests in flight, so a read of a slot being written could see either.
          const old = (k * 7919) % (16 * MiB / S) * S;
          const want = Buffer.from(model.subarray(old, old + S));
          ops.push(c.read(old, S).then((got) => assert.ok(got.equals(want), `read of ${old}`)));
        }
        peak = Math.max(peak, c.pending);
      }
      assert.strictEqual(peak, 256);
      await Promise.all(ops);
      assert.strictEqual(c.pending, 0);
      // Everything, in 4 MiB reads, against the model.
      for (let off = 0; off < SIZE; off += 4 * MiB) {
        assert.ok((await c.read(off, 4 * MiB)).equals(model.subarray(off, off + 4 * MiB)), `region at ${off}`);
      }
    });

    it('a request past the end fails alone; the connection goes on', async function () {
      await assert.rejects(c.read(SIZE - 512, 1024), (e: NbdError) => e instanceof NbdRequestError && e.code === 'NBD_REQUEST_FAILED');
      await assert.rejects(c.write(SIZE, Buffer.alloc(512)), (e: NbdError) => e instanceof NbdRequestError);
      assert.ok((await c.read(0, 4096)).equals(model.subarray(0, 4096)));
    });

    it('an unknown export fails the handshake with NbdHandshakeError naming the export', async function () {
      await assert.rejects(NbdClient.connect({ host: HOST, port: peer.port, exportName: 'no-such-export' }), (e: NbdError) => {
        assert.ok(e instanceof NbdHandshakeError, `${e.name}: ${e.message}`);
        assert.strictEqual(e.code, 'NBD_HANDSHAKE');
        assert.match(e.message, /no-such-export/);
        return true;
      });
    });

    it('close() sends DISC after the replies; later requests fail with NbdConnectionError', async function () {
      const c2 = await NbdClient.connect({ host: HOST, port: peer.port, exportName: exportName(peer), makeTransport: tr.make });
      const pending = c2.read(0, 4096);
      await c2.close();
      assert.ok((await pending).equals(model.subarray(0, 4096)), 'a request in flight at close() still completes');
      assert.strictEqual(c2.closed, true);
      await assert.rejects(c2.read(0, 512), (e: NbdError) => e instanceof NbdConnectionError && e.code === 'NBD_CONNECTION');
    });
  });
}

describe('client: connection failures', function () {
  it('connection refused gives NbdConnectionError, not a timeout', async function () {
    const port = await freePort(); // nothing listens there now
    await assert.rejects(NbdClient.connect({ host: HOST, port, handshakeTimeoutMs: 10 * 60 * 1000 }), (e: NbdError) => {
      assert.ok(e instanceof NbdConnectionError, `${e.name}: ${e.message}`);
      assert.strictEqual(e.code, 'NBD_CONNECTION');
      assert.match(e.message, /connection refused/);
      assert.match(e.message, new RegExp(`${HOST}:${port}`));
      return true;
    });
  });
});
