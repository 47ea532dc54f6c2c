// ReconnectingClient against a scripted store (test/helpers/fake-nbd.ts) that breaks the
// connection in every way we know of: a cut, a stall, a hostile reply, ESHUTDOWN, a store
// that is down for longer than fail-after, a store that comes back as another export; and
// a client that starts disconnected from a known export (recover) meets the same.
// Every read must either complete with exactly the store's bytes or fail; requests without
// a reply are resent in their original order, with their flags; nothing throws out of an
// event handler.
import * as assert from 'assert';
import { NbdClient, type ExportInfo } from '../../src/nbd/client';
import * as NC from '../../src/nbd/constants';
import { ReconnectingClient, type ConnectEvent, type ReconnectEvent, type DisconnectEvent, type ReconnectOptions } from '../../src/nbd/reconnecting-client';
import { NbdConnectionError, NbdError, NbdRequestError } from '../../src/nbd/errors';
import { BAD_ERRNO, CMD, FakeNbdServer, POISON, type Hostile } from '../helpers/fake-nbd';
import { Cleanup, cleanupAfterEach } from '../helpers/procs';
import { patternBuffer } from '../helpers/images';
import { HOST } from '../helpers/net';
import { FaultProxy } from '../helpers/fault-proxy';
import { TRANSPORTS } from '../helpers/transports';

const SIZE = 1 << 20;
const FUA = 1;

interface Events {
  connects: ConnectEvent[];
  disconnects: DisconnectEvent[];
  reconnects: ReconnectEvent[];
  giveUps: Array<{ reason: string; pending: number }>;
  mismatches: Array<{ reason: string }>;
}

function waitEvent(c: ReconnectingClient, name: string): Promise<unknown> {
  return new Promise((resolve) => c.once(name, resolve));
}

class Harness {
  readonly events: Events = { connects: [], disconnects: [], reconnects: [], giveUps: [], mismatches: [] };
  constructor(readonly store: FakeNbdServer, readonly client: ReconnectingClient) {
    client.on('connect', (e: ConnectEvent) => this.events.connects.push(e));
    client.on('disconnect', (e: DisconnectEvent) => this.events.disconnects.push(e));
    client.on('reconnect', (e: ReconnectEvent) => this.events.reconnects.push(e));
    client.on('give-up', (e: { reason: string; pending: number }) => this.events.giveUps.push(e));
    client.on('mismatch', (e: { reason: string }) => this.events.mismatches.push(e));
  }

  request(type: number, offset: number, length: number, opts: { data?: Buffer; into?: Buffer; flags?: number } = {}): Promise<void> {
    return new Promise((resolve, reject) => {
      this.client.submit({ type, flags: opts.flags ?? 0, offset, length, data: opts.data ?? null, into: opts.into ?? null }, null,
        (err: NbdError | null) => (err ? reject(err) : resolve()));
    });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    // Prefilled with poison's complement: neither a stale nor a hostile byte passes unseen.
    const into = Buffer.alloc(length, POISON ^ 0xff);
    await this.request(CMD.READ, offset, length, { into });
    return into;
  }

  write(offset: number, data: Buffer, flags = 0): Promise<void> {
    return this.request(CMD.WRITE, offset, data.length, { data, flags });
  }

  /** The store takes connections again: once the client says `event`, requests are served. */
  async storeBack(event: 'connect' | 'reconnect'): Promise<void> {
    const back = waitEvent(this.client, event);
    this.store.refuse = false;
    await back;
    await this.readChecked(8192, 4096);
    await this.write(0, patternBuffer(512, 9));
    assert.ok(this.store.disk.subarray(0, 512).equals(patternBuffer(512, 9)));
  }

  /** The read must return exactly what the store holds. */
  async readChecked(offset: number, length: number): Promise<void> {
    const got = await this.read(offset, length);
    const want = this.store.disk.subarray(offset, offset + length);
    assert.ok(got.equals(want), `read ${offset}+${length} returned bytes the store does not hold`
      + ` (first differing byte 0x${(got[firstDiff(got, want)] ?? 0).toString(16)})`);
  }
}

