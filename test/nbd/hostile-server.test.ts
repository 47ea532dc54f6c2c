// Our client against a scripted server (a net.Server in this process) that shakes hands
// correctly, or almost, and then misbehaves. The client must fail the affected requests
// with a connection or protocol error (by `code`), never resolve a read with wrong data,
// and never throw out of an event handler (mocha would report that as an uncaught error).
import * as assert from 'assert';
import * as net from 'net';
import { randomBytes } from 'crypto';
import { NbdClient } from '../../src/nbd/client';
import type { TransportFactory } from '../../src/nbd/transport';
import { TRANSPORTS } from '../helpers/transports';
import { NbdError, NbdProtocolError, NbdRequestError } from '../../src/nbd/errors';
import { Cleanup, cleanupAfterEach } from '../helpers/procs';
import { HOST, listen } from '../helpers/net';
import { MAGIC, RawConn, u16, u32, u64 } from '../helpers/raw-nbd';

const SIZE = 1 << 20;
// HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES
const FLAGS = 0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040;

interface Req { type: number; flags: number; cookie: Buffer; offset: number; length: number; payload?: Buffer }

type Script = (c: RawConn) => Promise<void>;

/** A server running `script` on every connection; script failures are kept for the test. */
async function fakeServer(cleanup: Cleanup, script: Script): Promise<{ port: number; errors: unknown[] }> {
  const errors: unknown[] = [];
  const conns = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    script(RawConn.from(sock)).catch((err: unknown) => errors.push(err));
  });
  const port = await listen(server);
  cleanup.add(() => new Promise<void>((r) => {
    for (const s of conns) s.destroy();
    server.close(() => r());
  }));
  return { port, errors };
}

function greeting(flags = 3): Buffer {
  return Buffer.concat([MAGIC.NBDMAGIC, MAGIC.IHAVEOPT, u16(flags)]);
}

function optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0), magic = MAGIC.OPTION_REPLY): Buffer {
  return Buffer.concat([magic, u32(opt), u32(type), u32(data.length), data]);
}

function infoExport(size = SIZE, flags = FLAGS): Buffer {
  return Buffer.concat([u16(0), u64(size), u16(flags)]);
}

/** Reads the client flags and one option; returns the option code. */
async function readOption(c: RawConn, withFlags = true): Promise<{ opt: number; data: Buffer }> {
  if (withFlags) await c.read(4);
  const h = await c.read(16);
  assert.ok(h.subarray(0, 8).equals(MAGIC.IHAVEOPT));
  return { opt: h.readUInt32BE(8), data: await c.read(h.readUInt32BE(12)) };
}

/** A correct fixed-newstyle handshake answering GO. */
async function handshake(c: RawConn): Promise<void> {
  c.write(greeting());
  const { opt } = await readOption(c);
  assert.strictEqual(opt, 7);
  c.write(Buffer.concat([optReply(7, 3, infoExport()), optReply(7, 1)]));
}

async function readRequest(c: RawConn): Promise<Req> {
  const h = await c.read(28);
  assert.strictEqual(h.readUInt32BE(0), MAGIC.REQUEST);
  const r: Req = { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: Buffer.from(h.subarray(8, 16)),
    offset: Number(h.readBigUInt64BE(16)), length: h.readUInt32BE(24) };
  if (r.type === 1) r.payload = await c.read(r.length);
  return r;
}

function reply(cookie: Buffer, error = 0, magic = MAGIC.SIMPLE_REPLY): Buffer {
  return Buffer.concat([u32(magic), u32(error), cookie]);
}

/** The data a well-behaved fake returns for a read: a function of the offset. */
function dataAt(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (offset + i) * 7 & 0xff;
  return b;
}

const isConnErr = (e: NbdError): boolean => e.code === 'NBD_CONNECTION';
const isProtoConnErr = (e: NbdError): boolean =>
  e.code === 'NBD_CONNECTION' && (e.cause as NbdError | undefined)?.code === 'NBD_PROTOCOL';

async function connect(port: number, opts: { handshakeTimeoutMs?: number; exportName?: string; makeTransport?: TransportFactory } = {}): Promise<NbdClient> {
  return NbdClient.connect({ host: HOST, port, ...opts });
}

