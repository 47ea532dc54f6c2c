// Logging: pino JSON lines on stderr by default (daemons, journald, CI), readable text
// when stderr is a terminal (coloured unless NO_COLOR is set). NETDISK_LOG_FORMAT=json|pretty
// and NETDISK_LOG_LEVEL override.
import pino from 'pino';
import { useColor } from './terminal';

export type Logger = pino.Logger;

export function createLogger(name: string, opts: { level?: string; format?: 'json' | 'pretty' } = {}): Logger {
  const level = opts.level ?? process.env.NETDISK_LOG_LEVEL ?? 'info';
  const envFormat = process.env.NETDISK_LOG_FORMAT;
  const format = opts.format ?? (envFormat === 'json' || envFormat === 'pretty' ? envFormat : undefined)
    ?? (process.stderr.isTTY ? 'pretty' : 'json');
  if (format === 'pretty') {
    // Loaded only here: pino-pretty is most of the modules a command would load, and daemons,
    // workers and commands whose stderr is not a terminal never use it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pretty = require('pino-pretty') as typeof import('pino-pretty');
    // Synchronous on purpose: a daemon that dies should not lose its last lines.
    const stream = pretty({ colorize: useColor(process.stderr), destination: 2, sync: true, ignore: 'pid,hostname' });
    return pino({ name, level }, stream);
  }
  return pino({ name, level }, pino.destination({ dest: 2, sync: true }));
}

/** A logger that drops everything, for library use without a caller's logger. */
export const silentLogger: Logger = pino({ level: 'silent' });
