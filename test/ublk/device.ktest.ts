// ublk devices on the real kernel: a RAM disk served through UblkQueue, driven by
// dd, blockdev and blkdiscard in child processes. Needs /dev/ublk-control and root:
// run under the VM harness, e.g.
//   test/vm/run.sh -- npx mocha --no-config --timeout 600000 'dist/test/ublk/*.ktest.js'
import * as assert from 'assert';
import { spawn } from 'child_process';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import {
  SECTOR_SHIFT,
  UBLK_IO_RES_ABORT,
  UblkAttr,
  UblkFlag,
  UblkState,
  blockDevPath,
  charDevPath,
  flagNames,
} from '../../src/ublk/constants';
import { UblkCtrl, ublkAvailable } from '../../src/ublk/ctrl';
import { UblkError } from '../../src/ublk/errors';
import { UblkQueue, closeCharDev, openCharDev } from '../../src/ublk/queue';
import type { DevInfo, UblkParams } from '../../src/ublk/structs';
import { newStats, ramHandler, type RamStats } from './ram-target';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const MAX_IO = 256 * 1024;

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs a command without blocking the event loop: the loop must keep serving the
 * queue that the command's I/O goes through (a spawnSync would deadlock).
 */
function run(cmd: string, args: string[], input?: Buffer): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

