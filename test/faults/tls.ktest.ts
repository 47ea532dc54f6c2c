// The device over nbds:// (X.509, the store's certificate checked against its CA and its
// address) and over nbd+unix://, on the real kernel: ext4 with fio writing and verifying
// while the store is killed and restarted. The restarted store requires TLS too, so the
// device can only come back through a fresh TLS handshake with the same checks.
import * as assert from 'assert';
import * as path from 'path';
import { assertKernelLogClean, listDevices, markKernelLog, requireKernel } from '../device/helpers';
import { makePki } from '../helpers/tls';
import {
  FIO_BYTES, FaultEnv, STORE_SIZE, Timeline, addDevice, daemonSaid, fioThroughStoreRestart, readDirect, umountDelFsck, writeDirect,
} from './helpers';

describe('faults: the device over nbds:// and nbd+unix:// (real kernel)', function () {
  this.timeout(600_000);
  let env: FaultEnv | undefined;
  let mark = '';

  before(function () {
    requireKernel(this);
  });
  beforeEach(function () {
    env = new FaultEnv(this.currentTest?.fullTitle() ?? 'tls');
    mark = markKernelLog(this.currentTest?.fullTitle() ?? 'tls');
  });
  afterEach(async function () {
    const e = env;
    env = undefined;
    await e?.cleanup();
  });

  it('nbds:// with X.509: ext4 + fio verify while the store is killed and restarted; a fresh TLS handshake, nothing lost', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const pki = makePki(path.join(e.dir, 'pki'));
    const store = await e.store(STORE_SIZE, undefined, ['--tls', 'require', '--tls-certificates', pki.serverDir]);
    const uri = `nbds://127.0.0.1:${store.port}/?tls-certificates=${pki.caOnlyDir}`;
    const dev = await addDevice(uri);
    const listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.strictEqual(listed?.remote, uri, 'list shows the URI');
    const mnt = await e.mkfsMount(dev.device);
    const out = await fioThroughStoreRestart(tl, store, dev, mnt, 2000, ` over ${uri}`);
    process.stdout.write(`${tl.text('        ')}\n`);
    assert.strictEqual(out.code, 0, `fio failed:\n${out.stderr}\n${store.log()}`);
    assert.strictEqual(out.error, 0);
    assert.strictEqual(out.verified, FIO_BYTES, 'fio verified every block');
    assert.ok(daemonSaid(dev.id, /reconnected to the store/), 'the daemon reconnected');
    await umountDelFsck(mnt, dev.id, store.image);
    await assertKernelLogClean(mark);
  });

  it('nbd+unix://: data written, the store restarted on the same socket, the data read back', async function () {
    const e = env as FaultEnv;
    const sock = path.join(e.dir, 'store.sock');
    const store = await e.store('16M', undefined, ['--listen', `unix:${sock}`]);
    const uri = `nbd+unix:///?socket=${sock}`;
    const dev = await addDevice(uri);
    assert.strictEqual((await listDevices()).find((d) => d.id === dev.id)?.remote, uri);
    const data = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    assert.strictEqual((await writeDirect(dev.device, 8 * 1024 * 1024, data, e.dir)).code, 0);
    await store.kill9(); // leaves the socket file behind: the restart replaces it
    await store.restart();
    const back = await readDirect(dev.device, 8 * 1024 * 1024, data.length, e.dir);
    assert.strictEqual(back.r.code, 0, back.r.stderr);
    assert.ok(back.data.equals(data), 'the data read back differs');
    assert.ok(daemonSaid(dev.id, /reconnected to the store/), 'the daemon reconnected');
    await assertKernelLogClean(mark);
  });
});
