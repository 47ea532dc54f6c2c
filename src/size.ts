// Human sizes: "1474560", "512K", "1.44M", "64M", "10G", "2T" (binary units: K = 1024).
// Fractional sizes round down to whole 512-byte sectors, the unit block devices work in.

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new Error(`invalid size "${text}" (examples: 1474560, 1440K, 64M, 10G)`);
  const unit = UNITS[(m[2] ?? '').toUpperCase()] ?? 1;
  let bytes = Number(m[1]) * unit;
  if (unit !== 1 || !Number.isInteger(bytes)) bytes = Math.floor(bytes / 512) * 512;
  if (!Number.isSafeInteger(bytes)) throw new Error(`size "${text}" is too large`);
  if (bytes <= 0) throw new Error(`size "${text}" is zero`);
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [u, f] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= f) {
      const v = bytes / f;
      return `${Number.isInteger(v) ? v : v.toFixed(2)}${u}`;
    }
  }
  return `${bytes}`;
}
