// The NBD server: listens, hands each connection to a ServerConnection, and shuts down
// gracefully (stop accepting, let in-flight requests finish, flush the stores). Its
// connections share one memory budget, and there are at most settings.maxConnections.
import * as fs from 'fs';
import * as net from 'net';
import { Logger, silentLogger } from '../log';
import { ByteBudget } from './byte-budget';
import { Export, ServerConnection } from './connection';
import { ServerSettings, serverSettings } from './settings';
import { ServerTls } from './tls';
import type { QueueCounters } from '../stats/device-counters';

export interface ServerOptions {
  exports: Export[];
  log?: Logger;
  /** Those not given take their defaults (SERVER_DEFAULTS). */
  settings?: Partial<ServerSettings>;
  /** TLS offered or required on every connection; absent: clear text only. */
  tls?: ServerTls;
  /** Counts the requests of every connection (stats, metrics). */
  counters?: QueueCounters;
}

/** Where the server listens: TCP, or a unix socket path. */
export type ListenAddress = { host: string; port: number } | { path: string };

export class NbdServer {
  private readonly server: net.Server;
  private readonly conns = new Set<ServerConnection>();
  private readonly byName = new Map<string, Export>();
  private readonly log: Logger;
  private nextId = 1;
  private closing: Promise<void> | undefined;
  private readonly settings: ServerSettings;
  private readonly budget: ByteBudget;
  /** Connections refused since the limit was last reached (logged once per episode). */
  private refused = 0;

  constructor(private readonly opts: ServerOptions) {
    if (opts.exports.length === 0) throw new Error('an NBD server needs at least one export');
    for (const e of opts.exports) this.byName.set(e.name, e);
    this.log = opts.log ?? silentLogger;
    this.settings = serverSettings(opts.settings);
    this.budget = new ByteBudget(this.settings.serverBytes);
    this.server = net.createServer({ noDelay: true }, (sock) => this.accept(sock));
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  /**
   * Listens on a unix socket. A socket file left by a server that died is replaced; one
   * that a live server still answers on, or a path that is not a socket, is an error
   * (EADDRINUSE, EEXIST). The file's mode follows the umask (connecting needs write
   * permission on it); it is removed when the server closes.
   */
  async listenUnix(file: string): Promise<void> {
    if (!file.startsWith('\0') && await staleSocket(file)) fs.rmSync(file, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ path: file }, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  /** host:port, [v6]:port, or the unix socket path. */
  addressText(): string {
    const a = this.server.address();
    if (typeof a === 'string') return a;
    if (a === null) return '';
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
  }

  /** Bytes held for requests and replies in flight, all connections together. */
  get bytesHeld(): number {
    return this.budget.used;
  }

  get connections(): number {
    return this.conns.size;
  }

  /** Stops accepting, finishes in-flight requests, flushes and closes the stores. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((r) => this.server.close(() => r()));
      await Promise.all([...this.conns].map((c) => c.shutdown()));
      await stopped;
      for (const e of this.opts.exports) await e.store.close();
    })();
    return this.closing;
  }

  private accept(sock: net.Socket): void {
    if (this.closing) {
      sock.destroy();
      return;
    }
    const remote = sock.remoteAddress === undefined ? 'unix' : `${sock.remoteAddress}:${sock.remotePort}`;
    if (this.conns.size >= this.settings.maxConnections) {
      sock.destroy();
      // One line when the limit is reached and one when it clears, however many are refused.
      if (this.refused++ === 0) {
        this.log.warn({ limit: this.settings.maxConnections, remote },
          'connection limit reached: refusing new connections');
      }
      return;
    }
    const id = this.nextId++;
    const log = this.log.child({ conn: id, remote });
    log.debug('connected');
    const conn = new ServerConnection(sock, {
      lookup: (name) => this.byName.get(name) ?? (name === '' ? this.opts.exports[0] : undefined),
      list: () => this.opts.exports,
      log,
      settings: this.settings,
      budget: this.budget,
      tls: this.opts.tls,
      counters: this.opts.counters,
    });
    this.conns.add(conn);
    void conn.closed.then(() => {
      this.conns.delete(conn);
      log.debug('disconnected');
      if (this.refused !== 0) {
        this.log.info({ refused: this.refused }, 'below the connection limit again');
        this.refused = 0;
      }
    });
  }
}

/**
 * True when file is a unix socket nobody listens on (its server died); false when nothing
 * is there. Throws EEXIST for a path that is not a socket and EADDRINUSE for a live one.
 */
async function staleSocket(file: string): Promise<boolean> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return false;
  }
  if (!st.isSocket()) throw Object.assign(new Error(`${file} exists and is not a socket`), { code: 'EEXIST' });
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path: file });
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (live) throw Object.assign(new Error(`a server is listening on ${file}`), { code: 'EADDRINUSE' });
  return true;
}
