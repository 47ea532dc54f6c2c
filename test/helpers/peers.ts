// Independent NBD implementations to test against: nbdkit, nbd-server and qemu-nbd as
// servers; nbdinfo, nbdcopy, nbdsh and qemu-io as clients. A missing peer FAILS the
// suite that needs it: CI installs every one (scripts/setup-deps.sh), and a suite that
// silently skipped would hide a broken install.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Child, Cleanup, run, RunResult, runOk, spawnChild } from './procs';
import { freePort, HOST, waitForPort } from './net';
import { pidAlive } from '../../src/device/state';

// nbd-client and friends live in sbin, which a non-root PATH may lack.
const EXTRA_DIRS = ['/usr/sbin', '/sbin'];

// nbdsh is a wrapper around `python3 -m nbd`, and the nbd module belongs to Debian's
// python3; a python3 from pyenv or a venv earlier in PATH lacks it.
const SYSTEM_PATH = `/usr/bin:/bin:${process.env.PATH ?? ''}`;

function which(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), ...EXTRA_DIRS];
  for (const d of dirs) {
    if (d === '') continue;
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Debian package providing each peer, for the failure message. */
const PACKAGES: Record<string, string> = {
  nbdkit: 'nbdkit',
  'nbd-server': 'nbd-server',
  'nbd-client': 'nbd-client',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'python3-libnbd',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  certtool: 'gnutls-bin',
  psktool: 'gnutls-bin',
  python3: 'python3',
};

const checked = new Map<string, string>();

/**
 * The absolute path of a peer program; throws (failing the test or hook) when it is
 * missing or, for nbdsh, cannot load its Python module.
 */
export function requirePeer(name: string): string {
  const hit = checked.get(name);
  if (hit !== undefined) return hit;
  const p = which(name);
  const pkg = PACKAGES[name] ?? name;
  if (p === undefined) {
    throw new Error(`required test peer "${name}" is not installed (Debian package ${pkg}; scripts/setup-deps.sh installs it)`);
  }
  if (name === 'nbdsh') {
    const r = spawnSync(p, ['--version'], { env: { ...process.env, PATH: SYSTEM_PATH }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`required test peer nbdsh does not run (install ${pkg}): ${r.stderr}`);
  }
  checked.set(name, p);
  return p;
}

export interface Peer {
  readonly port: number;
  readonly child?: Child;
  uri(name?: string): string;
}

function peer(port: number, defaultName: string, child?: Child): Peer {
  return {
    port,
    child,
    uri: (name = defaultName) => `nbd://${HOST}:${port}/${encodeURIComponent(name)}`,
  };
}

/**
 * Starts a foreground child on a free port and waits until it listens. A port taken by
 * someone else between freePort() and the bind makes the child exit; then another port
 * is tried.
 */
async function onFreePort(cleanup: Cleanup, what: string, start: (port: number) => Child): Promise<{ port: number; child: Child }> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = cleanup.child(start(port));
    try {
      await waitForPort(port, child, what);
      return { port, child };
    } catch (err) {
      last = err;
      await child.kill();
    }
  }
  throw last;
}

/**
 * nbdkit with the given plugin and arguments, e.g. ['memory', '64M']. Unless `anyName`,
 * only `exportName` is served (nbdkit's plugins otherwise accept every name), so an
 * unknown export is refused as by the other servers.
 */
export async function startNbdkit(cleanup: Cleanup, plugin: string[], opts: { exportName?: string; extra?: string[] } = {}): Promise<Peer> {
  const nbdkit = requirePeer('nbdkit');
  const name = opts.exportName ?? 'nbdkit';
  const { port, child } = await onFreePort(cleanup, 'nbdkit', (p) => spawnChild(nbdkit, [
    '--exit-with-parent', '-f', '-i', HOST, '-p', String(p),
    '--filter=exportname', ...(opts.extra ?? []), ...plugin,
    `exportname=${name}`, 'exportname-strict=true',
  ]));
  return peer(port, name, child);
}

