// A device on a scripted store (test/helpers/fake-nbd.ts, in this process) that answers one
// request with a hostile reply: an unknown handle, a bad magic, a short read, an errno out
// of range, ESHUTDOWN, or, after a reconnect, another export size. The daemon must drop
// the connection and reconnect (or, for the errno, fail only that request, as the spec
// says), and dd through /dev/ublkbN must read exactly the store's bytes: the hostile
// replies carry poison bytes that must never reach the kernel. The daemon never dies.
import * as assert from 'assert';
import * as fs from 'fs';
import { cliOk, pidAlive, waitFor } from '../device/helpers';
import { CMD, POISON, type FakeNbdServer, type Hostile } from '../helpers/fake-nbd';
import { patternBuffer } from '../helpers/images';
import { MiB, daemonLog, expectingKernelErrors, readDirect, scriptedStoreDevice, writeDirect, type Device } from './helpers';

const SIZE = 16 * MiB;
const LEN = 64 * 1024;
const TIMEOUT_S = 2;
const FAIL_AFTER_S = 4;

function firstDiff(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : Math.min(a.length, b.length);
}

describe('faults: hostile replies from a scripted store, through the device (real kernel)', function () {
  this.timeout(300_000);
  const sd = scriptedStoreDevice(SIZE, 11, ['--timeout', String(TIMEOUT_S), '--fail-after', String(FAIL_AFTER_S)]);
  let store: FakeNbdServer;
  let dev: Device;
  let scratch = '';

  before(function () {
    ({ store, dev, scratch } = sd);
  });

  afterEach(function () {
    store?.disarm();
    assert.ok(pidAlive(dev.pid), 'the daemon died');
  });

  /** The device's bytes at offset, which must be the store's. */
  async function assertReadsStore(offset: number, length = LEN): Promise<void> {
    const { data, r } = await readDirect(dev.device, offset, length, scratch);
    assert.strictEqual(r.code, 0, `dd read failed: ${r.stderr}`);
    const want = store.disk.subarray(offset, offset + length);
    const d = firstDiff(data, want);
    assert.strictEqual(d, -1, `the device returned 0x${(data[d] ?? 0).toString(16)} at +${d} where the store holds 0x${(want[d] ?? 0).toString(16)}`
      + `${data[d] === POISON ? ' (a byte of the hostile reply)' : ''}`);
  }

  function logSince(t: number): Array<{ msg: string; reason?: unknown }> {
    return daemonLog(dev.id).filter((l) => l.time >= t);
  }

  const dropped: Array<{ act: Hostile; reason: RegExp }> = [
    { act: 'unknown-handle', reason: /unknown cookie/ },
    { act: 'bad-magic', reason: /bad reply magic/ },
    { act: 'short-read-close', reason: /closed/ },
    { act: 'short-read-stall', reason: /no reply within/ },
    { act: 'eshutdown', reason: /ESHUTDOWN/ },
  ];
  for (const [i, { act, reason }] of dropped.entries()) {
    it(`${act} on a read: the daemon reconnects and dd reads the store's bytes`, async function () {
      const offset = (i + 1) * MiB;
      const t = Date.now();
      let caught = false;
      void store.arm(act, (r) => r.type === CMD.READ && r.offset === offset).then(() => { caught = true; });
      await assertReadsStore(offset);
      assert.ok(caught, 'the hostile reply was sent');
      const log = logSince(t);
      const lost = log.find((l) => /connection to the store lost/.test(l.msg));
      assert.ok(lost, 'the daemon logged the lost connection');
      assert.match(String(lost.reason), reason);
      assert.ok(log.some((l) => /reconnected to the store/.test(l.msg)), 'the daemon logged the reconnect');
      await assertReadsStore(offset + LEN);
    });
  }

  it('a cut in the middle of a write: dd succeeds and the store holds the bytes', async function () {
    const offset = 8 * MiB;
    const data = patternBuffer(LEN, 99);
    const t = Date.now();
    let caught = false;
    void store.arm('cut', (r) => r.type === CMD.WRITE && r.offset === offset).then(() => { caught = true; });
    const r = await writeDirect(dev.device, offset, data, scratch);
    assert.strictEqual(r.code, 0, `dd write failed: ${r.stderr}`);
    assert.ok(caught);
    assert.ok(store.disk.subarray(offset, offset + LEN).equals(data), 'the resent write is on the store');
    assert.ok(logSince(t).some((l) => /reconnected to the store/.test(l.msg)));
    await assertReadsStore(offset);
  });

  it('an errno out of range fails that read alone (EINVAL, as the spec says); the connection stays', async function () {
    const offset = 10 * MiB;
    const t = Date.now();
    await expectingKernelErrors('a scripted store answers a read with an unknown errno', async () => {
      void store.arm('bad-errno', (r) => r.type === CMD.READ && r.offset === offset);
      const { data, r } = await readDirect(dev.device, offset, LEN, scratch);
      assert.notStrictEqual(r.code, 0, 'the read should fail');
      assert.ok(!data.includes(POISON), 'no hostile byte reached the reader');
    });
    await assertReadsStore(offset);
    assert.ok(!logSince(t).some((l) => /connection to the store lost/.test(l.msg)), 'an error reply is not a reason to reconnect');
  });

  it('a store that comes back as another size is not used: I/O fails after --fail-after, works again once the right export is back, del works', async function () {
    const offset = 12 * MiB;
    const t = Date.now();
    const before = Buffer.from(store.disk);
    await expectingKernelErrors('the store comes back with another size', async () => {
      store.exportSize = SIZE * 2;
      store.cutAll();
      const began = Date.now();
      const { r } = await readDirect(dev.device, offset, LEN, scratch);
      const took = Date.now() - began;
      assert.notStrictEqual(r.code, 0, 'the read should fail');
      assert.match(r.stderr, /Input\/output error/);
      assert.ok(took >= FAIL_AFTER_S * 1000 - 1000 && took < FAIL_AFTER_S * 1000 + 15_000, `the read failed after ${took} ms`);
    });
    const log = logSince(t);
    assert.ok(log.some((l) => /serves a different export/.test(l.msg)), 'the daemon logged the other export');
    assert.ok(log.some((l) => /store unreachable: requests now fail with EIO/.test(l.msg)));
    const wrong = new Set(store.sizesSeen.filter((s) => s.size !== SIZE).map((s) => s.conn));
    assert.ok(wrong.size >= 1);
    assert.deepStrictEqual(store.requests.filter((q) => wrong.has(q.conn)), [], 'a request reached the other export');
    assert.ok(store.disk.equals(before));

    store.exportSize = SIZE;
    await waitFor('the daemon to reconnect to the right export', () => logSince(t).some((l) => /reconnected to the store/.test(l.msg)), 30_000, 100);
    await assertReadsStore(offset);
    const del = await cliOk(['del', String(dev.id)], { timeoutMs: 90_000 });
    assert.ok(del.ms < 20_000, `del took ${del.ms} ms`);
    assert.ok(!fs.existsSync(dev.device));
    await waitFor('the daemon to exit', () => !pidAlive(dev.pid), 30_000);
    dev.pid = process.pid; // for afterEach: the daemon was meant to go
  });
});
