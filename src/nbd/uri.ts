// NBD URIs (NetworkBlockDevice/nbd doc/uri.md): nbd://, nbds://, nbd+unix://, nbds+unix://,
// with the query parameters libnbd's nbd_connect_uri understands, so that one URI names the
// same store for nbdinfo, qemu and us. Pure: text in, values out; nothing is opened here.
//
// A parsed endpoint holds no secret: TLS keys stay in the files the URI names, and a password
// in the userinfo is refused, so displayUri() can go to logs, records and `list` as it is.
import * as path from 'path';
import { NBD_DEFAULT_PORT } from './constants';
import { NbdUriError } from './errors';

export interface NbdTls {
  /** tls-certificates=DIR: ca-cert.pem (and client-cert.pem, client-key.pem) in nbdkit's and qemu's layout. */
  certificates?: string;
  /** tls-psk-file=FILE: psktool's username:hexkey lines. */
  pskFile?: string;
  /** The PSK identity: tls-username=, else the URI's userinfo. */
  username?: string;
  /** tls-hostname=: the name the server's certificate must carry (default: the URI's host). */
  hostname?: string;
  /** tls-verify-peer=0 skips the certificate check (encryption without authentication). */
  verifyPeer: boolean;
}

export interface NbdEndpoint {
  transport: 'tcp' | 'unix';
  /** TCP: a host name or an IP address (IPv6 without brackets); '' for unix. */
  host: string;
  /** TCP port; 0 for unix. */
  port: number;
  /** Unix socket path ('' for TCP); a leading NUL names the abstract namespace. */
  socket: string;
  exportName: string;
  /** null: clear text (nbd, nbd+unix); otherwise TLS is required (nbds, nbds+unix). */
  tls: NbdTls | null;
}

const SCHEMES: Record<string, { transport: 'tcp' | 'unix'; tls: boolean }> = {
  'nbd': { transport: 'tcp', tls: false },
  'nbds': { transport: 'tcp', tls: true },
  'nbd+unix': { transport: 'unix', tls: false },
  'nbds+unix': { transport: 'unix', tls: true },
};
const TLS_PARAMS = ['tls-certificates', 'tls-psk-file', 'tls-username', 'tls-hostname', 'tls-verify-peer', 'tls-type'];
// proto.md "Option types": export names are at most 4096 bytes of UTF-8.
const MAX_EXPORT_NAME_BYTES = 4096;

/** True for text that looks like a URI (scheme://), as opposed to HOST[:PORT]. */
export function isUri(text: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(text);
}

/** An NBD URI, or HOST[:PORT] (port 10809 by default, default export, no TLS). */
export function parseRemote(text: string): NbdEndpoint {
  if (isUri(text)) return parseNbdUri(text);
  if (/^nbds?(\+unix)?:(?!\d+$)/i.test(text)) throw new NbdUriError(`"${text}" is not a URI: an NBD URI starts with nbd://`);
  const { host, port } = parseHostPort(text);
  if (host === '') throw new NbdUriError(`"${text}" names no host`);
  return { transport: 'tcp', host, port, socket: '', exportName: '', tls: null };
}