const daemons = new Set<number>();
process.on('exit', () => {
  for (const pid of daemons) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

/**
 * nbd-server exporting `image` as `name` with flush, FUA and trim on. It always
 * daemonizes (its -d mode serves one client, then exits), so it is found through its
 * pid file and killed with its per-connection children (same process group).
 */
export async function startNbdServer(cleanup: Cleanup, dir: string, image: string,
  opts: { name?: string; readOnly?: boolean; generic?: string[] } = {}): Promise<Peer> {
  const bin = requirePeer('nbd-server');
  const name = opts.name ?? 'disk';
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const conf = path.join(dir, `nbd-server-${port}.conf`);
    const pidFile = path.join(dir, `nbd-server-${port}.pid`);
    fs.writeFileSync(conf, [
      '[generic]',
      `    port = ${port}`,
      `    listenaddr = ${HOST}`,
      '    allowlist = true',
      ...(opts.generic ?? []).map((l) => `    ${l}`),
      `[${name}]`,
      `    exportname = ${image}`,
      '    flush = true',
      '    fua = true',
      '    trim = true',
      `    readonly = ${opts.readOnly ? 'true' : 'false'}`,
      '',
    ].join('\n'));
    const r = await run(bin, ['-C', conf, '-p', pidFile]);
    if (r.code !== 0) {
      last = new Error(`nbd-server exited ${r.code}: ${r.stderr}`);
      continue;
    }
    let pid = 0;
    for (let i = 0; i < 500 && pid === 0; i++) {
      if (fs.existsSync(pidFile)) pid = Number(fs.readFileSync(pidFile, 'utf8').trim()) || 0;
      if (pid === 0) await new Promise((res) => setTimeout(res, 10));
    }
    if (pid === 0) {
      last = new Error(`nbd-server wrote no pid file:\n${r.stderr}`);
      continue;
    }
    daemons.add(pid);
    cleanup.add(async () => {
      for (const target of [-pid, pid]) {
        try {
          process.kill(target, 'SIGKILL');
        } catch {
          // gone
        }
      }
      for (let i = 0; i < 500 && pidAlive(pid); i++) await new Promise((res) => setTimeout(res, 10));
      daemons.delete(pid);
    });
    // The pid file can appear before the listening socket does.
    try {
      await waitForPort(port, { get done() { return !pidAlive(pid); }, stderr: () => r.stderr }, 'nbd-server');
      return peer(port, name);
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

/** qemu-nbd serving `image` (raw) as `name`: persistent (-t) so it outlives each client, and shared (-e, default 1) so clients may overlap. */
export async function startQemuNbd(cleanup: Cleanup, image: string, opts: { name?: string; readOnly?: boolean; extra?: string[] } = {}): Promise<Peer> {
  const bin = requirePeer('qemu-nbd');
  const name = opts.name ?? 'qemu';
  const { port, child } = await onFreePort(cleanup, 'qemu-nbd', (p) => spawnChild(bin, [
    '-f', 'raw', '-t', '-e', '16', '-b', HOST, '-p', String(p), '-x', name, '--discard=unmap', '--cache=writeback',
    ...(opts.readOnly ? ['-r'] : []), ...(opts.extra ?? []), image,
  ]));
  return peer(port, name, child);
}

/** nbdinfo --json URI, parsed. */
export async function nbdinfoJson(uri: string): Promise<NbdinfoJson> {
  const r = await runOk(requirePeer('nbdinfo'), ['--json', uri]);
  return JSON.parse(r.stdout.toString()) as NbdinfoJson;
}

export interface NbdinfoExport {
  'export-name': string;
  'export-size': number;
  is_read_only: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_multi_conn: boolean;
  can_cache: boolean;
  can_df: boolean;
  can_fast_zero: boolean;
  block_size_minimum?: number;
  block_size_preferred?: number;
  block_size_maximum?: number;
  [k: string]: unknown;
}

export interface NbdinfoJson {
  protocol: string;
  TLS?: boolean;
  exports: NbdinfoExport[];
}

/**
 * Runs a Python script under nbdsh (`h` is a fresh libnbd handle; `nbd`, `os`, `sys` are
 * imported). `env` reaches the script through os.environ.
 */
export async function nbdsh(script: string, env: Record<string, string> = {}): Promise<RunResult> {
  const bin = requirePeer('nbdsh');
  return run(bin, ['-c', 'import os, sys', '-c', script], { env: { ...process.env, PATH: SYSTEM_PATH, ...env } });
}

/** qemu-io on an NBD URI (raw format), one -c per command. */
export async function qemuIo(uri: string, cmds: string[]): Promise<RunResult> {
  const bin = requirePeer('qemu-io');
  const args = ['-f', 'raw'];
  for (const c of cmds) args.push('-c', c);
  args.push(uri);
  return run(bin, args);
}
