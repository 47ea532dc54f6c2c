// netdisk-ublk add --remote URI|HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N] [--foreground] [--json]
//
// Without --foreground, add starts the daemon as a detached process and returns once the
// device is live (or the daemon failed), printing its path. The daemon reports readiness
// on a pipe (NETDISK_READY_FD) and logs to /run/netdisk-ublk/<id>.log.
import { DEVICE_DEFAULTS, type DeviceConfig } from '../device/config';
import { parse, parseIntArg } from './args';
import { DEVICE_OPTIONS, DEVICE_USAGE, parseDeviceArgs } from './device-args';
import { runForeground, spawnDaemon } from './daemonize';
import { UsageError } from './errors';
import { openKeyFiles, parseRemoteArg, REMOTE_USAGE } from './remote-arg';
import { helpText } from './help';

export const ADD_USAGE = `usage: netdisk-ublk add --remote URI|HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N]
                        [--max-io SIZE] [--timeout S] [--fail-after S] [--foreground] [--json]
  Creates /dev/ublkbN backed by the NBD export --remote names; its size comes from the
  server. Returns once the device is live; the daemon keeps serving it.
  --remote       ${REMOTE_USAGE}
  --export NAME  export name (default: the URI's, else the server's default export)
  --id N         device id to claim (default: the next free one); a device N waiting for its
                 daemon is re-attached with the settings it was created with
${DEVICE_USAGE}
  --foreground   stay attached (systemd, debugging); logs go to stderr
  --json         print the device as JSON`;

export async function add(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    remote: { type: 'string', short: 'r' },
    export: { type: 'string', short: 'e' },
    id: { type: 'string' },
    ...DEVICE_OPTIONS,
    foreground: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, 'add');
  if (values.help) {
    process.stdout.write(helpText(ADD_USAGE, 'netdisk-ublk add --remote nbd://storehost/disk --queues 2'));
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`add: unexpected argument "${positionals[0]}"\n${ADD_USAGE}`);
  if (values.remote === undefined) throw new UsageError(`add: --remote URI|HOST[:PORT] is required\n${ADD_USAGE}`);
  const remote = parseRemoteArg(values.remote, 'add');
  if (values.export !== undefined) {
    if (remote.exportName !== '' && remote.exportName !== values.export) {
      throw new UsageError(`add: --export "${values.export}" and the URI's export "${remote.exportName}" differ`);
    }
    remote.exportName = values.export;
  }
  // Once, before the daemon starts (which would say it in its log instead).
  if (process.env.NETDISK_READY_FD === undefined) {
    for (const f of openKeyFiles(remote)) process.stderr.write(`netdisk-ublk add: warning: ${f} is readable by every user: chmod o-r it\n`);
  }
  const id = parseIntArg(values.id, '--id', 0, 1_048_575);
  const config: DeviceConfig = {
    remote,
    ...DEVICE_DEFAULTS,
    ...parseDeviceArgs(values),
  };
  const json = values.json ?? false;
  if (values.foreground || process.env.NETDISK_READY_FD !== undefined) {
    return runForeground('add', (d) => d.startOrRecover(), { config, ...(id === undefined ? {} : { id }) }, json);
  }
  return spawnDaemon('add', argv, json);
}
