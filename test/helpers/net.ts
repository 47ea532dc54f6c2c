// Ports for tests: port 0 where the program can report what it got, otherwise a port the
// kernel just handed out (and a retry if someone took it in between).
import * as net from 'net';

export const HOST = '127.0.0.1';

/** A port that was free a moment ago: bound on port 0, then released. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host: HOST, port: 0, exclusive: true }, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** One TCP connect attempt: true when something accepted it. */
export function canConnect(port: number, host = HOST): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What waitForPort watches: a process that may die first, and what it said. */
export interface Watched {
  readonly done: boolean;
  stderr(): string;
}

/**
 * Waits until `port` accepts connections. Fails as soon as `child` exits (its stderr says
 * why), and after `limitMs` as a guard against a hang, not as a measurement.
 */
export async function waitForPort(port: number, child: Watched, what: string, limitMs = 15000): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (child.done) throw new Error(`${what} exited before listening on ${port}:\n${child.stderr()}`);
    if (await canConnect(port)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port}:\n${child.stderr()}`);
    await sleep(20);
  }
}

/** A listening net.Server on 127.0.0.1 port 0, with its port. */
export function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0 }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}
