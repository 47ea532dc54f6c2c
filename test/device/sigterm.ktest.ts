// Stopping a device under load and after its daemon was killed: SIGTERM while fio hammers
// the raw device must end the daemon cleanly and fail fio's outstanding I/O instead of
// hanging it; a daemon killed with -9 leaves a device that `del` must still remove.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  CLI, HOST, RUN_DIR, assertKernelLogClean, assertNoDevices, daemonLog, expectingKernelErrors, deviceSuite, listDevices, markKernelLog, pidAlive,
  readRecord, start, waitFor,
} from './helpers';

// Bounds, not measurements: generous for the emulated CPU of the test VM, but below the
// daemon's own 30 s fallback of terminating queue threads that do not end by themselves.
const STOP_BOUND_MS = 20_000;
const FIO_RUNTIME_S = 60;

function writeIos(id: number): number {
  // /sys/block/<dev>/stat: field 5 is writes completed.
  const f = fs.readFileSync(`/sys/block/ublkb${id}/stat`, 'utf8').trim().split(/\s+/);
  return Number(f[4]);
}

describe('device: stopping under load and after kill -9 (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();

  it('SIGTERM while fio writes: the daemon exits cleanly, fio fails fast, nothing is left', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'sigterm');
    const server = await e.serve(path.join(e.dir, 'busy.img'), { size: '64M' });
    const dev = await e.add(server.port);
    const listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.strictEqual(listed?.pid, dev.pid, '`list --json` names the daemon add reported');
    assert.strictEqual(listed?.state, 'live');
    assert.strictEqual(listed?.daemonAlive, true);
    const rec = readRecord(dev.id);
    assert.strictEqual(rec?.pid, dev.pid, 'the state record names the daemon');
    assert.strictEqual(rec?.logFile, path.join(RUN_DIR, `${dev.id}.log`), 'the state record names the log');
    assert.ok(fs.existsSync(path.join(RUN_DIR, `${dev.id}.log`)), 'the daemon log exists');

    const fio = start('fio', [
      '--name=busy', `--filename=${dev.device}`, '--direct=1', '--rw=randwrite', '--bs=4k', '--ioengine=libaio',
      '--iodepth=16', '--time_based', `--runtime=${FIO_RUNTIME_S}`, '--output-format=json',
    ], { timeoutMs: (FIO_RUNTIME_S + 60) * 1000 });
    await waitFor('fio to write through the device', () => fio.done || writeIos(dev.id) > 100, 60_000);
    assert.ok(!fio.done, `fio ended before the daemon was stopped:\n${fio.stderr()}`);

    // Writes that reach the disk while STOP_DEV removes it fail, and the block layer logs
    // each as "I/O error, dev ublkbN": fio's, and expected. The bracket tells the host-side
    // kernel log check (test/kernel.test.ts) so.
    const t0 = Date.now();
    const { stopMs, r } = await expectingKernelErrors('fio writing while SIGTERM stops the device', async () => {
      process.kill(dev.pid, 'SIGTERM');
      const ms = await waitFor('the daemon to exit after SIGTERM', () => !pidAlive(dev.pid), STOP_BOUND_MS, 50);
      return { stopMs: ms, r: await fio.result };
    });
    const fioMs = Date.now() - t0;
    assert.ok(!r.timedOut, 'fio hung on the stopped device');
    assert.ok(fioMs < STOP_BOUND_MS + 10_000, `fio took ${fioMs} ms to notice the device was gone`);
    assert.notStrictEqual(r.code, 0, `fio ran to completion on a stopped device:\n${r.stdout}`);
    assert.match(r.stdout + r.stderr, /Input\/output error|No such device|error=/, 'fio reports I/O errors');

    const log = daemonLog(dev.id);
    assert.ok(log.some((l) => l.msg === 'stopping the device' && l.signal === 'SIGTERM'), 'the daemon logged the signal');
    assert.strictEqual(log[log.length - 1]?.msg, 'exiting', `the daemon's last log line:\n${JSON.stringify(log.slice(-3))}`);
    assert.deepStrictEqual(log.filter((l) => l.level >= 50), [], 'the daemon logged errors');
    assert.ok(!fs.existsSync(dev.device), `${dev.device} is left after the daemon exited`);
    await assertNoDevices();
    this.test!.title += ` [daemon gone ${stopMs} ms, fio ${fioMs} ms after SIGTERM]`;
    // fio's failed writes are the only complaint allowed.
    await assertKernelLogClean(mark, new RegExp(`^\\[[ \\d.]+\\] I/O error, dev ublkb${dev.id}, sector \\d+ op 0x1:\\(WRITE\\)`));
  });

  it('add --foreground: SIGTERM ends the daemon with exit code 0 and removes the device', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'foreground');
    const server = await e.serve(path.join(e.dir, 'fg.img'), { size: '16M' });
    const fg = start(process.execPath, [CLI, 'add', '--remote', `${HOST}:${server.port}`, '--foreground', '--json'], {
      timeoutMs: 300_000, env: { ...process.env, NETDISK_LOG_FORMAT: 'json' },
    });
    await waitFor('the foreground daemon to print its device', () => fg.done || /"device"/.test(fg.stdout()), 120_000);
    assert.ok(!fg.done, `add --foreground exited early:\n${fg.stderr()}`);
    const devs = await listDevices();
    assert.strictEqual(devs.length, 1);
    const id = (devs[0] as { id: number }).id;
    assert.strictEqual(devs[0]?.pid, fg.pid, 'the foreground process is the daemon');
    fg.signal('SIGTERM');
    await waitFor('the foreground daemon to exit', () => fg.done, STOP_BOUND_MS, 50);
    const r = await fg.result;
    assert.strictEqual(r.code, 0, `exit code after SIGTERM:\n${r.stderr}`);
    assert.match(r.stdout, new RegExp(`"device":"/dev/ublkb${id}"`), 'it printed its device as JSON');
    assert.ok(!fs.existsSync(`/dev/ublkb${id}`));
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });

  it('kill -9 leaves the device behind; del ID removes it', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'kill9');
    const server = await e.serve(path.join(e.dir, 'k9.img'), { size: '16M' });
    const dev = await e.add(server.port);
    process.kill(dev.pid, 'SIGKILL');
    await waitFor('the daemon to die', () => !pidAlive(dev.pid), 10_000, 50);
    let listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.ok(listed, '`list` still shows the orphaned device');
    assert.strictEqual(listed.daemonAlive, false, '`list` knows the daemon is gone');
    // The kernel notices a dead daemon on its own schedule (a periodic monitor on 6.12).
    await waitFor('the kernel to stop counting the device as served', async () => {
      listed = (await listDevices()).find((d) => d.id === dev.id);
      return listed?.state !== 'live';
    }, 30_000, 500);
    assert.ok(listed, '`list` still shows the orphaned device');
    assert.ok(fs.existsSync(`/dev/ublkc${dev.id}`), 'the orphaned device is still there for del to remove');

    const t0 = Date.now();
    const r = await e.del(dev.id);
    assert.match(r.stdout, new RegExp(`deleted /dev/ublkb${dev.id}`));
    assert.ok(Date.now() - t0 < STOP_BOUND_MS + 10_000, 'del of an orphaned device took too long');
    assert.ok(!fs.existsSync(`/dev/ublkc${dev.id}`), `/dev/ublkc${dev.id} is left`);
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });
});
