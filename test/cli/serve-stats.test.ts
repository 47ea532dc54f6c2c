// serve's side of stats and metrics: while qemu-io and nbdcopy work against it, the
// Prometheus endpoint (scraped with Node's plain HTTP client) and `stats --socket` count
// the requests by operation, the bytes, the store's latency and the connections.
import * as assert from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import { serveStatsSocketPath } from '../../src/device/state';
import type { StatsReport } from '../../src/stats/report';
import { makeImage, MiB, tempDir } from '../helpers/images';
import { freePort, HOST } from '../helpers/net';
import { qemuIo, requirePeer } from '../helpers/peers';
import { cleanupAfterEach, run, runOk, runUntilSeen } from '../helpers/procs';
import { cliPath, serveImage } from '../helpers/serve';

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ host: HOST, port, path: '/metrics' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => { body += s; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    }).on('error', reject);
  });
}

function sample(body: string, name: string, labels: string): number {
  const line = body.split('\n').find((l) => l.startsWith(`${name}{export="disk"${labels}} `));
  assert.ok(line, `no ${name}{${labels}} in:\n${body}`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('cli: serve --metrics and --stats-socket', function () {
  this.timeout(120_000);
  const cleanup = cleanupAfterEach();
  before(() => {
    requirePeer('qemu-io');
    requirePeer('nbdcopy');
  });

  it('counts qemu-io\'s and nbdcopy\'s requests; /metrics and stats agree', async () => {
    const dir = tempDir(cleanup);
    const image = makeImage(dir, 'disk.img', 8 * MiB, 'zero');
    const mport = await freePort();
    const sock = path.join(dir, 'serve.stats.sock');
    const srv = await serveImage(cleanup, image, { name: 'disk', args: ['--metrics', `:${mport}`, '--stats-socket', sock] });
    const before = await scrape(mport);
    assert.strictEqual(sample(before, 'netdisk_ublk_requests_total', ',op="write"'), 0);

    const q = await qemuIo(srv.uri('disk'), ['write -P 0x5a 0 1M', 'read -P 0x5a 0 1M', 'flush', 'discard 1M 1M', 'write -z 2M 64k']);
    assert.strictEqual(q.code, 0, q.stderr);
    await runOk('nbdcopy', [srv.uri('disk'), path.join(dir, 'copy.img')]);

    const m = await scrape(mport);
    const writes = sample(m, 'netdisk_ublk_requests_total', ',op="write"');
    assert.ok(writes >= 1, `writes ${writes}`);
    assert.strictEqual(sample(m, 'netdisk_ublk_bytes_total', ',op="write"'), 1 * MiB);
    // qemu-io read 1 MiB; nbdcopy read all 8 MiB (or skipped holes and zeroes it learned of).
    assert.ok(sample(m, 'netdisk_ublk_bytes_total', ',op="read"') >= 1 * MiB);
    assert.ok(sample(m, 'netdisk_ublk_requests_total', ',op="flush"') >= 1);
    assert.ok(sample(m, 'netdisk_ublk_requests_total', ',op="discard"') >= 1);
    assert.ok(sample(m, 'netdisk_ublk_requests_total', ',op="write_zeroes"') >= 1);
    assert.strictEqual(sample(m, 'netdisk_ublk_requests_in_flight', ''), 0);
    assert.strictEqual(sample(m, 'netdisk_ublk_request_duration_seconds_count', ',op="write"'), writes);
    assert.ok(sample(m, 'netdisk_ublk_request_duration_seconds_sum', ',op="write"') > 0);
    assert.strictEqual(sample(m, 'netdisk_ublk_connections', ''), 0);

    const r = await run(process.execPath, [cliPath(), 'stats', '--socket', sock, '--json']);
    assert.strictEqual(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout.toString()) as StatsReport;
    assert.strictEqual(s.name, 'export "disk"');
    assert.strictEqual(s.total.ops.write.requests, writes);
    assert.strictEqual(s.total.ops.write.bytes, 1 * MiB);
    assert.ok(s.total.ops.write.p50Us !== null && s.total.ops.write.p50Us > 0);
    assert.deepStrictEqual(s.extra, { connections: 0, 'bytes held': 0 });
    const screen = await run(process.execPath, [cliPath(), 'stats', '--socket', sock]);
    assert.match(screen.stdout.toString(), /^export "disk" +.*disk\.img +up /);
    assert.match(screen.stdout.toString(), /^connections 0 {2}bytes held 0$/m);
  });

  it('stats --watch: one line per interval into a pipe, the table redrawn on a terminal; SIGINT ends it with 0', async () => {
    const dir = tempDir(cleanup);
    const sock = path.join(dir, 'serve.stats.sock');
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', MiB, 'zero'), { name: 'disk', args: ['--stats-socket', sock] });
    assert.strictEqual((await qemuIo(srv.uri('disk'), ['write 0 64k'])).code, 0);
    // Until three intervals came out, then SIGINT: on a pipe, then on a terminal.
    const watch = (on: 'stdout' | 'pty') => runUntilSeen([process.execPath, cliPath(), 'stats', '--socket', sock, '--watch', '1'],
      { until: 'export "disk"', count: 3, on });
    const piped = await watch('stdout');
    assert.strictEqual(piped.code, 0);
    const lines = piped.stdout.toString().trimEnd().split('\n');
    assert.strictEqual(lines.length, 3, piped.stdout.toString());
    for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT[\d:.]+Z export "disk" read 0\/s .* write 0\/s /);
    const tty = await watch('pty');
    assert.strictEqual(tty.code, 0);
    const screens = tty.stdout.toString().split('\x1b[H\x1b[2J').slice(1);
    assert.ok(screens.length >= 3, tty.stdout.toString());
    assert.match(screens[0] as string, /^export "disk" .*\r?\nop +req\/s +MB\/s/);
  });

  it('a --metrics address in use: exit 1 naming it', async () => {
    const dir = tempDir(cleanup);
    const first = await serveImage(cleanup, makeImage(dir, 'a.img', MiB, 'zero'));
    const r = await run(process.execPath, [cliPath(), 'serve', path.join(dir, 'b.img'), '--size', '1M', '--listen', `${HOST}:0`,
      '--metrics', `${HOST}:${first.port}`]);
    assert.strictEqual(r.code, 1, r.stderr);
    assert.match(r.stderr, /^netdisk-ublk serve: --metrics: cannot listen: EADDRINUSE$/m);
  });

  it('without --stats-socket: serve-ADDRESS.stats.sock in the run directory, which stats asks without an ID', async () => {
    const dir = tempDir(cleanup);
    const env = { NETDISK_RUN_DIR: path.join(dir, 'run') };
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', MiB, 'zero'), { name: 'disk', env });
    const sock = path.join(dir, 'run', `serve-127.0.0.1_${srv.port}.stats.sock`);
    assert.strictEqual(srv.logs().find((l) => l.msg === 'serving')?.statsSocket, sock);
    assert.strictEqual((await qemuIo(srv.uri('disk'), ['write 0 64k'])).code, 0);
    const r = await runOk(process.execPath, [cliPath(), 'stats', '--json'], { env: { ...process.env, ...env } });
    const [report, ...more] = r.stdout.toString().trim().split('\n').map((l) => JSON.parse(l) as StatsReport);
    assert.strictEqual(more.length, 0);
    assert.strictEqual(report?.name, 'export "disk"');
    assert.strictEqual(report.total.ops.write.bytes, 64 * 1024);
    assert.strictEqual((await srv.stop()).code, 0);
    assert.ok(!fs.existsSync(sock), 'the socket is removed on the way out');
    const none = await run(process.execPath, [cliPath(), 'stats'], { env: { ...process.env, ...env } });
    assert.strictEqual(none.code, 1);
    assert.strictEqual(none.stderr, 'netdisk-ublk stats: no running netdisk-ublk device or server\n');
  });

  it('--stats-socket none: no socket, not even the default one', async () => {
    const dir = tempDir(cleanup);
    const env = { NETDISK_RUN_DIR: path.join(dir, 'run') };
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', MiB, 'zero'), { env, args: ['--stats-socket', 'none'] });
    const serving = srv.logs().find((l) => l.msg === 'serving');
    assert.ok(serving, 'serve says it is serving');
    assert.strictEqual(serving.statsSocket, undefined);
    assert.strictEqual((await qemuIo(srv.uri(), ['read 0 4k'])).code, 0);
    assert.deepStrictEqual(fs.existsSync(path.join(dir, 'run')) ? fs.readdirSync(path.join(dir, 'run')) : [], []);
    assert.ok(!fs.existsSync('none') && !fs.existsSync(path.join(dir, 'none')));
    const none = await run(process.execPath, [cliPath(), 'stats'], { env: { ...process.env, ...env } });
    assert.strictEqual(none.code, 1);
  });

  it('a run directory it cannot make: serve goes on without a stats socket and says so', async () => {
    const dir = tempDir(cleanup);
    fs.writeFileSync(path.join(dir, 'file'), '');
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', MiB, 'zero'), { env: { NETDISK_RUN_DIR: path.join(dir, 'file', 'run') } });
    const line = srv.logs().find((l) => l.msg === 'no stats socket (--stats-socket PATH names one)');
    assert.strictEqual(line?.err, 'ENOTDIR');
    assert.strictEqual(srv.logs().find((l) => l.msg === 'serving')?.statsSocket, undefined);
    assert.strictEqual((await qemuIo(srv.uri(), ['read 0 4k'])).code, 0);
  });

  it('serveStatsSocketPath: the address in the name, a hash where the name would not fit a unix socket', () => {
    const was = process.env.NETDISK_RUN_DIR;
    process.env.NETDISK_RUN_DIR = '/run/netdisk-ublk';
    try {
      assert.strictEqual(serveStatsSocketPath('127.0.0.1:10809'), '/run/netdisk-ublk/serve-127.0.0.1_10809.stats.sock');
      assert.strictEqual(serveStatsSocketPath('[::1]:10809'), '/run/netdisk-ublk/serve-___1__10809.stats.sock');
      assert.strictEqual(serveStatsSocketPath('/srv/nbd.sock'), '/run/netdisk-ublk/serve-_srv_nbd.sock.stats.sock');
      const long = serveStatsSocketPath(`/srv/${'x'.repeat(200)}.sock`);
      assert.match(long, /^\/run\/netdisk-ublk\/serve-[0-9a-f]{16}\.stats\.sock$/);
      assert.notStrictEqual(long, serveStatsSocketPath(`/srv/${'x'.repeat(201)}.sock`));
    } finally {
      if (was === undefined) delete process.env.NETDISK_RUN_DIR;
      else process.env.NETDISK_RUN_DIR = was;
    }
  });
});
