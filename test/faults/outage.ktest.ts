// The store, the network and the daemon fail while fio writes through the device and then
// verifies every block (crc32c); where a filesystem is involved, e2fsck checks the store's
// image at the end. Each test prints its timeline: the fault, the daemon's log, fio's
// progress.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  assertKernelLogClean, cli, cliOk, listDevices, markKernelLog, pidAlive, requireKernel, run, ublkNodes, waitFor,
} from '../device/helpers';
import { FaultProxy } from '../helpers/fault-proxy';
import { patternBuffer } from '../helpers/images';
import {
  FAULT_AT, FIO_BYTES, FIO_RATE, FaultEnv, MiB, STORE_SIZE, Timeline, addDevice, fioThroughStoreRestart, daemonLog, expectingKernelErrors, markDaemonLog, markFioProgress, mib, mounted,
  readDirect, serveStore, sleep, startFio, umountDelFsck, writeDirect,
} from './helpers';


function show(title: string, tl: Timeline): void {
  process.stdout.write(`      ${title}\n${tl.text('        ')}\n`);
}

function has(id: number, msg: RegExp): boolean {
  return daemonLog(id).some((l) => msg.test(l.msg));
}

describe('faults: store, network and daemon failures under fio (real kernel)', function () {
  this.timeout(600_000);
  let env: FaultEnv | undefined;
  let mark = '';

  before(function () {
    requireKernel(this);
  });
  beforeEach(function () {
    assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk devices exist before the test');
    const title = this.currentTest?.fullTitle() ?? 'fault';
    env = new FaultEnv(title);
    mark = markKernelLog(title);
  });
  afterEach(async function () {
    const e = env;
    env = undefined;
    await e?.cleanup();
  });

  it('the store killed (-9) mid-write and restarted 5 s later: fio finishes and verifies, e2fsck is clean', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const store = await e.store(STORE_SIZE);
    const dev = await addDevice(store.port);
    const mnt = await e.mkfsMount(dev.device);
    const out = await fioThroughStoreRestart(tl, store, dev, mnt, 5000);
    show('store kill -9, restarted after 5 s', tl);

    assert.ok(store.alive, `the restarted store died:\n${store.log()}`);
    assert.strictEqual(out.timedOut, false, 'fio hung');
    assert.strictEqual(out.code, 0, `fio failed:\n${out.stderr}\n${store.log()}`);
    assert.strictEqual(out.error, 0);
    assert.strictEqual(out.written, FIO_BYTES);
    assert.strictEqual(out.verified, FIO_BYTES, 'fio verified every block');
    assert.ok(has(dev.id, /connection to the store lost/), 'the daemon saw the store go');
    assert.ok(has(dev.id, /reconnected to the store/), 'the daemon reconnected');
    assert.deepStrictEqual(mounted(mnt), { rw: true }, 'the filesystem is still mounted read-write');
    await umountDelFsck(mnt, dev.id, store.image);
    await assertKernelLogClean(mark);
  });

  it('the network black-holed for 10 s (with --timeout 3: the stalled connection is replaced): no errors, e2fsck is clean', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const store = await e.store(STORE_SIZE);
    const proxy = await FaultProxy.start({ port: store.port });
    e.defer('close the proxy', () => proxy.close());
    const dev = await addDevice(proxy.port, ['--timeout', '3']);
    const mnt = await e.mkfsMount(dev.device);
    const fio = startFio(path.join(mnt, 'fio.dat'), { size: FIO_BYTES, rate: FIO_RATE, timeoutMs: 400_000 });
    tl.mark(`fio started on ext4 on ${dev.device}, through the proxy: write ${mib(FIO_BYTES)}, then verify`, fio.began);
    await fio.written(FAULT_AT);
    proxy.blackhole();
    tl.mark('network black hole: no byte moves either way, connections stay open');
    await sleep(10_000);
    proxy.forward();
    tl.mark('network back');
    const out = await fio.done;
    tl.mark(`fio ended: exit ${out.code}, error ${out.error}, ${mib(out.written)} written, ${mib(out.verified)} verified`);
    markFioProgress(tl, fio);
    markDaemonLog(tl, dev.id, tl.t0);
    show('network black hole for 10 s', tl);

    assert.strictEqual(out.timedOut, false, 'fio hung');
    assert.strictEqual(out.code, 0, `fio failed:\n${out.stderr}`);
    assert.strictEqual(out.verified, FIO_BYTES, 'fio verified every block');
    assert.ok(has(dev.id, /connection to the store lost/), 'the stall was noticed');
    assert.ok(has(dev.id, /reconnected to the store/), 'the daemon reconnected');
    assert.deepStrictEqual(mounted(mnt), { rw: true });
    await umountDelFsck(mnt, dev.id, store.image);
    await assertKernelLogClean(mark);
  });

  it('the store gone for longer than --fail-after: EIO reaches fio within the bound, nothing hangs, del works', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const failAfterS = 5;
    const store = await e.store(STORE_SIZE);
    const dev = await addDevice(store.port, ['--timeout', '3', '--fail-after', String(failAfterS)]);
    // The raw device: the errors go straight to fio, with no filesystem deciding what to do.
    const fio = startFio(dev.device, { size: FIO_BYTES, rate: FIO_RATE, timeoutMs: 120_000 });
    tl.mark(`fio started on ${dev.device} (raw): write ${mib(FIO_BYTES)}, then verify; --fail-after ${failAfterS}`, fio.began);
    await fio.written(FAULT_AT);
    const killed = Date.now();
    await expectingKernelErrors('the store is gone for longer than --fail-after', async () => {
      await store.kill9();
      tl.mark('store killed (kill -9), for good');
      const out = await fio.done;
      tl.mark(`fio ended: exit ${out.code}, error ${out.error} (${out.stderr.match(/err=\s*\d+/)?.[0] ?? ''}), ${mib(out.written)} written`);
      const failedAfter = Date.now() - killed;
      assert.strictEqual(out.timedOut, false, 'fio hung');
      assert.notStrictEqual(out.code, 0, 'fio should have failed');
      assert.strictEqual(out.error, 5, `fio's error is EIO (got ${out.error}):\n${out.stderr}`);
      // The bound: fail-after from the moment the connection was lost, plus the time the
      // emulated machine takes to notice and to end fio.
      assert.ok(failedAfter >= failAfterS * 1000 - 500, `fio failed ${failedAfter} ms after the store died, before fail-after`);
      assert.ok(failedAfter < failAfterS * 1000 + 15_000, `fio failed only ${failedAfter} ms after the store died`);

      // New I/O fails at once rather than waiting again.
      const dd = await run('dd', [`if=${dev.device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct'], { timeoutMs: 60_000 });
      tl.mark(`a new read: dd exit ${dd.code} after ${dd.ms} ms (${dd.stderr.split('\n')[0] ?? ''})`);
      assert.notStrictEqual(dd.code, 0);
      assert.match(dd.stderr, /Input\/output error/);
      assert.ok(dd.ms < 10_000, `a read after fail-after took ${dd.ms} ms`);

      const del = await cli(['del', String(dev.id)], { timeoutMs: 60_000 });
      tl.mark(`del: exit ${del.code} after ${del.ms} ms`);
      assert.strictEqual(del.code, 0, `del failed:\n${del.stderr}`);
      assert.ok(del.ms < 20_000, `del took ${del.ms} ms`);
      assert.ok(!fs.existsSync(dev.device), 'the device is still there');
      await waitFor('the daemon to exit', () => !pidAlive(dev.pid), 30_000);
    });
    markFioProgress(tl, fio);
    markDaemonLog(tl, dev.id, tl.t0);
    show(`store gone for good, --fail-after ${failAfterS}`, tl);
    assert.ok(has(dev.id, /store unreachable: requests now fail with EIO/));
    assert.deepStrictEqual(await listDevices(), []);
  });

  it('the daemon killed (-9) mid-fio, then `recover`: fio finishes and verifies, the filesystem stays mounted, e2fsck is clean', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const store = await e.store(STORE_SIZE);
    const dev = await addDevice(store.port);
    const mnt = await e.mkfsMount(dev.device);
    const fio = startFio(path.join(mnt, 'fio.dat'), { size: FIO_BYTES, rate: FIO_RATE, timeoutMs: 400_000 });
    tl.mark(`fio started on ext4 on ${dev.device}: write ${mib(FIO_BYTES)}, then verify`, fio.began);
    await fio.written(FAULT_AT);
    process.kill(dev.pid, 'SIGKILL');
    tl.mark(`daemon (pid ${dev.pid}) killed (kill -9)`);
    await waitFor('the daemon to die', () => !pidAlive(dev.pid), 30_000, 20);
    const waiting = (await listDevices()).find((d) => d.id === dev.id);
    tl.mark(`list: state ${waiting?.state ?? '?'}, daemon alive ${String(waiting?.daemonAlive)}, data path ${waiting?.dataPath ?? '?'}`);
    await sleep(3000); // the I/O waits meanwhile
    const rec = await cliOk(['recover', String(dev.id), '--json'], { timeoutMs: 120_000 });
    const info = JSON.parse(rec.stdout.trim().split('\n').pop() as string) as { pid: number; recovered: boolean };
    tl.mark(`recover ${dev.id}: new daemon pid ${info.pid}`);
    const out = await fio.done;
    tl.mark(`fio ended: exit ${out.code}, error ${out.error}, ${mib(out.written)} written, ${mib(out.verified)} verified`);
    markFioProgress(tl, fio);
    show('daemon kill -9, recover after 3 s', tl);

    assert.strictEqual(waiting?.state, 'quiesced', 'the device waits for a daemon');
    assert.strictEqual(info.recovered, true);
    assert.strictEqual(out.timedOut, false, 'fio hung');
    assert.strictEqual(out.code, 0, `fio failed:\n${out.stderr}`);
    assert.strictEqual(out.verified, FIO_BYTES, 'fio verified every block');
    assert.deepStrictEqual(mounted(mnt), { rw: true }, 'the filesystem is still mounted read-write');
    const live = (await listDevices()).find((d) => d.id === dev.id);
    assert.strictEqual(live?.state, 'live');
    assert.strictEqual(live?.pid, info.pid);
    // Zero copy (7.x, ring transport) or copy: the recovered daemon runs the device's own.
    assert.strictEqual(live?.dataPath, waiting?.dataPath, 'the data path after recover');
    assert.ok(daemonLog(dev.id).some((l) => l.msg === `data path: ${String(live?.dataPath)}`), 'the recovered daemon logs its data path');
    await umountDelFsck(mnt, dev.id, store.image);
    await assertKernelLogClean(mark);
  });
  it('the daemon killed (-9) and the store stopped, then `recover --fail-after 5`: recover takes the device, held and new reads fail with EIO, a store with another export is refused; the store back, I/O works and the data is intact', async function () {
    const e = env as FaultEnv;
    const tl = new Timeline();
    const failAfterS = 5;
    const store = await e.store(STORE_SIZE);
    const dev = await addDevice(store.port);
    const at = 4 * MiB;
    const data = patternBuffer(MiB, 41);
    const w = await writeDirect(dev.device, at, data, e.dir);
    assert.strictEqual(w.code, 0, `write failed: ${w.stderr}`);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the daemon to die', () => !pidAlive(dev.pid), 30_000, 20);
    await store.stop();
    tl.mark(`wrote ${mib(MiB)}; daemon (pid ${dev.pid}) killed (kill -9); store stopped`);

    await expectingKernelErrors('recover while the store is away, past --fail-after', async () => {
      // Issued while no daemon runs: the kernel holds it until a daemon takes the device.
      const held = readDirect(dev.device, at, 4096, e.dir);
      await sleep(2000); // for dd to start and issue it
      const rec = await cli(['recover', String(dev.id), '--fail-after', String(failAfterS), '--json'], { timeoutMs: 120_000 });
      tl.mark(`recover ${dev.id} --fail-after ${failAfterS}: exit ${rec.code}`);
      assert.strictEqual(rec.code, 0, `recover failed with the store away:\n${rec.stderr}`);
      const info = JSON.parse(rec.stdout.trim().split('\n').pop() as string) as { pid: number; recovered: boolean };
      assert.strictEqual(info.recovered, true);
      assert.strictEqual((await listDevices()).find((d) => d.id === dev.id)?.state, 'live', 'the device left the recovering state');
      const h = await held;
      tl.mark(`the held read: dd exit ${h.r.code} (${h.r.stderr.trim().split('\n')[0] ?? ''})`);
      assert.notStrictEqual(h.r.code, 0, 'the held read succeeded without a store');
      assert.match(h.r.stderr, /Input\/output error/);
      const fresh = await readDirect(dev.device, 0, 4096, e.dir);
      tl.mark(`a new read: dd exit ${fresh.r.code}`);
      assert.notStrictEqual(fresh.r.code, 0, 'a new read succeeded without a store');
      assert.match(fresh.r.stderr, /Input\/output error/);
      assert.ok(has(dev.id, /store unreachable: requests now fail with EIO/), 'the daemon said why the I/O fails');

      // Another export on the store's address (twice the size) is never used.
      const other = await serveStore(path.join(e.dir, 'other.img'), '128M', store.port);
      tl.mark('a store with another export (128 MiB) on the address');
      try {
        await waitFor('the daemon to refuse the other export', () => has(dev.id, /serves a different export/), 60_000);
        const refused = await readDirect(dev.device, at, 4096, e.dir);
        assert.notStrictEqual(refused.r.code, 0, 'a read was served by another export');
        assert.match(refused.r.stderr, /Input\/output error/);
      } finally {
        await other.stop();
      }
      const reason = daemonLog(dev.id).find((l) => /serves a different export/.test(l.msg))?.['reason'];
      assert.match(String(reason), /export size changed from 67108864 to 134217728 bytes/);
    });

    const after = markKernelLog('the store back after recover');
    await store.restart();
    tl.mark('the store restarted on its address');
    await waitFor('the daemon to connect to the store', () => has(dev.id, /^connected to the store$/), 60_000);
    const back = await readDirect(dev.device, at, MiB, e.dir);
    assert.strictEqual(back.r.code, 0, `read after the store came back: ${back.r.stderr}`);
    assert.ok(back.data.equals(data), 'the data written before the daemon died is not intact');
    const next = patternBuffer(64 * 1024, 42);
    assert.strictEqual((await writeDirect(dev.device, 8 * MiB, next, e.dir)).code, 0);
    assert.ok((await readDirect(dev.device, 8 * MiB, next.length, e.dir)).data.equals(next), 'a new write did not read back');
    tl.mark('I/O works again: the old data read back intact, a new write read back');
    markDaemonLog(tl, dev.id, tl.t0);
    show(`daemon kill -9 and store stopped, recover --fail-after ${failAfterS}, store back`, tl);
    await cliOk(['del', String(dev.id)], { timeoutMs: 120_000 });
    await assertKernelLogClean(after);
  });
});
