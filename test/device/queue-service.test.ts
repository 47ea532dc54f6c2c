// QueueService on the host, without ublk: the fake kernel queue (test/helpers/fake-kernel-
// queue.ts) hands it requests as the kernel would, a scripted NBD server on loopback
// (test/helpers/fake-nbd.ts) answers them, and what reaches each side is checked: the NBD
// request a ublk request becomes, the result committed for it (errors included), and
// completions of one tick committed together.
import * as assert from 'assert';
import { QueueService } from '../../src/device/queue-service';
import { QueueCounters, newQueueCounters, readCounters, type DeviceCounters } from '../../src/stats/device-counters';
import { silentLogger } from '../../src/log';
import { ReconnectingClient } from '../../src/nbd/reconnecting-client';
import { UblkIoFlag, UblkIoOp } from '../../src/ublk/constants';
import { UblkQueue } from '../../src/ublk/queue';
import { FakeKernelQueue } from '../helpers/fake-kernel-queue';
import { CMD, FakeNbdServer } from '../helpers/fake-nbd';
import { patternBuffer } from '../helpers/images';
import { HOST } from '../helpers/net';
import { cleanupAfterEach, type Cleanup } from '../helpers/procs';
import { TRANSPORTS } from '../helpers/transports';
import type { TransportFactory } from '../../src/nbd/transport';

const SIZE = 1 << 20;
const DEPTH = 8;
const FUA = 1;
const NO_HOLE = 2;

interface Rig {
  store: FakeNbdServer;
  kernel: FakeKernelQueue;
  svc: QueueService;
  /** What the queue counted (as the daemon reads it). */
  counters(): DeviceCounters;
  /** Delivers what was queued and waits until every delivered tag is committed. */
  run(): Promise<Array<[number, number]>>;
}

async function rig(cleanup: Cleanup, opts: { failAfterMs?: number; makeTransport?: TransportFactory } = {}): Promise<Rig> {
  const store = await FakeNbdServer.start(SIZE);
  patternBuffer(SIZE, 3).copy(store.disk);
  cleanup.add(() => store.close());
  const client = await ReconnectingClient.connect({
    host: HOST, port: store.port, exportName: '', timeoutMs: 0, failAfterMs: opts.failAfterMs ?? 30_000, minBackoffMs: 20, maxBackoffMs: 100,
    makeTransport: opts.makeTransport,
  });
  cleanup.add(() => client.close());
  let kernel: FakeKernelQueue | undefined;
  const buf = newQueueCounters();
  const q = new UblkQueue({ devId: 0, qid: 0, depth: DEPTH, maxIoBufBytes: 65536, charFd: -1, ioctlEncode: true,
    native: FakeKernelQueue.native((fake) => { kernel = fake; }) });
  const svc = new QueueService(q, client, silentLogger, new QueueCounters(buf, DEPTH));
  svc.start();
  const k = kernel as FakeKernelQueue;
  return {
    store, kernel: k, svc,
    counters: () => readCounters([buf]),
    run: async () => {
      const before = k.commits.flat().length;
      const n = k.deliver();
      while (k.commits.flat().length < before + n) await new Promise((r) => setTimeout(r, 2));
      return k.commits.flat().slice(before);
    },
  };
}

