// The server's stream parser (ServerConnection over any Duplex) fed one whole session,
// hand-built, cut at every byte boundary and also one byte per chunk: the replies must be
// the same whatever the cut. The store here is an in-memory Store: this is about framing,
// which TCP alone cannot be made to split on demand.
import * as assert from 'assert';
import { Duplex } from 'stream';
import { ServerConnection } from '../../src/server/connection';
import { Done, Store } from '../../src/server/store/store';
import { silentLogger } from '../../src/log';
import { goData, MAGIC, option, request, u32 } from '../helpers/raw-nbd';

const SIZE = 64 * 1024;

class MemoryStore implements Store {
  readonly readOnly = false;
  readonly canTrim = true;
  readonly canZero = true;
  readonly data: Buffer;
  constructor(readonly size: number) {
    this.data = Buffer.alloc(size);
    for (let i = 0; i < size; i++) this.data[i] = (i * 31) & 0xff;
  }
  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void {
    this.data.copy(target, targetOffset, offset, offset + length);
    setImmediate(done, null);
  }
  write(chunks: Buffer[], offset: number, _fua: boolean, done: Done): void {
    Buffer.concat(chunks).copy(this.data, offset);
    setImmediate(done, null);
  }
  flush(done: Done): void { setImmediate(done, null); }
  trim(offset: number, length: number, _fua: boolean, done: Done): void { this.writeZeroes(offset, length, false, false, done); }
  writeZeroes(offset: number, length: number, _noHole: boolean, _fua: boolean, done: Done): void {
    this.data.fill(0, offset, offset + length);
    setImmediate(done, null);
  }
  async close(): Promise<void> { /* nothing to release */ }
}

// One session: client flags, an unknown option, GO "disk", then WRITE "hello" at 100,
// READ 8 at 98, WRITE_ZEROES 2 at 101, READ 6 at 99, a READ with a flag not negotiated, FLUSH, DISC.
const SESSION = Buffer.concat([
  u32(3),
  option(0x4242, Buffer.from('xyz')),
  option(7, goData('disk')),
  request(1, { cookie: 1n, offset: 100, length: 5 }), Buffer.from('hello'),
  request(0, { cookie: 2n, offset: 98, length: 8 }),
  request(6, { cookie: 3n, offset: 101, length: 2, flags: 2 }),
  request(0, { cookie: 4n, offset: 99, length: 6 }),
  request(0, { cookie: 5n, offset: 0, length: 1, flags: 4 }),
  request(3, { cookie: 6n }),
  request(2, { cookie: 7n }),
]);

interface Outcome {
  options: string[];
  replies: Map<bigint, { error: number; data: string }>;
}

function initial(off: number, len: number): Buffer {
  return Buffer.from(Array.from({ length: len }, (_, i) => ((off + i) * 31) & 0xff));
}

/** Runs the session through a fresh ServerConnection in the given chunks; parses its output. */
async function runSession(chunks: Buffer[]): Promise<Outcome> {
  const out: Buffer[] = [];
  const sock = new Duplex({
    read() { /* input is pushed below */ },
    write(chunk: Buffer, _enc, cb) {
      out.push(chunk);
      cb();
    },
  });
  const store = new MemoryStore(SIZE);
  const conn = new ServerConnection(sock, {
    lookup: (name) => (name === 'disk' ? { name, store } : undefined),
    list: () => [{ name: 'disk', store }],
    log: silentLogger,
  });
  for (const c of chunks) {
    sock.push(c);
    await new Promise((r) => setImmediate(r));
  }
  sock.push(null);
  await conn.closed;
  return parseOutput(Buffer.concat(out));
}

function parseOutput(b: Buffer): Outcome {
  let p = 0;
  const take = (n: number): Buffer => {
    assert.ok(p + n <= b.length, `output ends early at ${p}, wanted ${n} more`);
    const s = b.subarray(p, p + n);
    p += n;
    return s;
  };
  assert.ok(take(18).subarray(0, 16).equals(Buffer.concat([MAGIC.NBDMAGIC, MAGIC.IHAVEOPT])));
  const options: string[] = [];
  for (;;) {
    const h = take(20);
    assert.ok(h.subarray(0, 8).equals(MAGIC.OPTION_REPLY));
    const type = h.readUInt32BE(12);
    const data = take(h.readUInt32BE(16));
    options.push(`${h.readUInt32BE(8)}:${type.toString(16)}:${type === 3 ? data.readUInt16BE(0) : ''}`);
    if (h.readUInt32BE(8) === 7 && type === 1) break;
  }
  const readLen = new Map<bigint, number>([[2n, 8], [4n, 6], [5n, 1]]);
  const replies = new Map<bigint, { error: number; data: string }>();
  while (p < b.length) {
    const h = take(16);
    assert.strictEqual(h.readUInt32BE(0), MAGIC.SIMPLE_REPLY);
    const error = h.readUInt32BE(4);
    const cookie = h.readBigUInt64BE(8);
    assert.ok(!replies.has(cookie), `two replies for cookie ${cookie}`);
    const n = error === 0 ? readLen.get(cookie) ?? 0 : 0;
    replies.set(cookie, { error, data: take(n).toString('hex') });
  }
  return { options, replies };
}

describe('server connection: one session split at every boundary', function () {
  // Worked out by hand. The memory store applies a write when it is dispatched, and the
  // parser dispatches in stream order, so even requests in flight together give one answer.
  const hex = (...parts: Buffer[]): string => Buffer.concat(parts).toString('hex');
  const want: Outcome = {
    // unknown option: ERR_UNSUP; GO: INFO_EXPORT then ACK
    options: ['16962:80000001:', '7:3:0', '7:1:'],
    replies: new Map([
      [1n, { error: 0, data: '' }],
      [2n, { error: 0, data: hex(initial(98, 2), Buffer.from('hello'), initial(105, 1)) }],
      [3n, { error: 0, data: '' }],
      [4n, { error: 0, data: hex(initial(99, 1), Buffer.from('h'), Buffer.alloc(2), Buffer.from('lo')) }],
      [5n, { error: 22, data: '' }], // NBD_CMD_FLAG_DF without NBD_FLAG_SEND_DF
      [6n, { error: 0, data: '' }],
      // DISC (7) has no reply
    ]),
  };

  it('whole', async function () {
    assert.deepStrictEqual(await runSession([SESSION]), want);
  });

  it('cut once at every offset', async function () {
    for (let i = 0; i <= SESSION.length; i++) {
      const got = await runSession([SESSION.subarray(0, i), SESSION.subarray(i)]);
      assert.deepStrictEqual(got, want, `cut at ${i}`);
    }
  });

  it('cut twice, over a grid of offset pairs', async function () {
    for (let i = 0; i <= SESSION.length; i += 7) {
      for (let j = i; j <= SESSION.length; j += 5) {
        const got = await runSession([SESSION.subarray(0, i), SESSION.subarray(i, j), SESSION.subarray(j)]);
        assert.deepStrictEqual(got, want, `cut at ${i} and ${j}`);
      }
    }
  });

  it('one byte per chunk', async function () {
    assert.deepStrictEqual(await runSession(Array.from(SESSION, (x) => Buffer.from([x]))), want);
  });
});
