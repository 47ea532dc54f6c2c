// `netdisk-ublk serve` as a user runs it: bad arguments are usage errors (exit 2), a
// server that cannot start is a runtime error (exit 1), each with one clear line on
// stderr and no stack trace.
import * as assert from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import * as path from 'path';
import { NbdClient } from '../../src/nbd/client';
import { Cleanup, cleanupAfterEach, spawnChild } from '../helpers/procs';
import { makeImage, MiB, tempDir } from '../helpers/images';
import { HOST, listen } from '../helpers/net';
import { requirePeer } from '../helpers/peers';
import { cliPath, serveImage } from '../helpers/serve';

interface CliResult {
  /** Exit code, or 'serving' when it started serving instead of exiting (then killed). */
  code: number | null | 'serving';
  stdout: string;
  stderr: string;
}

/** Runs the CLI; a server that starts instead of failing is killed and reported. */
async function cli(cleanup: Cleanup, args: string[], opts: { prefix?: string[] } = {}): Promise<CliResult> {
  const argv = [...(opts.prefix ?? []), process.execPath, cliPath(), ...args];
  const child = cleanup.child(spawnChild(argv[0] as string, argv.slice(1), { env: { ...process.env, NETDISK_LOG_FORMAT: 'json' } }));
  let serving = false;
  child.proc.stderr?.on('data', () => {
    if (!serving && /"msg":"serving"/.test(child.stderr())) {
      serving = true;
      child.proc.kill('SIGKILL');
    }
  });
  const e = await child.exited;
  return { code: serving ? 'serving' : e.code, stdout: child.stdout().toString(), stderr: child.stderr() };
}

