// Our NBD client over TLS (nbds://) against real servers: nbdkit --tls=require with X.509
// and PSK, qemu-nbd with tls-creds-x509, and our own server over a unix socket. And the
// refusals, each a clear error: a CA that did not sign the server, a host name the
// certificate does not carry, a wrong PSK, a server without TLS. A recording proxy shows
// that nothing but the greeting, the client flags and STARTTLS crossed in clear text.
import * as assert from 'assert';
import * as path from 'path';
import { NbdClient } from '../../src/nbd/client';
import { NbdError } from '../../src/nbd/errors';
import { parseNbdUri } from '../../src/nbd/uri';
import { ReconnectingClient } from '../../src/nbd/reconnecting-client';
import { FaultProxy } from '../helpers/fault-proxy';
import { cleanupAfterAll, cleanupAfterEach } from '../helpers/procs';
import { makeImage, MiB } from '../helpers/images';
import { startNbdServer, startNbdkit, startQemuNbd } from '../helpers/peers';
import { serveImage } from '../helpers/serve';
import { suiteTlsMaterial } from '../helpers/tls';

/** Connects as `add --remote URI` would. */
function connect(uri: string): Promise<NbdClient> {
  const e = parseNbdUri(uri);
  return NbdClient.connect({
    host: e.host, port: e.port, exportName: e.exportName, tls: e.tls,
    ...(e.transport === 'unix' ? { socket: e.socket } : {}),
  });
}

/** A write and its read-back: the data really went through. */
async function roundTrip(c: NbdClient): Promise<void> {
  const data = Buffer.alloc(256 * 1024);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i ^ 0x5eed, i);
  await c.write(MiB, data);
  await c.flush();
  assert.ok((await c.read(MiB, data.length)).equals(data));
}

async function refused(uri: string, re: RegExp): Promise<void> {
  await assert.rejects(connect(uri), (err: unknown) => {
    assert.ok(err instanceof NbdError, String(err));
    assert.match(err.message, re);
    return true;
  });
}

// The greeting (18 bytes), our client flags (4) and STARTTLS (16): nothing else may cross
// before TLS, and after it nothing readable.
const CLEAR_UP = 4 + 16;

