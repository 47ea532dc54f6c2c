// serve's --listen and --tls* arguments: where the server listens and how it does TLS.
// --listen takes HOST[:PORT], unix:PATH, or an NBD URI (nbd://HOST:PORT/EXPORT,
// nbd+unix:///EXPORT?socket=PATH, and the nbds forms, which require TLS).
import { NbdError } from '../nbd/errors';
import { isUri, parseNbdUri } from '../nbd/uri';
import type { ListenAddress } from '../server/server';
import type { ServerTlsFiles, TlsMode } from '../server/tls';
import { parseHostPort } from './args';
import { UsageError } from './errors';

export interface ListenPlan {
  address: ListenAddress;
  /** The export name a URI's path gave, if any. */
  exportName?: string;
  tls: TlsMode;
  files: ServerTlsFiles;
}

export interface ListenArgs {
  listen?: string;
  tls?: string;
  'tls-certificates'?: string;
  'tls-psk'?: string;
}

export function planListen(args: ListenArgs): ListenPlan {
  const text = args.listen ?? '127.0.0.1';
  let address: ListenAddress;
  let exportName: string | undefined;
  let uriTls = false;
  const files: ServerTlsFiles = {};
  if (text.startsWith('unix:') && !isUri(text)) {
    const file = text.slice('unix:'.length);
    if (file === '') throw new UsageError('serve: --listen unix:PATH needs a path');
    address = { path: file };
  } else if (isUri(text)) {
    let e;
    try {
      e = parseNbdUri(text);
    } catch (err) {
      if (err instanceof NbdError) throw new UsageError(`serve: --listen: ${err.message}`);
      throw err;
    }
    address = e.transport === 'unix' ? { path: e.socket } : { host: e.host, port: e.port };
    if (e.exportName !== '') exportName = e.exportName;
    if (e.tls) {
      uriTls = true;
      const clientOnly = e.tls.username ?? e.tls.hostname ?? (e.tls.verifyPeer ? undefined : 'tls-verify-peer');
      if (clientOnly !== undefined) throw new UsageError('serve: --listen: tls-username, tls-hostname and tls-verify-peer are client settings');
      if (e.tls.certificates !== undefined) files.certificates = e.tls.certificates;
      if (e.tls.pskFile !== undefined) files.pskFile = e.tls.pskFile;
    }
  } else {
    address = parseHostPort(text, '127.0.0.1', 'serve: --listen');
  }

  if (args['tls-certificates'] !== undefined) files.certificates = args['tls-certificates'];
  if (args['tls-psk'] !== undefined) files.pskFile = args['tls-psk'];
  const given = args.tls;
  if (given !== undefined && given !== 'off' && given !== 'on' && given !== 'require') {
    throw new UsageError(`serve: --tls must be off, on or require, not "${given}"`);
  }
  if (uriTls && given !== undefined && given !== 'require') {
    throw new UsageError(`serve: an nbds listen URI requires TLS; --tls ${given} contradicts it`);
  }
  const tls: TlsMode = given ?? (uriTls ? 'require' : 'off');
  const haveFiles = files.certificates !== undefined || files.pskFile !== undefined;
  if (tls === 'off' && haveFiles) throw new UsageError('serve: --tls-certificates and --tls-psk need --tls on or --tls require');
  if (tls !== 'off' && !haveFiles) throw new UsageError(`serve: --tls ${tls} needs --tls-certificates DIR or --tls-psk FILE`);
  if (files.certificates !== undefined && files.pskFile !== undefined) {
    throw new UsageError('serve: --tls-certificates and --tls-psk exclude each other: give one');
  }
  return { address, ...(exportName === undefined ? {} : { exportName }), tls, files };
}
