// The one place the ublk addon is loaded. Works in worker threads too: the addon
// is context-aware and each thread gets its own instance.
import * as fs from 'fs';
import * as path from 'path';
import type { UblkNative } from './native.d';

let cached: UblkNative | undefined;

function repoRoot(): string {
  // Compiled to dist/src/ublk/native.js; the source sits at src/ublk/native.ts.
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: unknown }).name === 'netdisk-ublk') return dir;
      } catch {
        // not ours; keep walking up
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`netdisk-ublk: package root not found above ${__dirname}`);
    dir = up;
  }
}

export function loadNative(): UblkNative {
  if (cached !== undefined) return cached;
  const file = path.join(repoRoot(), 'build', 'Release', 'ublk.node');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = require(file) as UblkNative;
  } catch (err) {
    throw new Error(`cannot load the ublk addon (${file}): run "npm run build:addon"`, { cause: err });
  }
  return cached;
}

export type { NativeErrnoError, NativeQueue, NativeQueueOptions, UblkNative } from './native.d';
