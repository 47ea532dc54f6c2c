// A daemon's stats socket (/run/netdisk-ublk/<id>.stats.sock for a device): a client writes
// a line, the daemon answers with one JSON line, a StatsReport whose interval runs from
// that connection's previous request (or from its start) to now. `stats` asks twice a
// second apart; `stats --watch S` every S seconds on one connection. Root-only (0600), and
// still treated as hostile: a line longer than MAX_LINE or too many clients close the
// connection, never more.
import * as fs from 'fs';
import * as net from 'net';
import type { DeviceCounters } from './device-counters';
import { makeReport, type StatsReport } from './report';

const MAX_LINE = 256;
const MAX_CLIENTS = 16;

export interface StatsSource {
  name: string;
  detail: string;
  /** The counters at start (zero) and now. */
  start: DeviceCounters;
  read(): DeviceCounters;
  extra?(): Record<string, number>;
}

export class StatsSocket {
  private constructor(private readonly server: net.Server, private readonly clients: Set<net.Socket>, readonly path: string) {}

  static async listen(path: string, src: StatsSource): Promise<StatsSocket> {
    fs.rmSync(path, { force: true }); // a stale socket of a daemon that died
    const clients = new Set<net.Socket>();
    const server = net.createServer((sock) => {
      clients.add(sock);
      sock.on('close', () => clients.delete(sock));
      let prev: DeviceCounters | undefined;
      let buf = '';
      sock.setEncoding('utf8');
      sock.on('error', () => sock.destroy());
      sock.on('data', (s: string) => {
        buf += s;
        if (buf.length > MAX_LINE && !buf.includes('\n')) {
          sock.destroy();
          return;
        }
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          buf = buf.slice(nl + 1);
          const cur = src.read();
          const r = makeReport(src.name, src.detail, src.start, prev ?? src.start, cur);
          if (src.extra) r.extra = src.extra();
          prev = cur;
          sock.write(JSON.stringify(r) + '\n');
        }
      });
    });
    server.maxConnections = MAX_CLIENTS;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        try {
          fs.chmodSync(path, 0o600);
          resolve();
        } catch (err) {
          server.close();
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
    });
    return new StatsSocket(server, clients, path);
  }

  /** Stops listening and ends every client (a `stats --watch` must not keep the daemon alive). */
  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const c of this.clients) c.destroy();
    await closed;
    fs.rmSync(this.path, { force: true });
  }
}

/** A client of a stats socket: ask() sends a request line and resolves with the report. */
export class StatsClient {
  private buf = '';
  private waiting: Array<{ resolve: (r: StatsReport) => void; reject: (e: Error) => void }> = [];
  private failed: Error | undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (s: string) => {
      this.buf += s;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        try {
          this.waiting.shift()?.resolve(JSON.parse(line) as StatsReport);
        } catch (err) {
          this.fail(err as Error);
        }
      }
    });
    sock.on('error', (err) => this.fail(err));
    sock.on('close', () => this.fail(new Error('the daemon closed the stats socket')));
  }

  static connect(path: string): Promise<StatsClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(path);
      sock.once('error', reject);
      sock.once('connect', () => {
        sock.off('error', reject);
        resolve(new StatsClient(sock));
      });
    });
  }

  ask(): Promise<StatsReport> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write('stats\n');
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failed);
  }
}
