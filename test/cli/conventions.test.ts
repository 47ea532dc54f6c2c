// The conventions every command keeps: --version, --help with an example and the exit
// codes, usage errors exit 2, and colour only on a terminal and never with NO_COLOR.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import { tempDir } from '../helpers/images';
import { freePort, HOST } from '../helpers/net';
import { cleanupAfterAll, run, runUntilSeen } from '../helpers/procs';
import { cliPath } from '../helpers/serve';
import { repoRoot } from '../helpers/vm';

const COMMANDS = ['serve', 'add', 'del', 'list', 'stats', 'recover', 'bench'];

function cli(args: string[], env: NodeJS.ProcessEnv = process.env) {
  return run(process.execPath, [cliPath(), ...args], { env });
}

describe('cli: conventions', function () {
  this.timeout(120_000);

  it('--version prints the package version', async () => {
    const pj = JSON.parse(fs.readFileSync(path.join(repoRoot(), 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag]);
      assert.strictEqual(r.code, 0);
      assert.strictEqual(r.stdout.toString(), `netdisk-ublk ${pj.version}\n`);
    }
  });

  for (const cmd of COMMANDS) {
    it(`${cmd} --help: usage, one example, the exit codes; help ${cmd} says the same`, async () => {
      const r = await cli([cmd, '--help']);
      assert.strictEqual(r.code, 0, r.stderr);
      const text = r.stdout.toString();
      assert.match(text, new RegExp(`^usage: netdisk-ublk ${cmd}`));
      assert.match(text, new RegExp(`\\nexample:\\n  netdisk-ublk ${cmd} \\S`));
      assert.match(text, /\nexit codes:\n {2}0 .*\n {2}1 .*\n {2}2 .*usage/);
      const h = await cli(['help', cmd]);
      assert.strictEqual(h.code, 0);
      assert.strictEqual(h.stdout.toString(), text);
    });
  }

  it('without a command: the usage on stderr, exit 2; an unknown command: exit 2', async () => {
    const r = await cli([]);
    assert.strictEqual(r.code, 2);
    assert.match(r.stderr, /^usage: netdisk-ublk COMMAND/);
    assert.match(r.stderr, /exit codes:/);
    const u = await cli(['frobnicate']);
    assert.strictEqual(u.code, 2);
    assert.match(u.stderr, /^netdisk-ublk: unknown command "frobnicate"/);
  });

  describe('colour', () => {
    const cleanup = cleanupAfterAll();
    let dir: string;
    before(() => { dir = tempDir(cleanup); });

    async function serveOnPty(env: NodeJS.ProcessEnv): Promise<string> {
      const port = await freePort();
      const r = await runUntilSeen([process.execPath, cliPath(), 'serve', path.join(dir, 'disk.img'), '--size', '1M',
        '--listen', `${HOST}:${port}`], { until: 'serving', on: 'pty', env });
      assert.strictEqual(r.code, 0, r.stderr);
      const out = r.stdout.toString();
      assert.match(out, /serving/, 'serve never said it was serving');
      return out;
    }

    const env = (extra: Record<string, string>): NodeJS.ProcessEnv => {
      const e: NodeJS.ProcessEnv = { ...process.env, ...extra };
      delete e.NETDISK_LOG_FORMAT;
      if (!('NO_COLOR' in extra)) delete e.NO_COLOR;
      return e;
    };

    it('on a terminal the log is readable text in colour', async () => {
      const out = await serveOnPty(env({}));
      assert.match(out, /\x1b\[\d+m/, 'no colour on a terminal');
      assert.doesNotMatch(out, /"msg":/, 'JSON on a terminal');
    });

    it('NO_COLOR=1 on a terminal: readable text without colour', async () => {
      const out = await serveOnPty(env({ NO_COLOR: '1' }));
      assert.doesNotMatch(out, /\x1b\[/);
      assert.match(out, /INFO.*serving/);
    });

    it('not a terminal: the readable format asked for by name still has no colour', async () => {
      const port = await freePort();
      const r = await runUntilSeen([process.execPath, cliPath(), 'serve', path.join(dir, 'disk.img'), '--size', '1M',
        '--listen', `${HOST}:${port}`], { until: 'serving', on: 'stderr', env: env({ NETDISK_LOG_FORMAT: 'pretty' }) });
      assert.strictEqual(r.code, 0, r.stderr);
      const out = r.stdout.toString();
      assert.match(out, /serving/);
      assert.doesNotMatch(out, /\x1b\[/);
    });
  });
});
