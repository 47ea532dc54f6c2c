// systemd's side of sd_notify(3) without systemd: a unix datagram socket bound by python3
// (Node has no unix datagram sockets), which records every message together with what it
// saw at the moment it arrived: whether each of the given paths exists, and whether a TCP
// port accepts connections. A message that says READY=1 can thus be checked against the
// state of the world when it came.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Child, Cleanup, spawnChild } from './procs';

const RECEIVER = `
import glob, json, os, socket, sys
path, pattern, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
print(json.dumps({'bound': True}), flush=True)
while True:
    msg = s.recv(4096).decode()
    seen = {'msg': msg, 'paths': sorted(glob.glob(pattern)) if pattern else []}
    if port:
        c = socket.socket()
        try:
            c.connect(('127.0.0.1', port))
            seen['listening'] = True
        except OSError:
            seen['listening'] = False
        c.close()
    print(json.dumps(seen), flush=True)
`;

export interface Notification {
  /** The datagram, e.g. "READY=1\\nSTATUS=...". */
  msg: string;
  /** The paths matching the pattern when it arrived. */
  paths: string[];
  /** Whether 127.0.0.1:port accepted a connection when it arrived (when a port was given). */
  listening?: boolean;
}

export interface NotifySocket {
  /** What NOTIFY_SOCKET must say. */
  readonly path: string;
  readonly child: Child;
  received(): Notification[];
  /** Waits until a message has `field` (e.g. "READY=1") among its lines. */
  waitFor(field: string, limitMs: number): Promise<Notification>;
}

export async function notifySocket(cleanup: Cleanup, opts: { glob?: string; port?: number } = {}): Promise<NotifySocket> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-notify-'));
  cleanup.add(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'notify');
  const child = cleanup.child(spawnChild('python3', ['-c', RECEIVER, sock, opts.glob ?? '', String(opts.port ?? 0)]));
  const lines = (): Array<Notification & { bound?: boolean }> => child.stdout().toString().split('\n')
    .filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Notification & { bound?: boolean });
  const wait = async (what: string, cond: () => Notification | undefined, limitMs: number): Promise<Notification> => {
    const deadline = Date.now() + limitMs;
    for (;;) {
      const n = cond();
      if (n) return n;
      if (child.done) throw new Error(`the notification socket's receiver exited: ${child.stderr()}`);
      if (Date.now() > deadline) throw new Error(`no ${what} within ${limitMs} ms; received: ${JSON.stringify(lines())}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await wait('bind', () => lines().find((l) => l.bound), 30_000);
  const received = (): Notification[] => lines().filter((l) => !l.bound);
  return {
    path: sock,
    child,
    received,
    waitFor: (field, limitMs) => wait(field, () => received().find((n) => n.msg.split('\n').includes(field)), limitMs),
  };
}