/** One message line, prefixed with the command, no stack trace. */
function assertMessage(r: CliResult, re: RegExp): void {
  assert.match(r.stderr, /^netdisk-ublk serve: /, `stderr: ${r.stderr}`);
  assert.match(r.stderr, re, `stderr: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, `a stack trace on stderr: ${r.stderr}`);
}

describe('cli: serve', function () {
  const cleanup = cleanupAfterEach();
  let dir = '';
  beforeEach(() => {
    dir = tempDir(cleanup);
  });

  describe('usage errors exit 2', function () {
    it('an unknown option', async function () {
      const r = await cli(cleanup, ['serve', path.join(dir, 'x.img'), '--size', '1M', '--bogus']);
      assert.strictEqual(r.code, 2);
      assertMessage(r, /--bogus/);
    });

    it('no IMAGE, and two IMAGEs', async function () {
      for (const args of [['serve'], ['serve', '--size', '1M'], ['serve', 'a.img', 'b.img']]) {
        const r = await cli(cleanup, args);
        assert.strictEqual(r.code, 2, args.join(' '));
        assertMessage(r, /expected one IMAGE/);
        assert.match(r.stderr, /usage: netdisk-ublk serve IMAGE/);
      }
    });

    it('a bad --size, and --size without a value', async function () {
      for (const size of ['12Q', 'lots', '-1M', '0', '1e3']) {
        const r = await cli(cleanup, ['serve', path.join(dir, 'x.img'), '--size', size]);
        assert.strictEqual(r.code, 2, `--size ${size}: ${r.stderr}`);
        assertMessage(r, /--size/);
      }
      const r = await cli(cleanup, ['serve', path.join(dir, 'x.img'), '--size']);
      assert.strictEqual(r.code, 2);
      assertMessage(r, /--size/);
      assert.ok(!fs.existsSync(path.join(dir, 'x.img')), 'a usage error created the image');
    });

    it('a bad --listen port', async function () {
      for (const listenArg of ['127.0.0.1:99999', '127.0.0.1:port', ':-1', '127.0.0.1:']) {
        const r = await cli(cleanup, ['serve', path.join(dir, 'x.img'), '--size', '1M', '--listen', listenArg]);
        assert.strictEqual(r.code, 2, `--listen ${listenArg}: ${r.stderr}`);
        assertMessage(r, /--listen: invalid port/);
      }
      assert.ok(!fs.existsSync(path.join(dir, 'x.img')), 'a usage error created the image');
    });

    it('a bad --max-connections or --handshake-timeout', async function () {
      for (const [flag, value] of [['--max-connections', '0'], ['--max-connections', 'many'], ['--handshake-timeout', '0'], ['--handshake-timeout', '1.5']]) {
        const r = await cli(cleanup, ['serve', path.join(dir, 'x.img'), '--size', '1M', flag as string, value as string]);
        assert.strictEqual(r.code, 2, `${flag} ${value}: ${r.stderr}`);
        assertMessage(r, new RegExp(`${flag} must be`));
      }
      assert.ok(!fs.existsSync(path.join(dir, 'x.img')), 'a usage error created the image');
    });

    it('an unknown command', async function () {
      const r = await cli(cleanup, ['srve', 'x.img']);
      assert.strictEqual(r.code, 2);
      assert.match(r.stderr, /unknown command "srve"/);
    });

    it('--help is not an error', async function () {
      const r = await cli(cleanup, ['serve', '--help']);
      assert.strictEqual(r.code, 0);
      assert.match(r.stdout, /usage: netdisk-ublk serve IMAGE/);
    });
  });

  describe('runtime errors exit 1', function () {
    it('a missing image without --size', async function () {
      const r = await cli(cleanup, ['serve', path.join(dir, 'missing.img'), '--listen', `${HOST}:0`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, /missing\.img does not exist \(give --size to create it\)/);
      assert.ok(!fs.existsSync(path.join(dir, 'missing.img')));
    });

    it('a missing image with --read-only, even with --size', async function () {
      const r = await cli(cleanup, ['serve', path.join(dir, 'missing.img'), '--size', '1M', '--read-only', '--listen', `${HOST}:0`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, /does not exist/);
      assert.ok(!fs.existsSync(path.join(dir, 'missing.img')));
    });

    it('a directory', async function () {
      const r = await cli(cleanup, ['serve', dir, '--listen', `${HOST}:0`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, /is a directory/);
    });

    it('an empty image without --size, and an image larger than --size', async function () {
      const empty = makeImage(dir, 'empty.img', 0);
      let r = await cli(cleanup, ['serve', empty, '--listen', `${HOST}:0`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, /empty/);
      const big = makeImage(dir, 'big.img', 2 * MiB);
      r = await cli(cleanup, ['serve', big, '--size', '1M', '--listen', `${HOST}:0`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, /refusing to shrink/);
      assert.strictEqual(fs.statSync(big).size, 2 * MiB);
    });

    it('an image the user may not write: exit 1 with a hint; --read-only serves it', async function () {
      // Tests run as root, who may write anything; run the server as nobody instead.
      const setpriv = requirePeer('setpriv');
      fs.chmodSync(dir, 0o755);
      const image = makeImage(dir, 'root-owned.img', MiB);
      fs.chmodSync(image, 0o644);
      const asNobody = [setpriv, '--reuid=nobody', '--regid=nogroup', '--clear-groups', '--'];
      const r = await cli(cleanup, ['serve', image, '--listen', `${HOST}:0`], { prefix: asNobody });
      assert.strictEqual(r.code, 1, r.stderr);
      assertMessage(r, /permission denied \(EACCES\); use --read-only/);
      const ro = await cli(cleanup, ['serve', image, '--read-only', '--listen', `${HOST}:0`], { prefix: asNobody });
      assert.strictEqual(ro.code, 'serving', `as nobody with --read-only: ${ro.stderr}`);
    });

    it('a port already in use', async function () {
      const blocker = net.createServer();
      const port = await listen(blocker);
      cleanup.add(() => new Promise((r) => blocker.close(r)));
      const image = makeImage(dir, 'disk.img', MiB);
      const r = await cli(cleanup, ['serve', image, '--listen', `${HOST}:${port}`]);
      assert.strictEqual(r.code, 1);
      assertMessage(r, new RegExp(`cannot listen on ${HOST.replace(/\./g, '\\.')}:${port}: EADDRINUSE`));
    });
  });

  describe('serving', function () {
    it('creates the image with --size, logs where it listens, and exits 0 on SIGTERM', async function () {
      const image = path.join(dir, 'new.img');
      const srv = await serveImage(cleanup, image, { size: '3M', name: 'n' });
      assert.strictEqual(fs.statSync(image).size, 3 * MiB);
      const line = srv.logs().find((l) => l.msg === 'serving');
      assert.ok(line);
      assert.deepStrictEqual({ size: line.size, export: line.export, readOnly: line.readOnly, listen: line.listen },
        { size: 3 * MiB, export: 'n', readOnly: false, listen: `${HOST}:${srv.port}` });
      const c = await NbdClient.connect({ host: HOST, port: srv.port, exportName: 'n' });
      assert.strictEqual(c.size, 3 * MiB);
      await c.close();
      assert.deepStrictEqual(await srv.stop('SIGTERM'), { code: 0, signal: null });
    });

    it('grows a smaller image (sparse) to --size, keeping its data', async function () {
      const image = makeImage(dir, 'small.img', MiB, 'random');
      const before = fs.readFileSync(image);
      const srv = await serveImage(cleanup, image, { size: '4M' });
      assert.strictEqual(fs.statSync(image).size, 4 * MiB);
      const c = await NbdClient.connect({ host: HOST, port: srv.port });
      assert.ok((await c.read(0, MiB)).equals(before));
      assert.ok((await c.read(MiB, 3 * MiB)).equals(Buffer.alloc(3 * MiB)));
      await c.close();
      assert.strictEqual((await srv.stop()).code, 0);
    });
  });
});
