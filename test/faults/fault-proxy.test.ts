// The fault proxy's delay keeps a stream in order: chunks held by a delay are written before
// any chunk that comes after them, also once the delay is lifted or shortened (otherwise the
// "slow store" of the chaos soak would be a store that reorders its bytes).
import * as assert from 'assert';
import * as net from 'net';
import { FaultProxy } from '../helpers/fault-proxy';
import { HOST, listen } from '../helpers/net';

/** An echo server behind a proxy, and a client of the proxy that collects what comes back. */
async function echoBehindProxy(): Promise<{ proxy: FaultProxy; client: net.Socket; got: Buffer[]; close(): Promise<void> }> {
  const server = net.createServer((s) => s.pipe(s));
  const port = await listen(server);
  const proxy = await FaultProxy.start({ port });
  const client = net.connect({ host: HOST, port: proxy.port });
  await new Promise((r) => client.once('connect', r));
  const got: Buffer[] = [];
  client.on('data', (b: Buffer) => got.push(b));
  return {
    proxy, client, got,
    close: async () => {
      client.destroy();
      await proxy.close();
      await new Promise((r) => server.close(r));
    },
  };
}

function numbered(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

describe('fault proxy: delay', function () {
  for (const repliesOnly of [false, true]) {
    it(`keeps the order across a delay lifted and shortened midway${repliesOnly ? ' (replies only)' : ''}`, async function () {
      const e = await echoBehindProxy();
      try {
        const total = 300;
        for (let i = 0; i < total; i++) {
          if (i === 100) e.proxy.delay(400, repliesOnly);
          if (i === 150) e.proxy.delay(50, repliesOnly);
          if (i === 200) e.proxy.forward();
          e.client.write(numbered(i));
          await new Promise((r) => setImmediate(r));
        }
        for (let i = 0; Buffer.concat(e.got).length < total * 4 && i < 200; i++) await new Promise((r) => setTimeout(r, 25));
        const all = Buffer.concat(e.got);
        assert.strictEqual(all.length, total * 4);
        for (let i = 0; i < total; i++) assert.strictEqual(all.readUInt32BE(i * 4), i, `chunk ${i} out of order`);
      } finally {
        await e.close();
      }
    });
  }
});
