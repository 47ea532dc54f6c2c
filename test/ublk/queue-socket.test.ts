// A socket on the ublk queue's ring, without a ublk kernel: a queue over /dev/zero (see
// addon.test.ts; its fetches are refused at once, and its ring then carries only the
// socket) against a plain TCP peer in this process: argument checks, the slot rules, the
// byte order of sends, replies and their payloads in one wake-up call, and the end of a
// connection. NBD traffic over it is tested through the client (test/nbd/*, the ring
// transport).
import * as assert from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import { loadUblk, type NativeQueue } from '../../src/native/load';
import { socketFd } from '../../src/nbd/stream-transport';
import { Cleanup, cleanupAfterEach } from '../helpers/procs';
import { HOST, listen } from '../helpers/net';

/**
 * A connected pair: our side (paused, for the ring) and the peer's. Ours is made with
 * `onread`, as the NBD client's is: only then does pause() stop Node's reads at once (a
 * plain stream keeps reading until its buffer fills, taking bytes meant for the ring).
 */
async function pair(cleanup: Cleanup): Promise<{ ours: net.Socket; theirs: net.Socket }> {
  let theirs: net.Socket | undefined;
  const server = net.createServer((s) => { theirs = s; });
  const port = await listen(server);
  const ours = net.connect({ host: HOST, port, onread: { buffer: Buffer.alloc(16), callback: () => true } });
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

/** A simple reply header: magic, error, cookie (gen, slot). */
function reply(error: number, gen: number, slot: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(0x67446698, 0);
  b.writeUInt32BE(error, 4);
  b.writeUInt32BE(gen, 8);
  b.writeUInt32BE(slot, 12);
  return b;
}

interface Events {
  requests: number[];
  replies: number[];
  failures: number[];
}

describe('ublk addon: a socket on the queue\'s ring', () => {
  const cleanup = cleanupAfterEach();
  const Queue = loadUblk().Queue;

  /** A started queue over /dev/zero with room for `slots` socket requests; every onEvents call is recorded. */
  function zeroQueue(slots: number): { q: NativeQueue; ev: Events; next: () => Promise<void> } {
    const fd = fs.openSync('/dev/zero', 'r+');
    const q = new Queue({ qid: 0, depth: 2, bufBytes: 4096, charFd: fd, ioctlEncode: false, socketSlots: slots });
    cleanup.add(() => {
      q.close();
      fs.closeSync(fd);
    });
    const ev: Events = { requests: [], replies: [], failures: [] };
    let wake: (() => void) | null = null;
    q.start((n, r, f) => {
      ev.requests.push(n);
      ev.replies.push(r);
      if (f >= 0) ev.failures.push(f);
      wake?.();
    }, new Uint16Array(2), () => undefined, () => undefined);
    const next = (): Promise<void> => new Promise((r) => { wake = r; });
    return { q, ev, next };
  }

  it('rejects bad options and calls', async () => {
    const fd = fs.openSync('/dev/zero', 'r+');
    try {
      assert.throws(() => new Queue({ qid: 0, depth: 1, bufBytes: 4096, charFd: fd, ioctlEncode: false, socketSlots: 4097 }), RangeError);
      // Zero copy reaches the requests' pages only through a socket on the queue's ring.
      assert.throws(() => new Queue({ qid: 0, depth: 1, bufBytes: 4096, charFd: fd, ioctlEncode: false, zeroCopy: true }), /zeroCopy needs socketSlots/);
      // User copy only serves the zero-copy path (staged READ payloads into the requests' pages).
      assert.throws(() => new Queue({ qid: 0, depth: 1, bufBytes: 4096, charFd: fd, ioctlEncode: false, socketSlots: 1, userCopy: true }), /userCopy needs zeroCopy/);
      const plain = new Queue({ qid: 0, depth: 1, bufBytes: 4096, charFd: fd, ioctlEncode: false });
      assert.throws(() => plain.attachSocket(0, Buffer.alloc(32)), /without socketSlots/);
      plain.close();
    } finally {
      fs.closeSync(fd);
    }
    const { ours } = await pair(cleanup);
    const { q } = zeroQueue(2);
    assert.throws(() => q.sendRequest(0, 1, header(), null, null), /no socket attached/);
    assert.throws(() => q.attachSocket(socketFd(ours), Buffer.alloc(2 * 16)), RangeError);
    assert.throws(() => q.attachSocket(-1, Buffer.alloc(3 * 16)), RangeError);
    q.attachSocket(socketFd(ours), Buffer.alloc(3 * 16));
    assert.throws(() => q.attachSocket(socketFd(ours), Buffer.alloc(3 * 16)), /already attached/);
    assert.throws(() => q.sendRequest(2, 1, header(), null, null), RangeError);
    assert.throws(() => q.sendRequest(0, 1, Buffer.alloc(27), null, null), RangeError);
    assert.strictEqual(q.sendRequest(0, 1, header(), null, null), true);
    assert.throws(() => q.sendRequest(0, 2, header(), null, null), /still in flight/);
    q.detachSocket();
    q.detachSocket();
    assert.throws(() => q.sendRequest(1, 1, header(), null, null), /no socket attached/);
    q.close();
    assert.throws(() => q.attachSocket(socketFd(ours), Buffer.alloc(3 * 16)), /closed/);
  });

  it('sends a tick\'s requests in order with the commit, the next tick\'s after them', async () => {
    const { ours, theirs } = await pair(cleanup);
    const { q } = zeroQueue(4);
    q.attachSocket(socketFd(ours), Buffer.alloc(5 * 16));
    const got: Buffer[] = [];
    theirs.on('data', (b: Buffer) => got.push(b));
    const h = [0, 1, 2].map((i) => Buffer.alloc(28, 0x10 + i));
    const data = Buffer.alloc(300_000, 0x77);
    q.sendRequest(0, 1, h[0]!, null, null);
    q.sendRequest(1, 1, h[1]!, data, null);
    q.commit(new Int32Array(0), 0);
    q.sendRequest(2, 1, h[2]!, null, null); // waits for the chain in flight, then follows it
    q.commit(new Int32Array(0), 0);
    const want = Buffer.concat([h[0]!, h[1]!, data, h[2]!]);
    while (Buffer.concat(got).length < want.length) {
      await new Promise((r) => setTimeout(r, 5));
      q.commit(new Int32Array(0), 0); // the wake-ups post the waiting chain; this only nudges
    }
    assert.ok(Buffer.concat(got).equals(want));
  });

  it('passes replies on in one call per wake-up, a READ\'s payload already in place', async () => {
    const { ours, theirs } = await pair(cleanup);
    const { q, ev, next } = zeroQueue(4);
    const replies = Buffer.alloc(5 * 16);
    q.attachSocket(socketFd(ours), replies);
    const into = Buffer.alloc(100_000);
    q.sendRequest(0, 7, header(), null, into);
    q.sendRequest(1, 7, header(), null, null);
    q.commit(new Int32Array(0), 0);
    const payload = Buffer.alloc(into.length, 0x5a);
    const woke = next();
    theirs.write(Buffer.concat([reply(0, 7, 1), reply(0, 7, 0), payload]));
    await woke;
    while (ev.replies.reduce((a, b) => a + b, 0) < 2) await next();
    assert.deepStrictEqual(ev.failures, []);
    // The READ's header comes last: after its payload, in the same call as the other
    // reply or in a later one.
    const last = ev.replies.filter((n) => n > 0);
    const readAt = last[last.length - 1] === 2 ? 16 : 0;
    assert.ok(replies.subarray(readAt, readAt + 16).equals(reply(0, 7, 0)));
    assert.ok(into.equals(payload), 'the payload landed in its destination');
  });

  it('a peer that closes: one failure (0), then sendRequest says no', async () => {
    const { ours, theirs } = await pair(cleanup);
    const { q, ev, next } = zeroQueue(2);
    q.attachSocket(socketFd(ours), Buffer.alloc(3 * 16));
    theirs.end();
    while (ev.failures.length === 0) await next();
    await new Promise((r) => setTimeout(r, 20));
    assert.deepStrictEqual(ev.failures, [0]);
    assert.deepStrictEqual(ev.replies.filter((n) => n > 0), []);
    assert.strictEqual(q.sendRequest(0, 1, header(), null, null), false);
    q.detachSocket();
  });

  it('a detached socket\'s next connection attaches to the same ring', async () => {
    const first = await pair(cleanup);
    const second = await pair(cleanup);
    const { q, ev, next } = zeroQueue(2);
    const replies = Buffer.alloc(3 * 16);
    q.attachSocket(socketFd(first.ours), replies);
    q.sendRequest(0, 1, header(), null, null);
    q.commit(new Int32Array(0), 0);
    q.detachSocket(); // a receive was posted: cancelled and reaped
    q.attachSocket(socketFd(second.ours), replies);
    q.sendRequest(0, 2, header(), null, null);
    q.commit(new Int32Array(0), 0);
    const woke = next();
    second.theirs.write(reply(0, 2, 0));
    await woke;
    while (ev.replies.reduce((a, b) => a + b, 0) < 1) await next();
    assert.ok(replies.subarray(0, 16).equals(reply(0, 2, 0)));
    assert.deepStrictEqual(ev.failures, []);
  });
});
