// NBD URIs against cases written out from NetworkBlockDevice/nbd doc/uri.md and libnbd's
// nbd_connect_uri(3), never against our own formatter's output.
import * as assert from 'assert';
import { NbdUriError } from '../../src/nbd/errors';
import { displayUri, endpointAddress, NbdEndpoint, parseNbdUri, parseRemote, withAbsolutePaths } from '../../src/nbd/uri';

const tcp = (host: string, port: number, exportName: string): NbdEndpoint =>
  ({ transport: 'tcp', host, port, socket: '', exportName, tls: null });

describe('nbd uri', function () {
  describe('uri.md: the export name is the path less its leading "/"', function () {
    const cases: Array<[string, string]> = [
      ['nbd://example.com/disk', 'disk'],
      ['nbd+unix:///disk?socket=sock', 'disk'],
      ['nbd://example.com/', ''],
      ['nbd://example.com', ''],
      ['nbd://example.com//disk', '/disk'],
      ['nbd://example.com/hello%20world', 'hello world'],
      ['nbd://example.com/a/b', 'a/b'],
      ['nbd://example.com/%C3%A9t%C3%A9', 'été'],
    ];
    for (const [uri, name] of cases) {
      it(`${uri} -> "${name}"`, function () {
        assert.strictEqual(parseNbdUri(uri).exportName, name);
      });
    }
  });

  describe('schemes, hosts and ports', function () {
    it('nbd://example.com:10809/export (the diagram in uri.md)', function () {
      assert.deepStrictEqual(parseNbdUri('nbd://example.com:10809/export'), tcp('example.com', 10809, 'export'));
    });
    it('the port defaults to 10809 (IANA)', function () {
      assert.deepStrictEqual(parseNbdUri('nbd://example.com'), tcp('example.com', 10809, ''));
      assert.strictEqual(parseNbdUri('nbd://example.com:/x').port, 10809); // RFC 3986: empty port
    });
    it('IPv6 literals in brackets (RFC 2732)', function () {
      assert.deepStrictEqual(parseNbdUri('nbd://[::1]:10810/d'), tcp('::1', 10810, 'd'));
      assert.deepStrictEqual(parseNbdUri('nbd://[fe80::1]/'), tcp('fe80::1', 10809, ''));
    });
    it('the scheme is case-insensitive (RFC 3986 3.1)', function () {
      assert.strictEqual(parseNbdUri('NBDS://h/').tls?.verifyPeer, true);
    });
    it('nbd+unix:///foo?socket=/tmp/nbd.sock (nbd_connect_uri(3))', function () {
      assert.deepStrictEqual(parseNbdUri('nbd+unix:///foo?socket=/tmp/nbd.sock'),
        { transport: 'unix', host: '', port: 0, socket: '/tmp/nbd.sock', exportName: 'foo', tls: null });
    });
    it('an abstract socket: socket=%00/abstract (uri.md)', function () {
      assert.strictEqual(parseNbdUri('nbd+unix:///?socket=%00/abstract').socket, '\0/abstract');
    });
    it('nbds: TLS required, the peer verified by default', function () {
      assert.deepStrictEqual(parseNbdUri('nbds://example.com/').tls, { verifyPeer: true });
    });
    it('nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs (nbd_connect_uri(3))', function () {
      const e = parseNbdUri('nbds+unix://alice@/?socket=/tmp/nbd.sock&tls-certificates=certs');
      assert.strictEqual(e.transport, 'unix');
      assert.strictEqual(e.socket, '/tmp/nbd.sock');
      assert.deepStrictEqual(e.tls, { verifyPeer: true, certificates: 'certs', username: 'alice' });
    });
    it('the TLS parameters of uri.md and libnbd', function () {
      const e = parseNbdUri('nbds://h:1/x?tls-psk-file=/k/psk&tls-username=bob&tls-hostname=store.example&tls-verify-peer=0&tls-type=psk');
      assert.deepStrictEqual(e.tls, { verifyPeer: false, pskFile: '/k/psk', username: 'bob', hostname: 'store.example' });
      assert.strictEqual(parseNbdUri('nbds://h/?tls-verify-peer=false').tls?.verifyPeer, false);
      assert.strictEqual(parseNbdUri('nbds://h/?tls-verify-peer=1').tls?.verifyPeer, true);
    });
    it('tls-username wins over the userinfo', function () {
      assert.strictEqual(parseNbdUri('nbds://alice@h/?tls-username=bob').tls?.username, 'bob');
    });
    it('a "+" in a query value is a plus, not a space (RFC 3986 has no form encoding)', function () {
      assert.strictEqual(parseNbdUri('nbd+unix:///?socket=/run/a+b.sock').socket, '/run/a+b.sock');
    });
  });

  describe('HOST[:PORT] keeps working', function () {
    it('host, host:port, [v6]:port', function () {
      assert.deepStrictEqual(parseRemote('store'), tcp('store', 10809, ''));
      assert.deepStrictEqual(parseRemote('10.1.2.3:10900'), tcp('10.1.2.3', 10900, ''));
      assert.deepStrictEqual(parseRemote('[::1]:7'), tcp('::1', 7, ''));
      assert.deepStrictEqual(parseRemote('nbd:10900'), tcp('nbd', 10900, '')); // a host named nbd
    });
    it('a URI is told from HOST[:PORT] by its scheme', function () {
      assert.strictEqual(parseRemote('nbd://h:5/e').exportName, 'e');
    });
  });

  describe('errors name what is wrong', function () {
    const cases: Array<[string, RegExp]> = [
      ['http://example.com/', /unknown scheme "http:"/],
      ['nbd+vsock:///', /unknown scheme "nbd\+vsock:"/],
      ['nbd:///disk', /needs a host/],
      ['nbd+unix:///disk', /needs socket=PATH/],
      ['nbd+unix:///disk?socket=', /needs socket=PATH/],
      ['nbd+unix://host/disk?socket=/s', /names a socket, not a host/],
      ['nbd://h/disk?socket=/s', /socket= is only for nbd\+unix/],
      ['nbd://h:99999/', /invalid port "99999"/],
      ['nbd://h:port/', /invalid port "port"/],
      ['nbd://::1/', /IPv6 address must be in brackets/],
      ['nbd://[::1/', /invalid IPv6 literal/],
      ['nbd://h/%zz', /bad percent-encoding in the export name/],
      ['nbd://h/a%00b', /NUL/],
      ['nbd://h/#frag', /fragment/],
      ['nbd://h/?tls-certificates=/c', /tls-certificates= needs TLS: use nbds:\/\//],
      ['nbd+unix:///?socket=/s&tls-psk-file=/k', /tls-psk-file= needs TLS: use nbds\+unix:\/\//],
      ['nbds://h/?tls-verify-peer=maybe', /tls-verify-peer=maybe: expected 0 or 1/],
      ['nbds://h/?tls-certificates=/c&tls-psk-file=/k', /exclude each other/],
      ['nbds://h/?tls-type=anon', /tls-type=anon is not supported/],
      ['nbds://h/?tls-type=psk', /tls-type=psk needs tls-psk-file/],
      ['nbds://h/?tls-psk-file=', /tls-psk-file= is empty/],
      ['nbds://h/?x-frobnicate=1', /unknown query parameter "x-frobnicate"/],
      ['nbds://h/?socket=/a&socket=/b', /socket= is only for|given twice/],
      ['nbd+unix:///?socket=/a&socket=/b', /socket= given twice/],
      ['nbds://alice:secret@h/', /password in the URI is not accepted/],
      ['nbd://h/' + 'x'.repeat(4097), /longer than 4096 bytes/],
      ['nbd:h', /not a URI/],
      ['nbds+unix:/s', /not a URI/],
    ];
    for (const [uri, re] of cases) {
      it(uri.length > 60 ? `${uri.slice(0, 40)}...` : uri, function () {
        assert.throws(() => parseRemote(uri), (err: unknown) => err instanceof NbdUriError && re.test(err.message));
      });
    }
    it('HOST[:PORT] mistakes', function () {
      assert.throws(() => parseRemote(':10809'), /names no host/);
      assert.throws(() => parseRemote('h:70000'), /invalid port "70000"/);
      assert.throws(() => parseRemote('a b'), /invalid host/);
    });
    it('the error of a password does not repeat the password', function () {
      assert.throws(() => parseRemote('nbds://alice:hunter2@h/'), (err: Error) => !err.message.includes('hunter2'));
    });
  });

  describe('displayUri', function () {
    const cases: Array<[string, string]> = [
      ['nbd://example.com/disk', 'nbd://example.com:10809/disk'],
      ['nbd://[::1]:7/a%20b', 'nbd://[::1]:7/a%20b'],
      ['nbd://h//disk', 'nbd://h:10809//disk'],
      ['nbd+unix:///e?socket=/run/x.sock', 'nbd+unix:///e?socket=/run/x.sock'],
      ['nbds+unix://alice@/?socket=/s&tls-certificates=/c', 'nbds+unix:///?socket=/s&tls-certificates=/c&tls-username=alice'],
      ['nbds://h/?tls-verify-peer=no&tls-psk-file=/k/p%20f&tls-hostname=n', 'nbds://h:10809/?tls-psk-file=/k/p%20f&tls-hostname=n&tls-verify-peer=0'],
    ];
    for (const [uri, shown] of cases) {
      it(`${uri} -> ${shown}`, function () {
        assert.strictEqual(displayUri(parseNbdUri(uri)), shown);
      });
    }
    it('HOST[:PORT] is shown as the nbd:// URI it means', function () {
      assert.strictEqual(displayUri(parseRemote('store:10900')), 'nbd://store:10900/');
    });
  });

  it('endpointAddress: host:port, [v6]:port or the socket', function () {
    assert.strictEqual(endpointAddress(parseRemote('nbd://[::1]:9/')), '[::1]:9');
    assert.strictEqual(endpointAddress(parseRemote('h')), 'h:10809');
    assert.strictEqual(endpointAddress(parseRemote('nbd+unix:///?socket=/s')), '/s');
    assert.strictEqual(endpointAddress(parseRemote('nbd+unix:///?socket=%00abs')), '@abs');
  });

  it('withAbsolutePaths resolves socket, certificates and PSK file against a directory', function () {
    const e = withAbsolutePaths(parseNbdUri('nbds+unix:///?socket=s.sock&tls-psk-file=keys/psk'), '/srv');
    assert.strictEqual(e.socket, '/srv/s.sock');
    assert.strictEqual(e.tls?.pskFile, '/srv/keys/psk');
    assert.strictEqual(withAbsolutePaths(parseNbdUri('nbd+unix:///?socket=%00abs'), '/srv').socket, '\0abs');
    assert.strictEqual(withAbsolutePaths(parseNbdUri('nbds://h/?tls-certificates=/etc/pki'), '/srv').tls?.certificates, '/etc/pki');
  });
});
