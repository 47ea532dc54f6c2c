// netdisk-ublk add --remote HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N] [--foreground] [--json]
//
// Without --foreground, add starts the daemon as a detached process and returns once the
// device is live (or the daemon failed), printing its path. The daemon reports readiness
// on a pipe (NETDISK_READY_FD) and logs to /run/netdisk-ublk/<id>.log.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createLogger } from '../log';
import { DaemonError, DeviceDaemon, type ReadyInfo } from '../device/daemon';
import { runDir } from '../device/state';
import { formatSize, parseSize } from '../size';
import { parse, parseHostPort, parseIntArg } from './args';
import { CliError, UsageError } from './errors';

export const ADD_USAGE = `usage: netdisk-ublk add --remote HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N]
                        [--max-io SIZE] [--timeout S] [--fail-after S] [--foreground] [--json]
  Creates /dev/ublkbN backed by the NBD export at HOST:PORT (port 10809 by default); its size
  comes from the server. Returns once the device is live; the daemon keeps serving it.
  --export NAME  export name (default: the server's default export)
  --id N         device id to claim (default: the next free one)
  --queues N     queues, each with its own thread and connection when the server allows
                 multi-conn (default 1)
  --depth N      requests in flight per queue (default 128)
  --max-io SIZE  largest request (default 512K)
  --timeout S    a request without a reply for S seconds means the connection is stalled:
                 reconnect and resend (default 30; 0: never)
  --fail-after S requests wait up to S seconds for a lost store before failing with EIO
                 (default 180; 0: fail at once)
  --foreground   stay attached (systemd, debugging); logs go to stderr
  --json         print the device as JSON`;

const DEFAULT_DEPTH = 128;
const DEFAULT_MAX_IO = 512 * 1024;

export async function add(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    remote: { type: 'string', short: 'r' },
    export: { type: 'string', short: 'e' },
    id: { type: 'string' },
    queues: { type: 'string', short: 'q' },
    depth: { type: 'string', short: 'd' },
    'max-io': { type: 'string' },
    timeout: { type: 'string' },
    'fail-after': { type: 'string' },
    foreground: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, 'add');
  if (values.help) {
    process.stdout.write(ADD_USAGE + '\n');
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`add: unexpected argument "${positionals[0]}"\n${ADD_USAGE}`);
  if (values.remote === undefined) throw new UsageError(`add: --remote HOST[:PORT] is required\n${ADD_USAGE}`);
  const { host, port } = parseHostPort(values.remote, '', '--remote');
  if (host === '') throw new UsageError('add: --remote needs a host');
  if (port === 0) throw new UsageError('add: --remote port 0 is not valid');
  const id = parseIntArg(values.id, '--id', 0, 1_048_575);
  const queues = parseIntArg(values.queues, '--queues', 1, 64) ?? 1;
  const depth = parseIntArg(values.depth, '--depth', 1, 4096) ?? DEFAULT_DEPTH;
  let maxIo = DEFAULT_MAX_IO;
  if (values['max-io'] !== undefined) {
    try {
      maxIo = parseSize(values['max-io']);
    } catch (err) {
      throw new UsageError(`add: --max-io: ${(err as Error).message}`);
    }
    if (maxIo < 4096 || maxIo > 32 * 1024 * 1024 || maxIo % 4096 !== 0) {
      throw new UsageError('add: --max-io must be a multiple of 4K between 4K and 32M');
    }
  }
  const timeoutMs = (parseIntArg(values.timeout, '--timeout', 0, 86400) ?? 30) * 1000;
  const failAfterMs = (parseIntArg(values['fail-after'], '--fail-after', 0, 7 * 86400) ?? 180) * 1000;
  const json = values.json ?? false;
  if (values.foreground || process.env.NETDISK_READY_FD !== undefined) {
    return runForeground({ host, port, exportName: values.export ?? '', id, queues, depth, maxIoBufBytes: maxIo, timeoutMs, failAfterMs }, json);
  }
  return spawnDaemon(argv, json);
}

