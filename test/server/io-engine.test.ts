// How `serve` reaches its image: io_uring where the kernel allows it; the thread pool, with
// a log line saying why, only where the kernel refuses io_uring_setup (here: a seccomp
// filter, as containers install); and a clear error at start-up when the addon is missing.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { NbdClient } from '../../src/nbd/client';
import { packageRoot } from '../../src/native/load';
import { cleanupAfterAll, run } from '../helpers/procs';
import { makeImage, MiB, patternBuffer, readAt, tempDir } from '../helpers/images';
import { requirePeer } from '../helpers/peers';
import { cliPath, serveImage, type Served } from '../helpers/serve';

const DENY_IO_URING = path.join(packageRoot(), 'test', 'helpers', 'deny-io-uring.py');

/** Writes, trims (fallocate on the pool, which once loaded the addon late), zeroes and reads back. */
async function exercise(srv: Served, image: string): Promise<void> {
  const c = await NbdClient.connect({ host: srv.host, port: srv.port });
  try {
    const data = patternBuffer(256 * 1024, 7);
    await c.write(0, data);
    await c.trim(64 * 1024, 64 * 1024);
    await c.writeZeroes(128 * 1024, 4096, { noHole: true });
    await c.flush();
    const want = Buffer.from(data);
    want.fill(0, 64 * 1024, 128 * 1024);
    want.fill(0, 128 * 1024, 128 * 1024 + 4096);
    assert.ok((await c.read(0, want.length)).equals(want), 'the export reads back what was written');
    assert.ok(readAt(image, 0, want.length).equals(want), 'the image holds what was written');
  } finally {
    await c.close();
  }
}

describe('serve: the file I/O engine', function () {
  this.timeout(60_000);
  const cleanup = cleanupAfterAll();
  let dir = '';

  before(() => {
    dir = tempDir(cleanup);
  });

  it('uses io_uring where the kernel allows it', async () => {
    const image = makeImage(dir, 'ring.img', 4 * MiB);
    const srv = await serveImage(cleanup, image);
    assert.strictEqual(srv.logs().find((l) => l.msg === 'serving')?.io, 'io_uring');
    await exercise(srv, image);
    assert.deepStrictEqual(srv.logs().filter((l) => l.level >= 40), [], 'no warnings');
  });

  it('falls back to the thread pool when io_uring_setup is refused (seccomp), and says why', async () => {
    requirePeer('python3');
    const image = makeImage(dir, 'pool.img', 4 * MiB);
    const srv = await serveImage(cleanup, image, { wrap: [DENY_IO_URING] });
    const logs = srv.logs();
    assert.strictEqual(logs.find((l) => l.msg === 'serving')?.io, 'threadpool');
    const why = logs.find((l) => l.level === 40 && /io_uring is unavailable/.test(l.msg));
    assert.ok(why, `no log line saying why: ${JSON.stringify(logs)}`);
    assert.match(why.msg, /io_uring_setup: EPERM/);
    await exercise(srv, image);
    assert.strictEqual(srv.child.proc.exitCode, null, 'serve is still running');
  });

  it('without the fileops addon, refuses to start with a message saying how to build it', async () => {
    // A copy of the package whose build lacks fileops.node.
    const pkg = path.join(dir, 'pkg');
    fs.mkdirSync(path.join(pkg, 'build', 'Release'), { recursive: true });
    fs.copyFileSync(path.join(packageRoot(), 'package.json'), path.join(pkg, 'package.json'));
    fs.cpSync(path.join(packageRoot(), 'bin'), path.join(pkg, 'bin'), { recursive: true });
    fs.cpSync(path.join(packageRoot(), 'dist'), path.join(pkg, 'dist'), { recursive: true });
    fs.symlinkSync(path.join(packageRoot(), 'node_modules'), path.join(pkg, 'node_modules'));
    const image = makeImage(dir, 'none.img', 4 * MiB);
    const r = await run(process.execPath, [path.join(pkg, 'bin', path.basename(cliPath())), 'serve', image, '--listen', '127.0.0.1:0'],
);
    assert.strictEqual(r.code, 1, `exit code (stderr: ${r.stderr})`);
    assert.match(r.stderr, /^netdisk-ublk serve: cannot load the fileops addon \(.*fileops\.node\): .*run "npm run build:addon"$/m);
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
  });
});
