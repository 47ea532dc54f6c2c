// What every command's --help ends with, and the terminal conventions the commands share:
// the exit codes, one example, the package's version.
import * as fs from 'fs';
import * as path from 'path';
import { packageRoot } from '../native/load';

/** The exit statuses of every command (README "Exit codes" says the same). */
export const EXIT_CODES = `exit codes:
  0  done (for serve and add --foreground: stopped by SIGINT/SIGTERM after a clean shutdown)
  1  the operation failed (the message says why); a daemon whose queue died
  2  usage: an unknown command or option, a missing or malformed argument or devices-file line`;

/** A command's --help: its usage, one example, the exit codes. */
export function helpText(usage: string, example: string): string {
  return `${usage}\nexample:\n  ${example}\n${EXIT_CODES}\n`;
}

export function version(): string {
  const pj = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  return pj.version;
}
