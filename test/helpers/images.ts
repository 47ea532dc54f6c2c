// Temporary directories and image files, and questions about them that only the
// filesystem can answer (content, allocated blocks, holes).
import { createHash, randomBytes } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Cleanup } from './procs';
import { runOk } from './procs';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** A fresh directory under the system temp dir, removed at cleanup. */
export function tempDir(cleanup: Cleanup, prefix = 'netdisk-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  cleanup.add(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export type Fill = 'sparse' | 'zero' | 'random';

/**
 * Creates an image of `size` bytes: sparse (all holes), zero (zeros written out, so every
 * block is allocated) or random. Returns its path.
 */
export function makeImage(dir: string, name: string, size: number, fill: Fill = 'sparse'): string {
  const p = path.join(dir, name);
  const fd = fs.openSync(p, 'w', 0o644);
  try {
    if (fill === 'sparse') {
      fs.ftruncateSync(fd, size);
    } else {
      const chunk = 4 * MiB;
      for (let off = 0; off < size; off += chunk) {
        const n = Math.min(chunk, size - off);
        fs.writeSync(fd, fill === 'zero' ? Buffer.alloc(n) : randomBytes(n), 0, n, off);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return p;
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function fileHash(p: string): string {
  return sha256(fs.readFileSync(p));
}

/** Reads length bytes at offset of a file, straight from the filesystem. */
export function readAt(p: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(p, 'r');
  try {
    const b = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const n = fs.readSync(fd, b, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    // Short when the file ends first: a caller comparing with zeros must not see padding.
    return b.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

/** Bytes the filesystem has allocated to the file (st_blocks is in 512-byte units). */
export function allocatedBytes(p: string): number {
  return fs.statSync(p).blocks * 512;
}

/**
 * The file's data extents as the filesystem reports them through lseek(SEEK_DATA /
 * SEEK_HOLE), which Node does not expose; python3's os.lseek does.
 */
export async function dataExtents(p: string): Promise<Array<[number, number]>> {
  const script = `
import os, sys, json
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
out, off = [], 0
while off < end:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    out.append([d, h])
    off = h
print(json.dumps(out))
`;
  const r = await runOk('python3', ['-c', script, p]);
  return JSON.parse(r.stdout.toString()) as Array<[number, number]>;
}

/** True when no byte of [offset, offset+length) is in a data extent. */
export async function isHole(p: string, offset: number, length: number): Promise<boolean> {
  const ext = await dataExtents(p);
  return ext.every(([s, e]) => e <= offset || s >= offset + length);
}

/** True when every byte of [offset, offset+length) is in a data extent. */
export async function isAllocated(p: string, offset: number, length: number): Promise<boolean> {
  const ext = await dataExtents(p);
  let pos = offset;
  for (const [s, e] of ext) {
    if (s <= pos && e > pos) pos = e;
    if (pos >= offset + length) return true;
  }
  return pos >= offset + length;
}

/** A deterministic pseudo-random buffer (xorshift), so failures can be reproduced. */
export function patternBuffer(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (i + 4 <= length) b.writeUInt32LE(x, i);
    else for (let j = i; j < length; j++) b[j] = (x >>> ((j - i) * 8)) & 0xff;
  }
  return b;
}
