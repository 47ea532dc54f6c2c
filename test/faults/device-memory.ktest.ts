// The daemon's memory against a hostile store, through the real device: whatever the store
// sends (replies for 32 MiB reads trickling in 1 KiB pieces, a reply stream that never
// ends, replies for cookies nobody asked for, a chunk announced as 4 GiB), the daemon's
// peak RSS (VmHWM) stays what it held before the load plus its read buffers (queues x
// depth x max-io, the device's own configuration) plus a constant, while fio keeps
// reading through /dev/ublkbN. The store is scripted (test/helpers/fake-nbd.ts) and lives
// in this process; every flood is cut by the daemon, which reconnects and resends, so
// fio's reads all succeed and a read afterwards returns the store's bytes.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { pidAlive } from '../device/helpers';
import { CMD, type Hostile } from '../helpers/fake-nbd';
import { MiB, daemonLog, readDirect, scriptedStoreDevice, sleep, startFio, type FioOutcome } from './helpers';

const MAX_IO = 32 * MiB;
const DEPTH = 4;
const QUEUES = 1;
const SIZE = 4 * MAX_IO;
// The daemon's own needs beyond its read buffers: the JS heaps of the main thread and the
// queue worker, the reconnecting client's state. Far below one more copy of the data in flight.
const CONSTANT_MIB = 64;
const BUFFERS_MIB = (QUEUES * DEPTH * MAX_IO) / MiB;

function status(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m, `no ${field} for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/** Sets the process's peak RSS back to its current RSS (proc(5), clear_refs "5"). */
function resetPeak(pid: number): void {
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

describe('faults: the daemon\'s memory against a hostile store, through the device (real kernel)', function () {
  this.timeout(600_000);
  // A trickled 32 MiB reply waits behind the others on the connection: no timeout cuts it.
  const sd = scriptedStoreDevice(SIZE, 23, ['--queues', String(QUEUES), '--depth', String(DEPTH), '--max-io', '32M', '--timeout', '0']);
  before(async function () {
    // The block layer caps requests at 1280 KiB (max_sectors_kb) unless told otherwise; up
    // to max-io (max_hw_sectors_kb) is the administrator's choice, and the test's.
    // Never a synchronous write: on 7.x it freezes the queue until the requests in flight
    // complete (queue_limits_commit_update_frozen), and the store answering them runs on
    // this process's event loop (seen: the test blocked in the write for good).
    await fs.promises.writeFile(`/sys/block/${path.basename(sd.dev.device)}/queue/max_sectors_kb`, String(MAX_IO / 1024));
  });

  afterEach(function () {
    if (sd.store) {
      sd.store.disarm();
      sd.store.trickle = 0;
    }
    assert.ok(pidAlive(sd.dev.pid), 'the daemon died');
  });

  /** fio reading the whole device twice, DEPTH reads of MAX_IO in flight. */
  function readLoad(): Promise<FioOutcome> {
    return startFio(sd.dev.device, {
      size: SIZE, bs: '32M', iodepth: DEPTH, timeoutMs: 480_000,
      extra: ['--rw=read', '--verify=0', '--do_verify=0', '--loops=2'],
    }).done;
  }

  /** Runs fn under the read load; returns the daemon's peak RSS over what it held before. */
  async function peakDuring(what: string, fn: (load: Promise<FioOutcome>) => Promise<void>): Promise<{ before: number; peak: number }> {
    resetPeak(sd.dev.pid);
    const before = status(sd.dev.pid, 'VmRSS');
    const load = readLoad();
    await fn(load);
    const out = await load;
    const peak = status(sd.dev.pid, 'VmHWM');
    process.stdout.write(`      ${what}: daemon RSS ${before.toFixed(0)} MiB before, peak ${peak.toFixed(0)} MiB`
      + ` (bound ${(before + BUFFERS_MIB + CONSTANT_MIB).toFixed(0)} MiB); longest request ${sd.store.longest / MiB} MiB, ${(sd.store.flooded / MiB).toFixed(0)} MiB flooded\n`);
    assert.strictEqual(out.timedOut, false, 'fio hung');
    assert.strictEqual(out.code, 0, `fio's reads failed:\n${out.stderr}`);
    assert.strictEqual(out.verified, 2 * SIZE, 'fio read the whole device twice');
    return { before, peak };
  }

  async function assertReadsStore(offset: number, length: number): Promise<void> {
    const { data, r } = await readDirect(sd.dev.device, offset, length, sd.scratch);
    assert.strictEqual(r.code, 0, `dd read failed: ${r.stderr}`);
    assert.ok(data.equals(sd.store.disk.subarray(offset, offset + length)), 'the device returned other bytes than the store holds');
  }

  it('replies to 32 MiB reads trickling in 1 KiB pieces: peak RSS within depth x max-io plus a constant', async function () {
    sd.store.trickle = 1024;
    const m = await peakDuring('trickle', async () => undefined);
    assert.strictEqual(sd.store.longest, MAX_IO, 'the kernel sent reads of max-io');
    assert.ok(m.peak <= m.before + BUFFERS_MIB + CONSTANT_MIB,
      `peak ${m.peak.toFixed(0)} MiB over ${m.before.toFixed(0)} MiB + ${BUFFERS_MIB} MiB of buffers + ${CONSTANT_MIB} MiB`);
    await assertReadsStore(SIZE - MAX_IO, MAX_IO);
  });

  const floods: Hostile[] = ['endless', 'unasked-cookies', 'huge-length'];
  for (const act of floods) {
    it(`${act} on reads under load, again and again: the daemon cuts each, resends, and its peak RSS stays within the bound`, async function () {
      const t = Date.now();
      const flooded = sd.store.flooded;
      let floodsSent = 0;
      const m = await peakDuring(act, async (load) => {
        let over = false;
        void load.then(() => { over = true; });
        // Each armed flood catches the next read; the daemon's reconnect resends it.
        while (!over && floodsSent < 4) {
          await Promise.race([sd.store.arm(act, (r) => r.type === CMD.READ).then(() => { floodsSent++; }), load]);
          await sleep(200);
        }
      });
      sd.store.disarm();
      assert.ok(floodsSent >= 1, 'no flood was sent');
      assert.ok(daemonLog(sd.dev.id).some((l) => l.time >= t && /reconnected to the store/.test(l.msg)), 'the daemon reconnected');
      assert.ok(m.peak <= m.before + BUFFERS_MIB + CONSTANT_MIB,
        `peak ${m.peak.toFixed(0)} MiB over ${m.before.toFixed(0)} MiB + ${BUFFERS_MIB} MiB of buffers + ${CONSTANT_MIB} MiB, with ${((sd.store.flooded - flooded) / MiB).toFixed(0)} MiB flooded`);
      await assertReadsStore(0, MAX_IO);
    });
  }
});
