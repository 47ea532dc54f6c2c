// The server's TLS: credentials loaded once (X.509 in nbdkit's and qemu's directory layout,
// or psktool's PSK file) and the upgrade of one connection after NBD_OPT_STARTTLS.
import * as path from 'path';
import * as tls from 'tls';
import { Socket } from 'net';
import {
  CA_CERT, optionalTlsFile, PSK_CIPHERS, readPskFile, readTlsFile, SERVER_CERT, SERVER_KEY, TlsFileError, worldReadable,
} from '../nbd/tls-files';
import { Logger } from '../log';

/** off: NBD_OPT_STARTTLS is refused; on: offered; require: nothing else is answered first (FORCEDTLS). */
export type TlsMode = 'off' | 'on' | 'require';

export interface ServerTlsFiles {
  certificates?: string;
  pskFile?: string;
}

export interface ServerTls {
  readonly mode: 'on' | 'require';
  readonly kind: 'x509' | 'psk';
  /** Certificates, key and CA, or the PSK suites: checked once by loadServerTls. */
  readonly credentials: tls.SecureContextOptions;
  /** X.509: a CA is configured, so a client certificate, when one is sent, must chain to it. */
  readonly verifyClients: boolean;
  readonly psk: Map<string, Buffer> | null;
}

/** Loads and checks the credentials, warning about key files anyone may read. */
export function loadServerTls(mode: 'on' | 'require', files: ServerTlsFiles, log: Logger): ServerTls {
  if (files.certificates !== undefined && files.pskFile !== undefined) {
    throw new TlsFileError('--tls-certificates and --tls-psk exclude each other: give one');
  }
  const warnIfOpen = (file: string, what: string): void => {
    if (worldReadable(file)) log.warn({ file }, `the ${what} is readable by every user: chmod o-r it`);
  };
  if (files.pskFile !== undefined) {
    const psk = readPskFile(files.pskFile);
    warnIfOpen(files.pskFile, 'PSK file');
    return { mode, kind: 'psk', credentials: { ciphers: PSK_CIPHERS }, verifyClients: false, psk };
  }
  if (files.certificates === undefined) throw new TlsFileError('TLS needs --tls-certificates DIR or --tls-psk FILE');
  const dir = files.certificates;
  const keyFile = path.join(dir, SERVER_KEY);
  const ca = optionalTlsFile(dir, CA_CERT);
  const credentials: tls.SecureContextOptions = {
    cert: readTlsFile(path.join(dir, SERVER_CERT), 'server certificate'),
    key: readTlsFile(keyFile, 'server key'),
    ...(ca ? { ca: readTlsFile(ca, 'CA certificate') } : {}),
  };
  try {
    tls.createSecureContext(credentials);
  } catch (err) {
    if (err instanceof TlsFileError) throw err;
    // OpenSSL's message (a PEM that does not parse, a key that does not match) names no file.
    throw new TlsFileError(`the certificates in ${dir} cannot be used: ${(err as Error).message}`);
  }
  warnIfOpen(keyFile, 'server key');
  return { mode, kind: 'x509', credentials, verifyClients: ca !== undefined, psk: null };
}

/**
 * Starts TLS as the server on a socket whose NBD_REP_ACK to STARTTLS has been queued; the
 * handshake's first bytes come from the client. Resolves with the TLS socket once the
 * handshake is done and the peer checked; rejects with the reason otherwise (the socket is
 * then destroyed).
 *
 * The socket goes through a tls.Server of its own ('connection' emitted by hand, as net
 * documents for injected connections): only the server path checks a client certificate
 * against the CA, and it bounds the handshake's duration (handshakeTimeout).
 */
export function startServerTls(raw: Socket, cfg: ServerTls): Promise<tls.TLSSocket> {
  const server = tls.createServer({
    ...cfg.credentials,
    // Asked for, not required: a client without a certificate is let in (as with nbdkit),
    // one whose certificate does not chain to our CA is not (checked below).
    requestCert: cfg.verifyClients,
    rejectUnauthorized: false,
    handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
    ...(cfg.psk ? { pskCallback: (_s: tls.TLSSocket, identity: string) => cfg.psk?.get(identity) ?? null } : {}),
  });
  return new Promise<tls.TLSSocket>((resolve, reject) => {
    const onClose = (): void => reject(new Error('the client closed the connection during the TLS handshake'));
    raw.once('close', onClose);
    server.once('tlsClientError', (err: Error) => {
      raw.destroy();
      reject(err);
    });
    server.once('secureConnection', (sock: tls.TLSSocket) => {
      raw.off('close', onClose);
      if (cfg.verifyClients && !sock.authorized && Object.keys(sock.getPeerCertificate() ?? {}).length > 0) {
        sock.destroy();
        reject(new Error(`the client's certificate is not trusted: ${String(sock.authorizationError)}`));
        return;
      }
      resolve(sock);
    });
    server.emit('connection', raw);
  });
}

// A client that connects and then stalls the handshake holds a connection this long.
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;
