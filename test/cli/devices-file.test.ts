// The devices file (/etc/netdisk-ublk/devices, like nbd-client's nbdtab): each line becomes
// the DeviceConfig add's command line would make, and every mistake is named by file and line.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { DEVICE_DEFAULTS } from '../../src/device/config';
import { parseDevices } from '../../src/cli/devices-file';
import { tempDir } from '../helpers/images';
import { cleanupAfterEach, run } from '../helpers/procs';
import { cliPath } from '../helpers/serve';
import { repoRoot } from '../helpers/vm';

const F = '/etc/netdisk-ublk/devices';

describe('cli: the devices file', function () {
  this.timeout(60_000);

  it('parses ids, stores, options; skips comments and blank lines', () => {
    const text = [
      '# ID  STORE  OPTIONS',
      '',
      '0   nbd://store.example/disk      queues=2,timeout=10   # the main disk',
      '  7 192.0.2.1:10810 export=scratch,fail-after=0,max-io=1M,depth=64',
      '12  nbd+unix:///d?socket=../run/nbd.sock',
      '13  nbd://store.example/m  metrics=:9100',
      '14  nbd://store.example/n  depth=8,metrics=unix:../run/14.metrics.sock',
      '15  nbd://store.example/z  transport=ring,zero-copy=off',
    ].join('\n');
    const devs = parseDevices(text, F);
    assert.deepStrictEqual(devs.map((d) => [d.id, d.line]), [[0, 3], [7, 4], [12, 5], [13, 6], [14, 7], [15, 8]]);
    const [a, b, c, m, n, z] = devs;
    assert.deepStrictEqual([z?.config.transport, z?.config.zeroCopy], ['ring', 'off']);
    assert.strictEqual(a?.config.zeroCopy, 'auto');
    assert.strictEqual(a?.config.metrics, undefined);
    assert.deepStrictEqual(m?.config.metrics, { host: '127.0.0.1', port: 9100 });
    // Like the URI's files, a metrics socket is relative to the file.
    assert.deepStrictEqual(n?.config.metrics, { path: '/etc/run/14.metrics.sock' });
    assert.strictEqual(n?.config.depth, 8);
    assert.deepStrictEqual({ ...a?.config, remote: undefined }, { ...DEVICE_DEFAULTS, queues: 2, timeoutMs: 10_000, remote: undefined });
    assert.strictEqual(a?.config.remote.host, 'store.example');
    assert.strictEqual(a?.config.remote.port, 10809);
    assert.strictEqual(a?.config.remote.exportName, 'disk');
    assert.strictEqual(b?.config.remote.exportName, 'scratch');
    assert.strictEqual(b?.config.remote.port, 10810);
    assert.strictEqual(b?.config.failAfterMs, 0);
    assert.strictEqual(b?.config.maxIoBufBytes, 1 << 20);
    assert.strictEqual(b?.config.depth, 64);
    // A socket path is relative to the file, not to where add runs.
    assert.strictEqual(c?.config.remote.socket, '/etc/run/nbd.sock');
  });

  it('contrib/devices.example parses as it reads', () => {
    const file = path.join(repoRoot(), 'contrib', 'devices.example');
    const devs = parseDevices(fs.readFileSync(file, 'utf8'), file);
    assert.deepStrictEqual(devs.map((d) => [d.id, d.config.queues, d.config.metrics]), [[0, 2, { host: '127.0.0.1', port: 9100 }], [1, 1, undefined]]);
  });

  const bad: Array<[string, RegExp]> = [
    ['0', /^\/etc\/netdisk-ublk\/devices:1: expected "ID STORE \[OPTIONS\]", got "0"$/],
    ['x h:1', /:1: the device ID must be a whole number, not "x"$/],
    ['1 h:1\n\n1 h:2', /:3: device 1 is listed twice \(line 1 too\)$/],
    ['0 h:99999', /:1: .*invalid port "99999"/],
    ['0 h:0', /:1: port 0 is not valid$/],
    ['0 nbds://h/?tls-frob=1', /:1: unknown query parameter "tls-frob"/],
    ['0 h:1 queues=99', /:1: queues must be between 1 and 64, not 99$/],
    ['0 h:1 depth', /:1: option "depth" is not NAME=VALUE$/],
    ['0 h:1 colour=blue', /:1: unknown option "colour" \(queues, depth, max-io, timeout, fail-after, transport, zero-copy, metrics, export\)$/],
    ['0 h:1 zero-copy=on', /:1: zero-copy must be one of auto, off, not "on"$/],
    ['0 h:1 metrics=9100', /:1: metrics needs a port: HOST:PORT, :PORT or unix:PATH, not "9100"$/],
    ['0 h:1 metrics=unix:', /:1: metrics unix: needs a PATH$/],
    ['0 h:1 metrics=:1,metrics=:2', /:1: option metrics is given twice$/],
    ['0 h:1 queues=1,queues=2', /:1: option queues is given twice$/],
    ['0 nbd://h/a export=b', /:1: export=b and the URI's export "a" differ$/],
    ['0 h:1 queues=2 depth=4', /:1: .*options are one comma-separated field/],
    ['0 h:1 max-io=3x', /:1: max-io: /],
  ];
  for (const [text, re] of bad) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      assert.throws(() => parseDevices(text, F), (err: Error) => {
        assert.match(err.message, re);
        assert.ok(err.message.startsWith(`${F}:`), err.message);
        return true;
      });
    });
  }

  describe('add --all-from / --from', () => {
    const cleanup = cleanupAfterEach();
    const add = (args: string[]) => run(process.execPath, [cliPath(), 'add', ...args], {
      env: { ...process.env, NETDISK_RUN_DIR: tempDir(cleanup) },
    });

    it('a bad line: exit 2, the file and line named, nothing started', async () => {
      const dir = tempDir(cleanup);
      const file = path.join(dir, 'devices');
      fs.writeFileSync(file, '0 127.0.0.1:1\n1 127.0.0.1:2 depth=0\n');
      const r = await add(['--all-from', file]);
      assert.strictEqual(r.code, 2, r.stderr);
      assert.strictEqual(r.stderr, `netdisk-ublk add: ${file}:2: depth must be between 1 and 4096, not 0\n`);
    });

    it('a missing file: exit 1 naming it; --from needs --id; settings come from the file only', async () => {
      const r = await add(['--all-from', '/nonexistent/devices']);
      assert.strictEqual(r.code, 1);
      assert.strictEqual(r.stderr, 'netdisk-ublk add: cannot read the devices file /nonexistent/devices: ENOENT\n');
      const n = await add(['--from', '/nonexistent/devices']);
      assert.strictEqual(n.code, 2);
      assert.match(n.stderr, /--from FILE needs --id N/);
      const q = await add(['--from', '/nonexistent/devices', '--id', '0', '--queues', '2']);
      assert.strictEqual(q.code, 2);
      assert.match(q.stderr, /--from takes the device's settings from the file, not --queues/);
      const m = await add(['--from', '/nonexistent/devices', '--id', '0', '--metrics', ':9100']);
      assert.strictEqual(m.code, 2);
      assert.match(m.stderr, /--from takes the device's settings from the file, not --metrics/);
      const u = await add(['--from', F, '--id', '0', '--all-from', F]);
      assert.strictEqual(u.code, 2);
    });
  });
});
