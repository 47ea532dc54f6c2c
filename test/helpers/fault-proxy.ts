// A TCP proxy that misbehaves on demand, to put network faults between an NBD client and
// its store without touching either: forward (normal), black-hole (nothing moves in either
// direction, every socket stays open, new connections are accepted but go nowhere), cut
// (every connection is destroyed; new ones still work) and delay (each chunk is held for a
// while, both ways or only the store's replies; order is kept, also across a change of
// mode, since a stream delivered out of order is no longer a network fault but a new protocol). It runs in the test process: the kernel is never involved in it, so
// a client stuck in the kernel does not stop it, as long as the test process itself only
// waits asynchronously.
//
// A black hole holds bytes rather than dropping them: in a real partition TCP keeps
// unacknowledged data and retransmits it when the path heals, so a connection that
// survives the partition sees every byte, in order, late. A client that gives up on a
// connection meanwhile and closes it (FIN) still has its bytes delivered to the store when
// the hole closes, followed by the end of the connection, as an orphaned TCP socket would
// do; one that resets it (RST) loses them, as its socket is gone.
import * as net from 'net';
import { HOST } from './net';

export type ProxyMode = 'forward' | 'blackhole' | 'delay';

interface Side {
  sock: net.Socket;
  /** Bytes read from this side and not yet written to the other. */
  held: Buffer[];
  /** This side sent its FIN (or closed): the other side is ended once `held` is out. */
  ended: boolean;
  connected: boolean;
  closed: boolean;
  /** Chunks on their way to this side (null: the end), each written once due and all before it are. */
  late: Array<{ due: number; b: Buffer | null }>;
  endQueued: boolean;
  timer: NodeJS.Timeout | null;
}

interface Pair {
  readonly id: number;
  client: Side;
  server: Side | null;
  /** The backend connection has been attempted (it waits while the proxy is a black hole). */
  dialled: boolean;
  closed: boolean;
  /** Held back until this time (ms since the epoch) even when forwarding. */
  lateUntil: number;
}

export interface ProxyStats {
  /** Connections accepted from clients, in total. */
  accepted: number;
  /** Connections open now. */
  open: number;
  /** Bytes forwarded client -> server and server -> client. */
  up: number;
  down: number;
}

export interface ProxyEvent {
  t: number;
  what: string;
}

