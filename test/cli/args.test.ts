// The shared argument parsers, on the host: HOST[:PORT] and the device settings (one
// defaults table, src/device/config.ts).
import * as assert from 'assert';
import { parseHostPort, parseIntArg } from '../../src/cli/args';
import { parseDeviceArgs } from '../../src/cli/device-args';
import { UsageError } from '../../src/cli/errors';
import { DEVICE_DEFAULTS } from '../../src/device/config';

describe('cli: shared argument parsers', () => {
  it('parseHostPort: host, host:port, [v6]:port, :port; the NBD port by default', () => {
    assert.deepStrictEqual(parseHostPort('store', '', '--remote'), { host: 'store', port: 10809 });
    assert.deepStrictEqual(parseHostPort('10.0.0.2:7000', '', '--remote'), { host: '10.0.0.2', port: 7000 });
    assert.deepStrictEqual(parseHostPort('[::1]:7000', '', '--remote'), { host: '::1', port: 7000 });
    assert.deepStrictEqual(parseHostPort('[fe80::1]', '', '--remote'), { host: 'fe80::1', port: 10809 });
    assert.deepStrictEqual(parseHostPort(':7000', '127.0.0.1', '--listen'), { host: '127.0.0.1', port: 7000 });
    assert.deepStrictEqual(parseHostPort('::1', '', '--remote'), { host: '::1', port: 10809 }, 'a bare v6 address has no port');
  });

  it('parseHostPort: a bad port or host is a usage error naming the option', () => {
    for (const t of ['h:99999', 'h:x', 'h:-1', '[::1]:port']) {
      assert.throws(() => parseHostPort(t, '', '--remote'), (e: Error) => e instanceof UsageError && /^--remote: invalid port/.test(e.message), t);
    }
    assert.throws(() => parseHostPort('a b:1', '', '--remote'), /^UsageError: --remote: invalid host/);
  });

  it('parseIntArg: whole numbers within bounds', () => {
    assert.strictEqual(parseIntArg(undefined, '--n', 1, 5), undefined);
    assert.strictEqual(parseIntArg('5', '--n', 1, 5), 5);
    assert.throws(() => parseIntArg('6', '--n', 1, 5), /--n must be between 1 and 5, not 6/);
    assert.throws(() => parseIntArg('1.5', '--n', 1, 5), /--n must be a whole number, not "1.5"/);
  });

  it('parseDeviceArgs: only what was given, in DeviceConfig units; the defaults fill the rest', () => {
    assert.deepStrictEqual(parseDeviceArgs({}), {});
    assert.deepStrictEqual(parseDeviceArgs({ queues: '2', depth: '64', 'max-io': '1M', timeout: '5', 'fail-after': '0', transport: 'ring', 'zero-copy': 'off' }),
      { queues: 2, depth: 64, maxIoBufBytes: 1048576, timeoutMs: 5000, failAfterMs: 0, transport: 'ring', zeroCopy: 'off' });
    assert.deepStrictEqual({ ...DEVICE_DEFAULTS, ...parseDeviceArgs({ timeout: '0' }) },
      { queues: 1, depth: 128, maxIoBufBytes: 524288, timeoutMs: 0, failAfterMs: 180000, transport: 'stream', zeroCopy: 'auto' });
    assert.deepStrictEqual(parseDeviceArgs({ 'zero-copy': 'auto' }), { zeroCopy: 'auto' });
    assert.throws(() => parseDeviceArgs({ 'max-io': '6K' }), /--max-io must be a multiple of 4K between 4K and 32M/);
    assert.throws(() => parseDeviceArgs({ 'max-io': '64M' }), /--max-io must be a multiple of 4K/);
    assert.throws(() => parseDeviceArgs({ depth: '4097' }), /--depth must be between 1 and 4096/);
    assert.throws(() => parseDeviceArgs({ 'fail-after': '604801' }), /--fail-after must be between 0 and 604800/);
    assert.throws(() => parseDeviceArgs({ transport: 'tcp' }), /--transport must be one of stream, ring, not "tcp"/);
    for (const v of ['on', 'OFF', '', 'no']) {
      assert.throws(() => parseDeviceArgs({ 'zero-copy': v }), (e: Error) => e instanceof UsageError && e.message === `--zero-copy must be one of auto, off, not "${v}"`, v);
    }
  });

  it('parseDeviceArgs: --metrics as HOST:PORT, :PORT (loopback) or unix:PATH, a relative PATH from the base given', () => {
    assert.deepStrictEqual(parseDeviceArgs({ metrics: ':9100' }), { metrics: { host: '127.0.0.1', port: 9100 } });
    assert.deepStrictEqual(parseDeviceArgs({ metrics: '0.0.0.0:9100' }), { metrics: { host: '0.0.0.0', port: 9100 } });
    assert.deepStrictEqual(parseDeviceArgs({ metrics: '[::1]:9100' }), { metrics: { host: '::1', port: 9100 } });
    assert.deepStrictEqual(parseDeviceArgs({ metrics: 'unix:run/m.sock' }, '/srv'), { metrics: { path: '/srv/run/m.sock' } });
    assert.deepStrictEqual(parseDeviceArgs({ metrics: 'unix:/run/m.sock' }, '/srv'), { metrics: { path: '/run/m.sock' } });
    assert.throws(() => parseDeviceArgs({ metrics: 'localhost' }), /^UsageError: --metrics needs a port: HOST:PORT, :PORT or unix:PATH, not "localhost"$/);
    assert.throws(() => parseDeviceArgs({ metrics: 'unix:' }), /--metrics unix: needs a PATH/);
    assert.throws(() => parseDeviceArgs({ metrics: ':99999' }), /--metrics: .*port/);
  });
});
