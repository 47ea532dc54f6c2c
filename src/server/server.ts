// The NBD server: listens, hands each connection to a ServerConnection, and shuts down
// gracefully (stop accepting, let in-flight requests finish, flush the stores).
import * as net from 'net';
import { Logger, silentLogger } from '../log';
import { Export, ServerConnection } from './connection';

export interface ServerOptions {
  exports: Export[];
  log?: Logger;
  maxInFlight?: number;
}

export class NbdServer {
  private readonly server: net.Server;
  private readonly conns = new Set<ServerConnection>();
  private readonly byName = new Map<string, Export>();
  private readonly log: Logger;
  private nextId = 1;
  private closing: Promise<void> | undefined;

  constructor(private readonly opts: ServerOptions) {
    if (opts.exports.length === 0) throw new Error('an NBD server needs at least one export');
    for (const e of opts.exports) this.byName.set(e.name, e);
    this.log = opts.log ?? silentLogger;
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

  address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
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
    const id = this.nextId++;
    const log = this.log.child({ conn: id, remote: `${sock.remoteAddress}:${sock.remotePort}` });
    log.debug('connected');
    const conn = new ServerConnection(sock, {
      lookup: (name) => this.byName.get(name) ?? (name === '' ? this.opts.exports[0] : undefined),
      list: () => this.opts.exports,
      log,
      maxInFlight: this.opts.maxInFlight,
    });
    this.conns.add(conn);
    void conn.closed.then(() => {
      this.conns.delete(conn);
      log.debug('disconnected');
    });
  }
}
