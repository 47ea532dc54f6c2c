// Clients that try to make `serve` hold memory or connections, bounded in number and time,
// against the CLI's server in its own process: its memory stays bounded (a generous bound;
// bench/hostile-load.ts measures), each refusal is logged once, and an honest client beside
// them is served with data that verifies.
import * as assert from 'assert';
import { randomBytes, randomInt } from 'crypto';
import * as fs from 'fs';
import { NbdClient } from '../../src/nbd/client';
import * as C from '../../src/nbd/constants';
import { cleanupAfterEach } from '../helpers/procs';
import { makeImage, MiB, readAt, tempDir } from '../helpers/images';
import { Attacker, replyDrip, startAttacker } from '../helpers/hostile-clients';
import { RawConn, request } from '../helpers/raw-nbd';
import { LogLine, serveImage, Served } from '../helpers/serve';

const SIZE = 64 * MiB;
// Far above what the budgets allow (256 MiB, the reply-buffer pool, node itself), far below
// what the same clients cost without them (8 readers x 8 x 32 MiB = 2 GiB).
const RSS_BOUND_MIB = 768;

function peakRssMiB(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, 'no VmHWM');
  return Number(m[1]) / 1024;
}

async function until(what: string, srv: Served, cond: () => boolean): Promise<void> {
  // A guard against a hang, not a measurement.
  const deadline = Date.now() + 60_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${srv.child.stderr().slice(-4000)}`);
    if (srv.child.done) throw new Error(`serve exited while waiting for ${what}:\n${srv.child.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const withMsg = (srv: Served, re: RegExp): LogLine[] => srv.logs().filter((l) => re.test(l.msg));

/** Honest traffic: random 4 KiB reads checked against the file, then writes read back. */
async function honest(srv: Served, image: string, size = SIZE): Promise<void> {
  const c = await NbdClient.connect({ host: srv.host, port: srv.port, exportName: '' });
  try {
    for (let i = 0; i < 300; i++) {
      const off = randomInt(0, size / 4096 - 256) * 4096; // the last MiB is written below
      assert.ok((await c.read(off, 4096)).equals(readAt(image, off, 4096)), `read at ${off}`);
    }
    const data = randomBytes(MiB);
    await c.write(size - MiB, data);
    assert.ok((await c.read(size - MiB, MiB)).equals(data));
    await c.flush();
    assert.ok(readAt(image, size - MiB, MiB).equals(data), 'the write is in the image');
  } finally {
    await c.close();
  }
}

describe('server: hostile load', function () {
  this.timeout(120_000);
  const cleanup = cleanupAfterEach();
  const attackers: Attacker[] = [];
  afterEach(() => {
    for (const a of attackers.splice(0)) a.stop();
  });

  it('readers that never read their replies and a flood of small requests: memory stays bounded, an honest client is served', async function () {
    const image = makeImage(tempDir(cleanup), 'disk.img', SIZE, 'random');
    const srv = await serveImage(cleanup, image);
    for (let i = 0; i < 8; i++) attackers.push(startAttacker('greedy-reader', { port: srv.port, greedyRequests: 8 }));
    for (let i = 0; i < 2; i++) attackers.push(startAttacker('reply-flood', { port: srv.port, floodRequests: 1_000_000 }));
    // Every hostile connection ends up stopped by a budget, its own or the server's.
    const budget = /memory budget reached/;
    await until('10 connections at a budget', srv, () => new Set(withMsg(srv, budget).map((l) => l.conn)).size >= 10);
    await honest(srv, image);
    const peak = peakRssMiB(srv.child.proc.pid as number);
    assert.ok(peak < RSS_BOUND_MIB, `serve's peak RSS ${peak.toFixed(0)} MiB`);
    // Logged once per connection and cause, not per request.
    const seen = new Set<string>();
    for (const l of withMsg(srv, budget)) {
      const key = `${String(l.conn)} ${l.msg}`;
      assert.ok(!seen.has(key), `logged twice: ${key}`);
      seen.add(key);
    }
    for (const a of attackers) assert.strictEqual(a.closedByServer + a.refused, 0, `${a.kind} was closed`);
  });

  it('a client that never reads, asking for one small reply at a time beside an honest reader, holds its replies, not the memory they were cut from', async function () {
    const image = makeImage(tempDir(cleanup), 'disk.img', SIZE, 'random');
    const srv = await serveImage(cleanup, image);
    const drip = await replyDrip(srv.port, 8 * MiB);
    // 400,000 honest 4 KiB reads at QD32, their replies cut from 6,300 slabs of 256 KiB, and
    // a drip every 64 of them: each drip's reply, a few hundred bytes of budget, once kept
    // the slab it was cut from alive (1.6 GiB in all).
    const c = await NbdClient.connect({ host: srv.host, port: srv.port, exportName: '' });
    try {
      const blocks = SIZE / 4096;
      let issued = 0;
      await new Promise<void>((resolve, reject) => {
        let done = 0;
        const issue = (into: Buffer): void => {
          issued++;
          c.submit({ type: C.Cmd.READ, offset: randomInt(0, blocks) * 4096, length: 4096, into }, into, (err, b) => {
            if (err) return reject(err);
            if (++done === 400_000) return resolve();
            if (done % 64 === 0) drip.drip();
            if (issued < 400_000) issue(b);
          });
        };
        for (let i = 0; i < 32; i++) issue(Buffer.alloc(4096));
      });
    } finally {
      await c.close();
    }
    await honest(srv, image);
    const peak = peakRssMiB(srv.child.proc.pid as number);
    drip.stop();
    assert.ok(peak < RSS_BOUND_MIB, `serve's peak RSS ${peak.toFixed(0)} MiB`);
  });

  it('handshakes that never finish are closed; past --max-connections clients are closed at once, logged once', async function () {
    const image = makeImage(tempDir(cleanup), 'disk.img', 4 * MiB, 'random');
    const srv = await serveImage(cleanup, image, { args: ['--max-connections', '3', '--handshake-timeout', '1'] });
    const stalled: RawConn[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await RawConn.connect(srv.port);
      await c.greeting();
      c.write(Buffer.from([0, 0])); // half the client flags
      stalled.push(c);
    }
    for (let i = 0; i < 5; i++) {
      const c = await RawConn.connect(srv.port);
      assert.strictEqual((await c.untilClosed()).length, 0, 'a refused connection got a greeting');
    }
    await Promise.all(stalled.map((c) => c.closed));
    await until('the limit to clear', srv, () => withMsg(srv, /below the connection limit/).length === 1);
    assert.strictEqual(withMsg(srv, /connection limit reached/).length, 1);
    assert.strictEqual(withMsg(srv, /below the connection limit/)[0]?.refused, 5);
    const closed = srv.logs().filter((l) => typeof l.reason === 'string' && l.reason.startsWith('handshake not finished'));
    assert.strictEqual(closed.length, 3);
    await honest(srv, image, 4 * MiB);
  });

  it('a write whose payload trickles in holds its connection, not the server; it lands once complete', async function () {
    const image = makeImage(tempDir(cleanup), 'disk.img', SIZE, 'random');
    const srv = await serveImage(cleanup, image);
    const c = await RawConn.connect(srv.port);
    await c.handshake('');
    const data = randomBytes(64 * 1024);
    const at = 8 * MiB;
    c.write(request(1, { cookie: 42n, offset: at, length: data.length }));
    const honestRun = honest(srv, image);
    for (let off = 0; off < data.length; off += 512) {
      c.write(data.subarray(off, off + 512));
      await new Promise((r) => setImmediate(r));
    }
    await honestRun;
    const r = await c.simpleReply();
    assert.deepStrictEqual([r.error, r.cookie], [0, 42n]);
    assert.ok(readAt(image, at, data.length).equals(data));
    c.write(request(2, { cookie: 43n }));
    await c.closed;
  });
});
