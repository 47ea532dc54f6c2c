// What a running device reports while fio drives it through the real kernel: `stats --json`
// over the daemon's stats socket, and the Prometheus endpoint of `add --metrics`, scraped
// with a plain HTTP client. Counts must move with the I/O, latency must come from the
// histogram, and both views must agree with what fio did. A daemon killed and recovered
// serves its metrics where add put them: recover reads the address from the device record.
import * as assert from 'assert';
import * as http from 'http';
import * as path from 'path';
import type { StatsReport } from '../../src/stats/report';
import { freePort } from '../helpers/net';
import {
  HOST, assertKernelLogClean, cli, cliOk, deviceSuite, markKernelLog, ok, pidAlive, readRecord, start, ublkNodes, waitFor,
  type DeviceInfo,
} from './helpers';

function scrape(port: number): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: HOST, port, path: '/metrics' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => { body += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    }).on('error', reject);
  });
}

/** The value of one sample, e.g. sample(body, 'netdisk_ublk_requests_total', { op: 'write' }). */
function sample(body: string, name: string, labels: Record<string, string>): number {
  const line = body.split('\n').find((l) => l.startsWith(`${name}{`)
    && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  assert.ok(line, `no sample ${name} ${JSON.stringify(labels)} in:\n${body}`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('device: stats and Prometheus metrics under fio (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();

  it('stats --json and /metrics count fio\'s reads, writes, flushes and discards, with latency percentiles', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'stats');
    const server = await e.serve(path.join(e.dir, 'stats.img'), { size: '32M' });
    const mport = await freePort();
    const dev = await e.add(server.port, ['--metrics', `:${mport}`]);
    const before = await scrape(mport);
    assert.strictEqual(before.status, 200);
    assert.match(before.type, /^text\/plain; version=0\.0\.4/);
    const w0 = sample(before.body, 'netdisk_ublk_requests_total', { device: String(dev.id), op: 'write' });

    // 4 MiB of 4 KiB direct writes with an fsync every 16, then the same read back, then a discard.
    await ok('fio', ['--name=w', `--filename=${dev.device}`, '--direct=1', '--rw=randwrite', '--bs=4k', '--size=4M',
      '--ioengine=libaio', '--iodepth=8', '--fsync=16', '--randrepeat=0', '--norandommap'], { timeoutMs: 300_000 });
    const fioRead = start('fio', ['--name=r', `--filename=${dev.device}`, '--direct=1', '--rw=randread', '--bs=4k',
      '--ioengine=libaio', '--iodepth=4', '--time_based', '--runtime=15'], { timeoutMs: 120_000 });
    // While fio reads: the rates over the last interval are not zero.
    let live: StatsReport | undefined;
    await waitFor('stats to show reads per second', async () => {
      const r = await cliOk(['stats', String(dev.id), '--json']);
      live = JSON.parse(r.stdout) as StatsReport;
      return live.interval.ops.read.requestsPerS > 0 || fioRead.done;
    }, 60_000, 500);
    const screen = (await cliOk(['stats', String(dev.id)])).stdout;
    await fioRead.result;
    await ok('blkdiscard', ['-o', '0', '-l', String(1 << 20), dev.device]);

    const r = JSON.parse((await cliOk(['stats', String(dev.id), '--json'])).stdout) as StatsReport;
    const t = r.total.ops;
    assert.strictEqual(r.name, dev.device);
    // The block layer may merge adjacent writes: the bytes are exact, the count is not.
    assert.ok(t.write.requests > 0 && t.write.bytes >= 4 << 20, `writes: ${JSON.stringify(t.write)}`);
    assert.ok(t.flush.requests >= 1, `flushes: ${t.flush.requests}`);
    // fio's 4 KiB reads, and the kernel's partition scan (page-sized or larger).
    assert.ok(t.read.requests > 0 && t.read.bytes >= t.read.requests * 4096, `reads: ${JSON.stringify(t.read)}`);
    assert.ok(t.discard.requests >= 1, `discards: ${t.discard.requests}`);
    for (const op of ['read', 'write'] as const) {
      const o = t[op];
      assert.ok(o.p50Us !== null && o.p99Us !== null && o.p999Us !== null, `${op} percentiles`);
      assert.ok(o.p50Us > 0 && o.p50Us <= o.p99Us && o.p99Us <= o.p999Us, `${op} percentiles in order: ${JSON.stringify(o)}`);
    }
    assert.ok(live && live.interval.ops.read.requestsPerS > 0, 'no reads per second while fio read');
    assert.strictEqual(r.inFlight, 0);
    assert.ok(r.peakInFlight >= 2, `peak in flight ${r.peakInFlight} with fio at depth 8`);
    assert.deepStrictEqual(r.errors, {});
    assert.match(screen, /^\/dev\/ublkb\d+ +nbd:\/\/127\.0\.0\.1:\d+/);
    assert.match(screen, /^read +\d+ +[\d.]+ +\d+ +0 /m);

    const after = (await scrape(mport)).body;
    const L = { device: String(dev.id) };
    assert.strictEqual(sample(after, 'netdisk_ublk_requests_total', { ...L, op: 'write' }) - w0, t.write.requests);
    assert.strictEqual(sample(after, 'netdisk_ublk_bytes_total', { ...L, op: 'read' }), t.read.bytes);
    assert.strictEqual(sample(after, 'netdisk_ublk_requests_total', { ...L, op: 'flush' }), t.flush.requests);
    assert.strictEqual(sample(after, 'netdisk_ublk_requests_in_flight', L), 0);
    const count = sample(after, 'netdisk_ublk_request_duration_seconds_count', { ...L, op: 'read' });
    assert.strictEqual(count, t.read.requests);
    assert.strictEqual(sample(after, 'netdisk_ublk_request_duration_seconds_bucket', { ...L, op: 'read', le: '+Inf' }), count);
    assert.ok(sample(after, 'netdisk_ublk_request_duration_seconds_bucket', { ...L, op: 'read', le: '0.00005' }) <= count);
    process.stdout.write(`${screen}\n${after.split('\n').filter((l) => /^netdisk_ublk_(requests_total|bytes_total)/.test(l)).join('\n')}\n`);
    await e.del(dev.id);
    await assertKernelLogClean(mark);
  });

  it('a daemon killed (-9) and recovered serves /metrics at the recorded address; recover --metrics moves it', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'recover metrics');
    const server = await e.serve(path.join(e.dir, 'recover.img'), { size: '8M' });
    const [mport, moved] = [await freePort(), await freePort()];
    const dev = await e.add(server.port, ['--metrics', `:${mport}`]);
    const L = { device: String(dev.id) };
    const writes = async (port: number): Promise<number> => sample((await scrape(port)).body, 'netdisk_ublk_requests_total', { ...L, op: 'write' });
    const write16 = (): Promise<unknown> => ok('dd', ['if=/dev/zero', `of=${dev.device}`, 'bs=4k', 'count=16', 'oflag=direct'], { timeoutMs: 120_000 });
    assert.deepStrictEqual((readRecord(dev.id)?.config as { metrics?: unknown }).metrics, { host: HOST, port: mport });
    const killAndRecover = async (pid: number, extra: string[]): Promise<DeviceInfo> => {
      process.kill(pid, 'SIGKILL');
      await waitFor('the daemon to die', () => !pidAlive(pid), 30_000, 20);
      const r = await cliOk(['recover', String(dev.id), '--json', ...extra], { timeoutMs: 120_000 });
      const info = JSON.parse(r.stdout.trim().split('\n').pop() as string) as DeviceInfo;
      assert.strictEqual(info.recovered, true);
      return info;
    };

    await write16();
    assert.ok(await writes(mport) >= 16, 'the first daemon counts the writes');
    const second = await killAndRecover(dev.pid, []);
    // The new daemon's counters start at zero and move with the I/O it serves.
    const w0 = await writes(mport);
    await write16();
    assert.ok(await writes(mport) >= w0 + 16, 'the recovered daemon counts the writes at the same address');
    assert.deepStrictEqual((readRecord(dev.id)?.config as { metrics?: unknown }).metrics, { host: HOST, port: mport });

    await killAndRecover(second.pid, ['--metrics', `:${moved}`]);
    await write16();
    assert.ok(await writes(moved) >= 16, 'recover --metrics: served at the new address');
    await assert.rejects(scrape(mport), /ECONNREFUSED/);
    assert.deepStrictEqual((readRecord(dev.id)?.config as { metrics?: unknown }).metrics, { host: HOST, port: moved });
    await e.del(dev.id);
    await assertKernelLogClean(mark);
  });

  it('--metrics on an address in use fails add before any device exists', async function () {
    const e = env();
    const server = await e.serve(path.join(e.dir, 'busy.img'), { size: '4M' });
    const r = await cli(['add', '--remote', `${HOST}:${server.port}`, '--metrics', `${HOST}:${server.port}`], { timeoutMs: 120_000 });
    assert.strictEqual(r.code, 1, r.stderr);
    assert.match(r.stderr, /--metrics: cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
    assert.deepStrictEqual(ublkNodes(), ['ublk-control']);
  });
});
