// A 256 MiB export used as an ext4 disk: mkfs through the device, fio writing and
// verifying a file on the filesystem, fsck of the server's image after the device is gone,
// and the data still there when the export is added again.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  MiB, assertKernelLogClean, assertNoDevices, deviceSuite, markKernelLog, ok, randomFile, run, sha256,
} from './helpers';

const EXPORT_BYTES = 256 * MiB;
// Modest on purpose: the test VM's emulated CPU moves a few MB/s through the device.
const FIO_BYTES = 64 * MiB;

interface FioJob {
  error: number;
  write: { io_bytes: number };
  read: { io_bytes: number };
}

function fioArgs(file: string, extra: string[]): string[] {
  return [
    '--name=netdisk-verify', `--filename=${file}`, `--size=${FIO_BYTES}`, '--rw=write', '--bs=128k',
    '--ioengine=libaio', '--iodepth=8', '--direct=1', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1',
    '--output-format=json', ...extra,
  ];
}

function fioJob(stdout: string): FioJob {
  // fio may print notes before its JSON.
  const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] };
  assert.strictEqual(json.jobs.length, 1);
  return json.jobs[0] as FioJob;
}

describe('device: 256 MiB ext4 with fio verify (real kernel)', function () {
  this.timeout(900_000);
  const env = deviceSuite();

  it('mkfs.ext4, fio --verify=crc32c, e2fsck of the server image, data intact after re-adding', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'ext4');
    const image = path.join(e.dir, 'disk.img');
    const server = await e.serve(image, { size: '256M' });
    let dev = await e.add(server.port);
    assert.strictEqual(dev.size, EXPORT_BYTES);

    await ok('mkfs.ext4', ['-q', '-F', '-L', 'netdisk', dev.device], { timeoutMs: 300_000 });
    const mnt = e.mountPoint();
    await e.mount(dev.device, mnt);

    // A file whose hash is known before it ever reaches the device.
    const ref = randomFile(path.join(e.dir, 'ref.bin'), 3 * MiB + 12345);
    await ok('cp', [path.join(e.dir, 'ref.bin'), path.join(mnt, 'ref.bin')]);

    const fioFile = path.join(mnt, 'fio.dat');
    const w = await run('fio', fioArgs(fioFile, []), { timeoutMs: 600_000 });
    assert.strictEqual(w.code, 0, `fio write+verify failed:\n${w.stderr}\n${w.stdout}`);
    const job = fioJob(w.stdout);
    assert.strictEqual(job.error, 0);
    assert.strictEqual(job.write.io_bytes, FIO_BYTES, 'fio wrote the whole file');
    assert.strictEqual(job.read.io_bytes, FIO_BYTES, 'fio read the whole file back to verify it');

    await e.umount(mnt);
    await e.del(dev.id);
    await assertNoDevices();

    // The device is gone; the filesystem on the server's image must be consistent.
    const fsck = await run('e2fsck', ['-f', '-n', image], { timeoutMs: 300_000 });
    assert.strictEqual(fsck.code, 0, `e2fsck -fn found problems (exit ${fsck.code}):\n${fsck.stdout}${fsck.stderr}`);

    // Add the same export again: a new device, a cold page cache, the same data.
    dev = await e.add(server.port);
    await e.mount(dev.device, mnt);
    const back = fs.readFileSync(path.join(mnt, 'ref.bin'));
    assert.strictEqual(back.length, ref.length);
    assert.strictEqual(sha256(back), sha256(ref), 'ref.bin after re-adding the export');
    // fio checks every block it wrote against the checksums in its headers.
    const v = await run('fio', fioArgs(fioFile, ['--verify_only=1']), { timeoutMs: 600_000 });
    assert.strictEqual(v.code, 0, `fio verify_only after re-adding failed:\n${v.stderr}\n${v.stdout}`);
    const vjob = fioJob(v.stdout);
    assert.strictEqual(vjob.error, 0);
    assert.strictEqual(vjob.read.io_bytes, FIO_BYTES, 'fio verified the whole file');
    await e.umount(mnt);
    await e.del(dev.id);
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });
});
