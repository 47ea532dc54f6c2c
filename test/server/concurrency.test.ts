// Many clients at once, each with many requests in flight, against a model of the disk;
// then the image on disk is checked against the same model.
import * as assert from 'assert';
import { randomBytes, randomInt } from 'crypto';
import * as fs from 'fs';
import { NbdClient } from '../../src/nbd/client';
import { cleanupAfterEach } from '../helpers/procs';
import { KiB, makeImage, MiB, tempDir } from '../helpers/images';
import { serveImage } from '../helpers/serve';

const CLIENTS = 16;
const WRITES = 64;
const REGION = 4 * MiB; // each client's own part of the disk
const SLOT = REGION / WRITES; // one write per slot, so in-flight writes never overlap

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

describe('server: concurrent clients', function () {
  const cleanup = cleanupAfterEach();

  it(`${CLIENTS} clients each pipelining ${WRITES} random writes, then reads, all match the model`, async function () {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', CLIENTS * REGION, 'random');
    const model = fs.readFileSync(image);
    const srv = await serveImage(cleanup, image);

    const clients = await Promise.all(Array.from({ length: CLIENTS }, () =>
      NbdClient.connect({ host: srv.host, port: srv.port })));
    cleanup.add(() => clients.forEach((c) => c.destroy()));
    assert.ok(clients.every((c) => c.canMultiConn && c.size === CLIENTS * REGION));

    // Phase 1: every client submits all its writes before any reply is awaited.
    await Promise.all(clients.map((c, i) => {
      const base = i * REGION;
      const slots = Array.from({ length: WRITES }, (_, k) => k).sort(() => randomInt(3) - 1);
      return Promise.all(slots.map((k) => {
        const off = base + k * SLOT + randomInt(SLOT / 2);
        const len = 1 + randomInt(base + (k + 1) * SLOT - off);
        const data = randomBytes(len);
        data.copy(model, off);
        return c.write(off, data, { fua: randomInt(8) === 0 });
      }));
    }));

    // Phase 2: pipelined reads of random ranges of its own region, checked against the model.
    await Promise.all(clients.map((c, i) => Promise.all(Array.from({ length: WRITES }, async () => {
      const off = i * REGION + randomInt(REGION - 1);
      const len = 1 + randomInt(Math.min(256 * KiB, i * REGION + REGION - off));
      const got = await c.read(off, len);
      const want = model.subarray(off, off + len);
      const d = firstDiff(got, want);
      assert.strictEqual(d, -1, `client ${i}: read ${off}+${len} differs from the model at +${d}`);
    }))));

    // Phase 3: with CAN_MULTI_CONN, a flush on each connection makes every write visible to
    // all; each client reads its neighbour's whole region.
    await Promise.all(clients.map((c) => c.flush()));
    await Promise.all(clients.map(async (c, i) => {
      const j = (i + 1) % CLIENTS;
      const got = await c.read(j * REGION, REGION);
      const d = firstDiff(got, model.subarray(j * REGION, (j + 1) * REGION));
      assert.strictEqual(d, -1, `client ${i} reading region ${j}: differs at +${d}`);
    }));

    await Promise.all(clients.map((c) => c.close()));
    assert.strictEqual((await srv.stop()).code, 0);
    const onDisk = fs.readFileSync(image);
    assert.strictEqual(firstDiff(onDisk, model), -1, 'image on disk differs from the model');
  });

  it('256 requests in flight on one connection, mixed commands, replies matched to requests', async function () {
    const dir = tempDir(cleanup);
    const size = 16 * MiB;
    const image = makeImage(dir, 'disk.img', size, 'random');
    const model = fs.readFileSync(image);
    const srv = await serveImage(cleanup, image);
    const c = await NbdClient.connect({ host: srv.host, port: srv.port });
    cleanup.add(() => c.destroy());
    // 256 disjoint 64 KiB slots: write, zero or trim each, all at once, reads of untouched
    // slots interleaved, then read everything back.
    const SLOTS = 256;
    const S = size / SLOTS;
    const ops: Array<Promise<unknown>> = [];
    let peak = 0;
    for (let k = 0; k < SLOTS; k++) {
      const off = k * S;
      switch (k % 4) {
        case 0: {
          const d = randomBytes(S - k);
          d.copy(model, off + k);
          ops.push(c.write(off + k, d));
          break;
        }
        case 1:
          model.fill(0, off, off + S);
          ops.push(c.writeZeroes(off, S, { noHole: k % 8 === 1 }));
          break;
        case 2:
          model.fill(0, off, off + S);
          ops.push(c.trim(off, S));
          break;
        case 3: {
          const want = Buffer.from(model.subarray(off, off + S));
          ops.push(c.read(off, S).then((got) => assert.ok(got.equals(want), `read of untouched slot ${k}`)));
          break;
        }
      }
      peak = Math.max(peak, c.pending);
    }
    assert.strictEqual(peak, SLOTS, 'all requests should have been in flight together');
    await Promise.all(ops);
    const all = await c.read(0, size);
    assert.strictEqual(firstDiff(all, model), -1);
    await c.close();
  });
});
