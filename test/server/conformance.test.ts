// proto.md's server requirements that the other suites do not reach, one test each (see
// test/CONFORMANCE.md for the whole table). The server runs in this process on real TCP
// with an in-memory store that records what it was asked and can fail or hold a request,
// so ordering rules (FLUSH, FUA, DISC) are checked against what the store saw.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { Done, Store } from '../../src/server/store/store';
import { NbdServer } from '../../src/server/server';
import { makeImage, tempDir } from '../helpers/images';
import { freePort, HOST, waitForPort } from '../helpers/net';
import { requirePeer } from '../helpers/peers';
import { cleanupAfterEach, runOk, spawnChild } from '../helpers/procs';
import { goData, MAGIC, option, RawConn, request, u32 } from '../helpers/raw-nbd';
import { cliPath } from '../helpers/serve';
import { repoRoot } from '../helpers/vm';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const READ = 0;
const WRITE = 1;
const DISC = 2;
const FLUSH = 3;
const TRIM = 4;
const WRITE_ZEROES = 6;
const FUA = 1;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 };
const REP = { ACK: 1, INFO: 3, ERR_UNSUP: 0x80000001, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007 };
const INFO = { EXPORT: 0, NAME: 1, BLOCK_SIZE: 3 };
const TFLAG = { HAS_FLAGS: 1, SEND_DF: 1 << 7, SEND_CACHE: 1 << 10, SEND_FAST_ZERO: 1 << 11 };

interface Call {
  op: 'read' | 'write' | 'flush' | 'trim' | 'zero';
  offset: number;
  length: number;
  fua: boolean;
  /** Set once the store has called done. */
  done: boolean;
}

/** Memory, with a record of calls; `fail` makes matching calls fail, `hold` defers them. */
class ScriptStore implements Store {
  readonly size = SIZE;
  readonly readOnly = false;
  readonly canTrim = true;
  readonly canZero = true;
  readonly mem = Buffer.alloc(SIZE);
  readonly calls: Call[] = [];
  fail: ((c: Call) => NodeJS.ErrnoException | null) | null = null;
  hold: ((c: Call) => boolean) | null = null;
  private held: (() => void)[] = [];

  private run(c: Call, act: () => void, done: Done): void {
    this.calls.push(c);
    const finish = (): void => {
      const err = this.fail?.(c) ?? null;
      if (!err) act();
      c.done = true;
      done(err);
    };
    if (this.hold?.(c)) this.held.push(finish);
    else setImmediate(finish);
  }

  release(): void {
    for (const f of this.held.splice(0)) f();
  }

  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void {
    this.run({ op: 'read', offset, length, fua: false, done: false }, () => this.mem.copy(target, targetOffset, offset, offset + length), done);
  }

  write(chunks: Buffer[], offset: number, fua: boolean, done: Done): void {
    const data = Buffer.concat(chunks);
    this.run({ op: 'write', offset, length: data.length, fua, done: false }, () => data.copy(this.mem, offset), done);
  }

  flush(done: Done): void {
    this.run({ op: 'flush', offset: 0, length: 0, fua: false, done: false }, () => undefined, done);
  }

  trim(offset: number, length: number, fua: boolean, done: Done): void {
    this.run({ op: 'trim', offset, length, fua, done: false }, () => this.mem.fill(0, offset, offset + length), done);
  }

  writeZeroes(offset: number, length: number, _noHole: boolean, fua: boolean, done: Done): void {
    this.run({ op: 'zero', offset, length, fua, done: false }, () => this.mem.fill(0, offset, offset + length), done);
  }

  async close(): Promise<void> { /* memory */ }
}

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(code), { code });
}

