// `add` when it cannot work: every failure says why on stderr in one line a user can act
// on (no stack trace), exits non-zero, and leaves nothing behind: no /dev/ublkb*, no
// `list` entry, no state record, no stray log of a daemon that never served.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  CLI, HOST, RUN_DIR, assertKernelLogClean, assertNoDevices, cli, deviceSuite, freePort, markKernelLog, records, run,
  tcpServer, ublkNodes, type RunResult,
} from './helpers';

function strayDaemonLogs(): string[] {
  try {
    return fs.readdirSync(RUN_DIR).filter((n) => /^daemon-.*\.log$/.test(n));
  } catch {
    return [];
  }
}

let mark = '';

/**
 * The failure is reported as a message, with the expected exit code, and left nothing
 * behind. `list` is asked too unless `quick` (a usage error never reaches the kernel; the
 * /dev and record checks, which are what `list` reads, still run).
 */
async function assertFailed(r: RunResult, code: number, message: RegExp, quick = false): Promise<void> {
  assert.ok(!r.timedOut, `add hung instead of failing:\n${r.stderr}`);
  assert.strictEqual(r.code, code, `exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, message);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
  assert.strictEqual(r.stdout, '', 'nothing on stdout: no device was created');
  if (quick) {
    assert.deepStrictEqual(ublkNodes(), ['ublk-control'], 'ublk nodes left in /dev');
    assert.deepStrictEqual(records(), [], `state records left in ${RUN_DIR}`);
  } else {
    await assertNoDevices();
  }
  assert.deepStrictEqual(strayDaemonLogs(), [], `logs of failed daemons left in ${RUN_DIR}`);
  await assertKernelLogClean(mark);
}

describe('device: add failures (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();
  beforeEach(function () {
    mark = markKernelLog(this.currentTest?.fullTitle() ?? 'add failure');
  });

  it('nothing listening on the port: "connection refused"', async () => {
    const port = await freePort();
    const r = await cli(['add', '--remote', `${HOST}:${port}`], { timeoutMs: 120_000 });
    await assertFailed(r, 1, new RegExp(`${HOST}:${port}.*connection refused`, 'i'));
  });

  it('a server that closes every connection at once', async () => {
    const srv = await tcpServer((s) => s.destroy());
    try {
      const r = await cli(['add', '--remote', `${HOST}:${srv.port}`], { timeoutMs: 120_000 });
      await assertFailed(r, 1, new RegExp(`${HOST}:${srv.port}.*closed the connection`));
    } finally {
      await srv.close();
    }
  });

  it('a server that is not an NBD server', async () => {
    const srv = await tcpServer((s) => s.write('SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n'));
    try {
      const r = await cli(['add', '--remote', `${HOST}:${srv.port}`], { timeoutMs: 120_000 });
      await assertFailed(r, 1, new RegExp(`${HOST}:${srv.port}.*(NBD|magic)`, 'i'));
    } finally {
      await srv.close();
    }
  });

  it('a server that accepts and never speaks: a handshake timeout, not a hang', async () => {
    const srv = await tcpServer(() => undefined);
    try {
      const r = await cli(['add', '--remote', `${HOST}:${srv.port}`], { timeoutMs: 120_000 });
      await assertFailed(r, 1, new RegExp(`${HOST}:${srv.port}.*(handshake|timed out|within)`, 'i'));
    } finally {
      await srv.close();
    }
  });

  it('an export the server does not have', async () => {
    const e = env();
    const server = await e.serve(path.join(e.dir, 'named.img'), { size: '8M', name: 'disk' });
    const r = await cli(['add', '--remote', `${HOST}:${server.port}`, '--export', 'nope'], { timeoutMs: 120_000 });
    await assertFailed(r, 1, /"nope"/);
    assert.match(r.stderr, /no export|unknown export/);
  });

  describe('bad arguments: exit 2 and the option named', () => {
    const cases: Array<{ args: string[]; message: RegExp }> = [
      { args: ['--remote', `${HOST}:10809`, '--queues', '0'], message: /--queues/ },
      { args: ['--remote', `${HOST}:10809`, '--depth', 'abc'], message: /--depth.*"abc"/ },
      { args: [], message: /--remote/ },
      { args: ['--remote', `${HOST}:99999`], message: /port/ },
      { args: ['--remote', `${HOST}:10809`, '--bogus'], message: /--bogus/ },
    ];
    for (const c of cases) {
      it(`add ${c.args.join(' ') || '(no arguments)'}`, async () => {
        const r = await cli(['add', ...c.args], { timeoutMs: 60_000 });
        await assertFailed(r, 2, c.message, true);
      });
    }
  });

  it('not root: a message about root / CAP_SYS_ADMIN', async () => {
    const e = env();
    const server = await e.serve(path.join(e.dir, 'root.img'), { size: '8M' });
    const r = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--',
      process.execPath, CLI, 'add', '--remote', `${HOST}:${server.port}`], { timeoutMs: 120_000, env: { ...process.env, HOME: '/' } });
    await assertFailed(r, 1, /root|CAP_SYS_ADMIN/);
  });
});
