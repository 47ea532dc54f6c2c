// Typed access to the fileops addon (fallocate), the one native piece the store needs.
import { loadAddon } from '../package-root';

interface FileOps {
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
}

let ops: FileOps | undefined;

export function fileOps(): FileOps {
  ops ??= loadAddon<FileOps>('fileops');
  return ops;
}
