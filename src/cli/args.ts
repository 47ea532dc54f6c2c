// Argument parsing shared by the commands: util.parseArgs in strict mode, with its
// messages turned into usage errors, plus the value parsers the commands share.
import { parseArgs, ParseArgsConfig } from 'util';
import { UsageError } from './errors';
import { NBD_DEFAULT_PORT } from '../nbd/constants';

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

/** "host", "host:port", "[v6]:port", ":port". */
export function parseHostPort(text: string, defaultHost: string, what: string): HostPort {
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(.*))?$/.exec(text);
  if (v6) {
    host = v6[1] as string;
    portText = v6[2];
  } else {
    const i = text.lastIndexOf(':');
    if (i >= 0 && text.indexOf(':') === i) {
      host = text.slice(0, i);
      portText = text.slice(i + 1);
    } else {
      host = text;
    }
  }
  if (host === '') host = defaultHost;
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw new UsageError(`${what}: invalid port "${portText}" in "${text}"`);
    port = Number(portText);
  }
  if (/\s/.test(host)) throw new UsageError(`${what}: invalid host "${host}"`);
  return { host, port };
}

export function parseIntArg(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new UsageError(`${what} must be a whole number, not "${text}"`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${what} must be between ${min} and ${max}, not ${n}`);
  return n;
}
