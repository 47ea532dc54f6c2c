// `serve` under systemd (Type=notify, netdisk-ublk-serve@.service): READY=1 only once the
// port accepts connections, STOPPING=1 when a signal begins the shutdown. The notification
// socket is a real unix datagram socket (test/helpers/notify-socket.ts), not systemd.
import * as assert from 'assert';
import * as path from 'path';
import { tempDir } from '../helpers/images';
import { freePort, HOST } from '../helpers/net';
import { notifySocket } from '../helpers/notify-socket';
import { cleanupAfterEach, spawnChild } from '../helpers/procs';
import { cliPath } from '../helpers/serve';

describe('cli: serve tells systemd when it is ready and when it stops', function () {
  this.timeout(120_000);
  const cleanup = cleanupAfterEach();

  it('READY=1 once the port listens, STATUS says what it serves, STOPPING=1 on SIGTERM', async () => {
    const dir = tempDir(cleanup);
    const port = await freePort();
    const ns = await notifySocket(cleanup, { port });
    const serve = cleanup.child(spawnChild(process.execPath, [cliPath(), 'serve', path.join(dir, 'disk.img'), '--size', '4M',
      '--listen', `${HOST}:${port}`], { env: { ...process.env, NOTIFY_SOCKET: ns.path, NETDISK_LOG_FORMAT: 'json' } }));
    const ready = await ns.waitFor('READY=1', 60_000);
    assert.strictEqual(ready.listening, true, 'READY=1 came before the port accepted connections');
    assert.deepStrictEqual(ns.received()[0], ready, 'something came before READY=1');
    assert.match(ready.msg, /^STATUS=serving .*disk\.img \(4M\) as export "" on 127\.0\.0\.1:\d+$/m);
    serve.proc.kill('SIGTERM');
    const e = await serve.exited;
    assert.strictEqual(e.code, 0, serve.stderr());
    const stopping = await ns.waitFor('STOPPING=1', 10_000);
    assert.match(stopping.msg, /^STATUS=shutting down/m);
  });

  it('a NOTIFY_SOCKET nobody listens on is logged, and serve works on', async () => {
    const dir = tempDir(cleanup);
    const port = await freePort();
    const serve = cleanup.child(spawnChild(process.execPath, [cliPath(), 'serve', path.join(dir, 'disk.img'), '--size', '4M',
      '--listen', `${HOST}:${port}`], { env: { ...process.env, NOTIFY_SOCKET: path.join(dir, 'nobody'), NETDISK_LOG_FORMAT: 'json' } }));
    const deadline = Date.now() + 60_000;
    while (!/"msg":"cannot notify systemd"/.test(serve.stderr()) && !serve.done && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(serve.stderr(), /"err":"sendto [^"]*ENOENT\)".*"msg":"cannot notify systemd"/);
    assert.ok(!serve.done, `serve exited: ${serve.stderr()}`);
    serve.proc.kill('SIGTERM');
    assert.strictEqual((await serve.exited).code, 0);
  });
});
