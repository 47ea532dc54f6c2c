// The addon's RingSocket on its own, against a plain TCP peer in this process: argument
// checks, the slot rules, and the end of a connection. NBD traffic over it is tested
// through the client (test/nbd/*, the ring transport).
import * as assert from 'assert';
import * as net from 'net';
import { loadUblk, type NativeRingSocket } from '../../src/native/load';
import { socketFd } from '../../src/nbd/stream-transport';
import { Cleanup, cleanupAfterEach } from '../helpers/procs';
import { HOST, listen } from '../helpers/net';

/** A connected pair: our side (paused, for the ring) and the peer's. */
async function pair(cleanup: Cleanup): Promise<{ ours: net.Socket; theirs: net.Socket }> {
  let theirs: net.Socket | undefined;
  const server = net.createServer((s) => { theirs = s; });
  const port = await listen(server);
  const ours = net.connect({ host: HOST, port });
  await new Promise<void>((r) => ours.once('connect', () => r()));
  while (theirs === undefined) await new Promise((r) => setImmediate(r));
  ours.pause();
  const peer = theirs;
  cleanup.add(() => new Promise<void>((r) => {
    ours.destroy();
    peer.destroy();
    server.close(() => r());
  }));
  return { ours, theirs: peer };
}

function header(): Buffer {
  return Buffer.alloc(28);
}

describe('ublk addon: RingSocket', () => {
  const cleanup = cleanupAfterEach();
  const RingSocket = loadUblk().RingSocket;

  it('rejects bad options', () => {
    assert.throws(() => new RingSocket({ fd: 0, slots: 0 }), RangeError);
    assert.throws(() => new RingSocket({ fd: 0, slots: 4097 }), RangeError);
    assert.throws(() => new RingSocket({ fd: -1, slots: 1 }), RangeError);
    assert.throws(() => new RingSocket({ slots: 1 } as unknown as { fd: number; slots: number }), TypeError);
  });

  it('checks its calls: not started, slots out of range or busy, too small a replies buffer, closed', async () => {
    const { ours } = await pair(cleanup);
    const rs: NativeRingSocket = new RingSocket({ fd: socketFd(ours), slots: 2 });
    try {
      assert.throws(() => rs.queue(0, 1, header(), null, null), /not started/);
      assert.throws(() => rs.start(() => 0, Buffer.alloc(2 * 16), () => 0), RangeError);
      rs.start(() => 0, Buffer.alloc(3 * 16), () => 0);
      assert.throws(() => rs.start(() => 0, Buffer.alloc(3 * 16), () => 0), /already started/);
      assert.throws(() => rs.queue(2, 1, header(), null, null), RangeError);
      assert.throws(() => rs.queue(0, 1, Buffer.alloc(27), null, null), RangeError);
      assert.strictEqual(rs.queue(0, 1, header(), null, null), true);
      assert.throws(() => rs.queue(0, 2, header(), null, null), /still in flight/);
    } finally {
      rs.close();
      rs.close();
    }
    assert.throws(() => rs.queue(1, 1, header(), null, null), /closed/);
  });

  it('sends a request\'s header and payload in one piece, in order', async () => {
    const { ours, theirs } = await pair(cleanup);
    const rs = new RingSocket({ fd: socketFd(ours), slots: 4 });
    cleanup.add(() => rs.close());
    rs.start(() => 0, Buffer.alloc(5 * 16), () => 0);
    const got: Buffer[] = [];
    theirs.on('data', (b: Buffer) => got.push(b));
    const h = [0, 1, 2].map((i) => Buffer.alloc(28, 0x10 + i));
    const data = Buffer.alloc(100_000, 0x77);
    rs.queue(0, 1, h[0]!, null, null);
    rs.queue(1, 1, h[1]!, data, null);
    rs.flush();
    rs.queue(2, 1, h[2]!, null, null); // waits for the chain in flight, then follows it
    rs.flush();
    const want = Buffer.concat([h[0]!, h[1]!, data, h[2]!]);
    while (Buffer.concat(got).length < want.length) await new Promise((r) => setTimeout(r, 5));
    assert.ok(Buffer.concat(got).equals(want));
  });

  it('a peer that closes: onClosed(0) once, then queue() says no', async () => {
    const { ours, theirs } = await pair(cleanup);
    const rs = new RingSocket({ fd: socketFd(ours), slots: 2 });
    cleanup.add(() => rs.close());
    const closed: number[] = [];
    const replies: number[] = [];
    await new Promise<void>((resolve) => {
      rs.start((n) => replies.push(n), Buffer.alloc(3 * 16), (errno) => {
        closed.push(errno);
        resolve();
      });
      theirs.end();
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.deepStrictEqual(closed, [0]);
    assert.deepStrictEqual(replies, []);
    assert.strictEqual(rs.queue(0, 1, header(), null, null), false);
  });
});
