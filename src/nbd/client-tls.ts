// The client's TLS settings for one connection, from an nbds URI's parameters, read the way
// libnbd reads them: tls-certificates=DIR holds ca-cert.pem (and client-cert.pem with
// client-key.pem for a client certificate); without it the system's CAs are trusted;
// tls-psk-file=FILE holds psktool's keys, the identity being tls-username (or the URI's
// user, or the local user name, as uri.md says).
import * as net from 'net';
import * as os from 'os';
import * as tls from 'tls';
import {
  CA_CERT, CLIENT_CERT, CLIENT_KEY, optionalTlsFile, PSK_CIPHERS, readPskFile, readTlsFile, TlsFileError,
} from './tls-files';
import type { NbdTls } from './uri';

/**
 * node:tls options for a connection to `host` (the TCP host; '' over a unix socket). The
 * files are read here, on every connection: a renewed certificate is picked up by the next
 * reconnect.
 */
export function clientTlsOptions(t: NbdTls, host: string): tls.ConnectionOptions {
  if (t.pskFile !== undefined) {
    const user = t.username ?? os.userInfo().username;
    const key = readPskFile(t.pskFile).get(user);
    if (key === undefined) throw new TlsFileError(`${t.pskFile} has no key for user "${user}" (set tls-username= or the URI's user@)`);
    // With PSK both sides prove they hold the key: there is no certificate to verify.
    return { ciphers: PSK_CIPHERS, pskCallback: () => ({ psk: key, identity: user }), checkServerIdentity: () => undefined };
  }
  const opts: tls.ConnectionOptions = { rejectUnauthorized: t.verifyPeer };
  if (t.certificates !== undefined) {
    const ca = optionalTlsFile(t.certificates, CA_CERT);
    if (ca === undefined && t.verifyPeer) throw new TlsFileError(`${t.certificates} has no ${CA_CERT} to verify the server with`);
    if (ca !== undefined) opts.ca = readTlsFile(ca, 'CA certificate');
    const cert = optionalTlsFile(t.certificates, CLIENT_CERT);
    const key = optionalTlsFile(t.certificates, CLIENT_KEY);
    if (cert !== undefined && key !== undefined) {
      opts.cert = readTlsFile(cert, 'client certificate');
      opts.key = readTlsFile(key, 'client key');
    }
  }
  // The name the certificate must carry: tls-hostname, else the host of the URI. Over a unix
  // socket without tls-hostname there is no name to check, only the chain to the CA.
  const name = t.hostname ?? host;
  if (name !== '' && !net.isIP(name)) opts.servername = name; // SNI takes names, not addresses
  opts.checkServerIdentity = name === '' ? () => undefined : (_host, cert) => tls.checkServerIdentity(name, cert);
  return opts;
}