for (const tr of TRANSPORTS) describe(`device: QueueService (fake kernel, NBD on loopback, ${tr.name} transport)`, function () {
  this.timeout(30_000);
  const cleanup = cleanupAfterEach();

  it('READ and WRITE: the NBD request covers the same bytes, data moves through the tag buffer, the result is the length', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make });
    r.kernel.request(0, UblkIoOp.READ, 8, 8); // 4 KiB at 4 KiB
    r.kernel.request(1, UblkIoOp.WRITE, 64, 16, UblkIoFlag.FUA); // 8 KiB at 32 KiB
    const data = patternBuffer(8192, 9);
    data.copy(r.kernel.buffers[1] as Buffer);
    assert.deepStrictEqual((await r.run()).sort(), [[0, 4096], [1, 8192]]);
    assert.ok((r.kernel.buffers[0] as Buffer).subarray(0, 4096).equals(r.store.disk.subarray(4096, 8192)), 'the read landed in the tag buffer');
    assert.ok(r.store.disk.subarray(32768, 40960).equals(data), 'the write reached the store');
    assert.deepStrictEqual(r.store.requests.map((q) => [q.type, q.flags, q.offset, q.length]).sort(),
      [[CMD.READ, 0, 4096, 4096], [CMD.WRITE, FUA, 32768, 8192]]);
    const c = r.counters();
    assert.deepStrictEqual([c.ops.read.count, c.ops.read.bytes, c.ops.write.count, c.ops.write.bytes, c.inFlight], [1, 4096, 1, 8192, 0]);
    assert.strictEqual(c.peakInFlight, 2);
    assert.ok(c.ops.read.latencyUs > 0 && c.ops.write.latencyUs > 0, 'latency is measured');
  });

  it('FLUSH, DISCARD and WRITE_ZEROES (NOUNMAP -> NO_HOLE) become their NBD commands; their result is 0', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make });
    r.kernel.request(2, UblkIoOp.FLUSH, 0xffff_ffff, 0);
    r.kernel.request(3, UblkIoOp.DISCARD, 0, 8);
    r.kernel.request(4, UblkIoOp.WRITE_ZEROES, 16, 8, UblkIoFlag.NOUNMAP);
    assert.deepStrictEqual((await r.run()).sort(), [[2, 0], [3, 0], [4, 0]]);
    assert.deepStrictEqual(r.store.requests.map((q) => [q.type, q.flags, q.offset, q.length]).sort(),
      [[CMD.FLUSH, 0, 0, 0], [CMD.TRIM, 0, 0, 4096], [CMD.WRITE_ZEROES, NO_HOLE, 8192, 4096]]);
    const c = r.counters();
    assert.deepStrictEqual([c.ops.flush.count, c.ops.discard.count, c.ops.write_zeroes.count, c.ops.read.count], [1, 1, 1, 0]);
  });

  it('an op NBD does not have is EOPNOTSUPP and never reaches the store; the tick\'s completions go in one commit', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make });
    for (let tag = 0; tag < 5; tag++) r.kernel.request(tag, UblkIoOp.ZONE_OPEN, 0, 8);
    const commitsBefore = r.kernel.commits.length;
    assert.deepStrictEqual(await r.run(), [[0, -95], [1, -95], [2, -95], [3, -95], [4, -95]]);
    assert.strictEqual(r.kernel.commits.length, commitsBefore + 1, 'one commit for the five');
    assert.strictEqual(r.store.requests.length, 0);
  });

  it('a refused request keeps the server\'s errno: a read past the end is -EINVAL', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make });
    r.kernel.request(0, UblkIoOp.READ, SIZE / 512, 8);
    r.kernel.request(1, UblkIoOp.READ, 0, 8);
    assert.deepStrictEqual((await r.run()).sort(), [[0, -22], [1, 4096]]);
  });

  it('a store that is gone past fail-after: -EIO', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make, failAfterMs: 0 });
    r.store.refuse = true;
    r.store.cutAll();
    await new Promise((res) => setTimeout(res, 50));
    r.kernel.request(0, UblkIoOp.READ, 0, 8);
    r.kernel.request(1, UblkIoOp.WRITE, 0, 8);
    assert.deepStrictEqual((await r.run()).sort(), [[0, -5], [1, -5]]);
    const c = r.counters();
    assert.deepStrictEqual([c.ops.read.errors, c.ops.write.errors, c.errnos], [1, 1, { 5: 2 }]);
  });

  it('every tag aborted (the device stopping): stopped resolves and the queue is closed', async () => {
    const r = await rig(cleanup, { makeTransport: tr.make });
    r.kernel.stop();
    await r.svc.stopped;
    assert.ok(r.kernel.closed);
  });
});
