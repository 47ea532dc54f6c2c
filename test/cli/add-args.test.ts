// `add` refuses bad arguments before it touches the driver or the network: exit 2, one line
// that names the command and the option, no stack trace, and no state left behind.
import * as assert from 'assert';
import * as fs from 'fs';
import { CLI, privateRunDir, run } from '../device/helpers';

describe('cli: add with bad arguments', function () {
  this.timeout(120_000);
  const runDir = privateRunDir();

  const cases: Array<[string[], RegExp]> = [
    [['--remote', 'h:1', '--queues', '99'], /^netdisk-ublk add: --queues must be between 1 and 64, not 99$/m],
    [['--remote', 'h:1', '--queues', '0'], /^netdisk-ublk add: --queues must be between 1 and 64, not 0$/m],
    [['--remote', 'h:1', '--depth', 'abc'], /^netdisk-ublk add: --depth must be a whole number, not "abc"$/m],
    [['--remote', 'h:1', '--timeout=-5'], /^netdisk-ublk add: --timeout must be a whole number, not "-5"$/m],
    [['--remote', 'h:1', '--max-io', '3x'], /^netdisk-ublk add: --max-io: /m],
    [['--remote', 'h:99999'], /^netdisk-ublk add: .*invalid port "99999"/m],
    [['--queues', '2'], /^netdisk-ublk add: --remote URI\|HOST\[:PORT\] is required/m],
    [['--remote', 'nbd://h:0/'], /^netdisk-ublk add: --remote port 0 is not valid$/m],
    [['--remote', 'nbd+unix:///disk'], /^netdisk-ublk add: --remote: nbd\+unix: needs socket=PATH$/m],
    [['--remote', 'nbds://h/?tls-frob=1'], /^netdisk-ublk add: --remote: unknown query parameter "tls-frob"/m],
    [['--remote', 'nbds://alice:pw@h/'], /^netdisk-ublk add: --remote: a password in the URI is not accepted/m],
    [['--remote', 'nbd://h/a', '--export', 'b'], /^netdisk-ublk add: --export "b" and the URI's export "a" differ$/m],
    [['--remote', 'h:1', 'extra'], /^netdisk-ublk add: unexpected argument "extra"/m],
    [['--remote', 'h:1', '--bogus'], /^netdisk-ublk add: Unknown option '--bogus'/m],
    [['--remote', 'h:1', '--metrics', '9100'], /^netdisk-ublk add: --metrics needs a port: HOST:PORT, :PORT or unix:PATH, not "9100"$/m],
  ];
  for (const [args, message] of cases) {
    it(`add ${args.join(' ')}`, async () => {
      const r = await run(process.execPath, [CLI, 'add', ...args], { env: runDir().env, timeoutMs: 60_000 });
      assert.ok(!r.timedOut, 'add hung');
      assert.strictEqual(r.code, 2, `exit code (stderr: ${r.stderr})`);
      assert.strictEqual(r.stdout, '');
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /^\s+at /m, 'a stack trace instead of a message');
      assert.deepStrictEqual(fs.readdirSync(runDir().dir), []);
    });
  }
});
