// The NBD stores both devices are attached to: ours (`netdisk-ublk serve` over an image
// file) and `nbdkit memory` (a C store, so the clients are compared without our server's
// costs in the way).
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { freePort, stopChild, waitForPort } from './procs';

export type StoreKind = 'serve' | 'nbdkit';

export const STORE_TITLE: Record<StoreKind, string> = {
  serve: 'netdisk-ublk serve',
  nbdkit: 'nbdkit memory',
};

export interface RunningStore {
  kind: StoreKind;
  host: string;
  port: number;
  /** How it was started, for the report. */
  command: string;
  stop(): Promise<void>;
}

export interface StoreOptions {
  sizeBytes: number;
  /** Directory for the image of `serve` (a tmpfs keeps the disk out of the measurement). */
  dir: string;
  /** The netdisk-ublk entry point (bin/netdisk-ublk.js). */
  cli: string;
  /** TLS offered (not required: kernel nbd connects in clear text) with this PSK file. */
  tls?: { pskFile: string };
}

export async function startStore(kind: StoreKind, o: StoreOptions): Promise<RunningStore> {
  const host = '127.0.0.1';
  const port = await freePort();
  let child: ChildProcess;
  let command: string;
  let image: string | undefined;
  if (kind === 'serve') {
    image = path.join(o.dir, `netdisk-bench-${process.pid}-${port}.img`);
    const tls = o.tls ? ['--tls', 'on', '--tls-psk', o.tls.pskFile] : [];
    const args = [o.cli, 'serve', image, '--size', String(o.sizeBytes), '--listen', `${host}:${port}`, ...tls];
    command = `netdisk-ublk serve IMAGE --size ${o.sizeBytes} --listen ${host}:PORT${o.tls ? ' --tls on --tls-psk PSKFILE' : ''}`;
    child = spawn(process.execPath, args, {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, NETDISK_LOG_FORMAT: 'json', NETDISK_LOG_LEVEL: 'warn' },
    });
  } else {
    const tls = o.tls ? ['--tls=on', `--tls-psk=${o.tls.pskFile}`] : [];
    const args = ['-f', '--exit-with-parent', '-p', String(port), '-i', host, ...tls, 'memory', String(o.sizeBytes)];
    command = `nbdkit -f -p PORT -i ${host}${o.tls ? ' --tls=on --tls-psk=PSKFILE' : ''} memory ${o.sizeBytes}`;
    child = spawn('nbdkit', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  }
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-4000)));
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  try {
    await spawned;
    await waitForPort(host, port, 30000, child);
  } catch (err) {
    await stopChild(child);
    if (image) fs.rmSync(image, { force: true });
    throw new Error(`${STORE_TITLE[kind]} did not start: ${(err as Error).message}${stderr ? `\n${stderr}` : ''}`);
  }
  return {
    kind,
    host,
    port,
    command,
    async stop() {
      await stopChild(child);
      if (image) fs.rmSync(image, { force: true });
    },
  };
}
