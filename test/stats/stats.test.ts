// The stats pieces on their own: the histogram's buckets and percentiles against exact
// answers, the counters a queue writes and the daemon reads, the Prometheus text, the stats
// socket and the metrics endpoint (over real sockets, read by Node's plain HTTP client).
import * as assert from 'assert';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { BUCKETS, bucketOf, bucketRange, percentile } from '../../src/stats/histogram';
import { QueueCounters, newQueueCounters, readCounters } from '../../src/stats/device-counters';
import { renderMetrics } from '../../src/stats/prometheus';
import { makeReport, renderReport, zeroCounters } from '../../src/stats/report';
import { StatsClient, StatsSocket } from '../../src/stats/stats-socket';
import { MetricsServer } from '../../src/stats/metrics-server';
import { tempDir } from '../helpers/images';
import { cleanupAfterEach } from '../helpers/procs';

function get(opts: http.RequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.request(opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => { body += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject).end();
  });
}

/** Some counters: `n` writes of 4 KiB, 2 failed reads (EIO, ENOSPC). */
function someCounters(n: number) {
  const buf = newQueueCounters();
  const q = new QueueCounters(buf, 64);
  for (let i = 0; i < n; i++) {
    q.begin(i % 64, 1);
    q.end(i % 64, 4096, 0);
  }
  q.begin(0, 0);
  q.end(0, 0, 5);
  q.begin(1, 0);
  q.end(1, 0, 28);
  q.begin(2, 2); // a flush still in flight
  return buf;
}

