// The data path a device takes (src/device/data-path.ts), chosen at start-up by asking the
// kernel: zero copy (UBLK_F_AUTO_BUF_REG and io_uring send/receive from registered buffers)
// over the ring transport where the kernel has both, copy otherwise. CI boots two kernels:
// 6.12 has neither (copy), 7.x (7.2 and later) both (zero copy). The daemon's log line,
// `list --json` and the device's flags must agree, and bytes written in either mode must
// read back as written, from the device and from the store's image. (The stream transport
// runs copy on every kernel: features.ktest.ts checks that on its device.) `--zero-copy off`
// keeps a ring device in copy mode where zero copy would run, and says so. In zero copy the
// device also has UBLK_F_USER_COPY: small READs' payloads are staged and written into their
// requests' pages while large ones land in place; fio's verify pass reads a mix of both at
// depth 32, so replies of both kinds arrive back to back in one receive.
import * as assert from 'assert';
import * as os from 'os';
import * as path from 'path';
import * as fs from 'fs';
import { EINVAL } from '../../src/errno';
import { loadUblk } from '../../src/native/load';
import { UblkFlag } from '../../src/ublk';
import { ZERO_COPY_OFF_REASON } from '../../src/device/data-path';
import {
  MiB, assertKernelLogClean, assertNoDevices, daemonLog, deviceSuite, listDevices, markKernelLog, ok, randomFile, readDevice, run,
} from './helpers';

const EXPORT_BYTES = 64 * MiB;
const major = Number(os.release().split('.')[0]);

describe('device: copy or zero copy, chosen at start-up (real kernel)', function () {
  this.timeout(300_000);
  const env = deviceSuite();

  // The product never reads the version: the test knows which kernels CI boots.
  const expected = major >= 7 ? 'zero copy' : 'copy';

  it(`the ring transport runs ${expected} on ${os.release()}: the log line, list --json and the flags say so; writes of 4 KiB to 2 MiB read back intact`, async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'data path');
    const probe = loadUblk().probeFixedBufferIo();
    console.log(`      ${os.release()}: fixed-buffer send/receive probe ${probe === 0 ? 'works' : `fails (errno ${probe})`}`);
    assert.strictEqual(probe, expected === 'zero copy' ? 0 : EINVAL, 'the probe of fixed-buffer send/receive');

    const image = path.join(e.dir, 'data-path.img');
    const server = await e.serve(image, { size: `${EXPORT_BYTES / MiB}M` });
    const dev = await e.add(server.port, ['--transport', 'ring']);
    const listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.ok(listed?.flags, '`list --json` shows the device and its flags');
    assert.strictEqual(listed.dataPath, expected, '`list --json` dataPath');
    assert.strictEqual((BigInt(listed.flags.mask) & UblkFlag.AUTO_BUF_REG) !== 0n, expected === 'zero copy', 'UBLK_F_AUTO_BUF_REG in the device\'s flags');
    assert.strictEqual((BigInt(listed.flags.mask) & UblkFlag.USER_COPY) !== 0n, expected === 'zero copy', 'UBLK_F_USER_COPY in the device\'s flags');
    const line = daemonLog(dev.id).find((l) => l.msg.startsWith('data path:'));
    assert.ok(line, 'the daemon logs its data path');
    assert.strictEqual(line.msg, `data path: ${expected}`);
    console.log(`      ${line.msg} (${String(line.reason)})`);
    assert.strictEqual(listed.dataPathReason, line.reason, '`list --json` dataPathReason is the logged reason');

    // Sizes across the ways a payload travels: 4 KiB, a whole 512 KiB request, 2 MiB that
    // the kernel splits into max-io requests, at offsets that are not request-aligned.
    const cases = [{ at: 4096 * 3, bs: 4096, count: 16 }, { at: MiB, bs: 512 * 1024, count: 4 }, { at: 7 * MiB + 4096, bs: 2 * MiB, count: 3 }];
    for (const c of cases) {
      const file = path.join(e.dir, `w-${c.at}.bin`);
      const data = randomFile(file, c.bs * c.count);
      await ok('dd', [`if=${file}`, `of=${dev.device}`, `bs=${c.bs}`, `seek=${c.at}`, 'oflag=direct,seek_bytes', 'conv=fsync', 'status=none'], { timeoutMs: 180_000 });
      const back = await readDevice(dev.device, c.at, data.length, e.dir);
      assert.ok(back.equals(data), `${c.bs}-byte writes at ${c.at} read back from the device as written`);
    }
    // READs of 4 KiB to 512 KiB in flight together (verify pass at depth 32), in a region
    // the writes above do not touch.
    const fio = await run('fio', [
      '--name=mixed-verify', `--filename=${dev.device}`, '--offset=16M', '--size=16M', '--rw=randwrite',
      '--bssplit=4k/50:8k/10:16k/10:64k/20:512k/10', '--ioengine=libaio', '--iodepth=32', '--direct=1',
      '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--output-format=json',
    ], { timeoutMs: 300_000 });
    assert.strictEqual(fio.code, 0, `fio write+verify of mixed sizes failed:\n${fio.stderr}\n${fio.stdout}`);
    const job = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { read: { io_bytes: number } }[] }).jobs[0];
    assert.strictEqual(job?.read.io_bytes, 16 * MiB, 'fio read back and verified all it wrote');
    await e.del(dev.id);
    const img = fs.readFileSync(image);
    for (const c of cases) {
      const data = fs.readFileSync(path.join(e.dir, `w-${c.at}.bin`));
      assert.ok(img.subarray(c.at, c.at + data.length).equals(data), `the store's image holds the ${c.bs}-byte writes at ${c.at}`);
    }
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });

  it('--zero-copy off: a ring device runs copy, says why, and its writes read back intact', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'zero copy off');
    const image = path.join(e.dir, 'zero-copy-off.img');
    const server = await e.serve(image, { size: `${EXPORT_BYTES / MiB}M` });
    const dev = await e.add(server.port, ['--transport', 'ring', '--zero-copy', 'off']);
    const listed = (await listDevices()).find((d) => d.id === dev.id);
    assert.ok(listed?.flags, '`list --json` shows the device and its flags');
    assert.deepStrictEqual([listed.dataPath, listed.dataPathReason], ['copy', ZERO_COPY_OFF_REASON], '`list --json` dataPath and dataPathReason');
    assert.strictEqual(BigInt(listed.flags.mask) & UblkFlag.AUTO_BUF_REG, 0n, 'no UBLK_F_AUTO_BUF_REG in the device\'s flags');
    const line = daemonLog(dev.id).find((l) => l.msg.startsWith('data path:'));
    assert.deepStrictEqual([line?.msg, line?.reason], ['data path: copy', ZERO_COPY_OFF_REASON], 'the daemon\'s data path line');
    const file = path.join(e.dir, 'zc-off.bin');
    const data = randomFile(file, 2 * MiB);
    await ok('dd', [`if=${file}`, `of=${dev.device}`, 'bs=512K', `seek=${MiB}`, 'oflag=direct,seek_bytes', 'conv=fsync', 'status=none'], { timeoutMs: 180_000 });
    assert.ok((await readDevice(dev.device, MiB, data.length, e.dir)).equals(data), 'the writes read back from the device as written');
    await e.del(dev.id);
    assert.ok(fs.readFileSync(image).subarray(MiB, MiB + data.length).equals(data), 'the store\'s image holds the writes');
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });
});
