// --remote as add, recover and bench take it: an NBD URI (nbd://, nbds://, nbd+unix://,
// nbds+unix://) or HOST[:PORT]; file names in it made absolute, since the daemon that
// uses them, and a later recover, may run elsewhere.
import { NbdError } from '../nbd/errors';
import * as path from 'path';
import { CLIENT_KEY, worldReadable } from '../nbd/tls-files';
import { NbdEndpoint, parseRemote, withAbsolutePaths } from '../nbd/uri';
import { UsageError } from './errors';

export const REMOTE_USAGE = `URI or HOST[:PORT]: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH,
                 nbds://... and nbds+unix://... for TLS (tls-certificates=DIR, tls-psk-file=FILE,
                 tls-username=, tls-hostname=, tls-verify-peer=0); port 10809 by default`;

export function parseRemoteArg(text: string, command: string): NbdEndpoint {
  let e: NbdEndpoint;
  try {
    e = parseRemote(text);
  } catch (err) {
    if (err instanceof NbdError) throw new UsageError(`${command}: --remote: ${err.message}`);
    throw err;
  }
  if (e.transport === 'tcp' && e.port === 0) throw new UsageError(`${command}: --remote port 0 is not valid`);
  return withAbsolutePaths(e, process.cwd());
}

/** The key files a URI names (PSK file, client key) that every user can read. */
export function openKeyFiles(e: NbdEndpoint): string[] {
  const files: string[] = [];
  if (e.tls?.pskFile !== undefined) files.push(e.tls.pskFile);
  if (e.tls?.certificates !== undefined) files.push(path.join(e.tls.certificates, CLIENT_KEY));
  return files.filter((f) => worldReadable(f));
}