describe('nbd client: TLS', function () {
  const shared = cleanupAfterAll();
  const cleanup = cleanupAfterEach();
  const material = suiteTlsMaterial(shared);

  describe('nbdkit --tls=require', function () {
    it('X.509: verified against the CA and the host name; data round-trips', async function () {
      const k = await startNbdkit(cleanup, ['memory', '8M'], { extra: ['--tls=require', `--tls-certificates=${material.pki.serverDir}`] });
      const c = await connect(`nbds://localhost:${k.port}/nbdkit?tls-certificates=${material.pki.caOnlyDir}`);
      assert.strictEqual(c.size, 8 * MiB);
      await roundTrip(c);
      await c.close();
    });

    it('PSK from psktool\'s file, the user from the URI', async function () {
      const k = await startNbdkit(cleanup, ['memory', '8M'], { extra: ['--tls=require', `--tls-psk=${material.psk}`] });
      const c = await connect(`nbds://alice@127.0.0.1:${k.port}/nbdkit?tls-psk-file=${material.psk}`);
      await roundTrip(c);
      await c.close();
    });

    it('refusals: another CA, another host name, a wrong key, an unknown user', async function () {
      const x = await startNbdkit(cleanup, ['memory', '1M'], { extra: ['--tls=require', `--tls-certificates=${material.pki.serverDir}`] });
      await refused(`nbds://localhost:${x.port}/nbdkit?tls-certificates=${material.otherPki.caOnlyDir}`, /TLS handshake failed: .*certificate/);
      await refused(`nbds://localhost:${x.port}/nbdkit?tls-certificates=${material.pki.caOnlyDir}&tls-hostname=store.example`,
        /TLS handshake failed: .*store\.example/);
      const p = await startNbdkit(cleanup, ['memory', '1M'], { extra: ['--tls=require', `--tls-psk=${material.psk}`] });
      await refused(`nbds://alice@127.0.0.1:${p.port}/nbdkit?tls-psk-file=${material.otherPsk}`, /TLS handshake failed: .*key for this user refused/);
      await refused(`nbds://bob@127.0.0.1:${p.port}/nbdkit?tls-psk-file=${material.psk}`, /has no key for user "bob"/);
    });

    it('tls-verify-peer=0 encrypts without checking who the server is', async function () {
      const k = await startNbdkit(cleanup, ['memory', '8M'], { extra: ['--tls=require', `--tls-certificates=${material.pki.serverDir}`] });
      const c = await connect(`nbds://localhost:${k.port}/nbdkit?tls-certificates=${material.otherPki.caOnlyDir}&tls-verify-peer=0`);
      await roundTrip(c);
      await c.close();
    });

    it('a clear-text client is told to use nbds://', async function () {
      const k = await startNbdkit(cleanup, ['memory', '1M'], { extra: ['--tls=require', `--tls-psk=${material.psk}`] });
      await refused(`nbd://127.0.0.1:${k.port}/nbdkit`, /requires TLS: use an nbds:\/\/ URI/);
    });
  });

  it('qemu-nbd with tls-creds-x509 (it asks for our client certificate)', async function () {
    const image = makeImage(material.dir, 'q.img', 4 * MiB);
    const q = await startQemuNbd(cleanup, image, {
      name: 'q', extra: ['--object', `tls-creds-x509,id=tls0,endpoint=server,dir=${material.pki.serverDir},verify-peer=on`, '--tls-creds', 'tls0'],
    });
    const c = await connect(`nbds://localhost:${q.port}/q?tls-certificates=${material.pki.clientDir}`);
    assert.strictEqual(c.size, 4 * MiB);
    await roundTrip(c);
    await c.close();
    // Without a client certificate, qemu-nbd (verify-peer=on) ends the handshake.
    await refused(`nbds://localhost:${q.port}/q?tls-certificates=${material.pki.caOnlyDir}`, /TLS|closed/);
  });

  it('nbd-server with force_tls (it asks for our client certificate)', async function () {
    const image = makeImage(material.dir, 'ns.img', 4 * MiB);
    const srv = await startNbdServer(cleanup, material.dir, image, {
      name: 'ns',
      generic: [`certfile = ${material.pki.serverDir}/server-cert.pem`, `keyfile = ${material.pki.serverDir}/server-key.pem`,
        `cacertfile = ${material.pki.serverDir}/ca-cert.pem`, 'force_tls = true'],
    });
    await refused(`nbd://127.0.0.1:${srv.port}/ns`, /requires TLS: use an nbds:\/\/ URI/);
    const c = await connect(`nbds://localhost:${srv.port}/ns?tls-certificates=${material.pki.clientDir}`);
    assert.strictEqual(c.size, 4 * MiB);
    await roundTrip(c);
    await c.close();
  });

  it('a server without TLS: a clear error, and nothing but STARTTLS crossed', async function () {
    const k = await startNbdkit(cleanup, ['memory', '1M']);
    const proxy = await FaultProxy.start({ port: k.port });
    cleanup.add(() => proxy.close());
    proxy.recording = { up: [], down: [] };
    await refused(`nbds://localhost:${proxy.port}/nbdkit?tls-certificates=${material.pki.caOnlyDir}`,
      /(does not support TLS|has TLS off).*never falls back to clear text/);
    const up = Buffer.concat(proxy.recording.up);
    // After the refusal the client may end with NBD_OPT_ABORT (proto.md, option haggling), which carries nothing.
    const abort = Buffer.concat([Buffer.from('IHAVEOPT'), Buffer.from('0000000200000000', 'hex')]);
    const rest = up.subarray(CLEAR_UP);
    assert.ok(up.length === CLEAR_UP || rest.equals(abort), `client sent ${up.toString('hex')}`);
    assert.strictEqual(up.readUInt32BE(4 + 8), 5, 'the first option was not STARTTLS');
    assert.ok(!up.includes(Buffer.from('nbdkit')), 'the export name crossed in clear text');
  });

  it('over TLS, no request or data crosses in clear text', async function () {
    const k = await startNbdkit(cleanup, ['memory', '8M'], { extra: ['--tls=require', `--tls-certificates=${material.pki.serverDir}`] });
    const proxy = await FaultProxy.start({ port: k.port });
    cleanup.add(() => proxy.close());
    proxy.recording = { up: [], down: [] };
    const c = await connect(`nbds://localhost:${proxy.port}/nbdkit?tls-certificates=${material.pki.caOnlyDir}`);
    const marker = Buffer.from('a sector no eavesdropper may read. '.repeat(1000));
    await c.write(0, marker);
    assert.ok((await c.read(0, marker.length)).equals(marker));
    await c.close();
    const up = Buffer.concat(proxy.recording.up);
    const down = Buffer.concat(proxy.recording.down);
    const needle = Buffer.from('eavesdropper');
    assert.ok(!up.includes(needle) && !down.includes(needle), 'data crossed in clear text');
    assert.ok(!up.includes(Buffer.from('nbdkit')), 'the export name crossed in clear text');
    // No request magic (0x25609513) anywhere in what the client sent.
    assert.ok(!up.includes(Buffer.from('25609513', 'hex')), 'a request header crossed in clear text');
    assert.ok(up.length > marker.length, 'the data did not go through the proxy');
  });

  it('a connection given up over TLS ends with a reset, not a FIN (queued writes are dropped)', async function () {
    const image = makeImage(material.dir, 'rst.img', MiB);
    const srv = await serveImage(cleanup, image, { name: 'd', args: ['--tls', 'require', '--tls-psk', material.psk], env: { NETDISK_LOG_LEVEL: 'debug' } });
    const c = await connect(`nbds://alice@127.0.0.1:${srv.port}/d?tls-psk-file=${material.psk}`);
    c.destroy();
    for (let i = 0; i < 200 && !/ECONNRESET/.test(srv.child.stderr()); i++) await new Promise((r) => setTimeout(r, 25));
    assert.match(srv.child.stderr(), /ECONNRESET/, 'the server saw no reset');
  });

  it('our server over nbds+unix://, and a reconnect makes a fresh TLS handshake', async function () {
    const sock = path.join(material.dir, 'srv.sock');
    const image = makeImage(material.dir, 'srv.img', 4 * MiB);
    const args = ['--tls', 'require', '--tls-psk', material.psk];
    let srv = await serveImage(cleanup, image, { name: 'd', listen: `unix:${sock}`, args });
    const e = parseNbdUri(`nbds+unix://alice@/d?socket=${sock}&tls-psk-file=${material.psk}`);
    const rc = await ReconnectingClient.connect({
      host: e.host, port: e.port, socket: e.socket, exportName: e.exportName, tls: e.tls, timeoutMs: 0, failAfterMs: 30_000,
    });
    const data = Buffer.alloc(65536, 0x3c);
    await new Promise<void>((res, rej) => rc.submit({ type: 1, length: data.length, data }, null, (err) => (err ? rej(err) : res())));
    let reconnected = false;
    rc.once('reconnect', () => { reconnected = true; });
    await srv.stop();
    srv = await serveImage(cleanup, image, { name: 'd', listen: `unix:${sock}`, args });
    const back = Buffer.alloc(data.length);
    await new Promise<void>((res, rej) => rc.submit({ type: 0, length: back.length, into: back }, null, (err) => (err ? rej(err) : res())));
    assert.ok(back.equals(data));
    assert.ok(reconnected, 'no reconnect was seen');
    await rc.close();
  });
});