describe('server: proto.md conformance', function () {
  let store: ScriptStore;
  let server: NbdServer;
  let port = 0;
  const open: RawConn[] = [];

  async function conn(): Promise<RawConn> {
    const c = await RawConn.connect(port);
    open.push(c);
    return c;
  }

  async function transmission(): Promise<RawConn> {
    const c = await conn();
    await c.handshake('disk');
    return c;
  }

  beforeEach(async function () {
    store = new ScriptStore();
    server = new NbdServer({ exports: [{ name: 'disk', store }] });
    port = (await server.listen(HOST, 0)).port;
  });

  afterEach(async function () {
    for (const c of open.splice(0)) c.destroy();
    store.release();
    await server.close();
  });

  describe('handshake', function () {
    it('the greeting sets NBD_FLAG_FIXED_NEWSTYLE and no flag but NBD_FLAG_NO_ZEROES', async function () {
      const c = await conn();
      assert.strictEqual(await c.greeting(), 0b11);
    });

    it('EXPORT_NAME: 124 zero bytes after size and flags, none with NBD_FLAG_C_NO_ZEROES', async function () {
      for (const [clientFlags, want] of [[1, 134], [3, 10]] as const) {
        const c = await conn();
        await c.greeting();
        c.write(u32(clientFlags));
        c.write(option(OPT.EXPORT_NAME, Buffer.from('disk')));
        const reply = await c.read(want);
        assert.strictEqual(reply.readBigUInt64BE(0), BigInt(SIZE));
        if (want === 134) assert.ok(reply.subarray(10).equals(Buffer.alloc(124)));
        // Transmission follows directly: a request is answered right after.
        c.write(request(READ, { cookie: 5n, offset: 0, length: 8 }));
        assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 5n });
      }
    });

    it('GO and INFO: NBD_INFO_EXPORT before the ACK, unknown info requests ignored, the same answer to both', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      const replies = async (): Promise<Buffer[]> => {
        const out: Buffer[] = [];
        for (;;) {
          const r = await c.optionReply();
          if (r.type === REP.ACK) return out;
          assert.strictEqual(r.type, REP.INFO);
          out.push(r.data);
        }
      };
      const asks = [0x7777, INFO.BLOCK_SIZE, INFO.NAME];
      c.write(option(OPT.INFO, goData('disk', asks)));
      const info = await replies();
      c.write(option(OPT.GO, goData('disk', asks)));
      const go = await replies();
      assert.deepStrictEqual(go.map((b) => b.toString('hex')), info.map((b) => b.toString('hex')));
      const types = go.map((b) => b.readUInt16BE(0));
      const exp = go.find((b) => b.readUInt16BE(0) === INFO.EXPORT) as Buffer;
      assert.strictEqual(exp.length, 12);
      const tflags = exp.readUInt16BE(10);
      assert.ok((tflags & TFLAG.HAS_FLAGS) !== 0, 'NBD_FLAG_HAS_FLAGS MUST always be 1');
      // Features not offered are not advertised: DF needs structured replies, FAST_ZERO and
      // CACHE are not implemented.
      assert.strictEqual(tflags & (TFLAG.SEND_DF | TFLAG.SEND_CACHE | TFLAG.SEND_FAST_ZERO), 0);
      assert.ok(!types.includes(0x7777));
      assert.strictEqual(new Set(types).size, types.length, 'an information type sent twice');
      const bs = go.find((b) => b.readUInt16BE(0) === INFO.BLOCK_SIZE) as Buffer;
      assert.strictEqual(bs.length, 14);
      const [min, pref, max] = [bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)];
      const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
      // proto.md "Size constraints".
      assert.ok(pow2(min) && min <= 65536, `minimum block ${min}`);
      assert.ok(pow2(pref) && pref >= Math.max(min, 512), `preferred block ${pref}`);
      assert.ok(max >= pref && max >= 2 ** 25, `maximum payload ${max}`);
      // No padding after the ACK: the next bytes are a reply.
      c.write(request(READ, { cookie: 6n, offset: 0, length: 8 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 6n });
    });

    it('GO for an unknown export: NBD_REP_ERR_UNKNOWN with no NBD_REP_INFO before it', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.GO, goData('nope', [INFO.BLOCK_SIZE])));
      assert.strictEqual((await c.optionReply()).type >>> 0, REP.ERR_UNKNOWN);
    });

    it('structured replies and meta contexts are refused with NBD_REP_ERR_UNSUP; reads then get simple replies', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      for (const opt of [OPT.STRUCTURED_REPLY, OPT.LIST_META_CONTEXT, OPT.SET_META_CONTEXT]) {
        c.write(option(opt));
        const r = await c.optionReply();
        assert.deepStrictEqual([r.option, r.type >>> 0], [opt, REP.ERR_UNSUP]);
      }
      c.write(option(OPT.GO, goData('disk')));
      while ((await c.optionReply()).type !== REP.ACK);
      c.write(request(READ, { cookie: 7n, offset: 0, length: 4 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 7n });
    });

    it('ABORT with data: the data is ignored, NBD_REP_ACK, then the server closes', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.ABORT, Buffer.from('unexpected')));
      const r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type], [OPT.ABORT, REP.ACK]);
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('a client that sends ABORT and closes without waiting for the reply', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.ABORT));
      c.destroy();
      await c.closed;
      while (server.connections !== 0) await new Promise((r) => setImmediate(r));
      const d = await transmission();
      d.write(request(READ, { cookie: 1n, offset: 0, length: 8 }));
      assert.strictEqual((await d.simpleReply()).error, 0);
    });

    it('shutting down during option haggling: options get NBD_REP_ERR_SHUTDOWN, ABORT its ACK', async function () {
      const c = await conn();
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.LIST));
      while ((await c.optionReply()).type !== REP.ACK);
      const closing = server.close();
      for (const opt of [OPT.LIST, OPT.GO]) {
        c.write(option(opt, opt === OPT.GO ? goData('disk') : undefined));
        const r = await c.optionReply();
        assert.deepStrictEqual([r.option, r.type >>> 0], [opt, REP.ERR_SHUTDOWN]);
      }
      c.write(option(OPT.ABORT));
      assert.strictEqual((await c.optionReply()).type, REP.ACK);
      await c.closed;
      await closing;
    });
  });

  describe('transmission', function () {
    it('FLUSH is answered only after the store flushed, which it does after the writes answered before it', async function () {
      const c = await transmission();
      c.write(Buffer.concat([request(WRITE, { cookie: 1n, offset: 0, length: 4096 }), Buffer.alloc(4096, 1)]));
      assert.strictEqual((await c.simpleReply()).cookie, 1n);
      store.hold = (call) => call.op === 'flush';
      c.write(request(FLUSH, { cookie: 2n }));
      setTimeout(() => store.release(), 20); // when is irrelevant: the order is what is checked
      const r = await c.simpleReply();
      assert.deepStrictEqual([r.cookie, r.error], [2n, 0]);
      const flush = store.calls.findIndex((x) => x.op === 'flush');
      const write = store.calls.findIndex((x) => x.op === 'write');
      assert.ok(write >= 0 && write < flush && store.calls[flush]?.done, 'replied before the store flushed');
    });

    it('a FUA write, trim or zero reaches the store with FUA and is answered only once the store is done', async function () {
      const c = await transmission();
      store.hold = () => true;
      c.write(Buffer.concat([
        request(WRITE, { cookie: 1n, flags: FUA, offset: 0, length: 512 }), Buffer.alloc(512, 9),
        request(TRIM, { cookie: 2n, flags: FUA, offset: 4096, length: 4096 }),
        request(WRITE_ZEROES, { cookie: 3n, flags: FUA, offset: 8192, length: 4096 }),
      ]));
      setTimeout(() => store.release(), 20);
      for (let i = 0; i < 3; i++) {
        const r = await c.simpleReply();
        assert.strictEqual(r.error, 0);
        const call = store.calls[Number(r.cookie) - 1];
        assert.ok(call?.fua && call.done, `reply ${r.cookie} before a durable store call`);
      }
    });

    it('DISC: the requests before it are all answered, then the connection closes', async function () {
      const c = await transmission();
      store.hold = () => true;
      const writes = [1n, 2n, 3n].map((k) => Buffer.concat([
        request(WRITE, { cookie: k, offset: Number(k) * 4096, length: 4096 }), Buffer.alloc(4096, Number(k)),
      ]));
      c.write(Buffer.concat([...writes, request(DISC, { cookie: 9n })]));
      setTimeout(() => store.release(), 20);
      const rest = await c.untilClosed();
      assert.strictEqual(rest.length, 3 * 16, 'three replies, nothing for DISC');
      const cookies = [0, 16, 32].map((o) => rest.readBigUInt64BE(o + 8)).sort();
      assert.deepStrictEqual(cookies, [1n, 2n, 3n]);
      for (const k of [1, 2, 3]) assert.ok(store.mem.subarray(k * 4096, k * 4096 + 4096).equals(Buffer.alloc(4096, k)));
    });

    it('more replies without data in one turn than the server gathers at once: each is sent once, with its cookie and error', async function () {
      // The server gathers a turn's data-less replies, 256 to a buffer: the 350 refusals made
      // while one chunk is parsed overflow it; then 250 held flushes are let go at once.
      const c = await transmission();
      store.hold = () => true;
      const flushes = Array.from({ length: 250 }, (_, i) => request(FLUSH, { cookie: BigInt(1000 + i) }));
      const refused = Array.from({ length: 350 }, (_, i) => request(READ, { cookie: BigInt(5000 + i), offset: SIZE, length: 512 }));
      c.write(Buffer.concat([...flushes, ...refused]));
      const got = new Map<bigint, number>();
      for (let i = 0; i < 350; i++) {
        const r = await c.simpleReply();
        got.set(r.cookie, r.error);
      }
      while (store.calls.length < 250) await new Promise((r) => setImmediate(r));
      store.release();
      for (let i = 0; i < 250; i++) {
        const r = await c.simpleReply();
        assert.ok(!got.has(r.cookie), `cookie ${r.cookie} answered twice`);
        got.set(r.cookie, r.error);
      }
      for (let i = 0; i < 250; i++) assert.strictEqual(got.get(BigInt(1000 + i)), 0);
      for (let i = 0; i < 350; i++) assert.strictEqual(got.get(BigInt(5000 + i)), 22, 'EINVAL past the end');
    });

    it('a store read error: an error reply with no payload, and the connection goes on', async function () {
      const c = await transmission();
      store.mem.fill(0x5a, 0, 8192);
      store.fail = (call) => (call.op === 'read' && call.offset === 0 ? errno('EIO') : null);
      c.write(request(READ, { cookie: 1n, offset: 0, length: 4096 }));
      c.write(request(READ, { cookie: 2n, offset: 4096, length: 4096 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 5, cookie: 1n });
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 2n });
      assert.ok((await c.read(4096)).equals(Buffer.alloc(4096, 0x5a)));
    });

    it('store write errors: EDQUOT and EFBIG are answered as NBD_ENOSPC, EIO as NBD_EIO', async function () {
      const c = await transmission();
      const codes: Record<number, string> = { 0: 'EDQUOT', 4096: 'EFBIG', 8192: 'EIO' };
      store.fail = (call) => (call.op === 'write' && codes[call.offset] ? errno(codes[call.offset] as string) : null);
      for (const off of [0, 4096, 8192]) c.write(Buffer.concat([request(WRITE, { cookie: BigInt(off), offset: off, length: 512 }), Buffer.alloc(512)]));
      const got = new Map<bigint, number>();
      for (let i = 0; i < 3; i++) {
        const r = await c.simpleReply();
        got.set(r.cookie, r.error);
      }
      assert.deepStrictEqual([got.get(0n), got.get(4096n), got.get(8192n)], [28, 28, 5]);
    });

    it('TRIM and WRITE_ZEROES longer than the maximum payload are served, not disconnected', async function () {
      const c = await transmission();
      store.mem.fill(1);
      c.write(request(WRITE_ZEROES, { cookie: 1n, offset: 0, length: 48 * MiB }));
      c.write(request(TRIM, { cookie: 2n, offset: 48 * MiB, length: 16 * MiB }));
      for (let i = 0; i < 2; i++) assert.strictEqual((await c.simpleReply()).error, 0);
      assert.ok(store.mem.subarray(0, 64 * MiB).equals(Buffer.alloc(64 * MiB)));
    });

    it('a write of exactly 2^25 bytes is served (not taken for a denial of service)', async function () {
      const c = await transmission();
      const data = Buffer.alloc(32 * MiB, 0x3c);
      c.write(Buffer.concat([request(WRITE, { cookie: 1n, offset: 0, length: data.length }), data]));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 1n });
      assert.ok(store.mem.subarray(0, data.length).equals(data));
    });

    it('shutting down: requests in flight are answered, later ones get NBD_ESHUTDOWN', async function () {
      const c = await transmission();
      store.hold = (call) => call.op === 'write';
      c.write(Buffer.concat([request(WRITE, { cookie: 1n, offset: 0, length: 512 }), Buffer.alloc(512, 7)]));
      while (store.calls.length === 0) await new Promise((r) => setImmediate(r));
      const closing = server.close();
      c.write(request(READ, { cookie: 2n, offset: 0, length: 512 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 108, cookie: 2n });
      store.release();
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 1n });
      assert.strictEqual((await c.untilClosed()).length, 0);
      await closing;
      assert.ok(store.mem.subarray(0, 512).equals(Buffer.alloc(512, 7)));
    });

    it('NBD_FLAG_CAN_MULTI_CONN: a write answered on one connection is read back on another', async function () {
      const a = await transmission();
      const b = await transmission();
      a.write(Buffer.concat([request(WRITE, { cookie: 1n, offset: 12345, length: 100 }), Buffer.alloc(100, 0x42)]));
      assert.strictEqual((await a.simpleReply()).error, 0);
      b.write(request(READ, { cookie: 2n, offset: 12345, length: 100 }));
      assert.strictEqual((await b.simpleReply()).error, 0);
      assert.ok((await b.read(100)).equals(Buffer.alloc(100, 0x42)));
    });
  });
});

