// `add --foreground` under systemd (Type=notify, contrib/systemd/netdisk-ublk@.service):
// READY=1 only once /dev/ublkbN exists, STATUS= lines when the store's connection is lost
// and comes back, STOPPING=1 when SIGTERM begins the shutdown. systemd's side is a real
// unix datagram socket (test/helpers/notify-socket.ts) that looks at /dev on each message.
import * as assert from 'assert';
import * as path from 'path';
import { FaultProxy } from '../helpers/fault-proxy';
import { notifySocket, type Notification, type NotifySocket } from '../helpers/notify-socket';
import { cleanupAfterEach } from '../helpers/procs';
import { CLI, HOST, assertKernelLogClean, assertNoDevices, deviceSuite, markKernelLog, start, waitFor } from './helpers';

describe('device: add --foreground speaks systemd\'s readiness protocol (real kernel)', function () {
  this.timeout(600_000);
  const env = deviceSuite();
  const cleanup = cleanupAfterEach();

  it('READY=1 after /dev/ublkbN exists and not before; STATUS on reconnect; STOPPING=1 on SIGTERM', async function () {
    const e = env();
    const mark = markKernelLog(this.test?.fullTitle() ?? 'notify');
    const server = await e.serve(path.join(e.dir, 'notify.img'), { size: '16M' });
    const proxy = await FaultProxy.start({ port: server.port });
    cleanup.add(() => proxy.close());
    const ns = await notifySocket(cleanup, { glob: '/dev/ublkb*' });
    const fg = start(process.execPath, [CLI, 'add', '--remote', `${HOST}:${proxy.port}`, '--foreground', '--json'], {
      timeoutMs: 300_000, env: { ...process.env, NETDISK_LOG_FORMAT: 'json', NOTIFY_SOCKET: ns.path },
    });
    cleanup.add(async () => {
      if (!fg.done) fg.signal('SIGKILL');
      await fg.result;
    });
    const ready = await ns.waitFor('READY=1', 120_000);
    assert.ok(!fg.done, `add --foreground exited:\n${fg.stderr()}`);
    await waitFor('the daemon to print its device', () => /"device"/.test(fg.stdout()), 10_000);
    const device = (JSON.parse(fg.stdout().split('\n')[0] as string) as { device: string }).device;
    assert.deepStrictEqual(ns.received()[0], ready, 'a message came before READY=1');
    assert.ok(ready.paths.includes(device), `${device} did not exist when READY=1 arrived (saw ${ready.paths.join(', ') || 'none'})`);
    assert.match(ready.msg, new RegExp(`^STATUS=${device} is live \\(16M from nbd://127\\.0\\.0\\.1:${proxy.port}`, 'm'));

    // The store's connection is cut: systemctl status shows it lost, then back.
    proxy.cut();
    await waitForStatus(ns, /connection to the store lost/, 60_000);
    const back = await waitForStatus(ns, /reconnected after [\d.]+ s, \d+ requests resent/, 60_000);
    assert.match(back.msg, /^STATUS=queue 0: /);

    fg.signal('SIGTERM');
    const r = await fg.result;
    assert.strictEqual(r.code, 0, `exit code after SIGTERM:\n${r.stderr}`);
    const stopping = await ns.waitFor('STOPPING=1', 10_000);
    assert.match(stopping.msg, new RegExp(`^STATUS=stopping ${device}`, 'm'));
    const msgs = ns.received().map((n) => n.msg.split('\n')[0]);
    assert.strictEqual(msgs.filter((m) => m === 'READY=1').length, 1, `READY=1 more than once: ${JSON.stringify(msgs)}`);
    await assertNoDevices();
    await assertKernelLogClean(mark);
  });
});

async function waitForStatus(ns: NotifySocket, re: RegExp, limitMs: number): Promise<Notification> {
  let found: Notification | undefined;
  await waitFor(`a STATUS= matching ${re}`, () => {
    found = ns.received().find((n) => /^STATUS=/m.test(n.msg) && re.test(n.msg));
    return found !== undefined;
  }, limitMs, 50);
  return found as Notification;
}
