// Bad input from raw sockets. A malformed stream may close that one connection; it must
// never take the server down, wedge it, or change the image without a valid write. After
// every case a fresh client is served correctly and the image is as before.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import { NbdClient } from '../../src/nbd/client';
import { cleanupAfterAll } from '../helpers/procs';
import { KiB, makeImage, MiB, sha256, tempDir } from '../helpers/images';
import { goData, MAGIC, option, RawConn, request, u32 } from '../helpers/raw-nbd';
import { serveImage, Served } from '../helpers/serve';

const SIZE = 4 * MiB;
const CANARY = 64 * KiB; // the last 64 KiB are where the health check writes
const EINVAL = 22;
const ENOSPC = 28;
const READ = 0;
const WRITE = 1;
const DISC = 2;

describe('server: hostile clients', function () {
  let srv!: Served;
  // Registered before the cleanup's hook so that it runs first, while the server lives.
  after(async function () {
    // Still a clean exit after all of it.
    if (srv !== undefined) assert.deepStrictEqual(await srv.stop(), { code: 0, signal: null });
  });
  const cleanup = cleanupAfterAll();
  let image = '';
  let baseline = '';
  const open: RawConn[] = [];

  const protectedHash = (): string => sha256(fs.readFileSync(image).subarray(0, SIZE - CANARY));

  async function raw(): Promise<RawConn> {
    const c = await RawConn.connect(srv.port);
    open.push(c);
    return c;
  }

  before(async function () {
    const dir = tempDir(cleanup);
    image = makeImage(dir, 'disk.img', SIZE, 'random');
    baseline = protectedHash();
    srv = await serveImage(cleanup, image, { name: 'disk' });
  });

  afterEach(async function () {
    for (const c of open.splice(0)) c.destroy();
    // The server process is alive and serves a new client correctly...
    assert.strictEqual(srv.child.done, false, `server died:\n${srv.child.stderr()}`);
    const c = await NbdClient.connect({ host: srv.host, port: srv.port, exportName: 'disk' });
    try {
      const data = randomBytes(CANARY);
      await c.write(SIZE - CANARY, data);
      assert.ok((await c.read(SIZE - CANARY, CANARY)).equals(data), 'health check read back wrong data');
      const start = await c.read(0, 4096);
      assert.ok(start.equals(fs.readFileSync(image).subarray(0, 4096)));
    } finally {
      await c.close();
    }
    // ...and nothing but the health check changed the image.
    assert.strictEqual(protectedHash(), baseline, 'the image changed');
  });

  describe('handshake', function () {
    it('a client that closes right away', async function () {
      (await raw()).destroy();
    });

    it('a truncated handshake: half the client flags, then EOF', async function () {
      const c = await raw();
      await c.greeting();
      c.write(Buffer.from([0, 0]));
      c.sock.end();
      await c.closed;
    });

    it('a truncated option: half an option header, then EOF', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      c.write(option(7, goData('disk')).subarray(0, 11));
      c.sock.end();
      await c.closed;
    });

    it('unknown client flags close the connection', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(0x80000003));
      c.write(option(7, goData('disk')));
      assert.strictEqual((await c.untilClosed()).length, 0, 'the server answered an option after bad flags');
    });

    it('a wrong option magic closes the connection without a reply', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      c.write(Buffer.concat([Buffer.from('IHAVEOPX'), u32(7), u32(0)]));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('an oversized option length closes the connection at once (no waiting for 4 GiB)', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      c.write(Buffer.concat([MAGIC.IHAVEOPT, u32(7), u32(0xfffffff0)]));
      c.write(Buffer.alloc(1024, 0x41)); // some of the promised bytes, then silence
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('GO with malformed data gets NBD_REP_ERR_INVALID and the session goes on', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      // Name length larger than the data.
      c.write(option(7, Buffer.concat([u32(100), Buffer.from('disk'), Buffer.from([0, 0])])));
      let r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type >>> 0], [7, 0x80000003]);
      // Info request count that does not match the length.
      c.write(option(6, Buffer.concat([goData('disk').subarray(0, 8), Buffer.from([0, 5])])));
      r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type >>> 0], [6, 0x80000003]);
      // Too short to hold a name length at all.
      c.write(option(7, Buffer.from([0, 0])));
      r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type >>> 0], [7, 0x80000003]);
      // LIST with data is invalid too.
      c.write(option(3, Buffer.from('junk')));
      r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type >>> 0], [3, 0x80000003]);
      // An unknown option: unsupported, not fatal.
      c.write(option(0x7777, Buffer.from('whatever')));
      r = await c.optionReply();
      assert.deepStrictEqual([r.option, r.type >>> 0], [0x7777, 0x80000001]);
      // Then a proper GO enters transmission.
      c.write(option(7, goData('disk')));
      r = await c.optionReply();
      assert.strictEqual(r.type, 3);
      assert.strictEqual(r.data.readBigUInt64BE(2), BigInt(SIZE));
      while ((r = await c.optionReply()).type !== 1) assert.strictEqual(r.type, 3);
      c.write(request(READ, { cookie: 9n, offset: 0, length: 512 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 9n });
      assert.ok((await c.read(512)).equals(fs.readFileSync(image).subarray(0, 512)));
    });

    it('EXPORT_NAME with an unknown name closes the connection (the spec has no error reply for it)', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      c.write(option(1, Buffer.from('nope')));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('transmission requests sent instead of options close the connection', async function () {
      const c = await raw();
      await c.greeting();
      c.write(u32(3));
      c.write(request(WRITE, { offset: 0, length: 512 }));
      c.write(Buffer.alloc(512, 0xee));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });
  });

  describe('transmission', function () {
    it('a request with a bad magic closes the connection', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(WRITE, { magic: 0x25609514, offset: 0, length: 512 }));
      c.write(Buffer.alloc(512, 0xee));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('unknown commands get EINVAL with the cookie echoed, and the connection lives on', async function () {
      const c = await raw();
      await c.handshake('disk');
      const cookies = [0xffffffff00000001n, 0x0123456789abcdefn, 0n, 0x8000000000000000n];
      const types = [42, 0xffff, 5 /* CACHE, not advertised */, 7 /* BLOCK_STATUS, not negotiated */];
      types.forEach((t, i) => c.write(request(t, { cookie: cookies[i], offset: 0, length: 4096 })));
      for (let i = 0; i < types.length; i++) {
        assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: EINVAL, cookie: cookies[i] });
      }
      c.write(request(READ, { cookie: 77n, offset: 1000, length: 100 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 77n });
      assert.ok((await c.read(100)).equals(fs.readFileSync(image).subarray(1000, 1100)));
    });

    it('FUA on every command is accepted (proto.md: existing clients set it on READ and FLUSH)', async function () {
      const c = await raw();
      const { flags } = await c.handshake('disk');
      assert.ok((flags & (1 << 3)) !== 0, 'NBD_FLAG_SEND_FUA advertised');
      const FUA = 1;
      const NO_HOLE = 2;
      const at = SIZE - CANARY;
      const reqs = [
        request(READ, { cookie: 0n, flags: FUA, offset: 4096, length: 512 }),
        request(3 /* FLUSH */, { cookie: 1n, flags: FUA }),
        request(4 /* TRIM */, { cookie: 2n, flags: FUA, offset: at, length: 4096 }),
        request(6 /* WRITE_ZEROES */, { cookie: 3n, flags: FUA, offset: at, length: 4096 }),
        request(6, { cookie: 4n, flags: FUA | NO_HOLE, offset: at, length: 4096 }),
        request(WRITE, { cookie: 5n, flags: FUA, offset: at, length: 8 }), Buffer.alloc(8, 0x77),
      ];
      c.write(Buffer.concat(reqs));
      const disk = fs.readFileSync(image);
      for (let i = 0; i < 6; i++) {
        const r = await c.simpleReply();
        assert.strictEqual(r.error, 0, `cookie ${r.cookie}: error ${r.error}`);
        if (r.cookie === 0n) assert.ok((await c.read(512)).equals(disk.subarray(4096, 4608)));
      }
    });

    it('a refused write has its payload skipped, even one that looks like a request', async function () {
      const c = await raw();
      await c.handshake('disk');
      // Past the end: ENOSPC. Its payload is a well-formed WRITE to offset 0 plus data; a
      // server that parsed it as a request would overwrite the start of the image.
      const evil = Buffer.concat([request(WRITE, { cookie: 666n, offset: 0, length: 100 }), Buffer.alloc(100, 0x66)]);
      c.write(request(WRITE, { cookie: 1n, offset: SIZE - 64, length: evil.length }));
      c.write(evil);
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: ENOSPC, cookie: 1n });
      // Same with a flag WRITE does not take (EINVAL).
      c.write(request(WRITE, { cookie: 2n, flags: 2 /* NO_HOLE */, offset: 0, length: evil.length }));
      c.write(evil);
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: EINVAL, cookie: 2n });
      c.write(request(READ, { cookie: 3n, offset: 0, length: 100 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 3n });
      assert.ok((await c.read(100)).equals(fs.readFileSync(image).subarray(0, 100)));
    });

    it('a write longer than the maximum payload closes the connection; nothing is written', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(WRITE, { offset: 0, length: 32 * MiB + 1 }));
      c.write(Buffer.alloc(64 * KiB, 0xee));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('a write claiming 4 GiB closes the connection; nothing is written', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(WRITE, { offset: 0, length: 0xffffffff }));
      c.write(Buffer.alloc(4096, 0xee));
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('a read longer than the maximum payload is refused and the connection lives on', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(READ, { cookie: 5n, offset: 0, length: 0xffffffff }));
      const r = await c.simpleReply();
      assert.strictEqual(r.cookie, 5n);
      assert.notStrictEqual(r.error, 0);
      c.write(request(READ, { cookie: 6n, offset: 0, length: 8 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 6n });
      assert.ok((await c.read(8)).equals(fs.readFileSync(image).subarray(0, 8)));
    });

    it('zero-length requests get a reply (success or EINVAL) and change nothing', async function () {
      const c = await raw();
      await c.handshake('disk');
      const types = [READ, WRITE, 4 /* TRIM */, 6 /* WRITE_ZEROES */];
      types.forEach((t, i) => c.write(request(t, { cookie: BigInt(100 + i), offset: 4096, length: 0 })));
      const seen = new Set<bigint>();
      for (let i = 0; i < types.length; i++) {
        const r = await c.simpleReply();
        assert.strictEqual(r.magic, MAGIC.SIMPLE_REPLY);
        assert.ok(r.error === 0 || r.error === EINVAL, `error ${r.error} for cookie ${r.cookie}`);
        assert.ok(r.cookie >= 100n && r.cookie < 104n && !seen.has(r.cookie));
        seen.add(r.cookie);
      }
      c.write(request(READ, { cookie: 8n, offset: 4090, length: 12 }));
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 8n });
      assert.ok((await c.read(12)).equals(fs.readFileSync(image).subarray(4090, 4102)));
    });

    it('a connection cut after half a request header', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(WRITE, { offset: 0, length: 4096 }).subarray(0, 14));
      c.sock.end();
      await c.closed;
    });

    it('a connection cut after a write header and half its payload: nothing is written', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(request(WRITE, { offset: 4096, length: 64 * KiB }));
      c.write(Buffer.alloc(32 * KiB, 0xee));
      c.sock.end();
      await c.closed;
    });

    it('a connection reset with requests in flight', async function () {
      const c = await raw();
      await c.handshake('disk');
      for (let i = 0; i < 64; i++) c.write(request(READ, { cookie: BigInt(i), offset: i * 4096, length: 64 * KiB }));
      c.sock.resetAndDestroy();
      await c.closed;
    });

    it('after DISC the server closes and acts on nothing more', async function () {
      const c = await raw();
      await c.handshake('disk');
      c.write(Buffer.concat([
        request(DISC, { cookie: 1n }),
        request(WRITE, { cookie: 2n, offset: 0, length: 512 }), Buffer.alloc(512, 0xdd),
      ]));
      assert.strictEqual((await c.untilClosed()).length, 0, 'a reply after DISC');
    });

    it('a burst of requests in one segment, and one request split into single bytes', async function () {
      const c = await raw();
      await c.handshake('disk');
      const burst = Buffer.concat(Array.from({ length: 100 }, (_, i) => request(READ, { cookie: BigInt(1000 + i), offset: i * 512, length: 512 })));
      c.write(burst);
      const disk = fs.readFileSync(image);
      const seen = new Set<bigint>();
      for (let i = 0; i < 100; i++) {
        const r = await c.simpleReply();
        assert.strictEqual(r.error, 0);
        const k = Number(r.cookie - 1000n);
        assert.ok(k >= 0 && k < 100 && !seen.has(r.cookie), `unexpected cookie ${r.cookie}`);
        seen.add(r.cookie);
        assert.ok((await c.read(512)).equals(disk.subarray(k * 512, k * 512 + 512)), `data for cookie ${r.cookie}`);
      }
      const one = request(READ, { cookie: 0xabcdefn, offset: 12345, length: 33 });
      for (const byte of one) {
        c.write(Buffer.from([byte]));
        await new Promise((r) => setImmediate(r));
      }
      assert.deepStrictEqual(await c.simpleReply(), { magic: MAGIC.SIMPLE_REPLY, error: 0, cookie: 0xabcdefn });
      assert.ok((await c.read(33)).equals(disk.subarray(12345, 12345 + 33)));
    });
  });
});
