// The devices a machine brings up at boot, in one file (/etc/netdisk-ublk/devices), in the
// manner of nbd-client's /etc/nbdtab: one device a line,
//
//   # ID  STORE                          OPTIONS
//   0     nbd://storehost/disk           queues=2,timeout=10,metrics=:9100
//   1     storehost:10810                export=scratch,fail-after=0
//
// ID is the device's id (/dev/ublkbID), STORE an NBD URI or HOST[:PORT] as --remote takes
// it, OPTIONS (optional) comma-separated NAME=VALUE of add's device options without their
// dashes (metrics=HOST:PORT|:PORT|unix:PATH among them), plus export=NAME. Paths (a URI's
// socket and TLS files, metrics=unix:PATH) are relative to the file's folder. Blank lines and everything after # are ignored. Each line is
// parsed into a DeviceConfig by the same parsers as add's command line; an error names the
// file and the line. `add --all-from FILE` brings every listed device up; `add --from FILE
// --id N` brings up the one (what netdisk-ublk@N.service runs).
import * as fs from 'fs';
import * as path from 'path';
import { DEVICE_DEFAULTS, type DeviceConfig } from '../device/config';
import { NbdError } from '../nbd/errors';
import { parseRemote, withAbsolutePaths } from '../nbd/uri';
import { parseIntArg } from './args';
import { DEVICE_OPTIONS, parseDeviceArgs, type DeviceArgs } from './device-args';
import { CliError, UsageError } from './errors';

export const DEVICES_FILE = '/etc/netdisk-ublk/devices';

export interface ListedDevice {
  id: number;
  config: DeviceConfig;
  /** Where it is listed, for messages. */
  line: number;
}

const ID_MAX = 1_048_575;

/** Parses a devices file's text; `file` names it in errors (FILE:LINE: ...). */
export function parseDevices(text: string, file: string): ListedDevice[] {
  const out: ListedDevice[] = [];
  const seen = new Map<number, number>();
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    const fields = raw.replace(/#.*$/, '').trim().split(/\s+/).filter((f) => f !== '');
    if (fields.length === 0) return;
    const fail = (msg: string): never => {
      throw new UsageError(`${file}:${line}: ${msg}`);
    };
    if (fields.length < 2) fail(`expected "ID STORE [OPTIONS]", got "${raw.trim()}"`);
    if (fields.length > 3) fail(`expected "ID STORE [OPTIONS]": options are one comma-separated field, got "${fields.slice(2).join(' ')}"`);
    const [idText, store, opts] = fields as [string, string, string | undefined];
    const id = wrap(fail, () => parseIntArg(idText, 'the device ID', 0, ID_MAX) as number);
    const before = seen.get(id);
    if (before !== undefined) fail(`device ${id} is listed twice (line ${before} too)`);
    seen.set(id, line);
    let remote = wrap(fail, () => parseRemote(store));
    if (remote.transport === 'tcp' && remote.port === 0) fail('port 0 is not valid');
    // Files a URI names (socket, TLS) are relative to the devices file, not to where add runs.
    const base = path.dirname(path.resolve(file));
    remote = withAbsolutePaths(remote, base);
    const args: DeviceArgs = {};
    for (const opt of opts === undefined ? [] : opts.split(',')) {
      const eq = opt.indexOf('=');
      if (eq <= 0) fail(`option "${opt}" is not NAME=VALUE`);
      const name = opt.slice(0, eq);
      const value = opt.slice(eq + 1);
      if (name === 'export') {
        if (remote.exportName !== '' && remote.exportName !== value) fail(`export=${value} and the URI's export "${remote.exportName}" differ`);
        remote.exportName = value;
      } else if (name in DEVICE_OPTIONS) {
        if (args[name as keyof DeviceArgs] !== undefined) fail(`option ${name} is given twice`);
        args[name as keyof DeviceArgs] = value;
      } else {
        fail(`unknown option "${name}" (${[...Object.keys(DEVICE_OPTIONS), 'export'].join(', ')})`);
      }
    }
    const settings = wrap(fail, () => parseDeviceArgs(args, base), (m) => m.replace(/--([a-z-]+)/, '$1'));
    out.push({ id, config: { remote, ...DEVICE_DEFAULTS, ...settings }, line });
  });
  return out;
}

/** Reads and parses a devices file; a file that cannot be read is a plain failure (exit 1). */
export function readDevices(file: string): ListedDevice[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new CliError(`cannot read the devices file ${file}: ${e.code ?? e.message}`);
  }
  return parseDevices(text, file);
}

/** The line of device `id`, or a failure naming the file. */
export function listedDevice(file: string, id: number): ListedDevice {
  const d = readDevices(file).find((x) => x.id === id);
  if (!d) throw new CliError(`device ${id} is not listed in ${file}`);
  return d;
}

function wrap<T>(fail: (msg: string) => never, f: () => T, edit: (m: string) => string = (m) => m): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof UsageError || err instanceof NbdError) return fail(edit(err.message));
    throw err;
  }
}
