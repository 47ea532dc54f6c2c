// ByteQueue plus the codec as a stream parser: the same hand-built byte stream, cut at
// every boundary (every single cut, every pair of cuts, every byte alone), must yield the
// same messages. TCP may deliver any such split.
import * as assert from 'assert';
import { ByteQueue } from '../../src/nbd/byte-queue';
import * as codec from '../../src/nbd/codec';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Cuts buf at the given positions (sorted, within 0..length). */
function cut(buf: Buffer, at: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...at, buf.length]) {
    out.push(buf.subarray(prev, p));
    prev = p;
  }
  return out;
}

/** Every way to cut buf once or twice, and into single bytes. */
function* splits(buf: Buffer): Generator<Buffer[]> {
  for (let i = 0; i <= buf.length; i++) {
    yield cut(buf, [i]);
    for (let j = i; j <= buf.length; j++) yield cut(buf, [i, j]);
  }
  yield Array.from(buf, (b) => Buffer.from([b]));
}

// ---- a request stream, as the server parses it ----

interface Req { type: number; flags: number; cookie: string; offset: number; length: number; payload?: string }

// Written out by hand: WRITE(FUA) "hello" at 0x1_0000_0000, READ 512 at 4096,
// FLUSH, WRITE_ZEROES(NO_HOLE) 64 KiB at 0, WRITE "abc" at 7, DISC.
const REQUESTS = hex(`
  25609513 0001 0001 0000000100000002 0000000100000000 00000005  68656c6c6f
  25609513 0000 0000 ffffffffffffffff 0000000000001000 00000200
  25609513 0000 0003 0000000000000000 0000000000000000 00000000
  25609513 0002 0006 8000000000000001 0000000000000000 00010000
  25609513 0000 0001 0000000000000003 0000000000000007 00000003  616263
  25609513 0000 0002 0000000000000004 0000000000000000 00000000
`);
const WANT_REQUESTS: Req[] = [
  { type: 1, flags: 1, cookie: '0000000100000002', offset: 2 ** 32, length: 5, payload: 'hello' },
  { type: 0, flags: 0, cookie: 'ffffffffffffffff', offset: 4096, length: 512 },
  { type: 3, flags: 0, cookie: '0000000000000000', offset: 0, length: 0 },
  { type: 6, flags: 2, cookie: '8000000000000001', offset: 0, length: 65536 },
  { type: 1, flags: 0, cookie: '0000000000000003', offset: 7, length: 3, payload: 'abc' },
  { type: 2, flags: 0, cookie: '0000000000000004', offset: 0, length: 0 },
];

/** Feeds chunks to a ByteQueue the way the server's connection does, collecting requests. */
function parseRequests(chunks: Buffer[]): Req[] {
  const q = new ByteQueue();
  const out: Req[] = [];
  let pending: codec.RequestHeader | null = null;
  for (const c of chunks) {
    q.push(c);
    for (;;) {
      if (pending === null) {
        if (q.length < 28) break;
        const h = codec.decodeRequestHeader(q.take(28));
        assert.strictEqual(h.magic, 0x25609513);
        if (h.type === 1) {
          pending = h;
          continue;
        }
        out.push({ type: h.type, flags: h.flags, cookie: cookieHex(h), offset: h.offset, length: h.length });
      } else {
        if (q.length < pending.length) break;
        const payload = Buffer.concat(q.takeChunks(pending.length)).toString('latin1');
        const h = pending;
        pending = null;
        out.push({ type: h.type, flags: h.flags, cookie: cookieHex(h), offset: h.offset, length: h.length, payload });
      }
    }
  }
  assert.strictEqual(q.length, 0, 'bytes left over');
  return out;
}

function cookieHex(h: codec.RequestHeader): string {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(h.cookieHi, 0);
  b.writeUInt32BE(h.cookieLo, 4);
  return b.toString('hex');
}

// ---- an option reply stream, as the client parses it ----

// INFO_EXPORT (size 64 MiB, flags 0x016d), INFO_BLOCK_SIZE (1, 4096, 32 MiB), an
// unknown info type 0x4242 with 3 bytes, ACK.
const OPTION_REPLIES = hex(`
  0003e889045565a9 00000007 00000003 0000000c  0000 0000000004000000 016d
  0003e889045565a9 00000007 00000003 0000000e  0003 00000001 00001000 02000000
  0003e889045565a9 00000007 00000003 00000005  4242 010203
  0003e889045565a9 00000007 00000001 00000000
`);
const WANT_OPTION_REPLIES = [
  { type: 3, data: '00000000000004000000016d' },
  { type: 3, data: '0003000000010000100002000000' },
  { type: 3, data: '4242010203' },
  { type: 1, data: '' },
];

function parseOptionReplies(chunks: Buffer[]): Array<{ type: number; data: string }> {
  const q = new ByteQueue();
  const out: Array<{ type: number; data: string }> = [];
  let hdr: codec.OptionReplyHeader | null = null;
  for (const c of chunks) {
    q.push(c);
    for (;;) {
      if (hdr === null) {
        if (q.length < codec.OPTION_REPLY_HEADER_BYTES) break;
        hdr = codec.decodeOptionReplyHeader(q.take(codec.OPTION_REPLY_HEADER_BYTES));
        assert.strictEqual(hdr.magic, 0x3e889045565a9n);
        assert.strictEqual(hdr.option, 7);
      }
      if (q.length < hdr.length) break;
      out.push({ type: hdr.type, data: q.take(hdr.length).toString('hex') });
      hdr = null;
    }
  }
  return out;
}