describe('client against a misbehaving server', function () {
  const cleanup = cleanupAfterEach();

  async function client(makeTransport: TransportFactory | undefined, script: Script): Promise<NbdClient> {
    const { port } = await fakeServer(cleanup, script);
    const c = await connect(port, { makeTransport });
    cleanup.add(() => c.destroy());
    return c;
  }

  for (const tr of TRANSPORTS) describe(`transmission (${tr.name} transport)`, function () {
    it('a reply with an unknown cookie: every request in flight fails with a protocol error', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        const bad = Buffer.from(r.cookie);
        bad[0] = (bad[0] ?? 0) ^ 0x80;
        s.write(Buffer.concat([reply(bad), dataAt(r.offset, r.length)]));
        await s.untilClosed();
      });
      const into = Buffer.alloc(512, 0xee);
      const results = await Promise.allSettled([c.read(0, 512, into), c.write(4096, Buffer.alloc(512)), c.flush()]);
      for (const r of results) {
        assert.strictEqual(r.status, 'rejected');
        assert.ok(isProtoConnErr(r.reason as NbdError), String(r.reason));
      }
      assert.match(((results[0] as PromiseRejectedResult).reason as Error).message, /unknown cookie/);
      assert.ok(into.equals(Buffer.alloc(512, 0xee)), 'data for a bad cookie landed in a caller buffer');
      assert.strictEqual(c.closed, true);
      // Requests after the failure fail the same way, without touching the socket.
      await assert.rejects(c.read(0, 512), isConnErr);
    });

    it('a second reply for an answered cookie is a protocol error', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        s.write(reply(r.cookie));
        const r2 = await readRequest(s);
        s.write(reply(r.cookie)); // the first request's cookie again
        void r2;
        await s.untilClosed();
      });
      await c.flush();
      await assert.rejects(c.flush(), isProtoConnErr);
    });

    it('a bad reply magic', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        s.write(Buffer.concat([reply(r.cookie, 0, 0x67446699), dataAt(r.offset, r.length)]));
        await s.untilClosed();
      });
      await assert.rejects(c.read(0, 4096), (e: NbdError) => isProtoConnErr(e) && /magic/.test(e.message));
    });

    it('a structured reply that was never negotiated', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        // Structured reply chunk: magic, flags (DONE), type OFFSET_DATA, cookie, length, offset, data.
        const data = dataAt(r.offset, r.length);
        s.write(Buffer.concat([u32(MAGIC.STRUCTURED_REPLY), u16(1), u16(1), r.cookie, u32(8 + data.length), u64(r.offset), data]));
        await s.untilClosed();
      });
      const into = Buffer.alloc(1024);
      await assert.rejects(c.read(0, 1024, into), (e: NbdError) => isProtoConnErr(e) && /structured/.test(e.message));
    });

    it('the connection cut in the middle of a read reply: the read fails', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        s.write(Buffer.concat([reply(r.cookie), dataAt(r.offset, r.length).subarray(0, r.length / 2)]));
        s.sock.end();
      });
      await assert.rejects(c.read(0, 64 * 1024), isConnErr);
      assert.strictEqual(c.closed, true);
    });

    it('the connection cut in the middle of a reply header', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const r = await readRequest(s);
        s.write(reply(r.cookie).subarray(0, 9));
        s.sock.destroy();
      });
      await assert.rejects(c.write(0, Buffer.alloc(4096)), isConnErr);
    });

    it('the server closing with requests in flight fails them all', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        await readRequest(s);
        s.sock.destroy();
      });
      const results = await Promise.allSettled(Array.from({ length: 32 }, (_, i) => c.read(i * 512, 512)));
      assert.ok(results.every((r) => r.status === 'rejected' && isConnErr(r.reason as NbdError)));
    });

    it('an error reply fails only its request; an unknown errno reads as EINVAL', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        for (;;) {
          const r = await readRequest(s);
          if (r.type === 0 && r.offset === 0) s.write(reply(r.cookie, 9999)); // no payload with an error
          else if (r.type === 0) s.write(Buffer.concat([reply(r.cookie), dataAt(r.offset, r.length)]));
          else if (r.type === 1) s.write(reply(r.cookie, 28));
          else s.write(reply(r.cookie));
        }
      });
      const [bad, good, wr] = await Promise.allSettled([c.read(0, 512), c.read(512, 512), c.write(0, Buffer.alloc(8))]);
      assert.strictEqual(bad.status, 'rejected');
      const e = bad.reason as NbdRequestError;
      assert.ok(e instanceof NbdRequestError && e.errno === 22 && /9999/.test(e.message), e.message);
      assert.strictEqual(good.status, 'fulfilled');
      assert.ok(good.value.equals(dataAt(512, 512)));
      assert.ok(wr.status === 'rejected' && (wr.reason as NbdRequestError).errno === 28);
      assert.strictEqual(c.closed, false);
      assert.ok((await c.read(4096, 100)).equals(dataAt(4096, 100)));
    });

    it('replies in reverse order, and replies dribbled a byte at a time, land in the right buffers', async function () {
      const c = await client(tr.make, async (s) => {
        await handshake(s);
        const reqs: Req[] = [];
        for (let i = 0; i < 16; i++) reqs.push(await readRequest(s));
        const out = Buffer.concat(reqs.reverse().map((r) => Buffer.concat([reply(r.cookie), dataAt(r.offset, r.length)])));
        for (let i = 0; i < out.length; i++) {
          s.write(out.subarray(i, i + 1));
          if (i % 7 === 0) await new Promise((r) => setImmediate(r));
        }
        await s.untilClosed();
      });
      const reads = Array.from({ length: 16 }, (_, i) => c.read(i * 1000 + i, 1 + i * 13));
      const got = await Promise.all(reads);
      got.forEach((b, i) => assert.ok(b.equals(dataAt(i * 1000 + i, 1 + i * 13)), `read ${i}`));
    });

    it('bytes after the handshake but before any request', async function () {
      const { port } = await fakeServer(cleanup, async (s) => {
        await handshake(s);
        s.write(reply(randomBytes(8)));
        await s.untilClosed();
      });
      // Either the handshake notices the extra bytes or the first reply does; both are errors.
      let c: NbdClient | undefined;
      try {
        c = await connect(port, { makeTransport: tr.make });
        cleanup.add(() => c?.destroy());
      } catch (e) {
        assert.strictEqual((e as NbdError).code, 'NBD_PROTOCOL');
        return;
      }
      await assert.rejects(c.read(0, 512), isConnErr);
    });
  });

  describe('handshake', function () {
    async function refused(script: Script, check: (e: NbdError) => boolean, opts: { handshakeTimeoutMs?: number; exportName?: string } = {}): Promise<NbdError> {
      const { port } = await fakeServer(cleanup, script);
      let err: NbdError | undefined;
      await assert.rejects(connect(port, opts), (e: NbdError) => {
        err = e;
        assert.ok(check(e), `${e.name} (${e.code}): ${e.message}`);
        return true;
      });
      return err as NbdError;
    }

    it('an option reply with a bad magic', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(optReply(7, 1, Buffer.alloc(0), Buffer.from('0003e889045565aa', 'hex')));
        await s.untilClosed();
      }, (e) => e instanceof NbdProtocolError && e.code === 'NBD_PROTOCOL');
    });

    it('an option reply for another option', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(optReply(3, 1));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_PROTOCOL');
    });

    it('an option reply claiming a huge length', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(Buffer.concat([MAGIC.OPTION_REPLY, u32(7), u32(3), u32(0x7fffffff), Buffer.alloc(100)]));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_PROTOCOL');
    });

    it('an unknown non-error reply type', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(optReply(7, 0x55, Buffer.from('garbage')));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_PROTOCOL');
    });

    it('GO acknowledged without the export size', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(Buffer.concat([optReply(7, 3, Buffer.from([0x42, 0x42, 1, 2, 3])), optReply(7, 1)]));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_PROTOCOL');
    });

    it('a short NBD_INFO_EXPORT is not taken as the size', async function () {
      await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(Buffer.concat([optReply(7, 3, infoExport().subarray(0, 9)), optReply(7, 1)]));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_PROTOCOL');
    });

    it('GO refused by policy: NbdHandshakeError with the server\'s message and the export name', async function () {
      const e = await refused(async (s) => {
        s.write(greeting());
        await readOption(s);
        s.write(optReply(7, 0x80000002, Buffer.from('go away')));
        await s.untilClosed();
      }, (err) => err.code === 'NBD_HANDSHAKE', { exportName: 'vault' });
      assert.match(e.message, /vault/);
      assert.match(e.message, /go away/);
    });

    it('a greeting that is not NBD', async function () {
      await refused(async (s) => {
        s.write(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n'));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_HANDSHAKE' && /not an NBD server/.test(e.message));
    });

    it('an oldstyle server', async function () {
      await refused(async (s) => {
        s.write(Buffer.concat([MAGIC.NBDMAGIC, Buffer.from('0000420281861253', 'hex'), u64(SIZE), u32(0), Buffer.alloc(124)]));
        await s.untilClosed();
      }, (e) => e.code === 'NBD_HANDSHAKE' && /oldstyle/.test(e.message));
    });

    it('a server that closes mid-handshake', async function () {
      await refused(async (s) => {
        s.write(greeting().subarray(0, 10));
        s.sock.end();
      }, (e) => e.code === 'NBD_HANDSHAKE');
    });

    it('a server that never speaks: the handshake times out', async function () {
      await refused(async (s) => {
        await s.untilClosed();
      }, (e) => e.code === 'NBD_CONNECTION' && /no NBD handshake/.test(e.message), { handshakeTimeoutMs: 100 });
    });

    it('without GO support the client falls back to EXPORT_NAME', async function () {
      const { port } = await fakeServer(cleanup, async (s) => {
        s.write(greeting());
        const go = await readOption(s);
        s.write(optReply(go.opt, 0x80000001));
        const en = await readOption(s, false);
        assert.strictEqual(en.opt, 1);
        assert.strictEqual(en.data.toString(), 'legacy');
        s.write(Buffer.concat([u64(SIZE), u16(FLAGS)])); // NO_ZEROES was negotiated
        for (;;) {
          const r = await readRequest(s);
          s.write(Buffer.concat([reply(r.cookie), dataAt(r.offset, r.length)]));
        }
      });
      const c = await connect(port, { exportName: 'legacy' });
      cleanup.add(() => c.destroy());
      assert.strictEqual(c.size, SIZE);
      assert.ok(c.canTrim && c.canZero && !c.readOnly);
      assert.ok((await c.read(100, 100)).equals(dataAt(100, 100)));
    });

    it('EXPORT_NAME fallback, 124 zero bytes without NO_ZEROES, and a refusal by closing', async function () {
      const { port } = await fakeServer(cleanup, async (s) => {
        s.write(greeting(1)); // fixed newstyle, no NO_ZEROES
        const flags = (await s.read(4)).readUInt32BE(0);
        assert.strictEqual(flags, 1, 'client must not ask for NO_ZEROES the server did not offer');
        const go = await readOption(s, false);
        s.write(optReply(go.opt, 0x80000001));
        const en = await readOption(s, false);
        if (en.data.toString() !== 'ok') {
          s.sock.end();
          return;
        }
        s.write(Buffer.concat([u64(SIZE), u16(FLAGS), Buffer.alloc(124)]));
        await s.untilClosed();
      });
      const c = await connect(port, { exportName: 'ok' });
      cleanup.add(() => c.destroy());
      assert.strictEqual(c.size, SIZE);
      await assert.rejects(connect(port, { exportName: 'other' }),
        (e: NbdError) => e.code === 'NBD_HANDSHAKE' && /other/.test(e.message));
    });
  });

  describe('proto.md client requirements (test/CONFORMANCE.md)', function () {
    it('handshake flags it does not know are ignored; the client flags are only what was offered', async function () {
      let clientFlags = -1;
      const c = await client(undefined, async (s) => {
        s.write(greeting(0xfffd)); // every bit but NO_ZEROES
        clientFlags = (await s.read(4)).readUInt32BE(0);
        await readOption(s, false);
        s.write(Buffer.concat([optReply(7, 3, infoExport()), optReply(7, 1)]));
        await s.untilClosed();
      });
      assert.strictEqual(c.size, SIZE);
      assert.strictEqual(clientFlags, 1, 'NBD_FLAG_C_FIXED_NEWSTYLE alone');
    });

    it('unknown transmission flags and information types are ignored, whatever their order', async function () {
      let infoAsks: number[] = [];
      const c = await client(undefined, async (s) => {
        s.write(greeting());
        const go = await readOption(s);
        const n = go.data.readUInt32BE(0);
        const count = go.data.readUInt16BE(4 + n);
        infoAsks = Array.from({ length: count }, (_, i) => go.data.readUInt16BE(6 + n + 2 * i));
        s.write(Buffer.concat([
          optReply(7, 3, Buffer.concat([u16(0x7777), Buffer.from('what is this')])),
          optReply(7, 3, Buffer.concat([u16(3), u32(512), u32(4096), u32(1 << 20)])),
          optReply(7, 3, infoExport(SIZE, FLAGS | 0x8000 | 0x1000)),
          optReply(7, 1),
        ]));
        await s.untilClosed();
      });
      assert.strictEqual(new Set(infoAsks).size, infoAsks.length, 'an information request listed twice');
      assert.deepStrictEqual([c.size, c.canTrim, c.canZero, c.canFua, c.readOnly], [SIZE, true, true, true, false]);
      assert.deepStrictEqual([c.info.minBlock, c.info.maxPayload], [512, 1 << 20]);
    });

    it('no option is sent before the final reply to the one before', async function () {
      const { port } = await fakeServer(cleanup, async (s) => {
        s.write(greeting());
        const go = await readOption(s);
        const before = s.receivedBytes;
        await new Promise((r) => setTimeout(r, 50));
        assert.strictEqual(s.receivedBytes, before, 'the client sent more before the reply to GO');
        s.write(optReply(go.opt, 0x80000001));
        const en = await readOption(s, false);
        assert.strictEqual(en.opt, 1);
        s.write(Buffer.concat([u64(SIZE), u16(FLAGS)]));
        await s.untilClosed();
      });
      const c = await connect(port);
      cleanup.add(() => c.destroy());
      assert.strictEqual(c.size, SIZE);
    });

    for (const [name, type] of [['NBD_REP_ERR_SHUTDOWN', 0x80000007], ['NBD_REP_ERR_UNKNOWN', 0x80000006], ['NBD_REP_ERR_POLICY', 0x80000002]] as const) {
      it(`GO refused with ${name}: the client ends with NBD_OPT_ABORT (a soft disconnect)`, async function () {
        let next = -1;
        const { port, errors } = await fakeServer(cleanup, async (s) => {
          s.write(greeting());
          await readOption(s);
          s.write(optReply(7, type));
          next = (await readOption(s, false)).opt;
          s.write(optReply(2, 1));
          s.sock.end();
        });
        await assert.rejects(connect(port), (e: NbdError) => e.code === 'NBD_HANDSHAKE');
        while (next === -1 && errors.length === 0) await new Promise((r) => setTimeout(r, 5));
        assert.deepStrictEqual(errors, []);
        assert.strictEqual(next, 2, 'NBD_OPT_ABORT');
      });
    }

    it('NBD_ESHUTDOWN: NBD_CMD_DISC follows the requests already sent, nothing after it; replies in flight still land', async function () {
      const seen: number[] = [];
      const c = await client(undefined, async (s) => {
        await handshake(s);
        const a = await readRequest(s);
        const b = await readRequest(s);
        s.write(reply(a.cookie, 108));
        const disc = await readRequest(s);
        seen.push(disc.type);
        s.write(Buffer.concat([reply(b.cookie), dataAt(b.offset, b.length)]));
        seen.push((await s.untilClosed()).length);
      });
      const a = c.read(0, 512);
      const b = c.read(4096, 512);
      await assert.rejects(a, (e: NbdError) => e instanceof NbdRequestError && e.errno === 108);
      assert.ok((await b).equals(dataAt(4096, 512)));
      await assert.rejects(c.read(0, 512), (e: NbdError) => e.code === 'NBD_CONNECTION');
      while (seen.length < 2) await new Promise((r) => setTimeout(r, 5));
      assert.deepStrictEqual(seen, [2, 0], 'DISC, then nothing');
    });
  });
});
