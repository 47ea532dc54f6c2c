// The TLS files NBD tools share, read the way nbdkit, qemu and libnbd read them:
// a certificates directory (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
// client-key.pem) and psktool's PSK file (one "username:hexkey" a line). Used by both sides.
import * as fs from 'fs';
import * as path from 'path';
import { NbdError } from './errors';

/** A TLS file that cannot be used; the message names the file (never its content). */
export class TlsFileError extends NbdError {
  constructor(message: string) {
    super('NBD_TLS_FILE', message);
  }
}

export const CA_CERT = 'ca-cert.pem';
export const SERVER_CERT = 'server-cert.pem';
export const SERVER_KEY = 'server-key.pem';
export const CLIENT_CERT = 'client-cert.pem';
export const CLIENT_KEY = 'client-key.pem';

/** Reads a file, with an error that names it. */
export function readTlsFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new TlsFileError(`cannot read the ${what} ${file}: ${e.code ?? e.message}`);
  }
}

/** The file in dir if it exists, else undefined (optional members of a certificates directory). */
export function optionalTlsFile(dir: string, name: string): string | undefined {
  const file = path.join(dir, name);
  return fs.existsSync(file) ? file : undefined;
}

/**
 * Files holding key material that anyone on the machine may read: the caller warns about
 * them (nbdkit and ssh do likewise), naming the file and its mode, never its content.
 */
export function worldReadable(file: string): boolean {
  try {
    return (fs.statSync(file).mode & 0o004) !== 0;
  } catch {
    return false;
  }
}

export type PskKeys = Map<string, Buffer>;

/**
 * psktool's format: "username:hexkey" per line. A key must be whole hex bytes; errors name
 * the line number, not the line, which holds the key.
 */
export function parsePskFile(text: string, file: string): PskKeys {
  const keys: PskKeys = new Map();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).replace(/\r$/, '');
    if (line.trim() === '') continue;
    const colon = line.indexOf(':');
    const user = colon < 0 ? '' : line.slice(0, colon);
    const hex = colon < 0 ? '' : line.slice(colon + 1).trim();
    if (user === '' || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new TlsFileError(`${file} line ${i + 1} is not "username:hexkey" (psktool's format)`);
    }
    if (keys.has(user)) throw new TlsFileError(`${file} names user "${user}" twice`);
    keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new TlsFileError(`${file} holds no key`);
  return keys;
}

export function readPskFile(file: string): PskKeys {
  return parsePskFile(readTlsFile(file, 'PSK file').toString('utf8'), file);
}

/**
 * TLS 1.2 PSK suites for OpenSSL (Node leaves PSK out of its defaults). The (EC)DHE ones come
 * first for forward secrecy; GnuTLS clients (libnbd, qemu) offer them. TLS 1.3 suites stay
 * as they are: OpenSSL runs the PSK callbacks for TLS 1.3 too, with SHA-256 suites.
 */
export const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_256_GCM_SHA384',
  'ECDHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256',
].join(':');
