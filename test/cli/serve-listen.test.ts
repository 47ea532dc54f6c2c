// `serve --listen` with unix sockets and NBD URIs, and the --tls arguments: what a user
// types, what they get, and a clear message (exit 2 or 1) when it cannot work.
import * as assert from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { cleanupAfterEach, run } from '../helpers/procs';
import { tempDir } from '../helpers/images';
import { nbdinfoJson, requirePeer } from '../helpers/peers';
import { cliPath, serveImage } from '../helpers/serve';
import { makePsk } from '../helpers/tls';

describe('cli: serve --listen and --tls', function () {
  const cleanup = cleanupAfterEach();
  let dir = '';
  beforeEach(() => {
    dir = tempDir(cleanup);
  });

  /** A serve that must fail before serving: its exit code and its one-line message. */
  async function refused(args: string[]): Promise<{ code: number | null; stderr: string }> {
    const r = await run(process.execPath, [cliPath(), 'serve', path.join(dir, 'x.img'), '--size', '1M', ...args],
      { env: { ...process.env, NETDISK_LOG_FORMAT: 'json' } });
    assert.match(r.stderr, /^netdisk-ublk serve: /, r.stderr);
    assert.doesNotMatch(r.stderr, /^\s+at /m, `a stack trace: ${r.stderr}`);
    return { code: r.code, stderr: r.stderr };
  }

  it('unix:PATH and nbd+unix URIs; the export name from the URI', async function () {
    const sock = path.join(dir, 'a.sock');
    const srv = await serveImage(cleanup, path.join(dir, 'a.img'), { size: '1M', listen: `nbd+unix:///vol?socket=${sock}` });
    assert.ok(fs.statSync(sock).isSocket());
    const info = await nbdinfoJson(`nbd+unix:///vol?socket=${sock}`);
    assert.strictEqual(info.exports[0]?.['export-name'], 'vol');
    await srv.stop();
    assert.ok(!fs.existsSync(sock), 'the socket outlived the server');
  });

  it('nbd://HOST:PORT/EXPORT listens on TCP', async function () {
    const srv = await serveImage(cleanup, path.join(dir, 'b.img'), { size: '1M', listen: 'nbd://127.0.0.1:0/b' });
    assert.strictEqual((await nbdinfoJson(`nbd://127.0.0.1:${srv.port}/b`)).exports[0]?.['export-name'], 'b');
  });

  it('a stale socket (its server died) is replaced', async function () {
    const sock = path.join(dir, 'stale.sock');
    const first = await serveImage(cleanup, path.join(dir, 'c.img'), { size: '1M', listen: `unix:${sock}` });
    await first.stop('SIGKILL');
    assert.ok(fs.existsSync(sock), 'SIGKILL left no socket file behind');
    await serveImage(cleanup, path.join(dir, 'c.img'), { listen: `unix:${sock}` });
    await nbdinfoJson(`nbd+unix:///?socket=${sock}`);
  });

  it('a live socket and a path that is not a socket are refused, and left alone', async function () {
    const sock = path.join(dir, 'live.sock');
    const live = net.createServer();
    await new Promise<void>((r) => live.listen(sock, r));
    cleanup.add(() => new Promise((r) => live.close(r)));
    let r = await refused(['--listen', `unix:${sock}`]);
    assert.strictEqual(r.code, 1);
    assert.match(r.stderr, /cannot listen on .*live\.sock: EADDRINUSE \(a server is running there\)/);
    const file = path.join(dir, 'plain');
    fs.writeFileSync(file, 'keep me');
    r = await refused(['--listen', `unix:${file}`]);
    assert.strictEqual(r.code, 1);
    assert.match(r.stderr, /EEXIST/);
    assert.strictEqual(fs.readFileSync(file, 'utf8'), 'keep me');
  });

  it('argument mistakes are usage errors naming the problem', async function () {
    const psk = makePsk(path.join(dir, 'k.psk'));
    const cases: Array<[string[], RegExp]> = [
      [['--tls', 'maybe'], /--tls must be off, on or require, not "maybe"/],
      [['--tls', 'require'], /--tls require needs --tls-certificates DIR or --tls-psk FILE/],
      [['--tls-psk', psk], /need --tls on or --tls require/],
      [['--tls', 'on', '--tls-psk', psk, '--tls-certificates', dir], /exclude each other/],
      [['--listen', `nbds://127.0.0.1:0/?tls-psk-file=${psk}`, '--tls', 'on'], /nbds listen URI requires TLS; --tls on contradicts it/],
      [['--listen', 'nbds://127.0.0.1:0/?tls-verify-peer=0'], /client settings/],
      [['--listen', 'nbd+unix:///'], /needs socket=PATH/],
      [['--listen', 'unix:'], /needs a path/],
      [['--listen', 'nbd://127.0.0.1/a', '--name', 'b'], /--name "b" and the listen URI's export "a" differ/],
    ];
    for (const [args, re] of cases) {
      const r = await refused(args);
      assert.strictEqual(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
    }
  });

  it('unusable TLS files are runtime errors naming the file, never its content', async function () {
    const bad = path.join(dir, 'bad.psk');
    fs.writeFileSync(bad, 'alice:0123456789abcdefXYZ\n', { mode: 0o600 });
    let r = await refused(['--tls', 'on', '--tls-psk', bad]);
    assert.strictEqual(r.code, 1);
    assert.match(r.stderr, /bad\.psk line 1 is not "username:hexkey"/);
    assert.doesNotMatch(r.stderr, /0123456789abcdef/);
    r = await refused(['--tls', 'on', '--tls-certificates', path.join(dir, 'nowhere')]);
    assert.strictEqual(r.code, 1);
    assert.match(r.stderr, /cannot read the server certificate .*nowhere\/server-cert\.pem: ENOENT/);
    const garbage = path.join(dir, 'garbage');
    fs.mkdirSync(garbage);
    fs.writeFileSync(path.join(garbage, 'server-cert.pem'), 'not a certificate');
    fs.writeFileSync(path.join(garbage, 'server-key.pem'), 'not a key', { mode: 0o600 });
    r = await refused(['--tls', 'on', '--tls-certificates', garbage]);
    assert.strictEqual(r.code, 1);
    assert.match(r.stderr, /the certificates in .*garbage cannot be used/);
  });

  before(() => requirePeer('nbdinfo'));
});