function firstDiff(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function setup(cleanup: Cleanup, opts: Partial<ReconnectOptions> = {}): Promise<Harness> {
  const store = await FakeNbdServer.start(SIZE);
  patternBuffer(SIZE, 7).copy(store.disk);
  cleanup.add(() => store.close());
  const client = await ReconnectingClient.connect({
    host: HOST, port: store.port, timeoutMs: 0, failAfterMs: 30_000, minBackoffMs: 20, maxBackoffMs: 200, ...opts,
  });
  cleanup.add(() => client.close());
  const h = new Harness(store, client);
  cleanup.add(() => assert.deepStrictEqual(store.errors, [], 'the fake store failed'));
  return h;
}

/**
 * A client started disconnected (connectInBackground) from the export a first connection
 * found, as recover starts from the device's record; the store refuses connections until
 * the test lets it in.
 */
async function setupInBackground(cleanup: Cleanup, opts: Partial<ReconnectOptions> = {}): Promise<Harness> {
  const store = await FakeNbdServer.start(SIZE);
  patternBuffer(SIZE, 7).copy(store.disk);
  cleanup.add(() => store.close());
  const probe = await NbdClient.connect({ host: HOST, port: store.port });
  const expect: ExportInfo = probe.info;
  await probe.close();
  store.refuse = true;
  const client = ReconnectingClient.connectInBackground({
    host: HOST, port: store.port, timeoutMs: 0, failAfterMs: 30_000, minBackoffMs: 20, maxBackoffMs: 200, ...opts, expect,
  });
  cleanup.add(() => client.close());
  const h = new Harness(store, client);
  cleanup.add(() => assert.deepStrictEqual(store.errors, [], 'the fake store failed'));
  return h;
}

/** Settles with the error a promise rejects with, or null. */
const outcome = (p: Promise<unknown>): Promise<unknown> => p.then(() => null, (e: unknown) => e);

const isConnErr = (e: unknown): boolean => e instanceof NbdConnectionError && e.code === 'NBD_CONNECTION';

for (const tr of TRANSPORTS) describe(`reconnecting client (${tr.name} transport)`, function () {
  this.timeout(30_000);
  const cleanup = cleanupAfterEach();

  it('a cut connection: requests in flight are resent on a new one and complete with the store\'s bytes', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make });
    const cut = h.store.arm('cut', (r) => r.type === CMD.READ && r.offset === 64 * 1024);
    const writes = [0, 1, 2].map((i) => patternBuffer(4096, 100 + i));
    await Promise.all([
      h.readChecked(0, 4096),
      h.readChecked(64 * 1024, 128 * 1024),
      ...writes.map((d, i) => h.write(256 * 1024 + i * 4096, d)),
      h.readChecked(512 * 1024, 4096),
    ]);
    const r = await cut;
    assert.strictEqual(r.conn, 1);
    for (const [i, d] of writes.entries()) assert.ok(h.store.disk.subarray(256 * 1024 + i * 4096, 256 * 1024 + (i + 1) * 4096).equals(d));
    assert.strictEqual(h.events.disconnects.length, 1);
    assert.strictEqual(h.events.reconnects.length, 1);
    assert.ok((h.events.reconnects[0]?.resent ?? 0) >= 1, 'the cut request was resent');
    assert.ok(h.store.requestsOn(2).some((q) => q.type === CMD.READ && q.offset === 64 * 1024), 'the cut read reached the new connection');
    assert.strictEqual(h.client.connected, true);
  });

  it('requests without a reply are resent in their original order, with their flags', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make });
    await h.readChecked(0, 512); // connection 1 is in transmission
    h.store.stallAll();
    const a = patternBuffer(8192, 1);
    const b = patternBuffer(8192, 2);
    const c = patternBuffer(4096, 3);
    const pending = [
      h.write(4096, a, FUA),
      h.write(8192, b),
      h.request(CMD.FLUSH, 0, 0),
      h.write(4096, c, FUA), // overlaps a: order decides what the disk holds
      h.request(CMD.WRITE_ZEROES, 65536, 4096),
      h.readChecked(0, 4096),
    ];
    // All six reached the stalled connection before it is cut.
    while (h.store.requestsOn(1).length < 7) await new Promise((r) => setTimeout(r, 5));
    h.store.cutAll();
    await Promise.all(pending);
    const resent = h.store.requestsOn(2).map((q) => ({ type: q.type, flags: q.flags, offset: q.offset, length: q.length }));
    assert.deepStrictEqual(resent, [
      { type: CMD.WRITE, flags: FUA, offset: 4096, length: 8192 },
      { type: CMD.WRITE, flags: 0, offset: 8192, length: 8192 },
      { type: CMD.FLUSH, flags: 0, offset: 0, length: 0 },
      { type: CMD.WRITE, flags: FUA, offset: 4096, length: 4096 },
      { type: CMD.WRITE_ZEROES, flags: 0, offset: 65536, length: 4096 },
      { type: CMD.READ, flags: 0, offset: 0, length: 4096 },
    ]);
    // a covered 4 KiB..12 KiB; b then took 8..12 KiB and c 4..8 KiB: only the order gives this.
    assert.ok(h.store.disk.subarray(4096, 12288).equals(Buffer.concat([c, b.subarray(0, 4096)])), 'the writes landed out of order');
    assert.strictEqual(h.events.reconnects[0]?.resent, 6);
  });

  it('a stalled connection is given up after timeoutMs, not before, and the request completes on a new one', async function () {
    const timeoutMs = 1500;
    const h = await setup(cleanup, { makeTransport: tr.make, timeoutMs });
    await h.readChecked(0, 512);
    // Sent well after the client's start, so that a timeout counted from anything but the
    // send (a timer that runs from the start, for instance) shows up as early.
    await new Promise((r) => setTimeout(r, 300));
    const stalled = h.store.arm('stall', (r) => r.type === CMD.READ);
    const began = Date.now();
    const read = h.readChecked(4096, 65536);
    const r = await stalled;
    await read;
    const took = Date.now() - began;
    assert.strictEqual(r.conn, 1);
    assert.ok(took >= timeoutMs, `the stall was given up after ${took} ms, before the ${timeoutMs} ms timeout`);
    assert.match(h.events.disconnects[0]?.reason ?? '', /no reply within 1500 ms/);
    assert.strictEqual(h.events.reconnects.length, 1);
  });

  it('past failAfterMs, waiting requests fail with a connection error; new ones fail at once; the store coming back serves again', async function () {
    const failAfterMs = 1500;
    const h = await setup(cleanup, { makeTransport: tr.make, failAfterMs });
    await h.readChecked(0, 512);
    h.store.refuse = true;
    h.store.cutAll();
    const began = Date.now();
    const waiting = await h.read(4096, 4096).then(() => null, (e: unknown) => e);
    const took = Date.now() - began;
    assert.ok(isConnErr(waiting), `expected a connection error, got ${String(waiting)}`);
    // The bound a user relies on: not before fail-after, and not long after it.
    assert.ok(took >= failAfterMs - 50 && took < failAfterMs + 2000, `the waiting read failed after ${took} ms (fail-after ${failAfterMs} ms)`);
    assert.strictEqual(h.events.giveUps.length, 1);
    const t2 = Date.now();
    const fresh = await h.read(0, 512).then(() => null, (e: unknown) => e);
    assert.ok(isConnErr(fresh), 'a request after giving up fails too');
    assert.ok(Date.now() - t2 < 500, 'a request after giving up fails at once, without waiting');
    // The client kept trying: the store is back, and the next requests are served.
    await h.storeBack('reconnect');
  });

  it('a store that comes back with another size is not used: no request reaches it, requests fail after failAfterMs', async function () {
    const failAfterMs = 1500;
    const h = await setup(cleanup, { makeTransport: tr.make, failAfterMs });
    await h.readChecked(0, 512);
    h.store.exportSize = SIZE * 2;
    h.store.cutAll();
    const before = Buffer.from(h.store.disk);
    const began = Date.now();
    const err = await h.write(0, patternBuffer(4096, 5)).then(() => null, (e: unknown) => e);
    const took = Date.now() - began;
    assert.ok(isConnErr(err), `expected a connection error, got ${String(err)}`);
    assert.ok(took >= failAfterMs - 50 && took < failAfterMs + 2000, `failed after ${took} ms`);
    assert.ok(h.events.mismatches.length >= 1, 'the other export was noticed');
    assert.match(h.events.mismatches[0]?.reason ?? '', /size changed from 1048576 to 2097152/);
    const wrongConns = new Set(h.store.sizesSeen.filter((s) => s.size !== SIZE).map((s) => s.conn));
    assert.ok(wrongConns.size >= 1);
    assert.deepStrictEqual(h.store.requests.filter((q) => wrongConns.has(q.conn)), [], 'a request reached the other export');
    assert.ok(h.store.disk.equals(before), 'the disk changed');
    // The right export again: the client takes it.
    const back = waitEvent(h.client, 'reconnect');
    h.store.exportSize = SIZE;
    await back;
    await h.readChecked(0, 8192);
  });

  it('ESHUTDOWN: the client reconnects and resends instead of failing the request', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make });
    const shut = h.store.arm('eshutdown', (r) => r.type === CMD.READ);
    await h.readChecked(12345, 6789);
    assert.strictEqual((await shut).conn, 1);
    assert.match(h.events.disconnects[0]?.reason ?? '', /ESHUTDOWN/);
    assert.strictEqual(h.events.reconnects.length, 1);
  });

  const hostile: Array<{ act: Hostile; why: RegExp; timeoutMs?: number }> = [
    { act: 'unknown-handle', why: /unknown cookie/ },
    { act: 'bad-magic', why: /bad reply magic/ },
    { act: 'short-read-close', why: /closed/ },
    { act: 'short-read-stall', why: /no reply within/, timeoutMs: 1000 },
  ];
  for (const { act, why, timeoutMs } of hostile) {
    it(`${act}: the connection is dropped and reconnected; the read gets the store's bytes, never the hostile ones`, async function () {
      const h = await setup(cleanup, { makeTransport: tr.make, timeoutMs: timeoutMs ?? 0 });
      const caught = h.store.arm(act, (r) => r.type === CMD.READ && r.length === 65536);
      const others = [h.readChecked(0, 4096), h.write(200_000, patternBuffer(3000, 4))];
      await h.readChecked(131072, 65536);
      await Promise.all(others);
      assert.strictEqual((await caught).conn, 1);
      assert.match(h.events.disconnects[0]?.reason ?? '', why);
      assert.strictEqual(h.events.reconnects.length, 1);
      assert.ok(h.store.disk.subarray(200_000, 203_000).equals(patternBuffer(3000, 4)));
      // The connection that replaced it works.
      await h.readChecked(65536, 65536);
    });
  }

  it('an errno outside the spec fails that request with EINVAL (the spec says so) and keeps the connection', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make });
    void h.store.arm('bad-errno', (r) => r.type === CMD.READ);
    const err = await h.read(0, 4096).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof NbdRequestError, `expected a request error, got ${String(err)}`);
    assert.strictEqual(err.errno, 22);
    assert.match(err.message, new RegExp(`server sent ${BAD_ERRNO}`));
    await h.readChecked(0, 4096);
    assert.strictEqual(h.events.disconnects.length, 0);
    assert.strictEqual(h.store.accepted, 1);
  });

  it('shutdown() while reconnecting fails the waiting requests at once; close() ends the retries', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make, failAfterMs: 60_000 });
    await h.readChecked(0, 512);
    h.store.refuse = true;
    h.store.cutAll();
    const waiting = h.read(4096, 4096).then(() => null, (e: unknown) => e);
    await new Promise((r) => setTimeout(r, 200));
    const began = Date.now();
    h.client.shutdown();
    assert.ok(isConnErr(await waiting));
    assert.ok(Date.now() - began < 500);
    await h.client.close();
    const accepted = h.store.accepted;
    await new Promise((r) => setTimeout(r, 500));
    assert.strictEqual(h.store.accepted, accepted, 'still reconnecting after close()');
  });

  it('many cuts in a row under load: every read matches the store, every write lands', async function () {
    const h = await setup(cleanup, { makeTransport: tr.make });
    const model = h.store.disk;
    const last = new Map<number, Buffer>();
    for (let batch = 0; batch < 8; batch++) {
      // One cut somewhere in the middle of each batch of 50 pipelined requests.
      const cut = h.store.arm('cut', (r) => r.conn === h.store.accepted && h.store.requestsOn(r.conn).length > 10);
      const ops: Array<Promise<void>> = [];
      for (let i = 0; i < 50; i++) {
        const slot = (batch * 50 + i) % 64; // 16 KiB per slot; writes take its first 4 KiB
        const off = slot * 16384;
        if (i % 3 === 0) {
          const d = patternBuffer(4096, 1000 + batch * 50 + i);
          last.set(off, d);
          ops.push(h.write(off, d));
        } else {
          ops.push(h.read(off + 8192, 4096).then((got) => {
            assert.ok(got.equals(model.subarray(off + 8192, off + 12288)), `read of slot ${slot} differs from the store`);
          }));
        }
      }
      await Promise.all(ops);
      await cut;
    }
    for (const [off, d] of last) assert.ok(model.subarray(off, off + 4096).equals(d), `the last write at ${off} is not on the store`);
    assert.strictEqual(h.events.reconnects.length, 8);
  });

  it('a connection given up in a black hole never delivers its stale writes later, over newer ones', async function () {
    // In a real partition the kernel keeps retransmitting what an abandoned (closed) socket
    // still had queued; once the path heals, those bytes may reach the store after the new
    // connection has written newer data to the same blocks.
    const store = await FakeNbdServer.start(SIZE);
    cleanup.add(() => store.close());
    const proxy = await FaultProxy.start({ port: store.port });
    cleanup.add(() => proxy.close());
    const client = await ReconnectingClient.connect({
      makeTransport: tr.make,
      host: HOST, port: proxy.port, timeoutMs: 1000, failAfterMs: 30_000, minBackoffMs: 20, maxBackoffMs: 200,
    });
    cleanup.add(() => client.close());
    const h = new Harness(store, client);
    await h.readChecked(0, 4096);
    const stale = Buffer.alloc(4096, 0x5a);
    const fresh = Buffer.alloc(4096, 0xa5);
    proxy.blackhole();
    const lost = waitEvent(client, 'disconnect');
    const first = h.write(8192, stale);
    await lost;
    await new Promise((r) => setTimeout(r, 200)); // the old socket is closed by now
    const back = waitEvent(client, 'reconnect');
    proxy.forward({ lateForClosedMs: 1500 });
    await back;
    await first;
    await h.write(8192, fresh);
    assert.ok(store.disk.subarray(8192, 12288).equals(fresh));
    await new Promise((r) => setTimeout(r, 2000)); // the late bytes have had their chance
    assert.ok(store.disk.subarray(8192, 12288).equals(fresh), 'a write from the abandoned connection landed after a newer one');
  });
  it('started disconnected from a known export: requests wait for the store and then complete with its bytes, in order', async function () {
    const h = await setupInBackground(cleanup, { makeTransport: tr.make });
    assert.strictEqual(h.client.connected, false);
    assert.strictEqual(h.client.info.size, SIZE);
    const data = patternBuffer(8192, 11);
    let settled = 0;
    const waiting = [h.write(16384, data), h.readChecked(0, 4096), h.read(16384, 8192)].map((p) => p.finally(() => { settled++; }));
    // The store refuses a few attempts: nothing has completed or reached it meanwhile.
    while (h.store.accepted < 3) await new Promise((r) => setTimeout(r, 10));
    assert.strictEqual(settled, 0, 'a request completed without a store');
    assert.strictEqual(h.store.requests.length, 0);
    h.store.refuse = false;
    const [, , got] = await Promise.all(waiting);
    assert.ok((got as Buffer).equals(data), 'the read after the write returned other bytes');
    assert.strictEqual(h.events.connects.length, 1);
    assert.ok((h.events.connects[0]?.attempts ?? 0) >= 3);
    assert.strictEqual(h.events.connects[0]?.sent, 3);
    assert.deepStrictEqual([h.events.reconnects.length, h.events.disconnects.length, h.events.giveUps.length], [0, 0, 0]);
    // A later loss is an ordinary reconnect.
    h.store.cutAll();
    await h.readChecked(65536, 4096);
    assert.strictEqual(h.events.connects.length, 1);
  });

  it('started disconnected, the store away past failAfterMs: waiting requests fail with a connection error, new ones too; the store back serves', async function () {
    const h = await setupInBackground(cleanup, { makeTransport: tr.make, failAfterMs: 1000 });
    const waiting = await outcome(h.read(4096, 4096));
    assert.ok(isConnErr(waiting), `expected a connection error, got ${String(waiting)}`);
    assert.strictEqual(h.events.giveUps.length, 1);
    assert.match(h.events.giveUps[0]?.reason ?? '', /unreachable for 1000 ms/);
    assert.ok(isConnErr(await outcome(h.read(0, 512))), 'a request after giving up fails too');
    await h.storeBack('connect');
  });

  const others: Array<{ what: string; become: (s: FakeNbdServer) => void; back: (s: FakeNbdServer) => void; why: RegExp }> = [
    { what: 'another size', become: (s) => { s.exportSize = SIZE * 2; }, back: (s) => { s.exportSize = SIZE; }, why: /size changed from 1048576 to 2097152/ },
    {
      what: 'other flags (read-only)', become: (s) => { s.exportFlags |= NC.TFLAG_READ_ONLY; },
      back: (s) => { s.exportFlags &= ~NC.TFLAG_READ_ONLY; }, why: /flags changed from 0x[0-9a-f]+ to 0x[0-9a-f]+/,
    },
  ];
  for (const o of others) {
    it(`started disconnected, the store serves ${o.what}: it is not used, requests fail after failAfterMs; the known export then serves`, async function () {
      const h = await setupInBackground(cleanup, { makeTransport: tr.make, failAfterMs: 1000 });
      const before = Buffer.from(h.store.disk);
      o.become(h.store);
      h.store.refuse = false;
      const err = await outcome(h.write(0, patternBuffer(4096, 5)));
      assert.ok(isConnErr(err), `expected a connection error, got ${String(err)}`);
      assert.ok(h.events.mismatches.length >= 1, 'the other export was noticed');
      assert.match(h.events.mismatches[0]?.reason ?? '', o.why);
      assert.deepStrictEqual(h.store.requests, [], 'a request reached the other export');
      assert.ok(h.store.disk.equals(before), 'the disk changed');
      assert.strictEqual(h.events.connects.length, 0);
      const back = waitEvent(h.client, 'connect');
      o.back(h.store);
      await back;
      await h.readChecked(0, 8192);
    });
  }

  it('started disconnected: shutdown() fails the waiting requests at once; close() ends the attempts', async function () {
    const h = await setupInBackground(cleanup, { makeTransport: tr.make, failAfterMs: 60_000 });
    const waiting = outcome(h.read(4096, 4096));
    while (h.store.accepted < 2) await new Promise((r) => setTimeout(r, 10));
    h.client.shutdown();
    assert.ok(isConnErr(await waiting));
    await h.client.close();
    const accepted = h.store.accepted;
    await new Promise((r) => setTimeout(r, 500));
    assert.strictEqual(h.store.accepted, accepted, 'still connecting after close()');
  });
});
