// The codec against bytes written out by hand from the spec (NetworkBlockDevice/nbd
// doc/proto.md), never against its own output: an encoder and a decoder that agree on
// the wrong layout would pass a round trip.
import * as assert from 'assert';
import * as codec from '../../src/nbd/codec';
import * as C from '../../src/nbd/constants';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const ascii = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

describe('nbd codec', function () {
  describe('u64', function () {
    const cases: Array<[number, string]> = [
      [0, '0000000000000000'],
      [1, '0000000000000001'],
      [0xffffffff, '00000000ffffffff'],
      [2 ** 32, '0000000100000000'],
      [0x123456789abc, '0000123456789abc'],
      [Number.MAX_SAFE_INTEGER, '001fffffffffffff'],
    ];
    for (const [n, h] of cases) {
      it(`${n} <-> ${h}`, function () {
        const b = Buffer.alloc(10, 0xaa);
        codec.writeU64(b, n, 1);
        assert.strictEqual(b.toString('hex'), `aa${h}aa`);
        assert.strictEqual(codec.readU64(hex(`ff${h}`), 1), n);
      });
    }
    it('values past 2^53 read as large numbers, beyond any real size', function () {
      assert.ok(codec.readU64(hex('ffffffffffffffff'), 0) >= 2 ** 64 - 2 ** 12);
      assert.ok(codec.readU64(hex('8000000000000000'), 0) >= 2 ** 63);
    });
  });

  describe('handshake, server side', function () {
    it('greeting', function () {
      assert.strictEqual(codec.encodeGreeting(C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES).toString('hex'),
        ascii('NBDMAGIC') + ascii('IHAVEOPT') + '0003');
      assert.strictEqual(codec.GREETING_BYTES, 18);
    });

    it('option header', function () {
      const h = codec.decodeOptionHeader(hex(ascii('IHAVEOPT') + '00000007 0000000c'));
      assert.deepStrictEqual(h, { magic: 0x49484156454f5054n, option: 7, length: 12 });
      assert.strictEqual(codec.decodeOptionHeader(hex(ascii('IHAVEOPX') + '00000001 ffffffff')).length, 0xffffffff);
    });

    it('option replies, with and without data; error types keep bit 31', function () {
      assert.strictEqual(codec.encodeOptionReply(7, C.REP_ACK).toString('hex'),
        '0003e889045565a9' + '00000007' + '00000001' + '00000000');
      assert.strictEqual(codec.encodeOptionReply(6, C.REP_ERR_UNKNOWN, Buffer.from('no')).toString('hex'),
        '0003e889045565a9' + '00000006' + '80000006' + '00000002' + '6e6f');
      assert.strictEqual(codec.encodeOptionReply(3, C.REP_SERVER, codec.encodeRepServer('ab')).toString('hex'),
        '0003e889045565a9' + '00000003' + '00000002' + '00000006' + '00000002' + '6162');
    });

    it('NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE', function () {
      assert.strictEqual(codec.encodeInfoExport(0x10_0000_0200, 0x016d).toString('hex'),
        '0000' + '0000001000000200' + '016d');
      assert.strictEqual(codec.encodeInfoName('disk').toString('hex'), '0001' + ascii('disk'));
      assert.strictEqual(codec.encodeInfoBlockSize(1, 4096, 32 * 1024 * 1024).toString('hex'),
        '0003' + '00000001' + '00001000' + '02000000');
    });

    it('EXPORT_NAME reply: 124 zero bytes unless NO_ZEROES', function () {
      assert.strictEqual(codec.encodeExportNameReply(1 << 20, 0x0003, true).toString('hex'), '0000000000100000' + '0003');
      const padded = codec.encodeExportNameReply(1 << 20, 0x0003, false);
      assert.strictEqual(padded.length, 134);
      assert.strictEqual(padded.toString('hex'), '0000000000100000' + '0003' + '00'.repeat(124));
    });

    it('GO / INFO data', function () {
      assert.deepStrictEqual(codec.decodeGoData(hex('00000004' + ascii('disk') + '0002' + '0003' + '0001')),
        { name: 'disk', infoRequests: [3, 1] });
      assert.deepStrictEqual(codec.decodeGoData(hex('00000000 0000')), { name: '', infoRequests: [] });
      assert.deepStrictEqual(codec.decodeGoData(hex('00000003' + 'c3a978' + '0000')), { name: 'éx', infoRequests: [] });
    });

    it('GO / INFO data whose lengths do not add up is null', function () {
      for (const bad of [
        '', '000000', '00000000 00', // too short
        '00000005' + ascii('disk') + '0000', // name runs past the data
        'ffffffff' + ascii('disk') + '0000', // huge name length
        '00000004' + ascii('disk') + '0001', // one request promised, none there
        '00000004' + ascii('disk') + '0000' + '0001', // trailing bytes
        '00000004' + ascii('disk') + '0001' + '00', // half a request
      ]) {
        assert.strictEqual(codec.decodeGoData(hex(bad)), null, bad);
      }
    });
  });

  describe('handshake, client side', function () {
    it('greeting', function () {
      assert.deepStrictEqual(codec.decodeGreeting(hex(ascii('NBDMAGIC') + ascii('IHAVEOPT') + '0001')), { handshakeFlags: 1 });
    });

    it('an oldstyle greeting and a wrong magic are refused with a reason', function () {
      // Oldstyle: NBDMAGIC then 0x00420281861253 (cliserv magic) and the size.
      assert.throws(() => codec.decodeGreeting(hex(ascii('NBDMAGIC') + '0000420281861253' + '0000')), /oldstyle/);
      assert.throws(() => codec.decodeGreeting(hex(ascii('HTTP/1.1') + ascii(' 400 Bad') + '0000')), /not an NBD server/);
    });

    it('client flags, options, GO data', function () {
      assert.strictEqual(codec.encodeClientFlags(3).toString('hex'), '00000003');
      assert.strictEqual(codec.encodeClientFlags(0x80000000).toString('hex'), '80000000');
      assert.strictEqual(codec.encodeOption(C.Opt.ABORT).toString('hex'), ascii('IHAVEOPT') + '00000002' + '00000000');
      assert.strictEqual(codec.encodeOption(C.Opt.EXPORT_NAME, Buffer.from('x')).toString('hex'),
        ascii('IHAVEOPT') + '00000001' + '00000001' + '78');
      assert.strictEqual(codec.encodeGoData('disk', [C.INFO_BLOCK_SIZE]).toString('hex'),
        '00000004' + ascii('disk') + '0001' + '0003');
      assert.strictEqual(codec.encodeGoData('', []).toString('hex'), '00000000' + '0000');
    });

    it('option reply header', function () {
      assert.deepStrictEqual(codec.decodeOptionReplyHeader(hex('0003e889045565a9 00000007 80000006 00000010')),
        { magic: 0x3e889045565a9n, option: 7, type: 0x80000006, length: 16 });
    });
  });

  describe('transmission', function () {
    const header = '25609513' + '0001' + '0001' + 'deadbeef01020304' + '0000000100000200' + '00001000';

    it('request header, encoded', function () {
      const b = Buffer.alloc(28);
      codec.writeRequestHeader(b, C.CMD_FLAG_FUA, C.Cmd.WRITE, 0xdeadbeef, 0x01020304, 2 ** 32 + 512, 4096);
      assert.strictEqual(b.toString('hex'), header);
    });

    it('request header, decoded (also at an offset)', function () {
      const want = { magic: C.REQUEST_MAGIC, flags: 1, type: 1, cookieHi: 0xdeadbeef, cookieLo: 0x01020304, offset: 2 ** 32 + 512, length: 4096 };
      assert.deepStrictEqual(codec.decodeRequestHeader(hex(header)), want);
      assert.deepStrictEqual(codec.decodeRequestHeader(hex('ffff' + header), 2), want);
    });

    it('simple reply header', function () {
      const b = Buffer.alloc(20, 0xee);
      codec.writeSimpleReplyHeader(b, 2, C.NBD_ENOSPC, 0xfedcba98, 0x76543210);
      assert.strictEqual(b.toString('hex'), 'eeee' + '67446698' + '0000001c' + 'fedcba9876543210' + 'eeee');
    });

    it('constants match the spec', function () {
      assert.strictEqual(C.REQUEST_HEADER_BYTES, 28);
      assert.strictEqual(C.SIMPLE_REPLY_BYTES, 16);
      assert.strictEqual(C.NBDMAGIC.toString(16), ascii('NBDMAGIC'));
      assert.strictEqual(C.IHAVEOPT.toString(16), ascii('IHAVEOPT'));
      assert.deepStrictEqual([C.NBD_EPERM, C.NBD_EIO, C.NBD_ENOMEM, C.NBD_EINVAL, C.NBD_ENOSPC, C.NBD_EOVERFLOW, C.NBD_ENOTSUP, C.NBD_ESHUTDOWN],
        [1, 5, 12, 22, 28, 75, 95, 108]);
      assert.deepStrictEqual([C.TFLAG_HAS_FLAGS, C.TFLAG_READ_ONLY, C.TFLAG_SEND_FLUSH, C.TFLAG_SEND_FUA, C.TFLAG_SEND_TRIM,
        C.TFLAG_SEND_WRITE_ZEROES, C.TFLAG_CAN_MULTI_CONN], [1, 2, 4, 8, 32, 64, 256]);
    });
  });
});
