// Running a device daemon: in the foreground (systemd, --foreground), or detached from the
// command that started it. The detached daemon reports readiness on a pipe (fd 3, named by
// NETDISK_READY_FD) and logs JSON to /run/netdisk-ublk/<id>.log; the starting command waits
// for that report, prints the device and exits with the daemon's verdict.
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { createLogger, type Logger } from '../log';
import { DaemonError, DeviceDaemon, checkHost, type DaemonOptions, type ReadyInfo } from '../device/daemon';
import { readRecord, runDir, statsSocketPath, writeRecord } from '../device/state';
import { detailOf } from '../errno';
import { formatSize } from '../size';
import type { DeviceCounters } from '../stats/device-counters';
import { MetricsServer } from '../stats/metrics-server';
import { renderMetrics } from '../stats/prometheus';
import { zeroCounters } from '../stats/report';
import { StatsSocket } from '../stats/stats-socket';
import { SystemdNotifier } from '../systemd';
import { CliError } from './errors';

type Report = { ok: true; info: ReadyInfo } | { ok: false; message: string; code?: string; errno?: number };

function printReady(info: ReadyInfo, json: boolean): void {
  if (json) process.stdout.write(JSON.stringify(info) + '\n');
  else process.stdout.write(`${info.device}\n`);
}

function report(fd: number, r: Report): void {
  try {
    fs.writeSync(fd, JSON.stringify(r) + '\n');
    fs.closeSync(fd);
  } catch {
    // the starting command is gone; nothing to tell
  }
}

/** Brings the device up with `bringUp`, serves it until SIGTERM/SIGINT, then stops and deletes it. */
export async function runForeground(
  command: string, bringUp: (d: DeviceDaemon) => Promise<ReadyInfo>,
  settings: Omit<DaemonOptions, 'log' | 'logFile'>, json: boolean,
): Promise<number> {
  const readyFd = process.env.NETDISK_READY_FD === undefined ? undefined : Number(process.env.NETDISK_READY_FD);
  const logFile = process.env.NETDISK_LOG_FILE;
  const log = createLogger('netdisk-ublk');
  // Keep the daemon out of the OOM killer's way: it is what writes dirty pages back.
  try {
    fs.writeFileSync('/proc/self/oom_score_adj', '-1000');
  } catch {
    // not root, or not Linux: not fatal
  }
  // Under systemd (Type=notify) the foreground daemon is the service: READY=1 once the device
  // is live. A detached daemon reports on its pipe instead (spawnDaemon drops NOTIFY_SOCKET).
  const systemd = new SystemdNotifier(log);
  let info: ReadyInfo | undefined;
  let counters = (): DeviceCounters => zeroCounters(Date.now());
  // Listening first: an address in use fails the command before any device exists.
  const metricsAt = settings.config.metrics;
  const metrics = metricsAt === undefined ? undefined : await MetricsServer.listen(metricsAt,
    () => renderMetrics(['device', String(info?.id ?? '')], counters()))
    .catch((err: NodeJS.ErrnoException) => {
      const msg = `--metrics: cannot listen on ${'path' in metricsAt ? metricsAt.path : `${metricsAt.host}:${metricsAt.port}`}: ${err.code ?? err.message}`;
      if (readyFd !== undefined) report(readyFd, { ok: false, message: msg, code: err.code });
      throw new CliError(`${command}: ${msg}`);
    });
  // The record keeps the address as bound (a :0 port resolved): recover listens there again.
  const config = metrics === undefined ? settings.config : { ...settings.config, metrics: metrics.where };
  const daemon = new DeviceDaemon({
    ...settings, config, log, ...(logFile ? { logFile } : {}), onLinkChange: (text) => systemd.status(text),
  });
  counters = () => daemon.readCounters();
  try {
    info = await bringUp(daemon);
  } catch (err) {
    const msg = err instanceof DaemonError ? err.message : (err as Error).stack ?? String(err);
    const detail = detailOf(err);
    await metrics?.close();
    if (readyFd !== undefined) report(readyFd, { ok: false, message: msg, code: detail.code, errno: detail.errno });
    throw new CliError(`${command}: ${msg}`, 1, detail);
  }
  const live = info;
  // The handlers go in before the device is reported live: `del` or systemd may stop the
  // daemon the moment they hear of it, and Node's default action would kill it mid-device.
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      log.info({ signal: sig }, 'stopping the device');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('SIGHUP', () => log.info('SIGHUP ignored'));
    void daemon.done.then(resolve);
  });
  const start = zeroCounters(Date.now());
  const stats = await StatsSocket.listen(statsSocketPath(live.id), {
    name: live.device, detail: live.remote, start, read: () => daemon.readCounters(),
  }).catch((err: Error) => {
    log.warn({ err: err.message }, 'no stats socket: `netdisk-ublk stats` cannot read this device');
    return undefined;
  });
  if (metrics) log.info({ metrics: metrics.text }, 'metrics');
  if (readyFd !== undefined) {
    if (logFile) {
      // The log file was named before the id was known; give it the device's name, and
      // point the state record (written under the old name) at it.
      const named = path.join(path.dirname(logFile), `${info.id}.log`);
      try {
        // A daemon that re-attaches (recover, add --id) would replace the log of the one
        // before it, which is what says why that one died: keep it as ID.log.1.
        if (fs.existsSync(named)) fs.renameSync(named, `${named}.1`);
        fs.renameSync(logFile, named);
        const rec = readRecord(info.id);
        if (rec) writeRecord({ ...rec, logFile: named });
      } catch {
        // keep the old name
      }
    }
    report(readyFd, { ok: true, info });
  } else {
    printReady(info, json);
  }
  await deviceNode(info.device, log);
  systemd.ready(`${info.device} is live (${formatSize(info.size)} from ${info.remote})`);
  await stopped;
  systemd.stopping(`stopping ${info.device}: in-flight requests finish, then the device is deleted`);
  await daemon.stop();
  await stats?.close();
  await metrics?.close();
  log.info('exiting');
  return daemon.exitCode;
}

