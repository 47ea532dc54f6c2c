// netdisk-ublk list [--json]
import { inventory } from '../device/inventory';
import { UblkCtrl } from '../ublk';
import { formatSize } from '../size';
import { parse } from './args';
import { UsageError } from './errors';
import { helpText } from './help';

export const LIST_USAGE = `usage: netdisk-ublk list [--json]
  Lists netdisk-ublk devices: id, device, remote, export, size, queues, depth, daemon pid, state.`;

export async function list(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, 'list');
  if (values.help) {
    process.stdout.write(helpText(LIST_USAGE, 'netdisk-ublk list --json'));
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`list: unexpected argument "${positionals[0]}"`);
  let ctrl: UblkCtrl | undefined;
  try {
    ctrl = await UblkCtrl.open();
  } catch {
    ctrl = undefined; // no ublk here: only records can be listed
  }
  const devs = await inventory(ctrl);
  if (values.json) {
    process.stdout.write(JSON.stringify(devs, null, 2) + '\n');
    return 0;
  }
  const rows = [['ID', 'DEVICE', 'REMOTE', 'EXPORT', 'SIZE', 'QUEUES', 'DEPTH', 'PID', 'STATE']];
  for (const d of devs) {
    rows.push([
      String(d.id), d.device, d.remote ?? '-', d.export === null ? '-' : d.export === '' ? '(default)' : d.export,
      d.size === null ? '-' : formatSize(d.size), String(d.queues ?? '-'), String(d.depth ?? '-'),
      d.pid === null ? '-' : `${d.pid}${d.daemonAlive ? '' : ' (gone)'}`, d.state,
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) process.stdout.write(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd() + '\n');
  return 0;
}