async function ok(cmd: string, args: string[], input?: Buffer): Promise<Buffer> {
  const r = await run(cmd, args, input);
  assert.strictEqual(r.code, 0, `${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** Kernel log lines that mean something went wrong in the kernel. */
const BAD_KERNEL_LOG = /WARNING|BUG|Oops|Call Trace|hung_task|blocked for more than|I\/O error|ublk.*(fail|error|warn)/i;

async function kernelLog(): Promise<string[]> {
  return (await ok('dmesg', [])).toString().split('\n');
}

function params(sizeBytes: number, maxIoBytes: number): UblkParams {
  return {
    basic: {
      // A write-back cache with FUA, so FLUSH and FUA reach the target too.
      attrs: UblkAttr.VOLATILE_CACHE | UblkAttr.FUA,
      logicalBsShift: 9,
      physicalBsShift: 12,
      ioOptShift: 12,
      ioMinShift: 9,
      maxSectors: maxIoBytes >> SECTOR_SHIFT,
      chunkSectors: 0,
      devSectors: BigInt(sizeBytes >> SECTOR_SHIFT),
      virtBoundaryMask: 0n,
    },
    discard: {
      discardAlignment: 0,
      discardGranularity: 4096,
      maxDiscardSectors: 8 * MiB >> SECTOR_SHIFT,
      maxWriteZeroesSectors: 8 * MiB >> SECTOR_SHIFT,
      maxDiscardSegments: 1,
    },
  };
}

function ioctlEncoded(info: DevInfo): boolean {
  return (info.flags & UblkFlag.CMD_IOCTL_ENCODE) !== 0n;
}

interface QueueWorker {
  worker: Worker;
  /** Resolves once the queue has fetched its tags. */
  started: Promise<void>;
  /** Resolves with the worker's counters once its queue saw every tag aborted. */
  stopped: Promise<RamStats>;
  /** Resolves with the exit code. Listened for from the start: a worker that exits drains
   * its last messages and emits 'exit' in the same tick, before a later listener exists. */
  exited: Promise<number>;
}

/** Runs queue `qid` of the device in a worker_thread (ram-queue-worker.ts). */
function queueWorker(info: DevInfo, qid: number, charFd: number, disk: SharedArrayBuffer, ioctlEncode = ioctlEncoded(info)): QueueWorker {
  const worker = new Worker(path.join(__dirname, 'ram-queue-worker.js'), {
    workerData: { devId: info.devId, qid, depth: info.queueDepth, maxIoBufBytes: info.maxIoBufBytes, charFd, ioctlEncode, disk },
  });
  // An error or an exit before the awaited message fails the wait; later ones are
  // expected (stopped workers exit) and ignored.
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  const failed = new Promise<never>((_, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`queue worker ${qid} exited with ${code}`)));
  });
  failed.catch(() => undefined);
  const started = Promise.race([
    new Promise<void>((resolve) => worker.on('message', (m: { type: string }) => m.type === 'started' && resolve())),
    failed,
  ]);
  const stopped = Promise.race([
    new Promise<RamStats>((resolve) =>
      worker.on('message', (m: { type: string; stats: RamStats }) => m.type === 'stopped' && resolve(m.stats)),
    ),
    failed,
  ]);
  started.catch(() => undefined);
  stopped.catch(() => undefined);
  return { worker, started, stopped, exited };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls GET_DEV_INFO until the device reaches `state`. */
async function waitForState(ctrl: UblkCtrl, devId: number, state: number): Promise<DevInfo> {
  for (let i = 0; ; i++) {
    const info = await ctrl.getDevInfo(devId);
    if (info.state === state) return info;
    if (i > 600) throw new Error(`device ${devId} stuck in state ${info.state}, waiting for ${state}`);
    await sleep(50);
  }
}

describe('ublk device (real kernel)', function () {
  this.timeout(900_000);

  let ctrl: UblkCtrl;
  let logBefore = 0;

  before(async function () {
    if (!ublkAvailable()) {
      // Inside the test VM the driver must be there; elsewhere these tests cannot run.
      if (process.env.NETDISK_IN_VM === '1') throw new Error('/dev/ublk-control missing in the test VM');
      this.skip();
    }
    ctrl = await UblkCtrl.open();
    logBefore = (await kernelLog()).length;
  });

  after(async function () {
    if (ctrl === undefined) return;
    const fresh = (await kernelLog()).slice(logBefore - 1).filter((l) => BAD_KERNEL_LOG.test(l));
    assert.deepStrictEqual(fresh, [], 'the kernel log shows problems');
  });

  it('reports its features through GET_FEATURES', async () => {
    const features = await ctrl.getFeatures();
    assert.strictEqual(ctrl.features, features);
    assert.ok(ctrl.ioctlEncode, 'Linux >= 6.5 reports CMD_IOCTL_ENCODE');
    for (const f of ['URING_CMD_COMP_IN_TASK', 'USER_RECOVERY', 'USER_RECOVERY_REISSUE', 'CMD_IOCTL_ENCODE'] as const)
      assert.ok((features & UblkFlag[f]) !== 0n, `${f} in ${flagNames(features).join(',')}`);
    console.log(`      features 0x${features.toString(16)}: ${flagNames(features).join(' ')}`);
  });

  it('refuses commands for a device that does not exist', async () => {
    await assert.rejects(ctrl.getDevInfo(999_999), (err: unknown) => {
      assert.ok(err instanceof UblkError);
      assert.strictEqual(err.code, 'UBLK_NO_DEVICE');
      assert.strictEqual(err.errnoCode, 'ENODEV');
      assert.strictEqual(err.command, 'GET_DEV_INFO');
      return true;
    });
  });

  it('serves a RAM disk from this thread: write, read back, flush, discard, write zeroes, stop, delete', async () => {
    const info = await ctrl.addDev({ queues: 1, depth: 32, maxIoBufBytes: MAX_IO });
    const devId = info.devId;
    console.log(`      ADD_DEV: id ${devId}, flags 0x${info.flags.toString(16)} (${flagNames(info.flags).join(' ')})`);
    let fd = -1;
    let q: UblkQueue | undefined;
    let started = false;
    try {
      assert.strictEqual(info.nrHwQueues, 1);
      assert.strictEqual(info.queueDepth, 32);
      assert.strictEqual(info.maxIoBufBytes, MAX_IO);
      assert.strictEqual(info.state, UblkState.DEAD);
      assert.ok(ioctlEncoded(info), 'the kernel forces CMD_IOCTL_ENCODE on');
      assert.ok(fs.existsSync(charDevPath(devId)));

      await ctrl.setParams(devId, params(DISK_BYTES, MAX_IO));

      fd = openCharDev(devId);
      assert.throws(() => openCharDev(devId), (err: unknown) => err instanceof UblkError && err.code === 'UBLK_BUSY');
      q = new UblkQueue({ devId, qid: 0, depth: info.queueDepth, maxIoBufBytes: info.maxIoBufBytes, charFd: fd, ioctlEncode: true });
      const disk = Buffer.alloc(DISK_BYTES);
      const stats: RamStats = newStats();
      const queue = q;
      const stopped = new Promise<void>((resolve) => queue.start(ramHandler(queue, disk, stats, resolve)));

      // START_DEV returns after every tag is fetched and add_disk() is done; the
      // partition scan inside add_disk() reads through this queue, so it also shows
      // that the event loop keeps running while the command is pending.
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 1);
      await ctrl.startDev(devId);
      clearInterval(ticker);
      started = true;
      assert.ok(ticks > 0, 'the event loop ran during START_DEV');

      const live = await ctrl.getDevInfo(devId);
      assert.strictEqual(live.state, UblkState.LIVE);
      assert.strictEqual(live.ublksrvPid, process.pid);
      const p = await ctrl.getParams(devId);
      assert.strictEqual(p.basic?.devSectors, BigInt(DISK_BYTES >> SECTOR_SHIFT));
      assert.ok((p.devt?.diskMajor ?? 0) > 0, 'DEVT carries the disk numbers once started');
      await assert.rejects(ctrl.setParams(devId, params(DISK_BYTES, MAX_IO)), (err: unknown) => {
        assert.ok(err instanceof UblkError);
        assert.strictEqual(err.code, 'UBLK_PERMISSION', 'SET_PARAMS after START_DEV is EACCES');
        return true;
      });

      const dev = blockDevPath(devId);
      assert.strictEqual((await ok('blockdev', ['--getsize64', dev])).toString().trim(), String(DISK_BYTES));
      assert.strictEqual((await ok('blockdev', ['--getss', dev])).toString().trim(), '512');
      assert.strictEqual((await ok('blockdev', ['--getpbsz', dev])).toString().trim(), '4096');

      // While dd runs, this thread sleeps in epoll_wait with nothing else to wake
      // it (dd prints nothing and blocks on the device). Each request reaches us as
      // io_uring task_work, which must wake the thread so the CQE gets posted and
      // the ring fd turns readable; if it did not, dd would hang here.
      //
      // 6 MiB of random data at 5 MiB, O_DIRECT in 1 MiB blocks: each block is
      // split into 256 KiB requests (max_sectors), several tags at once.
      const pattern = randomBytes(6 * MiB);
      const writesBefore = stats.writes;
      await ok('dd', [`of=${dev}`, 'bs=1M', 'seek=5', 'iflag=fullblock', 'oflag=direct', 'status=none'], pattern);
      assert.ok(stats.writes - writesBefore >= 24, `split into >= 24 writes, got ${stats.writes - writesBefore}`);
      assert.ok(disk.subarray(5 * MiB, 11 * MiB).equals(pattern), 'the target got the data');

      const back = await ok('dd', [`if=${dev}`, 'bs=1M', 'skip=5', 'count=6', 'iflag=direct', 'status=none']);
      assert.ok(back.equals(pattern), 'read back what was written');

      // Unaligned to the 1 MiB blocks, through the page cache, then fsync: FLUSH.
      const small = randomBytes(12288);
      const flushesBefore = stats.flushes;
      await ok('dd', [`of=${dev}`, 'bs=4096', 'seek=777', 'conv=fsync,notrunc', 'status=none'], small);
      assert.ok(stats.flushes > flushesBefore, 'fsync reached the target as FLUSH');
      assert.ok(disk.subarray(777 * 4096, 777 * 4096 + small.length).equals(small));

      // FUA: O_DSYNC direct writes carry REQ_FUA when the queue advertises it.
      const fuaBefore = stats.fua;
      await ok('dd', [`of=${dev}`, 'bs=4096', 'seek=1000', 'count=1', 'oflag=direct,dsync', 'status=none'], randomBytes(4096));
      assert.ok(stats.fua > fuaBefore, 'O_DSYNC|O_DIRECT write reached the target with UBLK_IO_F_FUA');

      // DISCARD over part of the pattern.
      await ok('blkdiscard', ['-o', String(6 * MiB), '-l', String(2 * MiB), dev]);
      assert.deepStrictEqual(
        stats.discards.reduce((n, [, len]) => n + len, 0),
        2 * MiB,
        `discards ${JSON.stringify(stats.discards)}`,
      );
      assert.ok(stats.discards.every(([off, len]) => off >= 6 * MiB && off + len <= 8 * MiB));
      assert.ok(disk.subarray(6 * MiB, 8 * MiB).every((x) => x === 0));
      assert.ok(disk.subarray(5 * MiB, 6 * MiB).equals(pattern.subarray(0, MiB)), 'data next to the discard survives');

      // WRITE_ZEROES through BLKZEROOUT.
      await ok('blkdiscard', ['-z', '-o', String(9 * MiB), '-l', String(MiB), dev]);
      assert.strictEqual(stats.writeZeroes.reduce((n, [, len]) => n + len, 0), MiB);
      assert.ok(disk.subarray(9 * MiB, 10 * MiB).every((x) => x === 0));
      const after = await ok('dd', [`if=${dev}`, 'bs=1M', 'skip=5', 'count=6', 'iflag=direct', 'status=none']);
      assert.ok(after.equals(disk.subarray(5 * MiB, 11 * MiB)));
      assert.strictEqual(stats.other, 0);
      console.log(`      served ${stats.reads} reads, ${stats.writes} writes, ${stats.flushes} flushes, up to ${stats.maxBatch} requests per wake-up`);

      // STOP_DEV: /dev/ublkbN goes, every fetched tag completes with ABORT.
      await ctrl.stopDev(devId);
      started = false;
      await stopped;
      assert.strictEqual(UBLK_IO_RES_ABORT, -19);
      assert.ok(!q.running);
      assert.ok(!fs.existsSync(dev), `${dev} removed by STOP_DEV`);
      const dead = await ctrl.getDevInfo(devId);
      assert.strictEqual(dead.state, UblkState.DEAD);
      q.close();
      closeCharDev(fd);
      fd = -1;
      await ctrl.delDev(devId);
      assert.ok(!fs.existsSync(charDevPath(devId)), `${charDevPath(devId)} removed by DEL_DEV`);
      assert.ok(!fs.existsSync(`/sys/class/ublk-char/ublkc${devId}`));
      await assert.rejects(ctrl.getDevInfo(devId), (err: unknown) => err instanceof UblkError && err.code === 'UBLK_NO_DEVICE');
    } finally {
      // Best effort after a failure; DEL_DEV waits for the fd and the queue.
      if (started) await ctrl.stopDev(devId).catch(() => undefined);
      q?.close();
      if (fd >= 0) closeCharDev(fd);
      if (fs.existsSync(charDevPath(devId))) await ctrl.delDev(devId).catch(() => undefined);
    }
  });

  it('serves each queue from its own worker_thread', async () => {
    const info = await ctrl.addDev({ queues: 2, depth: 16, maxIoBufBytes: MAX_IO });
    const devId = info.devId;
    const fd = openCharDev(devId);
    const workers: QueueWorker[] = [];
    try {
      await ctrl.setParams(devId, params(DISK_BYTES, MAX_IO));
      const shared = new SharedArrayBuffer(DISK_BYTES);
      // Queue 1 uses the legacy I/O opcodes, which 6.12 still accepts
      // (CONFIG_BLKDEV_UBLK_LEGACY_OPCODES=y), queue 0 the encoded ones.
      for (let qid = 0; qid < info.nrHwQueues; qid++) workers.push(queueWorker(info, qid, fd, shared, qid === 0));
      await Promise.all(workers.map((w) => w.started));
      await ctrl.startDev(devId);

      const dev = blockDevPath(devId);
      const pattern = randomBytes(8 * MiB);
      // One writer per CPU: blk-mq maps each CPU to a hardware queue.
      const half = 4 * MiB;
      await Promise.all([
        ok('taskset', ['-c', '0', 'dd', `of=${dev}`, 'bs=1M', 'seek=0', 'iflag=fullblock', 'oflag=direct', 'status=none'], pattern.subarray(0, half)),
        ok('taskset', ['-c', String(info.nrHwQueues - 1), 'dd', `of=${dev}`, 'bs=1M', 'seek=4', 'iflag=fullblock', 'oflag=direct', 'status=none'], pattern.subarray(half)),
      ]);
      const back = await ok('dd', [`if=${dev}`, 'bs=1M', 'count=8', 'iflag=direct', 'status=none']);
      assert.ok(back.equals(pattern), 'read back what was written');
      assert.ok(Buffer.from(shared, 0, 8 * MiB).equals(pattern));

      await ctrl.stopDev(devId);
      const stats = await Promise.all(workers.map((w) => w.stopped));
      const writes = stats.map((st) => st.writes);
      console.log(`      ${info.nrHwQueues} queues; writes per queue: ${writes.join(', ')}`);
      assert.ok(writes.reduce((a, b) => a + b, 0) >= 32);
      if (info.nrHwQueues > 1) assert.ok(writes.every((n) => n > 0), 'every queue served writes');
      await Promise.all(workers.map((w) => w.exited));
    } finally {
      await Promise.all(workers.map((w) => w.worker.terminate()));
      await ctrl.stopDev(devId).catch(() => undefined);
      closeCharDev(fd);
      await ctrl.delDev(devId);
    }
    assert.ok(!fs.existsSync(charDevPath(devId)));
  });

  it('recovers a USER_RECOVERY device after its queue thread died', async () => {
    const info = await ctrl.addDev({ queues: 1, depth: 16, maxIoBufBytes: MAX_IO, flags: UblkFlag.USER_RECOVERY });
    const devId = info.devId;
    assert.ok((info.flags & UblkFlag.USER_RECOVERY) !== 0n);
    const dev = blockDevPath(devId);
    const shared = new SharedArrayBuffer(DISK_BYTES);
    let fd = openCharDev(devId);
    let w: QueueWorker | undefined;
    try {
      await ctrl.setParams(devId, params(DISK_BYTES, MAX_IO));
      w = queueWorker(info, 0, fd, shared);
      await w.started;
      await ctrl.startDev(devId);
      const first = randomBytes(2 * MiB);
      await ok('dd', [`of=${dev}`, 'bs=1M', 'iflag=fullblock', 'oflag=direct', 'status=none'], first);

      // The server goes away as a killed daemon would: its queue's thread (open and
      // polling) and its /dev/ublkcN fd. The worker's environment teardown must close the
      // ring (the addon's cleanup hook): its commands hold /dev/ublkcN too, and the
      // kernel quiesces the device, instead of removing it, when the queue's thread is gone
      // (6.12) or only once /dev/ublkcN is released by every holder (7.x).
      await w.worker.terminate();
      w = undefined;
      closeCharDev(fd);
      fd = -1;
      await waitForState(ctrl, devId, UblkState.QUIESCED);
      assert.ok(fs.existsSync(dev), `${dev} survives the dead server`);

      // START_USER_RECOVERY needs /dev/ublkcN released by every holder, the ring's
      // teardown finishing asynchronously.
      for (let i = 0; ; i++) {
        try {
          await ctrl.startUserRecovery(devId);
          break;
        } catch (err) {
          if (!(err instanceof UblkError && err.code === 'UBLK_BUSY') || i > 200) throw err;
          await sleep(50);
        }
      }
      fd = openCharDev(devId);
      w = queueWorker(info, 0, fd, shared);
      await w.started;
      await ctrl.endUserRecovery(devId);
      const live = await ctrl.getDevInfo(devId);
      assert.strictEqual(live.state, UblkState.LIVE);
      assert.strictEqual(live.ublksrvPid, process.pid);

      const back = await ok('dd', [`if=${dev}`, 'bs=1M', 'count=2', 'iflag=direct', 'status=none']);
      assert.ok(back.equals(first), 'the recovered device reads what was written before');
      const second = randomBytes(MiB);
      await ok('dd', [`of=${dev}`, 'bs=1M', 'seek=3', 'iflag=fullblock', 'oflag=direct', 'status=none'], second);
      assert.ok(Buffer.from(shared, 3 * MiB, MiB).equals(second));

      await ctrl.stopDev(devId);
      await w.stopped;
      await w.exited;
    } finally {
      if (w !== undefined) await w.worker.terminate();
      await ctrl.stopDev(devId).catch(() => undefined);
      if (fd >= 0) closeCharDev(fd);
      await ctrl.delDev(devId);
    }
    assert.ok(!fs.existsSync(charDevPath(devId)));
  });
});
