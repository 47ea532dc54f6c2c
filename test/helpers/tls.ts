// TLS material for tests, made the way users make it: certtool (GnuTLS) for a CA with
// server and client certificates in nbdkit's and qemu's directory layout, psktool for PSK.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { tempDir } from './images';
import { requirePeer } from './peers';
import type { Cleanup } from './procs';

export interface Pki {
  /** ca-cert.pem, server-cert.pem, server-key.pem: for `serve --tls-certificates`, nbdkit, qemu-nbd. */
  serverDir: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem: for tls-certificates= in a client URI. */
  clientDir: string;
  /** Only ca-cert.pem: a client that verifies the server and shows no certificate of its own. */
  caOnlyDir: string;
}

function certtool(args: string[]): void {
  execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function writeTemplate(file: string, lines: string[]): string {
  fs.writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

/**
 * A CA and certificates it signed; the server's names are `serverNames` (DNS names, and IP
 * addresses for entries that are numeric). Keys are mode 0600.
 */
export function makePki(dir: string, serverNames: string[] = ['localhost', '127.0.0.1']): Pki {
  fs.mkdirSync(dir, { recursive: true });
  const work = path.join(dir, 'work');
  fs.mkdirSync(work);
  const caKey = path.join(work, 'ca-key.pem');
  const caCert = path.join(work, 'ca-cert.pem');
  certtool(['--generate-privkey', '--key-type', 'ecdsa', '--outfile', caKey]);
  certtool(['--generate-self-signed', '--load-privkey', caKey, '--outfile', caCert,
    '--template', writeTemplate(path.join(work, 'ca.info'), ['cn = netdisk test CA', 'ca', 'cert_signing_key', 'expiration_days = 2'])]);
  const issue = (name: string, template: string[]): { key: string; cert: string } => {
    const key = path.join(work, `${name}-key.pem`);
    const cert = path.join(work, `${name}-cert.pem`);
    certtool(['--generate-privkey', '--key-type', 'ecdsa', '--outfile', key]);
    certtool(['--generate-certificate', '--load-ca-certificate', caCert, '--load-ca-privkey', caKey, '--load-privkey', key,
      '--outfile', cert, '--template', writeTemplate(path.join(work, `${name}.info`), template)]);
    return { key, cert };
  };
  const names = serverNames.map((n) => (/^[\d.]+$|:/.test(n) ? `ip_address = ${n}` : `dns_name = ${n}`));
  const server = issue('server', [`cn = ${serverNames[0] ?? 'server'}`, ...names, 'tls_www_server', 'signing_key', 'encryption_key', 'expiration_days = 2']);
  const client = issue('client', ['cn = netdisk test client', 'tls_www_client', 'signing_key', 'encryption_key', 'expiration_days = 2']);
  const place = (sub: string, files: Record<string, string>): string => {
    const d = path.join(dir, sub);
    fs.mkdirSync(d, { mode: 0o700 });
    for (const [name, from] of Object.entries(files)) {
      fs.copyFileSync(from, path.join(d, name));
      fs.chmodSync(path.join(d, name), name.endsWith('-key.pem') ? 0o600 : 0o644);
    }
    return d;
  };
  return {
    serverDir: place('server', { 'ca-cert.pem': caCert, 'server-cert.pem': server.cert, 'server-key.pem': server.key }),
    clientDir: place('client', { 'ca-cert.pem': caCert, 'client-cert.pem': client.cert, 'client-key.pem': client.key }),
    caOnlyDir: place('ca-only', { 'ca-cert.pem': caCert }),
  };
}

/** psktool -p FILE -u USER: a new random key for USER in FILE (mode 0600); returns FILE. */
export function makePsk(file: string, user = 'alice'): string {
  execFileSync('psktool', ['-p', file, '-u', user], { stdio: ['ignore', 'ignore', 'pipe'] });
  fs.chmodSync(file, 0o600);
  return file;
}

/** What the TLS tests share: two unrelated CAs, and two PSK files with different keys for alice. */
export interface TlsMaterial {
  dir: string;
  pki: Pki;
  otherPki: Pki;
  psk: string;
  otherPsk: string;
}

/** Makes the material once in a temporary directory (`tempDir` under the caller's cleanup). */
export function makeTlsMaterial(dir: string): TlsMaterial {
  return {
    dir,
    pki: makePki(path.join(dir, 'pki')),
    otherPki: makePki(path.join(dir, 'other-pki')),
    psk: makePsk(path.join(dir, 'keys.psk'), 'alice'),
    otherPsk: makePsk(path.join(dir, 'other.psk'), 'alice'),
  };
}

/**
 * The material for the calling describe block, made once in its before-all hook (certtool
 * and psktool required) in a directory `shared` removes; its fields are set from then on.
 */
export function suiteTlsMaterial(shared: Cleanup): TlsMaterial {
  const material: TlsMaterial = { dir: '', pki: { serverDir: '', clientDir: '', caOnlyDir: '' }, otherPki: { serverDir: '', clientDir: '', caOnlyDir: '' }, psk: '', otherPsk: '' };
  before(function () {
    requirePeer('certtool');
    requirePeer('psktool');
    Object.assign(material, makeTlsMaterial(tempDir(shared)));
  });
  return material;
}