describe('server and client: TCP_NODELAY (proto.md "Protocol phases": both SHOULD disable Nagle)', function () {
  const cleanup = cleanupAfterEach();

  it('is set on the sockets serve accepts and on the client\'s, as strace sees it', async function () {
    requirePeer('strace');
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', MiB, 'zero');
    const port = await freePort();
    const serverTrace = path.join(dir, 'server.trace');
    const st = cleanup.child(spawnChild('strace', ['-f', '-qq', '-e', 'trace=setsockopt', '-o', serverTrace,
      process.execPath, cliPath(), 'serve', image, '--listen', `${HOST}:${port}`]));
    await waitForPort(port, st, 'serve under strace');
    const clientTrace = path.join(dir, 'client.trace');
    const client = path.join(repoRoot(), 'dist', 'src', 'nbd', 'client.js');
    await runOk('strace', ['-f', '-qq', '-e', 'trace=setsockopt', '-o', clientTrace, process.execPath, '-e',
      `require(${JSON.stringify(client)}).NbdClient.connect({ host: '${HOST}', port: ${port} }).then((c) => c.read(0, 512).then(() => c.close()))`]);
    // The server is strace's child: SIGTERM goes to it, and strace ends with it.
    const serve = Number(fs.readFileSync(`/proc/${st.pid}/task/${st.pid}/children`, 'utf8').trim().split(' ')[0]);
    process.kill(serve, 'SIGTERM');
    await st.exited;
    const nodelay = /setsockopt\(\d+, SOL_TCP, TCP_NODELAY, \[1\], 4\) = 0/;
    assert.match(fs.readFileSync(serverTrace, 'utf8'), nodelay);
    assert.match(fs.readFileSync(clientTrace, 'utf8'), nodelay);
  });
});
