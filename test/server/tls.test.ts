// Our server with TLS (NBD_OPT_STARTTLS, proto.md "TLS support") against real clients:
// nbdinfo, nbdcopy, qemu-img and qemu-io over nbds:// with X.509 (certtool) and PSK
// (psktool), over TCP and unix sockets; and the refusals: a client that skips STARTTLS
// against --tls require, an untrusted client certificate, a wrong PSK, clear text after
// STARTTLS.
import * as assert from 'assert';
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as tls from 'tls';
import { cleanupAfterAll, cleanupAfterEach, run, runOk } from '../helpers/procs';
import { makeImage, MiB, readAt, sha256, fileHash } from '../helpers/images';
import { nbdinfoJson, requirePeer } from '../helpers/peers';
import { goData, option, RawConn, u32 } from '../helpers/raw-nbd';
import { serveImage, Served } from '../helpers/serve';
import { suiteTlsMaterial } from '../helpers/tls';

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 };
const REP = { ACK: 1, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005 };

describe('server: TLS', function () {
  const shared = cleanupAfterAll();
  const cleanup = cleanupAfterEach();
  const material = suiteTlsMaterial(shared);

  const x509 = (mode = 'require'): string[] => ['--tls', mode, '--tls-certificates', material.pki.serverDir];
  const withPsk = (mode = 'require'): string[] => ['--tls', mode, '--tls-psk', material.psk];
  const nbds = (srv: Served, query: string, name = 'disk'): string => `nbds://localhost:${srv.port}/${name}?${query}`;

  describe('X.509', function () {
    it('nbdinfo over nbds:// verifies our certificate and sees the export', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'x1.img'), { size: '8M', name: 'disk', args: x509() });
      const info = await nbdinfoJson(nbds(srv, `tls-certificates=${material.pki.caOnlyDir}`));
      assert.match(info.protocol, /newstyle-fixed/);
      assert.strictEqual(info.TLS, true);
      assert.strictEqual(info.exports[0]?.['export-size'], 8 * MiB);
    });

    it('nbdcopy writes and reads back 16 MiB through TLS (several connections)', async function () {
      const image = makeImage(material.dir, 'x2.img', 16 * MiB, 'random');
      const srv = await serveImage(cleanup, image, { name: 'disk', args: x509() });
      const src = path.join(material.dir, 'x2-src.raw');
      const data = randomBytes(16 * MiB);
      fs.writeFileSync(src, data);
      const uri = nbds(srv, `tls-certificates=${material.pki.clientDir}`);
      await runOk(requirePeer('nbdcopy'), [src, uri]);
      assert.strictEqual(fileHash(image), sha256(data));
      const back = path.join(material.dir, 'x2-back.raw');
      await runOk(requirePeer('nbdcopy'), [uri, back]);
      assert.strictEqual(fileHash(back), sha256(data));
    });

    it('qemu-io with tls-creds-x509 (and a client certificate) writes what the image then holds', async function () {
      const image = makeImage(material.dir, 'x3.img', 4 * MiB);
      const srv = await serveImage(cleanup, image, { name: 'disk', args: x509() });
      const r = await run(requirePeer('qemu-io'), [
        '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${material.pki.clientDir}`,
        '--image-opts', `driver=nbd,host=localhost,port=${srv.port},export=disk,tls-creds=tls0`,
        '-c', 'write -P 0x5a 1M 64k', '-c', 'read -P 0x5a 1M 64k',
      ]);
      const out = r.stdout.toString() + r.stderr;
      assert.strictEqual(r.code, 0, out);
      assert.doesNotMatch(out, /verification failed|error/i, out);
      assert.ok(readAt(image, MiB, 65536).equals(Buffer.alloc(65536, 0x5a)));
    });

    it('a client certificate from another CA is refused', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'x4.img'), { size: '1M', name: 'disk', args: x509() });
      const mixed = path.join(material.dir, 'mixed');
      fs.mkdirSync(mixed, { recursive: true });
      fs.copyFileSync(path.join(material.pki.caOnlyDir, 'ca-cert.pem'), path.join(mixed, 'ca-cert.pem'));
      for (const f of ['client-cert.pem', 'client-key.pem']) fs.copyFileSync(path.join(material.otherPki.clientDir, f), path.join(mixed, f));
      const r = await run(requirePeer('nbdinfo'), ['--size', nbds(srv, `tls-certificates=${mixed}`)]);
      assert.notStrictEqual(r.code, 0);
      assert.strictEqual(r.stdout.toString(), '');
      await waitForLog(srv, /client's certificate is not trusted/);
    });

    it('a client that trusts another CA refuses us', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'x5.img'), { size: '1M', name: 'disk', args: x509() });
      const r = await run(requirePeer('nbdinfo'), ['--size', nbds(srv, `tls-certificates=${material.otherPki.caOnlyDir}`)]);
      assert.notStrictEqual(r.code, 0);
      assert.match(r.stderr, /certificate/i);
    });

    it('over a unix socket: nbds+unix://', async function () {
      const sock = path.join(material.dir, 'x6.sock');
      const srv = await serveImage(cleanup, path.join(material.dir, 'x6.img'), { size: '2M', name: 'disk', listen: `unix:${sock}`, args: x509() });
      assert.strictEqual(srv.socket, sock);
      // No host in a unix URI: tls-hostname names the one the certificate carries.
      const uri = `nbds+unix:///disk?socket=${sock}&tls-certificates=${material.pki.caOnlyDir}&tls-hostname=localhost`;
      const r = await runOk(requirePeer('nbdinfo'), ['--size', uri]);
      assert.strictEqual(r.stdout.toString().trim(), String(2 * MiB));
    });
  });

  describe('PSK', function () {
    it('nbdinfo and qemu-img with psktool\'s key file', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'p1.img'), { size: '3M', name: 'disk', args: withPsk() });
      const info = await nbdinfoJson(`nbds://alice@localhost:${srv.port}/disk?tls-psk-file=${material.psk}`);
      assert.strictEqual(info.TLS, true);
      assert.strictEqual(info.exports[0]?.['export-size'], 3 * MiB);
      // qemu reads keys.psk from a directory.
      const qdir = path.join(material.dir, 'qemu-psk');
      fs.mkdirSync(qdir, { recursive: true });
      fs.copyFileSync(material.psk, path.join(qdir, 'keys.psk'));
      const r = await runOk(requirePeer('qemu-img'), ['info', '--output=json',
        '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${qdir},username=alice`,
        '--image-opts', `driver=nbd,host=127.0.0.1,port=${srv.port},export=disk,tls-creds=tls0`]);
      assert.strictEqual((JSON.parse(r.stdout.toString()) as { 'virtual-size': number })['virtual-size'], 3 * MiB);
    });

    it('nbdcopy over PSK on a unix socket', async function () {
      const sock = path.join(material.dir, 'p2.sock');
      const image = makeImage(material.dir, 'p2.img', 8 * MiB);
      await serveImage(cleanup, image, { name: 'disk', listen: `unix:${sock}`, args: withPsk() });
      const src = path.join(material.dir, 'p2-src.raw');
      const data = randomBytes(8 * MiB);
      fs.writeFileSync(src, data);
      await runOk(requirePeer('nbdcopy'), [src, `nbds+unix://alice@/disk?socket=${sock}&tls-psk-file=${material.psk}`]);
      assert.strictEqual(fileHash(image), sha256(data));
    });

    it('a wrong key, and an unknown user, are refused; no key reaches the log', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'p3.img'), { size: '1M', name: 'disk', args: withPsk() });
      for (const uri of [`nbds://alice@localhost:${srv.port}/disk?tls-psk-file=${material.otherPsk}`,
        `nbds://bob@localhost:${srv.port}/disk?tls-psk-file=${material.psk}`]) {
        const r = await run(requirePeer('nbdinfo'), ['--size', uri]);
        assert.notStrictEqual(r.code, 0, uri);
        assert.strictEqual(r.stdout.toString(), '');
      }
      await waitForLog(srv, /TLS handshake failed/);
      const keys = [material.psk, material.otherPsk].map((f) => fs.readFileSync(f, 'utf8').trim().split(':')[1] as string);
      for (const k of keys) assert.ok(!srv.child.stderr().toLowerCase().includes(k.toLowerCase()), 'a key in the log');
    });
  });

  describe('--tls require: nothing before STARTTLS', function () {
    it('every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, with no export data', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r1.img'), { size: '1M', name: 'disk', args: x509() });
      const c = await RawConn.connect(srv.port);
      cleanup.add(() => c.destroy());
      await c.greeting();
      c.write(u32(3));
      for (const [opt, data] of [[OPT.LIST, Buffer.alloc(0)], [OPT.INFO, goData('disk')], [OPT.GO, goData('disk')],
        [OPT.STRUCTURED_REPLY, Buffer.alloc(0)], [99, Buffer.alloc(0)]] as Array<[number, Buffer]>) {
        c.write(option(opt, data));
        const r = await c.optionReply();
        assert.strictEqual(r.option, opt);
        assert.strictEqual(r.type, REP.ERR_TLS_REQD, `option ${opt}: 0x${r.type.toString(16)}`);
        assert.match(r.data.toString(), /requires TLS/);
      }
      c.write(option(OPT.ABORT));
      assert.strictEqual((await c.optionReply()).type, REP.ACK);
    });

    it('EXPORT_NAME before STARTTLS ends the session (it has no error reply)', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r2.img'), { size: '1M', name: 'disk', args: x509() });
      const c = await RawConn.connect(srv.port);
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.EXPORT_NAME, Buffer.from('disk')));
      assert.strictEqual((await c.untilClosed()).length, 0, 'the server sent something');
    });

    it('nbdinfo over nbd:// (clear text) is refused', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r3.img'), { size: '1M', name: 'disk', args: withPsk() });
      const r = await run(requirePeer('nbdinfo'), ['--size', srv.uri()]);
      assert.notStrictEqual(r.code, 0);
      assert.strictEqual(r.stdout.toString(), '');
    });

    it('bytes sent behind STARTTLS, before its reply, close the connection unanswered', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r4.img'), { size: '1M', name: 'disk', args: x509() });
      const c = await RawConn.connect(srv.port);
      await c.greeting();
      c.write(Buffer.concat([u32(3), option(OPT.STARTTLS), option(OPT.GO, goData('disk'))]));
      assert.strictEqual((await c.untilClosed()).length, 0, 'the server answered');
    });

    it('clear text after the ACK instead of a TLS handshake: closed unanswered, the server serves on', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r6.img'), { size: '1M', name: 'disk', args: withPsk() });
      const c = await RawConn.connect(srv.port);
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.STARTTLS));
      assert.strictEqual((await c.optionReply()).type, REP.ACK);
      c.write(option(OPT.GO, goData('disk')));
      assert.strictEqual((await c.untilClosed()).length, 0, 'the server answered in clear text');
      assert.strictEqual((await nbdinfoJson(`nbds://alice@localhost:${srv.port}/disk?tls-psk-file=${material.psk}`)).TLS, true);
    });

    it('a client that stalls in the TLS handshake is closed by --handshake-timeout', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r7.img'), { size: '1M', name: 'disk', args: [...withPsk(), '--handshake-timeout', '1'] });
      const c = await RawConn.connect(srv.port);
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.STARTTLS));
      assert.strictEqual((await c.optionReply()).type, REP.ACK);
      // No ClientHello follows: the connection must not be held open for ever.
      assert.strictEqual((await c.untilClosed()).length, 0);
    });

    it('STARTTLS with data is invalid; a second STARTTLS inside TLS is invalid; then GO works', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'r5.img'), { size: '5M', name: 'disk', args: x509() });
      const c = await RawConn.connect(srv.port);
      cleanup.add(() => c.destroy());
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.STARTTLS, Buffer.from('x')));
      assert.strictEqual((await c.optionReply()).type, REP.ERR_INVALID);
      c.write(option(OPT.STARTTLS));
      assert.strictEqual((await c.optionReply()).type, REP.ACK);
      const secure = tls.connect({ socket: c.sock, ca: fs.readFileSync(path.join(material.pki.caOnlyDir, 'ca-cert.pem')), servername: 'localhost' });
      await new Promise<void>((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
      const t = RawConn.from(secure);
      t.write(option(OPT.STARTTLS));
      assert.strictEqual((await t.optionReply()).type, REP.ERR_INVALID);
      t.write(option(OPT.GO, goData('disk')));
      const info = await t.optionReply();
      assert.strictEqual(info.type, 3);
      assert.strictEqual(Number(info.data.readBigUInt64BE(2)), 5 * MiB);
      secure.destroy();
    });
  });

  describe('--tls on and off', function () {
    it('on: clear text and TLS clients are both served', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'o1.img'), { size: '2M', name: 'disk', args: x509('on') });
      assert.strictEqual((await nbdinfoJson(srv.uri())).TLS, false);
      assert.strictEqual((await nbdinfoJson(nbds(srv, `tls-certificates=${material.pki.caOnlyDir}`))).TLS, true);
      // Every connection, TLS or not, is accounted for: the server stops at once and cleanly.
      const exit = await srv.stop();
      assert.strictEqual(exit.code, 0, srv.child.stderr());
      assert.ok(srv.logs().some((l) => l.msg === 'stopped'));
    });

    it('off: STARTTLS gets NBD_REP_ERR_POLICY and nbds:// clients fail', async function () {
      const srv = await serveImage(cleanup, path.join(material.dir, 'o2.img'), { size: '1M', name: 'disk' });
      const c = await RawConn.connect(srv.port);
      cleanup.add(() => c.destroy());
      await c.greeting();
      c.write(u32(3));
      c.write(option(OPT.STARTTLS));
      assert.strictEqual((await c.optionReply()).type, REP.ERR_POLICY);
      const r = await run(requirePeer('nbdinfo'), ['--size', nbds(srv, `tls-certificates=${material.pki.caOnlyDir}`)]);
      assert.notStrictEqual(r.code, 0);
    });
  });

  describe('key files', function () {
    it('a world-readable PSK file or server key gets a warning naming the file', async function () {
      const open = path.join(material.dir, 'open.psk');
      fs.copyFileSync(material.psk, open);
      fs.chmodSync(open, 0o644);
      const srv = await serveImage(cleanup, path.join(material.dir, 'k1.img'), { size: '1M', args: ['--tls', 'on', '--tls-psk', open] });
      const w = srv.logs().find((l) => l.level === 40 && /readable by every user/.test(l.msg));
      assert.ok(w, srv.child.stderr());
      assert.strictEqual(w.file, open);
      const quiet = await serveImage(cleanup, path.join(material.dir, 'k2.img'), { size: '1M', args: x509('on') });
      assert.strictEqual(quiet.logs().filter((l) => l.level === 40).length, 0, quiet.child.stderr());
    });
  });
});

async function waitForLog(srv: Served, re: RegExp): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (re.test(srv.child.stderr())) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`no log line matching ${re}:\n${srv.child.stderr()}`);
}
