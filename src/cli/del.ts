// netdisk-ublk del ID | --all
//
// Asks the device's daemon to stop (SIGTERM: in-flight requests finish, the device is
// stopped and deleted). When the daemon is gone (killed with -9, crashed), deletes the
// device directly through the control device.
import { inventory, devInfo } from '../device/inventory';
import * as fs from 'fs';
import { pidAlive, readRecord, removeRecord, statsSocketPath } from '../device/state';
import { UblkCtrl } from '../ublk';
import { parse, parseIntArg } from './args';
import { CliError, UsageError } from './errors';
import { helpText } from './help';

export const DEL_USAGE = `usage: netdisk-ublk del ID | --all
  Stops and removes a netdisk-ublk device (all of them with --all), even when its daemon is gone.`;

const DAEMON_STOP_TIMEOUT_MS = 60_000;

export async function del(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { all: { type: 'boolean', short: 'a' }, help: { type: 'boolean', short: 'h' } }, 'del');
  if (values.help) {
    process.stdout.write(helpText(DEL_USAGE, 'netdisk-ublk del 0'));
    return 0;
  }
  if (values.all && positionals.length > 0) throw new UsageError('del: give an ID or --all, not both');
  if (!values.all && positionals.length !== 1) throw new UsageError(`del: expected one device ID\n${DEL_USAGE}`);
  let ctrl: UblkCtrl;
  try {
    ctrl = await UblkCtrl.open();
  } catch (err) {
    throw new CliError(`del: ${(err as Error).message}`);
  }
  const ids = values.all
    ? (await inventory(ctrl)).map((d) => d.id)
    : [parseIntArg(positionals[0], 'device ID', 0, 1_048_575) as number];
  let failed = 0;
  for (const id of ids) {
    try {
      await deleteOne(ctrl, id);
      process.stdout.write(`deleted /dev/ublkb${id}\n`);
    } catch (err) {
      failed++;
      process.stderr.write(`netdisk-ublk del: ${(err as Error).message}\n`);
    }
  }
  return failed === 0 ? 0 : 1;
}

async function deleteOne(ctrl: UblkCtrl, id: number): Promise<void> {
  const rec = readRecord(id);
  let info = await devInfo(ctrl, id);
  if (!info && !rec) throw new Error(`no ublk device ${id}`);
  const pid = info && info.ublksrvPid > 0 ? info.ublksrvPid : rec?.pid;
  if (pid !== undefined && pid !== process.pid && pidAlive(pid) && (info ? info.ublksrvPid === pid : true)) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + DAEMON_STOP_TIMEOUT_MS;
    while (pidAlive(pid) && Date.now() < deadline) await sleep(100);
    if (pidAlive(pid)) {
      process.kill(pid, 'SIGKILL');
      while (pidAlive(pid)) await sleep(50);
    }
    info = await devInfo(ctrl, id);
  }
  if (info) {
    // The daemon is gone and left the device behind: remove it ourselves.
    try {
      await ctrl.stopDev(id);
    } catch {
      // already stopped (DEAD) is fine
    }
    await ctrl.delDev(id);
  }
  removeRecord(id);
  // A daemon killed with -9 leaves its stats socket behind.
  fs.rmSync(statsSocketPath(id), { force: true });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
