// Bulk copies through libnbd's nbdcopy, which opens several connections (multi-conn),
// keeps many requests in flight and turns runs of zeros into zero requests.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { cleanupAfterAll } from '../helpers/procs';
import { fileHash, makeImage, MiB, sha256, tempDir } from '../helpers/images';
import { requirePeer } from '../helpers/peers';
import { runOk } from '../helpers/procs';
import { serveImage } from '../helpers/serve';

const SIZE = 64 * MiB;

describe('server: nbdcopy 64 MiB in and out', function () {
  const cleanup = cleanupAfterAll();
  let dir = '';
  let source = '';
  let sourceHash = '';

  before(function () {
    requirePeer('nbdcopy');
    dir = tempDir(cleanup);
    // Random data with zero runs: nbdcopy sends those as zero requests (sparse detection),
    // so the server's zeroing must really zero what the image held before.
    const data = randomBytes(SIZE);
    data.fill(0, 8 * MiB, 12 * MiB);
    data.fill(0, 40 * MiB + 4096, 41 * MiB);
    data.fill(0, SIZE - 64 * 1024);
    source = path.join(dir, 'source.raw');
    fs.writeFileSync(source, data);
    sourceHash = sha256(data);
  });

  it('copies a file in over a random image and back out byte for byte', async function () {
    // The image starts full of other random bytes, so nothing passes by accident.
    const image = makeImage(dir, 'image.raw', SIZE, 'random');
    const srv = await serveImage(cleanup, image, { name: 'disk' });
    const nbdcopy = requirePeer('nbdcopy');

    await runOk(nbdcopy, ['--flush', source, srv.uri()]);
    // The server shares one file among connections: the image on disk already matches.
    assert.strictEqual(fileHash(image), sourceHash, 'image on disk differs from the source after nbdcopy in');

    const out = path.join(dir, 'out.raw');
    await runOk(nbdcopy, [srv.uri(), out]);
    assert.strictEqual(fs.statSync(out).size, SIZE);
    assert.strictEqual(fileHash(out), sourceHash, 'data copied out differs from the source');

    assert.strictEqual((await srv.stop()).code, 0);
    assert.strictEqual(fileHash(image), sourceHash, 'image changed after shutdown');
  });

  it('copies with one connection and synchronous requests too', async function () {
    const image = path.join(dir, 'fresh.raw');
    const srv = await serveImage(cleanup, image, { size: '64M' });
    const nbdcopy = requirePeer('nbdcopy');
    await runOk(nbdcopy, ['-C', '1', '--synchronous', '--request-size=1048576', source, srv.uri()]);
    const out = path.join(dir, 'out1.raw');
    await runOk(nbdcopy, ['-C', '1', srv.uri(), out]);
    assert.strictEqual(fileHash(out), sourceHash);
    assert.strictEqual((await srv.stop()).code, 0);
    assert.strictEqual(fileHash(image), sourceHash);
  });
});