describe('stats: histogram, counters, report, Prometheus text, sockets', function () {
  this.timeout(30_000);
  const cleanup = cleanupAfterEach();

  it('buckets tile the range in order, each within 1/32 of its value', () => {
    let prev = -1;
    for (let v = 0; v < 2 ** 34; v = v < 4096 ? v + 1 : Math.floor(v * 1.01)) {
      const b = bucketOf(v);
      const [lo, hi] = bucketRange(b);
      assert.ok(v >= lo && v < hi, `${v} outside bucket ${b} [${lo}, ${hi})`);
      assert.ok(b >= prev, `bucket order at ${v}`);
      assert.ok(hi - lo <= Math.max(1, lo / 32), `bucket ${b} [${lo}, ${hi}) wider than 1/32`);
      prev = b;
    }
    // Where bucketOf leaves 32-bit integer arithmetic.
    for (const v of [2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1]) {
      const [lo, hi] = bucketRange(bucketOf(v));
      assert.ok(v >= lo && v < hi, `${v} outside [${lo}, ${hi})`);
    }
    assert.strictEqual(bucketOf(2 ** 31) - bucketOf(2 ** 31 - 1), 1);
    assert.strictEqual(bucketOf(-5), 0);
    assert.strictEqual(bucketOf(2 ** 45), BUCKETS - 1);
  });

  it('percentiles agree with the exact ones within the bucket width', () => {
    const values = Array.from({ length: 20_000 }, (_, i) => Math.round(50 + ((i * 7919) % 20_000) ** 1.3));
    const h = new Float64Array(BUCKETS);
    for (const v of values) h[bucketOf(v)]!++;
    const sorted = [...values].sort((a, b) => a - b);
    for (const p of [50, 90, 99, 99.9, 100]) {
      const exact = sorted[Math.ceil((p / 100) * sorted.length) - 1] as number;
      const got = percentile(h, 0, p);
      assert.ok(Math.abs(got - exact) <= exact / 32, `p${p}: ${got} vs ${exact}`);
    }
    assert.ok(Number.isNaN(percentile(new Float64Array(BUCKETS), 0, 50)));
  });

  it('a queue\'s counters, read and summed by the other side', () => {
    const c = readCounters([someCounters(100), someCounters(50)]);
    assert.strictEqual(c.ops.write.count, 150);
    assert.strictEqual(c.ops.write.bytes, 150 * 4096);
    assert.strictEqual(c.ops.read.count, 4);
    assert.strictEqual(c.ops.read.errors, 4);
    assert.strictEqual(c.ops.read.bytes, 0);
    assert.deepStrictEqual(c.errnos, { 5: 2, 28: 2 });
    assert.strictEqual(c.inFlight, 2);
    assert.strictEqual(c.peakInFlight, 2);
    let n = 0;
    for (let i = BUCKETS; i < 2 * BUCKETS; i++) n += c.hist[i]!;
    assert.strictEqual(n, 150, 'every write is in the write histogram');
    const r = makeReport('/dev/ublkb9', 'nbd://h:1/', zeroCounters(c.at - 2000), zeroCounters(c.at - 1000), c);
    assert.strictEqual(r.total.ops.write.requests, 150);
    assert.ok(Math.abs(r.interval.ops.write.requestsPerS - 150) < 1e-9);
    assert.deepStrictEqual(r.errors, { EIO: 2, ENOSPC: 2 });
    assert.strictEqual(r.total.ops.discard.p50Us, null);
    assert.match(renderReport(r), /^write +150 +0\.6 +150 +0 /m);
  });

  it('the Prometheus text: valid lines, one label set each, cumulative buckets', () => {
    const text = renderMetrics(['device', '3'], readCounters([someCounters(10)]), [['connections', 'Open connections.', 2]]);
    const names = new Set<string>();
    for (const line of text.trimEnd().split('\n')) {
      if (line.startsWith('# HELP ') || line.startsWith('# TYPE ')) {
        names.add(line.split(' ')[2] as string);
        continue;
      }
      assert.match(line, /^netdisk_ublk_[a-z_]+\{device="3"(,[a-z]+="[^"]*")*\} [0-9.e+-]+$/, line);
    }
    assert.ok(names.has('netdisk_ublk_requests_total') && names.has('netdisk_ublk_connections'));
    assert.match(text, /^netdisk_ublk_requests_total\{device="3",op="write"\} 10$/m);
    assert.match(text, /^netdisk_ublk_request_errors_total\{device="3",errno="ENOSPC"\} 1$/m);
    const buckets = [...text.matchAll(/^netdisk_ublk_request_duration_seconds_bucket\{device="3",op="write",le="([^"]+)"\} (\d+)$/gm)];
    assert.ok(buckets.length > 5);
    for (let i = 1; i < buckets.length; i++) assert.ok(Number(buckets[i]![2]) >= Number(buckets[i - 1]![2]), 'buckets are cumulative');
    assert.strictEqual(buckets[buckets.length - 1]![1], '+Inf');
    assert.strictEqual(buckets[buckets.length - 1]![2], '10');
    assert.match(renderMetrics(['export', 'a"b\\c'], zeroCounters(0)), /export="a\\"b\\\\c"/);
  });

  it('the stats socket answers each line with a report whose interval runs from the last one; a long line closes it', async () => {
    const dir = tempDir(cleanup);
    const buf = someCounters(5);
    const sock = await StatsSocket.listen(path.join(dir, 's.sock'), {
      name: 'dev', detail: 'nbd://x/', start: zeroCounters(Date.now()), read: () => readCounters([buf]),
    });
    cleanup.add(() => sock.close());
    assert.strictEqual(fs.statSync(sock.path).mode & 0o777, 0o600);
    const c = await StatsClient.connect(sock.path);
    cleanup.add(() => c.close());
    const a = await c.ask();
    assert.strictEqual(a.total.ops.write.requests, 5);
    const q = new QueueCounters(buf, 64);
    q.begin(3, 1);
    q.end(3, 4096, 0);
    const b = await c.ask();
    assert.strictEqual(b.interval.ops.write.requests, 1);
    assert.strictEqual(b.total.ops.write.requests, 6);
    const hostile = net.connect(sock.path);
    const closed = new Promise((r) => hostile.on('close', r));
    hostile.on('error', () => undefined);
    hostile.write('x'.repeat(10_000));
    await closed;
    assert.strictEqual((await c.ask()).total.ops.write.requests, 6, 'the other client still works');
    // A client still connected (stats --watch) does not hold the daemon's shutdown up.
    await sock.close();
    await assert.rejects(c.ask(), /closed the stats socket|EPIPE|ECONNRESET/);
    assert.ok(!fs.existsSync(sock.path));
  });

  it('the metrics endpoint: GET /metrics on TCP and a unix socket; 404 elsewhere, 405 for POST', async () => {
    const dir = tempDir(cleanup);
    const buf = someCounters(7);
    const render = (): string => renderMetrics(['device', '0'], readCounters([buf]));
    const tcp = await MetricsServer.listen({ host: '127.0.0.1', port: 0 }, render);
    cleanup.add(() => tcp.close());
    const port = 'port' in tcp.where ? tcp.where.port : 0;
    const ok = await get({ host: '127.0.0.1', port, path: '/metrics' });
    assert.strictEqual(ok.status, 200);
    assert.match(ok.body, /^netdisk_ublk_requests_total\{device="0",op="write"\} 7$/m);
    assert.strictEqual((await get({ host: '127.0.0.1', port, path: '/' })).status, 404);
    assert.strictEqual((await get({ host: '127.0.0.1', port, path: '/metrics', method: 'POST' })).status, 405);
    const unix = await MetricsServer.listen({ path: path.join(dir, 'm.sock') }, render);
    cleanup.add(() => unix.close());
    const u = await get({ socketPath: path.join(dir, 'm.sock'), path: '/metrics' });
    assert.strictEqual(u.status, 200);
    assert.strictEqual(u.body, ok.body);
  });
});
