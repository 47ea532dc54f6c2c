// parseSize and formatSize: the sizes users type (binary units), and what they get back.
import * as assert from 'assert';
import { formatSize, parseSize } from '../src/size';

describe('size', () => {
  it('parses bytes and binary units, with or without B/iB, in any case', () => {
    const sizes: Array<[string, number]> = [
      ['1474560', 1474560], ['512K', 524288], ['64M', 67108864], ['10G', 10737418240], ['2T', 2199023255552],
      [' 1 mib ', 1048576], ['4KB', 4096], ['1P', 1125899906842624],
    ];
    for (const [text, bytes] of sizes) assert.strictEqual(parseSize(text), bytes, text);
  });

  it('fractional sizes round down to whole 512-byte sectors', () => {
    assert.strictEqual(parseSize('1.44M'), 1509888); // 1.44 * 2^20 = 1509949.44 -> 2949 sectors
    assert.strictEqual(parseSize('0.5K'), 512);
    assert.strictEqual(parseSize('1000.5'), 512);
  });

  it('refuses what is not a size, zero, and what does not fit a safe integer', () => {
    for (const t of ['', 'abc', '-1', '1X', '1..2M', '0x10', '1 2']) assert.throws(() => parseSize(t), /invalid size/, t);
    assert.throws(() => parseSize('0'), /is zero/);
    assert.throws(() => parseSize('0.1K'), /is zero/);
    assert.throws(() => parseSize('9999999P'), /too large/);
  });

  it('formats in the largest whole-ish unit', () => {
    assert.strictEqual(formatSize(512), '512');
    assert.strictEqual(formatSize(524288), '512K');
    assert.strictEqual(formatSize(1509888), '1.44M');
    assert.strictEqual(formatSize(2 ** 40), '1T');
  });
});
