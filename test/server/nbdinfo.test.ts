// What an independent client (libnbd's nbdinfo) sees of our server: size, flags and block
// sizes, for a writable and a read-only export.
import * as assert from 'assert';
import * as path from 'path';
import { cleanupAfterEach } from '../helpers/procs';
import { makeImage, MiB, tempDir } from '../helpers/images';
import { nbdinfoJson, requirePeer } from '../helpers/peers';
import { serveImage } from '../helpers/serve';

describe('server: nbdinfo --json', function () {
  const cleanup = cleanupAfterEach();
  before(() => requirePeer('nbdinfo'));

  it('reports the size and the capabilities of a writable export', async function () {
    const dir = tempDir(cleanup);
    const srv = await serveImage(cleanup, path.join(dir, 'new.img'), { size: '24M', name: 'disk' });
    const info = await nbdinfoJson(srv.uri());
    assert.strictEqual(info.protocol, 'newstyle-fixed');
    assert.strictEqual(info.exports.length, 1);
    const e = info.exports[0]!;
    assert.strictEqual(e['export-name'], 'disk');
    assert.strictEqual(e['export-size'], 24 * MiB);
    assert.strictEqual(e.is_read_only, false);
    assert.strictEqual(e.can_flush, true);
    assert.strictEqual(e.can_fua, true);
    assert.strictEqual(e.can_trim, true);
    assert.strictEqual(e.can_zero, true);
    assert.strictEqual(e.can_multi_conn, true);
    // Not implemented, so they must not be advertised.
    assert.strictEqual(e.can_cache, false);
    assert.strictEqual(e.can_df, false);
    assert.strictEqual(e.can_fast_zero, false);
    assert.strictEqual(e.block_size_minimum, 1);
    assert.strictEqual(e.block_size_preferred, 4096);
    assert.strictEqual(e.block_size_maximum, 32 * MiB);
  });

  it('serves an existing image at its own size under the default export name', async function () {
    const dir = tempDir(cleanup);
    const srv = await serveImage(cleanup, makeImage(dir, 'disk.img', 3 * MiB + 512, 'random'));
    const e = (await nbdinfoJson(srv.uri(''))).exports[0]!;
    assert.strictEqual(e['export-name'], '');
    assert.strictEqual(e['export-size'], 3 * MiB + 512);
  });

  it('--read-only: read-only, no trim, no zero, no FUA; flush and multi-conn stay', async function () {
    const dir = tempDir(cleanup);
    const srv = await serveImage(cleanup, makeImage(dir, 'ro.img', 4 * MiB), { readOnly: true, name: 'ro' });
    const e = (await nbdinfoJson(srv.uri())).exports[0]!;
    assert.strictEqual(e['export-size'], 4 * MiB);
    assert.strictEqual(e.is_read_only, true);
    assert.strictEqual(e.can_trim, false);
    assert.strictEqual(e.can_zero, false);
    assert.strictEqual(e.can_fua, false);
    assert.strictEqual(e.can_flush, true);
    assert.strictEqual(e.can_multi_conn, true);
  });
});
