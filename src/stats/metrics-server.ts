// The Prometheus endpoint: GET /metrics over HTTP on a TCP address (loopback unless told
// otherwise) or a unix socket. Anything else gets 404/405; slow or idle clients are cut by
// Node's own request and keep-alive timeouts, and connections are capped.
import * as fs from 'fs';
import * as http from 'http';
import { CONTENT_TYPE } from './prometheus';

export type MetricsAddress = { host: string; port: number } | { path: string };

const MAX_CONNECTIONS = 32;

export class MetricsServer {
  private constructor(private readonly server: http.Server, readonly where: MetricsAddress, readonly text: string) {}

  static async listen(where: MetricsAddress, render: () => string): Promise<MetricsServer> {
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { Allow: 'GET, HEAD' }).end();
        return;
      }
      if ((req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('metrics are at /metrics\n');
        return;
      }
      const body = render();
      res.writeHead(200, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    server.maxConnections = MAX_CONNECTIONS;
    server.requestTimeout = 10_000;
    server.headersTimeout = 5_000;
    if ('path' in where) fs.rmSync(where.path, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = (): void => {
        server.off('error', reject);
        resolve();
      };
      if ('path' in where) server.listen(where.path, done);
      else server.listen(where.port, where.host, done);
    });
    const a = server.address();
    const actual: MetricsAddress = 'path' in where || a === null || typeof a === 'string' ? where : { host: where.host, port: a.port };
    const text = 'path' in actual ? `unix:${actual.path}` : `http://${actual.host.includes(':') ? `[${actual.host}]` : actual.host}:${actual.port}/metrics`;
    return new MetricsServer(server, actual, text);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
    if ('path' in this.where) fs.rmSync(this.where.path, { force: true });
  }
}
