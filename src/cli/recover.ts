// netdisk-ublk recover ID [--remote URI|HOST[:PORT]] [--fail-after S] [--metrics WHERE] [--foreground] [--json]
//
// Starts a new daemon for a device whose daemon died (kill -9, crash): it takes the I/O the
// kernel kept waiting at once and connects to the store recorded for the device, in the
// background when the store is away (the I/O then waits up to fail-after).
import { readRecord } from '../device/state';
import type { NbdRemote } from '../nbd/client';
import { isUri } from '../nbd/uri';
import { parse, parseIntArg } from './args';
import { DEVICE_OPTIONS, parseDeviceArgs } from './device-args';
import { runForeground, spawnDaemon } from './daemonize';
import { CliError, UsageError } from './errors';
import { METRICS_USAGE } from './metrics-arg';
import { parseRemoteArg } from './remote-arg';
import { helpText } from './help';

export const RECOVER_USAGE = `usage: netdisk-ublk recover ID [--remote URI|HOST[:PORT]] [--fail-after S] [--metrics WHERE] [--foreground] [--json]
  Re-attaches a new daemon to netdisk-ublk device ID after its daemon died; queued I/O resumes.
  The store, export, queues, depth, timeouts and metrics address come from
  /run/netdisk-ublk/ID.json; --remote moves the store (same export, same size): a URI replaces
  the recorded one, HOST[:PORT] only the address. The device is taken over at once, whether
  or not the store is reachable; the daemon connects to it in the background, as it
  reconnects, and a store that serves another export (size, flags) is not used.
  --fail-after S requests wait up to S seconds for the store before failing with EIO
                 (instead of the recorded setting; 0: fail at once)
  ${METRICS_USAGE}
                 (instead of the recorded one)`;

export async function recover(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    remote: { type: 'string', short: 'r' },
    'fail-after': DEVICE_OPTIONS['fail-after'],
    metrics: DEVICE_OPTIONS.metrics,
    foreground: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, 'recover');
  if (values.help) {
    process.stdout.write(helpText(RECOVER_USAGE, 'netdisk-ublk recover 0'));
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(`recover: expected one device ID\n${RECOVER_USAGE}`);
  const id = parseIntArg(positionals[0], 'device ID', 0, 1_048_575) as number;
  const json = values.json ?? false;
  // The settings recover may change: runtime ones, never the device's shape.
  const changed = parseDeviceArgs({ 'fail-after': values['fail-after'], metrics: values.metrics });
  if (!values.foreground && process.env.NETDISK_READY_FD === undefined) return spawnDaemon('recover', argv, json);
  const rec = readRecord(id);
  if (!rec) throw new CliError(`recover: no record of device ${id} (looked for it in /run/netdisk-ublk): cannot tell which store it used`);
  const config = { ...rec.config, ...changed, remote: values.remote === undefined ? rec.config.remote : movedRemote(rec.config.remote, values.remote) };
  return runForeground('recover', (d) => d.recover(id), { config, id }, json);
}

/**
 * The store at its new place: a URI says everything anew (its export must be the same
 * export: the daemon checks its size); HOST[:PORT] moves only the address, keeping the
 * export and the TLS settings.
 */
function movedRemote(was: NbdRemote, text: string): NbdRemote {
  const e = parseRemoteArg(text, 'recover');
  if (isUri(text)) return e;
  return { ...was, transport: 'tcp', host: e.host, port: e.port, socket: '' };
}
