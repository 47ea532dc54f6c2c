// Where the package is installed, found from this file (dist/src/... or src/...).
import * as fs from 'fs';
import * as path from 'path';

let root: string | undefined;

export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'netdisk-ublk') {
          root = dir;
          return dir;
        }
      } catch {
        // not ours; keep walking up
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`netdisk-ublk: package root not found above ${__dirname}`);
    dir = up;
  }
}

/** Loads a compiled addon from build/Release; the message says how to build it when missing. */
export function loadAddon<T>(name: string): T {
  const file = path.join(packageRoot(), 'build', 'Release', `${name}.node`);
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(file) as T;
  } catch (err) {
    throw new Error(`cannot load the ${name} addon (${file}): run "npm run build:addon"`, { cause: err });
  }
}