describe('ByteQueue', function () {
  // q.skip(n) below is ByteQueue's own method (drop n bytes), not mocha's skip.
  // Chunks above 1 KiB are kept as they came; smaller ones are copied together (below).
  const big = (s: string): Buffer => Buffer.from(s.padEnd(2048, '.'));

  it('takes a view when the bytes sit in one chunk, a copy when they span chunks', function () {
    const a = big('abcdef');
    const q = new ByteQueue();
    q.push(a);
    q.push(big('ghij'));
    const view = q.take(2);
    assert.strictEqual(view.toString(), 'ab');
    assert.strictEqual(view.buffer, a.buffer, 'a take inside one chunk should not copy');
    q.skip(2044);
    const spanning = q.take(6);
    assert.strictEqual(spanning.toString(), '..ghij');
    assert.strictEqual(q.length, 2044);
  });

  it('takeChunks returns views over the received chunks, in order', function () {
    const parts = [big('012'), big('3456'), big('789')];
    const q = new ByteQueue();
    parts.forEach((p) => q.push(p));
    q.skip(1);
    const got = q.takeChunks(2047 + 2048 + 2);
    assert.deepStrictEqual(got.map((g) => g.length), [2047, 2048, 2]);
    assert.deepStrictEqual(got.map((g) => g.toString().replace(/\.+$/, '')), ['12', '3456', '78']);
    assert.ok(got.every((g, i) => g.buffer === parts[i]!.buffer), 'takeChunks copied');
    assert.strictEqual(q.take(1).toString(), '9');
  });

  it('small chunks are copied together: a byte at a time costs bytes, not a Buffer each', function () {
    const q = new ByteQueue();
    const data = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 31) & 0xff));
    const out: Buffer[] = [];
    for (let i = 0; i < data.length; i++) {
      q.push(data.subarray(i, i + 1));
      // Interleaved with takes, views and a large chunk now and then.
      if (i % 9973 === 0) out.push(q.take(q.length));
      if (i === 50_000) {
        out.push(...q.takeChunks(q.length));
        const b = Buffer.alloc(4096, 7);
        q.push(b);
        out.push(q.take(4096));
      }
    }
    assert.ok(q.chunkCount <= 8, `${q.chunkCount} chunks held for ${q.length} bytes`);
    out.push(...q.takeChunks(q.length));
    const all = Buffer.concat(out);
    const want = Buffer.concat([data.subarray(0, 50_001), Buffer.alloc(4096, 7), data.subarray(50_001)]);
    assert.ok(all.equals(want), 'bytes changed or reordered');
  });

  it('copyOut copies across chunks to an offset; skip drops across chunks', function () {
    const q = new ByteQueue();
    ['ab', 'cde', '', 'f', 'ghi'].forEach((s) => q.push(Buffer.from(s)));
    assert.strictEqual(q.length, 9);
    const t = Buffer.alloc(8, '.');
    q.copyOut(t, 2, 5);
    assert.strictEqual(t.toString(), '..abcde.');
    q.skip(2);
    assert.strictEqual(q.take(2).toString(), 'hi');
  });

  it('refuses to take more than it holds, and clear empties it', function () {
    const q = new ByteQueue();
    q.push(Buffer.from('abc'));
    assert.throws(() => q.take(4), RangeError);
    assert.throws(() => q.takeChunks(4), RangeError);
    assert.throws(() => q.copyOut(Buffer.alloc(4), 0, 4), RangeError);
    assert.throws(() => q.skip(4), RangeError);
    assert.strictEqual(q.length, 3, 'a refused take consumed bytes');
    q.clear();
    assert.strictEqual(q.length, 0);
    q.push(Buffer.from('x'));
    assert.strictEqual(q.take(1).toString(), 'x');
  });
});

describe('codec through ByteQueue, split at every boundary', function () {
  it('a request stream (headers and write payloads) parses the same however it is cut', function () {
    assert.deepStrictEqual(parseRequests([REQUESTS]), WANT_REQUESTS);
    let n = 0;
    for (const chunks of splits(REQUESTS)) {
      assert.deepStrictEqual(parseRequests(chunks), WANT_REQUESTS, `cut at ${chunks.map((c) => c.length).join('+')}`);
      n++;
    }
    assert.ok(n > REQUESTS.length * REQUESTS.length / 2);
  });

  it('an option reply stream parses the same however it is cut', function () {
    assert.deepStrictEqual(parseOptionReplies([OPTION_REPLIES]), WANT_OPTION_REPLIES);
    for (const chunks of splits(OPTION_REPLIES)) {
      assert.deepStrictEqual(parseOptionReplies(chunks), WANT_OPTION_REPLIES, `cut at ${chunks.map((c) => c.length).join('+')}`);
    }
  });
});
