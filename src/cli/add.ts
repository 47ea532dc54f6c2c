// netdisk-ublk add --remote URI|HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N] [--foreground] [--json]
// netdisk-ublk add --from FILE --id N [--foreground] [--json] | --all-from FILE [--json]
//
// Without --foreground, add starts the daemon as a detached process and returns once the
// device is live (or the daemon failed), printing its path. The daemon reports readiness
// on a pipe (NETDISK_READY_FD) and logs to /run/netdisk-ublk/<id>.log.
import * as path from 'path';
import { DEVICE_DEFAULTS, type DeviceConfig } from '../device/config';
import { parse, parseIntArg } from './args';
import { DEVICE_OPTIONS, DEVICE_USAGE, parseDeviceArgs } from './device-args';
import { runForeground, spawnDaemon } from './daemonize';
import { inventory } from '../device/inventory';
import { UblkCtrl } from '../ublk';
import { DEVICES_FILE, listedDevice, readDevices } from './devices-file';
import { CliError, UsageError } from './errors';
import { openKeyFiles, parseRemoteArg, REMOTE_USAGE } from './remote-arg';
import { helpText } from './help';

export const ADD_USAGE = `usage: netdisk-ublk add --remote URI|HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N]
                        [--max-io SIZE] [--timeout S] [--fail-after S] [--metrics WHERE] [--foreground] [--json]
       netdisk-ublk add --from FILE --id N [--foreground] [--json]
       netdisk-ublk add --all-from FILE [--json]
  Creates /dev/ublkbN backed by the NBD export --remote names; its size comes from the
  server. Returns once the device is live; the daemon keeps serving it.
  --remote       ${REMOTE_USAGE}
  --export NAME  export name (default: the URI's, else the server's default export)
  --id N         device id to claim (default: the next free one); a device N waiting for its
                 daemon is re-attached with the settings it was created with
${DEVICE_USAGE}
  --foreground   stay attached (systemd, debugging); logs go to stderr
  --json         print the device as JSON
  --from FILE    with --id N: device N as FILE lists it (store and options) instead of --remote
  --all-from FILE
                 every device FILE lists (e.g. ${DEVICES_FILE}), one daemon each; a device
                 already live is left as it is. FILE: one device a line, "ID STORE [OPTIONS]",
                 OPTIONS as NAME=VALUE,... of queues, depth, max-io, timeout, fail-after, transport,
                 zero-copy, metrics, export`;

export async function add(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    remote: { type: 'string', short: 'r' },
    export: { type: 'string', short: 'e' },
    id: { type: 'string' },
    ...DEVICE_OPTIONS,
    foreground: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
    from: { type: 'string' },
    'all-from': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, 'add');
  if (values.help) {
    process.stdout.write(helpText(ADD_USAGE, 'netdisk-ublk add --remote nbd://storehost/disk --queues 2'));
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`add: unexpected argument "${positionals[0]}"\n${ADD_USAGE}`);
  const id = parseIntArg(values.id, '--id', 0, 1_048_575);
  const json = values.json ?? false;
  if (values['all-from'] !== undefined) {
    const others = Object.keys(values).filter((k) => k !== 'all-from' && k !== 'json');
    if (others.length > 0) throw new UsageError(`add: --all-from takes every setting from the file, not --${others[0]}`);
    return addAll(values['all-from'], json);
  }
  let config: DeviceConfig;
  if (values.from !== undefined) {
    const given = Object.keys(values).filter((k) => k === 'remote' || k === 'export' || k in DEVICE_OPTIONS);
    if (given.length > 0) throw new UsageError(`add: --from takes the device's settings from the file, not --${given[0]}`);
    if (id === undefined) throw new UsageError('add: --from FILE needs --id N: the device to bring up');
    config = listedDevice(values.from, id).config;
  } else {
    if (values.remote === undefined) throw new UsageError(`add: --remote URI|HOST[:PORT] is required\n${ADD_USAGE}`);
    const remote = parseRemoteArg(values.remote, 'add');
    if (values.export !== undefined) {
      if (remote.exportName !== '' && remote.exportName !== values.export) {
        throw new UsageError(`add: --export "${values.export}" and the URI's export "${remote.exportName}" differ`);
      }
      remote.exportName = values.export;
    }
    config = { remote, ...DEVICE_DEFAULTS, ...parseDeviceArgs(values) };
  }
  // Once, before the daemon starts (which would say it in its log instead).
  if (process.env.NETDISK_READY_FD === undefined) {
    for (const f of openKeyFiles(config.remote)) process.stderr.write(`netdisk-ublk add: warning: ${f} is readable by every user: chmod o-r it\n`);
  }
  if (values.foreground || process.env.NETDISK_READY_FD !== undefined) {
    return runForeground('add', (d) => d.startOrRecover(), { config, ...(id === undefined ? {} : { id }) }, json);
  }
  return spawnDaemon('add', argv, json);
}

/**
 * Brings up every device `file` lists, each as `add --from FILE --id N` would, one after
 * the other; a device already live is reported and left alone. Every line is checked before
 * anything starts. Exit 1 when any device failed.
 */
async function addAll(file: string, json: boolean): Promise<number> {
  const listed = readDevices(file);
  const live = new Set((await inventory(await UblkCtrl.open().catch(() => undefined))).filter((d) => d.state === 'live').map((d) => d.id));
  let failed = 0;
  for (const d of listed) {
    if (live.has(d.id)) {
      process.stderr.write(`netdisk-ublk add: device ${d.id} (${file}:${d.line}) is already live\n`);
      continue;
    }
    try {
      await spawnDaemon('add', ['--from', path.resolve(file), '--id', String(d.id)], json);
    } catch (err) {
      if (!(err instanceof CliError)) throw err;
      failed++;
      process.stderr.write(`netdisk-ublk ${err.message} (${file}:${d.line})\n`);
    }
  }
  return failed === 0 ? 0 : 1;
}
