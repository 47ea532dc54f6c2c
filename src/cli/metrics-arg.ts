// --metrics as add and serve take it: HOST:PORT, :PORT (loopback), or unix:PATH.
import * as path from 'path';
import type { MetricsAddress } from '../stats/metrics-server';
import { parseHostPort } from './args';
import { UsageError } from './errors';

export const METRICS_USAGE = `--metrics WHERE
                 Prometheus metrics at http://WHERE/metrics: HOST:PORT, :PORT (127.0.0.1) or unix:PATH`;

/** A relative unix:PATH is taken from `base` (where add runs, or the devices file's folder). */
export function parseMetricsArg(text: string | undefined, base = process.cwd()): MetricsAddress | undefined {
  if (text === undefined) return undefined;
  if (text.startsWith('unix:')) {
    if (text.length === 5) throw new UsageError('--metrics unix: needs a PATH');
    return { path: path.resolve(base, text.slice(5)) };
  }
  if (!/:\d+$/.test(text)) throw new UsageError(`--metrics needs a port: HOST:PORT, :PORT or unix:PATH, not "${text}"`);
  return parseHostPort(text, '127.0.0.1', '--metrics');
}
