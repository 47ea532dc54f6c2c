// Our server as users run it: `node bin/netdisk-ublk.js serve ...` in its own process,
// listening on a port the kernel picks, found from its "serving" log line (pino JSON on
// stderr, which is a pipe here).
import * as path from 'path';
import { Child, Cleanup, Exit, spawnChild } from './procs';
import { HOST } from './net';
import { repoRoot } from './vm';

export function cliPath(): string {
  return path.join(repoRoot(), 'bin', 'netdisk-ublk.js');
}

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export interface ServeOptions {
  size?: string;
  name?: string;
  readOnly?: boolean;
  /** --listen's value (default 127.0.0.1:0, the port then read from the log). */
  listen?: string;
  /** Extra arguments, after the others. */
  args?: string[];
  env?: Record<string, string>;
  /** A command serve runs under (e.g. a seccomp wrapper), before node. */
  wrap?: string[];
  /** The package to run bin/netdisk-ublk.js from (default: this checkout). */
  root?: string;
}

export interface Served {
  readonly child: Child;
  readonly host: string;
  /** 0 when listening on a unix socket. */
  readonly port: number;
  /** The unix socket's path, '' for TCP. */
  readonly socket: string;
  /** nbd://host:port/name (or nbd+unix:///name?socket=PATH) URI for libnbd and qemu tools. */
  uri(name?: string): string;
  /** Log lines so far (stderr lines that parse as JSON). */
  logs(): LogLine[];
  /** Sends sig (SIGTERM by default) and waits for the exit. */
  stop(sig?: NodeJS.Signals): Promise<Exit>;
}

function parseLogs(stderr: string): LogLine[] {
  const out: LogLine[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as LogLine);
    } catch {
      // a partial line still being written
    }
  }
  return out;
}

/** Starts `serve image --listen 127.0.0.1:0 ...` and waits until it logs "serving". */
export async function serveImage(cleanup: Cleanup, image: string, opts: ServeOptions = {}): Promise<Served> {
  const args = ['serve', image, '--listen', opts.listen ?? `${HOST}:0`];
  if (opts.size !== undefined) args.push('--size', opts.size);
  if (opts.name !== undefined) args.push('--name', opts.name);
  if (opts.readOnly) args.push('--read-only');
  args.push(...(opts.args ?? []));
  const [cmd, ...pre] = [...(opts.wrap ?? []), process.execPath];
  const cli = opts.root === undefined ? cliPath() : path.join(opts.root, 'bin', 'netdisk-ublk.js');
  const child = cleanup.child(spawnChild(cmd, [...pre, cli, ...args], {
    env: { ...process.env, NETDISK_LOG_FORMAT: 'json', ...opts.env },
  }));
  const serving = await new Promise<LogLine>((resolve, reject) => {
    const check = (): void => {
      const line = parseLogs(child.stderr()).find((l) => l.msg === 'serving');
      if (line) {
        child.proc.stderr?.off('data', check);
        resolve(line);
      }
    };
    child.proc.stderr?.on('data', check);
    void child.exited.then((e) => reject(new Error(`serve exited (${e.code ?? e.signal}) before serving:\n${child.stderr()}`)),
      reject);
  });
  const listen = String(serving.listen);
  const socket = listen.startsWith('/') ? listen : '';
  const port = socket ? 0 : Number(listen.slice(listen.lastIndexOf(':') + 1));
  if (!socket && (!Number.isInteger(port) || port <= 0)) throw new Error(`no port in the serving line: ${JSON.stringify(serving)}`);
  return {
    child,
    host: HOST,
    port,
    socket,
    uri: (name = opts.name ?? '') => (socket ? `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`
      : `nbd://${HOST}:${port}/${encodeURIComponent(name)}`),
    logs: () => parseLogs(child.stderr()),
    stop: (sig: NodeJS.Signals = 'SIGTERM') => child.kill(sig),
  };
}
