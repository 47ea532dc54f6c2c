// The addon's queue machinery without a ublk kernel: a Queue over /dev/zero. The
// descriptor mmap succeeds there (PROT_READ, MAP_SHARED), and every FETCH_REQ
// completes at once with EOPNOTSUPP (the file has no ->uring_cmd), which drives
// the ring polling, the error and stopped callbacks, close() and worker loading.
// The real kernel paths are in *.ktest.ts.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { UblkCtrl, ublkAvailable } from '../../src/ublk/ctrl';
import { UblkError } from '../../src/ublk/errors';
import { loadUblk } from '../../src/native/load';
import { UblkQueue } from '../../src/ublk/queue';

const EOPNOTSUPP = 95;

describe('ublk addon (no kernel driver needed)', () => {
  let fd = -1;
  beforeEach(() => {
    fd = fs.openSync('/dev/zero', 'r+');
  });
  afterEach(() => {
    fs.closeSync(fd);
  });

  it('validates ctrlCommand arguments', () => {
    const n = loadUblk();
    assert.throws(() => n.ctrlCommand(1, 0, 0, 0 as unknown as bigint, null), TypeError);
    assert.throws(() => n.ctrlCommand(-1, 0, 0, 0n, null), RangeError);
    assert.throws(() => n.ctrlCommand(1, 0, 0x10000, 0n, null), RangeError);
    assert.throws(() => n.ctrlCommand(1, 0, 0, -1n, null), RangeError);
  });

  it('reports a missing driver as UBLK_NO_DRIVER', async function () {
    // Only a host without the driver can show this error; where the driver is loaded, the
    // real control path is what the kernel tests (device.ktest.ts) check instead.
    if (ublkAvailable()) this.skip();
    await assert.rejects(UblkCtrl.open(), (err: unknown) => {
      assert.ok(err instanceof UblkError);
      assert.strictEqual(err.code, 'UBLK_NO_DRIVER');
      assert.strictEqual(err.errno, 2);
      assert.match(err.message, /modprobe ublk_drv/);
      return true;
    });
  });

  it('maps page-aligned tag buffers and the descriptor array', () => {
    const q = new (loadUblk().Queue)({ qid: 0, depth: 8, bufBytes: 5000, charFd: fd, ioctlEncode: true });
    try {
      assert.strictEqual(q.buffers.length, 8);
      const first = q.buffers[0];
      assert.ok(first);
      const ab = first.buffer;
      for (let tag = 0; tag < 8; tag++) {
        const b = q.buffers[tag];
        assert.ok(b);
        assert.strictEqual(b.length, 5000);
        assert.strictEqual(b.buffer, ab, 'all tags share one ArrayBuffer');
        assert.strictEqual(b.byteOffset, tag * 8192, 'each tag starts on its own page');
      }
      assert.strictEqual(q.descs.length, 8 * 24);
      assert.ok(q.descs.every((x) => x === 0));
      assert.throws(() => q.commit(new Int32Array(2), 1), /not started/);
    } finally {
      q.close();
    }
  });

  it('reports refused fetches, stops, and empties the buffers on close', async () => {
    const q = new (loadUblk().Queue)({ qid: 0, depth: 4, bufBytes: 4096, charFd: fd, ioctlEncode: false });
    const errors: Array<[number, number]> = [];
    let requests = 0;
    await new Promise<void>((resolve) => {
      q.start(
        () => requests++,
        new Uint16Array(4),
        () => resolve(),
        (tag, errno) => errors.push([tag, errno]),
      );
      assert.throws(() => q.start(() => 0, new Uint16Array(4), () => 0, () => 0), /already started/);
    });
    assert.strictEqual(requests, 0);
    assert.deepStrictEqual(
      errors.sort((a, b) => a[0] - b[0]),
      [0, 1, 2, 3].map((t) => [t, EOPNOTSUPP]),
    );
    assert.throws(() => q.commit(Int32Array.of(0, 0), 1), /holds no request/);
    const b0 = q.buffers[0];
    assert.ok(b0);
    b0.fill(1);
    q.close();
    q.close();
    assert.strictEqual(b0.length, 0, 'detached by close');
    assert.strictEqual(q.descs.length, 0);
    assert.throws(() => q.commit(new Int32Array(2), 0), /closed/);
  });

  it('checks readyTags', () => {
    const q = new (loadUblk().Queue)({ qid: 0, depth: 4, bufBytes: 4096, charFd: fd, ioctlEncode: true });
    try {
      assert.throws(() => q.start(() => 0, new Uint16Array(3), () => 0, () => 0), RangeError);
      assert.throws(() => q.start(() => 0, new Uint32Array(4) as unknown as Uint16Array, () => 0, () => 0), TypeError);
    } finally {
      q.close();
    }
  });

  it('rejects bad options', () => {
    const Q = loadUblk().Queue;
    assert.throws(() => new Q({ qid: 0, depth: 0, bufBytes: 4096, charFd: fd, ioctlEncode: true }), RangeError);
    assert.throws(() => new Q({ qid: 0, depth: 4097, bufBytes: 4096, charFd: fd, ioctlEncode: true }), RangeError);
    assert.throws(() => new Q({ qid: 4096, depth: 1, bufBytes: 4096, charFd: fd, ioctlEncode: true }), RangeError);
    assert.throws(() => new Q({ qid: 0, depth: 1, bufBytes: 4096, charFd: 1 << 30, ioctlEncode: true }), (err: unknown) => {
      assert.strictEqual((err as { code?: string }).code, 'EBADF');
      assert.strictEqual((err as { errno?: number }).errno, 9);
      return true;
    });
  });

  it('UblkQueue reports refusals as UblkError and stops', async () => {
    const q = new UblkQueue({ devId: 0, qid: 0, depth: 2, maxIoBufBytes: 4096, charFd: fd, ioctlEncode: true });
    const codes: string[] = [];
    await new Promise<void>((resolve) => {
      q.start({
        request: () => assert.fail('no request expected'),
        error: (err, tag) => codes.push(`${tag}:${err.code}:${err.errnoCode}`),
        stopped: () => resolve(),
      });
    });
    q.close();
    assert.deepStrictEqual(codes.sort(), ['0:UBLK_UNSUPPORTED:EOPNOTSUPP', '1:UBLK_UNSUPPORTED:EOPNOTSUPP']);
    assert.throws(() => q.complete(0, 0), (err: unknown) => err instanceof UblkError && err.code === 'UBLK_USAGE');
  });

  for (const leaveOpen of [false, true]) {
    it(`runs a queue in a worker_thread${leaveOpen ? ', left open for teardown' : ''}`, async () => {
      const worker = new Worker(path.join(__dirname, 'zero-queue-worker.js'), { workerData: { depth: 3, leaveOpen } });
      // 'exit' is listened for from the start: a worker that exits delivers its last
      // message and emits 'exit' in the same tick, before a listener added after the
      // message could exist.
      const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
      const msg = await new Promise<{ errors: string[]; bufferLength: number; closedLength: number }>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        void exited.then((c) => reject(new Error(`worker exited with ${c} before its report`)));
      });
      const code = await exited;
      assert.deepStrictEqual(msg.errors, ['EOPNOTSUPP', 'EOPNOTSUPP', 'EOPNOTSUPP']);
      assert.strictEqual(msg.bufferLength, 4096);
      assert.strictEqual(msg.closedLength, leaveOpen ? 4096 : 0);
      assert.strictEqual(code, 0);
    });
  }
});
