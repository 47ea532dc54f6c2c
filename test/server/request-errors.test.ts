// Requests the server must refuse with an errno while the connection goes on: ranges
// past the end, writes to a read-only export, flags a command does not take. Sent by
// libnbd with its client-side checks off (strict mode 0), so they reach the server.
import * as assert from 'assert';
import { cleanupAfterAll } from '../helpers/procs';
import { fileHash, makeImage, MiB, tempDir } from '../helpers/images';
import { nbdsh, requirePeer } from '../helpers/peers';
import { serveImage, Served } from '../helpers/serve';

async function py<T>(srv: Served, script: string): Promise<T> {
  // try_(f) runs one request and gives its errno name, or 'ok'.
  const prelude = `import json
URI = os.environ['URI']
def try_(f, *a, **k):
    try:
        f(*a, **k)
        return 'ok'
    except nbd.Error as e:
        return e.errno
h.set_strict_mode(0)
h.connect_uri(URI)
size = h.get_size()
`;
  const r = await nbdsh(prelude + script, { URI: srv.uri() });
  const out = r.stdout.toString().trim();
  assert.strictEqual(r.code, 0, `nbdsh failed (${r.code}):\n${r.stderr}${out}`);
  return JSON.parse(out.split('\n').pop() ?? '') as T;
}

describe('server: refused requests get an errno and the connection lives on', function () {
  const cleanup = cleanupAfterAll();
  let dir = '';
  let rw: Served;
  let ro: Served;
  let roImage = '';

  before(async function () {
    requirePeer('nbdsh');
    dir = tempDir(cleanup);
    rw = await serveImage(cleanup, makeImage(dir, 'rw.img', 4 * MiB, 'zero'), { name: 'rw' });
    roImage = makeImage(dir, 'ro.img', 4 * MiB, 'random');
    ro = await serveImage(cleanup, roImage, { name: 'ro', readOnly: true });
  });

  it('past the end: reads and trims get EINVAL, writes and zeroes get ENOSPC', async function () {
    const got = await py<Record<string, string | boolean>>(rw, `
r = {}
r['read_straddle'] = try_(h.pread, 1024, size - 512)
r['read_after'] = try_(h.pread, 512, size)
r['read_far'] = try_(h.pread, 512, 2**63)
r['write_straddle'] = try_(h.pwrite, b'x' * 1024, size - 512)
r['write_after'] = try_(h.pwrite, b'x' * 4096, size + 4096)
r['trim_after'] = try_(h.trim, 4096, size)
r['zero_after'] = try_(h.zero, 4096, size - 1)
r['zero_offset_wraps'] = try_(h.zero, 4096, 2**64 - 2048)
# The refused write's payload was consumed: the stream is still in step.
h.pwrite(b'still here', 1000)
r['after'] = h.pread(10, 1000).decode()
r['last_byte'] = try_(h.pread, 1, size - 1)
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, {
      read_straddle: 'EINVAL',
      read_after: 'EINVAL',
      read_far: 'EINVAL',
      write_straddle: 'ENOSPC',
      write_after: 'ENOSPC',
      trim_after: 'EINVAL',
      zero_after: 'ENOSPC',
      zero_offset_wraps: 'ENOSPC',
      after: 'still here',
      last_byte: 'ok',
    });
  });

  it('flags a command does not take get EINVAL; FUA is accepted on every command', async function () {
    const got = await py<Record<string, string>>(rw, `
r = {}
r['read_fua'] = try_(h.pread, 512, 0, nbd.CMD_FLAG_FUA)
r['flush_fua'] = try_(h.flush, nbd.CMD_FLAG_FUA)
r['trim_fua'] = try_(h.trim, 512, 1024, nbd.CMD_FLAG_FUA)
r['zero_fua'] = try_(h.zero, 512, 1024, nbd.CMD_FLAG_FUA)
r['read_df_fua'] = try_(h.pread, 512, 0, nbd.CMD_FLAG_DF | nbd.CMD_FLAG_FUA)
r['write_no_hole'] = try_(h.pwrite, b'y' * 512, 0, nbd.CMD_FLAG_NO_HOLE)
r['trim_no_hole'] = try_(h.trim, 512, 0, nbd.CMD_FLAG_NO_HOLE)
r['zero_fast'] = try_(h.zero, 512, 0, nbd.CMD_FLAG_FAST_ZERO)
r['read_df'] = try_(h.pread, 512, 0, nbd.CMD_FLAG_DF)
r['write_fua'] = try_(h.pwrite, b'y' * 512, 0, nbd.CMD_FLAG_FUA)
r['zero_fua_nohole'] = try_(h.zero, 512, 512, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
r['flush'] = try_(h.flush)
r['cache'] = try_(h.cache, 512, 0)
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, {
      // proto.md "Command flags": with NBD_FLAG_SEND_FUA the server MUST accept FUA on
      // all commands.
      read_fua: 'ok',
      flush_fua: 'ok',
      trim_fua: 'ok',
      zero_fua: 'ok',
      read_df_fua: 'EINVAL',
      write_no_hole: 'EINVAL',
      trim_no_hole: 'EINVAL',
      zero_fast: 'EINVAL',
      read_df: 'EINVAL',
      write_fua: 'ok',
      zero_fua_nohole: 'ok',
      flush: 'ok',
      cache: 'EINVAL', // not advertised
    });
  });

  it('--read-only: writes, trims and zeroes get EPERM; reads and flush work; the image is untouched', async function () {
    const before = fileHash(roImage);
    const got = await py<Record<string, string | boolean>>(ro, `
r = {'ro': h.is_read_only()}
r['write'] = try_(h.pwrite, b'z' * 4096, 0)
r['write_fua'] = try_(h.pwrite, b'z' * 4096, 8192, nbd.CMD_FLAG_FUA)
r['trim'] = try_(h.trim, 4096, 0)
r['zero'] = try_(h.zero, 4096, 0)
r['flush'] = try_(h.flush)
r['read'] = len(h.pread(4096, size - 4096))
# No NBD_FLAG_SEND_FUA on a read-only export, so FUA is a flag not negotiated.
r['read_fua'] = try_(h.pread, 512, 0, nbd.CMD_FLAG_FUA)
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { ro: true, write: 'EPERM', write_fua: 'EPERM', trim: 'EPERM', zero: 'EPERM', flush: 'ok', read: 4096, read_fua: 'EINVAL' });
    assert.strictEqual(fileHash(roImage), before);
  });
});
