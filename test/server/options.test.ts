// The handshake's option haggling as libnbd drives it in option mode (nbdsh scripts):
// LIST, INFO and GO for known and unknown exports, the session going on after an
// error reply, and ABORT.
import * as assert from 'assert';
import * as path from 'path';
import { cleanupAfterAll } from '../helpers/procs';
import { makeImage, MiB, tempDir } from '../helpers/images';
import { nbdsh, requirePeer } from '../helpers/peers';
import { serveImage, Served } from '../helpers/serve';

/** Runs an nbdsh script that prints one JSON document as its last line, and parses it. */
async function py<T>(srv: Served, script: string): Promise<T> {
  const r = await nbdsh(`import json\nURI = os.environ['URI']\n${script}`, { URI: srv.uri('') });
  const out = r.stdout.toString().trim();
  assert.strictEqual(r.code, 0, `nbdsh failed (${r.code}):\n${r.stderr}${out}`);
  const last = out.split('\n').pop() ?? '';
  return JSON.parse(last) as T;
}

describe('server: option haggling (nbdsh, libnbd option mode)', function () {
  const cleanup = cleanupAfterAll();
  let named: Served;
  let unnamed: Served;

  before(async function () {
    requirePeer('nbdsh');
    const dir = tempDir(cleanup);
    named = await serveImage(cleanup, makeImage(dir, 'named.img', 5 * MiB, 'zero'), { name: 'disk' });
    unnamed = await serveImage(cleanup, path.join(dir, 'default.img'), { size: '2M' });
  });

  it('LIST returns the export', async function () {
    const got = await py<{ count: number; names: string[] }>(named, `
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
count = h.opt_list(lambda name, desc: names.append(name) or 0)
h.opt_abort()
print(json.dumps({'count': count, 'names': names}))
`);
    assert.deepStrictEqual(got, { count: 1, names: ['disk'] });
  });

  it('LIST returns the default export under its empty name', async function () {
    const got = await py<string[]>(unnamed, `
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
h.opt_list(lambda name, desc: names.append(name) or 0)
h.opt_abort()
print(json.dumps(names))
`);
    assert.deepStrictEqual(got, ['']);
  });

  it('INFO describes a known export without entering transmission; an unknown one gets an error and the session goes on', async function () {
    const got = await py<Record<string, unknown>>(named, `
h.set_opt_mode(True)
h.connect_uri(URI)
h.set_export_name('no-such-export')
try:
    h.opt_info()
    unknown = 'accepted'
except nbd.Error as e:
    unknown = e.errno
still = h.aio_is_negotiating()
h.set_export_name('disk')
h.opt_info()
r = {'unknown': unknown, 'still_negotiating': still, 'size': h.get_size(), 'ro': h.is_read_only(),
     'flush': h.can_flush(), 'trim': h.can_trim(), 'zero': h.can_zero(),
     'max': h.get_block_size(nbd.SIZE_MAXIMUM), 'negotiating_after_info': h.aio_is_negotiating()}
h.opt_abort()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, {
      unknown: 'ENOENT', // NBD_REP_ERR_UNKNOWN, as libnbd maps it
      still_negotiating: true,
      size: 5 * MiB,
      ro: false,
      flush: true,
      trim: true,
      zero: true,
      max: 32 * MiB,
      negotiating_after_info: true,
    });
  });

  it('GO for an unknown export gets an error; GO for the real one then works and serves data', async function () {
    const got = await py<Record<string, unknown>>(named, `
h.set_opt_mode(True)
h.connect_uri(URI)
errs = []
for name in ['nope', 'DISK', 'dis', 'disk ']:
    h.set_export_name(name)
    try:
        h.opt_go()
        errs.append('accepted ' + name)
    except nbd.Error as e:
        errs.append(e.errno)
h.set_export_name('disk')
h.opt_go()
h.pwrite(b'hello', 4096)
data = h.pread(5, 4096).decode()
r = {'errs': errs, 'data': data, 'size': h.get_size(), 'connected': h.aio_is_ready()}
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { errs: ['ENOENT', 'ENOENT', 'ENOENT', 'ENOENT'], data: 'hello', size: 5 * MiB, connected: true });
  });

  it('the empty name is the default export, even when the export has a name', async function () {
    const got = await py<Record<string, unknown>>(named, `
h.set_opt_mode(True)
h.set_full_info(True)  # ask for NBD_INFO_NAME
h.connect_uri(URI)
h.set_export_name('')
h.opt_go()
r = {'size': h.get_size(), 'name': h.get_canonical_export_name()}
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { size: 5 * MiB, name: 'disk' });
  });

  it('options the server does not support are refused without ending the session', async function () {
    const got = await py<Record<string, unknown>>(named, `
h.set_opt_mode(True)
h.set_request_structured_replies(True)
h.connect_uri(URI)
r = {'structured': h.get_structured_replies_negotiated()}
try:
    h.opt_list_meta_context(lambda name: 0)
    r['meta'] = 'accepted'
except nbd.Error as e:
    r['meta'] = 'refused'
h.set_export_name('disk')
h.opt_go()
r['ready'] = h.aio_is_ready()
r['read'] = len(h.pread(512, 0))
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { structured: false, meta: 'refused', ready: true, read: 512 });
  });

  it('ABORT ends the session cleanly and the server serves the next client', async function () {
    const got = await py<Record<string, unknown>>(named, `
h.set_opt_mode(True)
h.connect_uri(URI)
h.opt_abort()
r = {'closed': h.aio_is_closed()}
h2 = nbd.NBD()
h2.connect_uri(URI.rstrip('/') + '/disk')
r['size'] = h2.get_size()
h2.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { closed: true, size: 5 * MiB });
  });

  it('the old EXPORT_NAME option still works (libnbd without GO)', async function () {
    // Without the fixed-newstyle handshake flag libnbd may only use EXPORT_NAME.
    const got = await py<Record<string, unknown>>(named, `
h.set_handshake_flags(0)
h.set_export_name('disk')
h.connect_uri(URI.rstrip('/') + '/disk')
r = {'size': h.get_size(), 'protocol': h.get_protocol()}
h.shutdown()
print(json.dumps(r))
`);
    assert.deepStrictEqual(got, { size: 5 * MiB, protocol: 'newstyle' });
  });
});