export class FaultProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<Pair>();
  private nextId = 1;
  private mode: ProxyMode = 'forward';
  private delayMs = 0;
  private delayUp = true;
  readonly stats: ProxyStats = { accepted: 0, open: 0, up: 0, down: 0 };
  /** What happened, with timestamps (ms since the epoch), for a test's timeline. */
  readonly events: ProxyEvent[] = [];
  /** Every byte forwarded, per direction, when recording (to check what crossed in clear text). */
  recording: { up: Buffer[]; down: Buffer[] } | null = null;
  port = 0;

  private constructor(private target: { host: string; port: number }) {
    this.server = net.createServer({ noDelay: true, pauseOnConnect: true }, (sock) => this.accept(sock));
  }

  /** A proxy on 127.0.0.1 (port 0 unless given) forwarding to target. */
  static async start(target: { host?: string; port: number }, listenPort = 0): Promise<FaultProxy> {
    const p = new FaultProxy({ host: target.host ?? HOST, port: target.port });
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen({ host: HOST, port: listenPort }, () => {
        p.server.off('error', reject);
        resolve();
      });
    });
    p.port = (p.server.address() as net.AddressInfo).port;
    return p;
  }

  get currentMode(): ProxyMode {
    return this.mode;
  }

  /** Where new connections go (existing ones keep their backend). */
  retarget(port: number, host = HOST): void {
    this.target = { host, port };
  }

  /**
   * Normal forwarding; bytes held by a black hole or a delay are delivered first, in order.
   * With `lateForClosedMs`, connections whose client closed during the black hole get their
   * held bytes (and their end) only that much later: the retransmissions of an orphaned
   * TCP socket, whose backed-off timer fires well after the path healed, while the
   * client's new connection is already in use.
   */
  forward(opts: { lateForClosedMs?: number } = {}): void {
    const late = opts.lateForClosedMs ?? 0;
    if (late > 0 && this.mode === 'blackhole') {
      for (const p of this.pairs) {
        if (!p.client.ended) continue;
        p.lateUntil = Date.now() + late;
        setTimeout(() => {
          p.lateUntil = 0;
          if (p.closed) return;
          if (!p.dialled) this.dial(p);
          this.pump(p);
        }, late).unref();
      }
    }
    this.setMode('forward');
  }

  /** Nothing moves either way; sockets stay open; new connections are accepted and held. */
  blackhole(): void {
    this.setMode('blackhole');
  }

  /** Every chunk is held for ms before it is passed on (order kept); with `repliesOnly`, only the store's. */
  delay(ms: number, repliesOnly = false): void {
    this.delayMs = ms;
    this.delayUp = !repliesOnly;
    this.setMode('delay');
  }

  /** Destroys every open connection (both sides) at once; the mode is unchanged. */
  cut(): void {
    this.log(`cut ${this.pairs.size} connection(s)`);
    for (const p of [...this.pairs]) this.closePair(p, true);
  }

  async close(): Promise<void> {
    for (const p of [...this.pairs]) this.closePair(p, true);
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private log(what: string): void {
    this.events.push({ t: Date.now(), what });
  }

  private setMode(m: ProxyMode): void {
    if (m !== this.mode) this.log(`mode ${this.mode} -> ${m}${m === 'delay' ? ` (${this.delayMs} ms)` : ''}`);
    this.mode = m;
    if (m === 'blackhole') return;
    for (const p of [...this.pairs]) {
      if (p.lateUntil > Date.now()) continue;
      if (!p.dialled) this.dial(p);
      this.pump(p);
    }
  }

  private accept(sock: net.Socket): void {
    this.stats.accepted++;
    this.stats.open++;
    const pair: Pair = { id: this.nextId++, client: this.side(sock), server: null, dialled: false, closed: false, lateUntil: 0 };
    this.pairs.add(pair);
    this.wire(pair, pair.client);
    sock.resume();
    if (this.mode !== 'blackhole') this.dial(pair);
  }

  private side(sock: net.Socket, connected = true): Side {
    sock.setNoDelay(true);
    return { sock, held: [], ended: false, connected, closed: false, late: [], endQueued: false, timer: null };
  }

  private dial(pair: Pair): void {
    pair.dialled = true;
    const sock = net.connect({ host: this.target.host, port: this.target.port, noDelay: true });
    const s = this.side(sock, false);
    pair.server = s;
    // A backend that refuses or dies looks to the client as it would without the proxy:
    // the connection ends.
    sock.once('connect', () => {
      s.connected = true;
      this.pump(pair);
    });
    this.wire(pair, s);
  }

  private wire(pair: Pair, s: Side): void {
    s.sock.on('data', (b: Buffer) => {
      s.held.push(b);
      this.pump(pair);
    });
    s.sock.on('end', () => {
      s.ended = true;
      this.pump(pair);
    });
    s.sock.on('error', () => undefined);
    s.sock.on('close', (hadError) => {
      s.ended = true;
      s.closed = true;
      // A reset, or a backend that could not be reached, ends both sides at once.
      if (hadError || !s.connected) return this.closePair(pair, true);
      const srv = pair.server;
      if (pair.client.closed && (srv === null ? true : srv.closed)) return this.closePair(pair, false);
      this.pump(pair);
    });
  }

  /** Moves held bytes across as the mode allows; ends a side whose peer ended. */
  private pump(pair: Pair): void {
    if (pair.closed || this.mode === 'blackhole' || pair.lateUntil > Date.now()) return;
    const srv = pair.server;
    if (srv === null || !srv.connected) return;
    this.move(pair.client, srv, true);
    this.move(srv, pair.client, false);
  }

  private move(from: Side, to: Side, up: boolean): void {
    const held = this.mode === 'delay' && this.delayMs > 0 && (up ? this.delayUp : true);
    const due = held ? Date.now() + this.delayMs : 0;
    while (from.held.length > 0) {
      const b = from.held.shift() as Buffer;
      if (up) this.stats.up += b.length;
      else this.stats.down += b.length;
      this.recording?.[up ? 'up' : 'down'].push(b);
      this.deliver(to, b, due);
    }
    if (from.ended && !to.endQueued) {
      to.endQueued = true;
      this.deliver(to, null, due);
    }
  }

  /** Writes b (or ends the side) once due, after every chunk queued before it. */
  private deliver(to: Side, b: Buffer | null, due: number): void {
    to.late.push({ due, b });
    this.flush(to);
  }

  private flush(to: Side): void {
    if (to.timer !== null) return;
    const now = Date.now();
    for (;;) {
      const next = to.late[0];
      if (next === undefined) return;
      if (next.due > now) {
        to.timer = setTimeout(() => {
          to.timer = null;
          this.flush(to);
        }, next.due - now);
        to.timer.unref();
        return;
      }
      to.late.shift();
      if (to.sock.destroyed) continue;
      if (next.b === null) to.sock.end();
      else to.sock.write(next.b);
    }
  }

  private closePair(pair: Pair, destroy: boolean): void {
    if (pair.closed) return;
    pair.closed = true;
    this.stats.open--;
    this.pairs.delete(pair);
    if (destroy) {
      pair.client.sock.destroy();
      pair.server?.sock.destroy();
    }
  }
}