export function parseNbdUri(text: string): NbdEndpoint {
  // RFC 3986 appendix B, the authority required (every NBD scheme has "//").
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(#.*)?$/.exec(text);
  if (!m) throw new NbdUriError(`"${text}" is not a URI`);
  const scheme = (m[1] as string).toLowerCase();
  const kind = SCHEMES[scheme];
  if (!kind) throw new NbdUriError(`unknown scheme "${scheme}:" in "${text}" (nbd, nbds, nbd+unix or nbds+unix)`);
  if (m[5] !== undefined) throw new NbdUriError(`a fragment ("${m[5]}") has no meaning in an NBD URI`);
  const auth = parseAuthority(m[2] as string, text);
  const exportName = decode((m[3] as string).replace(/^\//, ''), 'export name');
  if (exportName.includes('\0')) throw new NbdUriError('the export name contains a NUL byte');
  if (Buffer.byteLength(exportName, 'utf8') > MAX_EXPORT_NAME_BYTES) {
    throw new NbdUriError(`the export name is longer than ${MAX_EXPORT_NAME_BYTES} bytes`);
  }
  const q = parseQuery(m[4] ?? '');

  let socket = '';
  let host = '';
  let port = 0;
  if (kind.transport === 'unix') {
    if (auth.host !== '' || auth.port !== undefined) {
      throw new NbdUriError(`${scheme}: names a socket, not a host: write ${scheme}:///EXPORT?socket=PATH (not "${auth.host}")`);
    }
    socket = q.get('socket') ?? '';
    if (socket === '') throw new NbdUriError(`${scheme}: needs socket=PATH`);
    if (socket.indexOf('\0', 1) >= 0) throw new NbdUriError('the socket path contains a NUL byte');
  } else {
    if (q.has('socket')) throw new NbdUriError(`socket= is only for nbd+unix and nbds+unix, not ${scheme}:`);
    if (auth.host === '') throw new NbdUriError(`${scheme}: needs a host: ${scheme}://HOST[:PORT]/EXPORT`);
    host = auth.host;
    port = auth.port ?? NBD_DEFAULT_PORT; // 0 is for a server to listen on; clients refuse it
  }

  let tls: NbdTls | null = null;
  if (kind.tls) {
    tls = { verifyPeer: parseBool(q.get('tls-verify-peer') ?? '1', 'tls-verify-peer') };
    const certificates = q.get('tls-certificates');
    const pskFile = q.get('tls-psk-file');
    const username = q.get('tls-username') ?? auth.user;
    const hostname = q.get('tls-hostname');
    if (certificates !== undefined) tls.certificates = nonEmpty(certificates, 'tls-certificates');
    if (pskFile !== undefined) tls.pskFile = nonEmpty(pskFile, 'tls-psk-file');
    if (username !== undefined) tls.username = nonEmpty(username, 'tls-username');
    if (hostname !== undefined) tls.hostname = nonEmpty(hostname, 'tls-hostname');
    if (tls.certificates !== undefined && tls.pskFile !== undefined) {
      throw new NbdUriError('tls-certificates and tls-psk-file exclude each other: a connection uses X.509 or PSK');
    }
    const type = q.get('tls-type');
    if (type !== undefined && type !== 'x509' && type !== 'psk') {
      throw new NbdUriError(`tls-type=${type} is not supported (x509 or psk)`);
    }
    if (type === 'psk' && tls.pskFile === undefined) throw new NbdUriError('tls-type=psk needs tls-psk-file=FILE');
    if (type === 'x509' && tls.pskFile !== undefined) throw new NbdUriError('tls-type=x509 contradicts tls-psk-file');
  } else {
    const given = TLS_PARAMS.find((p) => q.has(p));
    // uri.md allows opportunistic TLS for nbd:, but that can be downgraded by anyone on the
    // path (proto.md "Protocol downgrade attacks"): TLS settings on a clear-text URI are a
    // mistake worth naming rather than a wish to honour halfway.
    if (given !== undefined) throw new NbdUriError(`${given}= needs TLS: use ${scheme.replace('nbd', 'nbds')}:// (${scheme}:// is clear text)`);
  }
  return { transport: kind.transport, host, port, socket, exportName, tls };
}

/**
 * The URI again, in one spelling: the port always written, the parameters in a fixed order.
 * It holds no secret (see the header), so it is what logs, records and `list` show.
 */
export function displayUri(e: NbdEndpoint): string {
  const scheme = `${e.tls ? 'nbds' : 'nbd'}${e.transport === 'unix' ? '+unix' : ''}`;
  const host = e.transport === 'tcp' ? `${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}` : '';
  const params: string[] = [];
  if (e.transport === 'unix') params.push(`socket=${encodePart(e.socket)}`);
  if (e.tls) {
    if (e.tls.certificates !== undefined) params.push(`tls-certificates=${encodePart(e.tls.certificates)}`);
    if (e.tls.pskFile !== undefined) params.push(`tls-psk-file=${encodePart(e.tls.pskFile)}`);
    if (e.tls.username !== undefined) params.push(`tls-username=${encodePart(e.tls.username)}`);
    if (e.tls.hostname !== undefined) params.push(`tls-hostname=${encodePart(e.tls.hostname)}`);
    if (!e.tls.verifyPeer) params.push('tls-verify-peer=0');
  }
  return `${scheme}://${host}/${encodePart(e.exportName)}${params.length > 0 ? `?${params.join('&')}` : ''}`;
}

/** Where the connection goes, for messages: host:port or the socket path. */
export function endpointAddress(e: NbdEndpoint): string {
  if (e.transport === 'unix') return e.socket.startsWith('\0') ? `@${e.socket.slice(1)}` : e.socket;
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

/**
 * The same endpoint with relative file names (socket, certificates, PSK file) made absolute
 * against cwd: a daemon or a later `recover` must find them from wherever it runs.
 */
export function withAbsolutePaths(e: NbdEndpoint, cwd: string): NbdEndpoint {
  const abs = (p: string): string => (p.startsWith('\0') ? p : path.resolve(cwd, p));
  const out: NbdEndpoint = { ...e, socket: e.transport === 'unix' ? abs(e.socket) : e.socket };
  if (e.tls) {
    out.tls = { ...e.tls };
    if (e.tls.certificates !== undefined) out.tls.certificates = abs(e.tls.certificates);
    if (e.tls.pskFile !== undefined) out.tls.pskFile = abs(e.tls.pskFile);
  }
  return out;
}

/** "host", "host:port", "[v6]", "[v6]:port", ":port"; host '' when not given. */
export function parseHostPort(text: string): { host: string; port: number } {
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
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw new NbdUriError(`invalid port "${portText}" in "${text}"`);
    port = Number(portText);
  }
  if (/[\s/?#@[\]]/.test(host)) throw new NbdUriError(`invalid host "${host}" in "${text}"`);
  return { host, port };
}

function parseAuthority(auth: string, text: string): { user?: string; host: string; port?: number } {
  let rest = auth;
  let user: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at >= 0) {
    const info = rest.slice(0, at);
    rest = rest.slice(at + 1);
    // RFC 3986 3.2.1: "user:password" is deprecated; a password here would end up in shell
    // history, ps output and our device records.
    if (info.includes(':')) throw new NbdUriError('a password in the URI is not accepted: TLS keys belong in tls-psk-file or tls-certificates');
    user = decode(info, 'user name');
    if (user === '') user = undefined;
  }
  if (rest === '') return { user, host: '' };
  let hp: { host: string; port: number };
  if (rest.startsWith('[') && !/^\[[0-9A-Fa-f:.]+\](:\d*)?$/.test(rest)) {
    throw new NbdUriError(`invalid IPv6 literal in "${text}" (RFC 2732: [address]:port)`);
  }
  if (!rest.startsWith('[') && (rest.match(/:/g) ?? []).length > 1) {
    throw new NbdUriError(`an IPv6 address must be in brackets (RFC 2732): nbd://[${rest}]/`);
  }
  if (rest.endsWith(':')) rest = rest.slice(0, -1); // RFC 3986 3.2.3: an empty port is no port
  try {
    hp = parseHostPort(rest);
  } catch (err) {
    throw new NbdUriError(`${(err as Error).message}`);
  }
  const explicitPort = /\]:\d+$|^[^[\]]*:\d+$/.test(rest);
  const host = decode(hp.host, 'host');
  return { user, host, ...(explicitPort ? { port: hp.port } : {}) };
}

function parseQuery(query: string): Map<string, string> {
  const q = new Map<string, string>();
  if (query === '') return q;
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = decode(eq < 0 ? part : part.slice(0, eq), 'query parameter');
    const value = decode(eq < 0 ? '' : part.slice(eq + 1), `${key}=`);
    if (key !== 'socket' && !TLS_PARAMS.includes(key)) {
      // uri.md: parameters a client does not understand should be diagnosed.
      throw new NbdUriError(`unknown query parameter "${key}" (known: socket, ${TLS_PARAMS.join(', ')})`);
    }
    if (q.has(key)) throw new NbdUriError(`${key}= given twice`);
    q.set(key, value);
  }
  return q;
}

function decode(s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new NbdUriError(`bad percent-encoding in the ${what} "${s}"`);
  }
}

function nonEmpty(v: string, key: string): string {
  if (v === '') throw new NbdUriError(`${key}= is empty`);
  return v;
}

function parseBool(v: string, key: string): boolean {
  // libnbd reads booleans in URIs this way.
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new NbdUriError(`${key}=${v}: expected 0 or 1`);
}

/** Percent-encodes all but RFC 3986's unreserved characters and '/'. */
function encodePart(s: string): string {
  return encodeURIComponent(s).replace(/%2F/gi, '/');
}
