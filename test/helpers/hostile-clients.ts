// Clients that try to make an NBD server hold memory or connections: readers that never read
// their replies, a flood of small requests whose replies are never read, a drip of them
// paced by the caller (replyDrip), handshakes that never finish, writes whose payload
// trickles in. Shared by the CI test
// (test/server/hostile-load.test.ts) and bench/hostile-load.ts. Requests are built by hand
// (raw-nbd.ts), not with our codec.
import * as net from 'net';
import { HOST } from './net';
import { goData, option, request, u32 } from './raw-nbd';

const READ = 0;
const WRITE = 1;
const OPT_GO = 7;

export type AttackKind = 'greedy-reader' | 'reply-flood' | 'slow-handshake' | 'trickle-writer';

export interface AttackOptions {
  port: number;
  exportName?: string;
  /** Size of each greedy READ and of the trickled WRITE (default 32 MiB). */
  requestBytes?: number;
  /** READs each greedy reader sends (default 8). */
  greedyRequests?: number;
  /** Zero-length READs a reply flood sends at most (default 2 000 000). */
  floodRequests?: number;
  /** Bytes a trickling writer sends per tick, and the tick (default 16 every 10 ms). */
  trickleBytes?: number;
  trickleMs?: number;
  /** Offset of the trickled write: somewhere the honest client does not look. */
  trickleOffset?: number;
}

export interface Attacker {
  readonly kind: AttackKind;
  /** Times the server closed this attacker's connection (it reconnects). */
  closedByServer: number;
  /** Connections refused at connect or closed before the greeting. */
  refused: number;
  stop(): void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port, noDelay: true });
    s.once('connect', () => {
      s.off('error', reject);
      s.on('error', () => undefined);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Reads exactly n bytes (handshake only; afterwards the socket is paused). */
function readExactly(s: net.Socket, n: number): Promise<Buffer> {
  if (n === 0) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const onData = (b: Buffer): void => {
      parts.push(b);
      got += b.length;
      if (got >= n) {
        s.off('data', onData);
        s.off('close', onClose);
        const all = Buffer.concat(parts);
        if (all.length > n) s.unshift(all.subarray(n));
        s.pause();
        resolve(all.subarray(0, n));
      }
    };
    const onClose = (): void => reject(new Error(`closed after ${got} of ${n} bytes`));
    s.on('data', onData);
    s.once('close', onClose);
    s.resume();
  });
}

/** After the greeting: fixed-newstyle handshake with GO; the socket is then left paused (replies unread). */
async function handshake(s: net.Socket, name: string): Promise<void> {
  s.write(u32(3));
  s.write(option(OPT_GO, goData(name)));
  for (;;) {
    const h = await readExactly(s, 20);
    const type = h.readUInt32BE(12);
    await readExactly(s, h.readUInt32BE(16));
    if (type === 1) return; // NBD_REP_ACK
    if (type !== 3) throw new Error(`GO refused: 0x${type.toString(16)}`);
  }
}

/** Writes b, waiting for 'drain' when the socket says so; false once the socket is gone. */
function writeWithBackpressure(s: net.Socket, b: Buffer): Promise<boolean> {
  if (s.destroyed) return Promise.resolve(false);
  if (s.write(b)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      s.off('drain', onDrain);
      s.off('close', onClose);
      resolve(ok);
    };
    const onDrain = (): void => done(true);
    const onClose = (): void => done(false);
    s.once('drain', onDrain);
    s.once('close', onClose);
  });
}

/**
 * A client that never reads its replies and asks for one zero-length READ each time the
 * caller calls drip(), after one READ of fillBytes that fills the socket's buffers, so that
 * every later reply waits in the server. Paced by the caller between other clients'
 * requests, each drip's reply is made among theirs.
 */
export async function replyDrip(port: number, fillBytes: number, exportName = ''): Promise<{ drip(): void; stop(): void }> {
  const s = await connect(port);
  await readExactly(s, 18);
  await handshake(s, exportName);
  s.write(request(READ, { cookie: 0n, offset: 0, length: fillBytes }));
  const one = request(READ, { cookie: 1n, offset: 0, length: 0 });
  return { drip: () => void s.write(one), stop: () => s.destroy() };
}

/** Starts one attacker; it reconnects whenever the server closes it, until stop(). */
export function startAttacker(kind: AttackKind, o: AttackOptions): Attacker {
  const name = o.exportName ?? '';
  const requestBytes = o.requestBytes ?? 32 * 1024 * 1024;
  let stopped = false;
  let sock: net.Socket | undefined;
  const a: Attacker = {
    kind,
    closedByServer: 0,
    refused: 0,
    stop: () => {
      stopped = true;
      sock?.destroy();
    },
  };

  /** False when the server closed the connection before its greeting (a refusal). */
  async function once(s: net.Socket): Promise<boolean> {
    try {
      await readExactly(s, 18);
    } catch {
      return false;
    }
    if (kind === 'slow-handshake') {
      // Half the client flags, then nothing: the handshake never finishes.
      s.write(Buffer.from([0, 0]));
      return true;
    }
    await handshake(s, name);
    switch (kind) {
      case 'greedy-reader': {
        const n = o.greedyRequests ?? 8;
        for (let i = 0; i < n && !stopped; i++) {
          await writeWithBackpressure(s, request(READ, { cookie: BigInt(i), offset: 0, length: requestBytes }));
        }
        return true;
      }
      case 'reply-flood': {
        const total = o.floodRequests ?? 2_000_000;
        const batch = 1024;
        const one = request(READ, { cookie: 1n, offset: 0, length: 0 });
        const chunk = Buffer.concat(Array.from({ length: batch }, () => one));
        for (let sent = 0; sent < total && !stopped; sent += batch) {
          if (!(await writeWithBackpressure(s, chunk))) break;
        }
        return true;
      }
      case 'trickle-writer': {
        const step = o.trickleBytes ?? 16;
        s.write(request(WRITE, { cookie: 1n, offset: o.trickleOffset ?? 0, length: requestBytes }));
        const bytes = Buffer.alloc(step, 0xa5);
        for (let sent = 0; sent + step <= requestBytes && !stopped && !s.destroyed; sent += step) {
          s.write(bytes);
          await sleep(o.trickleMs ?? 10);
        }
        return true;
      }
    }
  }

  void (async () => {
    while (!stopped) {
      let s: net.Socket;
      try {
        s = await connect(o.port);
      } catch {
        a.refused++;
        await sleep(100);
        continue;
      }
      sock = s;
      const closed = new Promise<void>((r) => s.once('close', () => r()));
      let greeted = true;
      try {
        greeted = await once(s);
      } catch {
        // closed by the server during the handshake: counted below
      }
      await closed;
      if (!stopped) {
        if (greeted) a.closedByServer++;
        else a.refused++;
        await sleep(100);
      }
    }
  })();
  return a;
}
