// Argument parsing shared by the commands: util.parseArgs in strict mode, with its
// messages turned into usage errors, plus the value parsers the commands share.
import { parseArgs, ParseArgsConfig } from 'util';
import { UsageError } from './errors';
import { parseHostPort as parseHostPortText } from '../nbd/uri';

type Options = NonNullable<ParseArgsConfig['options']>;

export function parse<O extends Options>(argv: string[], options: O, command: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${command}: ${(err as Error).message.replace(/\. To specify.*$/s, '')}`);
  }
}

export interface HostPort {
  host: string;
  port: number;
}

/** "host", "host:port", "[v6]:port", ":port" (the parser lives with the NBD URIs). */
export function parseHostPort(text: string, defaultHost: string, what: string): HostPort {
  try {
    const hp = parseHostPortText(text);
    return { host: hp.host === '' ? defaultHost : hp.host, port: hp.port };
  } catch (err) {
    throw new UsageError(`${what}: ${(err as Error).message}`);
  }
}

export function parseIntArg(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new UsageError(`${what} must be a whole number, not "${text}"`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${what} must be between ${min} and ${max}, not ${n}`);
  return n;
}