/** Starts `netdisk-ublk COMMAND ARGV` as a detached daemon and waits for its report. */
export async function spawnDaemon(command: string, argv: string[], json: boolean): Promise<number> {
  // The daemon checks too, but its log file lives in a root-only directory: without this a
  // user who is not root would get EACCES and a stack trace instead of the reason.
  try {
    checkHost();
  } catch (err) {
    throw new CliError(`${command}: ${(err as Error).message}`);
  }
  fs.mkdirSync(runDir(), { recursive: true });
  const logFile = path.join(runDir(), `daemon-${process.pid}-${Date.now()}.log`);
  const logFd = fs.openSync(logFile, 'a', 0o640);
  const script = process.argv[1] as string;
  const child = spawn(process.execPath, [...process.execArgv, script, command, ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', logFd, 'pipe'],
    env: { ...withoutNotifySocket(process.env), NETDISK_READY_FD: '3', NETDISK_LOG_FILE: logFile, NETDISK_LOG_FORMAT: 'json' },
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
  let r: Report | undefined;
  try {
    r = JSON.parse(text.split('\n')[0] ?? '') as Report;
  } catch {
    r = undefined;
  }
  if (r?.ok) {
    child.unref();
    (pipe as unknown as { destroy(): void }).destroy();
    printReady(r.info, json);
    if (!json) {
      process.stderr.write(`netdisk-ublk: ${r.info.device} is live (${formatSize(r.info.size)} from ${r.info.remote}); `
        + `daemon pid ${r.info.pid}, log ${path.join(runDir(), `${r.info.id}.log`)}\n`);
    }
    return 0;
  }
  const code = await exited;
  if (r && !r.ok) {
    fs.rmSync(logFile, { force: true });
    throw new CliError(`${command}: ${r.message}`, code && code > 0 ? code : 1, { code: r.code, errno: r.errno });
  }
  throw new CliError(`${command}: the daemon exited (code ${code}) before the device was live; see ${logFile}`);
}

/** The detached daemon is not the service `add` may run in: systemd must hear from `add` alone. */
function withoutNotifySocket(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { NOTIFY_SOCKET: _, ...rest } = env;
  return rest;
}

/**
 * START_DEV returns once the kernel added the disk, and devtmpfs makes its node before
 * that; udev (where /dev is not devtmpfs) may come later. A unit that mounts the device is
 * started on READY=1, so wait for the node to be there (a bound: never forever).
 */
async function deviceNode(device: string, log: Logger): Promise<void> {
  for (let i = 0; i < 100 && !fs.existsSync(device); i++) await new Promise((r) => setTimeout(r, 100));
  if (!fs.existsSync(device)) log.warn({ device }, 'the device node has not appeared: telling systemd it is ready anyway');
}