interface Settings {
  host: string;
  port: number;
  exportName: string;
  id: number | undefined;
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  timeoutMs: number;
  failAfterMs: number;
}

function printReady(info: ReadyInfo, json: boolean): void {
  if (json) process.stdout.write(JSON.stringify(info) + '\n');
  else process.stdout.write(`${info.device}\n`);
}

async function runForeground(s: Settings, json: boolean): Promise<number> {
  const readyFd = process.env.NETDISK_READY_FD === undefined ? undefined : Number(process.env.NETDISK_READY_FD);
  const logFile = process.env.NETDISK_LOG_FILE;
  const log = createLogger('netdisk-ublk');
  // Keep the daemon out of the OOM killer's way: it is what writes dirty pages back.
  try {
    fs.writeFileSync('/proc/self/oom_score_adj', '-1000');
  } catch {
    // not root, or not Linux: not fatal
  }
  const daemon = new DeviceDaemon({ ...s, ...(s.id === undefined ? {} : { id: s.id }), log, ...(logFile ? { logFile } : {}) });
  let info: ReadyInfo;
  try {
    info = await daemon.start();
  } catch (err) {
    const msg = err instanceof DaemonError ? err.message : (err as Error).stack ?? String(err);
    if (readyFd !== undefined) report(readyFd, { ok: false, message: msg });
    throw new CliError(`add: ${msg}`);
  }
  if (readyFd !== undefined) {
    if (logFile) {
      // The log file was named before the id was known; give it the device's name.
      const named = path.join(path.dirname(logFile), `${info.id}.log`);
      try {
        fs.renameSync(logFile, named);
      } catch {
        // keep the old name
      }
    }
    report(readyFd, { ok: true, info });
  } else {
    printReady(info, json);
  }
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      log.info({ signal: sig }, 'stopping the device');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', () => log.info('SIGHUP ignored'));
  });
  await daemon.stop();
  log.info('exiting');
  return 0;
}

type Report = { ok: true; info: ReadyInfo } | { ok: false; message: string };

function report(fd: number, r: Report): void {
  try {
    fs.writeSync(fd, JSON.stringify(r) + '\n');
    fs.closeSync(fd);
  } catch {
    // the parent is gone; nothing to tell
  }
}

async function spawnDaemon(argv: string[], json: boolean): Promise<number> {
  fs.mkdirSync(runDir(), { recursive: true });
  const logFile = path.join(runDir(), `daemon-${process.pid}-${Date.now()}.log`);
  const logFd = fs.openSync(logFile, 'a', 0o640);
  const script = process.argv[1] as string;
  const child = spawn(process.execPath, [...process.execArgv, script, 'add', ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', logFd, 'pipe'],
    env: { ...process.env, NETDISK_READY_FD: '3', NETDISK_LOG_FILE: logFile, NETDISK_LOG_FORMAT: 'json' },
  });
  fs.closeSync(logFd);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  let text = '';
  pipe.setEncoding('utf8');
  pipe.on('data', (s: string) => { text += s; });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve) => {
    pipe.once('end', resolve);
    pipe.once('close', resolve);
  });
  const line = text.split('\n')[0] ?? '';
  let r: Report | undefined;
  try {
    r = JSON.parse(line) as Report;
  } catch {
    r = undefined;
  }
  if (r?.ok) {
    child.unref();
    (pipe as unknown as { destroy(): void }).destroy();
    printReady(r.info, json);
    if (!json) process.stderr.write(`netdisk-ublk: ${r.info.device} is live (${formatSize(r.info.size)} from ${r.info.remote}); daemon pid ${r.info.pid}, log ${path.join(runDir(), `${r.info.id}.log`)}\n`);
    return 0;
  }
  const code = await exited;
  if (r && !r.ok) {
    fs.rmSync(logFile, { force: true });
    throw new CliError(`add: ${r.message}`, code && code > 0 ? code : 1);
  }
  throw new CliError(`add: the daemon exited (code ${code}) before the device was live; see ${logFile}`);
}
