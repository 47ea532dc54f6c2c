// Whatever a store sends, the client's memory stays its read buffers (the device's depth x
// max-io) plus a constant: replies of 32 MiB trickling in small pieces land in place, and a
// stream of bytes that never ends is cut at its first bad header. The client runs in a child
// process so that its peak RSS (VmHWM) is its own.
import * as assert from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { cleanupAfterEach, runOk } from '../helpers/procs';
import { HOST, listen } from '../helpers/net';
import { MAGIC, RawConn, u16, u32, u64 } from '../helpers/raw-nbd';
import { tempDir } from '../helpers/images';
import { repoRoot } from '../helpers/vm';

const MiB = 1024 * 1024;
const READS = 4;
const READ_BYTES = 32 * MiB;
// Far above the client's own needs, far below one more copy of the data in flight.
const CONSTANT_MIB = 48;

/** A store that shakes hands, then runs `serve` on the requests. */
async function store(cleanup: ReturnType<typeof cleanupAfterEach>, serve: (c: RawConn) => Promise<void>): Promise<number> {
  const socks = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    socks.add(sock);
    const c = RawConn.from(sock);
    void (async () => {
      c.write(Buffer.concat([MAGIC.NBDMAGIC, MAGIC.IHAVEOPT, u16(3)]));
      await c.read(4);
      const h = await c.read(16);
      await c.read(h.readUInt32BE(12));
      const info = Buffer.concat([u16(0), u64(READS * READ_BYTES), u16(1)]);
      c.write(Buffer.concat([MAGIC.OPTION_REPLY, u32(7), u32(3), u32(info.length), info, MAGIC.OPTION_REPLY, u32(7), u32(1), u32(0)]));
      await serve(c);
    })().catch(() => c.destroy());
  });
  const port = await listen(server);
  cleanup.add(() => new Promise<void>((r) => {
    for (const s of socks) s.destroy();
    server.close(() => r());
  }));
  return port;
}

/** Runs the client in a child: READS reads of READ_BYTES into buffers allocated first. */
async function client(cleanup: ReturnType<typeof cleanupAfterEach>, port: number): Promise<{ baseMiB: number; peakMiB: number; results: string[] }> {
  const script = path.join(tempDir(cleanup), 'client.js');
  fs.writeFileSync(script, `
const fs = require('fs');
const { NbdClient } = require(${JSON.stringify(path.join(repoRoot(), 'dist', 'src', 'nbd', 'client.js'))});
const hwm = () => Number(/VmHWM:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
(async () => {
  const c = await NbdClient.connect({ host: '${HOST}', port: ${port} });
  const bufs = Array.from({ length: ${READS} }, () => Buffer.alloc(${READ_BYTES}, 1));
  const baseMiB = hwm();
  const results = await Promise.all(bufs.map((b, i) => c.read(i * ${READ_BYTES}, ${READ_BYTES}, b)
    .then(() => (b.every((x) => x === (i & 0xff)) ? 'ok' : 'wrong data'), (e) => e.code)));
  process.stdout.write(JSON.stringify({ baseMiB, peakMiB: hwm(), results }));
  c.destroy();
})();
`);
  const r = await runOk(process.execPath, [script]);
  return JSON.parse(r.stdout.toString()) as { baseMiB: number; peakMiB: number; results: string[] };
}

describe('client memory against a hostile store', function () {
  this.timeout(120_000);
  const cleanup = cleanupAfterEach();

  it('read replies of 32 MiB trickling in 1 KiB pieces land in place: memory is the buffers plus a constant', async function () {
    const port = await store(cleanup, async (c) => {
      const reqs: { cookie: Buffer; offset: number }[] = [];
      for (let i = 0; i < READS; i++) {
        const h = await c.read(28);
        reqs.push({ cookie: Buffer.from(h.subarray(8, 16)), offset: Number(h.readBigUInt64BE(16)) });
      }
      const piece = 1024;
      for (const r of reqs) {
        c.write(Buffer.concat([u32(MAGIC.SIMPLE_REPLY), u32(0), r.cookie]));
        const data = Buffer.alloc(piece, (r.offset / READ_BYTES) & 0xff);
        for (let off = 0; off < READ_BYTES; off += piece) {
          if (!c.sock.write(data)) await new Promise((res) => c.sock.once('drain', res));
        }
      }
      await c.untilClosed();
    });
    const got = await client(cleanup, port);
    assert.deepStrictEqual(got.results, Array(READS).fill('ok'));
    assert.ok(got.peakMiB - got.baseMiB < CONSTANT_MIB, `peak ${got.peakMiB.toFixed(0)} MiB over ${got.baseMiB.toFixed(0)} MiB of buffers and start`);
  });

  it('a stream of bytes that never ends: cut at the first bad header, nothing buffered', async function () {
    const port = await store(cleanup, async (c) => {
      for (let i = 0; i < READS; i++) await c.read(28);
      const junk = Buffer.alloc(MiB, 0x5a);
      for (let sent = 0; sent < 1024 * MiB && !c.sock.destroyed; sent += junk.length) {
        if (!c.sock.write(junk)) await new Promise((res) => { c.sock.once('drain', res); c.sock.once('close', res); });
      }
    });
    const got = await client(cleanup, port);
    assert.deepStrictEqual(got.results, Array(READS).fill('NBD_CONNECTION'));
    assert.ok(got.peakMiB - got.baseMiB < CONSTANT_MIB, `peak ${got.peakMiB.toFixed(0)} MiB over ${got.baseMiB.toFixed(0)} MiB`);
  });
});
